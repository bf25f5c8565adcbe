"""RedisStore against a real redis-server on loopback (tests/_redis.py): format, TTLs, atomicity, outages."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import time
import warnings
from collections.abc import AsyncIterator

import pytest
import redis.asyncio
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from mtasts.stores import redis as redis_store
from mtasts.stores._base import PolicyStore, StoredPolicy
from mtasts.stores.redis import RedisStore

from ._redis import RedisServer, redis_server
from .conftest import FakeClock

NOW = FakeClock().now
TEXT = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmax_age: 86400\r\n"


def policy_row(domain: str, *, expires_in: float = 86400.0) -> StoredPolicy:
    return StoredPolicy(
        domain, policy_id="20240101T000000", policy_text=TEXT, fetched_at=NOW - 10, checked_at=NOW - 5,
        expires_at=NOW + expires_in,
    )  # fmt: skip


def failure_row(domain: str, *, retry_in: float = 600.0) -> StoredPolicy:
    return StoredPolicy(
        domain, checked_at=NOW, failed_id="abc", failure="sts-webpki-invalid",
        failure_detail="certificate expired — «ünïcode» ok", retry_after=NOW + retry_in,
    )  # fmt: skip


@pytest.fixture
async def server() -> AsyncIterator[RedisServer]:
    async with redis_server() as running:
        yield running


@pytest.fixture
async def raw(server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(server.url)
    yield client
    await client.aclose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def store(server: RedisServer, clock: FakeClock) -> AsyncIterator[RedisStore]:
    opened = RedisStore(server.url, clock=clock, ttl_margin=100.0)
    yield opened
    await opened.aclose()


def test_fields_and_protocol() -> None:
    names = {field.name for field in dataclasses.fields(StoredPolicy)}
    assert names == {"domain", *redis_store._TEXT_FIELDS, *redis_store._TIME_FIELDS}
    assert isinstance(RedisStore(), PolicyStore)


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError):
        RedisStore("http://127.0.0.1:6379/0")
    with pytest.raises(ValueError):
        RedisStore(namespace="")
    with pytest.raises(ValueError):
        RedisStore(ttl_margin=-1.0)


async def test_round_trip(store: RedisStore, raw: redis.asyncio.Redis) -> None:
    full = dataclasses.replace(policy_row("example.com"), failed_id="x", failure="validation-failure", retry_after=NOW)
    only_failure = failure_row("fails.example")
    await store.write([full, only_failure], [])
    assert await store.get("example.com") == full
    assert await store.get("fails.example") == only_failure
    assert await store.get("missing.example") is None
    value = await raw.get("mtasts:policy:example.com")
    assert value is not None
    assert redis_store._decode(value) == full
    assert b'"v":1' in value
    # a put replaces; a delete removes; a domain both deleted and put in one batch ends up put
    newer = dataclasses.replace(full, policy_id="2")
    await store.write([newer], ["fails.example", "example.com", "never.example"])
    assert await store.get("example.com") == newer
    assert await store.get("fails.example") is None
    await store.write([], [])


async def test_namespaces_are_isolated(server: RedisServer, clock: FakeClock) -> None:
    # "fleet[1]" as an unescaped glob would match "fleet1:policy:..."
    first = RedisStore(server.url, namespace="fleet[1]", clock=clock)
    second = RedisStore(server.url, namespace="fleet1", clock=clock)
    try:
        await first.write([policy_row("a.example")], [])
        await second.write([policy_row("b.example")], [])
        assert await first.get("b.example") is None
        assert await second.get("a.example") is None
        assert [row.domain async for row in first.scan()] == ["a.example"]
        assert [row.domain async for row in second.scan()] == ["b.example"]
        await second.write([], ["a.example"])
        assert await first.get("a.example") is not None
    finally:
        await first.aclose()
        await second.aclose()


async def test_ttl_is_remaining_lifetime_plus_margin(
    store: RedisStore, raw: redis.asyncio.Redis, clock: FakeClock
) -> None:
    rows = {
        "policy.example": (policy_row("policy.example", expires_in=3600), 3700),
        "failure.example": (failure_row("failure.example", retry_in=600), 700),
        "backoff.example": (dataclasses.replace(policy_row("backoff.example", expires_in=100), retry_after=NOW + 5000),
                            5100),
        "grace.example": (policy_row("grace.example", expires_in=-40), 60),
    }  # fmt: skip
    await store.write([row for row, _ in rows.values()], [])
    for domain, (_, seconds) in rows.items():
        ttl = await raw.pttl(f"mtasts:policy:{domain}")
        assert seconds * 1000 - 2000 <= ttl <= seconds * 1000, domain
    # past expiry + margin: the put deletes the key instead of writing it
    await store.write([policy_row("policy.example", expires_in=-101)], [])
    assert await raw.exists("mtasts:policy:policy.example") == 0
    clock.advance(10_000)
    await store.write([failure_row("failure.example")], [])
    assert await raw.exists("mtasts:policy:failure.example") == 0
    assert await store.get("failure.example") is None


async def test_batch_is_one_transaction(store: RedisStore, raw: redis.asyncio.Redis) -> None:
    old = [policy_row(f"old{i}.example") for i in range(1500)]
    new = [policy_row(f"new{i}.example") for i in range(1500)]
    await store.write(old, [])
    probes = [f"mtasts:policy:{d}" for d in ("old0.example", "old1499.example", "new0.example", "new1499.example")]
    stats = await raw.info("commandstats")
    before = (stats.get("cmdstat_multi", {}).get("calls", 0), stats.get("cmdstat_exec", {}).get("calls", 0))
    seen: set[tuple[bool, ...]] = set()
    done = asyncio.Event()

    async def watch() -> None:
        while not done.is_set():
            seen.add(tuple(value is not None for value in await raw.mget(probes)))

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0)
    await store.write(new, [row.domain for row in old])
    done.set()
    await watcher
    assert seen <= {(True, True, False, False), (False, False, True, True)}
    stats = await raw.info("commandstats")
    after = (stats["cmdstat_multi"]["calls"], stats["cmdstat_exec"]["calls"])
    assert after == (before[0] + 1, before[1] + 1)
    assert await raw.exists(*probes) == 2
    assert sorted([row.domain async for row in store.scan()]) == sorted(row.domain for row in new)


async def test_scan_returns_every_row(store: RedisStore, raw: redis.asyncio.Redis) -> None:
    rows = [policy_row(f"d{i}.example") if i % 2 else failure_row(f"d{i}.example") for i in range(2500)]
    await store.write(rows, [])
    await raw.set("other:policy:x.example", redis_store._encode(policy_row("x.example")))
    await raw.set("mtasts:other", "unrelated")
    scanned = [row async for row in store.scan()]
    assert len(scanned) == 2500
    assert sorted(scanned, key=lambda row: row.domain) == sorted(rows, key=lambda row: row.domain)
    assert store.skipped_rows == 0


async def test_foreign_and_corrupt_values_are_skipped(
    store: RedisStore, raw: redis.asyncio.Redis, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    good = policy_row("good.example")
    await store.write([good], [])
    foreign: dict[str, bytes | str] = {
        "plain.example": "hello",
        "list.example": "[1, 2]",
        "types.example": '{"v":1,"domain":"types.example","fetched_at":"yesterday"}',
        "text.example": '{"v":1,"domain":"text.example","policy_text":5}',
        "version.example": '{"v":2,"domain":"version.example"}',
        "bool.example": '{"v":true,"domain":"bool.example"}',
        "nodomain.example": '{"v":1}',
        "nan.example": '{"v":1,"domain":"nan.example","expires_at":NaN}',
        "deep.example": "[" * 100_000,
        "binary.example": b"\xff\xfe\x00\x01",
        "mismatch.example": redis_store._encode(policy_row("other.example")),
    }
    for domain, value in foreign.items():
        await raw.set(f"mtasts:policy:{domain}", value)
    await raw.hset("mtasts:policy:hash.example", mapping={"v": "1", "domain": "hash.example"})
    await raw.rpush("mtasts:policy:list-type.example", "x")
    with caplog.at_level(logging.WARNING, logger="mtasts.stores"):
        for domain in [*foreign, "hash.example", "list-type.example"]:
            assert await store.get(domain) is None, domain
        assert [row async for row in store.scan()] == [good]
        assert await store.get("good.example") == good
    warnings_logged = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings_logged) == 1
    assert "mtasts:policy:" in warnings_logged[0].getMessage()
    assert store.skipped_rows == 2 * (len(foreign) + 2)
    # another store instance warns once again
    caplog.clear()
    other = RedisStore(store._url, clock=clock)
    try:
        with caplog.at_level(logging.WARNING, logger="mtasts.stores"):
            assert len([row async for row in other.scan()]) == 1
    finally:
        await other.aclose()
    assert len(caplog.records) == 1


async def test_outage_fails_fast_and_the_store_reconnects(server: RedisServer, store: RedisStore) -> None:
    await store.write([policy_row("before.example")], [])
    assert await store.get("before.example") is not None
    await server.stop()
    outage = (RedisConnectionError, RedisTimeoutError)
    started = time.monotonic()
    with pytest.raises(outage):
        await store.get("before.example")
    with pytest.raises(outage):
        await store.write([policy_row("during.example")], ["before.example"])
    with pytest.raises(outage):
        async for _ in store.scan():
            pass
    assert time.monotonic() - started < 3.0
    await server.start()  # an empty server: nothing was persisted
    assert await store.get("before.example") is None
    await store.write([policy_row("after.example")], [])
    assert await store.get("after.example") == policy_row("after.example")
    assert [row.domain async for row in store.scan()] == ["after.example"]


async def test_a_hung_server_times_out(server: RedisServer, clock: FakeClock) -> None:
    store = RedisStore(server.url, clock=clock, socket_timeout=0.5)
    try:
        await store.write([policy_row("a.example")], [])
        server.pause()
        started = time.monotonic()
        with pytest.raises(RedisTimeoutError):
            await store.get("a.example")
        assert time.monotonic() - started < 1.5
        server.resume()
        assert await store.get("a.example") == policy_row("a.example")
    finally:
        server.resume()
        await store.aclose()


async def test_aclose_is_idempotent_and_releases_the_pool(server: RedisServer, raw: redis.asyncio.Redis) -> None:
    await RedisStore(server.url).aclose()  # never used
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store = RedisStore(server.url)
        await store.write([policy_row("a.example")], [])
        assert await store.get("a.example") is not None
        await store.aclose()
        await store.aclose()
        del store
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
    # closing during an outage does not raise either
    store = RedisStore(server.url)
    await store.get("a.example")
    await server.stop()
    await store.aclose()
    await store.aclose()
    with pytest.raises(RuntimeError):
        await store.get("a.example")


async def test_a_given_client_stays_open(server: RedisServer, raw: redis.asyncio.Redis, clock: FakeClock) -> None:
    store = RedisStore(client=raw, namespace="shared", clock=clock)
    await store.write([policy_row("a.example")], [])
    await store.aclose()
    assert await raw.exists("shared:policy:a.example") == 1
    # a decode_responses client works as well
    text_client = redis.asyncio.Redis.from_url(server.url, decode_responses=True)
    decoded = RedisStore(client=text_client, namespace="shared", clock=clock)
    try:
        assert await decoded.get("a.example") == policy_row("a.example")
        assert [row async for row in decoded.scan()] == [policy_row("a.example")]
        await text_client.hset("shared:policy:hash.example", "v", "1")
        assert [row async for row in decoded.scan()] == [policy_row("a.example")]
        assert decoded.skipped_rows == 1
    finally:
        await decoded.aclose()
        await text_client.aclose()
