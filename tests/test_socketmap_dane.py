"""DANE first in the socketmap (RFC 8461 §2, RFC 7672): enforce domains whose MX hosts have validated TLSA
records are answered ``OK dane-only``, against the loopback world (AD for zones marked signed)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from mtasts import PolicyResolver
from mtasts.socketmap import ServerConfig, SocketmapServer, load_config
from mtasts.testing import World

from .conftest import FakeClock

ENFORCE = "version: STSv1\nmode: enforce\nmx: *.{d}\nmax_age: 86400\n"
TESTING = "version: STSv1\nmode: testing\nmx: *.{d}\nmax_age: 86400\n"
DANE_ONLY = b"OK dane-only"


def dane_domain(world: World, domain: str, *, tlsa_hosts: int, hosts: int = 2, policy: str = ENFORCE) -> None:
    """``domain`` with ``hosts`` MX hosts, the first ``tlsa_hosts`` of them with a TLSA record; signed."""
    world.publish(domain, policy.format(d=domain))
    for i in range(hosts):
        mx = f"mx{i}.{domain}"
        world.add_record(domain, "MX", f"{10 * (i + 1)} {mx}.")
        world.add_record(mx, "A", f"127.0.0.{i + 2}")
        if i < tlsa_hosts:
            world.tlsa(f"_25._tcp.{mx}", 3, 1, 1, world.tlsa_data(mx))
    world.sign(domain)


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with World() as w:
        dane_domain(w, "all.example", tlsa_hosts=2)
        dane_domain(w, "mixed.example", tlsa_hosts=1)
        dane_domain(w, "none.example", tlsa_hosts=0)
        dane_domain(w, "testing.example", tlsa_hosts=2, policy=TESTING)
        dane_domain(w, "unsigned.example", tlsa_hosts=2)
        w.unsign("unsigned.example")
        yield w


@pytest.fixture
async def resolver(world: World, clock: FakeClock) -> AsyncIterator[PolicyResolver]:
    async with world.policy_resolver(clock=clock, fetch_timeout=5) as r:
        yield r


@pytest.fixture
async def server(resolver: PolicyResolver) -> AsyncIterator[SocketmapServer]:
    async with SocketmapServer(resolver, port=0, dane=True) as s:
        yield s


@pytest.mark.parametrize(
    ("domain", "reply"),
    [
        ("all.example", DANE_ONLY),
        ("mixed.example", DANE_ONLY),  # the mixed case: docs/decisions.md
        ("none.example", b"OK secure match=.none.example servername=hostname"),  # validated, but no TLSA
        ("unsigned.example", b"OK secure match=.unsigned.example servername=hostname"),  # TLSA without AD
        ("testing.example", b"NOTFOUND "),  # only an enforce answer is replaced
    ],
)
async def test_dane_answers(server: SocketmapServer, world: World, domain: str, reply: bytes) -> None:
    assert await server.answer(b"postfix " + domain.encode()) == reply
    assert await server.answer(b"postfix " + domain.encode()) == reply  # and from memory
    assert world.queries(domain, "MX") == (0 if domain == "testing.example" else 1)


async def test_dane_state_is_remembered_for_its_ttl_and_then_looked_up_again(
    server: SocketmapServer, world: World, clock: FakeClock
) -> None:
    assert await server.answer(b"postfix all.example") == DANE_ONLY
    for _ in range(5):
        assert server._quick(b"postfix all.example") == b"12:OK dane-only,"
    assert world.queries("_25._tcp.mx0.all.example", "TLSA") == 1
    world.remove_records("_25._tcp.mx0.all.example")
    world.remove_records("_25._tcp.mx1.all.example")  # the receiver withdraws DANE
    clock.advance(301)  # past the records' TTL (300 s)
    assert server._quick(b"postfix all.example") == "all.example"
    assert await server.answer(b"postfix all.example") == b"OK secure match=.all.example servername=hostname"
    assert world.queries("_25._tcp.mx0.all.example", "TLSA") == 2


async def test_concurrent_requests_share_one_dane_lookup(server: SocketmapServer, world: World) -> None:
    replies = await asyncio.gather(*(server.answer(b"postfix all.example") for _ in range(20)))
    assert set(replies) == {DANE_ONLY}
    assert world.queries("all.example", "MX") == 1
    assert world.queries("_25._tcp.mx1.all.example", "TLSA") == 1


async def test_mx_lookup_failure_is_temp_and_not_remembered(server: SocketmapServer, world: World) -> None:
    broken = "broken.example"
    dane_domain(world, broken, tlsa_hosts=2)
    await server.resolver.lookup(broken)  # the enforce policy is cached first
    world.set_failure(broken, "servfail")  # then its MX RRset (everything at the name) cannot be had
    # never the weaker "secure" (RFC 7672 §2.2.1: a failed MX lookup defers)
    assert await server.answer(b"postfix " + broken.encode()) == b"TEMP DANE: the MX lookup failed"
    assert server.deferred == 1
    world.set_failure(broken, None)
    assert await server.answer(b"postfix " + broken.encode()) == DANE_ONLY  # asked again: not remembered


async def test_tlsa_servfail_on_a_validated_host_is_dane_only(server: SocketmapServer, world: World) -> None:
    world.set_failure("_25._tcp.mx0.none.example", "servfail")  # a bogus TLSA RRset (RFC 7672 §2.1.1)
    assert await server.answer(b"postfix none.example") == DANE_ONLY  # Postfix defers that host itself


async def test_tlsrpt_map_name_gets_dane_only_without_sts_attributes(server: SocketmapServer) -> None:
    assert await server.answer(b"QUERYwithTLSRPT all.example") == DANE_ONLY
    assert await server.answer(b"QUERYwithTLSRPT all.example") == DANE_ONLY
    reply = await server.answer(b"QUERYwithTLSRPT none.example")
    assert reply.startswith(b"OK secure match=.none.example servername=hostname policy_type=sts")
    assert await server.answer(b"postfix none.example") == b"OK secure match=.none.example servername=hostname"


async def test_dane_off_answers_as_mta_sts_alone(resolver: PolicyResolver, world: World) -> None:
    async with SocketmapServer(resolver, port=0) as plain:
        assert not plain.dane
        assert await plain.answer(b"postfix all.example") == b"OK secure match=.all.example servername=hostname"
    assert world.queries("_25._tcp.mx0.all.example", "TLSA") == 0


def test_dane_is_on_by_default_in_the_daemon_config(tmp_path: object) -> None:
    import pathlib

    assert ServerConfig().dane is True
    path = pathlib.Path(str(tmp_path)) / "socketmap.toml"
    path.write_text("dane = false\n")
    assert load_config(str(path)).dane is False


async def test_a_full_dane_query_queue_on_this_host_is_temp_never_secure(
    resolver: PolicyResolver, world: World
) -> None:
    from mtasts.dane_lookup import DaneResolver

    dane_domain(world, "hung.example", tlsa_hosts=2)
    await resolver.lookup("hung.example")
    await resolver.lookup("all.example")  # both enforce policies cached
    world.set_failure("hung.example", "timeout")  # its MX query holds the only DANE query slot
    lookups = DaneResolver(world.resolver(), limit=1, wait=0.05)
    async with SocketmapServer(resolver, port=0, dane=lookups) as server:
        hung = asyncio.ensure_future(server.answer(b"postfix hung.example"))
        await asyncio.sleep(0.05)
        reply = await server.answer(b"postfix all.example")
        assert reply == b"TEMP MTA-STS lookup failed on this host (local error)"
        assert await hung == b"TEMP DANE: the MX lookup failed"
        world.set_failure("hung.example", None)
        assert await server.answer(b"postfix all.example") == DANE_ONLY  # not remembered: asked again


async def test_sendmails_map_name_never_gets_dane_only_nor_tlsrpt_attributes(resolver: PolicyResolver) -> None:
    """The map name ``sts`` (sendmail's FEATURE(`sts')) gets the plain MTA-STS answer whatever ``dane`` and
    ``tlsrpt`` say — cold and from memory, before and after Postfix's own names asked — while Postfix's names keep
    theirs (docs/sendmail.md: sendmail checks only ``secure`` answers and reads ``match=`` to a final
    ``servername=hostname``)."""
    plain = b"OK secure match=.all.example servername=hostname"
    async with SocketmapServer(resolver, port=0, dane=True, tlsrpt=True) as server:
        assert await server.answer(b"sts all.example") == plain  # cold
        assert await server.answer(b"sts all.example") == plain  # from memory
        assert await server.answer(b"postfix all.example") == DANE_ONLY
        assert await server.answer(b"sts ALL.Example.") == plain
        assert await server.answer(b"sts testing.example") == b"NOTFOUND "
        assert await server.answer(b"sts [192.0.2.1]") == b"NOTFOUND "
    assert server.answers()["secure"] == 3
