"""A bound on work in flight whose waiters give up: the DNS-query and policy-fetch queues of the resolver."""

from __future__ import annotations

import asyncio
from types import TracebackType

from .errors import LocalError

__all__ = ["Gate"]


class Gate:
    """At most ``limit`` holders at once; a waiter gives up after ``wait`` seconds with :class:`LocalError`.

    ``async with gate:`` — the bound on DNS queries and policy fetches in flight. A full queue is this machine's
    trouble, never the domain's: the error says so, and the lookup ends "try again later".
    """

    def __init__(self, limit: int, wait: float, what: str) -> None:
        self.limit = limit
        self.wait = wait
        self._what = what
        self._semaphore = asyncio.Semaphore(limit)

    async def __aenter__(self) -> None:
        semaphore = self._semaphore
        if not semaphore.locked():
            await semaphore.acquire()  # a free slot: no timer
            return
        try:
            async with asyncio.timeout(self.wait):
                await semaphore.acquire()
        except TimeoutError:
            raise LocalError(f"no free {self._what} slot within {self.wait:g} s (all {self.limit} busy)") from None

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._semaphore.release()
