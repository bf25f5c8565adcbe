"""The socketmap's ``exim`` map (docs/exim.md): Exim's ``${readsocket}`` asks which MX hosts it may use.

Against a loopback World and a real SocketmapServer; the exchange over a socket is the one ``${readsocket}``
makes (one netstring, a write shutdown, read to EOF). The real Exim is tests/test_exim_delivery.py's.
"""

from __future__ import annotations

import asyncio
import doctest
import logging
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import mtasts.socketmap.exim
import mtasts.socketmap.exim_answers
from mtasts import Policy, PolicyResolver, parse_policy
from mtasts.netstring import encode
from mtasts.socketmap import SocketmapServer
from mtasts.socketmap.exim import EximLookup, EximMap, exim_request
from mtasts.socketmap.exim_answers import allowed_hosts, exim_reply
from mtasts.stores import MemoryStore
from mtasts.testing import World

from ._purity import absolute_imports
from .test_core_imports import FORBIDDEN


def policy(mode: str, *mx: str) -> str:
    return f"version: STSv1\nmode: {mode}\n" + "".join(f"mx: {m}\n" for m in mx) + "max_age: 86400\n"


def publish(world: World, domain: str, mode: str | None, mx: list[tuple[int, str]], patterns: list[str]) -> None:
    for preference, host in mx:
        world.add_record(domain, "MX", f"{preference} {host}.")
        world.add_record(host, "A", "192.0.2.1")
    if mode is not None:
        world.publish(domain, policy(mode, *patterns))


@pytest.fixture
async def server(resolver: PolicyResolver) -> AsyncIterator[SocketmapServer]:
    async with SocketmapServer(resolver, port=0) as s:
        yield s


async def ask(server: SocketmapServer, domain: str) -> bytes:
    return await server.answer(b"exim " + domain.encode())


# -- the pure part -------------------------------------------------------------------------------------------------


def test_the_answers_module_is_pure() -> None:
    imported = absolute_imports(Path(mtasts.socketmap.exim_answers.__file__))
    assert not imported & FORBIDDEN


def test_the_docstring_examples_run() -> None:
    result = doctest.testmod(mtasts.socketmap.exim_answers)
    assert result.attempted > 0 and result.failed == 0


def test_allowed_hosts_keep_the_mx_order_and_match_one_label_only() -> None:
    enforce = parse_policy(policy("enforce", "*.example.net", "mx.example.com"))
    hosts = ["b.example.net.", "MX.example.com", "a.b.example.net", "example.net", "b.example.net", "mx.other.com"]
    assert allowed_hosts(enforce, hosts) == ["b.example.net", "mx.example.com"]
    # Only valid LDH names match: nothing reaches Exim that its list syntax could read as more than one host
    assert allowed_hosts(enforce, ["x:y.example.net", "a b.example.net", "*.example.net", ".example.net"]) == []
    assert exim_reply(enforce, hosts) == encode(b"OK b.example.net:mx.example.com")
    assert exim_reply(enforce, ["mx.other.com"]) == encode(
        b"TEMP MTA-STS: no MX host of the domain matches its enforce policy"
    )
    for mode in ["testing", "none"]:
        assert exim_reply(parse_policy(policy(mode, "mx.example.com")), ["mx.example.com"]) == b"9:NOTFOUND ,"
    assert exim_reply(None, ["mx.example.com"]) == b"9:NOTFOUND ,"


# -- the map, against the world ------------------------------------------------------------------------------------


async def test_enforce_answers_the_allowed_mx_hosts_in_preference_order(world: World, server: SocketmapServer) -> None:
    mx = [(30, "mx3.order.test"), (10, "mx1.order.test"), (20, "rogue.other.test"), (20, "mx2.order.test")]
    publish(world, "order.test", "enforce", mx, ["*.order.test"])
    assert await ask(server, "order.test") == b"OK mx1.order.test:mx2.order.test:mx3.order.test"
    assert await ask(server, "ORDER.test.") == b"OK mx1.order.test:mx2.order.test:mx3.order.test"
    assert world.queries("_mta-sts.order.test", "TXT") == 1  # the policy is cached; the MX RRset asked each time
    assert world.queries("order.test", "MX") == 2
    assert (server.requests, server.errors, server.deferred, server.timeouts) == (2, 0, 0, 0)


