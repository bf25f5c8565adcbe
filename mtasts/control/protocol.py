"""The cache-control protocol, sans I/O: what ``mtasts cache`` and the daemon's control socket say to each other.

One JSON object per line (UTF-8, ``\\n`` at the end) each way, over a Unix stream socket. A request::

    {"op": "list"}                                        every cached policy
    {"op": "show", "domain": "example.com"}               what is remembered of one domain
    {"op": "purge", "domain": "example.com"}              forget it: the next lookup queries and fetches afresh
    {"op": "warm", "domains": ["a.example", ...], "concurrency": 8, "rate": 10}
    {"op": "ping"}

The reply is zero or more item lines, ``{"item": {...}}`` — ``list``: one per cached policy (:func:`entry`);
``warm``: one per domain as its lookup ends (:func:`warm_item`) — then exactly one final line: ``{"ok": true,
...}`` or ``{"ok": false, "error": "..."}``. A request line is at most :data:`MAX_REQUEST` bytes.

Also here, pure: the entries' and the export's shapes (an entry carries the socketmap's own answer for its
policy, made by :func:`~mtasts.socketmap.answers.format_policy`, so an export never differs from the live
answers), the warm file (:func:`parse_domain_list`) and the warm pacing (:class:`Pacer`, on an injected clock).
It imports nothing of the socketmap or the resolver: ``mtasts cache`` against a daemon loads neither.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from .._rfc3339 import utc_timestamp
from ..domain import is_address_literal, normalize_domain
from ..errors import DomainError, UsageError
from ..policy import Policy

__all__ = [
    "DEFAULT_CONCURRENCY",
    "MAX_CONCURRENCY",
    "MAX_RATE",
    "MAX_REQUEST",
    "MAX_WARM_DOMAINS",
    "OPS",
    "Pacer",
    "Request",
    "cache_state",
    "done",
    "encode",
    "entry",
    "export_lines",
    "failure",
    "format_time",
    "item",
    "parse_domain_list",
    "parse_reply",
    "parse_request",
    "request_domain",
    "warm_item",
]

#: The operations a request may name.
OPS: Final = ("list", "show", "purge", "warm", "ping")
#: Longest request line, bytes (the newline included); a longer one is answered with an error and closed.
MAX_REQUEST: Final = 65536
#: Domains in one ``warm`` request (``mtasts cache warm`` sends a longer list in several).
MAX_WARM_DOMAINS: Final = 200
#: Lookups one ``warm`` request runs at once, at most.
MAX_CONCURRENCY: Final = 64
DEFAULT_CONCURRENCY: Final = 8
#: Lookups started per second by one ``warm``, at most.
MAX_RATE: Final = 1000.0

_MAX_NAME = 255  # a request's domain, before normalisation (253 + a trailing dot, with room to say what is wrong)
_KEYS: Final = {
    "list": frozenset({"op"}),
    "show": frozenset({"op", "domain"}),
    "purge": frozenset({"op", "domain"}),
    "warm": frozenset({"op", "domains", "concurrency", "rate"}),
    "ping": frozenset({"op"}),
}


@dataclass(frozen=True, slots=True)
class Request:
    """One parsed request: ``domain`` (normalised) for show and purge; ``domains`` as sent for warm (each is
    checked when its turn comes, so one bad name does not refuse the rest)."""

    op: str
    domain: str | None = None
    domains: tuple[str, ...] = ()
    concurrency: int = DEFAULT_CONCURRENCY
    rate: float | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"op": self.op}
        if self.domain is not None:
            data["domain"] = self.domain
        if self.op == "warm":
            data.update(domains=list(self.domains), concurrency=self.concurrency, rate=self.rate)
        return data


def encode(message: Mapping[str, Any]) -> bytes:
    """One protocol line: compact JSON (ASCII escapes, so any byte count is predictable) and ``\\n``."""
    return json.dumps(message, separators=(",", ":"), allow_nan=False).encode("ascii") + b"\n"


def parse_request(line: bytes) -> Request:
    """A request line → :class:`Request`; :class:`~mtasts.errors.UsageError` saying what is wrong, else."""
    if len(line) > MAX_REQUEST:
        raise UsageError(f"request longer than {MAX_REQUEST} bytes")
    try:
        data = json.loads(line)
    except (UnicodeDecodeError, ValueError):
        raise UsageError("a request is one JSON object per line") from None
    if not isinstance(data, dict):
        raise UsageError("a request is one JSON object per line")
    op = data.get("op")
    if not isinstance(op, str) or op not in OPS:
        raise UsageError(f"op must be one of {', '.join(OPS)}")
    unknown = sorted(set(data) - _KEYS[op])
    if unknown:
        raise UsageError(f"unknown key{'s' if len(unknown) > 1 else ''} for {op}: {', '.join(unknown)[:200]}")
    if op in ("show", "purge"):
        return Request(op, domain=request_domain(data.get("domain")))
    if op == "warm":
        return _warm_request(data)
    return Request(op)


def request_domain(value: object) -> str:
    """A request's domain, normalised; :class:`UsageError` for anything that is not a domain name."""
    if not isinstance(value, str) or not value or len(value) > _MAX_NAME:
        raise UsageError("domain must be a domain name")
    if is_address_literal(value):
        raise UsageError(f"address literals have no MTA-STS policy: {value[:100]!r}")
    try:
        return normalize_domain(value)
    except DomainError as exc:
        raise UsageError(exc.message) from None


