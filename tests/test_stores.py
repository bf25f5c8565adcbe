"""Persistent stores (issue 6): SQLite and memory stores, and the resolver over them on the loopback world.

Redis-specific behaviour is in test_store_redis.py; the resolver-level scenarios here run on every store kind,
Redis included (a real redis-server).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from mtasts import LookupStatus, MTASTSError, PolicyResolver, parse_policy
from mtasts.stores import MemoryStore, PolicyStore, SQLiteStore, StoredPolicy, open_store
from mtasts.stores.sqlite import SCHEMA_VERSION
from mtasts.testing import World

from ._redis import RedisServer, redis_server
from .conftest import FakeClock

ENFORCE = "version: STSv1\nmode: enforce\nmx: mx.example.com\nmax_age: 86400\n"
ROW = StoredPolicy("example.com", "1", ENFORCE, 100.0, 150.0, 86500.0, "2", "sts-policy-fetch-error", "HTTP 500", 400.0)


# -- the SQLite store on its own --------------------------------------------------------------------------------


async def test_sqlite_round_trip_and_schema(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "policies.sqlite3"
    store = SQLiteStore(path)
    await store.write([ROW, StoredPolicy("failure-only.example", failed_id="9", retry_after=5.0)], [])
    assert await store.get("example.com") == ROW
    assert (await store.get("failure-only.example")).failed_id == "9"  # type: ignore[union-attr]
    assert await store.get("missing.example") is None
    await store.write([], ["failure-only.example"])
    assert [row.domain async for row in store.scan()] == ["example.com"]
    await store.aclose()
    await store.aclose()  # idempotent
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_sqlite_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "p.sqlite3"
    with sqlite3.connect(path) as raw:
        raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    store = SQLiteStore(path)
    with pytest.raises(MTASTSError, match="newer"):
        await store.get("example.com")
    await store.aclose()


async def test_sqlite_skips_foreign_rows(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "p.sqlite3"
    store = SQLiteStore(path)
    await store.write([ROW], [])
    with sqlite3.connect(path) as raw:
        raw.execute("INSERT INTO policies (domain, policy_id, fetched_at) VALUES ('bad.example', 42, 'yesterday')")
        raw.execute("INSERT INTO policies (domain, policy_text) VALUES ('', 'x')")
    with caplog.at_level(logging.WARNING, logger="mtasts"):
        assert await store.get("bad.example") is None
        assert [row.domain async for row in store.scan()] == ["example.com"]
    assert sum("cannot be read" in r.getMessage() for r in caplog.records) == 1  # logged once
    await store.aclose()


async def test_sqlite_scan_is_batched_and_two_stores_share_a_file(tmp_path: Path) -> None:
    path = tmp_path / "p.sqlite3"
    one, two = SQLiteStore(path), SQLiteStore(path)
    await one.write([StoredPolicy(f"d{i}.example", "1", ENFORCE, 0.0, 0.0, 4e9) for i in range(12_001)], [])
    assert len([row async for row in two.scan()]) == 12_001
    await two.write([], ["d0.example"])
    assert await one.get("d0.example") is None
    await one.aclose()
    await two.aclose()


def test_open_store_specs(tmp_path: Path) -> None:
    assert isinstance(open_store("memory"), MemoryStore)
    assert isinstance(open_store(f"sqlite:{tmp_path / 'x.db'}"), SQLiteStore)
    assert type(open_store("redis://127.0.0.1:1/0")).__name__ == "RedisStore"
    with pytest.raises(MTASTSError):
        open_store("postgres://x")


def test_default_sqlite_path_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from mtasts.stores import default_path

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_path() == tmp_path / "mtasts" / "policies.sqlite3"


# -- the resolver over each store kind ---------------------------------------------------------------------------


@pytest.fixture
async def redis() -> AsyncIterator[RedisServer]:
    async with redis_server() as server:
        yield server


StoreFactory = Callable[[], PolicyStore]


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """A factory of store objects that all see the same data (as several processes would)."""
    if request.param == "memory":
        shared = MemoryStore()
        yield lambda: shared
    elif request.param == "sqlite":
        yield lambda: SQLiteStore(tmp_path / "policies.sqlite3")
    else:
        from mtasts.stores import RedisStore

        async with redis_server() as server:
            yield lambda: RedisStore(server.url)


def resolver(world: World, clock: FakeClock, store: PolicyStore, **kwargs: Any) -> PolicyResolver:
    return world.policy_resolver(clock=clock, store=store, fetch_timeout=5, **kwargs)


async def test_enforce_policy_survives_a_restart_and_an_attack_until_max_age(
    world: World, stores: StoreFactory
) -> None:
    clock = FakeClock()
    domain = world.publish("example.com", ENFORCE, id="1")
    async with resolver(world, clock, stores()) as first:
        assert await first.get_policy("example.com") == parse_policy(ENFORCE)
    # the process restarts; meanwhile an attacker blocks DNS and the policy host
    domain.txt_failure, domain.policy_host_failure = "nxdomain", "servfail"
    clock.advance(3600)
    async with resolver(world, clock, stores()) as second:
        lookup = await second.lookup("example.com")
        assert (lookup.status, lookup.policy) == (LookupStatus.CACHED, parse_policy(ENFORCE))
        clock.advance(86400 - 3600 - 1)
        assert await second.get_policy("example.com") == parse_policy(ENFORCE)  # still live: 1 s left
        clock.advance(2)
        assert await second.get_policy("example.com") is None  # expired: dropped, never used
    async with resolver(world, clock, stores()) as third:
        assert await third.get_policy("example.com") is None  # and gone from the store too
    assert world.requests("mta-sts.example.com") == 1


async def test_a_second_resolver_gets_the_policy_with_zero_fetches(world: World, stores: StoreFactory) -> None:
    clock = FakeClock()
    world.publish("example.com", ENFORCE, id="1")
    async with resolver(world, clock, stores()) as first, resolver(world, clock, stores()) as second:
        await first.get_policy("example.com")
        await first._store.flush()  # type: ignore[union-attr]  # (normally within milliseconds)
        world.reset_counters()
        lookup = await second.lookup("example.com")
        assert (lookup.status, lookup.policy) == (LookupStatus.CACHED, parse_policy(ENFORCE))
    assert world.requests("mta-sts.example.com") == 0
    assert world.queries("_mta-sts.example.com", "TXT") == 0  # checked by the first one moments ago


async def test_failure_backoff_is_shared(world: World, stores: StoreFactory) -> None:
    clock = FakeClock()
    world.publish("example.com", ENFORCE, id="1", status=500)
    async with resolver(world, clock, stores()) as first:
        assert (await first.lookup("example.com")).status is LookupStatus.FETCH_ERROR
    async with resolver(world, clock, stores()) as second:
        clock.advance(60)
        lookup = await second.lookup("example.com")
        assert (lookup.status, lookup.result_type) == (LookupStatus.FETCH_ERROR, "sts-policy-fetch-error")
    assert world.requests("mta-sts.example.com") == 1  # the back-off held across processes


async def test_refresh_done_by_one_resolver_is_adopted_by_another(world: World, stores: StoreFactory) -> None:
    clock = FakeClock()
    world.publish("example.com", ENFORCE, id="1")
    async with resolver(world, clock, stores()) as first, resolver(world, clock, stores()) as second:
        await first.get_policy("example.com")
        await first._store.flush()  # type: ignore[union-attr]
        await second.get_policy("example.com")
        clock.advance(70_000)
        [refreshed] = await first.refresh_due()
        assert refreshed.status is LookupStatus.FETCHED
        await first._store.flush()  # type: ignore[union-attr]
        [adopted] = await second.refresh_due()
        assert adopted.status is LookupStatus.CACHED and adopted.fetched_at == clock.now
    assert world.requests("mta-sts.example.com") == 2  # the first fetch and one refresh, not two


async def test_corrupt_rows_are_ignored_logged_and_refetched(
    world: World, stores: StoreFactory, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    world.publish("example.com", ENFORCE, id="1")
    store = stores()
    bad = [
        StoredPolicy("example.com", "1", "this is not a policy", clock.now, clock.now, clock.now + 1000),
        StoredPolicy("Not-Normal.EXAMPLE.", "1", ENFORCE, clock.now, clock.now, clock.now + 1000),
        StoredPolicy("badid.example", "bad-id!", ENFORCE, clock.now, clock.now, clock.now + 1000),
    ]
    await store.write(bad, [])
    with caplog.at_level(logging.WARNING, logger="mtasts"):
        async with resolver(world, clock, store) as r:
            lookup = await r.lookup("example.com")
    assert (lookup.status, lookup.policy) == (LookupStatus.FETCHED, parse_policy(ENFORCE))
    assert sum("unreadable stored policy" in rec.getMessage() for rec in caplog.records) >= 3
    check = stores()
    assert await check.get("badid.example") is None  # deleted
    assert (await check.get("example.com")).policy_text == parse_policy(ENFORCE).to_text()  # type: ignore[union-attr]
    await check.aclose()


async def test_unwritable_sqlite_store_never_reaches_the_caller(
    world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    world.publish("example.com", ENFORCE, id="1")
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("x")
    store = SQLiteStore(blocker / "policies.sqlite3")  # its parent is a file: every operation fails
    with caplog.at_level(logging.WARNING, logger="mtasts"):
        async with resolver(world, clock, store, store_retry=0.05) as r:
            assert await r.get_policy("example.com") == parse_policy(ENFORCE)
            for _ in range(3):
                assert await r.get_policy("example.com") == parse_policy(ENFORCE)
    outage_logs = [rec for rec in caplog.records if "policy store" in rec.getMessage() and "failed" in rec.getMessage()]
    assert 1 <= len(outage_logs) <= 3  # logged once per outage (and once more at close), not per call


async def test_redis_killed_mid_run_then_back(world: World, redis: RedisServer) -> None:
    from mtasts.stores import RedisStore

    clock = FakeClock()
    for name in ["a.example", "b.example"]:
        world.publish(name, ENFORCE, id="1")
    async with resolver(world, clock, RedisStore(redis.url), store_retry=0.1) as r:
        assert await r.get_policy("a.example") == parse_policy(ENFORCE)
        await r._store.flush()  # type: ignore[union-attr]
        await redis.stop()
        assert await r.get_policy("a.example") == parse_policy(ENFORCE)  # memory keeps answering
        assert await r.get_policy("b.example") == parse_policy(ENFORCE)  # and fetching; the write waits
        assert not await r._store.flush()  # type: ignore[union-attr]
        await redis.start()
        for _ in range(100):
            if await r._store.flush():  # type: ignore[union-attr]
                break
            import asyncio

            await asyncio.sleep(0.05)
    check = RedisStore(redis.url)
    assert (await check.get("b.example")) is not None  # written once Redis was back
    await check.aclose()
