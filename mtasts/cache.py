"""The in-memory policy cache (RFC 8461 §3.3, §5.1): what a sender remembers between lookups.

For each Policy Domain: the policy, the TXT ``id`` it was fetched under, when it expires (``max_age`` counts from
the last successful fetch, §3.2) and until when it may be answered without checking the TXT record again.

Built for the hot path and for scale (both measured in ``benchmarks/``, see docs/benchmarks.md):

* one ``dict`` lookup, a mask and a comparison answer a fresh hit;
* each domain costs its key and one ``int`` packing everything else (least significant bits first)::

      fresh_until (32 bits, seconds) | expires_at (32) | policy index (32) | id length (8) | id (ASCII bytes)

  The id is 1 to 32 letters and digits (§3.1), so it fits; the policy itself lives once in a table of distinct
  policies (refcounted, freed with its last domain). Times are whole seconds: a policy may expire up to a
  second early, never late;
* the cache is bounded: when full, the domains fetched longest ago are dropped first, a hundredth of the cache at
  a time (a re-fetch or refresh moves a domain to the back). Without a persistent store, a dropped policy is
  forgotten — size the cache for your traffic, or give the resolver a store.

A general-purpose ``cachetools`` cache costs an order structure, an entry object and Python-level ``get`` calls
per domain: about 3x the memory and twice the time per hit at a million domains (docs/benchmarks.md).
cachetools holds the resolver's per-id failure back-off, where its TTL handling is what is needed.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any, Generic, TypeVar

from .clock import SteadyClock
from .decision import refresh_after
from .policy import Mode, Policy

__all__ = ["CacheEntry", "ExpiringCache", "PolicyCache", "hot_readers"]

V = TypeVar("V")

_LOW = (1 << 32) - 1
_MAX_SECONDS = _LOW
_POLICY_SHIFT = 64
_ID_LENGTH_SHIFT = 96
_ID_SHIFT = 104


def _seconds(t: float) -> int:
    """A time as whole seconds, rounded down and clamped into 32 bits (until 2106)."""
    if math.isnan(t) or t <= 0:  # NaN or before the epoch
        return 0
    return min(math.floor(t), _MAX_SECONDS)


def _pack_id(policy_id: str) -> int:
    raw = policy_id.encode("ascii")
    return (int.from_bytes(raw, "big") << 8 | len(raw)) << _ID_LENGTH_SHIFT


def _unpack_id(packed: int) -> str:
    length = (packed >> _ID_LENGTH_SHIFT) & 0xFF
    return (packed >> _ID_SHIFT).to_bytes(length, "big").decode("ascii")


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """A cached policy, as :meth:`PolicyCache.get` shows it."""

    policy: Policy
    policy_id: str
    expires_at: float  # fetch time + max_age (whole seconds)
    fresh_until: float  # until then, answered without checking the TXT record (never after expires_at)

    @property
    def fetched_at(self) -> float:
        """§3.2: the last policy fetch time, from which ``max_age`` counts."""
        return self.expires_at - self.policy.max_age

    def is_expired(self, now: float) -> bool:
        return now >= self.expires_at


class PolicyCache:
    """Bounded mapping of A-label domain → cached policy; see the module docs for the layout."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = max(1, maxsize)
        self.data: dict[str, int] = {}  # domain -> packed entry (module docs)
        self.policies: list[Policy | None] = []  # policy index -> policy; freed indexes are reused
        self._policy_index: dict[Policy, int] = {}
        self._refcounts = array("Q")
        self._free: list[int] = []

    # -- the hot path -----------------------------------------------------------------------------------------

    def fresh_policy(self, domain: str, now: float) -> Policy | None:
        """The policy if ``domain`` is cached and fresh at ``now``, else None."""
        packed = self.data.get(domain)
        if packed is not None and now < (packed & _LOW):
            return self.policies[(packed >> _POLICY_SHIFT) & _LOW]
        return None

    # -- reads ----------------------------------------------------------------------------------------------------

    def get(self, domain: str) -> CacheEntry | None:
        packed = self.data.get(domain)
        return None if packed is None else self._entry(packed)

    def _entry(self, packed: int) -> CacheEntry:
        policy = self.policies[(packed >> _POLICY_SHIFT) & _LOW]
        assert policy is not None
        return CacheEntry(policy, _unpack_id(packed), float((packed >> 32) & _LOW), float(packed & _LOW))

    def items(self) -> Iterator[tuple[str, CacheEntry]]:
        """A snapshot of the entries, oldest fetch first (safe to change the cache while iterating)."""
        for domain, packed in list(self.data.items()):
            yield domain, self._entry(packed)

    def due_for_refresh(self, now: float, refresh_interval: float) -> tuple[list[str], float]:
        """Domains whose refresh is due at ``now``, and when the next one falls due (``inf`` if none).

        When is :func:`mtasts.decision.refresh_after` (RFC 8461 §3.3 SHOULD refresh before expiry; §10.2). One
        pass, no entry objects made.
        """
        due: list[str] = []
        next_due = math.inf
        policies = self.policies
        for domain, packed in self.data.items():
            policy = policies[(packed >> _POLICY_SHIFT) & _LOW]
            assert policy is not None
            max_age = policy.max_age
            at = ((packed >> 32) & _LOW) - max_age + refresh_after(max_age, refresh_interval)
            if now >= at:
                due.append(domain)
            elif at < next_due:
                next_due = at
        return due, next_due

    def __len__(self) -> int:
        return len(self.data)

    def __contains__(self, domain: object) -> bool:
        return domain in self.data

    @property
    def distinct_policies(self) -> int:
        return len(self._policy_index)

    def census(self) -> dict[Mode, tuple[int, int]]:
        """Per mode: (domains cached, distinct policies). O(distinct policies): from the policy table's counts."""
        counts: dict[Mode, tuple[int, int]] = {}
        refcounts = self._refcounts
        for index, policy in enumerate(self.policies):
            if policy is not None:
                domains, policies = counts.get(policy.mode, (0, 0))
                counts[policy.mode] = (domains + refcounts[index], policies + 1)
        return counts

    # -- writes ---------------------------------------------------------------------------------------------------

    def put(self, domain: str, policy: Policy, policy_id: str, *, fetched_at: float, fresh_for: float) -> CacheEntry:
        """Store a freshly fetched policy (moving ``domain`` to the back of the eviction order)."""
        old = self.data.pop(domain, None)
        if old is not None:
            self._release(old)
        elif len(self.data) >= self.maxsize:
            self._evict(max(1, self.maxsize // 100))
        expires = _seconds(fetched_at + policy.max_age)
        fresh = min(expires, _seconds(fetched_at + fresh_for))
        packed = _pack_id(policy_id) | self._acquire(policy) << _POLICY_SHIFT | expires << 32 | fresh
        self.data[domain] = packed
        return self._entry(packed)

    def mark_checked(self, domain: str, now: float, fresh_for: float) -> None:
        """The TXT record was checked at ``now`` (same id, or no usable record): fresh again for ``fresh_for``."""
        packed = self.data.get(domain)
        if packed is not None:
            expires = (packed >> 32) & _LOW
            self.data[domain] = (packed & ~_LOW) | min(expires, _seconds(now + fresh_for))

    def pop(self, domain: str) -> CacheEntry | None:
        packed = self.data.pop(domain, None)
        if packed is None:
            return None
        entry = self._entry(packed)
        self._release(packed)
        return entry

    def clear(self) -> None:
        self.data.clear()
        self.policies.clear()  # in place: the resolver holds references to both
        self._policy_index.clear()
        self._refcounts = array("Q")
        self._free.clear()

    def _evict(self, count: int) -> None:
        for domain in list(islice(self.data, count)):
            self._release(self.data.pop(domain))

    # -- the policy table ------------------------------------------------------------------------------------

    def _acquire(self, policy: Policy) -> int:
        index = self._policy_index.get(policy)
        if index is None:
            if self._free:
                index = self._free.pop()
                self.policies[index] = policy
                self._refcounts[index] = 0
            else:
                index = len(self.policies)
                self.policies.append(policy)
                self._refcounts.append(0)
            self._policy_index[policy] = index
        self._refcounts[index] += 1
        return index

    def _release(self, packed: int) -> None:
        index = (packed >> _POLICY_SHIFT) & _LOW
        self._refcounts[index] -= 1
        if self._refcounts[index] == 0:
            policy = self.policies[index]
            assert policy is not None
            del self._policy_index[policy]
            self.policies[index] = None
            self._free.append(index)


class ExpiringCache(Generic[V]):
    """A bounded dict of values that expire at a time given per item, read with the caller's clock.

    For the resolver's "no policy published" and "DNS failed" answers: a plain ``dict`` read (this is the hot path
    for the many domains that publish no policy), oldest entries dropped first when full.
    """

    def __init__(self, maxsize: int) -> None:
        self.maxsize = max(1, maxsize)
        self._data: dict[str, tuple[float, V]] = {}

    def get(self, key: str, now: float) -> V | None:
        item = self._data.get(key)
        if item is None:
            return None
        if now < item[0]:
            return item[1]
        del self._data[key]
        return None

    def item(self, key: str) -> tuple[float, V] | None:
        """(expiry, value) for ``key``, expired or not (for the decision table, which judges expiry itself)."""
        return self._data.get(key)

    def put(self, key: str, value: V, expires_at: float) -> None:
        if self._data.pop(key, None) is None and len(self._data) >= self.maxsize:
            for old in list(islice(self._data, max(1, self.maxsize // 100))):
                del self._data[old]
        self._data[key] = (expires_at, value)

    def pop(self, key: str) -> None:
        self._data.pop(key, None)

    def __len__(self) -> int:
        return len(self._data)


# -- the hot read: the one place outside PolicyCache that knows its layout -------------------------------------

M = TypeVar("M")


def hot_readers(
    cache: PolicyCache,
    negatives: ExpiringCache[Any],
    steady: SteadyClock,
    *,
    miss: Callable[[str, float], Policy | M | None],
    not_cached: M,
    lookup: Callable[[str], Coroutine[Any, Any, Policy | None]],
) -> tuple[Callable[[str], Policy | M | None], Callable[[str], Coroutine[Any, Any, Policy | None]]]:
    """The resolver's two hot paths, as closures over this module's structures (measured in
    ``python -m benchmarks.instructions``: a method call per hit would cost a sixth more):

    * ``cached(domain)`` — memory's answer without awaiting: a fresh cached policy; for a remembered negative
      answer None, or ``not_cached`` when that answer is "try again later" (its ``defer``); else ``miss(domain,
      now)`` (names to normalise, ``not_cached``);
    * ``get(domain)`` — ``await``-able: a fresh cached policy, else ``await lookup(domain)``.

    Time is the steady clock (:mod:`mtasts.clock`), read inline: ``fast()``, and a reading earlier than the last
    one handed out means a step (``now()`` absorbs it).
    """
    data, policies, negative_data = cache.data, cache.policies, negatives._data
    # steady.fast changes when the clock steps: a stale copy reads early, which is seen as a step and refreshed
    fast = fast_get = steady.fast

    def cached(domain: str) -> Policy | M | None:
        nonlocal fast
        now = fast()
        if now < steady.last:
            now = steady.now()
            fast = steady.fast
        else:
            steady.last = now
        try:
            packed = data.get(domain)
        except TypeError:  # unhashable: not a domain name (miss raises the typed error)
            return miss(domain, now)
        if packed is not None and now < (packed & _LOW):
            return policies[(packed >> _POLICY_SHIFT) & _LOW]
        item = negative_data.get(domain)  # hot too: most domains publish no policy
        if item is not None and now < item[0]:
            return not_cached if item[1].defer else None
        return miss(domain, now)

    async def get(domain: str) -> Policy | None:
        nonlocal fast_get
        if type(domain) is str:
            packed = data.get(domain)
            if packed is not None:
                now = fast_get()
                if steady.last <= now:
                    steady.last = now
                    if now < (packed & _LOW):
                        return policies[(packed >> _POLICY_SHIFT) & _LOW]
                else:
                    fast_get = steady.fast  # (the lookup's cached() absorbs the step)
        return await lookup(domain)

    return cached, get
