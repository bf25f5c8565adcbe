"""The ``fleet`` section: K processes sharing one throw-away redis-server meet the same cold domains at once.

Each process is ``python -m benchmarks.fleet child``: a PolicyResolver over ``RedisStore`` (fleet single-flight
on) — or over a memory store, for the comparison — that waits for a common start time and then looks up every
domain (100 in flight). The runner counts, on the loopback world, TXT queries and HTTPS fetches per domain.
Goal (issue 16): <= 1.1 each with the fleet, against K without it.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

PROCESSES = 8
CONCURRENCY = 100


async def _child(args: dict[str, Any]) -> dict[str, Any]:
    import ssl  # noqa: PLC0415

    import dns.asyncresolver  # noqa: PLC0415

    from mtasts import PolicyResolver  # noqa: PLC0415
    from mtasts.stores import MemoryStore, PolicyStore, RedisStore  # noqa: PLC0415

    world = args["world"]
    dns_resolver = dns.asyncresolver.Resolver(configure=False)
    dns_resolver.nameservers = [world["dns_host"]]
    dns_resolver.port = world["dns_port"]
    dns_resolver.cache = None
    dns_resolver.lifetime = 10.0
    context = ssl.create_default_context(cafile=world["ca_pem_path"])
    store: PolicyStore = RedisStore(args["url"]) if args["url"] else MemoryStore()
    statuses: dict[str, int] = {}
    async with PolicyResolver(
        dns_resolver=dns_resolver, ssl_context=context, policy_port=world["https_port"], store=store, fetch_timeout=30
    ) as resolver:
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(domain: str) -> None:
            async with gate:
                lookup = await resolver.lookup(domain)
            statuses[lookup.status.value] = statuses.get(lookup.status.value, 0) + 1

        await asyncio.sleep(max(0.0, args["start_at"] - time.time()))
        start = time.perf_counter()
        await asyncio.gather(*(one(d) for d in args["domains"]))
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "statuses": statuses}


async def run_fleet(world: Any, env: Any, domains: list[str], url: str | None, processes: int) -> dict[str, Any]:
    """K children at once; the counts per domain from the world, the slowest child's time."""
    world.reset_counters()
    args = {"world": env.to_json(), "domains": domains, "url": url, "start_at": time.time() + 2.0}
    payload = json.dumps(args).encode()
    command = [sys.executable, "-m", "benchmarks.fleet", "child"]
    pipe = asyncio.subprocess.PIPE
    children = [
        await asyncio.create_subprocess_exec(*command, stdin=pipe, stdout=pipe, stderr=pipe, env=dict(os.environ))
        for _ in range(processes)
    ]
    outputs = await asyncio.gather(*(child.communicate(payload) for child in children))
    results = []
    for child, (stdout, stderr) in zip(children, outputs, strict=True):
        lines = stdout.decode().strip().splitlines()
        if child.returncode != 0 or not lines:
            return {"error": stderr.decode(errors="replace").strip().splitlines()[-3:]}
        results.append(json.loads(lines[-1]))
    count = len(domains)
    txt = sum(world.queries(f"_mta-sts.{d}", "TXT") for d in domains)
    fetches = sum(world.requests(f"mta-sts.{d}") for d in domains)
    statuses: dict[str, int] = {}
    for result in results:
        for status, n in result["statuses"].items():
            statuses[status] = statuses.get(status, 0) + n
    return {
        "processes": processes,
        "domains": count,
        "fetches_per_domain": fetches / count,
        "txt_per_domain": txt / count,
        "seconds": max(r["seconds"] for r in results),
        "statuses": statuses,
    }


def main() -> int:
    if sys.argv[1:] != ["child"]:
        print("usage: python -m benchmarks.fleet child  (run by the benchmark runner)", file=sys.stderr)
        return 2
    print(json.dumps(asyncio.run(_child(json.loads(sys.stdin.read())))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
