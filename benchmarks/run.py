"""The benchmark runner: mtasts side by side with postfix-mta-sts-resolver, in one run, as ratios.

    python -m benchmarks [--quick] [--json PATH] [--plot PATH] [--only SECTION ...]

Sections (docs/benchmarks.md says what each measures and why):

* ``hit``    — ns per cached decision (lookup + evaluate): dict, TTLCache, mtasts fast path, ``await
  get_policy``, the peer's in-process cache hit;
* ``load``   — N concurrent tasks hammering 10,000 cached domains: throughput, p50, p99 (and a plot);
* ``cold``   — N distinct cold domains against the loopback world: wall time, DNS queries and HTTPS requests per
  domain, for both;
* ``herd``   — 100 tasks asking for one cold domain at once: queries and requests it costs;
* ``memory`` — RSS with 1,000,000 cached domains sharing 10,000 policies, and with 100,000 distinct ones;
* ``stores`` — restoring 100,000 entries from each store at start-up, and the hit with a store behind memory;
* ``socketmap`` — the Postfix socketmap server against the peer's daemon: requests/s and p99 for cache hits over
  1 and 10 connections, one request at a time and pipelined (the load comes from a third process);
* ``http``   — ``mtasts serve-http`` beside ``mtasts serve-socketmap``: requests/s, p99 and cache hits of
  ``GET /v1/policy/{domain}`` over 1 and 10 keep-alive connections (the load comes from a third process);
* ``recorder`` — the TLS-RPT recorder's cost per recorded session.

Each measurement runs in a fresh worker process (``benchmarks.workers``); the loopback world (and, for the peer,
a CONNECT proxy to reach it on port 443) runs here, so both implementations face the same servers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from .workers import WorldEnv, run_worker, uvloop_available

_T = TypeVar("_T")

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("hit", "load", "cold", "herd", "fleet", "memory", "stores", "socketmap", "http", "recorder")


class Progress:
    """One status line on stderr (a bar when a total is known); silent when stderr is not a terminal."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.started = time.perf_counter()

    def show(self, label: str, done: int | None = None, total: int | None = None) -> None:
        elapsed = time.perf_counter() - self.started
        if done is not None and total:
            filled = int(30 * min(done, total) / total)
            bar = f" [{'#' * filled}{'.' * (30 - filled)}] {done}/{total}"
        else:
            bar = ""
        line = f"{elapsed:6.1f}s {label}{bar}"
        if self.tty:
            sys.stderr.write("\r\033[K" + line)
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def done(self) -> None:
        if self.tty:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def _ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "n/a"
    return f"{a / b:.2f}x"


def _fmt(value: Any, unit: str = "", digits: int = 0) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}{unit}"
    return f"{value:,}{unit}"


