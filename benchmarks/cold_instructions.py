"""User-space instructions per cold lookup, counted by valgrind: the cold path's measure that noise cannot move.

    python -m benchmarks.cold_instructions [--domains 100] [--loop asyncio uvloop] [--impl mtasts peer]

Runs the ``cold`` step of the benchmark workers (``benchmarks.workers IMPL cold``: TXT + address query + HTTPS
GET per domain, 100 in flight) under ``valgrind --tool=cachegrind --cache-sim=no`` twice, for ``--domains``
domains and for none, against one loopback world (and, for the peer, the CONNECT proxy of the timed runs), and
prints the instructions of the process start (imports) and per cold domain: the difference of the two runs
divided by the domains. Kernel work (the sockets' system calls, which the peer's proxy hop doubles) is not
counted: the timed ``cold`` section measures it; this shows what the Python side costs, the same every run.
Needs valgrind (``apt-get install valgrind``); about a minute per row.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import sys
from typing import Any

from .workers import WorldEnv, uvloop_available


async def _count(impl: str, loop: str, env: WorldEnv, domains: list[str]) -> tuple[int, int]:
    """(instructions, lookups that succeeded) of one worker run."""
    args: dict[str, Any] = {"world": env.to_json(), "domains": domains, "concurrency": 100}
    extra = {"PYTHONHASHSEED": "0"}
    if impl == "peer":  # slowed down some 50 times, the peer's default 4 s timeout would end its lookups
        args["timeout"] = 300
        assert env.proxy_url is not None
        extra.update({"SSL_CERT_FILE": env.ca_pem_path, "https_proxy": env.proxy_url, "HTTPS_PROXY": env.proxy_url})
    process = await asyncio.create_subprocess_exec(
        "valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
        sys.executable, "-m", "benchmarks.workers", impl, "cold", "-", loop,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **extra},
    )  # fmt: skip
    out, err = await process.communicate(json.dumps(args).encode())
    match = re.search(r"I\s+refs:\s+([\d,]+)", err.decode())
    if process.returncode != 0 or match is None:
        raise SystemExit(f"valgrind failed for {impl} on {loop}: {err.decode()[-2000:]}")
    result = json.loads(out.decode().strip().splitlines()[-1])
    return int(match.group(1).replace(",", "")), int(result.get("ok", 0))


async def run(count: int, impls: list[str], loops: list[str]) -> list[dict[str, Any]]:
    from mtasts.testing import World  # noqa: PLC0415 - needs trustme

    from .proxy import ConnectProxy  # noqa: PLC0415

    domains = [f"c{i}.cold.example" for i in range(count)]
    rows = []
    async with World() as world, ConnectProxy(world.host, world.https_port) as proxy:
        for i, domain in enumerate(domains):
            world.publish(domain, f"version: STSv1\nmode: enforce\nmx: *.p{i % 100}.example\nmax_age: 604800\n",
                          id=f"20261126c{i}")  # fmt: skip
            world.server_ssl_context(f"mta-sts.{domain}")
        env = WorldEnv(world.host, world.dns_port, world.https_port, world.ca_pem_path, proxy.url)
        for loop in loops:
            for impl in impls:
                start, _ = await _count(impl, loop, env, [])
                full, ok = await _count(impl, loop, env, domains)
                rows.append({"impl": impl, "loop": loop, "start": start, "per_domain": (full - start) / count,
                             "ok": ok, "domains": count})  # fmt: skip
                print(f"{impl:6}  {loop:7}  {start / 1e6:8,.0f} M  {(full - start) / count / 1e6:8.2f} M  {ok}/{count}",
                      flush=True)  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cold_instructions", description=__doc__.split("\n")[0])
    parser.add_argument("--domains", type=int, default=100, help="cold domains per counted run (default 100)")
    parser.add_argument("--impl", nargs="+", choices=("mtasts", "peer"), default=["mtasts", "peer"])
    parser.add_argument("--loop", nargs="+", choices=("asyncio", "uvloop"), default=None,
                        help="event loops (default: asyncio, and uvloop when installed)")  # fmt: skip
    parser.add_argument("--json", metavar="PATH", help="write the rows as JSON")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    loops = args.loop or (["asyncio", "uvloop"] if uvloop_available() else ["asyncio"])
    print(f"instructions (valgrind, user space): {args.domains} cold domains minus none, 100 in flight")
    print("impl    loop     start-up    per cold domain  valid")
    rows = asyncio.run(run(args.domains, args.impl, loops))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump(rows, file, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
