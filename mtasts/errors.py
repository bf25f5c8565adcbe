"""The one error hierarchy of mtasts.

Every error the library raises on purpose is an :class:`MTASTSError`. Each carries the RFC 8460 §4.3 result
type that a TLS-RPT report would give it (``None`` when the failure is not reportable), so callers never map
exceptions to result types themselves.

Foreign exceptions (``ValueError`` from parsing, ``aiohttp``/``dns``/``ssl`` errors) are translated at the few
boundaries where third-party code is called; they never escape the public API.
"""

from __future__ import annotations

from typing import ClassVar

from .results import ResultType

__all__ = [
    "ControlError",
    "DomainError",
    "HostLookupError",
    "LocalError",
    "LookupDeferredError",
    "MTASTSError",
    "MXPermanentFailure",
    "MXTransientFailure",
    "NetstringError",
    "NoStartTLSError",
    "PolicyError",
    "PolicyFetchError",
    "PolicyWebPKIError",
    "SMTPConnectionError",
    "SMTPError",
    "SMTPRecipientsRefusedError",
    "SMTPReplyError",
    "SMTPTLSError",
    "TlsRptRecordError",
    "TxtRecordError",
    "UsageError",
]


class MTASTSError(Exception):
    """Base class of every error mtasts raises on purpose.

    ``result_type`` is the RFC 8460 §4.3 result type of the failure, or ``None``.
    """

    default_result_type: ClassVar[str | None] = None

    def __init__(self, message: str, *, result_type: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.result_type: str | None = result_type if result_type is not None else self.default_result_type


class UsageError(MTASTSError, ValueError):
    """The caller misused the API or the command line: a bad argument, option or configuration value.

    Both an :class:`MTASTSError` and a ``ValueError``; the command line answers it with exit status 2.
    """


class DomainError(MTASTSError):
    """A domain or host name is not a valid DNS name (or cannot be converted to A-labels, RFC 5891)."""


class TxtRecordError(MTASTSError):
    """The ``_mta-sts`` TXT record is syntactically invalid (RFC 8461 §3.1).

    RFC 8460 has no result type for this: the domain simply has no available policy.
    """


class PolicyError(MTASTSError):
    """The policy file is invalid (RFC 8461 §3.2) — ``sts-policy-invalid``.

    ``line`` is the 1-based line number of the offending line when one can be named.
    """

    default_result_type = ResultType.STS_POLICY_INVALID

    def __init__(self, message: str, *, line: int | None = None, result_type: str | None = None) -> None:
        super().__init__(message if line is None else f"line {line}: {message}", result_type=result_type)
        self.line = line


class PolicyFetchError(MTASTSError):
    """The policy could not be fetched over HTTPS (RFC 8461 §3.3) — ``sts-policy-fetch-error``."""

    default_result_type = ResultType.STS_POLICY_FETCH_ERROR


class PolicyWebPKIError(PolicyFetchError):
    """The policy host's certificate is invalid (RFC 8461 §3.3) — ``sts-webpki-invalid``."""

    default_result_type = ResultType.STS_WEBPKI_INVALID


class LocalError(MTASTSError):
    """A step failed for a reason on *this* side, not the Policy Domain's: descriptor or buffer exhaustion
    (EMFILE, ENFILE, ENOBUFS), a full DNS or fetch queue past its wait, a store that cannot be read, the resolver
    closing, an internal error.

    Never reported as "no policy" (the lookup's status is ``local-error`` and the mail is deferred) and never
    reported to the domain in TLS-RPT: it is not a failure of the domain (``result_type`` is None).
    """


class LookupDeferredError(MTASTSError):
    """:meth:`PolicyResolver.get_policy` cannot say which policy applies now: try again later (defer the mail).

    Raised for a ``local-error`` lookup, and for a ``dns-error`` lookup when the resolver was made with
    ``dns_error="defer"``. ``domain`` and ``status`` (a :class:`~mtasts.resolver.LookupStatus` value) say
    which; :meth:`PolicyResolver.lookup` returns the same outcome as a value instead.
    """

    def __init__(self, message: str, *, domain: str, status: str) -> None:
        super().__init__(message)
        self.domain = domain
        self.status = status


class ControlError(MTASTSError):
    """``mtasts cache`` could not use the daemon's control socket (nothing listening, no permission, a broken
    reply), or the daemon answered the request with an error (docs/operations.md, "Cache control")."""


class TlsRptRecordError(MTASTSError):
    """The ``_smtp._tls`` TXT record is invalid (RFC 8460 §3)."""


class NetstringError(MTASTSError):
    """The byte stream is not a sequence of netstrings (or one is longer than allowed).

    ``payloads`` holds the payloads that the failing :meth:`~mtasts.netstring.NetstringDecoder.feed` call decoded
    *before* the error, in order: a server can still answer them before closing the connection.
    """

    def __init__(self, message: str, payloads: list[bytes] | None = None) -> None:
        super().__init__(message)
        self.payloads: list[bytes] = payloads if payloads is not None else []


class HostLookupError(MTASTSError):
    """A host name's addresses could not be found (NXDOMAIN, no A or AAAA record, a DNS failure).

    For a policy host the fetch reports it as :class:`PolicyFetchError` (``sts-policy-fetch-error``); for an MX
    host it is a reason to try the next MX.
    """


class MXPermanentFailure(MTASTSError):
    """No delivery is possible for this domain (null MX, NXDOMAIN, no address)."""


class MXTransientFailure(MTASTSError):
    """The MX list cannot be had now (DNS failure)."""


# -- SMTP (mapped from aiosmtplib / ssl / socket errors in one place: mtasts._smtp) --------------------------------


class SMTPError(MTASTSError):
    """An SMTP exchange with a mail server failed (RFC 5321): an error reply, a lost connection, a timeout.

    ``code`` is the reply code (RFC 5321 §4.2) when the server answered with one, else None. ``origin`` names the
    exception the failure was first reported as (``SMTPServerDisconnected``, ``ConnectionRefusedError``,
    ``SSLCertVerificationError``, ...): a string for messages and logs, never a type to catch.
    """

    def __init__(
        self, message: str, *, code: int | None = None, origin: str | None = None, result_type: str | None = None
    ) -> None:
        super().__init__(message, result_type=result_type)
        self.code = code
        self.origin = origin if origin is not None else type(self).__name__

    @property
    def permanent(self) -> bool:
        """A 5yz reply: "permanent negative completion" (RFC 5321 §4.2.1) — sending the same again cannot help."""
        return self.code is not None and 500 <= self.code < 600

    @property
    def detail(self) -> str:
        """``origin: message`` — what went wrong, as the failure was first reported."""
        return f"{self.origin}: {self.message}"


class SMTPReplyError(SMTPError):
    """The server answered a command with an error reply (RFC 5321 §4.2): ``code`` is set (4yz: try again later,
    5yz: permanent) and ``message`` is the reply, code first (``"550 No such user"``).

    ``recipient``: the address a ``RCPT TO`` reply refused (RFC 5321 §3.3), else None.
    """

    def __init__(self, message: str, *, code: int, origin: str | None = None, recipient: str | None = None) -> None:
        super().__init__(message, code=code, origin=origin)
        self.recipient = recipient


class SMTPRecipientsRefusedError(SMTPError):
    """Every recipient was refused (``RCPT TO``, RFC 5321 §3.3): one :class:`SMTPReplyError` each in
    ``refusals``, in the order the recipients were given. ``code`` is None (the replies may differ).
    """

    def __init__(self, message: str, *, refusals: tuple[SMTPReplyError, ...], origin: str | None = None) -> None:
        super().__init__(message, origin=origin)
        self.refusals = refusals

    @property
    def permanent(self) -> bool:
        """Every refusal was a 5yz reply (RFC 5321 §4.2.1)."""
        return bool(self.refusals) and all(refusal.permanent for refusal in self.refusals)


class SMTPConnectionError(SMTPError):
    """No SMTP session could be made with the server, or it was lost: connection refused or reset, a timeout, a
    broken TLS session, an error greeting (then ``code`` is the greeting's reply code).
    """


class SMTPTLSError(SMTPError):
    """STARTTLS (RFC 3207) or the TLS handshake and certificate check that follows it failed.

    ``result_type`` is the RFC 8460 §4.3.1 result type (:func:`~mtasts.tls_errors.classify_tls_error`:
    ``certificate-expired``, ``certificate-host-mismatch``, ... ``validation-failure``) and
    ``failure_reason_code`` the §4.4 detail to report with it (OpenSSL's verify message, or the error text).
    ``code`` is set when the server answered STARTTLS with an error reply.
    """

    default_result_type = ResultType.VALIDATION_FAILURE

    def __init__(
        self,
        message: str,
        *,
        result_type: str | None = None,
        failure_reason_code: str | None = None,
        code: int | None = None,
        origin: str | None = None,
    ) -> None:
        super().__init__(message, code=code, origin=origin, result_type=result_type)
        self.failure_reason_code = failure_reason_code if failure_reason_code is not None else message[:200]


class NoStartTLSError(SMTPTLSError):
    """The server does not offer STARTTLS, or refused it (RFC 3207 §4) — ``starttls-not-supported`` (RFC 8460
    §4.3.1)."""

    default_result_type = ResultType.STARTTLS_NOT_SUPPORTED

    def __init__(self, message: str, *, code: int | None = None, origin: str | None = None) -> None:
        super().__init__(
            message,
            result_type=ResultType.STARTTLS_NOT_SUPPORTED,
            failure_reason_code=ResultType.STARTTLS_NOT_SUPPORTED.value,
            code=code,
            origin=origin,
        )
