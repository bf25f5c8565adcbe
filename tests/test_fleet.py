"""One lookup per cold domain across a fleet sharing a real redis-server (mtasts.stores.fleet): the herd, a
lease holder killed mid-fetch (SIGKILL), Redis down."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio

from mtasts import LookupStatus, PolicyResolver
from mtasts.stores import RedisStore
from mtasts.stores.fleet import RedisFleet
from mtasts.testing import World

from ._redis import RedisServer, redis_server

POLICY = "version: STSv1\nmode: enforce\nmx: mx.{d}\nmax_age: 86400\n"
PROCESSES = 8


@pytest.fixture
async def server() -> AsyncIterator[RedisServer]:
    async with redis_server() as running:
        yield running


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with World() as w:
        for i in range(40):
            w.publish(f"p{i}.example", POLICY.format(d=f"p{i}.example"), delay=0.05)
        for i in range(20):
            w.publish(f"n{i}.example", None, txt_failure="nxdomain")  # no policy
        w.publish("broken.example", None)  # a TXT record, the policy answers 404: a failed fetch
        yield w


def fleet_resolver(world: World, url: str, **store_options: object) -> PolicyResolver:
    store = RedisStore(url, **store_options)  # type: ignore[arg-type]
    return world.policy_resolver(store=store, fetch_timeout=10, dns_resolver=world.resolver(lifetime=10))


async def test_a_herd_of_resolvers_costs_one_txt_query_and_one_fetch_per_domain(
    world: World, server: RedisServer
) -> None:
    resolvers = [fleet_resolver(world, server.url) for _ in range(PROCESSES)]
    try:
        names = [f"p{i}.example" for i in range(40)] + [f"n{i}.example" for i in range(20)] + ["broken.example"]
        lookups = await asyncio.gather(*(r.lookup(name) for r in resolvers for name in names))
    finally:
        for r in resolvers:
            await r.aclose()
    by_name: dict[str, set[str]] = {}
    for lookup in lookups:
        by_name.setdefault(lookup.domain, set()).add(lookup.status.value)
    errors = {lookup.error for lookup in lookups if lookup.status.value == "fetch-error" and lookup.domain[0] == "p"}
    assert not errors
    for name in names:
        assert world.queries(f"_mta-sts.{name}", "TXT") == 1, name
        if name.startswith("p"):
            assert world.requests(f"mta-sts.{name}") == 1, (name, by_name[name], world.request_log[:3])
            assert by_name[name] <= {"fetched", "cached"}
        elif name.startswith("n"):
            assert by_name[name] == {"no-policy"}
    assert world.requests("mta-sts.broken.example") == 1  # the failure is shared too
    assert by_name["broken.example"] == {"fetch-error"}


async def test_the_fleet_is_optional_and_off_means_every_resolver_looks_up(world: World, server: RedisServer) -> None:
    resolvers = [fleet_resolver(world, server.url, fleet_single_flight=False) for _ in range(3)]
    try:
        await asyncio.gather(*(r.lookup("n1.example") for r in resolvers))
    finally:
        for r in resolvers:
            await r.aclose()
    assert world.queries("_mta-sts.n1.example", "TXT") == 3


async def test_redis_down_means_each_resolver_looks_up_alone_and_is_not_blocked(
    world: World, server: RedisServer
) -> None:
    await server.stop()
    resolvers = [fleet_resolver(world, server.url, socket_timeout=0.5) for _ in range(3)]
    start = time.monotonic()
    try:
        lookups = await asyncio.gather(*(r.lookup("p1.example") for r in resolvers))
    finally:
        for r in resolvers:
            await r.aclose()
    assert {lookup.status for lookup in lookups} == {LookupStatus.FETCHED}
    assert time.monotonic() - start < 5
    assert world.requests("mta-sts.p1.example") == 3


async def test_a_waiter_adopts_the_shared_negative_answer_without_dns(world: World, server: RedisServer) -> None:
    first = fleet_resolver(world, server.url)
    second = fleet_resolver(world, server.url)
    try:
        assert (await first.lookup("n2.example")).status is LookupStatus.NO_POLICY
        # nothing in the store for a "no policy" domain: the second finds the shared negative answer
        client = redis.asyncio.Redis.from_url(server.url)
        raw = await client.get("mtasts:negative:{n2.example}")
        await client.aclose()
        assert raw is not None and json.loads(raw)["status"] == "no-policy"
        # the second resolver's own lookup starts after the first ended: no lease held, the negative key answers
        lookup = await second.lookup("n2.example")
        assert lookup.status is LookupStatus.NO_POLICY and lookup.from_cache
        assert world.queries("_mta-sts.n2.example", "TXT") == 1
    finally:
        await first.aclose()
        await second.aclose()


_CHILD = r"""
import asyncio, sys
from mtasts import PolicyResolver
from mtasts.stores import RedisStore
import dns.asyncresolver, ssl
url, dns_port, https_port, ca, domain = sys.argv[1:6]
async def main():
    r = dns.asyncresolver.Resolver(configure=False); r.nameservers = ["127.0.0.1"]; r.port = int(dns_port)
    r.cache = None
    context = ssl.create_default_context(cafile=ca)
    store = RedisStore(url, fleet_lease_ttl=0.5)
    async with PolicyResolver(dns_resolver=r, ssl_context=context, policy_port=int(https_port), store=store,
                              fetch_timeout=60) as resolver:
        print("looking up", flush=True)
        await resolver.lookup(domain)
asyncio.run(main())
"""


async def test_a_lease_holder_killed_mid_fetch_is_replaced_within_the_lease_ttl(
    world: World, server: RedisServer
) -> None:
    config = world.domain("p5.example")
    config.delay = 30.0  # the child's fetch hangs: it holds the lease when it is killed
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CHILD, server.url, str(world.dns_port), str(world.https_port), world.ca_pem_path,
        "p5.example", stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": os.getcwd()},
    )  # fmt: skip
    client = redis.asyncio.Redis.from_url(server.url)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while not await client.exists("mtasts:lease:{p5.example}"):
            assert loop.time() < deadline, "the child never took the lease"
            assert child.returncode is None
            await asyncio.sleep(0.02)
        assert world.requests("mta-sts.p5.example") <= 1
        child.send_signal(signal.SIGKILL)
        await child.wait()
        config.delay = 0.0
        resolver = fleet_resolver(world, server.url, fleet_lease_ttl=0.5)
        start = loop.time()
        try:
            lookup = await resolver.lookup("p5.example")
        finally:
            await resolver.aclose()
        assert lookup.status is LookupStatus.FETCHED
        assert loop.time() - start < 3  # the dead holder's lease expired within its ttl (0.5 s), then our fetch
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
        await client.aclose()


def test_fleet_arguments_are_checked() -> None:
    with pytest.raises(ValueError):
        RedisFleet(lambda: None, ttl=0)
