"""The peer's side of the benchmarks: postfix-mta-sts-resolver's own code paths, timed like ours.

Run by ``python -m benchmarks.workers peer COMMAND ARGS_JSON`` in a fresh process whose environment already
holds ``SSL_CERT_FILE`` (the world's CA) and ``https_proxy`` (a :class:`benchmarks.proxy.ConnectProxy` to the
world's HTTPS server): the peer always fetches ``https://mta-sts.<domain>/`` on port 443 and its aiohttp reads
both variables at import. Nothing of the peer is changed except where its DNS resolver points: its aiodns
resolver is replaced by an identical one asking the world's DNS server on the world's port.

The peer's objects carry no type information; they are handled as ``Any`` here.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import os
import random
import statistics
import time
from importlib import metadata
from typing import Any

import aiodns
from postfix_mta_sts_resolver import defaults  # type: ignore[import-untyped]
from postfix_mta_sts_resolver.base_cache import CacheEntry  # type: ignore[import-untyped]
from postfix_mta_sts_resolver.internal_cache import InternalLRUCache  # type: ignore[import-untyped]
from postfix_mta_sts_resolver.resolver import STSFetchResult, STSResolver  # type: ignore[import-untyped]
from postfix_mta_sts_resolver.responder import STSSocketmapResponder  # type: ignore[import-untyped]
from postfix_mta_sts_resolver.utils import parse_mta_sts_policy, populate_cfg_defaults  # type: ignore[import-untyped]

RUNS = 5  # timed runs per figure; the median is reported
SOCKETMAP_NAME = b"postfix"  # the socketmap name Postfix sends; not a configured zone, so the default zone answers

Result = dict[str, Any]


# -- helpers -------------------------------------------------------------------------------------------------


def _names(count: int) -> list[str]:
    return [f"d{i}.bench.example" for i in range(count)]


def _policy(domain: str) -> dict[str, Any]:
    """A parsed enforce policy, shaped as the peer's resolver returns it (``max_age`` an int)."""
    return {"version": "STSv1", "mode": "enforce", "mx": [f"mx.{domain}"], "max_age": 86400}


async def _populated_cache(names: list[str]) -> Any:
    """An InternalLRUCache holding a fresh (ts=now) enforce policy for every name, as the responder stores it."""
    cache = InternalLRUCache(cache_size=max(len(names), defaults.INTERNAL_CACHE_SIZE))
    await _refresh(cache, names)
    return cache


async def _refresh(cache: Any, names: list[str]) -> None:
    now = time.time()
    for name in names:
        await cache.set(name, CacheEntry(now, "1", _policy(name)))


def _responder(cache: Any, timeout: float = defaults.TIMEOUT) -> Any:
    """The peer's socketmap responder with its default configuration (never started: no socket)."""
    cfg = populate_cfg_defaults({"default_zone": {"timeout": timeout}})
    return STSSocketmapResponder(cfg, asyncio.get_running_loop(), cache)


async def _close_responder(responder: Any) -> None:
    await responder._default_zone.resolver._resolver.close()


async def _point_at_world(resolver: Any, world: dict[str, Any]) -> None:
    """Replace an STSResolver's aiodns resolver by one built as the peer builds it, asking only the world.

    ``udp_port``/``tcp_port`` are pycares.Channel options (aiodns passes extra keywords on).
    """
    old = resolver._resolver
    resolver._resolver = aiodns.DNSResolver(
        nameservers=[world["dns_host"]],
        loop=asyncio.get_running_loop(),
        timeout=resolver._timeout,
        udp_port=int(world["dns_port"]),
        tcp_port=int(world["dns_port"]),
    )
    await old.close()


