"""Instructions per cached decision, counted by valgrind's callgrind: a hot-path measure that noise cannot move.

    python -m benchmarks.instructions [--tree PATH ...] [--json PATH]

Wall-clock timings on a shared 2-core machine move by tens of percent from run to run; the number of machine
instructions CPython executes for one call does not. Each measurement runs a loop of N hits (cached_policy,
await get_policy, the socketmap's in-memory answer) under ``valgrind --tool=callgrind`` twice, with two values of
N, and reports the difference divided by the difference in N — start-up and set-up cancel out (string hashing
is fixed with ``PYTHONHASHSEED=0``, so dict layouts are the same from run to run). ``--tree`` runs
the same loop against another checkout of mtasts (e.g. a ``git worktree`` of the previous commit) for a side by
side comparison. Needs valgrind (``apt-get install valgrind``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("cached_policy", "get_policy", "socketmap")
# socketmap-dane: the same answer with DANE on (dane=True), each domain's DANE state known ("not DANE": the
# enforce reply). Not in the default set: trees before DANE cannot run it. socketmap-dane-only: the same, DANE
# governing every domain ("OK dane-only"). socketmap-notfound: NOTFOUND for domains whose "no policy" answer is
# remembered (the negative cache).
EXTRA_KINDS = ("socketmap-dane", "socketmap-dane-only", "socketmap-notfound")
KIND_HELP = "which loops to count (default: all)"
SMALL, LARGE = 20_000, 60_000

# The loop, run in a child with the tree first on sys.path. 1,000 cached domains, visited in order.
_LOOP = """
import asyncio, sys
sys.path.insert(0, sys.argv[1])
import dns.asyncresolver
import mtasts
from mtasts import PolicyResolver, parse_policy
assert mtasts.__file__.startswith(sys.argv[1]), mtasts.__file__
kind, n = sys.argv[2], int(sys.argv[3])
POLICY = parse_policy("version: STSv1\\nmode: enforce\\nmx: mx.example.net\\nmax_age: 86400\\n")

async def main():
    dns_resolver = dns.asyncresolver.Resolver(configure=False)
    dns_resolver.nameservers = ["127.0.0.1"]
    async with PolicyResolver(dns_resolver=dns_resolver) as resolver:
        names = [f"d{i}.example" for i in range(1000)]
        for name in names:
            resolver.cache_policy(name, POLICY, "1")
        if kind == "socketmap-notfound":
            from mtasts.resolver import LookupStatus, PolicyLookup
            names = [f"n{i}.example" for i in range(1000)]
            for name in names:
                resolver._negative.put(name, PolicyLookup(name, LookupStatus.NO_POLICY, from_cache=True), float("inf"))
        order = (names * (n // len(names) + 1))[:n]
        if kind == "cached_policy":
            cached = resolver.cached_policy
            for name in order:
                cached(name)
        elif kind == "get_policy":
            get = resolver.get_policy
            for name in order:
                await get(name)
        else:
            from mtasts.socketmap import SocketmapServer
            dane = kind.startswith("socketmap-dane")
            server = SocketmapServer(resolver, dane=True) if dane else SocketmapServer(resolver)
            if dane:
                from mtasts.socketmap.answers import DANE_ONLY_NETSTRING
                state = DANE_ONLY_NETSTRING if kind == "socketmap-dane-only" else None
                for name in names:
                    server._dane.states[name] = (float("inf"), state)
            quick = server._quick
            for payload in [b"postfix " + name.encode() for name in order]:
                quick(payload)

asyncio.run(main())
"""


def count(tree: Path, kind: str, n: int, script: Path) -> int:
    """Instructions callgrind collects for the whole child with ``n`` iterations."""
    with tempfile.TemporaryDirectory() as out:
        result = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/cg.out", sys.executable, str(script),
             str(tree), kind, str(n)],
            capture_output=True, text=True, check=False, timeout=1800, env={**os.environ, "PYTHONHASHSEED": "0"},
        )  # fmt: skip
    match = re.search(r"Collected : (\d+)", result.stderr)
    if result.returncode != 0 or match is None:
        raise SystemExit(f"callgrind failed for {tree} {kind}: {result.stderr[-2000:]}")
    return int(match.group(1))


def per_op(tree: Path, kind: str, script: Path) -> float:
    return (count(tree, kind, LARGE, script) - count(tree, kind, SMALL, script)) / (LARGE - SMALL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.instructions", description=__doc__.split("\n")[0])
    parser.add_argument("--tree", action="append", type=Path, help="another mtasts checkout to compare (repeatable)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--only", nargs="+", choices=KINDS + EXTRA_KINDS, default=list(KINDS), help=KIND_HELP)
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    trees = [ROOT, *(tree.resolve() for tree in args.tree or [])]
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as work:
        script = Path(work) / "loop.py"
        script.write_text(_LOOP)
        for tree in trees:
            results[str(tree)] = {kind: per_op(tree, kind, script) for kind in args.only}
    base = results[str(ROOT)]
    print(f"instructions per hit (callgrind, ({LARGE:,} - {SMALL:,} iterations) / {LARGE - SMALL:,})")
    print(f"{'tree':40}  " + "  ".join(f"{kind:>14}" for kind in args.only))
    for tree, row in results.items():
        cells = []
        for kind in args.only:
            ratio = "" if tree == str(ROOT) else f" ({row[kind] / base[kind]:.2f}x)"
            cells.append(f"{row[kind]:>6,.0f}{ratio}".rjust(14))
        print(f"{tree[-40:]:40}  " + "  ".join(cells))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
