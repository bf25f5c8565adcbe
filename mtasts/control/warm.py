"""Warming a cache politely: look a list of domains up with bounded concurrency and rate.

:func:`warm` is shared by the daemon (a ``warm`` control request, looked up by its own resolver) and by
``mtasts cache warm --store`` (a resolver of its own on the store). The pacing itself is
:class:`~mtasts.control.protocol.Pacer`'s (pure, on an injected clock); the sleep is injected too, so tests run
it on a fake clock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import Any

from ..resolver import PolicyResolver
from .protocol import Pacer, warm_item

__all__ = ["warm"]

log = logging.getLogger("mtasts.control")

Lookup = Callable[[str], Awaitable[dict[str, Any]]]


async def warm(
    domains: Sequence[str],
    lookup: Lookup,
    *,
    concurrency: int,
    pacer: Pacer,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> AsyncGenerator[dict[str, Any], None]:
    """``await lookup(domain)`` for every domain — at most ``concurrency`` at once, started no faster than
    ``pacer`` allows, in list order — and yield each outcome as it ends. A lookup that raises yields an
    ``error`` item (the others go on). Closing the iterator early cancels what is still running."""
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    outcomes: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    slots = asyncio.Semaphore(concurrency)
    running: set[asyncio.Future[None]] = set()

    async def one(domain: str) -> None:
        try:
            outcome = await lookup(domain)
        except Exception as exc:  # one domain's trouble (or a bug) never stops the others
            log.exception("warming %s failed", domain)
            outcome = warm_item(domain, "error", error=f"{type(exc).__name__}: {exc}"[:300])
        finally:
            slots.release()
        outcomes.put_nowait(outcome)

    async def launch() -> None:
        for domain in domains:
            await slots.acquire()
            delay = pacer.reserve()
            if delay > 0:
                await sleep(delay)
            task = asyncio.ensure_future(one(domain))
            running.add(task)
            task.add_done_callback(running.discard)

    launcher = asyncio.ensure_future(launch())
    try:
        for _ in range(len(domains)):
            if not launcher.done():
                getter = asyncio.ensure_future(outcomes.get())
                await asyncio.wait({getter, launcher}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield getter.result()
                    continue
                getter.cancel()
                launcher.result()  # the launcher ended first: raise its exception (a bug), if it had one
            yield await outcomes.get()
    finally:
        for task in (launcher, *running):
            task.cancel()
        await asyncio.gather(launcher, *running, return_exceptions=True)


async def look_up(resolver: PolicyResolver, domain: str) -> dict[str, Any]:
    """One domain warmed through ``resolver``: its lookup as a warm item (the daemon's and the direct mode's)."""
    lookup = await resolver.lookup(domain)
    return warm_item(
        lookup.domain,
        lookup.status.value,
        policy=lookup.policy,
        policy_id=lookup.policy_id,
        result_type=lookup.result_type,
        error=lookup.error,
    )
