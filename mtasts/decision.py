"""The sender's cache decision table (RFC 8461 §3, §3.3, §5.1, §10.2) — pure: no I/O, no clock, no asyncio.

First, memory (:func:`memory_state`): a cached policy younger than its ``max_age`` whose TXT record was checked
within ``txt_check_interval`` is the answer (``fresh``); so is a remembered negative answer; a policy past its
``max_age`` is dropped (``expired``: as if never seen). (The resolver's synchronous hot path,
``cached_policy``, is this first rule inlined for speed.)

A lookup of a Policy Domain that memory cannot answer is a TXT query, then perhaps a policy fetch. What the
lookup does next, and what it answers, depends only on what is cached and how those steps ended. That table
lives here, as data and small functions in the manner of h11's ``_state.py``; :class:`~mtasts.resolver.
PolicyResolver` only sequences the I/O and carries out the :class:`Decision` it gets back.

After the TXT query (:func:`after_txt`):

====================  =====================  ===================================================================
TXT query             cached policy          decision
====================  =====================  ===================================================================
one valid record      same id                answer it (``cached``), TXT marked checked — §3: nothing to fetch
one valid record      none, or another id    fetch that id (§3.3) — unless it failed within the back-off
no usable record      live                   answer it (``cached``), TXT marked checked — §3.1, §10.2: the
                                             absence of a record never evicts a live policy
no usable record      none                   ``no-policy``, remembered ``negative_ttl``
DNS failure           live                   answer it (``cached``), TXT marked checked
DNS failure           none                   ``dns-error``, remembered ``dns_error_ttl``; ``defer`` under
                                             ``dns_error="defer"`` (C9)
local failure         live                   answer it (``cached``); the TXT check is retried next time
local failure         none                   ``local-error`` (``defer``), never remembered
(any, refresh)        live                   fetch the cached id again (§10.2), whatever the TXT said
====================  =====================  ===================================================================

A cached *expired* policy counts as none: it is never used, not even as a fallback (§3.3 "valid
(non-expired)"). When the store could not be read on a memory miss, it may hold the domain's policy: every
answer that would say "no policy" (``no-policy``, ``dns-error``, ``fetch-error``) is ``local-error`` instead.

Before a fetch (:func:`backed_off`): a (domain, id) whose fetch failed is not fetched again before its
``retry_after`` (§3.3 SHOULD, ``failure_backoff``, 5 minutes). After it (:func:`after_fetch`):

===================  =================  ====================================================================
fetch                cached policy      decision
===================  =================  ====================================================================
valid policy         any                answer it (``fetched``); it replaces the cached one (§10.3), even
                                        ``mode: none`` (§8.3); ``max_age: 0`` is not cached (C5)
failed / invalid     live               answer the cached one with the failure's result type (§3.3 MUST);
                                        back off that id; report it (§6)
failed / invalid     none               ``fetch-error``, remembered ``min(dns_error_ttl, failure_backoff)``;
                                        back off, report
backed off           live / none        as "failed", without a new back-off or report
local failure        live / none        the cached policy, else ``local-error``; no back-off, no report
===================  =================  ====================================================================

And :func:`refresh_after`: the one formula for when a cached policy is refreshed proactively (§3.3 SHOULD,
§10.2).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "Decision",
    "FetchOutcome",
    "Limits",
    "LookupStatus",
    "MemoryState",
    "Next",
    "Remember",
    "TxtOutcome",
    "after_fetch",
    "after_txt",
    "backed_off",
    "caches",
    "memory_state",
    "refresh_after",
]


class LookupStatus(enum.StrEnum):
    """How a lookup ended (``PolicyLookup.status``)."""

    FETCHED = "fetched"  # the policy was fetched just now
    CACHED = "cached"  # the cached policy applies (result_type says what failed, if a re-check failed)
    NO_POLICY = "no-policy"  # no valid _mta-sts TXT record: the domain publishes no policy (§3.1)
    DNS_ERROR = "dns-error"  # the TXT query failed (SERVFAIL, timeout) and nothing is cached: unknown
    FETCH_ERROR = "fetch-error"  # valid TXT record, but no valid policy could be fetched; nothing cached
    NOT_APPLICABLE = "not-applicable"  # an address literal: MTA-STS does not apply (§3.4)
    LOCAL_ERROR = "local-error"  # failed for a reason on this side (descriptors, a full queue, the store...)


class MemoryState(enum.StrEnum):
    """What memory holds for a domain at a given time (docs/resolver.md, "Cache states")."""

    FRESH = "fresh"  # a live policy, TXT checked recently: answered from memory
    CHECK_DUE = "check-due"  # a live policy whose TXT record is due a check: a TXT query
    EXPIRED = "expired"  # a policy past max_age: dropped, never used (§3.3); as if unknown
    NEGATIVE = "negative"  # a remembered no-policy / dns-error / fetch-error: answered from memory
    UNKNOWN = "unknown"  # nothing: a TXT query, then a fetch


def memory_state(
    now: float, *, expires_at: float | None, fresh_until: float | None, negative_until: float | None
) -> MemoryState:
    """Classify what memory holds: a cached policy's expiry and freshness, a negative answer's end (or None)."""
    if expires_at is not None and now < expires_at:
        if fresh_until is not None and now < fresh_until:
            return MemoryState.FRESH
        if negative_until is None or now >= negative_until:
            return MemoryState.CHECK_DUE
    if negative_until is not None and now < negative_until:
        return MemoryState.NEGATIVE
    return MemoryState.EXPIRED if expires_at is not None else MemoryState.UNKNOWN


class TxtOutcome(enum.StrEnum):
    """How the ``_mta-sts`` TXT query ended, as the table sees it."""

    RECORD = "record"  # exactly one valid STS record (§3.1): its id names the policy version
    NO_RECORD = "no-record"  # NXDOMAIN, NODATA, no / several / invalid STS records: none published (§3.1)
    DNS_ERROR = "dns-error"  # SERVFAIL, REFUSED, timeout: nothing is known
    LOCAL_ERROR = "local-error"  # the query could not be made here (descriptors, a full queue)


class FetchOutcome(enum.StrEnum):
    """How the policy fetch ended."""

    FETCHED = "fetched"  # a valid policy
    FAILED = "failed"  # HTTP, TLS, DNS of the policy host, or an invalid policy: the domain's failure
    BACKED_OFF = "backed-off"  # not tried: this id failed within the back-off (§3.3)
    LOCAL_ERROR = "local-error"  # this machine's failure: says nothing about the domain


class Next(enum.StrEnum):
    """What the resolver does with a :class:`Decision`."""

    ANSWER = "answer"
    FETCH = "fetch"


class Remember(enum.StrEnum):
    """Which negative answer is kept in memory, and so for how long (:meth:`Limits.ttl`)."""

    NO_POLICY = "no-policy"  # negative_ttl
    DNS_ERROR = "dns-error"  # dns_error_ttl
    FETCH_ERROR = "fetch-error"  # min(dns_error_ttl, failure_backoff): a new id is still seen soon


@dataclass(frozen=True, slots=True)
class Limits:
    """The resolver's settings the table needs."""

    negative_ttl: float = 300.0
    dns_error_ttl: float = 30.0
    failure_backoff: float = 300.0
    defer_dns_errors: bool = False  # PolicyResolver(dns_error="defer")

    def ttl(self, remember: Remember) -> float:
        if remember is Remember.NO_POLICY:
            return self.negative_ttl
        if remember is Remember.DNS_ERROR:
            return self.dns_error_ttl
        return min(self.dns_error_ttl, self.failure_backoff)


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do next: fetch ``fetch_id``, or answer with ``status``, and the bookkeeping that goes with it."""

    next: Next
    status: LookupStatus | None = None  # the answer's status (ANSWER)
    fetch_id: str | None = None  # the id to fetch (FETCH)
    use_cached: bool = False  # answer with the cached policy
    mark_checked: bool = False  # the TXT record was checked now: the cached policy is fresh again
    remember: Remember | None = None  # keep this negative answer in memory
    defer: bool = False  # "try again later": no answer can be given now
    back_off: bool = False  # start the §3.3 back-off for the id that failed
    report: bool = False  # a reportable fetch failure (§6, TLS-RPT; an alert under a cached policy, §3.3)
    store_unread: bool = False  # the answer is local-error because the store might hold a policy


_FETCH_AGAIN = Decision(Next.FETCH)  # (fetch_id filled in)
_CACHED_CHECKED = Decision(Next.ANSWER, LookupStatus.CACHED, use_cached=True, mark_checked=True)
_CACHED_UNCHECKED = Decision(Next.ANSWER, LookupStatus.CACHED, use_cached=True)
_LOCAL = Decision(Next.ANSWER, LookupStatus.LOCAL_ERROR, defer=True)
_UNREAD = Decision(Next.ANSWER, LookupStatus.LOCAL_ERROR, defer=True, store_unread=True)
_NO_POLICY = Decision(Next.ANSWER, LookupStatus.NO_POLICY, remember=Remember.NO_POLICY)
_DNS_ERROR = Decision(Next.ANSWER, LookupStatus.DNS_ERROR, remember=Remember.DNS_ERROR)
_DNS_ERROR_DEFER = Decision(Next.ANSWER, LookupStatus.DNS_ERROR, remember=Remember.DNS_ERROR, defer=True)

#: After the TXT query, with a live cached policy and no refresh: (outcome, same id?) -> decision.
#: ``same id`` only matters for RECORD; for the others it is False. A RECORD with another id is a fetch.
_WITH_CACHED: dict[tuple[TxtOutcome, bool], Decision] = {
    (TxtOutcome.RECORD, True): _CACHED_CHECKED,  # §3: same id, nothing to fetch
    (TxtOutcome.NO_RECORD, False): _CACHED_CHECKED,  # §3.1, §10.2: absence never evicts a live policy
    (TxtOutcome.DNS_ERROR, False): _CACHED_CHECKED,
    (TxtOutcome.LOCAL_ERROR, False): _CACHED_UNCHECKED,  # nothing learnt: check again next time
}

#: After the TXT query, with nothing (live) cached, for outcomes that are answers: outcome -> decision.
_WITHOUT_CACHED: dict[TxtOutcome, Decision] = {
    TxtOutcome.NO_RECORD: _NO_POLICY,
    TxtOutcome.DNS_ERROR: _DNS_ERROR,
    TxtOutcome.LOCAL_ERROR: _LOCAL,
}


def after_txt(
    txt: TxtOutcome,
    policy_id: str | None,
    cached_id: str | None,
    *,
    refresh: bool = False,
    store_unread: bool = False,
    limits: Limits,
) -> Decision:
    """The decision after the TXT query (module table).

    ``policy_id``: the id of the one valid record (RECORD), else None. ``cached_id``: the id of the live cached
    policy, or None when nothing live is cached. ``refresh``: a proactive refresh (§10.2): a live policy is
    fetched again, whatever the TXT query said (except a local failure). ``store_unread``: the store could not
    be read on a memory miss.
    """
    if cached_id is not None:
        if txt is TxtOutcome.LOCAL_ERROR:
            return _CACHED_UNCHECKED
        if refresh:
            fetch_id = policy_id if txt is TxtOutcome.RECORD and policy_id is not None else cached_id
            # the TXT record was checked (a failed query counts as checked, as in the table): only the fetch waits
            return Decision(Next.FETCH, fetch_id=fetch_id, mark_checked=txt is not TxtOutcome.RECORD)
        if txt is TxtOutcome.RECORD and policy_id != cached_id:
            return Decision(Next.FETCH, fetch_id=policy_id)  # a new id: §3.3
        return _WITH_CACHED[(txt, txt is TxtOutcome.RECORD)]
    if txt is TxtOutcome.RECORD and policy_id is not None:
        return Decision(Next.FETCH, fetch_id=policy_id)
    if txt is TxtOutcome.LOCAL_ERROR:
        return _LOCAL
    if store_unread:
        return _UNREAD
    if txt is TxtOutcome.DNS_ERROR and limits.defer_dns_errors:
        return _DNS_ERROR_DEFER
    return _WITHOUT_CACHED[txt]


def backed_off(failed_id: str | None, retry_after: float | None, policy_id: str, now: float) -> bool:
    """§3.3: is ``policy_id`` still within the back-off of its last failed fetch?"""
    return failed_id == policy_id and retry_after is not None and now < retry_after


_FETCHED = Decision(Next.ANSWER, LookupStatus.FETCHED)
_AFTER_FETCH: dict[tuple[FetchOutcome, bool], Decision] = {
    # (outcome, a live policy cached?) -> decision; a FETCHED answer is the same either way
    (FetchOutcome.FETCHED, True): _FETCHED,
    (FetchOutcome.FETCHED, False): _FETCHED,
    (FetchOutcome.FAILED, True): Decision(
        Next.ANSWER, LookupStatus.CACHED, use_cached=True, mark_checked=True, back_off=True, report=True
    ),
    (FetchOutcome.FAILED, False): Decision(
        Next.ANSWER, LookupStatus.FETCH_ERROR, remember=Remember.FETCH_ERROR, back_off=True, report=True
    ),
    (FetchOutcome.BACKED_OFF, True): Decision(Next.ANSWER, LookupStatus.CACHED, use_cached=True, mark_checked=True),
    (FetchOutcome.BACKED_OFF, False): Decision(Next.ANSWER, LookupStatus.FETCH_ERROR, remember=Remember.FETCH_ERROR),
    (FetchOutcome.LOCAL_ERROR, True): _CACHED_UNCHECKED,
    (FetchOutcome.LOCAL_ERROR, False): _LOCAL,
}


def after_fetch(fetch: FetchOutcome, *, cached: bool, store_unread: bool = False) -> Decision:
    """The decision after the fetch (module table). ``cached``: a live policy is cached."""
    decision = _AFTER_FETCH[(fetch, cached)]
    if store_unread and decision.status is LookupStatus.FETCH_ERROR:
        # the store may hold a valid policy: never "no policy" — but the domain's failure is still real
        return Decision(
            Next.ANSWER, LookupStatus.LOCAL_ERROR, defer=True, back_off=decision.back_off, report=decision.report,
            store_unread=True,
        )  # fmt: skip
    return decision


def caches(max_age: int) -> bool:
    """Is a freshly fetched policy cached? Not with ``max_age: 0``: it applies to the lookup in progress only, and
    replaces (removes) what was cached (decisions table, C5)."""
    return max_age > 0


def refresh_after(max_age: float, refresh_interval: float) -> float:
    """Seconds after a fetch when the proactive refresh is due (§3.3 SHOULD refresh before expiry, §10.2):
    ``refresh_interval`` (default a day, the RFC's suggestion) or three quarters of ``max_age``, if shorter."""
    return min(refresh_interval, max_age * 0.75)
