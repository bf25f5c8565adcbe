"""The unbound harness (tests/_unbound.py): a real validator's AD bit, SERVFAIL and authenticated denial.

RFC 4035 §3.2.3 (AD only for data the resolver validated), RFC 6840 §5.7 (only when the query set AD or DO),
RFC 4035 §5.5 (bogus data is SERVFAIL), RFC 4035 §3.2.2 (CD: the answer without checking).
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import dns.asyncresolver
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.resolver
import pytest
import trustme

from ._unbound import BOGUS, PLAIN, SIGNED, SignedDNS, Zone, answer, signed_dns, standard_zones, tlsa_3_1_1

_BIG_TEXT = " ".join(f'"{"x" * 250}"' for _ in range(8))  # about 2 kB: over the 1232-byte UDP payload


@pytest.fixture(scope="module")
def cert_pem() -> bytes:
    return trustme.CA().issue_cert("mx.signed.test").cert_chain_pems[0].bytes()


def _zones(cert_pem: bytes) -> list[Zone]:
    zones = standard_zones(cert_pem)
    signed = zones[0]
    signed.add("big", "TXT", _BIG_TEXT)
    signed.add("alias", "CNAME", "mx")
    signed.add_tlsa("broken", cert_pem, bad_signature=True)
    signed.add("broken", "A", "127.0.0.2")
    return zones


@pytest.fixture
async def world(cert_pem: bytes) -> AsyncIterator[SignedDNS]:
    async with signed_dns(_zones(cert_pem)) as w:
        yield w


def _ad(message: dns.message.Message) -> bool:
    return bool(message.flags & dns.flags.AD)


def _has_rrsig(message: dns.message.Message) -> bool:
    return any(rrset.rdtype == dns.rdatatype.RRSIG for rrset in message.answer)


# -- validated data -------------------------------------------------------------------------------------------------


async def test_signed_mx_and_tlsa_are_authenticated(world: SignedDNS, cert_pem: bytes) -> None:
    resolver = world.resolver()
    mx = await resolver.resolve(SIGNED, "MX")
    assert _ad(mx.response), world.log()
    assert [rr.to_text() for rr in mx] == [f"10 mx.{SIGNED}"]
    tlsa = await resolver.resolve(f"_25._tcp.mx.{SIGNED}", "TLSA")
    assert _ad(tlsa.response), world.log()
    assert [rr.to_text() for rr in tlsa] == [tlsa_3_1_1(cert_pem)]
    assert _has_rrsig(tlsa.response)  # DO asked for them


async def test_cname_chain_in_the_signed_zone_is_authenticated(world: SignedDNS) -> None:
    response = await world.query(f"alias.{SIGNED}", "A")
    assert response.rcode() == dns.rcode.NOERROR
    assert _ad(response), world.log()
    assert {rrset.rdtype for rrset in response.answer} >= {dns.rdatatype.CNAME, dns.rdatatype.A}


async def test_truncated_answer_is_fetched_over_tcp_and_validated(world: SignedDNS) -> None:
    response = await world.query(f"big.{SIGNED}", "TXT", tcp=True)
    assert _ad(response), world.log()
    assert ("big.signed.test.", "TXT", True, "tcp") in world.auth.queries  # unbound retried after TC


async def test_unsigned_zone_is_answered_without_ad(world: SignedDNS) -> None:
    answer_ = await world.resolver().resolve(PLAIN, "MX")
    assert not _ad(answer_.response)
    assert [rr.to_text() for rr in answer_] == [f"10 mx.{PLAIN}"]
    nx = await world.query(f"nope.{PLAIN}", "A")
    assert nx.rcode() == dns.rcode.NXDOMAIN
    assert not _ad(nx)


# -- bogus data -----------------------------------------------------------------------------------------------------


async def test_zone_signed_with_another_key_than_the_anchor_is_servfail(world: SignedDNS) -> None:
    for name, rdtype in ((BOGUS, "MX"), (f"_25._tcp.mx.{BOGUS}", "TLSA")):
        response = await world.query(name, rdtype)
        assert response.rcode() == dns.rcode.SERVFAIL, (name, rdtype)
        assert not response.answer
    with pytest.raises(dns.resolver.NoNameservers):
        await world.resolver().resolve(BOGUS, "MX")
    unchecked = await world.query(BOGUS, "MX", cd=True)  # CD: the data, not validated, no AD
    assert unchecked.rcode() == dns.rcode.NOERROR
    assert unchecked.answer
    assert not _ad(unchecked)


async def test_one_corrupted_rrsig_fails_only_that_rrset(world: SignedDNS) -> None:
    bad = await world.query(f"_25._tcp.broken.{SIGNED}", "TLSA")
    assert bad.rcode() == dns.rcode.SERVFAIL
    good = await world.query(f"broken.{SIGNED}", "A")
    assert good.rcode() == dns.rcode.NOERROR
    assert _ad(good), world.log()


# -- authenticated denial (RFC 4035 §5.4) ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "rdtype", "rcode"),
    [
        (f"nope.{SIGNED}", "A", dns.rcode.NXDOMAIN),
        (f"_25._tcp.nope.{SIGNED}", "TLSA", dns.rcode.NXDOMAIN),
        (f"mx.{SIGNED}", "TXT", dns.rcode.NOERROR),  # NODATA at a name that exists
        (f"_tcp.mx.{SIGNED}", "TLSA", dns.rcode.NOERROR),  # NODATA at an empty non-terminal
        (f"mx.{SIGNED}", "TLSA", dns.rcode.NOERROR),
    ],
)
async def test_denial_in_the_signed_zone_is_authenticated(world: SignedDNS, name: str, rdtype: str, rcode: int) -> None:
    response = await world.query(name, rdtype)
    assert response.rcode() == rcode
    assert not response.answer
    assert _ad(response), world.log()
    with pytest.raises(dns.resolver.NXDOMAIN if rcode == dns.rcode.NXDOMAIN else dns.resolver.NoAnswer):
        await world.resolver().resolve(name, rdtype)


# -- the AD bit only on request (RFC 6840 §5.7) ---------------------------------------------------------------------


async def test_no_ad_without_ad_or_do_in_the_query(world: SignedDNS) -> None:
    plain_query = await world.query(SIGNED, "MX", do=False)
    assert plain_query.rcode() == dns.rcode.NOERROR
    assert plain_query.answer
    assert not _ad(plain_query)
    assert not _has_rrsig(plain_query)
    ad_only = await world.query(SIGNED, "MX", do=False, ad=True)
    assert _ad(ad_only)
    assert not _has_rrsig(ad_only)  # AD asks for the bit, not for the records
    resolver = world.resolver(do=False)
    assert not _ad((await resolver.resolve(SIGNED, "MX")).response)
    assert _ad((await world.resolver(do=False, ad=True).resolve(SIGNED, "MX")).response)


# -- the harness's own parts, without unbound -----------------------------------------------------------------------


def _der_bounds(data: bytes, at: int) -> tuple[int, int]:
    """Where the content of the DER element starting at ``at`` begins and where the element ends."""
    length, content = data[at + 1], at + 2
    if length & 0x80:
        count = length & 0x7F
        length, content = int.from_bytes(data[content : content + count], "big"), content + count
    return content, content + length


def _der_fields(data: bytes, at: int) -> list[tuple[int, int]]:
    """(start, end) of each element inside the SEQUENCE starting at ``at``."""
    fields = []
    position, end = _der_bounds(data, at)
    while position < end:
        after = _der_bounds(data, position)[1]
        fields.append((position, after))
        position = after
    return fields


def test_tlsa_3_1_1_is_the_sha256_of_the_spki(cert_pem: bytes) -> None:
    """Cross-checked by walking the DER by hand: Certificate → TBSCertificate → its 7th field (RFC 5280 §4.1)."""
    import ssl

    der = ssl.PEM_cert_to_DER_cert(cert_pem.decode("ascii"))
    tbs_start, _ = _der_fields(der, 0)[0]
    fields = _der_fields(der, tbs_start)
    offset = 1 if der[fields[0][0]] == 0xA0 else 0  # the optional [0] version
    start, end = fields[offset + 5]
    spki = der[start:end]
    assert tlsa_3_1_1(cert_pem) == "3 1 1 " + hashlib.sha256(spki).hexdigest()
    assert tlsa_3_1_1(cert_pem.decode("ascii")) == tlsa_3_1_1(cert_pem)


def test_authoritative_answers_carry_rrsigs_only_with_do() -> None:
    zones = standard_zones()
    for zone in zones:
        zone.build()
    with_do = answer(zones, dns.message.make_query(f"mx.{SIGNED}", "A", want_dnssec=True))
    assert with_do.flags & dns.flags.AA
    assert _has_rrsig(with_do)
    without = answer(zones, dns.message.make_query(f"mx.{SIGNED}", "A"))
    assert without.answer
    assert not _has_rrsig(without)
    denial = answer(zones, dns.message.make_query(f"nope.{SIGNED}", "A", want_dnssec=True))
    assert denial.rcode() == dns.rcode.NXDOMAIN
    assert {rrset.rdtype for rrset in denial.authority} == {dns.rdatatype.SOA, dns.rdatatype.NSEC, dns.rdatatype.RRSIG}
    assert answer(zones, dns.message.make_query("example.com.", "A")).rcode() == dns.rcode.REFUSED
    unsigned = answer(zones, dns.message.make_query(f"mx.{PLAIN}", "A", want_dnssec=True))
    assert unsigned.answer
    assert not _has_rrsig(unsigned)


def test_records_cannot_be_added_once_built() -> None:
    zone = Zone("late.test.").add("www", "A", "127.0.0.1")
    zone.build()
    assert zone.anchor is not None
    assert zone.anchor.startswith("late.test. DS ")
    with pytest.raises(RuntimeError):
        zone.add("www", "AAAA", "::1")


async def test_resolver_points_at_unbound(world: SignedDNS) -> None:
    resolver = world.resolver()
    assert isinstance(resolver, dns.asyncresolver.Resolver)
    assert resolver.nameservers == [world.unbound_host]
    assert resolver.port == world.unbound_port
    assert world.pid is not None
