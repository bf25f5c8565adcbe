"""What a persistent policy store is (RFC 8461 §3.3, §10: a cached policy must survive restarts and outages).

A store keeps one :class:`StoredPolicy` per Policy Domain: the cached policy and its TXT id, when it was fetched,
checked and when it expires, and the last failed fetch with its back-off. The resolver's in-memory cache stays in
front for hits; the store is written through (in batches, off the hot path), read on a memory miss (so several
processes sharing a store see each other's fetches) and scanned at start-up to restore the cache.

Stores raise what they like on failure (a database error, a lost connection): the resolver catches it, logs
once, keeps serving from memory and retries later — a store outage never reaches the caller and never weakens
enforcement. Every store must ignore (and may delete) rows it cannot read; :func:`validate_row` is the one rule
for what "readable" means, shared by every store (and applied again by the resolver to any store's rows).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

__all__ = ["DamagedRowError", "PolicyStore", "ReportStore", "SessionCount", "StoredPolicy", "validate_row"]

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


_MAX_DOMAIN = 253  # RFC 1035 §2.3.4: a name in text form without the trailing dot
_MAX_TIME = float(2**32)  # the in-memory cache packs whole seconds into 32 bits (mtasts.cache)
_TEXT_FIELDS = ("policy_id", "policy_text", "failed_id", "failure", "failure_detail")
_TIME_FIELDS = ("fetched_at", "checked_at", "expires_at", "retry_after")


class DamagedRowError(Exception):
    """``get(domain)`` could not read that row because the storage itself is damaged (a corrupt page), while
    the rest of the store works: the row's state is unknown, but the store is not down.

    The resolver answers that one lookup "try again later" (never "no policy": the row may hold an enforce
    policy) and keeps using the store for every other domain, instead of treating the store as down.
    """


def validate_row(row: StoredPolicy) -> StoredPolicy:
    """``row`` if every store may hand it to the resolver, else ValueError with a short reason.

    Types and ranges only (whether the policy parses and the id is valid is the resolver's check): a non-empty
    domain of at most 253 characters; text fields None or str; times None or finite floats in [0, 2**32) (ints
    are accepted and converted, bools are not) — a non-finite time once crashed start-up with OverflowError; a
    policy comes with its id, fetch time and expiry (expiry not before the fetch); a failed id with its back-off.
    Cheap on purpose (one expression for the usual row): every restored row goes through it, possibly twice.
    """
    fetched, checked, expires, retry = row.fetched_at, row.checked_at, row.expires_at, row.retry_after
    domain, policy_id, text = row.domain, row.policy_id, row.policy_text
    if (
        type(domain) is str
        and 0 < len(domain) <= _MAX_DOMAIN
        and (fetched is None or (type(fetched) is float and 0.0 <= fetched < _MAX_TIME))  # (NaN fails too)
        and (checked is None or (type(checked) is float and 0.0 <= checked < _MAX_TIME))
        and (expires is None or (type(expires) is float and 0.0 <= expires < _MAX_TIME))
        and (retry is None or (type(retry) is float and 0.0 <= retry < _MAX_TIME))
        and (policy_id is None or type(policy_id) is str)
        and (
            text is None
            or (
                type(text) is str
                and policy_id is not None
                and fetched is not None
                and expires is not None
                and expires >= fetched
            )
        )
        and (row.failed_id is None or (type(row.failed_id) is str and retry is not None))
        and (row.failure is None or type(row.failure) is str)
        and (row.failure_detail is None or type(row.failure_detail) is str)
    ):
        return row
    return _validate_slowly(row)


def _validate_slowly(row: StoredPolicy) -> StoredPolicy:
    """validate_row for the rest: name what is wrong, or convert ints (and str or float subclasses)."""
    domain = row.domain
    if not isinstance(domain, str) or not domain or len(domain) > _MAX_DOMAIN:
        raise ValueError(f"domain is not a name of 1 to {_MAX_DOMAIN} characters")
    for value in (row.policy_id, row.policy_text, row.failed_id, row.failure, row.failure_detail):
        if value is not None and not isinstance(value, str):
            raise ValueError(_bad_text(row))
    row = _float_times(row)
    if row.policy_text is not None:
        if row.policy_id is None or row.fetched_at is None or row.expires_at is None:
            raise ValueError("a policy without its policy_id, fetched_at or expires_at")
        if row.expires_at < row.fetched_at:
            raise ValueError("expires_at is before fetched_at")
    if row.failed_id is not None and row.retry_after is None:
        raise ValueError("failed_id without retry_after")
    return row


def _bad_text(row: StoredPolicy) -> str:
    name = next(name for name in _TEXT_FIELDS if not isinstance(getattr(row, name), str | None))
    return f"{name} is not a string"


def _float_times(row: StoredPolicy) -> StoredPolicy:
    """Name the bad time field, or convert ints (and float subclasses) to float."""
    changes: dict[str, Any] = {}
    for name in _TIME_FIELDS:
        value = getattr(row, name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{name} is not a number")
        if isinstance(value, int) and not -_MAX_TIME < value < _MAX_TIME:
            raise ValueError(f"{name} is out of range")  # (float() of a huge int raises OverflowError)
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"{name} is not finite")
        if not 0.0 <= number < _MAX_TIME:
            raise ValueError(f"{name} is out of range (0 to 2**32 s)")
        if type(value) is not float:
            changes[name] = number
    return dataclasses.replace(row, **changes) if changes else row


@runtime_checkable
class PolicyStore(Protocol):
    """The store interface the resolver uses. Implementations: MemoryStore, SQLiteStore, RedisStore.

    Rows handed out must pass :func:`validate_row` (others are skipped like unreadable rows). Any exception is
    an outage of the whole store, except :class:`DamagedRowError` from ``get``: that one row cannot be read
    (damaged storage) while the store works — that lookup is answered "try again later", nothing is marked down.
    """

    async def get(self, domain: str) -> StoredPolicy | None:
        """The row for ``domain``, or None (also for a row that cannot be read). Raises
        :class:`DamagedRowError` when the storage holding that row is damaged but the store otherwise works."""
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
