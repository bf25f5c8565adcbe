"""DANE's AD bit from a real validating resolver: mtasts.dane_lookup through the suite's own unbound, which
validates loopback zones signed here with dnspython (tests/_unbound.py). The queries set AD only (no DO):
RFC 6840 §5.7 — a validating resolver then sets AD on validated answers."""

from __future__ import annotations

import pytest
import trustme

from mtasts.dane import HostState, postfix_level
from mtasts.dane_lookup import DaneResolver
from mtasts.errors import MXTransientFailure

from ._unbound import BOGUS, PLAIN, SIGNED, Zone, signed_dns, standard_zones


@pytest.fixture(scope="module")
def cert_pem() -> bytes:
    return trustme.CA().issue_cert("mx.signed.test").cert_chain_pems[0].bytes()


async def test_validated_tlsa_through_unbound_makes_the_domain_dane_only(cert_pem: bytes) -> None:
    zones = standard_zones(cert_pem)
    extra = Zone("half.test.")
    extra.add("@", "MX", "10 mx").add("@", "MX", "20 other").add("mx", "A", "127.0.0.1").add("other", "A", "127.0.0.2")
    extra.add("_25._tcp.mx", "TLSA", "3 1 1 " + "ab" * 32)
    extra.add("bad", "A", "127.0.0.3").add("_25._tcp.bad", "TLSA", "3 1 1 " + "cd" * 32, bad_signature=True)
    async with signed_dns([*zones, extra]) as dns_world:
        dane = DaneResolver(dns_world.resolver(do=False))  # DaneResolver's own copy sets AD
        signed, _ = await dane.domain(SIGNED.rstrip("."))
        assert signed.mx_secure, dns_world.log()
        assert [h.state for h in signed.hosts] == [HostState.DANE]
        assert postfix_level(signed) == "dane-only"

        plain, _ = await dane.domain(PLAIN.rstrip("."))
        assert not plain.mx_secure and postfix_level(plain) is None  # unsigned: TLSA not even asked

        with pytest.raises(MXTransientFailure):  # bogus MX RRset: SERVFAIL from the validator
            await dane.domain(BOGUS.rstrip("."))

        half, _ = await dane.domain("half.test")
        assert [(h.host, h.state) for h in half.hosts] == [
            ("mx.half.test", HostState.DANE),
            ("other.half.test", HostState.NOT_DANE),  # NSEC-proven absence of its TLSA
        ]
        tlsa, _ = await dane.tlsa("bad.half.test")  # a TLSA RRset with a broken signature
        assert tlsa.status == "failed", dns_world.log()