async def test_equal_preferences_are_shuffled_and_the_wildcard_is_one_label(world: World) -> None:
    mx = [(10, "a.tie.test"), (10, "b.tie.test"), (10, "c.tie.test"), (20, "deep.x.tie.test"), (30, "tie.test")]
    publish(world, "tie.test", "enforce", mx, ["*.tie.test"])
    async with world.policy_resolver(store=MemoryStore()) as resolver:
        exim = EximMap(resolver, rng=random.Random(1))
        seen = {(await exim.answer("tie.test", timeout=5)).netstring for _ in range(12)}
    hosts = {reply[reply.index(b":") + 4 : -1] for reply in seen}
    assert {frozenset(h.split(b":")) for h in hosts} == {frozenset([b"a.tie.test", b"b.tie.test", b"c.tie.test"])}
    assert len(hosts) > 1  # not one fixed order: RFC 5321 §5.1 shuffles equal preferences


async def test_implicit_mx_and_no_match(world: World, server: SocketmapServer) -> None:
    world.add_record("implicit.test", "A", "192.0.2.7")  # no MX record: the domain is its own MX
    world.publish("implicit.test", policy("enforce", "implicit.test"))
    assert await ask(server, "implicit.test") == b"OK implicit.test"
    publish(world, "nomatch.test", "enforce", [(10, "mx.elsewhere.test")], ["mx.nomatch.test"])
    assert await ask(server, "nomatch.test") == b"TEMP MTA-STS: no MX host of the domain matches its enforce policy"
    assert server.deferred == 0  # the policy's verdict, not a failure


async def test_without_an_enforce_policy_the_answer_is_notfound(world: World, server: SocketmapServer) -> None:
    publish(world, "testing.test", "testing", [(10, "mx.testing.test")], ["mx.testing.test"])
    publish(world, "none.test", "none", [(10, "mx.none.test")], ["mx.none.test"])
    publish(world, "nopolicy.test", None, [(10, "mx.nopolicy.test")], [])
    for domain in ["testing.test", "none.test", "nopolicy.test"]:
        assert await ask(server, domain) == b"NOTFOUND ", domain
        assert world.queries(domain, "MX") == 0  # Exim looks the MX hosts up itself
    for key in ["[192.0.2.1]", "[IPv6:2001:db8::1]", ".example.com", "bad..name", "x" * 300]:
        assert await ask(server, key) == b"NOTFOUND ", key
    assert await server.answer(b"exim \xff.test") == b"NOTFOUND "
    # answered from the cache now: no lookup at all
    for domain in ["testing.test", "none.test", "nopolicy.test"]:
        assert exim_request(server.resolver.cached_policy, domain.encode()) == b"9:NOTFOUND ,"


async def test_a_cached_enforce_policy_still_needs_the_mx_hosts(world: World, server: SocketmapServer) -> None:
    publish(world, "cached.test", "enforce", [(10, "mx.cached.test")], ["mx.cached.test"])
    request = exim_request(server.resolver.cached_policy, b"Cached.Test")
    assert type(request) is EximLookup and request == "cached.test"
    assert await ask(server, "cached.test") == b"OK mx.cached.test"
    assert type(exim_request(server.resolver.cached_policy, b"cached.test")) is EximLookup


