"""The in-memory policy cache (RFC 8461 §3.3, §5.1): what a sender remembers between lookups.

One :class:`CacheEntry` per Policy Domain: the policy, the TXT ``id`` it was fetched under, when it was
fetched (its lifetime, ``max_age``, counts from there: §3.2 "from the last policy fetch time") and when the TXT
record was last checked. Identical policies are stored once (interned), so a million domains hosted by a few
providers cost a few policies.

The cache is bounded (a ``cachetools.LRUCache``): the least recently used domains are dropped first. Without a
persistent store, a dropped enforce policy is forgotten — size the cache for your traffic, or use a store.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from dataclasses import dataclass

import cachetools

from .policy import Policy

__all__ = ["CacheEntry", "PolicyCache"]


@dataclass(slots=True)
class CacheEntry:
    """A cached policy. Replaced whole on every successful fetch; only ``checked_at`` changes in place."""

    policy: Policy
    policy_id: str
    fetched_at: float
    checked_at: float

    @property
    def expires_at(self) -> float:
        """§3.2: cached "for up to this value [max_age] from the last policy fetch time"."""
        return self.fetched_at + self.policy.max_age

    def is_expired(self, now: float) -> bool:
        return now - self.fetched_at >= self.policy.max_age


class PolicyCache:
    """Bounded LRU mapping of A-label domain → :class:`CacheEntry`, with policy interning."""

    def __init__(self, maxsize: int) -> None:
        self._entries: cachetools.LRUCache[str, CacheEntry] = cachetools.LRUCache(maxsize=max(1, maxsize))
        # Keyed by the policy's value (not the policy itself, which the mapping would then keep alive forever).
        self._policies: weakref.WeakValueDictionary[tuple[object, ...], Policy] = weakref.WeakValueDictionary()

    def get(self, domain: str) -> CacheEntry | None:
        return self._entries.get(domain)

    def intern(self, policy: Policy) -> Policy:
        """The one stored instance equal to ``policy``."""
        key = (policy.mode, policy.mx, policy.max_age, tuple(policy.extensions.items()))
        return self._policies.setdefault(key, policy)

    def put(self, domain: str, entry: CacheEntry) -> None:
        entry.policy = self.intern(entry.policy)
        self._entries[domain] = entry

    def pop(self, domain: str) -> CacheEntry | None:
        return self._entries.pop(domain, None)

    def items(self) -> Iterator[tuple[str, CacheEntry]]:
        """A snapshot of the entries (safe to mutate the cache while iterating)."""
        return iter(list(self._entries.items()))

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, domain: object) -> bool:
        return domain in self._entries

    @property
    def distinct_policies(self) -> int:
        return len(self._policies)
