"""What a persistent policy store is (RFC 8461 §3.3, §10: a cached policy must survive restarts and outages).

A store keeps one :class:`StoredPolicy` per Policy Domain: the cached policy and its TXT id, when it was fetched,
checked and when it expires, and the last failed fetch with its back-off. The resolver's in-memory cache stays in
front for hits; the store is written through (in batches, off the hot path), read on a memory miss (so several
processes sharing a store see each other's fetches) and scanned at start-up to restore the cache.

Stores raise what they like on failure (a database error, a lost connection): the resolver catches it, logs
once, keeps serving from memory and retries later — a store outage never reaches the caller and never weakens
enforcement. Every store must ignore (and may delete) rows it cannot read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["PolicyStore", "ReportStore", "SessionCount", "StoredPolicy"]

#: One TLS-RPT counter: (UTC day number since the epoch, policy domain, key, count). The key is JSON text naming
#: the applied policy and, for a failure, its detail (mtasts.tlsrpt.recorder); a count is a number of sessions.
SessionCount = tuple[int, str, str, int]


@dataclass(frozen=True, slots=True)
class StoredPolicy:
    """One Policy Domain's persistent state."""

    domain: str  # A-label, lowercase, no trailing dot
    policy_id: str | None = None  # TXT id of the cached policy (None: only a failure is stored)
    policy_text: str | None = None  # the policy rendered by Policy.to_text()
    fetched_at: float | None = None
    checked_at: float | None = None  # last TXT check
    expires_at: float | None = None  # fetched_at + max_age
    failed_id: str | None = None  # the id whose fetch last failed
    failure: str | None = None  # its RFC 8460 result type
    failure_detail: str | None = None
    retry_after: float | None = None  # no new fetch of failed_id before this time (§3.3 back-off)

    @property
    def has_policy(self) -> bool:
        return self.policy_text is not None and self.policy_id is not None and self.fetched_at is not None

    @property
    def keep_until(self) -> float:
        """When nothing in this row matters any more: the policy expired and the back-off ran out."""
        return max(self.expires_at or 0.0, self.retry_after or 0.0)


@runtime_checkable
class PolicyStore(Protocol):
    """The store interface the resolver uses. Implementations: MemoryStore, SQLiteStore, RedisStore."""

    async def get(self, domain: str) -> StoredPolicy | None:
        """The row for ``domain``, or None (also for a row that cannot be read)."""
        ...

    async def write(self, puts: Sequence[StoredPolicy], deletes: Sequence[str]) -> None:
        """Insert or replace ``puts`` and remove ``deletes``, atomically where the backend allows."""
        ...

    def scan(self) -> AsyncIterator[StoredPolicy]:
        """Every readable row (for restoring the cache at start-up)."""
        ...

    async def aclose(self) -> None:
        """Release connections and threads (idempotent)."""
        ...


@runtime_checkable
class ReportStore(Protocol):
    """TLS-RPT persistence (RFC 8460): session counters per UTC day, and each report's delivery state.

    The three stores implement it beside :class:`PolicyStore`, so one store holds both. Increments are atomic
    (several processes may count into one store); the delivery state is an opaque JSON text.
    """

    async def add_session_counts(self, counts: Sequence[SessionCount]) -> None:
        """Add each count to its counter (creating it at 0)."""
        ...

    async def session_counts(self, day: int | None = None) -> list[SessionCount]:
        """Every counter (of one day, if given)."""
        ...

    async def delete_session_counts(self, day: int, policy_domain: str) -> None:
        """Forget a (day, policy domain)'s counters: its report was delivered, or cannot be."""
        ...

    async def get_report_state(self, day: int, policy_domain: str) -> str | None: ...

    async def put_report_state(self, day: int, policy_domain: str, state: str | None) -> None:
        """Store (or, with None, delete) a report's delivery state."""
        ...
