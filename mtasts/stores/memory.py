"""MemoryStore: a store in a dict — for tests and for sharing one store between resolvers in a process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from ._base import SessionCount, StoredPolicy

__all__ = ["MemoryStore"]


class MemoryStore:
    """A :class:`~mtasts.stores.PolicyStore` and :class:`~mtasts.stores.ReportStore` in memory (lost with the
    process)."""

    def __init__(self) -> None:
        self.rows: dict[str, StoredPolicy] = {}
        self.writes = 0  # batches written (for tests)
        self.counts: dict[tuple[int, str, str], int] = {}
        self.report_states: dict[tuple[int, str], str] = {}

    async def get(self, domain: str) -> StoredPolicy | None:
        return self.rows.get(domain)

    async def write(self, puts: Sequence[StoredPolicy], deletes: Sequence[str]) -> None:
        self.writes += 1
        for domain in deletes:
            self.rows.pop(domain, None)
        for row in puts:
            self.rows[row.domain] = row

    async def scan(self) -> AsyncIterator[StoredPolicy]:
        for row in list(self.rows.values()):
            yield row

    async def add_session_counts(self, counts: Sequence[SessionCount]) -> None:
        for day, domain, key, count in counts:
            self.counts[(day, domain, key)] = self.counts.get((day, domain, key), 0) + count

    async def session_counts(self, day: int | None = None) -> list[SessionCount]:
        return [(d, domain, key, n) for (d, domain, key), n in self.counts.items() if day is None or d == day]

    async def delete_session_counts(self, day: int, policy_domain: str) -> None:
        for key in [k for k in self.counts if k[0] == day and k[1] == policy_domain]:
            del self.counts[key]

    async def get_report_state(self, day: int, policy_domain: str) -> str | None:
        return self.report_states.get((day, policy_domain))

    async def put_report_state(self, day: int, policy_domain: str, state: str | None) -> None:
        if state is None:
            self.report_states.pop((day, policy_domain), None)
        else:
            self.report_states[(day, policy_domain)] = state

    async def aclose(self) -> None:
        return None
