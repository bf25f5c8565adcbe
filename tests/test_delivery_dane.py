"""deliver(..., dane=True): mtasts looks DANE up (AD bit of the world's "validating" DNS) and verifies it itself
against real aiosmtpd MX servers with STARTTLS (RFC 7672; RFC 8461 §2: DANE first, never overridden)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from mtasts import PolicyResolver
from mtasts.delivery import DeliveryStatus
from mtasts.errors import UsageError
from mtasts.testing import World

from ._smtp import MailWorld
from .conftest import FakeClock
from .test_delivery import DOMAIN, publish, send

MX1, MX2 = "mx1.example.com", "mx2.example.com"


@pytest.fixture
async def resolver(world: World) -> AsyncIterator[PolicyResolver]:
    async with world.policy_resolver(clock=FakeClock(), fetch_timeout=5) as r:
        yield r


async def dane_mx(world: World, mail: MailWorld, name: str, kind: str | None = "valid", **tlsa: int) -> None:
    """An MX host with a TLSA record for the certificate it presents (``usage``/``selector``/``mtype``)."""
    await mail.add_mx(name, kind)
    usage, selector, mtype = tlsa.get("usage", 3), tlsa.get("selector", 1), tlsa.get("mtype", 1)
    data = world.tlsa_data(name, kind or "valid", usage=usage, selector=selector, mtype=mtype)
    world.tlsa(f"_{mail.port}._tcp.{name}", usage, selector, mtype, data)  # the port connected to


async def test_dane_ee_match_delivers_and_mta_sts_is_not_evaluated(
    world: World, mail: MailWorld, resolver: PolicyResolver
) -> None:
    publish(world, "enforce", "*.other.example")  # MTA-STS alone would never use this MX
    await dane_mx(world, mail, MX1, "wrong-name")  # DANE-EE: names (and expiry) are not checked (§3.1.1)
    mail.set_mx(DOMAIN, (10, MX1))
    world.sign("example.com")
    result = await send(world, mail, resolver, dane=True)
    assert result.status is DeliveryStatus.DELIVERED
    [attempt] = result.attempts
    assert attempt.dane and attempt.verdict is None and attempt.result_type is None and attempt.tls
    assert mail.inbox.to(MX1)[0].tls


async def test_dane_ee_ignores_expiry(world: World, mail: MailWorld, resolver: PolicyResolver) -> None:
    publish(world, None)
    await dane_mx(world, mail, MX1, "expired")
    mail.set_mx(DOMAIN, (10, MX1))
    world.sign("example.com")
    assert (await send(world, mail, resolver, dane=True)).status is DeliveryStatus.DELIVERED


async def test_tlsa_mismatch_defers_even_where_mta_sts_would_pass(
    world: World, mail: MailWorld, resolver: PolicyResolver
) -> None:
    publish(world, "enforce", MX1)
    await mail.add_mx(MX1, "valid")  # a valid PKIX certificate, matching the enforce policy
    world.tlsa(f"_{mail.port}._tcp.{MX1}", 3, 1, 1, "00" * 32)  # but the TLSA record names another key
    mail.set_mx(DOMAIN, (10, MX1))
    world.sign("example.com")
    result = await send(world, mail, resolver, dane=True)
    assert result.status is DeliveryStatus.DEFERRED and mail.inbox.messages == []
    [attempt] = result.attempts
    assert attempt.dane and attempt.result_type == "tlsa-invalid" and attempt.verdict is None
    assert "DANE validation failed" in (attempt.error or "")


async def test_dane_host_without_starttls_defers(world: World, mail: MailWorld, resolver: PolicyResolver) -> None:
    publish(world, None)  # no MTA-STS policy at all: DANE alone forbids plaintext
    await dane_mx(world, mail, MX1, None)
    mail.set_mx(DOMAIN, (10, MX1))
    world.sign("example.com")
    result = await send(world, mail, resolver, dane=True)
    assert result.status is DeliveryStatus.DEFERRED and mail.inbox.messages == []
    assert result.attempts[0].result_type == "starttls-not-supported"


@pytest.mark.parametrize(("kind", "delivered"), [("valid", True), ("wrong-name", False), ("expired", False)])
async def test_dane_ta_checks_chain_name_and_expiry(
    world: World, mail: MailWorld, resolver: PolicyResolver, kind: str, delivered: bool
) -> None:
    publish(world, None)
    await dane_mx(world, mail, MX1, kind, usage=2, selector=0, mtype=1)  # the CA the server sends
    mail.set_mx(DOMAIN, (10, MX1))
    world.sign("example.com")
    result = await send(world, mail, resolver, dane=True)
    assert (result.status is DeliveryStatus.DELIVERED) is delivered, result.attempts[0].error
    assert bool(mail.inbox.messages) is delivered
    if not delivered:
        assert result.attempts[0].result_type == "tlsa-invalid"


async def test_unsigned_zone_tlsa_is_ignored_and_mta_sts_applies(
    world: World, mail: MailWorld, resolver: PolicyResolver
) -> None:
    publish(world, "enforce", MX1)
    await mail.add_mx(MX1, "valid")
    world.tlsa(f"_{mail.port}._tcp.{MX1}", 3, 1, 1, "00" * 32)  # would fail, but the zone is not signed
    mail.set_mx(DOMAIN, (10, MX1))
    result = await send(world, mail, resolver, dane=True)
    assert result.status is DeliveryStatus.DELIVERED
    [attempt] = result.attempts
    assert not attempt.dane and attempt.verdict is not None and attempt.verdict.deliver
    assert world.queries(f"_{mail.port}._tcp.{MX1}", "TLSA") == 0  # the MX RRset was insecure: not even asked


async def test_failed_tlsa_lookup_skips_that_host_and_the_next_one_is_judged_by_its_own_policy(
    world: World, mail: MailWorld, resolver: PolicyResolver
) -> None:
    publish(world, "enforce", MX1, MX2)
    await mail.add_mx(MX1, "valid")
    await mail.add_mx(MX2, "valid")  # no TLSA (authenticated denial): MTA-STS applies to it
    mail.set_mx(DOMAIN, (10, MX1), (20, MX2))
    world.sign("example.com")
    world.set_failure(f"_{mail.port}._tcp.{MX1}", "servfail")  # a bogus TLSA RRset (RFC 7672 §2.1.1)
    result = await send(world, mail, resolver, dane=True)
    assert result.status is DeliveryStatus.DELIVERED and result.mx == MX2
    first, second = result.attempts
    assert first.dane and first.skipped and first.result_type == "dnssec-invalid" and first.receiving_ip is None
    assert not second.dane and second.verdict is not None
    assert mail.inbox.to(MX1) == [] and mail.inbox.to(MX2)


async def test_dane_hook_still_takes_a_callable_and_rejects_nonsense(
    world: World, mail: MailWorld, resolver: PolicyResolver
) -> None:
    with pytest.raises(UsageError):
        await send(world, mail, resolver, dane="yes")
