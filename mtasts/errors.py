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
    "DomainError",
    "MTASTSError",
    "PolicyError",
    "PolicyFetchError",
    "PolicyWebPKIError",
    "TxtRecordError",
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
