"""The HTTP API's answers, sans I/O: request bodies checked, lookups and verdicts turned into JSON objects.

``GET /v1/policy/{domain}`` answers :func:`policy_answer` of the resolver's :class:`~mtasts.resolver.PolicyLookup`;
``POST /v1/verdict`` reads its body with :func:`parse_verdict_request` and answers :func:`verdict_answer`.
docs/http-api.md describes every field; :mod:`mtasts.http_api.openapi` holds their schemas.

THE ONE RULE (RFC 8461 leaves it to us, docs/decisions.md): a lookup that cannot answer now — a fault on this
host (``local-error``), or a failed TXT query under ``dns_error = "defer"`` — is never "no policy". Its policy
answer says so (``status``, ``"defer": true``), and its verdict is ``deliver: false`` with ``defer: true`` (and
``require_tls: true``, so that a client reading only that field still never falls back to plaintext); the server
sends both with status 503. Nothing here does I/O: no asyncio, no aiohttp, no clock.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from .._rfc3339 import utc_timestamp
from ..domain import is_address_literal, normalize_domain
from ..errors import DomainError, UsageError
from ..results import SESSION_FAILURES
from ..verdict import evaluate

if TYPE_CHECKING:
    from ..resolver import PolicyLookup

__all__ = [
    "TLS_FAILURES",
    "VERDICT_FIELDS",
    "VerdictRequest",
    "deferred_verdict",
    "parse_domain",
    "parse_verdict_request",
    "policy_answer",
    "rfc3339",
    "verdict_answer",
]

#: The keys a ``POST /v1/verdict`` body may hold; any other key is a 400 (a misspelt ``tls_failure`` must not
#: silently read as "the TLS session succeeded").
VERDICT_FIELDS: Final = ("domain", "mx_host", "tls_failure")

#: The values ``tls_failure`` may take besides null (STARTTLS done, certificate valid per RFC 8461 §4.2): the
#: RFC 8460 §4.3 session result types :func:`~mtasts.verdict.evaluate` accepts, sorted.
TLS_FAILURES: Final = tuple(sorted(SESSION_FAILURES))


@dataclass(frozen=True, slots=True)
class VerdictRequest:
    """A checked ``POST /v1/verdict`` body."""

    domain: str  # normalised (A-labels, lowercase, no trailing dot), or an address literal as given
    mx_host: str  # normalised
    tls_failure: str | None  # None: the session's TLS succeeded (or has not been tried yet)


def rfc3339(seconds: float | None) -> str | None:
    """Seconds since the epoch as an RFC 3339 UTC time to the second (``2026-12-01T16:07:12Z``), None as None."""
    return None if seconds is None else _rfc3339(int(seconds))


@functools.lru_cache(maxsize=4096)  # the same fetch times come back on every cached answer
def _rfc3339(seconds: int) -> str | None:
    try:
        return utc_timestamp(seconds)
    except (OverflowError, OSError, ValueError):  # beyond year 9999: not a time a policy can have
        return None


def parse_domain(text: str, *, field: str = "domain") -> str:
    """``text`` as a Policy Domain: normalised (:func:`~mtasts.domain.normalize_domain`), or an address literal
    kept as given (no policy applies to one, RFC 8461 §3.4). Raises :class:`UsageError` naming ``field``."""
    if is_address_literal(text):
        return text
    try:
        return normalize_domain(text)
    except DomainError as exc:
        raise UsageError(f"{field}: {exc.message}") from None


def parse_verdict_request(body: bytes) -> VerdictRequest:
    """Check a ``POST /v1/verdict`` body: a JSON object with ``domain`` and ``mx_host`` (strings) and an optional
    ``tls_failure`` (null, or one of :data:`TLS_FAILURES`), nothing else. Raises :class:`UsageError` (a 400)."""
    try:
        data = json.loads(body)
    except UnicodeDecodeError:
        raise UsageError("the body is not UTF-8 JSON") from None
    except ValueError as exc:
        raise UsageError(f"the body is not JSON: {exc}") from None
    except RecursionError:
        raise UsageError("the body is not JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise UsageError(f'the body must be a JSON object {{"domain": ..., "mx_host": ...}}, not {_kind(data)}')
    unknown = sorted(set(data) - set(VERDICT_FIELDS))
    if unknown:
        raise UsageError(
            f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(_shown, unknown))} "
            f"(known: {', '.join(VERDICT_FIELDS)})"
        )
    domain = parse_domain(_string(data, "domain"))
    mx_host = _string(data, "mx_host")
    try:
        mx_host = normalize_domain(mx_host)
    except DomainError as exc:
        raise UsageError(f"mx_host: {exc.message}") from None
    tls_failure = data.get("tls_failure")
    if tls_failure is not None and (not isinstance(tls_failure, str) or tls_failure not in SESSION_FAILURES):
        raise UsageError(
            f"tls_failure must be null (TLS succeeded) or one of {', '.join(TLS_FAILURES)}, not {_shown(tls_failure)}"
        )
    return VerdictRequest(domain, mx_host, tls_failure)


def _string(data: dict[str, Any], field: str) -> str:
    value = data.get(field)
    if not isinstance(value, str):
        missing = field not in data
        raise UsageError(f"{field} {'is missing' if missing else f'must be a string, not {_kind(value)}'}")
    return value


def _kind(value: object) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _shown(value: object, limit: int = 60) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else f"{text[:limit]}..."


def policy_answer(lookup: PolicyLookup) -> dict[str, Any]:
    """The ``GET /v1/policy/{domain}`` object for ``lookup`` (every key always present; null when unknown)."""
    policy = lookup.policy
    return {
        "domain": lookup.domain,
        "status": str(lookup.status),
        "mode": None if policy is None else str(policy.mode),
        "mx": None if policy is None else list(policy.mx),
        "max_age": None if policy is None else policy.max_age,
        "id": lookup.policy_id,
        "fetched_at": rfc3339(lookup.fetched_at),
        "expires_at": rfc3339(lookup.expires_at),
        "result_type": lookup.result_type,
        "from_cache": lookup.from_cache,
        "defer": lookup.defer,
        "detail": lookup.error,
    }


def verdict_answer(lookup: PolicyLookup, request: VerdictRequest) -> dict[str, Any]:
    """The ``POST /v1/verdict`` object: :func:`~mtasts.verdict.evaluate` of the lookup's policy for the request's
    MX host and TLS outcome — or :func:`deferred_verdict` when the lookup cannot answer now."""
    if lookup.defer:
        return deferred_verdict(lookup, request)
    verdict = evaluate(lookup.policy, request.mx_host, tls_failure=request.tls_failure)
    policy = verdict.policy
    return {
        "domain": lookup.domain,
        "mx_host": request.mx_host,
        "status": str(lookup.status),
        "deliver": verdict.deliver,
        "require_tls": verdict.require_tls,
        "result_type": verdict.result_type,
        "failure_reason_code": verdict.failure_reason_code,
        "mode": None if policy is None else str(policy.mode),
        "defer": False,
    }


def deferred_verdict(lookup: PolicyLookup, request: VerdictRequest) -> dict[str, Any]:
    """The verdict when no answer can be given now: do not deliver, try again later (never "no policy")."""
    return {
        "domain": lookup.domain,
        "mx_host": request.mx_host,
        "status": str(lookup.status),
        "deliver": False,
        "require_tls": True,
        "result_type": None,
        "failure_reason_code": None,
        "mode": None,
        "defer": True,
    }
