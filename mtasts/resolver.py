"""The async policy resolver: the RFC 8461 sender algorithm against real DNS and HTTPS.

For a Policy Domain, :meth:`PolicyResolver.lookup` does what §3, §3.3, §5.1 and §10 ask of a sender:

1. A fresh cached policy (younger than its ``max_age``, TXT checked within ``txt_check_interval``) is
   answered from memory.
2. Otherwise the ``_mta-sts`` TXT record is queried (§3.1). The same ``id`` as the cached policy → the cached
   policy stands and nothing is fetched (§3). A new ``id``, or no cached policy → the policy is fetched
   (§3.3) and, if valid, replaces the cached one (§10.3) — even a ``mode: none`` one (§8.3).
3. A failed fetch or an invalid policy never replaces or alters the cached policy, and its new ``id`` is not
   stored (C7); the cached one applies until its ``max_age`` runs out (§3.3 MUST). The failed (domain, id)
   is not fetched again for ``failure_backoff`` seconds (§3.3 SHOULD, 5 minutes).
4. No TXT record, an invalid one, SERVFAIL or a timeout never evict a live cached policy (§3.1 note, §10.2).
   Without one, the domain has no policy — but :class:`PolicyLookup` says whether none is published or DNS
   failed, and with ``dns_error="defer"`` a DNS failure is "try again later" instead.
5. An expired policy is never used (§3.3 "valid (non-expired)"); ``max_age: 0`` applies once, uncached.
6. Trouble on *this* side — no free descriptor for a DNS or HTTPS socket, a DNS or fetch queue full past
   ``queue_timeout``, a store that cannot be read on a memory miss, the resolver closing, a bug — never ends in
   "no policy": the cached policy applies if there is one, else the lookup is ``LOCAL_ERROR`` ("try again
   later": :attr:`PolicyLookup.defer`). It is not remembered, not backed off and not reported to the domain.

Also: address literals have no policy and cause no I/O (§3.4); there is no parent-zone fallback (§3.4);
concurrent lookups of one domain share one DNS query and one fetch (single-flight); "no policy" answers are
remembered for ``negative_ttl``; :meth:`refresh_due` / :meth:`start_background_refresh` re-fetch cached
policies before they expire (§3.3 SHOULD, §10.2), logging failures unless the cached mode is none.

The ``clock`` is the only time source for every cache decision, read through a
:class:`~mtasts.clock.SteadyClock`: if the wall clock steps back, cached answers still age in real time.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import ssl
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, Final

import cachetools
import dns.asyncresolver
import dns.exception

from . import dns as mtasts_dns
from ._checks import check_count, check_seconds
from .cache import CacheEntry, ExpiringCache, PolicyCache, hot_readers
from .clock import SteadyClock
from .decision import (
    Decision,
    FetchOutcome,
    Limits,
    LookupStatus,
    MemoryState,
    Next,
    TxtOutcome,
    after_fetch,
    after_txt,
    backed_off,
    caches,
    memory_state,
    refresh_after,
)
from .domain import is_address_literal, normalize_domain
from .errors import LocalError, LookupDeferredError, MTASTSError, UsageError
from .fetch import PolicyFetcher
from .policy import Mode, Policy, parse_policy
from .stats import ResolverStats, cached_mode, policy_change
from .stores._base import PolicyStore, StoredPolicy
from .stores._link import StoreLink, StoreUnavailable
from .stores.fleet import FleetUnavailable, Lease, RedisFleet, SharedNegative
from .tls import create_client_context, ensure_strict
from .txt import explain_txt_records, is_policy_id, select_txt_record

__all__ = [
    "NOT_CACHED",
    "CacheState",
    "FetchFailure",
    "LookupStatus",
    "NotCached",
    "PolicyLookup",
    "PolicyResolver",
    "PurgeResult",
]

log = logging.getLogger("mtasts.resolver")


#: How ``PolicyResolver(dns_error=...)`` treats a failed TXT query with nothing cached.
DNS_ERROR_MODES: Final = ("no-policy", "defer")


@dataclass(frozen=True, slots=True)
class PolicyLookup:
    """The result of :meth:`PolicyResolver.lookup`: the policy to apply now, and how it was found."""

    domain: str
    status: LookupStatus
    policy: Policy | None = None
    policy_id: str | None = None
    fetched_at: float | None = None
    #: answered from memory with no I/O: a cached policy, or a remembered "no policy" / failure
    from_cache: bool = False
    #: RFC 8460 result type of a failure seen during this lookup (even when a cached policy still applies).
    result_type: str | None = None
    error: str | None = None
    #: True when no answer can be given now: defer the mail and try again later. Set for ``LOCAL_ERROR``, and
    #: for ``DNS_ERROR`` under ``dns_error="defer"``; ``policy`` is then None but does *not* mean "no policy".
    defer: bool = False

    @property
    def expires_at(self) -> float | None:
        if self.policy is None or self.fetched_at is None:
            return None
        return self.fetched_at + self.policy.max_age


@dataclass(frozen=True, slots=True)
class FetchFailure:
    """A failed policy fetch (a reportable event, RFC 8461 §6) handed to the failure callbacks."""

    domain: str
    policy_id: str | None
    result_type: str | None
    error: str
    cached_policy: Policy | None
    refresh: bool  # True when it happened during a proactive refresh


@dataclass(frozen=True, slots=True)
class CacheState:
    """What a resolver remembers of one domain (:meth:`PolicyResolver.cache_state`); times on the wall clock."""

    domain: str
    #: the cached policy (expired or not: an expired one is dropped at the domain's next lookup)
    entry: CacheEntry | None = None
    #: a remembered answer without a policy (no policy published, a DNS or fetch failure), and until when
    negative: PolicyLookup | None = None
    negative_until: float | None = None
    #: the id whose fetch failed: not fetched again before ``backoff_until`` (§3.3), with the failure seen
    backoff_id: str | None = None
    backoff_result_type: str | None = None
    backoff_error: str | None = None
    backoff_until: float | None = None


@dataclass(frozen=True, slots=True)
class PurgeResult:
    """What :meth:`PolicyResolver.purge` forgot."""

    domain: str
    policy: bool = False  # a cached policy
    negative: bool = False  # a remembered negative answer
    backoff: bool = False  # a fetch back-off
    #: "deleted" (the stored row is gone), "pending" (the store cannot be written now: the delete is retried,
    #: and this process never reads the old row back meanwhile), or "none" (no store)
    store: str = "none"
    waited: int = 0  # lookups of the domain in flight that the purge waited for
    unfinished: int = 0  # of those, still running when the wait ended (what they learn is kept)


class NotCached(enum.Enum):
    """The type of :data:`NOT_CACHED`."""

    TOKEN = "NOT_CACHED"

    def __repr__(self) -> str:
        return "NOT_CACHED"

    __str__ = __repr__


#: What :meth:`PolicyResolver.cached_policy` returns when memory alone cannot answer.
NOT_CACHED: Final = NotCached.TOKEN


@dataclass(frozen=True, slots=True)
class _Failure:
    """The last failed fetch of a domain: no new fetch of ``policy_id`` before ``retry_after`` (§3.3)."""

    policy_id: str
    result_type: str | None
    error: str
    retry_after: float


def _failure_expiry(key: str, failure: _Failure, now: float) -> float:
    return failure.retry_after


@dataclass(slots=True)
class _Checked:
    """Outcome of one TXT query (the cache decision table's input)."""

    answer: mtasts_dns.TxtAnswer
    policy_id: str | None  # the id of the one valid STS record, if any


class PolicyResolver:
    """Finds the MTA-STS policy to apply to mail for a domain (RFC 8461 §3, §5.1). See the module docs.

    Use as ``async with PolicyResolver(...) as resolver:`` (or call :meth:`aclose`).
    """

    #: ``resolver.cached_policy(domain)`` — answer from memory without awaiting, when memory can: the policy,
    #: None (no policy), or :data:`NOT_CACHED`. The synchronous fast path for hot loops::
    #:
    #:     policy = resolver.cached_policy(domain)
    #:     if policy is NOT_CACHED:
    #:         policy = await resolver.get_policy(domain)
    cached_policy: Callable[[str], Policy | NotCached | None]

    #: ``await resolver.get_policy(domain)`` — the policy to apply now to mail for ``domain`` (fetched or cached),
    #: or None when it has none usable. Never raises for DNS, HTTP or policy failures of the domain (they end in
    #: None or the cached policy); raises :class:`~mtasts.errors.DomainError` for a string that is not a domain
    #: name, and :class:`~mtasts.errors.LookupDeferredError` when no answer can be given now (a ``LOCAL_ERROR``
    #: lookup, or a DNS failure under ``dns_error="defer"``): defer the mail — None would mean "no policy".
    get_policy: Callable[[str], Coroutine[Any, Any, Policy | None]]

    def __init__(
        self,
        *,
        dns_resolver: dns.asyncresolver.Resolver | None = None,
        ssl_context: ssl.SSLContext | None = None,
        policy_port: int = 443,
        clock: Callable[[], float] = time.time,
        fetch_timeout: float = 60.0,
        fetch_idle_timeout: float = 15.0,
        max_policy_size: int = 65_536,
        failure_backoff: float = 300.0,
        negative_ttl: float = 300.0,
        cache_size: int = 100_000,
        max_concurrent_fetches: int = 512,
        max_concurrent_dns: int = 256,
        txt_check_interval: float = 300.0,
        dns_error_ttl: float = 30.0,
        refresh_interval: float = 86_400.0,
        negative_cache_size: int = 100_000,
        on_fetch_failure: Callable[[FetchFailure], object] | None = None,
        on_refresh_failure: Callable[[FetchFailure], object] | None = None,
        store: PolicyStore | None = None,
        store_retry: float = 30.0,
        dns_error: str = "no-policy",
        queue_timeout: float = 30.0,
        monotonic: Callable[[], float] | None = None,
    ) -> None:
        for name, value in [
            ("fetch_timeout", fetch_timeout),
            ("fetch_idle_timeout", fetch_idle_timeout),
            ("failure_backoff", failure_backoff),
            ("negative_ttl", negative_ttl),
            ("txt_check_interval", txt_check_interval),
            ("dns_error_ttl", dns_error_ttl),
            ("refresh_interval", refresh_interval),
            ("store_retry", store_retry),
            ("queue_timeout", queue_timeout),
        ]:
            check_seconds(name, value)
        if dns_error not in DNS_ERROR_MODES:
            raise UsageError(f"dns_error must be one of {', '.join(map(repr, DNS_ERROR_MODES))}, not {dns_error!r}")
        for name, count in [
            ("max_policy_size", max_policy_size),
            ("cache_size", cache_size),
            ("max_concurrent_fetches", max_concurrent_fetches),
            ("max_concurrent_dns", max_concurrent_dns),
            ("negative_cache_size", negative_cache_size),
            ("policy_port", policy_port),
        ]:
            check_count(name, count)
        if dns_resolver is None:
            try:
                dns_resolver = dns.asyncresolver.Resolver()
            except dns.exception.DNSException as exc:
                raise MTASTSError(f"cannot read the system DNS configuration: {exc}") from None
        self.dns_resolver = dns_resolver
        self._dns = mtasts_dns.GatedResolver(dns_resolver, max_concurrent_dns, queue_timeout)  # its own queries
        if monotonic is None:  # an injected clock is its own steady companion unless one is given with it
            monotonic = time.monotonic if clock is time.time else clock
        self._steady = SteadyClock(clock, monotonic)  # every cache time, through a clock that cannot step back
        self._now = self._steady.now
        self.dns_error = dns_error
        self._limits = Limits(negative_ttl, dns_error_ttl, failure_backoff, defer_dns_errors=dns_error == "defer")
        self._fetcher = PolicyFetcher(
            dns_resolver=self._dns,
            ssl_context=ensure_strict(ssl_context) if ssl_context is not None else create_client_context(),
            port=policy_port,
            timeout=fetch_timeout,
            idle_timeout=fetch_idle_timeout,
            max_size=max_policy_size,
            max_concurrent=max_concurrent_fetches,
            queue_timeout=queue_timeout,
        )
        self._cache = PolicyCache(cache_size)

        # domain -> PolicyLookup for NO_POLICY / DNS_ERROR answers (TTL chosen per item below)
        self._negative: ExpiringCache[PolicyLookup] = ExpiringCache(negative_cache_size)
        # The hot paths are closures over the cache's structures (mtasts.cache.hot_readers), held as plain instance
        # attributes: no method of the same name on the class, so CPython specialises the attribute load.
        self.cached_policy, self.get_policy = hot_readers(
            self._cache, self._negative, self._steady, miss=self._cached_miss, not_cached=NOT_CACHED,
            lookup=self._get_miss,
        )  # fmt: skip
        # domain -> the last failed fetch (its id, result type, retry time): §3.3 back-off per version id
        self._failures: cachetools.TLRUCache[str, _Failure] = cachetools.TLRUCache(
            maxsize=negative_cache_size, ttu=_failure_expiry, timer=self._now
        )
        self._failure_backoff = failure_backoff
        self._store = StoreLink(store, retry_after=store_retry) if store is not None else None
        # One lookup per cold domain across the processes sharing this store (RedisStore(fleet_single_flight=True))
        fleet = getattr(store, "fleet", None)
        self._fleet: RedisFleet | None = fleet if isinstance(fleet, RedisFleet) else None
        self._started: asyncio.Future[None] | None = None
        self._negative_ttl = negative_ttl
        self._dns_error_ttl = dns_error_ttl
        self._txt_check_interval = txt_check_interval
        self._refresh_interval = refresh_interval
        self._on_fetch_failure = on_fetch_failure
        self._on_refresh_failure = on_refresh_failure
        self._inflight: dict[tuple[str, str], asyncio.Future[PolicyLookup]] = {}
        self._background: asyncio.Task[None] | None = None
        self._next_refresh_at = -math.inf  # no refresh is due before this time (refresh_due's fast exit)
        self._closed = False
        #: what this resolver counted off its hot path (:class:`~mtasts.stats.ResolverStats`; read by metrics)
        self.stats = ResolverStats()

    @property
    def clock(self) -> Callable[[], float]:
        """The injected wall clock (read through a :class:`~mtasts.clock.SteadyClock`)."""
        return self._steady.wall

    # -- lifecycle -----------------------------------------------------------------------------------------------

    async def __aenter__(self) -> PolicyResolver:
        await self.start()
        return self

    async def start(self) -> None:
        """Restore the cache from the store (if any). Called by ``async with`` and, if needed, the first lookup."""
        if self._started is None:
            self._started = asyncio.ensure_future(self._restore())
        await asyncio.shield(self._started)

    async def _restore(self) -> None:
        if self._store is None:
            return
        now, restored = self._now(), 0
        parsed: dict[str, Policy] = {}  # policy text -> policy: domains sharing a policy parse it once
        async for row in self._store.scan():
            restored += self._adopt(row, now, parsed)
        if restored:
            log.info("restored %d cached policies from the store", restored)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the background refresher, cancel lookups in flight, close the HTTP session (idempotent)."""
        self._closed = True
        tasks: list[asyncio.Future[Any]] = list(self._inflight.values())
        if self._background is not None:
            tasks.append(self._background)
            self._background = None
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._inflight.clear()
        if self._started is not None and not self._started.done():
            self._started.cancel()
            await asyncio.gather(self._started, return_exceptions=True)
        await self._fetcher.aclose()
        if self._store is not None:
            await self._store.aclose()

    # -- the public lookups ----------------------------------------------------------------------------------------

    def _cached_miss(self, domain: str, now: float) -> Policy | NotCached | None:
        """:meth:`cached_policy` past the hot path: the domain in normal form, looked up again; else NOT_CACHED."""
        negative = self._negative.get(domain, now) if type(domain) is str else None
        if negative is not None:
            return NOT_CACHED if negative.defer else None
        key = self._key(domain)
        if key is None:
            return None
        if key != domain:
            policy = self._cache.fresh_policy(key, now)
            if policy is not None:
                return policy
            negative = self._negative.get(key, now)
            if negative is not None:
                return NOT_CACHED if negative.defer else None
        return NOT_CACHED

    async def _get_miss(self, domain: str) -> Policy | None:
        """:meth:`get_policy` past the hot path."""
        policy = self.cached_policy(domain)
        if policy is not NOT_CACHED:
            return policy
        lookup = await self.lookup(domain)
        if lookup.defer:
            raise LookupDeferredError(
                f"no MTA-STS answer for {lookup.domain} now ({lookup.status}: {lookup.error}): try again later",
                domain=lookup.domain,
                status=lookup.status,
            )
        return lookup.policy

    async def lookup(self, domain: str) -> PolicyLookup:
        """Like :meth:`get_policy`, with details: status, id, fetch time, failure seen (:class:`PolicyLookup`)."""
        key = self._key(domain)
        if key is None:
            return PolicyLookup(domain, LookupStatus.NOT_APPLICABLE)
        if self._started is None or not self._started.done():
            closed = await self._start_for(key)
            if closed is not None:
                return closed
        remembered = self._from_memory(key)
        if remembered is not None:
            return remembered
        return await self._single_flight(key, "lookup", lambda: self._resolve(key))

    async def recheck(self, domain: str) -> PolicyLookup:
        """Query the TXT record now, and fetch if its id changed (§5.1 step 3: before failing a delivery).

        Use it when every MX failed under enforce: if the domain published a new policy, the result carries it.
        """
        key = self._key(domain)
        if key is None:
            return PolicyLookup(domain, LookupStatus.NOT_APPLICABLE)
        self._negative.pop(key)
        closed = await self._start_for(key)
        if closed is not None:
            return closed
        return await self._single_flight(key, "recheck", lambda: self._resolve(key))

    async def refresh(self, domain: str) -> PolicyLookup:
        """Re-fetch the policy now even if its id is unchanged (§10.2); a success renews ``fetched_at``."""
        key = self._key(domain)
        if key is None:
            return PolicyLookup(domain, LookupStatus.NOT_APPLICABLE)
        self._negative.pop(key)
        closed = await self._start_for(key)
        if closed is not None:
            return closed
        return await self._single_flight(key, "refresh", lambda: self._resolve(key, refresh=True))

    async def refresh_due(self, *, limit: int | None = None) -> list[PolicyLookup]:
        """Refresh every cached policy that is due (§3.3 SHOULD refresh before expiry), concurrently.

        An entry is due once ``refresh_interval`` (default a day, the RFC's suggestion) has passed since its
        fetch, or three quarters of its ``max_age``, whichever comes first. Failures are logged (WARNING unless
        the cached mode is none, §3.3) and passed to ``on_refresh_failure``; the cached policy stays.
        """
        now = self._now()
        if now < self._next_refresh_at:
            return []  # nothing is due yet: no scan (the background task calls this every period)
        due, self._next_refresh_at = self._cache.due_for_refresh(now, self._refresh_interval)
        if limit is not None:
            due = due[:limit]
        if not due:
            return []
        return list(await asyncio.gather(*(self.refresh(domain) for domain in due)))

    def start_background_refresh(self, period: float = 3600.0) -> None:
        """Run :meth:`refresh_due` every ``period`` seconds in a task, until :meth:`aclose`."""
        if self._background is not None and not self._background.done():
            return
        self._background = asyncio.get_running_loop().create_task(self._refresh_loop(period))

    async def _refresh_loop(self, period: float) -> None:
        while not self._closed:
            try:
                await self.refresh_due()
            except Exception:  # a bug must not stop the refresher; it is logged and retried next period
                log.exception("proactive refresh failed")
            await asyncio.sleep(period)

    # -- the cache, directly ---------------------------------------------------------------------------------------

    def cache_policy(self, domain: str, policy: Policy, policy_id: str, *, fetched_at: float | None = None) -> None:
        """Put a policy in the cache as if it had been fetched at ``fetched_at`` (default: now) under ``policy_id``.

        For warming a cache from your own records, or pinning a policy in tests. ``max_age`` still applies.
        """
        key = self._key(domain)
        if key is None:
            raise UsageError(f"address literals have no MTA-STS policy: {domain!r}")
        if not isinstance(policy, Policy):
            raise UsageError(f"expected a Policy, not {type(policy).__name__}")
        if not is_policy_id(policy_id):
            raise UsageError(f"invalid policy id {policy_id!r}: 1 to 32 letters and digits (RFC 8461 §3.1)")
        when = self._now() if fetched_at is None else self._steady.from_wall(fetched_at)
        if caches(policy.max_age):
            self._store_in_cache(key, policy, policy_id, when)
            self._negative.pop(key)
            self._persist(key, checked_at=when)

    def _store_in_cache(self, key: str, policy: Policy, policy_id: str, fetched_at: float) -> Policy:
        """Cache a fetched policy; returns the stored (interned) instance."""
        entry = self._cache.put(key, policy, policy_id, fetched_at=fetched_at, fresh_for=self._txt_check_interval)
        self._next_refresh_at = min(self._next_refresh_at, entry.fetched_at + self._refresh_after(policy))
        return entry.policy

    def _refresh_after(self, policy: Policy) -> float:
        """Seconds after a fetch when the proactive refresh is due (:func:`mtasts.decision.refresh_after`)."""
        return refresh_after(policy.max_age, self._refresh_interval)

    def _mark_checked(self, key: str) -> None:
        now = self._now()
        self._cache.mark_checked(key, now, self._txt_check_interval)
        self._persist(key, checked_at=now)

    # -- the persistent store ----------------------------------------------------------------------------------

    def _persist(self, key: str, *, checked_at: float | None = None) -> None:
        """Queue the domain's current state (cached policy, last failure) for the store; delete if none."""
        if self._store is None:
            return
        entry = self._cache.get(key)
        failure = self._failures.get(key)
        if entry is None and failure is None:
            self._store.delete(key)
            return
        wall = self._steady.to_wall  # stores hold wall-clock times: other processes and restarts read them
        self._store.put(
            StoredPolicy(
                domain=key,
                policy_id=entry.policy_id if entry else None,
                policy_text=entry.policy.to_text() if entry else None,
                fetched_at=wall(entry.fetched_at) if entry else None,
                checked_at=wall(checked_at if checked_at is not None else entry.fetched_at) if entry else None,
                expires_at=wall(entry.expires_at) if entry else None,
                failed_id=failure.policy_id if failure else None,
                failure=failure.result_type if failure else None,
                failure_detail=failure.error[:500] if failure else None,
                retry_after=wall(failure.retry_after) if failure else None,
            )
        )

    def _adopt(self, row: StoredPolicy, now: float, parsed: dict[str, Policy]) -> int:
        """Take a stored row into memory (a live policy, a running back-off). Returns 1 if a policy was adopted.

        Rows that cannot be trusted (a domain not in normal form, an invalid id or policy, anything that fails)
        are skipped, logged and deleted: the domain is simply fetched again. A row whose times lie in the future
        (written by a process whose clock ran ahead, or before this machine's clock stepped back) cannot tell its
        real age: it is taken as fetched now at the latest — so it lives at most its ``max_age`` from now — with
        its TXT check due at once, and a back-off of at most ``failure_backoff`` from now.
        """
        try:
            key = normalize_domain(row.domain)
            if key != row.domain:
                raise MTASTSError("domain not in normal form")
            from_wall = self._steady.from_wall
            if row.failed_id and row.retry_after is not None:
                retry_after = min(from_wall(row.retry_after), now + self._failure_backoff)
                if retry_after > now:
                    self._failures[key] = _Failure(row.failed_id, row.failure, row.failure_detail or "", retry_after)
            if not row.has_policy or row.expires_at is None or from_wall(row.expires_at) <= now:
                return 0
            assert row.policy_text is not None and row.policy_id is not None and row.fetched_at is not None
            policy = parsed.get(row.policy_text)
            if policy is None:
                policy = parsed[row.policy_text] = parse_policy(row.policy_text)
            if not is_policy_id(row.policy_id):
                raise MTASTSError(f"invalid id {row.policy_id!r}")
            fetched = from_wall(row.fetched_at)
            checked = from_wall(row.checked_at) if row.checked_at is not None else fetched
            if fetched > now or checked > now:  # from the future: see above
                fetched, checked = min(fetched, now), -math.inf
            if fetched + policy.max_age <= now:
                return 0
            self._cache.put(key, policy, row.policy_id, fetched_at=fetched,
                            fresh_for=checked - fetched + self._txt_check_interval)  # fmt: skip
        except Exception as exc:  # a bad row is never fatal (a foreign store may hold anything)
            log.warning(
                "ignoring an unreadable stored policy for %r: %s",
                row.domain[:100] if isinstance(row.domain, str) else row.domain,
                exc if isinstance(exc, MTASTSError) else f"{type(exc).__name__}: {exc}",
            )
            if self._store is not None and isinstance(row.domain, str):
                self._store.delete(row.domain)
            return 0
        self._next_refresh_at = min(self._next_refresh_at, fetched + self._refresh_after(policy))
        return 1

    # -- introspection -------------------------------------------------------------------------------------------

    def cache_entry(self, domain: str) -> CacheEntry | None:
        """The cached entry for ``domain`` (expired or not), for inspection; times as the wall clock shows them."""
        key = self._key(domain)
        return None if key is None else self._on_wall_clock(self._cache.get(key))

    def _on_wall_clock(self, entry: CacheEntry | None) -> CacheEntry | None:
        """``entry`` with its times as the wall clock shows them (the cache keeps them on the steady clock)."""
        offset = self._steady.offset
        if entry is None or not offset:
            return entry
        return CacheEntry(entry.policy, entry.policy_id, entry.expires_at - offset, entry.fresh_until - offset)

    @property
    def cache_size(self) -> int:
        return len(self._cache)

    def cached_entries(self) -> Iterator[tuple[str, CacheEntry]]:
        """Every cached policy as (domain, entry), expired or not, oldest fetch first; times on the wall clock.

        A snapshot of the domains is taken first (one list of the keys), so the cache may change meanwhile: a
        domain dropped since is skipped.
        """
        cache = self._cache
        for domain in list(cache.data):
            entry = self._on_wall_clock(cache.get(domain))
            if entry is not None:
                yield domain, entry

    def cache_state(self, domain: str) -> CacheState | None:
        """What is remembered of ``domain`` — its cached policy, a negative answer still in force, a fetch back-off
        still running — or None when nothing is. Raises :class:`~mtasts.errors.DomainError` for a bad name."""
        key = self._key(domain)
        if key is None:
            return None
        now, to_wall = self._now(), self._steady.to_wall
        entry = self.cache_entry(key)
        remembered = self._negative.item(key)
        negative = remembered if remembered is not None and now < remembered[0] else None
        failure = self._failures.get(key)
        if failure is not None and failure.retry_after <= now:
            failure = None
        if entry is None and negative is None and failure is None:
            return None
        return CacheState(
            key,
            entry,
            negative[1] if negative is not None else None,
            to_wall(negative[0]) if negative is not None else None,
            failure.policy_id if failure is not None else None,
            failure.result_type if failure is not None else None,
            failure.error if failure is not None else None,
            to_wall(failure.retry_after) if failure is not None else None,
        )

    async def purge(self, domain: str, *, wait: float = 60.0) -> PurgeResult:
        """Forget ``domain``: its cached policy, a remembered negative answer, its fetch back-off and its stored
        row, so that its next lookup queries the TXT record and fetches the policy afresh — the remedy for a
        policy changed without a new id (RFC 8461 §3.1 says to change it; not everyone does).

        Lookups of the domain already in flight are waited for first (up to ``wait`` seconds; callers waiting on
        them get their answer), and what they learnt is forgotten with the rest. From the moment memory is
        cleared, a lookup does the TXT query and the fetch: never an answer from the old state — the store's
        row is not read back while its delete is pending (:class:`~mtasts.stores._link.StoreLink`). With nothing
        cached, a failed fetch then means no policy, as for a domain met for the first time (§3.3).

        Other processes sharing the store keep their memory copies until purged themselves.
        """
        key = self._key(domain)
        if key is None:
            raise UsageError(f"address literals have no MTA-STS policy: {domain!r}")
        check_seconds("wait", wait)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        seen: set[asyncio.Future[PolicyLookup]] = set()
        pending: list[asyncio.Future[PolicyLookup]] = []
        for _ in range(3):  # one flight may be followed by another (a refresh after a lookup): bounded
            pending = [f for (k, _kind), f in self._inflight.items() if k == key and not f.done()]
            remaining = deadline - loop.time()
            if not pending or remaining <= 0:
                break
            seen.update(pending)
            await asyncio.wait(pending, timeout=remaining)
        unfinished = sum(1 for future in pending if not future.done())
        policy = self._cache.pop(key) is not None
        negative = self._negative.item(key) is not None
        self._negative.pop(key)
        backoff = self._failures.pop(key, None) is not None
        store = "none"
        if self._store is not None:
            store = "deleted" if await self._store.delete_now(key) else "pending"
        log.info(
            "purged %s from the cache (policy %s, negative answer %s, back-off %s, store %s)",
            key,
            *("dropped" if dropped else "none" for dropped in (policy, negative, backoff)),
            store,
        )
        return PurgeResult(key, policy, negative, backoff, store, len(seen), unfinished)

    def cache_by_mode(self) -> dict[Mode, tuple[int, int]]:
        """Per mode: (domains cached, distinct policies) — expired entries too, until they are dropped."""
        return self._cache.census()

    @property
    def negative_cache_size(self) -> int:
        """Domains whose "no policy" (or failure) answer is remembered."""
        return len(self._negative)

    @property
    def store_link(self) -> StoreLink | None:
        """The store as the resolver uses it (its outage state and counters), or None without a store."""
        return self._store

    # -- internals ------------------------------------------------------------------------------------------------

    @staticmethod
    def _key(domain: str) -> str | None:
        """The cache key (A-labels, lowercase, no dot), None for address literals; DomainError if invalid."""
        if is_address_literal(domain):
            return None
        return normalize_domain(domain)

    def _from_memory(self, key: str) -> PolicyLookup | None:
        """A lookup memory can answer: a fresh cached policy, or a remembered negative answer."""
        now = self._now()
        entry = self._cache.get(key)
        negative = self._negative.item(key)
        state = memory_state(
            now,
            expires_at=entry.expires_at if entry is not None else None,
            fresh_until=entry.fresh_until if entry is not None else None,
            negative_until=negative[0] if negative is not None else None,
        )
        if state is MemoryState.FRESH:
            assert entry is not None
            return self._cached_lookup(key, entry)
        if state is MemoryState.NEGATIVE:
            assert negative is not None
            return negative[1]
        return None

    def _cached_lookup(
        self, key: str, entry: CacheEntry, result_type: str | None = None, error: str | None = None
    ) -> PolicyLookup:
        return PolicyLookup(
            key,
            LookupStatus.CACHED,
            entry.policy,
            entry.policy_id,
            self._steady.to_wall(entry.fetched_at),
            from_cache=True,
            result_type=result_type,
            error=error,
        )

    @staticmethod
    def _local_error(key: str, error: str) -> PolicyLookup:
        """A lookup that failed on this side: "try again later", never "no policy" (module docs, item 6)."""
        return PolicyLookup(key, LookupStatus.LOCAL_ERROR, error=error, defer=True)

    async def _start_for(self, key: str) -> PolicyLookup | None:
        """:meth:`start` for a lookup of ``key``: None once started, a ``LOCAL_ERROR`` if the resolver closed."""
        if self._closed:
            return self._local_error(key, "the resolver is closed")
        try:
            await self.start()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the caller was cancelled
            return self._local_error(key, "the resolver closed while restoring its cache")
        return None

    async def _single_flight(
        self, key: str, kind: str, work: Callable[[], Coroutine[Any, Any, PolicyLookup]]
    ) -> PolicyLookup:
        """Run ``work`` once for concurrent callers with the same (key, kind); a caller's cancellation
        does not cancel the shared work. A local failure of the work (module docs, item 6) is a ``LOCAL_ERROR``
        lookup, as is the resolver closing under it."""
        if self._closed:
            return self._local_error(key, "the resolver is closed")
        flight = (key, kind)
        future = self._inflight.get(flight)
        if future is None:
            future = asyncio.ensure_future(self._guarded(key, work))
            self._inflight[flight] = future

            def _done(done: asyncio.Future[PolicyLookup], flight: tuple[str, str] = flight) -> None:
                if self._inflight.get(flight) is done:
                    del self._inflight[flight]
                if not done.cancelled() and done.exception() is None:  # retrieved: never "was never retrieved"
                    self.stats.lookups[(kind, done.result().status.value)] += 1

            future.add_done_callback(_done)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not future.cancelled() or (task is not None and task.cancelling()):
                raise  # the caller was cancelled, not the shared work
            return self._local_error(key, "the resolver closed during the lookup")

    async def _guarded(self, key: str, work: Callable[[], Coroutine[Any, Any, PolicyLookup]]) -> PolicyLookup:
        try:
            return await work()
        except LocalError as exc:
            return self._local_error(key, exc.message)
        except Exception:  # a bug must end in "try again later", never in "no policy"
            log.exception("internal error looking up the MTA-STS policy of %s", key)
            return self._local_error(key, "internal error (see the log)")

    async def _check_txt(self, key: str) -> _Checked:
        answer = await mtasts_dns.query_txt(self._dns, f"_mta-sts.{key}.")
        record = select_txt_record(answer.records) if answer.status is mtasts_dns.TxtStatus.FOUND else None
        return _Checked(answer, record.id if record is not None else None)

    async def _resolve(self, key: str, *, refresh: bool = False) -> PolicyLookup:
        """One lookup that memory could not answer: the I/O, sequenced around :mod:`mtasts.decision`'s table.

        Never raises for failures of the domain.
        """
        now = self._now()
        entry = self._cache.get(key)
        unread: str | None = None  # why the store could not say whether it holds a policy for key, if it could not
        if self._store is not None and (entry is None or refresh):
            # Another process (or this one, before a restart or an eviction) may have fetched it.
            try:
                row = await self._store.get(key)
            except StoreUnavailable as exc:
                row = None
                if entry is None:
                    unread = f"{exc.message}: a stored policy may apply"
            if row is not None and (entry is None or self._steady.from_wall(row.fetched_at or 0.0) > entry.fetched_at):
                self._adopt(row, now, {})
                adopted = self._cache.get(key)
                if adopted is not None:  # (logged if it is another policy than the one cached)
                    self._policy_changed(key, entry, adopted.policy, adopted.policy_id, "stored")
                if adopted is not None and not adopted.is_expired(now):
                    entry = adopted
                    if refresh and now < entry.fetched_at + self._refresh_after(entry.policy):
                        return self._cached_lookup(key, entry)  # refreshed elsewhere already
                    if not refresh and now < entry.fresh_until:
                        return self._cached_lookup(key, entry)  # fetched elsewhere, TXT checked recently
        if entry is not None and entry.is_expired(now):
            self._cache.pop(key)  # §3.3: an expired policy is never used, not even as a fallback
            self._policy_expired(key, entry)
            entry = None
            self._persist(key)
        if self._fleet is not None and entry is None and not refresh and unread is None:
            return await self._resolve_in_fleet(self._fleet, key)
        return await self._resolve_alone(key, entry, refresh=refresh, unread=unread)

    # -- one lookup per domain across a fleet (mtasts.stores.fleet) -------------------------------------------

    async def _resolve_in_fleet(self, fleet: RedisFleet, key: str) -> PolicyLookup:
        """A cold lookup with nothing stored: lead it for the fleet (holding the domain's lease) and share the
        outcome, or wait for the process that leads it and adopt its outcome. Fleet trouble: look up alone."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + fleet.max_wait
        try:
            for _ in range(_FLEET_ROUNDS):  # bounded in count as in time
                lease = await fleet.acquire(key)
                if lease is not None:
                    return await self._lead(fleet, lease)
                delay = fleet.poll
                for _ in range(_FLEET_POLLS):  # wait while another process holds the lease
                    await asyncio.sleep(delay)
                    delay = min(delay * 1.5, fleet.ttl / 3, 0.5)  # a long fetch is not polled 20 times a second
                    if loop.time() >= deadline or not await fleet.held(key):
                        break
                shared = await self._shared_outcome(fleet, key)
                if shared is not None:
                    return shared
                if loop.time() >= deadline:
                    break  # a live holder that takes too long: look up alone
                # the lease is gone without an outcome (its holder died, or could not share): try to lead
        except FleetUnavailable as exc:
            log.debug("fleet lease for %s unavailable (%s): looking up alone", key, exc)
        return await self._resolve_alone(key, None, refresh=False, unread=None)

    async def _lead(self, fleet: RedisFleet, lease: Lease) -> PolicyLookup:
        key = lease.domain
        keeper = asyncio.ensure_future(fleet.keep_alive(lease))
        try:
            # another process may have finished between our store read and the lease: look once more
            shared = await self._shared_outcome(fleet, key)
            if shared is not None:
                return shared
            lookup = await self._resolve_alone(key, None, refresh=False, unread=None)
            await self._share(fleet, key, lookup)
            return lookup
        finally:
            keeper.cancel()
            with contextlib.suppress(FleetUnavailable):  # else it expires within fleet.ttl
                await fleet.release(lease)

    async def _share(self, fleet: RedisFleet, key: str, lookup: PolicyLookup) -> None:
        """What the others need before the lease goes: the store row written now, or the negative answer."""
        try:
            if self._store is not None:
                await self._store.flush()  # a fetched policy, or a failure's back-off, as the domain's row
            remembered = self._negative.item(key)
            if remembered is not None and lookup.status is not LookupStatus.FETCHED:
                until, answer = remembered
                negative = SharedNegative(
                    answer.status.value, answer.error, until - self._now(), answer.result_type, answer.defer
                )
                await fleet.put_negative(negative, key)
        except FleetUnavailable as exc:
            log.debug("could not share the lookup of %s with the fleet (%s)", key, exc)

    async def _shared_outcome(self, fleet: RedisFleet, key: str) -> PolicyLookup | None:
        """The outcome another process shared: its stored policy (adopted), or its negative answer."""
        now = self._now()
        if self._store is not None:
            try:
                row = await self._store.get(key)
            except StoreUnavailable:
                row = None
            if row is not None and row.has_policy:
                self._adopt(row, now, {})
                adopted = self._cache.get(key)
                if adopted is not None and not adopted.is_expired(now):
                    return self._cached_lookup(key, adopted)
        negative = await fleet.negative(key)
        if negative is None:
            return None
        try:
            status = LookupStatus(negative.status)
        except ValueError:
            return None
        if status not in (LookupStatus.NO_POLICY, LookupStatus.DNS_ERROR, LookupStatus.FETCH_ERROR):
            return None  # never adopt a "no policy" kind this process would not itself remember
        lookup = PolicyLookup(
            key, status, result_type=negative.result_type, error=negative.error, defer=negative.defer, from_cache=True
        )
        self._negative.put(key, lookup, now + negative.ttl)
        return lookup

    async def _resolve_alone(
        self, key: str, entry: CacheEntry | None, *, refresh: bool, unread: str | None
    ) -> PolicyLookup:
        """The TXT query, then the fetch if the table says so (:func:`~mtasts.decision.after_txt`)."""
        checked = await self._check_txt(key)
        answer = checked.answer
        decision = after_txt(
            _TXT_OUTCOMES[answer.status] if checked.policy_id is None else TxtOutcome.RECORD,
            checked.policy_id,
            entry.policy_id if entry is not None else None,
            refresh=refresh,
            store_unread=unread is not None,
            limits=self._limits,
        )
        error = answer.error or (None if checked.policy_id is not None else _why_no_record(answer))
        if decision.next is Next.FETCH:
            if decision.mark_checked:
                self._mark_checked(key)
            assert decision.fetch_id is not None
            return await self._fetch(key, decision.fetch_id, entry, refresh=refresh, unread=unread)
        return self._answer(key, decision, entry, error=error, unread=unread)

    async def _fetch(
        self, key: str, policy_id: str, entry: CacheEntry | None, *, refresh: bool, unread: str | None
    ) -> PolicyLookup:
        """Fetch the policy for (key, policy_id) unless backed off; on failure ``entry`` stays untouched (C7)."""
        failure = self._failures.get(key)
        result_type: str | None = None
        if failure is not None and backed_off(failure.policy_id, failure.retry_after, policy_id, self._now()):
            outcome, result_type, error = FetchOutcome.BACKED_OFF, failure.result_type, failure.error
        else:
            mode = cached_mode(entry.policy if entry is not None else None)
            try:
                policy = await self._fetcher.fetch(key)
            except LocalError as exc:  # this machine's trouble, not the domain's
                outcome, error = FetchOutcome.LOCAL_ERROR, exc.message
                self.stats.fetches[("local-error", mode)] += 1
            except MTASTSError as exc:
                outcome, result_type, error = FetchOutcome.FAILED, exc.result_type, exc.message
                self.stats.fetches[(result_type or "unknown", mode)] += 1
            else:
                self.stats.fetches[("success", mode)] += 1
                return self._fetched(key, policy, policy_id)
        decision = after_fetch(outcome, cached=entry is not None, store_unread=unread is not None)
        if decision.back_off:
            self._failures[key] = _Failure(policy_id, result_type, error, self._now() + self._failure_backoff)
            if entry is None:
                self._persist(key)  # the failure (and its back-off) is worth sharing even with nothing cached
        if decision.report:
            self._notify(key, policy_id, entry, result_type, error, refresh=refresh)
        lookup = self._answer(key, decision, entry, error=error, unread=unread, result_type=result_type)
        if lookup.status is LookupStatus.FETCH_ERROR:
            lookup = replace(lookup, policy_id=policy_id)  # (the id whose fetch failed)
            if decision.remember is not None:
                self._remember(key, lookup, decision)
        return lookup

    def _fetched(self, key: str, policy: Policy, policy_id: str) -> PolicyLookup:
        fetched_at = self._now()
        self._policy_changed(key, self._cache.get(key), policy, policy_id, "fetched")
        self._negative.pop(key)
        self._failures.pop(key, None)
        if caches(policy.max_age):
            policy = self._store_in_cache(key, policy, policy_id, fetched_at)
        else:
            self._cache.pop(key)  # max_age 0: applies to this lookup only, and replaces what was cached (C5)
        self._persist(key, checked_at=fetched_at)
        return PolicyLookup(key, LookupStatus.FETCHED, policy, policy_id, self._steady.to_wall(fetched_at))

    def _answer(
        self,
        key: str,
        decision: Decision,
        entry: CacheEntry | None,
        *,
        error: str | None,
        unread: str | None,
        result_type: str | None = None,
    ) -> PolicyLookup:
        """Carry out an ANSWER decision: the bookkeeping it asks for, and the lookup it gives."""
        if decision.mark_checked:
            self._mark_checked(key)
        if decision.use_cached:
            assert entry is not None
            return self._cached_lookup(key, entry, result_type, error)
        assert decision.status is not None
        if decision.status is LookupStatus.LOCAL_ERROR:
            reason = f"{error}; {unread}" if decision.store_unread and error else (error or unread)
            return self._local_error(key, reason or "the lookup failed on this host")
        lookup = PolicyLookup(key, decision.status, result_type=result_type, error=error, defer=decision.defer)
        if decision.remember is not None and decision.status is not LookupStatus.FETCH_ERROR:
            self._remember(key, lookup, decision)
        return lookup

    def _policy_changed(self, key: str, old: CacheEntry | None, policy: Policy, policy_id: str, source: str) -> None:
        """Count and log (INFO) what a fetched (or stored: another process's) policy changes: a domain's first
        policy, a new id, another mode, another policy under the same id. The same policy again logs nothing."""
        change = policy_change(old.policy if old else None, old.policy_id if old else None, policy, policy_id)
        if change is None:
            return
        self.stats.changes[change] += 1
        extra = {"event": "policy-changed", "domain": key, "change": change, "policy_id": policy_id,
                 "mode": policy.mode.value, "source": source}  # fmt: skip
        if old is None:
            log.info("MTA-STS policy for %s: id %s, mode %s (%s)", key, policy_id, policy.mode.value, source,
                     extra=extra)  # fmt: skip
            return
        extra.update(old_policy_id=old.policy_id, old_mode=old.policy.mode.value)
        log.info(
            "MTA-STS policy for %s changed (%s): id %s -> %s, mode %s%s (%s)",
            key,
            change,
            old.policy_id,
            policy_id,
            old.policy.mode.value,
            f" -> {policy.mode.value}" if policy.mode is not old.policy.mode else "",
            source,
            extra=extra,
        )

    def _policy_expired(self, key: str, entry: CacheEntry) -> None:
        """A cached policy past its max_age, dropped (§3.3): counted and logged at INFO."""
        self.stats.changes["expired"] += 1
        log.info(
            "MTA-STS policy for %s expired (id %s, mode %s): no longer applied",
            key,
            entry.policy_id,
            entry.policy.mode.value,
            extra={"event": "policy-expired", "domain": key, "change": "expired", "policy_id": entry.policy_id,
                   "mode": entry.policy.mode.value},
        )  # fmt: skip

    def _remember(self, key: str, lookup: PolicyLookup, decision: Decision) -> None:
        """Keep a negative answer for its TTL; answered from memory, it says ``from_cache``."""
        assert decision.remember is not None
        self._negative.put(key, replace(lookup, from_cache=True), self._now() + self._limits.ttl(decision.remember))

    def _notify(
        self, key: str, policy_id: str, entry: CacheEntry | None, result_type: str | None, error: str, *, refresh: bool
    ) -> None:
        cached = entry.policy if entry is not None else None
        failure = FetchFailure(key, policy_id, result_type, error, cached, refresh)
        alert = cached is not None and cached.mode is not Mode.NONE
        # §3.3: "MTAs SHOULD alert administrators ... when such attempts fail, unless the cached policy mode is
        # none" — a WARNING; with nothing cached it is a reportable event (§6) but no alert.
        log.log(
            logging.WARNING if alert else logging.INFO,
            "MTA-STS policy fetch for %s (id %s) failed: %s [%s]%s",
            key,
            policy_id,
            error,
            result_type,
            f"; the cached {cached.mode.value} policy still applies" if cached is not None else "",
            extra={"event": "fetch-failed", "domain": key, "policy_id": policy_id, "result_type": result_type,
                   "cached_mode": cached_mode(cached)},
        )  # fmt: skip
        for callback in (self._on_fetch_failure, self._on_refresh_failure if refresh and alert else None):
            if callback is not None:
                _call_safely(callback, failure)


_FLEET_ROUNDS = 4  # leases a waiter tries to take before it looks up alone (each holder may die in turn)
_FLEET_POLLS = 1000  # polls of one holder's lease at most (the wait is bounded in time by max_wait too)

#: The TXT query's end, as the decision table sees it (with no valid record: RECORD is decided by the selection).
_TXT_OUTCOMES = {
    mtasts_dns.TxtStatus.FOUND: TxtOutcome.NO_RECORD,  # records, but no valid STS one
    mtasts_dns.TxtStatus.NXDOMAIN: TxtOutcome.NO_RECORD,
    mtasts_dns.TxtStatus.NODATA: TxtOutcome.NO_RECORD,
    mtasts_dns.TxtStatus.ERROR: TxtOutcome.DNS_ERROR,
    mtasts_dns.TxtStatus.LOCAL_ERROR: TxtOutcome.LOCAL_ERROR,
}


def _why_no_record(answer: mtasts_dns.TxtAnswer) -> str:
    if answer.status is mtasts_dns.TxtStatus.NXDOMAIN:
        return "no _mta-sts record (NXDOMAIN)"
    if answer.status is mtasts_dns.TxtStatus.NODATA:
        return "no _mta-sts TXT record (NODATA)"
    return explain_txt_records(answer.records)[1] or "no usable MTA-STS TXT record"


def _call_safely(callback: Callable[[FetchFailure], object], failure: FetchFailure) -> None:
    """Run a user callback; its exceptions are logged, never raised into the lookup."""
    try:
        callback(failure)
    except Exception:
        log.exception("failure callback %r raised", callback)