def _warm_request(data: dict[str, Any]) -> Request:
    domains = data.get("domains")
    if (
        not isinstance(domains, list)
        or not 0 < len(domains) <= MAX_WARM_DOMAINS
        or not all(isinstance(d, str) and len(d) <= _MAX_NAME for d in domains)
    ):
        raise UsageError(f"domains must be a list of 1 to {MAX_WARM_DOMAINS} domain names")
    concurrency = data.get("concurrency", DEFAULT_CONCURRENCY)
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or not 0 < concurrency <= MAX_CONCURRENCY:
        raise UsageError(f"concurrency must be a whole number from 1 to {MAX_CONCURRENCY}")
    rate = data.get("rate")
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate <= MAX_RATE):
        raise UsageError(f"rate must be null (no limit) or lookups per second, above 0 and at most {MAX_RATE:g}")
    return Request("warm", domains=tuple(domains), concurrency=concurrency, rate=None if rate is None else float(rate))


# -- replies -------------------------------------------------------------------------------------------------


def item(value: Mapping[str, Any]) -> bytes:
    """An item line of a reply (a list entry, a warm outcome)."""
    return encode({"item": value})


def done(**fields: Any) -> bytes:
    """The final line of a successful reply."""
    return encode({"ok": True, **fields})


def failure(message: str) -> bytes:
    """The final line of a failed request (a malformed one, a domain that is not one, an internal error)."""
    return encode({"ok": False, "error": message[:500]})


def parse_reply(line: bytes) -> dict[str, Any]:
    """A reply line → its object: ``{"item": ...}`` or a final ``{"ok": ...}``; ValueError for anything else."""
    data = json.loads(line)
    if not isinstance(data, dict) or not (isinstance(data.get("item"), dict) or isinstance(data.get("ok"), bool)):
        raise ValueError("not a control reply")
    return data


# -- what an entry says ----------------------------------------------------------------------------------------


def entry(
    domain: str,
    policy: Policy,
    policy_id: str,
    *,
    fetched_at: float,
    expires_at: float,
    next_txt_check: float | None,
    now: float,
    postfix_policy: str | None,
) -> dict[str, Any]:
    """One cached policy, as ``list`` and ``show`` give it (times: seconds since the epoch, UTC).

    ``status`` is ``valid`` or ``expired`` (RFC 8461 §3.3: an expired policy is never used; the daemon drops
    it at the domain's next lookup). ``postfix_policy`` is the ``smtp_tls_policy_maps`` answer for it — give
    :func:`~mtasts.socketmap.answers.format_policy`'s (``secure match=... servername=hostname``, or None when
    it is not ``enforce``). ``next_txt_check``: from then on, the next request checks the TXT record (None
    when not known: a store read directly).
    """
    return {
        "domain": domain,
        "status": "expired" if now >= expires_at else "valid",
        "mode": policy.mode.value,
        "id": policy_id,
        "mx": list(policy.mx),
        "max_age": policy.max_age,
        "fetched_at": fetched_at,
        "expires_at": expires_at,
        "next_txt_check": next_txt_check,
        "postfix_policy": postfix_policy,
    }


