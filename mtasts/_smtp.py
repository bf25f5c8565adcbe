"""The one place where aiosmtplib / ssl / socket / timeout exceptions become mtasts errors (extra ``smtp``).

Every SMTP call of :mod:`mtasts.delivery` runs inside :func:`map_smtp_errors`, as every aiohttp call of
:mod:`mtasts.fetch` runs inside its ``_map_exceptions`` (the model: httpcore's ``map_exceptions``). What comes
out is an :class:`~mtasts.errors.MTASTSError`, never a foreign exception:

========================================================  ==============================  ==========================
raised inside (the most specific class wins)              outside STARTTLS                in STARTTLS (``tls=True``)
========================================================  ==============================  ==========================
``OSError`` with a local errno in the chain (EMFILE ...)  ``LocalError``                  ``LocalError``
``SMTPRecipientsRefused``                                 ``SMTPRecipientsRefusedError``  ``SMTPTLSError``
``SMTPConnectResponseError`` (an error greeting)          ``SMTPConnectionError`` + code  ``SMTPTLSError`` + code
``SMTPConnectError``, ``SMTPConnectTimeoutError``         ``SMTPConnectionError``         ``SMTPTLSError``
``SMTPServerDisconnected``, ``SMTP[Read]TimeoutError``    ``SMTPConnectionError``         ``SMTPTLSError``
``SMTPResponseException`` and its reply subclasses        ``SMTPReplyError`` + code       ``SMTPTLSError`` + code
``SMTPNotSupported``, ``SMTPException``                   ``SMTPError``                   ``SMTPTLSError``
``ssl.SSLError`` (a TLS session that broke)               ``SMTPConnectionError``         ``SMTPTLSError``
``TimeoutError``, any other ``OSError``                   ``SMTPConnectionError``         ``SMTPTLSError``
an ``MTASTSError``                                        itself                          itself
``ValueError``, ``RuntimeError``, ``CancelledError`` ...  not caught                      not caught
========================================================  ==============================  ==========================

During STARTTLS every failure of the peer is a TLS failure: :class:`SMTPTLSError` carries the RFC 8460 §4.3.1
result type that :func:`~mtasts.tls_errors.classify_tls_error` gives the foreign exception (the certificate
checks map by OpenSSL code; anything else is ``validation-failure``) and its §4.4 ``failure-reason-code``. An
:class:`MTASTSError` raised inside passes through untouched; anything else (``ValueError`` for a malformed
argument, ``RuntimeError``, ``CancelledError``) is not an SMTP failure and is not caught.

The reply of a mapped :class:`SMTPReplyError` is written as on the wire, code first (``"550 No such user"``);
``origin`` keeps the foreign class name for messages and logs.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterator
from typing import Final

import aiosmtplib

from ._exceptions import local_os_error
from .errors import (
    LocalError,
    MTASTSError,
    SMTPConnectionError,
    SMTPError,
    SMTPRecipientsRefusedError,
    SMTPReplyError,
    SMTPTLSError,
)
from .tls_errors import classify_tls_error, failure_reason_code

__all__ = ["SMTP_ERRORS", "map_smtp_errors"]

#: Every exception class of aiosmtplib (and the ssl / socket / timeout ones), with the error it becomes outside
#: STARTTLS. A class is looked up along its MRO: the most specific entry wins. tests/test_delivery.py fails when
#: an aiosmtplib class is missing here.
SMTP_ERRORS: Final[dict[type[BaseException], type[SMTPError]]] = {
    aiosmtplib.SMTPRecipientsRefused: SMTPRecipientsRefusedError,
    aiosmtplib.SMTPConnectResponseError: SMTPConnectionError,  # a reply (the greeting), but no session
    aiosmtplib.SMTPConnectTimeoutError: SMTPConnectionError,
    aiosmtplib.SMTPConnectError: SMTPConnectionError,
    aiosmtplib.SMTPServerDisconnected: SMTPConnectionError,
    aiosmtplib.SMTPReadTimeoutError: SMTPConnectionError,
    aiosmtplib.SMTPTimeoutError: SMTPConnectionError,
    aiosmtplib.SMTPAuthenticationError: SMTPReplyError,
    aiosmtplib.SMTPDataError: SMTPReplyError,
    aiosmtplib.SMTPHeloError: SMTPReplyError,
    aiosmtplib.SMTPRecipientRefused: SMTPReplyError,
    aiosmtplib.SMTPSenderRefused: SMTPReplyError,
    aiosmtplib.SMTPResponseException: SMTPReplyError,
    aiosmtplib.SMTPNotSupported: SMTPError,
    aiosmtplib.SMTPException: SMTPError,
    ssl.SSLError: SMTPConnectionError,
    TimeoutError: SMTPConnectionError,
    OSError: SMTPConnectionError,
}

_FOREIGN: Final = (aiosmtplib.SMTPException, OSError)  # OSError covers ssl.SSLError, TimeoutError, socket errors


@contextlib.contextmanager
def map_smtp_errors(*, tls: bool = False) -> Iterator[None]:
    """Map what an SMTP call raises to mtasts errors (module docs); ``tls``: the call is STARTTLS and its
    handshake, or the first command over the new TLS session (RFC 3207 §4.2), so every failure is a TLS one."""
    try:
        yield
    except MTASTSError:
        raise
    except _FOREIGN as exc:
        raise _map(exc, tls=tls) from None


def _map(exc: aiosmtplib.SMTPException | OSError, *, tls: bool) -> MTASTSError:
    local = local_os_error(exc)
    if local is not None:
        return LocalError(f"a local resource ran out: {local.strerror or local}")
    origin = type(exc).__name__
    code = exc.code if isinstance(exc, aiosmtplib.SMTPResponseException) else None
    message = _reply(exc) if isinstance(exc, aiosmtplib.SMTPResponseException) else str(exc)
    if tls:
        return SMTPTLSError(
            message,
            result_type=classify_tls_error(exc),
            failure_reason_code=failure_reason_code(exc),
            code=code,
            origin=origin,
        )
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        refusals = tuple(_refusal(refusal) for refusal in exc.recipients)
        message = "; ".join(f"{refusal.recipient}: {refusal.message}" for refusal in refusals)
        return SMTPRecipientsRefusedError(message, refusals=refusals, origin=origin)
    if isinstance(exc, aiosmtplib.SMTPRecipientRefused):
        return _refusal(exc)
    target = next(SMTP_ERRORS[cls] for cls in type(exc).__mro__ if cls in SMTP_ERRORS)  # OSError is the last resort
    return target(message, code=code, origin=origin)


def _refusal(exc: aiosmtplib.SMTPRecipientRefused) -> SMTPReplyError:
    return SMTPReplyError(_reply(exc), code=exc.code, origin=type(exc).__name__, recipient=exc.recipient)


def _reply(exc: aiosmtplib.SMTPResponseException) -> str:
    """The reply as the server sent it: ``"550 No such user"``."""
    return f"{exc.code} {exc.message}"
