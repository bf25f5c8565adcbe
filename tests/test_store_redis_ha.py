"""RedisStore as fleets run Redis: its own pool (a full pool is one failed lookup, never an outage), Sentinel
(a SIGKILLed primary, a failover, nothing lost, no call blocking) and Cluster (hash tags, every master scanned).

Real processes on loopback ports (tests/_redis.py); skipped only when redis-server is not installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import Counter
from collections.abc import AsyncIterator

import pytest
import redis.asyncio
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisError

from mtasts.errors import LocalError, UsageError
from mtasts.stores import DamagedRowError, check_store_spec, open_store
from mtasts.stores._base import StoredPolicy
from mtasts.stores._link import StoreLink, StoreUnavailable
from mtasts.stores.redis import PoolTimeoutError, RedisStore, _parse_ha_url

from ._redis import RedisServer, redis_binary, redis_cluster, redis_server, sentinel_group, wait_until
from .conftest import FakeClock

needs_redis = pytest.mark.skipif(redis_binary() is None, reason="redis-server is not installed")

NOW = FakeClock().now
TEXT = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmax_age: 86400\r\n"


def policy_row(domain: str, policy_id: str = "20240101T000000") -> StoredPolicy:
    return StoredPolicy(
        domain, policy_id=policy_id, policy_text=TEXT, fetched_at=NOW - 10, checked_at=NOW - 5,
        expires_at=NOW + 86400,
    )  # fmt: skip


def failure_row(domain: str) -> StoredPolicy:
    return StoredPolicy(
        domain, checked_at=NOW, failed_id="abc", failure="sts-webpki-invalid", failure_detail="expired",
        retry_after=NOW + 600,
    )  # fmt: skip


@pytest.fixture
async def server() -> AsyncIterator[RedisServer]:
    if redis_binary() is None:
        pytest.skip("redis-server is not installed")
    async with redis_server() as running:
        yield running


async def connected_clients(url: str) -> int:
    client = redis.asyncio.Redis.from_url(url)
    try:
        return int((await client.info("clients"))["connected_clients"]) - 1  # not this one
    finally:
        await client.aclose()


# -- URLs and arguments (no server) ----------------------------------------------------------------------------


def test_sentinel_and_cluster_urls() -> None:
    target = _parse_ha_url("redis+sentinel://s1:5000,s2,[::1]:5001/mymaster/2")
    assert target is not None
    assert (target.mode, target.hosts, target.service, target.db) == (
        "sentinel", (("s1", 5000), ("s2", 26379), ("::1", 5001)), "mymaster", 2,
    )  # fmt: skip
    target = _parse_ha_url("redis+sentinel://user:p%40ss@s1/svc/?sentinel_password=sp")
    assert target is not None
    assert (target.username, target.password, target.sentinel_password, target.db) == ("user", "p@ss", "sp", 0)
    target = _parse_ha_url("redis+cluster://:secret@n1:7000,n2/")
    assert target is not None
    assert (target.mode, target.hosts, target.password) == ("cluster", (("n1", 7000), ("n2", 6379)), "secret")
    assert _parse_ha_url("redis://127.0.0.1:6379/0") is None
    for bad in (
        "redis+sentinel://s1", "redis+sentinel://s1/", "redis+sentinel://s1/svc/x", "redis+sentinel://s1/svc/0/1",
        "redis+sentinel://s1:0/svc", "redis+sentinel://s1:99999/svc", "redis+sentinel://s1,/svc",
        "redis+sentinel://s1/svc?db=1", "redis+cluster://n1/1", "redis+cluster://n1?x=1", "redis+cluster://:1",
        "redis+cluster://[::1/", "redis+cluster://n1:port",
    ):  # fmt: skip
        with pytest.raises(ValueError):
            RedisStore(bad)


def test_arguments_and_key_layouts() -> None:
    for bad in ({"max_connections": 0}, {"max_connections": 2.5}, {"max_connections": True}, {"pool_timeout": 0}):
        with pytest.raises(ValueError):
            RedisStore(**bad)  # type: ignore[arg-type]
    store = RedisStore(socket_timeout=1.5)
    assert (store.max_connections, store.pool_timeout) == (64, 1.5)
    # the plain layout is what earlier versions wrote: stored policies stay readable after an upgrade
    assert not store.cluster
    assert store._key("example.com") == "mtasts:policy:example.com"
    assert store._counts_key(19000, "example.com") == "mtasts:tlsrpt:19000:example.com"
    assert store.domain_key("lease", "example.com") == "mtasts:lease:example.com"
    assert not RedisStore("redis+sentinel://127.0.0.1/svc").cluster  # one master: the plain layout
    cluster = RedisStore("redis+cluster://127.0.0.1:7000")
    assert cluster.cluster
    assert cluster._key("example.com") == "mtasts:policy:{example.com}"
    assert cluster._counts_key(19000, "example.com") == "mtasts:tlsrpt:19000:{example.com}"
    assert cluster._state_key(19000, "example.com") == "mtasts:tlsrpt-state:19000:{example.com}"
    assert cluster.domain_key("lease", "example.com") == "mtasts:lease:{example.com}"
    with pytest.raises(ValueError):
        RedisStore("redis+cluster://127.0.0.1:7000", namespace="fleet{1}")
    assert RedisStore(client=RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", 7000)])).cluster


def test_store_specs() -> None:
    for spec in ("redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/mtasts/0", "redis+cluster://10.0.0.1:7000/"):
        assert check_store_spec(spec) == spec
        store = open_store(spec)
        assert isinstance(store, RedisStore)
    assert isinstance(open_store("redis+cluster://10.0.0.1:7000"), RedisStore)
    with pytest.raises(UsageError, match="redis\\+sentinel"):
        check_store_spec("sentinel://10.0.0.1")
    with pytest.raises(ValueError):
        open_store("redis+sentinel://10.0.0.1")


# -- the store's own pool ---------------------------------------------------------------------------------------


async def test_500_concurrent_gets_share_8_connections(server: RedisServer) -> None:
    store = RedisStore(server.url, max_connections=8, clock=FakeClock())
    try:
        rows = [policy_row(f"d{i}.example") for i in range(50)]
        await store.write(rows, [])
        results = await asyncio.gather(*(store.get(f"d{i % 50}.example") for i in range(500)))
        assert results == [rows[i % 50] for i in range(500)]
        link = StoreLink(store)
        through_link = await asyncio.gather(*(link.get(f"d{i % 50}.example") for i in range(500)))
        assert through_link == results
        assert link.readable and link.outages == 0 and link.damaged == 0
        assert store.pool_timeouts == 0
        assert await connected_clients(server.url) <= 8
    finally:
        await store.aclose()


async def test_the_default_pool_absorbs_a_burst_of_misses(server: RedisServer) -> None:
    store = RedisStore(server.url)
    link = StoreLink(store)
    try:
        assert await asyncio.gather(*(link.get(f"miss{i}.example") for i in range(1000))) == [None] * 1000
        assert link.readable and link.outages == 0
        assert await connected_clients(server.url) <= 64
    finally:
        await store.aclose()


async def test_a_full_pool_fails_one_lookup_and_marks_nothing_down(server: RedisServer) -> None:
    store = RedisStore(server.url, max_connections=1, pool_timeout=0.2, socket_timeout=3.0, clock=FakeClock())
    link = StoreLink(store)
    loop = asyncio.get_running_loop()
    try:
        await store.write([policy_row("a.example")], [])
        server.pause()  # the one connection's call hangs
        holder = asyncio.create_task(link.get("a.example"))
        await asyncio.sleep(0.05)
        started = loop.time()
        with pytest.raises(StoreUnavailable):
            await link.get("b.example")
        assert 0.15 < loop.time() - started < 1.0
        assert link.readable and link.outages == 0 and link.busy == 1  # this lookup only: "try again later"
        with pytest.raises(PoolTimeoutError) as raised:
            await store.get("b.example")
        assert isinstance(raised.value, LocalError) and isinstance(raised.value, DamagedRowError)
        assert raised.value.result_type is None  # never the domain's failure (TLS-RPT)
        assert store.pool_timeouts == 2
        server.resume()
        assert await holder == policy_row("a.example")
        assert await link.get("b.example") is None
        assert link.readable and link.outages == 0
    finally:
        server.resume()
        await store.aclose()


# -- Sentinel ---------------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def silent_listener() -> AsyncIterator[int]:
    """A port that accepts connections and never answers (a hung sentinel)."""
    open_writers: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        open_writers.append(writer)
        with contextlib.suppress(OSError):
            await reader.read()

    listener = await asyncio.start_server(swallow, "127.0.0.1", 0)
    try:
        yield listener.sockets[0].getsockname()[1]
    finally:
        listener.close()
        for writer in open_writers:
            writer.close()
        await listener.wait_closed()


@needs_redis
async def test_sentinel_failover_loses_nothing_and_blocks_no_call() -> None:
    socket_timeout = 1.0
    async with sentinel_group(down_after_ms=500, failover_timeout_ms=3000) as group, silent_listener() as hung:
        # a hung sentinel first in the list: asking it costs a share of socket_timeout, not every call
        store = RedisStore(group.url(extra_sentinels=[f"127.0.0.1:{hung}"]), socket_timeout=socket_timeout)
        primary = redis.asyncio.Redis(host="127.0.0.1", port=group.primary.port)
        new_master = redis.asyncio.Redis(host="127.0.0.1", port=group.replica.port)
        try:
            rows = [policy_row(f"d{i}.example") if i % 3 else failure_row(f"d{i}.example") for i in range(300)]
            await store.write(rows, [])
            assert await primary.get("mtasts:policy:d1.example") is not None  # plain keys, on the primary
            assert await primary.execute_command("WAIT", 1, 5000) >= 1  # the replica has all of it

            loop = asyncio.get_running_loop()
            latencies: list[float] = []
            outcomes: Counter[str] = Counter()
            killed = asyncio.Event()
            recovered_after_kill = asyncio.Event()
            stop = asyncio.Event()

            async def reader(number: int) -> None:
                index = number
                while not stop.is_set():
                    row = rows[index % len(rows)]
                    started = loop.time()
                    try:
                        found = await store.get(row.domain)
                    except RedisError as error:  # an outage: StoreLink serves from memory and retries
                        outcomes[type(error).__name__] += 1
                    else:
                        outcomes["ok" if found == row else "WRONG"] += 1  # never None: that would be "no policy"
                        if killed.is_set():
                            recovered_after_kill.set()
                    latencies.append(loop.time() - started)
                    index += 7
                    await asyncio.sleep(0.005)

            readers = [asyncio.create_task(reader(number)) for number in range(16)]
            await asyncio.sleep(0.3)
            assert outcomes["ok"] > 0 and outcomes["WRONG"] == 0, outcomes
            group.primary.kill()  # SIGKILL mid-load
            killed.set()
            recovered_after_kill.clear()
            await group.wait_failover(timeout=15.0)

            async def reads_work() -> bool:
                return recovered_after_kill.is_set()

            await wait_until("reads through the new master", reads_work, 10.0)
            stop.set()
            await asyncio.gather(*readers)

            assert outcomes["WRONG"] == 0, outcomes
            assert sum(count for name, count in outcomes.items() if name != "ok") > 0, outcomes  # the failover showed
            assert max(latencies) < socket_timeout + 1.0, (max(latencies), outcomes)
            # concurrent master discoveries left every sentinel in the list exactly once (redis-py's own swap can
            # duplicate one and drop another)
            assert store._sentinel is not None
            assert len({id(client) for client in store._sentinel.sentinels}) == 4
            for row in rows:  # everything written (and replicated) before the kill
                assert await store.get(row.domain) == row
            assert sorted([row async for row in store.scan()], key=lambda row: row.domain) == sorted(
                rows, key=lambda row: row.domain
            )
            await store.write([policy_row("after.example")], ["d1.example"])
            assert await new_master.exists("mtasts:policy:after.example") == 1  # writes go to the new master
            assert await new_master.exists("mtasts:policy:d1.example") == 0
            assert await store.get("after.example") == policy_row("after.example")
        finally:
            await store.aclose()
            await primary.aclose()
            await new_master.aclose()


# -- Cluster ----------------------------------------------------------------------------------------------------


@needs_redis
async def test_cluster_round_trip_hash_tags_and_scan_of_every_master() -> None:
    async with redis_cluster(masters=3) as cluster:
        store = RedisStore(cluster.url, clock=FakeClock())
        given = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", cluster.nodes[1].port)])
        try:
            rows = [policy_row(f"d{i}.example") if i % 4 else failure_row(f"d{i}.example") for i in range(200)]
            await store.write(rows, [])
            for row in rows:
                assert await store.get(row.domain) == row
            assert await store.get("missing.example") is None
            assert sorted([row async for row in store.scan()], key=lambda row: row.domain) == sorted(
                rows, key=lambda row: row.domain
            )
            sizes = [await cluster.ask(node, "DBSIZE") for node in cluster.nodes]
            assert sum(sizes) == 200 and all(size > 0 for size in sizes), sizes  # spread over every master

            # one domain's keys on one slot: policy, TLS-RPT counters and state, the fleet's lease
            for domain in ("d1.example", "d2.example", "example.com"):
                keys = [
                    store._key(domain), store._counts_key(20000, domain), store._state_key(20000, domain),
                    store.domain_key("lease", domain), f"mtasts:lease:{{{domain}}}",
                ]  # fmt: skip
                slots = {await cluster.ask(cluster.nodes[0], "CLUSTER", "KEYSLOT", key) for key in keys}
                assert slots == {await cluster.ask(cluster.nodes[0], "CLUSTER", "KEYSLOT", domain)}, keys

            # a batch over many slots: deletes and puts
            newer = [dataclasses.replace(row, policy_id="2") for row in rows[:50] if row.has_policy]
            await store.write(newer, [row.domain for row in rows[150:]])
            assert await store.get(newer[0].domain) == newer[0]
            assert await store.get(rows[199].domain) is None
            assert len([row async for row in store.scan()]) == 150

            # TLS-RPT
            counts = [(20000, f"d{i}.example", '{"k":1}', i + 1) for i in range(30)]
            await store.add_session_counts(counts)
            await store.add_session_counts(counts[:1])
            got = sorted(await store.session_counts(20000))
            assert got == sorted([(20000, "d0.example", '{"k":1}', 2), *counts[1:]])
            await store.put_report_state(20000, "d3.example", '{"sent":true}')
            assert await store.get_report_state(20000, "d3.example") == '{"sent":true}'
            await store.delete_session_counts(20000, "d1.example")
            assert len(await store.session_counts()) == 29

            # a RedisCluster client passed in: the same layout
            passed = RedisStore(client=given)
            assert await passed.get(newer[0].domain) == newer[0]
            assert len([row async for row in passed.scan()]) == 150
            await passed.aclose()
            assert await given.get(store._key(newer[0].domain)) is not None  # still the caller's, still open
        finally:
            await store.aclose()
            await given.aclose()
