"""Classifying TLS failures into RFC 8460 §4.3.1 result types — without importing ``ssl`` or any I/O library.

An exception can only be an ``ssl`` or ``aiosmtplib`` exception if that module is already imported, so the
classes are looked up in ``sys.modules`` instead of being imported: the core stays free of I/O imports.

OpenSSL verification codes (``ssl.SSLCertVerificationError.verify_code``, ``X509_V_ERR_*``):

==========================================================  ============================================
code                                                        result type
==========================================================  ============================================
62 HOSTNAME_MISMATCH (also 63/64 email/IP mismatch)         ``certificate-host-mismatch``
10 CERT_HAS_EXPIRED                                         ``certificate-expired``
2, 18, 19, 20, 21, 24, 27, 28, 32, 47 … (chain, issuer,     ``certificate-not-trusted``
self-signed, untrusted root, name constraints)
anything else (bad signature, not yet valid, revoked, …)    ``validation-failure``
==========================================================  ============================================

The ``failure-reason-code`` to go with it is :func:`failure_reason_code`.
"""

from __future__ import annotations

import sys

from ._exceptions import exception_chain
from .errors import MTASTSError
from .results import SESSION_FAILURES, ResultType

__all__ = ["classify_tls_error", "failure_reason_code"]

_VERIFY_CODES: dict[int, ResultType] = {
    62: ResultType.CERTIFICATE_HOST_MISMATCH,  # X509_V_ERR_HOSTNAME_MISMATCH
    63: ResultType.CERTIFICATE_HOST_MISMATCH,  # X509_V_ERR_EMAIL_MISMATCH
    64: ResultType.CERTIFICATE_HOST_MISMATCH,  # X509_V_ERR_IP_ADDRESS_MISMATCH
    10: ResultType.CERTIFICATE_EXPIRED,  # X509_V_ERR_CERT_HAS_EXPIRED
    2: ResultType.CERTIFICATE_NOT_TRUSTED,  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT
    18: ResultType.CERTIFICATE_NOT_TRUSTED,  # X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT
    19: ResultType.CERTIFICATE_NOT_TRUSTED,  # X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN
    20: ResultType.CERTIFICATE_NOT_TRUSTED,  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    21: ResultType.CERTIFICATE_NOT_TRUSTED,  # X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE
    22: ResultType.CERTIFICATE_NOT_TRUSTED,  # X509_V_ERR_CERT_CHAIN_TOO_LONG
    24: ResultType.CERTIFICATE_NOT_TRUSTED,  # X509_V_ERR_INVALID_CA
    25: ResultType.CERTIFICATE_NOT_TRUSTED,  # X509_V_ERR_PATH_LENGTH_EXCEEDED
    26: ResultType.CERTIFICATE_NOT_TRUSTED,  # X509_V_ERR_INVALID_PURPOSE
    27: ResultType.CERTIFICATE_NOT_TRUSTED,  # X509_V_ERR_CERT_UNTRUSTED
    28: ResultType.CERTIFICATE_NOT_TRUSTED,  # X509_V_ERR_CERT_REJECTED
    32: ResultType.CERTIFICATE_NOT_TRUSTED,  # X509_V_ERR_KEYUSAGE_NO_CERTSIGN
    47: ResultType.CERTIFICATE_NOT_TRUSTED,  # X509_V_ERR_PERMITTED_VIOLATION (name constraints)
    48: ResultType.CERTIFICATE_NOT_TRUSTED,  # X509_V_ERR_EXCLUDED_VIOLATION (name constraints)
}


def _classify_one(exc: BaseException) -> str | None:
    if isinstance(exc, MTASTSError) and exc.result_type in SESSION_FAILURES:
        return exc.result_type
    ssl = sys.modules.get("ssl")
    if ssl is not None and isinstance(exc, ssl.SSLCertVerificationError):
        code = getattr(exc, "verify_code", None)
        return _VERIFY_CODES.get(code, ResultType.VALIDATION_FAILURE) if isinstance(code, int) else None
    aiosmtplib = sys.modules.get("aiosmtplib")
    if (
        aiosmtplib is not None
        and isinstance(exc, aiosmtplib.SMTPException)
        and "starttls" in str(exc).lower()
        and "not supported" in str(exc).lower()
    ):
        return ResultType.STARTTLS_NOT_SUPPORTED
    return None


def classify_tls_error(exc: BaseException) -> str:
    """The RFC 8460 result type for a failed STARTTLS / TLS handshake / certificate check.

    Looks through ``__cause__`` / ``__context__`` (libraries wrap ``ssl`` errors). Certificate verification
    errors map by OpenSSL code (table above); aiosmtplib's "STARTTLS extension not supported" is
    ``starttls-not-supported``; an :class:`~mtasts.errors.MTASTSError` carrying a session result type keeps
    it; anything else (handshake alerts, protocol errors, resets during the handshake) is
    ``validation-failure``, the RFC's "general failure" (§4.3.1).
    """
    for link in exception_chain(exc):
        result = _classify_one(link)
        if result is not None:
            return result
    return ResultType.VALIDATION_FAILURE


def failure_reason_code(exc: BaseException) -> str:
    """A short RFC 8460 ``failure-reason-code`` for ``exc``: OpenSSL's verify message or the error text."""
    for link in exception_chain(exc):
        message = getattr(link, "verify_message", None)
        if isinstance(message, str) and message:
            return message
    text = str(exc) or type(exc).__name__
    return text[:200]
