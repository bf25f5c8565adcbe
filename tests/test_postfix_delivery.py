"""A real Postfix delivering real mail under our socketmap (``smtp_tls_policy_maps``) to aiosmtpd MX servers.

One Postfix instance, one world and one set of MX servers (port 25 of 127.0.25.x) serve the whole module; every
test uses domains of its own. Outcomes are read twice: from Postfix's maillog (status, DSN, the TLS session
summaries of ``smtp_tls_loglevel``) and from the MX servers' inbox (what really arrived).

Without Postfix these tests are skipped with the reason (``./run tests`` installs it).
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import AsyncIterator

import aiosmtplib
import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from mtasts.socketmap import SocketmapServer
from mtasts.stores import MemoryStore
from mtasts.testing import World

from ._postfix import Attempt, Postfix, find_postfix, postfix_instance, world_for_postfix
from ._smtp import MailWorld

pytestmark = pytest.mark.asyncio(loop_scope="module")

_addresses = (f"127.0.25.{n}" for n in itertools.count(2))


def policy(mode: str, *mx: str) -> str:
    lines = "".join(f"mx: {pattern}\n" for pattern in mx)
    return f"version: STSv1\nmode: {mode}\n{lines}max_age: 86400\n"


def socketmap_table(server: SocketmapServer) -> str:
    return f"socketmap:inet:127.0.0.1:{server.port}:postfix"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def world() -> AsyncIterator[World]:
    find_postfix()  # skip before anything listens when Postfix is not installed
    async with world_for_postfix() as w:
        yield w
        assert not w.errors


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def mail(world: World) -> AsyncIterator[MailWorld]:
    m = MailWorld(world, 25)  # Postfix knows no MX port but 25
    try:
        yield m
    finally:
        await m.close()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def postfix(world: World) -> AsyncIterator[Postfix]:
    async with (
        world.policy_resolver(store=MemoryStore(), fetch_timeout=5.0) as resolver,
        SocketmapServer(resolver, port=0) as server,
        postfix_instance(world, policy_map=socketmap_table(server)) as instance,
    ):
        yield instance
        assert instance.problems() == []
    assert server.errors == 0


async def add_domain(
    mail: MailWorld, domain: str, mode: str | None, *mx: tuple[int, str, str | None]
) -> dict[str, str]:
    """MX servers ``(preference, host, certificate kind or None for no STARTTLS)`` for ``domain``, and its
    policy (``mode`` None: none published) listing exactly those hosts. Returns their addresses by host."""
    addresses = {host: await mail.add_mx(host, cert, ip=next(_addresses)) for _, host, cert in mx}
    mail.set_mx(domain, *((preference, host) for preference, host, _ in mx))
    if mode is not None:
        mail.world.publish(domain, policy(mode, *addresses))
    return addresses


def assert_arrived(mail: MailWorld, mx: str, attempt: Attempt, *, tls: bool = True) -> None:
    received = mail.inbox.to(mx)
    assert len(received) == 1, (mx, received)
    assert received[0].rcpt_tos == [attempt.recipient]
    assert received[0].tls is tls
    assert f"Message-ID: <{attempt.message_id}>".encode() in received[0].content


async def test_enforce_with_a_valid_certificate_is_sent_over_verified_tls(
    world: World, postfix: Postfix, mail: MailWorld
) -> None:
    await add_domain(mail, "valid.enforce.test", "enforce", (10, "mx.valid.enforce.test", "valid"))
    outcome = (await postfix.deliver("rcpt@valid.enforce.test"))["rcpt@valid.enforce.test"]
    # Postfix's resolver asked the world (the chroot's resolv.conf), and so did the socketmap's resolver
    assert world.queries("valid.enforce.test", "MX") >= 1 and world.queries("mx.valid.enforce.test", "A") >= 1
    assert world.queries("_mta-sts.valid.enforce.test", "TXT") == 1
    assert (outcome.status, outcome.dsn, outcome.relay_host) == ("sent", "2.0.0", "mx.valid.enforce.test"), outcome
    # "Verified": the certificate chains to the CA file and matches the policy's mx names (Postfix "secure").
    assert outcome.tls == {"mx.valid.enforce.test": "Verified"}
    assert_arrived(mail, "mx.valid.enforce.test", outcome)


@pytest.mark.parametrize(
    ("case", "cert", "listed", "log"),
    [
        pytest.param("wrong-name", "wrong-name", True, "num=62:hostname mismatch", id="wrong-name"),
        pytest.param("untrusted", "untrusted", True, "untrusted issuer", id="untrusted"),
        pytest.param("plaintext", None, True, None, id="no-starttls"),
        pytest.param("unlisted", "valid", False, "num=62:hostname mismatch", id="mx-not-in-policy"),
    ],
)
async def test_enforce_defers_what_the_policy_does_not_allow(
    postfix: Postfix, mail: MailWorld, case: str, cert: str | None, listed: bool, log: str | None
) -> None:
    domain, mx = f"{case}.enforce.test", f"mx.{case}.enforce.test"
    await mail.add_mx(mx, cert, ip=next(_addresses))
    mail.set_mx(domain, (10, mx))
    # "unlisted": the MX host (with a valid certificate for its own name) is not among the policy's mx names
    mail.world.publish(domain, policy("enforce", mx if listed else f"other.{domain}"))
    outcome = (await postfix.deliver(f"rcpt@{domain}"))[f"rcpt@{domain}"]
    assert (outcome.status, outcome.relay_host) == ("deferred", mx), outcome
    if cert is None:
        assert outcome.dsn == "4.7.4" and outcome.reason.startswith("TLS is required, but was not offered"), outcome
        assert outcome.tls == {}
    else:
        assert (outcome.dsn, outcome.reason) == ("4.7.5", "Server certificate not verified"), outcome
        assert outcome.tls == {mx: "Untrusted"}
        assert f"certificate verification failed for {mx}[" in outcome.text(), outcome.text()
        assert log in outcome.text(), outcome.text()
    assert mail.inbox.connections.get(mx, 0) >= 1  # Postfix went there, and refused to hand the message over
    assert mail.inbox.to(mx) == []


async def test_testing_none_and_no_policy_are_sent(postfix: Postfix, mail: MailWorld) -> None:
    """Without an enforce policy the socketmap says NOTFOUND and Postfix's own level (``may``) decides: the mail
    goes out even to certificates that ``enforce`` would refuse, or in plaintext."""
    await add_domain(mail, "testing.test", "testing", (10, "mx.testing.test", "wrong-name"))
    await add_domain(mail, "none.test", "none", (10, "mx.none.test", "untrusted"))
    await add_domain(mail, "nopolicy.test", None, (10, "mx.nopolicy.test", None))
    outcomes = await postfix.deliver("rcpt@testing.test", "rcpt@none.test", "rcpt@nopolicy.test")
    for recipient, outcome in outcomes.items():
        assert (outcome.status, outcome.dsn) == ("sent", "2.0.0"), (recipient, outcome)
    # "Trusted": the chain is good but no name was checked; "Untrusted": not even the chain
    assert outcomes["rcpt@testing.test"].tls == {"mx.testing.test": "Trusted"}
    assert outcomes["rcpt@none.test"].tls == {"mx.none.test": "Untrusted"}
    assert outcomes["rcpt@nopolicy.test"].tls == {}
    assert_arrived(mail, "mx.testing.test", outcomes["rcpt@testing.test"])
    assert_arrived(mail, "mx.none.test", outcomes["rcpt@none.test"])
    assert_arrived(mail, "mx.nopolicy.test", outcomes["rcpt@nopolicy.test"], tls=False)


async def test_enforce_skips_a_bad_mx_for_a_good_one(postfix: Postfix, mail: MailWorld) -> None:
    await add_domain(
        mail,
        "mixed.test",
        "enforce",
        (10, "bad.mixed.test", "wrong-name"),  # preferred: tried first
        (20, "good.mixed.test", "valid"),
    )
    outcome = (await postfix.deliver("rcpt@mixed.test"))["rcpt@mixed.test"]
    assert (outcome.status, outcome.relay_host) == ("sent", "good.mixed.test"), outcome
    assert outcome.tls == {"bad.mixed.test": "Untrusted", "good.mixed.test": "Verified"}
    assert "server certificate verification failed for bad.mixed.test" in outcome.text()
    assert mail.inbox.connections["bad.mixed.test"] >= 1
    assert mail.inbox.to("bad.mixed.test") == []
    assert_arrived(mail, "good.mixed.test", outcome)


# -- DANE (RFC 7672): the socketmap answers "dane-only" where the MX hosts publish usable, signed TLSA ------------


async def presented_spki_sha256(host: str, port: int) -> str:
    """SHA-256 of the SubjectPublicKeyInfo of the certificate the MX server presents after STARTTLS (the data of
    a ``3 1 1`` TLSA record, RFC 7671 §5.1)."""
    smtp = aiosmtplib.SMTP(hostname=host, port=port, start_tls=False, validate_certs=False, timeout=10)
    await smtp.connect()
    try:
        await smtp.starttls()
        ssl_object = smtp.transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True)
    finally:
        await smtp.quit()
    return spki_sha256(x509.load_der_x509_certificate(der).public_key())


def spki_sha256(key: CertificatePublicKeyTypes) -> str:
    spki = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


async def test_dane_only_from_the_socketmap(world: World, mail: MailWorld) -> None:
    # Everything a DANE answer needs is under one signed zone: the MX RRsets, the MX hosts' A records, the TLSA.
    world.sign("dane.test")
    # good: a certificate no CA vouches for, pinned by its TLSA record — only DANE can let this one through
    # (the MTA-STS enforce policy alone would refuse it: RFC 8461 §2, DANE takes precedence)
    addresses = await add_domain(mail, "good.dane.test", "enforce", (10, "mx.good.dane.test", "untrusted"))
    spki = await presented_spki_sha256(addresses["mx.good.dane.test"], mail.port)
    world.tlsa("_25._tcp.mx.good.dane.test", 3, 1, 1, spki)
    # bad: a certificate the CA vouches for, but the TLSA record pins another key — DANE must defer it
    await add_domain(mail, "bad.dane.test", "enforce", (10, "mx.bad.dane.test", "valid"))
    world.tlsa("_25._tcp.mx.bad.dane.test", 3, 1, 1, spki_sha256(ec.generate_private_key(ec.SECP256R1()).public_key()))

    async with (
        world.policy_resolver(store=MemoryStore(), fetch_timeout=5.0) as resolver,
        SocketmapServer(resolver, port=0, dane=True) as server,  # dane: being built (another engineer)
        # level 2 logs the TLSA records used and the DANE match
        postfix_instance(world, policy_map=socketmap_table(server), settings={"smtp_tls_loglevel": "2"}) as pf,
    ):
        outcomes = await pf.deliver("rcpt@good.dane.test", "rcpt@bad.dane.test")
        assert pf.problems() == []
    sent, deferred = outcomes["rcpt@good.dane.test"], outcomes["rcpt@bad.dane.test"]

    assert (sent.status, sent.dsn, sent.relay_host) == ("sent", "2.0.0", "mx.good.dane.test"), sent
    assert sent.tls == {"mx.good.dane.test": "Verified"}
    assert "DNSSEC-signed TLSA record: _25._tcp.mx.good.dane.test: 3 1 1" in sent.text(), sent.text()
    assert "Matched DANE EE certificate at depth 0: 3 1 1" in sent.text(), sent.text()
    assert_arrived(mail, "mx.good.dane.test", sent)

    assert (deferred.status, deferred.dsn, deferred.relay_host) == ("deferred", "4.7.5", "mx.bad.dane.test")
    assert "DNSSEC-signed TLSA record: _25._tcp.mx.bad.dane.test: 3 1 1" in deferred.text(), deferred.text()
    assert "no matching DANE TLSA records" in deferred.text(), deferred.text()
    assert mail.inbox.to("mx.bad.dane.test") == []
