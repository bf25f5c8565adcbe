"""A loopback :class:`~mtasts.testing.World` whose DNS server listens on port 53, for the real MTAs of the suite.

A system resolver (Postfix's chrooted ``smtp``, Exim, sendmail) reads ``resolv.conf``, which names an address and
never a port: the world's DNS must then be on port 53 of some loopback address. Each MTA's tests use their own
addresses, so that they can run side by side; :func:`world_on_port_53` takes the first free one.
"""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager

from mtasts.testing import World

__all__ = ["world_on_port_53"]


@asynccontextmanager
async def world_on_port_53(addresses: Sequence[str]) -> AsyncIterator[World]:
    """A :class:`World` whose DNS server listens on port 53 of the first of ``addresses`` not in use."""
    failures: list[str] = []
    for address in addresses:
        async with AsyncExitStack() as stack:
            try:
                world = await stack.enter_async_context(World(dns_host=address, dns_port=53))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                failures.append(f"{address}:53 in use")
                continue
            yield world
            return
    raise RuntimeError(f"no address for the world's DNS server: {', '.join(failures)}")