def _table(title: str, header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [title, "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows)
    return "\n".join(lines)


# -- sections ----------------------------------------------------------------------------------------------------


async def section_hit(ctx: dict[str, Any], quick: bool, progress: Progress) -> dict[str, Any]:
    iterations = 300_000 if quick else 2_000_000
    progress.show("hit: mtasts")
    mine = await run_worker("mtasts", "hit", {"domains": 10_000, "iterations": iterations})
    progress.show("hit: peer")
    peer = await run_worker("peer", "hit", {"domains": 10_000, "iterations": iterations})
    ns = dict(mine.get("ns_per_op", {}))
    ns["peer"] = peer.get("ns_per_op")
    ns["peer_responder"] = peer.get("responder_ns_per_op")
    rows = [
        ["dict.get + evaluate", _fmt(ns.get("dict"), " ns"), _ratio(ns.get("dict"), ns.get("ttlcache")), ""],
        ["TTLCache.get + evaluate", _fmt(ns.get("ttlcache"), " ns"), "1.00x", ""],
        ["mtasts cached_policy + evaluate", _fmt(ns.get("fast_path"), " ns"),
         _ratio(ns.get("fast_path"), ns.get("ttlcache")), "goal <= 3x TTLCache"],
        ["mtasts await get_policy + evaluate", _fmt(ns.get("get_policy"), " ns"),
         _ratio(ns.get("get_policy"), ns.get("ttlcache")),
         f"peer / mtasts = {_ratio(ns.get('peer'), ns.get('get_policy'))} (goal >= 10x)"],
        ["peer cache.get + is_stale + answer", _fmt(ns.get("peer"), " ns"), _ratio(ns.get("peer"), ns.get("ttlcache")),
         peer.get("error", "")],
        ["peer responder.process_request", _fmt(ns.get("peer_responder"), " ns"),
         _ratio(ns.get("peer_responder"), ns.get("ttlcache")),
         f"peer / mtasts = {_ratio(ns.get('peer_responder'), ns.get('get_policy'))}"],
    ]  # fmt: skip
    ctx["tables"].append(_table("Cached hit, in process (ns per decision, lower is better)",
                                ["what", "ns/op", "vs TTLCache", "note"], rows))  # fmt: skip
    return {"hit_ns": {k: v for k, v in ns.items() if v is not None}, "hit_errors": _errors(mine, peer)}


async def section_load(ctx: dict[str, Any], quick: bool, progress: Progress) -> dict[str, Any]:
    tasks = [1, 10, 100, 1000]
    ops = 200_000 if quick else 1_000_000
    progress.show("load: mtasts (refresher running)")
    mine = await run_worker("mtasts", "load", {"domains": 10_000, "tasks": tasks, "ops": ops})
    progress.show("load: peer")
    peer = await run_worker("peer", "load", {"domains": 10_000, "tasks": tasks, "ops": ops})
    rows = []
    mine_levels = {lv["tasks"]: lv for lv in mine.get("levels", []) if "ops_per_s" in lv}
    peer_levels = {lv["tasks"]: lv for lv in peer.get("levels", []) if "ops_per_s" in lv}
    for n in tasks:
        m, p = mine_levels.get(n, {}), peer_levels.get(n, {})
        rows.append([
            str(n),
            _fmt(m.get("ops_per_s"), "/s"), _fmt(m.get("p50_us"), " us", 1), _fmt(m.get("p99_us"), " us", 1),
            _fmt(p.get("ops_per_s"), "/s"), _fmt(p.get("p50_us"), " us", 1), _fmt(p.get("p99_us"), " us", 1),
            _ratio(m.get("ops_per_s"), p.get("ops_per_s")),
        ])  # fmt: skip
    ctx["tables"].append(_table(
        "Under load: N tasks over 10,000 cached domains (decisions per second; mtasts with its refresher running)",
        ["tasks", "mtasts ops", "p50", "p99", "peer ops", "p50", "p99", "mtasts/peer"], rows))  # fmt: skip
    ctx["load_levels"] = {"mtasts": list(mine_levels.values()), "peer": list(peer_levels.values())}
    return {"load": {"domains": 10_000, "mtasts": list(mine_levels.values()), "peer": list(peer_levels.values())},
            "load_errors": _errors(mine, peer)}  # fmt: skip


async def _with_world(body: Callable[[Any, WorldEnv, Any], Awaitable[_T]]) -> _T:
    from mtasts.testing import World  # noqa: PLC0415 - needs trustme

    from .proxy import ConnectProxy  # noqa: PLC0415

    async with World() as world, ConnectProxy(world.host, world.https_port) as proxy:
        env = WorldEnv(world.host, world.dns_port, world.https_port, world.ca_pem_path, proxy.url)
        return await body(world, env, proxy)


def _peer_env(env: WorldEnv) -> dict[str, str]:
    assert env.proxy_url is not None
    return {"SSL_CERT_FILE": env.ca_pem_path, "https_proxy": env.proxy_url, "HTTPS_PROXY": env.proxy_url}


def _counts(world: Any, domains: list[str]) -> dict[str, int]:
    txt = sum(world.queries(f"_mta-sts.{d}", "TXT") for d in domains)
    addresses = sum(world.queries(f"mta-sts.{d}", "A") + world.queries(f"mta-sts.{d}", "AAAA") for d in domains)
    https = sum(world.requests(f"mta-sts.{d}") for d in domains)
    return {"txt_queries": txt, "address_queries": addresses, "https_requests": https}


async def _watch(world: Any, total: int, label: str, progress: Progress, task: Awaitable[dict[str, Any]]) -> Any:
    job = asyncio.ensure_future(task)
    while not job.done():
        progress.show(label, sum(world.http_requests.values()), total)
        await asyncio.sleep(0.5)
    return job.result()


async def section_cold(ctx: dict[str, Any], quick: bool, progress: Progress) -> dict[str, Any]:
    count = 1_000 if quick else 10_000
    concurrency = 100
    domains = [f"c{i}.cold.example" for i in range(count)]
    # Both implementations on each event loop: the default asyncio loop, and uvloop when it is installed (the
    # peer's daemon takes uvloop whenever it can; mtasts' `fast` extra brings it). Runs alternate mtasts / peer.
    loops = ["asyncio", "uvloop"] if uvloop_available() else ["asyncio"]
    runs = [(impl, loop) for loop in loops for impl in ("mtasts", "peer")]

    async def body(world: Any, env: WorldEnv, proxy: Any) -> dict[tuple[str, str], dict[str, Any]]:
        for i, domain in enumerate(domains):
            world.publish(domain, f"version: STSv1\nmode: enforce\nmx: *.p{i % 100}.example\nmax_age: 604800\n",
                          id=f"20261126c{i}")  # fmt: skip
        progress.show(f"cold: issuing {count} certificates in the world (not timed)")
        for i, domain in enumerate(domains):
            world.server_ssl_context(f"mta-sts.{domain}")
            if i % 500 == 0:
                progress.show("cold: issuing certificates (not timed)", i, count)
                await asyncio.sleep(0)
        results: dict[tuple[str, str], dict[str, Any]] = {}
        for impl, loop in runs:
            world.reset_counters()
            args = {"world": env.to_json(), "domains": domains, "concurrency": concurrency}
            extra_env = _peer_env(env) if impl == "peer" else {}
            result = await _watch(world, count, f"cold: {impl} ({loop})", progress,
                                  run_worker(impl, "cold", args, env=extra_env, loop=loop))  # fmt: skip
            results[impl, loop] = {**result, **_counts(world, domains)}
        return results

    results = await _with_world(body)
    rows = []
    for impl, loop in runs:
        r, p = results[impl, loop], results["peer", loop]
        cpu = r.get("cpu_seconds")
        vs_peer = ""
        if impl == "mtasts":
            vs_peer = (f"{_ratio(p.get('seconds'), r.get('seconds'))} throughput, "
                       f"{_ratio(cpu, p.get('cpu_seconds'))} CPU")  # fmt: skip
        rows.append([
            impl, loop, _fmt(r.get("seconds"), " s", 2), _fmt(cpu, " s", 2),
            _fmt(cpu * 1000 / count if cpu else None, " ms", 2), f"{r.get('ok', 0)}/{count}",
            _fmt(r["txt_queries"] / count, "", 3), _fmt(r["address_queries"] / count, "", 3),
            _fmt(r["https_requests"] / count, "", 3), vs_peer, r.get("error", "")[:100],
        ])  # fmt: skip
    ctx["tables"].append(_table(
        f"Cold at scale: {count:,} distinct domains, {concurrency} lookups in flight, same loopback world "
        "(per domain: goal exactly 1 TXT + 1 A/AAAA + 1 GET; goal >= 1.2x the peer's throughput, <= 0.8x its CPU)",
        ["impl", "loop", "wall", "client CPU", "CPU/domain", "valid", "TXT/domain", "A+AAAA/domain", "GET/domain",
         "vs peer (same loop)", "note"],
        rows))  # fmt: skip
    m, p = results["mtasts", "asyncio"], results["peer", "asyncio"]
    cold: dict[str, Any] = {
        "domains": count, "concurrency": concurrency, "seconds": m.get("seconds"),
        "txt_queries": m["txt_queries"], "address_queries": m["address_queries"],
        "https_requests": m["https_requests"], "ok": m.get("ok"),
        "peer_seconds": p.get("seconds"), "peer_txt_queries": p["txt_queries"],
        "peer_address_queries": p["address_queries"], "peer_https_requests": p["https_requests"],
        "peer_ok": p.get("ok"), "peer_note": "the peer reaches port 443 through a CONNECT proxy (no A query)",
        "cpu_seconds": m.get("cpu_seconds"), "peer_cpu_seconds": p.get("cpu_seconds"),
        "loops": {f"{impl} {loop}": results[impl, loop] for impl, loop in runs},
    }  # fmt: skip
    return {"cold": cold, "cold_errors": _errors(*results.values())}


async def section_herd(ctx: dict[str, Any], quick: bool, progress: Progress) -> dict[str, Any]:
    tasks = 100

    async def body(world: Any, env: WorldEnv, proxy: Any) -> dict[str, Any]:
        results = {}
        for impl, extra_env in [("mtasts", {}), ("peer", _peer_env(env))]:
            domain = f"herd-{impl}.example"
            world.publish(domain, "version: STSv1\nmode: enforce\nmx: *.herd.example\nmax_age: 604800\n", id="h1")
            world.server_ssl_context(f"mta-sts.{domain}")
            world.reset_counters()
            progress.show(f"herd: {impl}, {tasks} tasks on one cold domain")
            result = await run_worker(impl, "herd", {"world": env.to_json(), "domain": domain, "tasks": tasks},
                                      env=extra_env)  # fmt: skip
            results[impl] = {**result, **_counts(world, [domain])}
        return results

    results = await _with_world(body)
    m, p = results["mtasts"], results["peer"]
    rows = [
        [name, str(r["txt_queries"]), str(r["address_queries"]), str(r["https_requests"]),
         _fmt(r.get("seconds"), " s", 3), r.get("error", "")]
        for name, r in [("mtasts", m), ("peer", p)]
    ]  # fmt: skip
    ctx["tables"].append(_table(f"Thundering herd: {tasks} tasks ask for one cold domain at once (goal: 1 TXT, 1 GET)",
                                ["impl", "TXT", "A+AAAA", "GET", "wall", "note"], rows))  # fmt: skip
    return {"herd": {"tasks": tasks, "txt_queries": m["txt_queries"], "https_requests": m["https_requests"],
                     "address_queries": m["address_queries"], "peer_txt_queries": p["txt_queries"],
                     "peer_https_requests": p["https_requests"]}, "herd_errors": _errors(m, p)}  # fmt: skip


async def section_fleet(ctx: dict[str, Any], quick: bool, progress: Progress) -> dict[str, Any]:
    from mtasts.testing.redis import redis_server  # noqa: PLC0415

    from .fleet import PROCESSES, run_fleet  # noqa: PLC0415

    count = 500
    domains = [f"f{i}.fleet.example" for i in range(count)]

    async def body(world: Any, env: WorldEnv, proxy: Any) -> dict[str, Any]:
        for i, domain in enumerate(domains):
            world.publish(domain, f"version: STSv1\nmode: enforce\nmx: *.p{i % 100}.example\nmax_age: 604800\n")
            world.server_ssl_context(f"mta-sts.{domain}")
        results: dict[str, Any] = {}
        try:
            async with redis_server() as server:
                progress.show(f"fleet: {PROCESSES} processes sharing redis, {count} cold domains at once")
                results["redis"] = await run_fleet(world, env, domains, server.url, PROCESSES)
        except FileNotFoundError as exc:
            results["redis"] = {"error": str(exc)}
        progress.show(f"fleet: {PROCESSES} processes with memory stores (no sharing), {count} cold domains")
        results["memory"] = await run_fleet(world, env, domains, None, PROCESSES)
        return results

    results = await _with_world(body)
    rows = [
        [f"{PROCESSES} x RedisStore (fleet single-flight)" if kind == "redis" else f"{PROCESSES} x memory store",
         _fmt(r.get("fetches_per_domain"), "", 2), _fmt(r.get("txt_per_domain"), "", 2),
         _fmt(r.get("seconds"), " s", 2),
         "goal <= 1.1 each" if kind == "redis" else str(r.get("error", ""))]
        for kind, r in results.items()
    ]  # fmt: skip
    ctx["tables"].append(_table(f"Fleet: {PROCESSES} processes meet the same {count} cold domains at once",
                                ["fleet", "fetches/domain", "TXT/domain", "wall", "note"], rows))  # fmt: skip
    return {"fleet": {**results["redis"], "memory": results["memory"]}}


async def section_memory(ctx: dict[str, Any], quick: bool, progress: Progress) -> dict[str, Any]:
    scenarios = [(1_000_000, 10_000, True), (1_000_000, 10_000, False), (100_000, 100_000, False)]
    rows, mine_results, peer_results = [], [], []
    for domains, policies, shared in scenarios:
        progress.show(f"memory: mtasts, {domains:,} domains / {policies:,} policies")
        mine = await run_worker("mtasts", "memory", {"domains": domains, "policies": policies, "shared_ids": shared})
        mine_results.append(mine)
        peer: dict[str, Any] = {}
        if shared or domains == policies:  # the peer has no ids to share: one run per (domains, policies)
            progress.show(f"memory: peer, {domains:,} domains / {policies:,} policies")
            peer = await run_worker("peer", "memory", {"domains": domains, "policies": policies})
            peer_results.append({"domains": domains, "policies": policies, **peer})
        rows.append([
            f"{domains:,} domains / {policies:,} policies" + (", ids shared" if shared else ", own ids"),
            _fmt(mine.get("rss_mb"), " MB", 1), _fmt(mine.get("bytes_per_entry"), " B"),
            _fmt(mine.get("stored_policies")),
            _fmt(peer.get("rss_mb"), " MB", 1) if peer else "-",
            _fmt(peer.get("bytes_per_entry"), " B") if peer else "-",
        ])  # fmt: skip
    ctx["tables"].append(_table("Memory: process RSS after caching (goal: 1M domains / 10k policies <= 250 MB total)",
                                ["scenario", "mtasts RSS", "per entry", "policies stored", "peer RSS", "per entry"],
                                rows))  # fmt: skip
    headline = mine_results[0]
    return {
        "memory": {"domains": headline.get("domains"), "policies": headline.get("policies"),
                   "rss_mb": headline.get("rss_mb"), "bytes_per_entry": headline.get("bytes_per_entry"),
                   "scenarios": mine_results, "peer": peer_results},
    }  # fmt: skip


async def section_stores(ctx: dict[str, Any], quick: bool, progress: Progress) -> dict[str, Any]:
    import tempfile  # noqa: PLC0415

    from mtasts.testing.redis import redis_server  # noqa: PLC0415

    entries = 100_000
    results = []
    with tempfile.TemporaryDirectory(prefix="mtasts-bench-") as directory:
        for kind in ("memory", "sqlite", "redis"):
            progress.show(f"stores: {kind}, restoring {entries:,} entries")
            args: dict[str, Any] = {"kind": kind, "entries": entries, "path": f"{directory}/policies.sqlite3"}
            if kind == "redis":
                try:
                    async with redis_server() as server:
                        result = await run_worker("mtasts", "stores", {**args, "url": server.url})
                except FileNotFoundError as exc:
                    result = {"kind": kind, "error": str(exc)}
            else:
                result = await run_worker("mtasts", "stores", args)
            results.append({"kind": kind, **result})
    base = results[0].get("hit_ns")
    rows = [
        [r["kind"], _fmt(r.get("restore_seconds"), " s", 2), _fmt(r.get("restored")),
         _fmt(r.get("hit_ns"), " ns"), _ratio(r.get("hit_ns"), base), r.get("error", "")]
        for r in results
    ]  # fmt: skip
    ctx["tables"].append(_table(
        f"Stores: cold-start restore of {entries:,} entries, then the cached hit with the store behind memory",
        ["store", "restore", "restored", "get_policy + evaluate", "vs memory", "note"], rows))  # fmt: skip
    return {"stores": results}


def _free_port() -> int:
    import socket  # noqa: PLC0415

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _wait_for_port(port: int, process: asyncio.subprocess.Process, timeout: float = 30.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline and process.returncode is None:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.close()
        await writer.wait_closed()
        return True
    return False


async def _socketmap_server(impl: str, env: WorldEnv, port: int) -> asyncio.subprocess.Process:
    if impl == "mtasts":
        argv = ["-m", "mtasts", "serve-socketmap", "--listen", f"127.0.0.1:{port}", "--store", "memory",
                "--nameserver", f"{env.dns_host}:{env.dns_port}", "--cafile", env.ca_pem_path,
                "--policy-port", str(env.https_port), "--log-level", "warning"]  # fmt: skip
        process = await asyncio.create_subprocess_exec(
            sys.executable, *argv, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
    else:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "benchmarks.workers", "peer", "serve", "-", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, env={**os.environ, **_peer_env(env)},
        )  # fmt: skip
        assert process.stdin is not None
        process.stdin.write(json.dumps({"world": env.to_json(), "port": port}).encode())
        process.stdin.close()
    return process


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()


async def section_socketmap(ctx: dict[str, Any], quick: bool, progress: Progress) -> dict[str, Any]:
    count = 1_000
    requests = 20_000 if quick else 100_000
    scenarios = [(1, 1), (10, 1), (10, 16)]
    domains = [f"s{i}.socketmap.example" for i in range(count)]

    async def body(world: Any, env: WorldEnv, proxy: Any) -> dict[str, Any]:
        for i, domain in enumerate(domains):
            world.publish(domain, f"version: STSv1\nmode: enforce\nmx: *.p{i % 100}.example\nmax_age: 604800\n")
            world.server_ssl_context(f"mta-sts.{domain}")
        results: dict[str, Any] = {}
        for impl in ("mtasts", "peer"):
            port = _free_port()
            process = await _socketmap_server(impl, env, port)
            try:
                if not await _wait_for_port(port, process):
                    results[impl] = {"error": f"the {impl} socketmap server did not start"}
                    continue
                progress.show(f"socketmap: {impl}, filling its cache with {count} domains")
                warm = await run_worker("client", "warm", {"port": port, "domains": domains})
                levels = []
                for connections, depth in scenarios:
                    progress.show(f"socketmap: {impl}, {connections} connection(s), {depth} in flight each")
                    levels.append(await run_worker("client", "load", {
                        "port": port, "domains": domains, "connections": connections, "depth": depth,
                        "requests": requests}))  # fmt: skip
                results[impl] = {"warm": warm, "levels": levels}
            finally:
                await _stop(process)
        return results

    results = await _with_world(body)
    rows = []
    for index, (connections, depth) in enumerate(scenarios):
        m = results.get("mtasts", {}).get("levels", [{}] * len(scenarios))[index]
        p = results.get("peer", {}).get("levels", [{}] * len(scenarios))[index]
        rows.append([
            f"{connections} conn x {depth} in flight",
            _fmt(m.get("requests_per_s"), "/s"), _fmt(m.get("p99_us"), " us", 0),
            _fmt(p.get("requests_per_s"), "/s"), _fmt(p.get("p99_us"), " us", 0),
            _ratio(m.get("requests_per_s"), p.get("requests_per_s")),
            m.get("error", "") or p.get("error", ""),
        ])  # fmt: skip
    ctx["tables"].append(_table(
        f"Postfix socketmap, cache hits ({count:,} enforce domains; goal: >= 3x the peer at 10 connections)",
        ["load", "mtasts req/s", "p99", "peer req/s", "p99", "mtasts/peer", "note"], rows))  # fmt: skip
    return {"socketmap": results}


async def _http_server(env: WorldEnv, port: int) -> asyncio.subprocess.Process:
    argv = ["-m", "mtasts", "serve-http", "--listen", f"127.0.0.1:{port}", "--store", "memory",
            "--nameserver", f"{env.dns_host}:{env.dns_port}", "--cafile", env.ca_pem_path,
            "--policy-port", str(env.https_port), "--log-level", "warning"]  # fmt: skip
    return await asyncio.create_subprocess_exec(
        sys.executable, *argv, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


def _process_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) a process has used so far (Linux ``/proc``; None elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as file:
            fields = file.read().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def section_http(ctx: dict[str, Any], quick: bool, progress: Progress) -> dict[str, Any]:
    """``mtasts serve-http`` beside ``mtasts serve-socketmap`` on the same cached domains, one request at a time
    per keep-alive connection (each server its own process, the load from a third)."""
    count = 1_000
    requests = 20_000 if quick else 100_000
    levels = (1, 10)
    domains = [f"h{i}.http.example" for i in range(count)]

    async def body(world: Any, env: WorldEnv, proxy: Any) -> dict[str, Any]:
        for i, domain in enumerate(domains):
            world.publish(domain, f"version: STSv1\nmode: enforce\nmx: *.p{i % 100}.example\nmax_age: 604800\n")
            world.server_ssl_context(f"mta-sts.{domain}")
        results: dict[str, Any] = {"domains": count}
        for kind in ("http", "socketmap"):
            port = _free_port()
            process = await (_http_server(env, port) if kind == "http" else _socketmap_server("mtasts", env, port))
            client = "http-client" if kind == "http" else "client"
            try:
                if not await _wait_for_port(port, process):
                    results[kind] = {"error": f"mtasts serve-{kind} did not start"}
                    continue
                progress.show(f"http: serve-{kind}, filling its cache with {count} domains")
                warm = await run_worker(client, "warm", {"port": port, "domains": domains})
                fetched = _counts(world, domains)["https_requests"]
                rows = []
                for connections in levels:
                    progress.show(f"http: serve-{kind}, {connections} keep-alive connection(s)")
                    args = {"port": port, "domains": domains, "connections": connections, "requests": requests}
                    before = _process_cpu(process.pid)
                    row = await run_worker(client, "load", args if kind == "http" else {**args, "depth": 1})
                    after = _process_cpu(process.pid)
                    if before is not None and after is not None and row.get("requests"):
                        row["server_cpu_us"] = (after - before) / row["requests"] * 1e6  # per request
                    rows.append(row)
                fetches = _counts(world, domains)["https_requests"] - fetched
                results[kind] = {"warm": warm, "levels": rows, "fetches_during_load": fetches}
            finally:
                await _stop(process)
        return results

    results = await _with_world(body)
    rows = []
    for index, connections in enumerate(levels):
        h = results.get("http", {}).get("levels", [{}] * len(levels))[index]
        s = results.get("socketmap", {}).get("levels", [{}] * len(levels))[index]
        hits = h.get("cache_hits")
        rows.append([
            f"{connections} conn", _fmt(h.get("requests_per_s"), "/s"), _fmt(h.get("p50_us"), " us"),
            _fmt(h.get("p99_us"), " us"), f"{hits:,}/{h.get('requests', 0):,}" if hits is not None else "-",
            _fmt(h.get("server_cpu_us"), " us"), _fmt(s.get("requests_per_s"), "/s"), _fmt(s.get("p99_us"), " us"),
            _fmt(s.get("server_cpu_us"), " us"), _ratio(h.get("requests_per_s"), s.get("requests_per_s")),
            h.get("error", "") or s.get("error", ""),
        ])  # fmt: skip
    fetches = results.get("http", {}).get("fetches_during_load")
    ctx["tables"].append(_table(
        f"HTTP API, GET /v1/policy/{{domain}} over {count:,} cached enforce domains, beside the socketmap "
        f"(one request at a time per keep-alive connection; policy fetches during the load: {fetches})",
        ["load", "http req/s", "p50", "p99", "cache hits", "CPU/req", "socketmap req/s", "p99", "CPU/req",
         "http/socketmap", "note"],
        rows))  # fmt: skip
    return {"http": results}


async def section_recorder(ctx: dict[str, Any], quick: bool, progress: Progress) -> dict[str, Any]:
    progress.show("recorder: TLSReporter.record")
    result = await run_worker("mtasts", "recorder", {"iterations": 200_000 if quick else 1_000_000})
    ns = result.get("ns_per_record", {})
    rows = [[kind, _fmt(ns.get(kind), " ns"), "met" if (ns.get(kind) or 1e9) <= 2000 else "NOT met"]
            for kind in ("success", "failure")]  # fmt: skip
    ctx["tables"].append(_table("TLS-RPT recorder: cost of recording one session (goal <= 2 us)",
                                ["session", "per record", "goal"], rows))  # fmt: skip
    return {"recorder": result}


def _errors(*results: dict[str, Any]) -> list[str]:
    return [str(r["error"]) for r in results if isinstance(r, dict) and r.get("error")]


def plot(levels: dict[str, list[dict[str, Any]]], path: Path) -> bool:
    """Throughput and p99 vs concurrency for mtasts and the peer (needs matplotlib)."""
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return False
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name, rows in levels.items():
        if not rows:
            continue
        tasks = [r["tasks"] for r in rows]
        left.plot(tasks, [r["ops_per_s"] / 1000 for r in rows], marker="o", label=name)
        right.plot(tasks, [r["p99_us"] for r in rows], marker="o", label=name)
    for axis, label in [(left, "thousand decisions / s"), (right, "p99 latency (us)")]:
        axis.set_xscale("log")
        axis.set_xlabel("concurrent tasks")
        axis.set_ylabel(label)
        axis.grid(True, alpha=0.3)
        axis.legend()
    left.set_title("Throughput, 10,000 cached domains")
    right.set_title("p99 latency")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


async def run(args: argparse.Namespace) -> dict[str, Any]:
    progress = Progress()
    ctx: dict[str, Any] = {"tables": []}
    peer = await run_worker("peer", "version", {})
    report: dict[str, Any] = {
        "quick": args.quick,
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()},
        "peer": peer,
    }
    sections: dict[str, Callable[..., Awaitable[dict[str, Any]]]] = {
        "hit": section_hit, "load": section_load, "cold": section_cold, "herd": section_herd, "fleet": section_fleet,
        "memory": section_memory,
        "stores": section_stores, "socketmap": section_socketmap, "http": section_http, "recorder": section_recorder,
    }  # fmt: skip
    for name in args.only or SECTIONS:
        report.update(await sections[name](ctx, args.quick, progress))
    progress.done()
    report["seconds"] = time.perf_counter() - progress.started
    peer_name = f"{peer.get('name', '?')} {peer.get('version', peer.get('error', ''))}"
    mode = "quick" if args.quick else "full"
    print(
        f"mtasts benchmarks ({mode}) — Python {platform.python_version()}, {os.cpu_count()} CPUs; peer: {peer_name}\n"
    )
    print("\n\n".join(ctx["tables"]))
    if "load_levels" in ctx:
        where = plot_path(args.plot, args.json)
        where.parent.mkdir(parents=True, exist_ok=True)
        if plot(ctx["load_levels"], where):
            print(f"\nplot written to {where}")
        else:
            print("\n(matplotlib is not installed: no plot)")
    print(f"\ntotal {report['seconds']:.0f} s")
    return report


def plot_path(plot: str | None, json_path: str | None) -> Path:
    """Where the load plot goes: ``--plot``; else beside the ``--json`` file; else the untracked results folder.
    A run never rewrites a tracked file unless asked to."""
    if plot:
        return Path(plot)
    if json_path:
        path = Path(json_path)
        return path.with_name(f"{path.stem}-load.png")
    return ROOT / "benchmarks" / "results" / "load.png"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a run of under two minutes")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument(
        "--plot",
        metavar="PATH",
        help="PNG of throughput and p99 vs concurrency (default: next to --json, else benchmarks/results/load.png; "
        "the docs' picture is docs/benchmarks-load.png: pass it to update it)",
    )
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    args = parser.parse_args(argv)
    report = asyncio.run(run(args))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
        print(f"results written to {args.json}")
    return 0
