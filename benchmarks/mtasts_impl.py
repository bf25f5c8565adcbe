"""The mtasts side of the benchmarks (run in a worker process by :mod:`benchmarks.workers`).

Every figure is a *decision*: find the policy for a domain, then ``evaluate`` it for an MX host. The reference
rows (``dict``, ``ttlcache``) do the same evaluate after a bare lookup, so the ratios compare the lookups.
"""

from __future__ import annotations

import asyncio
import gc
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import cachetools
import dns.asyncresolver

from mtasts import Policy, PolicyResolver, evaluate, parse_policy
from mtasts.resolver import NOT_CACHED
from mtasts.tls import create_client_context

NOW = 1_800_000_000.0


def _clock() -> float:
    return NOW


def policy_for(index: int, policies: int) -> Policy:
    """One of ``policies`` distinct enforce policies (distinct by their mx pattern)."""
    return parse_policy(f"version: STSv1\nmode: enforce\nmx: *.provider{index % policies}.example\nmax_age: 604800\n")


def domain_names(count: int) -> list[str]:
    return [f"d{i}.bench.example" for i in range(count)]


def _populated_resolver(domains: list[str], policies: int, *, cache_size: int | None = None) -> PolicyResolver:
    resolver = PolicyResolver(clock=_clock, cache_size=cache_size or max(len(domains), 1))
    distinct = [policy_for(i, policies) for i in range(policies)]
    for i, domain in enumerate(domains):
        resolver.cache_policy(domain, distinct[i % policies], f"id{i % policies}", fetched_at=NOW)
    return resolver


def _median_ns(run: Callable[[], int], repeats: int = 5) -> float:
    """Median over ``repeats`` of ns per op, where ``run`` returns elapsed ns for its ops (divided by caller)."""
    return statistics.median(run() for _ in range(repeats))