def _hit_answer(pol_body: dict[str, Any], zone: Any) -> str:
    """The responder's answer for a fresh cached policy (``process_request``, ``have_policy`` branch).

    Same decisions as the peer: ``none`` (or ``testing`` unless strict) → NOTFOUND; otherwise the ``match=``
    list built from the set of MX patterns with the leading ``*`` stripped, plus ``servername=hostname`` when
    SNI is required. Without the netstring framing; the TLSRPT extras (off by default) are not built.
    """
    mode = pol_body["mode"]
    if mode == "none" or (mode == "testing" and not zone.strict):
        return "NOTFOUND "
    mxlist = [mx.lstrip("*") for mx in set(pol_body["mx"])]
    answer = "OK secure match=" + ":".join(mxlist)
    if zone.require_sni:
        answer += " servername=hostname"
    return answer


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        resident_pages = int(statm.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def _proxy_missing(resolver: Any) -> Result | None:
    if resolver._proxy is None:
        return {"error": "https_proxy is not set: the peer only fetches from port 443 and needs the CONNECT proxy"}
    return None


# -- benchmark steps -----------------------------------------------------------------------------------------


async def version() -> Result:
    """The peer's distribution name and version."""
    return {"name": "postfix-mta-sts-resolver", "version": metadata.version("postfix-mta-sts-resolver")}


async def hit(domains: int, iterations: int) -> Result:
    """The peer's in-process cached decision, in ns per lookup (median of 5 runs, after a warm-up run).

    Setup (untimed): an ``InternalLRUCache`` holding ``CacheEntry(ts=now, "1", policy)`` for ``domains``
    names (enforce, one MX each), and a default-configured ``STSSocketmapResponder`` (never started).
    Timed, with ``perf_counter_ns`` around the whole loop: ``iterations`` lookups cycling over the names, each
    ``cached = await cache.get(domain)``, ``responder.is_stale(cached)`` (the peer's own method) and the
    responder's hit answer (:func:`_hit_answer`: mode check, ``match=`` list).

    Also reported, as ``responder_ns_per_op``: the peer's whole ``process_request`` for the same hits (request
    parsing, ``filter_domain``, ``is_ipaddr``, the above, netstring framing), still without any socket.
    """
    if domains < 1 or iterations < 1:
        return {"error": "domains and iterations must be positive"}
    names = _names(domains)
    cache = await _populated_cache(names)
    responder = _responder(cache)
    try:
        zone = responder._default_zone
        is_stale = responder.is_stale
        get = cache.get
        order = random.Random(42).sample(range(domains), domains)  # the same shuffled order as mtasts' hit
        sequence = [names[order[i % domains]] for i in range(iterations)]
        requests = [SOCKETMAP_NAME + b" " + name.encode() for name in sequence]

        async def decisions() -> tuple[int, int]:
            stale = 0
            start = time.perf_counter_ns()
            for domain in sequence:
                cached = await get(domain)
                if is_stale(cached):
                    stale += 1
                    continue
                _hit_answer(cached.pol_body, zone)
            return time.perf_counter_ns() - start, stale

        async def full_requests() -> tuple[int, int]:
            misses = 0
            start = time.perf_counter_ns()
            for request in requests:
                answer = await responder.process_request(request)
                if b":OK secure" not in answer:
                    misses += 1
            return time.perf_counter_ns() - start, misses

        results: dict[str, list[float]] = {}
        for label, run in (("decision", decisions), ("responder", full_requests)):
            await _refresh(cache, names)
            await run()  # warm-up
            runs = []
            for _ in range(RUNS):
                await _refresh(cache, names)  # fresh for each run (untimed): the peer's cache_grace is 60 s
                elapsed, misses = await run()
                if misses:
                    return {"error": f"{misses} cached entries went stale during the run (cache_grace 60 s)"}
                runs.append(elapsed / iterations)
            results[label] = runs
    finally:
        await _close_responder(responder)
    return {
        "ns_per_op": statistics.median(results["decision"]),
        "what": "InternalLRUCache.get + STSSocketmapResponder.is_stale + hit answer (mode, match= list)",
        "responder_ns_per_op": statistics.median(results["responder"]),
        "responder_what": "STSSocketmapResponder.process_request on a fresh cached entry (no socket)",
        "runs_ns_per_op": results["decision"],
    }


async def load(domains: int, tasks: list[int], ops: int) -> Result:
    """Cached decisions under N concurrent asyncio tasks, for each N in ``tasks``.

    Same cache and per-hit work as :func:`hit` (``cache.get`` + ``is_stale`` + hit answer). For each N the
    entries are refreshed (untimed), then N tasks each do ``ops // N`` hits; task k walks the names from
    ``k * 104729`` in steps of 7919 (modulo ``domains``) and yields (``asyncio.sleep(0)``) every 64 hits so the
    tasks interleave — the same walk and yields as ``benchmarks.mtasts_impl.load``. ``perf_counter_ns`` around
    each awaited hit gives the latency (the yields are outside it); the wall clock from starting the tasks to
    the last one finishing gives ``ops_per_s``. The peer's ``InternalLRUCache.get`` never suspends, so
    latencies hold no queueing. The peer's proactive fetcher (a background refresher of the whole cache) is
    not needed in-process and is not run.
    """
    if domains < 1:
        return {"error": "domains must be positive"}
    names = _names(domains)
    cache = await _populated_cache(names)
    responder = _responder(cache)
    zone = responder._default_zone
    is_stale = responder.is_stale
    get = cache.get

    async def one_hit(domain: str) -> bool:
        cached = await get(domain)
        if is_stale(cached):
            return False
        _hit_answer(cached.pol_body, zone)
        return True

    async def worker(offset: int, count: int) -> tuple[list[int], int]:
        latencies: list[int] = []
        stale = 0
        for i in range(count):
            domain = names[(offset + i * 7919) % domains]
            start = time.perf_counter_ns()
            fresh = await one_hit(domain)
            latencies.append(time.perf_counter_ns() - start)
            stale += not fresh
            if i % 64 == 63:
                await asyncio.sleep(0)
        return latencies, stale

    levels: list[Result] = []
    try:
        await worker(0, min(ops, 10 * domains))  # warm-up
        for n in tasks:
            per_task = ops // n if n > 0 else 0
            if per_task < 1:
                levels.append({"tasks": n, "error": f"ops={ops} gives no work to {n} tasks"})
                continue
            await _refresh(cache, names)
            start = time.perf_counter_ns()
            results = await asyncio.gather(*(worker(k * 104729, per_task) for k in range(n)))
            wall = time.perf_counter_ns() - start
            stale = sum(s for _, s in results)
            if stale:
                levels.append({"tasks": n, "error": f"{stale} entries went stale during the run (cache_grace 60 s)"})
                continue
            latencies = sorted(lat for lats, _ in results for lat in lats)
            levels.append(
                {
                    "tasks": n,
                    "ops_per_s": len(latencies) / (wall / 1e9),
                    "p50_us": latencies[len(latencies) // 2] / 1000,
                    "p99_us": latencies[int(len(latencies) * 0.99)] / 1000,
                }
            )
    finally:
        await _close_responder(responder)
    return {"levels": levels}


async def cold(
    world: dict[str, Any], domains: list[str], concurrency: int, timeout: float = defaults.TIMEOUT
) -> Result:
    """Discover and fetch every domain's policy from scratch with the peer's ``STSResolver``.

    Setup (untimed): ``STSResolver(loop=..., timeout=timeout)`` (the daemon's default timeout is 4 s), its
    aiodns resolver pointed at the world's DNS server and port; HTTPS goes through ``https_proxy``. Timed
    (wall clock): all ``resolver.resolve(domain)`` calls, at most ``concurrency`` in flight, each VALID result
    stored in an ``InternalLRUCache`` as ``CacheEntry(time.time(), pol_id, pol_body)`` like the responder.
    The peer opens a new aiohttp session (and TLS connection) per fetch; that is its own behaviour.
    """
    if concurrency < 1:
        return {"error": "concurrency must be positive"}
    resolver = STSResolver(loop=asyncio.get_running_loop(), timeout=timeout)
    try:
        await _point_at_world(resolver, world)
        if (missing := _proxy_missing(resolver)) is not None:
            return missing
        cache = InternalLRUCache(cache_size=max(len(domains), defaults.INTERNAL_CACHE_SIZE))
        gate = asyncio.Semaphore(concurrency)
        statuses: collections.Counter[str] = collections.Counter()

        async def one(domain: str) -> None:
            async with gate:
                status, policy = await resolver.resolve(domain, None)
                if status is STSFetchResult.VALID:
                    pol_id, pol_body = policy
                    await cache.set(domain, CacheEntry(time.time(), pol_id, pol_body))
                statuses[status.name] += 1

        start = time.perf_counter()
        await asyncio.gather(*(one(domain) for domain in domains))
        seconds = time.perf_counter() - start
    finally:
        await resolver._resolver.close()
    ok = statuses[STSFetchResult.VALID.name]
    return {"seconds": seconds, "ok": ok, "failed": len(domains) - ok, "statuses": dict(statuses)}


async def herd(world: dict[str, Any], domain: str, tasks: int, timeout: float = defaults.TIMEOUT) -> Result:
    """``tasks`` concurrent requests for one cold domain, answered by the peer's responder.

    Setup (untimed): an empty ``InternalLRUCache`` and a default-configured ``STSSocketmapResponder`` (never
    started) whose resolver asks the world. Timed (wall clock): ``tasks`` concurrent
    ``responder.process_request(b"postfix <domain>")`` calls — each ``cache.get``, ``is_stale`` → resolve →
    cache set, exactly the daemon's per-request path. ``ok`` counts ``OK secure`` answers; the world counts
    the DNS queries and HTTPS requests this caused.
    """
    cache = InternalLRUCache(cache_size=defaults.INTERNAL_CACHE_SIZE)
    responder = _responder(cache, timeout)
    try:
        resolver = responder._default_zone.resolver
        await _point_at_world(resolver, world)
        if (missing := _proxy_missing(resolver)) is not None:
            return missing
        request = SOCKETMAP_NAME + b" " + domain.encode()
        start = time.perf_counter()
        answers = await asyncio.gather(*(responder.process_request(request) for _ in range(tasks)))
        seconds = time.perf_counter() - start
    finally:
        await _close_responder(responder)
    ok = sum(1 for answer in answers if b":OK secure" in answer)
    return {"seconds": seconds, "ok": ok}


async def memory(domains: int, policies: int, shared_bodies: bool = False) -> Result:
    """RSS growth of the peer's ``InternalLRUCache`` holding ``domains`` entries with ``policies`` distinct policies.

    ``gc.collect()``, RSS (``/proc/self/statm``), then ``domains`` ``cache.set(name, CacheEntry(time.time(),
    pol_id, pol_body))`` with names and ids of their own, ``gc.collect()``, RSS again. The daemon stores what
    each fetch parsed, so by default every entry gets its own ``pol_body`` from the peer's
    ``parse_mta_sts_policy`` (``max_age`` made an int, as its resolver does) of one of ``policies`` texts;
    ``shared_bodies=True`` shares ``policies`` parsed dicts between entries instead (an interning the peer
    does not do).
    """
    if domains < 1 or policies < 1:
        return {"error": "domains and policies must be positive"}
    texts = [
        f"version: STSv1\nmode: enforce\nmx: mx1.provider{p}.example\nmx: *.mx.provider{p}.example\nmax_age: 86400\n"
        for p in range(policies)
    ]

    def parse(text: str) -> dict[str, Any]:
        body: dict[str, Any] = parse_mta_sts_policy(text)
        body["max_age"] = int(body["max_age"])
        return body

    shared = [parse(text) for text in texts] if shared_bodies else []
    gc.collect()
    before = _rss_bytes()
    cache = InternalLRUCache(cache_size=domains)
    for i in range(domains):
        body = shared[i % policies] if shared_bodies else parse(texts[i % policies])
        await cache.set(f"d{i}.bench.example", CacheEntry(time.time(), f"2024{i:010d}", body))
    gc.collect()
    after = _rss_bytes()
    return {
        "rss_mb": after / 2**20,
        "delta_mb": (after - before) / 2**20,
        "bytes_per_entry": (after - before) / domains,
        "shared_bodies": shared_bodies,
    }


async def serve(world: dict[str, Any], port: int, cache_size: int = 100_000) -> Result:
    """Run the peer's socketmap daemon (its responder and internal cache, as ``mta-sts-daemon`` builds them) on
    127.0.0.1:``port``, resolving through the world's DNS, until SIGTERM. For the socketmap benchmark."""
    import signal  # noqa: PLC0415

    cfg = populate_cfg_defaults({"host": "127.0.0.1", "port": port,
                                 "cache": {"type": "internal", "options": {"cache_size": cache_size}}})  # fmt: skip
    loop = asyncio.get_running_loop()
    cache = InternalLRUCache(cache_size)
    await cache.setup()
    responder = STSSocketmapResponder(cfg, loop, cache)
    await _point_at_world(responder._default_zone.resolver, world)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await responder.start()
    await stop.wait()
    await responder.stop()
    return {"stopped": True}
