"""The client side of test_limits: many concurrent lookups in a process of its own (so the world, in the test's
process, has a core to itself). Arguments as JSON on stdin; prints one JSON object of measurements."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import dns.asyncresolver

from mtasts import PolicyResolver
from mtasts.tls import create_client_context


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def main(args: dict[str, Any]) -> dict[str, Any]:
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = args["dns_port"]
    resolver.lifetime = 60.0
    resolver.timeout = 30.0
    samples: list[tuple[float, int]] = []
    stop = asyncio.Event()

    async def sample() -> None:
        while not stop.is_set():
            samples.append((rss_mb(), open_fds()))
            await asyncio.sleep(0.05)

    before = (rss_mb(), open_fds())
    sampler = asyncio.create_task(sample())
    loop = asyncio.get_running_loop()
    done_at: dict[str, float] = {}
    results: dict[str, tuple[str, str | None]] = {}
    async with PolicyResolver(
        dns_resolver=resolver, ssl_context=create_client_context(cafile=args["cafile"]), policy_port=args["port"],
        max_concurrent_fetches=args["limit"], fetch_timeout=args["fetch_timeout"],
        fetch_idle_timeout=args["idle_timeout"],
    ) as mtasts:  # fmt: skip
        start = loop.time()

        async def lookup(name: str) -> None:
            result = await mtasts.lookup(name)
            done_at[name] = loop.time() - start
            results[name] = (result.status.value, result.error)

        await asyncio.gather(*(lookup(name) for name in args["names"]))
        elapsed = loop.time() - start
    stop.set()
    await sampler
    return {
        "elapsed": elapsed,
        "results": results,
        "done_at": done_at,
        "rss_before": before[0],
        "rss_peak": max(r for r, _ in samples),
        "fds_before": before[1],
        "fds_peak": max(f for _, f in samples),
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(json.loads(sys.stdin.read())))))
