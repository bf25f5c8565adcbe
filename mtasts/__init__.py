"""mtasts — MTA-STS (RFC 8461) for the sending side, with TLS-RPT (RFC 8460).

The sans-I/O core (this package's top level) parses TXT records and policies, matches MX hosts and gives
verdicts; it imports nothing that does I/O. The async shell (:class:`PolicyResolver`) and the edges
(``mtasts.delivery``, ``mtasts.tlsrpt``, ``mtasts.testing``, the socketmap server) are imported on demand.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports
from .domain import is_address_literal, normalize_domain
from .errors import (
    DomainError,
    HostLookupError,
    LocalError,
    LookupDeferredError,
    MTASTSError,
    MXPermanentFailure,
    MXTransientFailure,
    NetstringError,
    PolicyError,
    PolicyFetchError,
    PolicyWebPKIError,
    TlsRptRecordError,
    TxtRecordError,
    UsageError,
)
from .matching import mx_matches
from .policy import MAX_MAX_AGE, Mode, Policy, parse_policy
from .results import MX_NOT_IN_STS_POLICY, ResultType
from .tls_errors import classify_tls_error, failure_reason_code
from .txt import TxtRecord, parse_txt_record, select_txt_record
from .verdict import Verdict, evaluate

if TYPE_CHECKING:
    from .resolver import NOT_CACHED, FetchFailure, LookupStatus, NotCached, PolicyLookup, PolicyResolver

__version__ = "0.1.0"

# The async shell is imported on first use, so that `import mtasts` (the sans-I/O core) loads no aiohttp,
# asyncio or socket module.
_LAZY = {
    "NOT_CACHED": "resolver",
    "FetchFailure": "resolver",
    "LookupStatus": "resolver",
    "NotCached": "resolver",
    "PolicyLookup": "resolver",
    "PolicyResolver": "resolver",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)


__all__ = [
    "MAX_MAX_AGE",
    "MX_NOT_IN_STS_POLICY",
    "NOT_CACHED",
    "DomainError",
    "FetchFailure",
    "HostLookupError",
    "LocalError",
    "LookupDeferredError",
    "LookupStatus",
    "MTASTSError",
    "MXPermanentFailure",
    "MXTransientFailure",
    "Mode",
    "NetstringError",
    "NotCached",
    "Policy",
    "PolicyError",
    "PolicyFetchError",
    "PolicyLookup",
    "PolicyResolver",
    "PolicyWebPKIError",
    "ResultType",
    "TlsRptRecordError",
    "TxtRecord",
    "TxtRecordError",
    "UsageError",
    "Verdict",
    "classify_tls_error",
    "evaluate",
    "failure_reason_code",
    "is_address_literal",
    "mx_matches",
    "normalize_domain",
    "parse_policy",
    "parse_txt_record",
    "select_txt_record",
]