@pytest.mark.parametrize(
    ("failure", "reply"),
    [
        ("servfail", b"TEMP MTA-STS: the MX lookup failed"),
        ("timeout", b"TEMP MTA-STS: the MX lookup failed"),
        ("nxdomain", b"TEMP MTA-STS: the domain has no usable MX host"),
    ],
)
async def test_a_failed_mx_lookup_under_enforce_is_temp(world: World, failure: str, reply: bytes) -> None:
    publish(world, "failing.test", "enforce", [(10, "mx.failing.test")], ["mx.failing.test"])
    async with (
        world.policy_resolver(store=MemoryStore(), dns_resolver=world.resolver(lifetime=0.4)) as resolver,
        SocketmapServer(resolver, port=0) as server,
    ):
        assert await ask(server, "failing.test") == b"OK mx.failing.test"
        world.set_failure("failing.test", failure)  # the MX query (not _mta-sts.failing.test: the policy stays)
        assert await ask(server, "failing.test") == reply
        assert server.deferred == 1


async def test_a_null_mx_under_enforce_is_temp(world: World, server: SocketmapServer) -> None:
    world.add_record("nullmx.test", "MX", "0 .")
    world.publish("nullmx.test", policy("enforce", "mx.nullmx.test"))
    assert await ask(server, "nullmx.test") == b"TEMP MTA-STS: the domain has no usable MX host"


async def test_a_slow_policy_lookup_is_temp_and_goes_on(world: World, resolver: PolicyResolver) -> None:
    publish(world, "slow.test", "enforce", [(10, "mx.slow.test")], ["mx.slow.test"])
    world.domain("slow.test").delay = 0.6
    async with SocketmapServer(resolver, port=0, request_timeout=0.2) as server:
        assert await ask(server, "slow.test") == b"TEMP policy lookup in progress"
        assert server.timeouts == 1
        for _ in range(50):  # the shared lookup was not cancelled: it completes and fills the cache
            if isinstance(resolver.cached_policy("slow.test"), Policy):
                break
            await asyncio.sleep(0.05)
        assert await ask(server, "slow.test") == b"OK mx.slow.test"
    assert world.requests("mta-sts.slow.test") == 1


async def test_a_local_fault_is_temp(world: World, resolver: PolicyResolver) -> None:
    publish(world, "local.test", "enforce", [(10, "mx.local.test")], ["mx.local.test"])
    async with SocketmapServer(resolver, port=0) as server:
        await resolver.aclose()  # the daemon is shutting down: new lookups are a local fault
        assert await ask(server, "local.test") == b"TEMP MTA-STS lookup failed on this host (local error)"
        assert server.deferred == 1


async def test_a_dns_failure_under_dns_error_defer_is_temp(world: World) -> None:
    world.set_failure("_mta-sts.dnsfail.test", "servfail")
    async with (
        world.policy_resolver(store=MemoryStore(), dns_error="defer") as resolver,
        SocketmapServer(resolver, port=0) as server,
    ):
        assert await ask(server, "dnsfail.test") == b"TEMP MTA-STS DNS lookup failed (dns_error = defer)"


async def test_an_internal_error_is_temp_and_logged(
    world: World, server: SocketmapServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    publish(world, "bug.test", "enforce", [(10, "mx.bug.test")], ["mx.bug.test"])

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(mtasts.socketmap.exim, "find_mx", broken)
    with caplog.at_level(logging.ERROR, logger="mtasts"):
        assert await ask(server, "bug.test") == b"TEMP internal error"
    assert any(r.exc_info and "a bug" in str(r.exc_info[1]) for r in caplog.records)
    assert server.errors == 1


async def test_the_exchange_readsocket_makes(world: World, server: SocketmapServer) -> None:
    """One netstring, the write side shut down, the reply read to EOF: what ``${readsocket}`` does (its default
    ``shutdown=yes``), for an answer that needs a lookup and for one from the cache."""
    publish(world, "socket.test", "enforce", [(10, "mx.socket.test")], ["mx.socket.test"])
    for domain, reply in [("socket.test", b"OK mx.socket.test"), ("[192.0.2.1]", b"NOTFOUND ")]:
        request = f"exim {domain}".encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"%d:%s," % (len(request), request))
        await writer.drain()
        writer.write_eof()
        async with asyncio.timeout(5):
            assert await reader.read() == encode(reply)  # and then EOF: the server closed the connection
        writer.close()
        await writer.wait_closed()
