"""DANE (RFC 7672): the pure rules of mtasts/dane.py as tables, and the lookups of mtasts/dane_lookup.py
against the loopback world (TLSA records, zones marked signed: AD only when asked, RFC 6840 §5.7)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mtasts.dane import (
    DomainDane,
    HostDane,
    HostState,
    TlsaAnswer,
    TlsaRecord,
    TlsaStatus,
    association_data,
    host_state,
    is_usable,
    match_end_entity,
    match_trust_anchor,
    postfix_level,
    subject_public_key_info,
    tlsa_name,
)
from mtasts.dane_lookup import DaneResolver, validating_resolver
from mtasts.errors import MXPermanentFailure, MXTransientFailure
from mtasts.testing import World

SHA = bytes(32)


@pytest.mark.parametrize(
    ("usage", "selector", "mtype", "data", "usable"),
    [
        (3, 1, 1, SHA, True),
        (2, 0, 1, SHA, True),
        (3, 0, 2, bytes(64), True),
        (3, 1, 0, b"\x30\x00", True),
        (0, 1, 1, SHA, False),  # PKIX-TA: not for SMTP (RFC 7672 §3.1.3)
        (1, 1, 1, SHA, False),  # PKIX-EE
        (3, 2, 1, SHA, False),  # unknown selector
        (3, 1, 3, SHA, False),  # unknown matching type
        (3, 1, 1, bytes(31), False),  # a SHA-256 digest of the wrong length
        (3, 1, 2, SHA, False),
        (3, 1, 0, b"", False),
    ],
)
def test_usable_records(usage: int, selector: int, mtype: int, data: bytes, usable: bool) -> None:
    assert is_usable(TlsaRecord(usage, selector, mtype, data)) is usable


USABLE = TlsaRecord(3, 1, 1, SHA)
UNUSABLE = TlsaRecord(1, 1, 1, SHA)

# (mx_secure, address_secure, tlsa, expected state) — the table in mtasts/dane.py's docstring
HOST_TABLE = [
    (False, True, TlsaAnswer(TlsaStatus.SECURE, (USABLE,)), HostState.NOT_DANE),  # §2.2.1
    (True, False, TlsaAnswer(TlsaStatus.SECURE, (USABLE,)), HostState.NOT_DANE),  # §2.2.2
    (True, True, TlsaAnswer(TlsaStatus.FAILED, error="SERVFAIL"), HostState.FAILED),  # §2.1.1
    (True, True, TlsaAnswer(TlsaStatus.INSECURE), HostState.NOT_DANE),
    (True, True, TlsaAnswer(TlsaStatus.SECURE_NONE), HostState.NOT_DANE),
    (True, True, TlsaAnswer(TlsaStatus.SECURE, (UNUSABLE,)), HostState.UNUSABLE),
    (True, True, TlsaAnswer(TlsaStatus.SECURE, (UNUSABLE, USABLE)), HostState.DANE),
    (True, True, None, HostState.NOT_DANE),
]


@pytest.mark.parametrize(("mx_secure", "address_secure", "tlsa", "expected"), HOST_TABLE)
def test_host_state_table(mx_secure: bool, address_secure: bool, tlsa: TlsaAnswer | None, expected: HostState) -> None:
    state = host_state("mx.example", mx_secure=mx_secure, address_secure=address_secure, tlsa=tlsa)
    assert state.state is expected
    assert state.records == ((USABLE,) if expected is HostState.DANE else ())


@pytest.mark.parametrize(
    ("states", "level"),
    [
        ((HostState.DANE, HostState.DANE), "dane-only"),
        ((HostState.DANE, HostState.NOT_DANE), "dane-only"),  # mixed: docs/decisions.md
        ((HostState.FAILED, HostState.NOT_DANE), "dane-only"),  # a failed TLSA lookup never falls back
        ((HostState.NOT_DANE, HostState.NOT_DANE), None),
        ((HostState.UNUSABLE, HostState.NOT_DANE), None),  # no usable record: MTA-STS still applies
        ((), None),
    ],
)
def test_postfix_level(states: tuple[HostState, ...], level: str | None) -> None:
    hosts = tuple(HostDane(f"mx{i}.example", s) for i, s in enumerate(states))
    assert postfix_level(DomainDane("example", True, hosts)) == level


def test_tlsa_name() -> None:
    assert tlsa_name("mx.example.") == "_25._tcp.mx.example"
    assert tlsa_name("mx.example", 587) == "_587._tcp.mx.example"


async def test_association_data_and_matching_agree_with_cryptography() -> None:
    async with World() as world:
        leaf = world._certs.leaf_der("mx.example")
        ca = world._certs.issuer_der()
    parsed = x509.load_der_x509_certificate(leaf)
    spki = parsed.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert subject_public_key_info(leaf) == spki
    assert association_data(leaf, 1, 1) == hashlib.sha256(spki).digest()
    assert association_data(leaf, 0, 2) == hashlib.sha512(leaf).digest()
    assert association_data(leaf, 0, 0) == leaf
    ee = TlsaRecord(3, 1, 1, hashlib.sha256(spki).digest())
    assert match_end_entity([UNUSABLE, ee], leaf) == ee
    assert match_end_entity([TlsaRecord(3, 1, 1, SHA)], leaf) is None
    assert match_end_entity([TlsaRecord(2, 1, 1, ee.data)], leaf) is None  # a DANE-TA record is not for the leaf
    ta = TlsaRecord(2, 0, 1, hashlib.sha256(ca).digest())
    assert match_trust_anchor([ta], [leaf, ca]) == ca
    assert match_trust_anchor([ta], [leaf]) is None  # the server did not send its trust anchor
    assert match_trust_anchor([TlsaRecord(2, 0, 0, ca)], [leaf]) == ca  # a full certificate in the record
    assert match_trust_anchor([TlsaRecord(2, 0, 1, hashlib.sha256(leaf).digest())], [leaf, ca]) is None


def test_malformed_certificate_never_matches() -> None:
    assert match_end_entity([TlsaRecord(3, 1, 1, SHA)], b"\x30\x82\xff") is None
    assert match_end_entity([TlsaRecord(3, 1, 1, SHA)], b"") is None


# -- lookups against the world ----------------------------------------------------------------------------------


@pytest.fixture
async def dane_world() -> AsyncIterator[World]:
    async with World() as world:
        world.add_record("signed.example", "MX", "10 mx1.signed.example.")
        world.add_record("signed.example", "MX", "20 mx2.signed.example.")
        world.add_record("mx1.signed.example", "A", "127.0.0.2")
        world.add_record("mx2.signed.example", "A", "127.0.0.3")
        world.tlsa("_25._tcp.mx1.signed.example", 3, 1, 1, world.tlsa_data("mx1.signed.example"))
        world.sign("signed.example")
        world.add_record("plain.example", "MX", "10 mx.plain.example.")
        world.add_record("mx.plain.example", "A", "127.0.0.4")
        world.tlsa("_25._tcp.mx.plain.example", 3, 1, 1, world.tlsa_data("mx.plain.example"))
        yield world


async def test_lookup_signed_domain_with_one_dane_host(dane_world: World) -> None:
    dane = DaneResolver(dane_world.resolver())
    state, ttl = await dane.domain("signed.example")
    assert state.mx_secure
    assert [(h.host, h.state) for h in state.hosts] == [
        ("mx1.signed.example", HostState.DANE),
        ("mx2.signed.example", HostState.NOT_DANE),  # authenticated denial of its TLSA
    ]
    assert postfix_level(state) == "dane-only"
    assert 60 <= ttl <= 3600
    assert dane_world.queries("_25._tcp.mx1.signed.example", "TLSA") == 1


async def test_lookup_unsigned_domain_is_not_dane_even_with_tlsa(dane_world: World) -> None:
    state, _ = await DaneResolver(dane_world.resolver()).domain("plain.example")
    assert not state.mx_secure and not state.applies
    assert dane_world.queries("_25._tcp.mx.plain.example", "TLSA") == 0  # not even asked (§2.2.1)


async def test_lookup_tlsa_servfail_on_a_signed_host_fails_that_host(dane_world: World) -> None:
    dane_world.set_failure("_25._tcp.mx2.signed.example", "servfail")
    state, ttl = await DaneResolver(dane_world.resolver()).domain("signed.example")
    assert state.hosts[1].state is HostState.FAILED and state.hosts[1].error
    assert ttl == 60  # a failure is re-checked soon


async def test_lookup_insecure_address_of_a_host_in_a_signed_mx_rrset(dane_world: World) -> None:
    dane_world.add_record("signed.example", "MX", "30 mx.plain.example.")
    state, _ = await DaneResolver(dane_world.resolver()).domain("signed.example")
    assert state.hosts[2].host == "mx.plain.example" and state.hosts[2].state is HostState.NOT_DANE


async def test_lookup_mx_failures(dane_world: World) -> None:
    dane = DaneResolver(dane_world.resolver())
    dane_world.set_failure("signed.example", "servfail")
    with pytest.raises(MXTransientFailure):
        await dane.domain("signed.example")
    with pytest.raises(MXPermanentFailure):
        await dane.domain("nowhere.example")


def test_validating_resolver_sets_ad_on_a_copy(dane_world: World) -> None:
    import dns.flags

    original = dane_world.resolver()
    clone = validating_resolver(original)
    assert clone is not original and clone.flags is not None and clone.flags & dns.flags.AD
    assert not (original.flags or 0) & dns.flags.AD
    assert clone.nameservers == original.nameservers and clone.port == original.port