def cache_state(
    domain: str,
    *,
    entry: Mapping[str, Any] | None,
    negative: Mapping[str, Any] | None = None,
    backoff: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What ``show`` gives: the cached policy (:func:`entry`) or null; a remembered negative answer
    (``status``, ``result_type``, ``error``, ``until``) or null; a running fetch back-off (``id`` whose fetch
    failed, ``result_type``, ``error``, ``until``: no new fetch of that id before then, RFC 8461 §3.3) or null."""
    return {"domain": domain, "entry": entry, "negative": negative, "backoff": backoff}


def warm_item(
    domain: str,
    status: str,
    *,
    policy: Policy | None = None,
    policy_id: str | None = None,
    result_type: str | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    """One warmed domain: the lookup's status (``fetched``, ``cached``, ``no-policy``, ``fetch-error``, ...,
    or ``invalid`` for a name that is not a domain) and what it found."""
    return {
        "domain": domain,
        "status": status,
        "mode": policy.mode.value if policy is not None else None,
        "id": policy_id,
        "result_type": result_type,
        "error": error,
    }


def export_lines(entries: Iterable[Mapping[str, Any]], *, now: float, source: str) -> list[str]:
    """Postfix ``texthash`` lines (``smtp_tls_policy_maps``) for the entries that are unexpired ``enforce``
    policies, sorted by domain, after a comment header naming the time and ``source``::

        example.com secure match=mx1.example.com:.example.net servername=hostname

    The values are the entries' ``postfix_policy`` (:func:`entry`): the socketmap's own answers.
    """
    lines = [
        f"# mtasts cache export, {format_time(now)}: the unexpired MTA-STS enforce policies of {source}",
        "# smtp_tls_policy_maps = texthash:/path/to/this/file (a snapshot: it does not follow policy changes)",
    ]
    policies = sorted(
        (str(e["domain"]), str(e["postfix_policy"]))
        for e in entries
        if e.get("postfix_policy") and now < float(e["expires_at"])
    )
    lines += [f"{domain} {text}" for domain, text in policies]
    return lines


def format_time(t: float | None) -> str:
    """``2026-12-01T16:00:00Z`` (UTC, whole seconds), or ``-`` for None."""
    if t is None or not math.isfinite(t):
        return "-"
    return utc_timestamp(t)


# -- warm ------------------------------------------------------------------------------------------------------


def parse_domain_list(text: str) -> tuple[list[str], list[tuple[int, str, str]]]:
    """A warm file: one domain per line; ``#`` starts a comment, blank lines are skipped. Returns the domains
    (normalised, duplicates dropped, in file order) and the problems as (line number, text, why)."""
    domains: dict[str, None] = {}
    problems: list[tuple[int, str, str]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        name = raw.partition("#")[0].strip()
        if not name:
            continue
        try:
            domains[request_domain(name)] = None
        except UsageError as exc:
            problems.append((number, name[:100], exc.message))
    return list(domains), problems


class Pacer:
    """Start times at most ``rate`` per second (None: no limit), spaced evenly, on the injected ``clock``.

    :meth:`reserve` books the next start and says how long to wait for it: the first at once, each next one
    ``1 / rate`` seconds after the one before (or at once, if that time has passed).
    """

    def __init__(self, rate: float | None, clock: Callable[[], float]) -> None:
        if rate is not None and not (math.isfinite(rate) and rate > 0):
            raise UsageError(f"rate must be a number of starts per second above 0, not {rate!r}")
        self.rate = rate
        self._clock = clock
        self._next = -math.inf

    def reserve(self) -> float:
        """Seconds to wait before the next start (0: now); the start is booked."""
        if self.rate is None:
            return 0.0
        now = self._clock()
        at = max(now, self._next)
        self._next = at + 1.0 / self.rate
        return at - now