async def hit(domains: int, iterations: int) -> dict[str, Any]:
    """ns per cached decision (lookup + evaluate), for a bare dict, a cachetools TTLCache, mtasts' fast path
    (``resolver.cached_policy``) and ``await resolver.get_policy``. Median of 5 runs of ``iterations`` ops."""
    names = domain_names(domains)
    mx_hosts = [f"mx.provider{i % 100}.example" for i in range(domains)]
    resolver = _populated_resolver(names, 100)
    plain = {name: resolver.cached_policy(name) for name in names}
    ttl: cachetools.TTLCache[str, Any] = cachetools.TTLCache(maxsize=domains, ttl=3600, timer=time.monotonic)
    ttl.update(plain)
    # A shuffled (seeded) order, the same for every row and for the peer: real traffic does not visit domains in
    # the order they were cached, and visiting them in that order flatters whatever stores them contiguously.
    order = random.Random(42).sample(range(domains), domains)
    pairs = [(names[order[i % domains]], mx_hosts[order[i % domains]]) for i in range(min(iterations, 100_000))]
    rounds = max(1, iterations // len(pairs))
    ops = rounds * len(pairs)

    def run_dict() -> int:
        get = plain.get
        start = time.perf_counter_ns()
        for _ in range(rounds):
            for domain, mx in pairs:
                evaluate(get(domain), mx)  # type: ignore[arg-type]
        return time.perf_counter_ns() - start

    def run_ttl() -> int:
        get = ttl.get
        start = time.perf_counter_ns()
        for _ in range(rounds):
            for domain, mx in pairs:
                evaluate(get(domain), mx)
        return time.perf_counter_ns() - start

    def run_fast() -> int:
        cached = resolver.cached_policy
        start = time.perf_counter_ns()
        for _ in range(rounds):
            for domain, mx in pairs:
                policy = cached(domain)
                assert policy is not NOT_CACHED
                evaluate(policy, mx)
        return time.perf_counter_ns() - start

    async def run_get_policy() -> int:
        get_policy = resolver.get_policy
        start = time.perf_counter_ns()
        for _ in range(rounds):
            for domain, mx in pairs:
                evaluate(await get_policy(domain), mx)
        return time.perf_counter_ns() - start

    results = {
        "dict": _median_ns(run_dict) / ops,
        "ttlcache": _median_ns(run_ttl) / ops,
        "fast_path": _median_ns(run_fast) / ops,
    }
    samples = [await run_get_policy() for _ in range(5)]
    results["get_policy"] = statistics.median(samples) / ops
    await resolver.aclose()
    return {"ns_per_op": results, "ops": ops}


async def load(domains: int, tasks: list[int], ops: int, refresher: bool = True) -> dict[str, Any]:
    """N concurrent tasks doing ``await get_policy`` + ``evaluate`` over ``domains`` cached domains, with the
    proactive refresher running (nothing is due: it scans and finds nothing, as in steady state)."""
    names = domain_names(domains)
    resolver = _populated_resolver(names, 100)
    if refresher:
        resolver.start_background_refresh(period=0.05)
    levels = []
    for n in tasks:
        per_task = max(1, ops // n)
        latencies: list[int] = []

        async def worker(offset: int, per_task: int = per_task, latencies: list[int] = latencies) -> None:
            get_policy = resolver.get_policy
            for i in range(per_task):
                domain = names[(offset + i * 7919) % domains]
                start = time.perf_counter_ns()
                policy = await get_policy(domain)
                evaluate(policy, "mx.provider1.example")
                latencies.append(time.perf_counter_ns() - start)
                if i % 64 == 63:
                    await asyncio.sleep(0)  # let the other tasks (and the refresher) run, as real callers would

        start = time.perf_counter()
        await asyncio.gather(*(worker(k * 104729) for k in range(n)))
        elapsed = time.perf_counter() - start
        latencies.sort()
        levels.append(
            {
                "tasks": n,
                "ops_per_s": len(latencies) / elapsed,
                "p50_us": latencies[len(latencies) // 2] / 1000,
                "p99_us": latencies[int(len(latencies) * 0.99)] / 1000,
            }
        )
    await resolver.aclose()
    return {"levels": levels}


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 1e6


async def memory(domains: int, policies: int, shared_ids: bool = True) -> dict[str, Any]:
    """RSS with ``domains`` cached domains sharing ``policies`` distinct policies, each fetched at its own time.

    ``shared_ids``: domains with the same policy share its TXT id (hosted domains that CNAME their ``_mta-sts``
    record to their provider's, the usual reason for sharing); otherwise every domain has an id of its own.
    """
    gc.collect()
    before = _rss_mb()
    resolver = PolicyResolver(clock=_clock, cache_size=domains)
    distinct = [policy_for(i, policies) for i in range(policies)]
    for i in range(domains):
        policy_id = f"20261126id{i % policies}" if shared_ids else f"20261126id{i}"
        resolver.cache_policy(f"d{i}.bench.example", distinct[i % policies], policy_id, fetched_at=NOW - i % 86400)
    del distinct
    gc.collect()
    after = _rss_mb()
    stored = resolver._cache.distinct_policies
    await resolver.aclose()
    return {
        "domains": domains,
        "policies": policies,
        "shared_ids": shared_ids,
        "stored_policies": stored,
        "rss_mb": after,
        "baseline_mb": before,
        "bytes_per_entry": (after - before) * 1e6 / domains,
    }


def _world_resolver(world: dict[str, Any], **kwargs: Any) -> PolicyResolver:
    """A PolicyResolver pointed at the runner's world (DNS server, CA, HTTPS port)."""
    dns_resolver = dns.asyncresolver.Resolver(configure=False)
    dns_resolver.nameservers = [world["dns_host"]]
    dns_resolver.port = world["dns_port"]
    dns_resolver.lifetime = 10.0
    dns_resolver.timeout = 5.0  # one try per query, even when the world is busy
    return PolicyResolver(
        dns_resolver=dns_resolver,
        ssl_context=create_client_context(cafile=world["ca_pem_path"]),
        policy_port=world["https_port"],
        fetch_timeout=30.0,
        **kwargs,
    )


async def cold(world: dict[str, Any], domains: list[str], concurrency: int) -> dict[str, Any]:
    """Wall time to resolve every domain cold (TXT + A + HTTPS GET + parse), ``concurrency`` lookups in flight."""
    async with _world_resolver(world, cache_size=len(domains) + 1) as resolver:
        gate = asyncio.Semaphore(concurrency)
        statuses: dict[str, int] = {}

        async def one(domain: str) -> None:
            async with gate:
                lookup = await resolver.lookup(domain)
            statuses[lookup.status.value] = statuses.get(lookup.status.value, 0) + 1

        start = time.perf_counter()
        await asyncio.gather(*(one(domain) for domain in domains))
        seconds = time.perf_counter() - start
    ok = statuses.get("fetched", 0)
    return {"seconds": seconds, "ok": ok, "failed": len(domains) - ok, "statuses": statuses}


async def herd(world: dict[str, Any], domain: str, tasks: int) -> dict[str, Any]:
    """``tasks`` concurrent ``get_policy`` calls for one cold domain (single-flight: one TXT query, one GET)."""
    async with _world_resolver(world) as resolver:
        start = time.perf_counter()
        policies = await asyncio.gather(*(resolver.get_policy(domain) for _ in range(tasks)))
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "ok": sum(policy is not None for policy in policies)}


async def stores(kind: str, entries: int, url: str | None = None, path: str | None = None) -> dict[str, Any]:
    """Cold-start restore time of ``entries`` stored policies (sharing 1,000 policy texts), then the cached hit
    (``await get_policy`` + ``evaluate``) with that store behind the memory cache."""
    from mtasts.stores import MemoryStore, PolicyStore, RedisStore, SQLiteStore, StoredPolicy  # noqa: PLC0415

    store: PolicyStore
    if kind == "memory":
        store = MemoryStore()
    elif kind == "sqlite":
        store = SQLiteStore(path)
    else:
        store = RedisStore(url or "redis://127.0.0.1:6379/0", clock=_clock)
    texts = [policy_for(i, 1000).to_text() for i in range(1000)]
    names = domain_names(entries)
    for start in range(0, entries, 10_000):
        rows = [
            StoredPolicy(name, f"id{i % 1000}", texts[i % 1000], NOW, NOW, NOW + 604_800)
            for i, name in enumerate(names[start : start + 10_000], start)
        ]
        await store.write(rows, [])
    resolver = PolicyResolver(clock=_clock, cache_size=entries, store=store)
    begin = time.perf_counter()
    await resolver.start()
    restore_seconds = time.perf_counter() - begin
    restored = resolver.cache_size
    get_policy = resolver.get_policy
    order = random.Random(42).sample(range(entries), entries)  # shuffled, as in hit()
    pairs = [(names[order[i % entries]], f"mx.provider{order[i % entries] % 1000}.example") for i in range(200_000)]
    samples = []
    for _ in range(5):
        begin_ns = time.perf_counter_ns()
        for domain, mx in pairs:
            evaluate(await get_policy(domain), mx)
        samples.append((time.perf_counter_ns() - begin_ns) / len(pairs))
    await resolver.aclose()
    return {"kind": kind, "entries": entries, "restored": restored, "restore_seconds": restore_seconds,
            "hit_ns": statistics.median(samples)}  # fmt: skip


async def recorder(iterations: int) -> dict[str, Any]:
    """ns per ``TLSReporter.record`` call: a successful session, and a failed one (with IPs and a reason)."""
    from mtasts.tlsrpt.recorder import TLSReporter  # noqa: PLC0415

    reporter = TLSReporter(organization_name="bench", contact_info="tlsrpt@bench.example", clock=_clock)
    policies = [policy_for(i, 100) for i in range(100)]
    names = domain_names(1000)
    results = {}
    for label, failure in [("success", None), ("failure", "certificate-expired")]:
        samples = []
        for _ in range(5):
            record = reporter.record
            begin = time.perf_counter_ns()
            for i in range(iterations):
                record(names[i % 1000], policy=policies[i % 100], mx_host="mx.provider1.example",
                       result_type=failure, sending_ip="192.0.2.1", receiving_ip="198.51.100.7")  # fmt: skip
            samples.append((time.perf_counter_ns() - begin) / iterations)
        results[label] = statistics.median(samples)
    return {"ns_per_record": results}
