"""MemoryStore: a store in a dict — for tests and for sharing one store between resolvers in a process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from ._base import StoredPolicy

__all__ = ["MemoryStore"]


class MemoryStore:
    """A :class:`~mtasts.stores.PolicyStore` in memory (lost with the process)."""

    def __init__(self) -> None:
        self.rows: dict[str, StoredPolicy] = {}
        self.writes = 0  # batches written (for tests)

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

    async def aclose(self) -> None:
        return None
