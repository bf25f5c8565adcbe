"""mtasts.testing: the loopback world, exercised with dnspython and aiohttp directly (not with mtasts.resolver)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gzip
import os
import socket
import ssl
import time
import zlib
from typing import Any

import aiohttp
import dns.asyncquery
import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.resolver
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from mtasts.testing import CERT_KINDS, FAILURE_KINDS, DomainConfig, DomainOptions, World

from ._tls import handshake

POLICY = "version: STSv1\nmode: enforce\nmx: mx.example.com\nmax_age: 86400\n"
WELL_KNOWN = "/.well-known/mta-sts.txt"


class WorldResolver(AbstractResolver):
    """aiohttp's host resolution through the world's DNS server (so A/AAAA records are exercised too)."""

    def __init__(self, world: World) -> None:
        self._resolver = world.resolver(lifetime=10)  # TLS handshakes starve the loop on a busy CI machine

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answer = await self._resolver.resolve(host, "A")
        return [
            ResolveResult(
                hostname=host,
                host=rdata.to_text(),
                port=port,
                family=socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for rdata in answer
        ]

    async def close(self) -> None:
        pass


def session(world: World, **kwargs: Any) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(resolver=WorldResolver(world), ssl=world.client_ssl_context(), limit=0)
    return aiohttp.ClientSession(connector=connector, **kwargs)


def url(world: World, domain: str, path: str = WELL_KNOWN) -> str:
    return f"https://mta-sts.{domain}:{world.https_port}{path}"


async def fetch(world: World, domain: str, path: str = WELL_KNOWN, **kwargs: Any) -> tuple[int, Any, bytes]:
    async with (
        session(world, auto_decompress=kwargs.pop("auto_decompress", True)) as client,
        client.get(url(world, domain, path), allow_redirects=False, **kwargs) as response,
    ):
        return response.status, response.headers, await response.read()


async def query(
    world: World, name: str, rdtype: str = "TXT", *, tcp: bool = False, **kwargs: Any
) -> dns.message.Message:
    message = dns.message.make_query(name, rdtype, **kwargs)
    send = dns.asyncquery.tcp if tcp else dns.asyncquery.udp
    response: dns.message.Message = await send(message, world.host, timeout=2, port=world.dns_port)
    return response


def exists(path: str) -> bool:
    return os.path.exists(path)


def txt_strings(answer: dns.resolver.Answer) -> list[tuple[bytes, ...]]:
    return sorted(tuple(rdata.strings) for rdata in answer)


# -- DNS: TXT discovery records (RFC 8461 §3.1) ----------------------------------------------------------------


async def test_txt_record_from_id(world: World) -> None:
    world.publish("example.com", POLICY, id="20240101T000000")
    answer = await world.resolver().resolve("_mta-sts.example.com", "TXT")
    assert txt_strings(answer) == [(b"v=STSv1; id=20240101T000000;",)]
    assert answer.response.flags & dns.flags.AA
    assert world.dns_queries == {("_mta-sts.example.com", "TXT"): 1}
    assert world.queries("_MTA-STS.example.com.", "txt") == world.queries("_mta-sts.example.com") == 1
    assert [(r.name, r.rdtype, r.transport) for r in world.dns_log] == [("_mta-sts.example.com", "TXT", "udp")]


async def test_explicit_txt_multi_string_and_several_records(world: World) -> None:
    world.publish("example.com", POLICY, txt=[["v=STSv1; ", "id=abc;"], "v=spf1 -all"])
    answer = await world.resolver().resolve("_mta-sts.example.com", "TXT")
    assert txt_strings(answer) == [(b"v=STSv1; ", b"id=abc;"), (b"v=spf1 -all",)]


async def test_changes_apply_to_the_next_query(world: World) -> None:
    config = world.publish("example.com", POLICY, id="1")
    config.id = "2"
    answer = await world.resolver().resolve("_mta-sts.example.com", "TXT")
    assert txt_strings(answer) == [(b"v=STSv1; id=2;",)]
    config.txt = []
    with pytest.raises(dns.resolver.NoAnswer):
        await world.resolver().resolve("_mta-sts.example.com", "TXT")


async def test_long_plain_txt_is_split_into_character_strings(world: World) -> None:
    text = "v=TLSRPTv1; rua=mailto:" + "r" * 600 + "@example.com"
    world.add_record("_smtp._tls.example.com", "TXT", text)
    answer = await world.resolver().resolve("_smtp._tls.example.com", "TXT")
    (strings,) = txt_strings(answer)
    assert [len(s) for s in strings] == [255, 255, len(text) - 510]
    assert b"".join(strings).decode() == text


async def test_cname_chain_is_followed_in_the_answer(world: World) -> None:
    world.publish("a.example", POLICY, txt_cname="_mta-sts.b.example.")
    world.publish("b.example", POLICY, txt_cname="sts-alias.c.example")
    world.add_record("sts-alias.c.example", "CNAME", "_mta-sts.c.example")
    world.publish("c.example", POLICY, id="c7")
    answer = await world.resolver().resolve("_mta-sts.a.example", "TXT")
    assert txt_strings(answer) == [(b"v=STSv1; id=c7;",)]
    assert answer.canonical_name.to_text() == "_mta-sts.c.example."
    assert len(answer.response.answer) == 4  # three CNAMEs and the TXT set
    assert world.queries("_mta-sts.a.example", "TXT") == 1  # one query: the server followed the chain


async def test_cname_to_a_missing_name_is_nxdomain_with_the_cname(world: World) -> None:
    world.publish("a.example", POLICY, txt_cname="_mta-sts.nowhere.example")
    response = await query(world, "_mta-sts.a.example")
    assert response.rcode() == dns.rcode.NXDOMAIN
    assert [rrset.name.to_text() for rrset in response.answer] == ["_mta-sts.a.example."]


async def test_cname_loop_is_servfail_and_does_not_hang(world: World) -> None:
    world.publish("a.example", POLICY, txt_cname="_mta-sts.b.example")
    world.publish("b.example", POLICY, txt_cname="_mta-sts.a.example")
    response = await query(world, "_mta-sts.a.example")
    assert response.rcode() == dns.rcode.SERVFAIL
    world.add_record("self.example", "CNAME", "self.example")
    assert (await query(world, "self.example", "A")).rcode() == dns.rcode.SERVFAIL
    assert (await query(world, "self.example", "CNAME")).answer  # a CNAME query is answered, not followed


@pytest.mark.parametrize(
    ("failure", "rcode", "error"),
    [
        ("nxdomain", dns.rcode.NXDOMAIN, dns.resolver.NXDOMAIN),
        ("servfail", dns.rcode.SERVFAIL, dns.resolver.NoNameservers),
        ("refused", dns.rcode.REFUSED, dns.resolver.NoNameservers),
        ("nodata", dns.rcode.NOERROR, dns.resolver.NoAnswer),
    ],
)
async def test_txt_failures(world: World, failure: str, rcode: dns.rcode.Rcode, error: type[Exception]) -> None:
    world.publish("example.com", POLICY, txt_failure=failure)
    response = await query(world, "_mta-sts.example.com")
    assert response.rcode() == rcode
    assert not response.answer
    with pytest.raises(error):
        await world.resolver().resolve("_mta-sts.example.com", "TXT")
    assert world.queries("_mta-sts.example.com", "TXT") == 2


async def test_txt_timeout_is_silence_over_udp_and_tcp(world: World) -> None:
    world.publish("example.com", POLICY, txt_failure="timeout")
    started = time.monotonic()
    with pytest.raises(dns.resolver.LifetimeTimeout):
        await world.resolver(lifetime=0.3).resolve("_mta-sts.example.com", "TXT")
    assert time.monotonic() - started < 1.5
    message = dns.message.make_query("_mta-sts.example.com", "TXT")
    with pytest.raises(dns.exception.Timeout):
        await dns.asyncquery.tcp(message, world.host, timeout=0.2, port=world.dns_port)
    assert {r.transport for r in world.dns_log} == {"udp", "tcp"}
    assert (await query(world, "mta-sts.example.com", "A")).answer  # the rest of the domain still answers


async def test_set_failure_overrides_and_clears(world: World) -> None:
    world.add_record("example.com", "MX", "10 mx1.example.com")
    world.set_failure("EXAMPLE.com.", "servfail")
    assert (await query(world, "example.com", "MX")).rcode() == dns.rcode.SERVFAIL
    world.set_failure("example.com", None)
    answer = await world.resolver().resolve("example.com", "MX")
    assert [rdata.to_text() for rdata in answer] == ["10 mx1.example.com."]
    with pytest.raises(ValueError, match="kind"):
        world.set_failure("example.com", "time-out")


async def test_udp_truncation_then_tcp_retry(world: World) -> None:
    records: list[str | list[str]] = [f"v=STSv1; id={i:03d};" + "x" * 180 for i in range(10)]
    world.publish("big.example", POLICY, txt=records)
    answer = await world.resolver().resolve("_mta-sts.big.example", "TXT")
    assert len(answer) == 10
    assert [r.transport for r in world.dns_log] == ["udp", "tcp"]
    truncated = await query(world, "_mta-sts.big.example")
    assert truncated.flags & dns.flags.TC and not truncated.answer
    large = await query(world, "_mta-sts.big.example", use_edns=0, payload=4096)
    assert not large.flags & dns.flags.TC and len(large.answer[0]) == 10


async def test_policy_host_addresses(world: World) -> None:
    config = world.publish("example.com", POLICY, policy_host_addresses=["127.0.0.1", "::1"])
    resolver = world.resolver()
    assert [r.to_text() for r in await resolver.resolve("mta-sts.example.com", "A")] == ["127.0.0.1"]
    assert [r.to_text() for r in await resolver.resolve("mta-sts.example.com", "AAAA")] == ["::1"]
    config.policy_host_addresses = []
    with pytest.raises(dns.resolver.NXDOMAIN):
        await resolver.resolve("mta-sts.example.com", "A")
    config.policy_host_addresses = ["127.0.0.1"]
    config.policy_host_failure = "servfail"
    assert (await query(world, "mta-sts.example.com", "A")).rcode() == dns.rcode.SERVFAIL
    assert (await query(world, "_mta-sts.example.com")).answer  # TXT unaffected


async def test_names_outside_the_world_and_unpublish(world: World) -> None:
    world.publish("example.com", POLICY)
    assert (await query(world, "example.com", "MX")).rcode() == dns.rcode.NOERROR  # the domain itself exists
    assert (await query(world, "elsewhere.example", "A")).rcode() == dns.rcode.NXDOMAIN
    world.unpublish("EXAMPLE.COM.")
    for name in ("_mta-sts.example.com", "mta-sts.example.com", "example.com"):
        assert (await query(world, name, "A")).rcode() == dns.rcode.NXDOMAIN
    with pytest.raises(KeyError):
        world.domain("example.com")


async def test_add_and_remove_records(world: World) -> None:
    world.add_record("example.com", "MX", "10 mx1.example.com.")
    world.add_record("example.com", "mx", "20 mx2.example.com", ttl=60)
    world.add_record("mx1.example.com", "A", "127.0.0.1")
    world.add_record("mx1.example.com", "AAAA", "::1")
    world.add_record("_smtp._tls.example.com", "TXT", ["v=TLSRPTv1; ", "rua=mailto:r@example.com"])
    answer = await world.resolver().resolve("example.com", "MX")
    assert sorted(rdata.to_text() for rdata in answer) == ["10 mx1.example.com.", "20 mx2.example.com."]
    assert answer.rrset is not None and answer.rrset.ttl == 60
    tlsrpt = await world.resolver().resolve("_smtp._tls.example.com", "TXT")
    assert txt_strings(tlsrpt) == [(b"v=TLSRPTv1; ", b"rua=mailto:r@example.com")]
    world.remove_records("mx1.example.com", "AAAA")
    assert (await query(world, "mx1.example.com", "AAAA")).rcode() == dns.rcode.NOERROR  # A still there
    world.remove_records("mx1.example.com")
    assert (await query(world, "mx1.example.com", "A")).rcode() == dns.rcode.NXDOMAIN
    with pytest.raises(TypeError):
        world.add_record("example.com", "MX", ["10 a.example."])


async def test_malformed_queries_are_ignored_and_tcp_carries_several_queries(world: World) -> None:
    world.publish("example.com", POLICY, id="9")
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, remote_addr=(world.host, world.dns_port)
    )
    try:
        for garbage in (
            b"",
            b"\x00",
            b"\xff" * 40,
            dns.message.make_response(dns.message.make_query("a.", "A")).to_wire(),
        ):
            transport.sendto(garbage)
    finally:
        transport.close()
    reader, writer = await asyncio.open_connection(world.host, world.dns_port)
    try:
        garbage = b"\x12\x34garbage"
        writer.write(len(garbage).to_bytes(2, "big") + garbage)
        for name in ("_mta-sts.example.com", "mta-sts.example.com"):
            wire = dns.message.make_query(name, "TXT").to_wire()
            writer.write(len(wire).to_bytes(2, "big") + wire)
        await writer.drain()
        responses = []
        for _ in range(2):
            size = int.from_bytes(await reader.readexactly(2), "big")
            responses.append(dns.message.from_wire(await reader.readexactly(size)))
    finally:
        writer.close()
        await writer.wait_closed()
    assert responses[0].answer[0][0].to_text() == '"v=STSv1; id=9;"'
    assert responses[1].rcode() == dns.rcode.NOERROR and not responses[1].answer
    assert world.errors == []
    assert world.queries("_mta-sts.example.com") == 1


# -- HTTPS: the policy host (RFC 8461 §3.3) --------------------------------------------------------------------


async def test_fetch_policy_records_sni_and_request(world: World) -> None:
    world.publish("example.com", POLICY)
    status, headers, body = await fetch(world, "example.com")
    assert (status, body.decode()) == (200, POLICY)
    assert headers["Content-Type"] == "text/plain"
    assert world.sni_names == ["mta-sts.example.com"]
    assert world.requests("MTA-STS.example.com") == 1
    assert world.http_requests == {"mta-sts.example.com": 1}
    (record,) = world.request_log
    assert (record.host, record.method, record.path) == ("mta-sts.example.com", "GET", WELL_KNOWN)
    assert record.headers["host"] == f"mta-sts.example.com:{world.https_port}"
    assert "If-None-Match" not in record.headers and "if-none-match" not in record.headers
    assert world.queries("mta-sts.example.com", "A") == 1


async def test_trust_through_ca_pem_path(world: World) -> None:
    world.publish("example.com", POLICY)
    context = ssl.create_default_context(cafile=world.ca_pem_path)
    reader, writer = await asyncio.open_connection(
        world.host, world.https_port, ssl=context, server_hostname="mta-sts.example.com"
    )
    writer.write(b"GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: mta-sts.example.com\r\nConnection: close\r\n\r\n")
    data = await reader.read()
    writer.close()
    with contextlib.suppress(ssl.SSLError, ConnectionError):
        await writer.wait_closed()
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(POLICY.encode())


@pytest.mark.parametrize(
    ("kind", "verify_code"),
    [
        ("valid", None),
        ("wildcard", None),
        ("expired", 10),  # X509_V_ERR_CERT_HAS_EXPIRED
        ("not-yet-valid", 9),  # X509_V_ERR_CERT_NOT_YET_VALID
        ("wrong-name", 62),  # X509_V_ERR_HOSTNAME_MISMATCH
        ("cn-only", 62),  # no subjectAltName, and no CN fallback
        ("untrusted", 20),  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    ],
)
async def test_policy_host_certificate_kinds(world: World, kind: str, verify_code: int | None) -> None:
    world.publish("example.com", POLICY, cert=kind)
    if verify_code is None:
        assert (await fetch(world, "example.com"))[0] == 200
    else:
        with pytest.raises(aiohttp.ClientConnectorCertificateError) as caught:
            await fetch(world, "example.com")
        error = caught.value.certificate_error
        assert isinstance(error, ssl.SSLCertVerificationError) and error.verify_code == verify_code
        assert world.requests("mta-sts.example.com") == 0
    assert world.sni_names == ["mta-sts.example.com"]


async def test_unknown_sni_gets_the_default_certificate(world: World) -> None:
    context = world.client_ssl_context()
    context.check_hostname = False
    for server_hostname in ("mta-sts.unpublished.example", None):
        _, writer = await asyncio.open_connection(
            world.host, world.https_port, ssl=context, server_hostname=server_hostname or ""
        )
        peer = writer.get_extra_info("peercert")
        writer.close()
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            await writer.wait_closed()
        assert peer["subjectAltName"] == (("DNS", "unknown.invalid"),)
    assert world.sni_names == ["mta-sts.unpublished.example"]


async def test_unknown_hosts_and_paths_are_404(world: World) -> None:
    world.publish("example.com", None)
    assert (await fetch(world, "example.com"))[0] == 404  # policy None
    world.domain("example.com").policy = POLICY
    assert (await fetch(world, "example.com", "/other.txt"))[0] == 404
    assert (await fetch(world, "example.com", WELL_KNOWN + "?x=1"))[0] == 200
    # Valid SNI and certificate for mta-sts.example.com, but a Host header naming a domain not in the world:
    assert (await fetch(world, "example.com", headers={"Host": "mta-sts.stranger.example"}))[0] == 404
    assert world.requests("mta-sts.stranger.example") == 1
    assert world.request_log[2].path == WELL_KNOWN + "?x=1"


async def test_status_redirect_and_missing_content_type(world: World) -> None:
    config = world.publish("example.com", POLICY, status=500)
    status, _, body = await fetch(world, "example.com")
    assert (status, body.decode()) == (500, POLICY)
    config.status, config.redirect_to = 200, "https://elsewhere.example/.well-known/mta-sts.txt"
    status, headers, _ = await fetch(world, "example.com")
    assert (status, headers["Location"]) == (301, config.redirect_to)
    config.status = 307
    assert (await fetch(world, "example.com"))[0] == 307
    config.status, config.redirect_to, config.content_type = 200, None, None
    status, headers, body = await fetch(world, "example.com")
    assert status == 200 and "Content-Type" not in headers and body.decode() == POLICY
    config.content_type = "text/html; charset=utf-8"
    assert (await fetch(world, "example.com"))[1]["Content-Type"] == "text/html; charset=utf-8"


@pytest.mark.parametrize(("coding", "decompress"), [("gzip", gzip.decompress), ("deflate", zlib.decompress)])
async def test_content_encoding(world: World, coding: str, decompress: Any) -> None:
    world.publish("example.com", POLICY, content_encoding=coding)
    _, headers, raw = await fetch(world, "example.com", auto_decompress=False)
    assert headers["Content-Encoding"] == coding
    assert raw != POLICY.encode() and decompress(raw) == POLICY.encode()
    assert (await fetch(world, "example.com"))[2] == POLICY.encode()
    world.publish("bomb.example", body=b"x" * 1_000_000, content_encoding="gzip")  # the body override too
    _, headers, raw = await fetch(world, "bomb.example", auto_decompress=False)
    assert len(raw) < 10_000 and int(headers["Content-Length"]) == len(raw)
    assert gzip.decompress(raw) == b"x" * 1_000_000


async def test_body_override(world: World) -> None:
    world.publish("example.com", POLICY, body=b"v" * 65537)
    _, headers, body = await fetch(world, "example.com")
    assert body == b"v" * 65537 and headers["Content-Length"] == "65537"


async def test_delay_before_headers(world: World) -> None:
    world.publish("example.com", POLICY, delay=0.3)
    started = time.monotonic()
    assert (await fetch(world, "example.com"))[0] == 200
    assert time.monotonic() - started >= 0.3
    with pytest.raises(asyncio.TimeoutError):
        await fetch(world, "example.com", timeout=aiohttp.ClientTimeout(total=0.1))


async def test_body_chunk_delay(world: World) -> None:
    world.publish("example.com", body=b"abcde", body_chunk_delay=0.05)
    async with session(world) as client, client.get(url(world, "example.com")) as response:
        started = time.monotonic()
        chunks = [chunk async for chunk in response.content.iter_any()]
        elapsed = time.monotonic() - started
    assert b"".join(chunks) == b"abcde" and len(chunks) >= 3
    assert 0.15 <= elapsed < 2


async def test_close_mid_body(world: World) -> None:
    world.publish("example.com", POLICY, close_mid_body=True)
    with pytest.raises(aiohttp.ClientPayloadError):
        await fetch(world, "example.com")
    world.domain("example.com").close_mid_body = False
    assert (await fetch(world, "example.com"))[2] == POLICY.encode()  # the server is fine afterwards


async def test_many_concurrent_queries_and_requests(world: World) -> None:
    for i in range(50):
        world.publish(f"d{i}.example", POLICY, id=str(i))
    resolver = world.resolver(lifetime=10)  # the clients, not the server, are slow on a busy CI machine
    answers = await asyncio.gather(*(resolver.resolve(f"_mta-sts.d{i % 50}.example", "TXT") for i in range(1000)))
    assert [txt_strings(a)[0][0] for a in answers[:3]] == [b"v=STSv1; id=0;", b"v=STSv1; id=1;", b"v=STSv1; id=2;"]

    async with session(world) as client:

        async def one(i: int) -> bytes:
            async with client.get(url(world, f"d{i % 50}.example")) as response:
                assert response.status == 200
                return await response.read()

        bodies = await asyncio.gather(*(one(i) for i in range(300)))
    assert set(bodies) == {POLICY.encode()}
    assert sum(world.http_requests.values()) == 300 and world.errors == []


# -- certificates for MX servers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "verify_code"),
    [
        ("valid", None),
        ("wildcard", None),
        ("expired", 10),
        ("not-yet-valid", 9),
        ("wrong-name", 62),
        ("cn-only", 62),
        ("untrusted", 20),
    ],
)
def test_server_ssl_context_kinds(kind: str, verify_code: int | None) -> None:
    world = World()  # no servers needed: contexts are plain data
    context = world.server_ssl_context("MX.example.com.", kind)
    assert world.server_ssl_context("mx.example.com", kind) is context  # cached
    error = handshake(world.client_ssl_context(), context, "mx.example.com")
    if verify_code is None:
        assert error is None
    else:
        assert isinstance(error, ssl.SSLCertVerificationError) and error.verify_code == verify_code


def test_server_ssl_context_rejects_unknown_kinds() -> None:
    world = World()
    with pytest.raises(ValueError, match="kind"):
        world.server_ssl_context("mx.example.com", "self-signed")
    with pytest.raises(ValueError, match="parent"):
        world.server_ssl_context("localhost", "wildcard")
    assert {"valid", "expired", "wrong-name", "untrusted", "cn-only", "wildcard", "not-yet-valid"} == CERT_KINDS


# -- the API around the servers --------------------------------------------------------------------------------


async def test_publish_ten_thousand_domains_is_fast(world: World) -> None:
    started = time.perf_counter()
    for i in range(10_000):
        world.publish(f"domain{i}.example", POLICY, id=str(i))
    assert time.perf_counter() - started < 2
    answer = await world.resolver().resolve("_mta-sts.domain9999.example", "TXT")
    assert txt_strings(answer) == [(b"v=STSv1; id=9999;",)]
    assert (await fetch(world, "domain4321.example"))[2] == POLICY.encode()


def test_publish_normalises_names_and_validates_fields() -> None:
    world = World()
    config = world.publish("Example.COM.", POLICY.encode(), id="7", cert="wildcard")
    assert world.domain("example.com") is config and world.domain("EXAMPLE.com.") is config
    assert (config.policy, config.id, config.cert, config.txt_records()) == (
        POLICY.encode(),
        "7",
        "wildcard",
        ["v=STSv1; id=7;"],
    )
    assert world.publish("Bücher.example").txt_records() == ["v=STSv1; id=1;"]
    assert world.domain("xn--bcher-kva.example").policy is None
    with pytest.raises(ValueError, match="txt_failure"):
        config.txt_failure = "timed-out"
    with pytest.raises(ValueError, match="kind"):
        world.publish("bad.example", cert="expird")
    with pytest.raises(ValueError):
        config.policy_host_addresses = ["localhost"]
    with pytest.raises(TypeError):
        world.publish("bad.example", colour="red")  # type: ignore[call-arg]
    with pytest.raises(KeyError):
        world.unpublish("never.example")
    assert {"nxdomain", "servfail", "timeout", "nodata", "refused"} == FAILURE_KINDS


def test_domain_options_match_the_dataclass() -> None:
    fields = {field.name for field in dataclasses.fields(DomainConfig)} - {"policy", "id"}
    assert set(DomainOptions.__annotations__) == fields
    assert DomainConfig().policy_host_addresses == ["127.0.0.1"]


async def test_resolver_and_client_context_settings(world: World) -> None:
    resolver = world.resolver(lifetime=0.5)
    assert resolver is not world.resolver()
    assert isinstance(resolver, dns.asyncresolver.Resolver)
    assert resolver.nameservers == ["127.0.0.1"] and resolver.port == world.dns_port
    assert resolver.cache is None and resolver.lifetime == 0.5 and 0 < resolver.timeout <= 0.5
    context = world.client_ssl_context()
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2 and not context.hostname_checks_common_name
    assert len(context.get_ca_certs()) == 1


async def test_reset_counters(world: World) -> None:
    world.publish("example.com", POLICY)
    await fetch(world, "example.com")
    assert world.dns_queries and world.http_requests and world.request_log and world.sni_names and world.dns_log
    world.reset_counters()
    assert not (world.dns_queries or world.http_requests or world.request_log or world.sni_names or world.dns_log)
    assert world.queries("mta-sts.example.com") == 0 and world.requests("mta-sts.example.com") == 0


async def test_clean_shutdown_with_work_in_flight() -> None:
    world = World()
    with pytest.raises(RuntimeError):
        _ = world.dns_port
    async with world:
        world.publish("slow.example", POLICY, delay=30)
        world.publish("silent.example", POLICY, txt_failure="timeout")
        ca_path, dns_port, https_port = world.ca_pem_path, world.dns_port, world.https_port
        assert exists(ca_path)
        client = session(world)
        pending_http = asyncio.create_task(client.get(url(world, "slow.example")))
        message = dns.message.make_query("_mta-sts.silent.example", "TXT")
        pending_dns = asyncio.create_task(dns.asyncquery.tcp(message, world.host, timeout=30, port=dns_port))
        while world.requests("mta-sts.slow.example") == 0 or world.queries("_mta-sts.silent.example") == 0:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        started = time.monotonic()
    assert time.monotonic() - started < 2
    with pytest.raises((aiohttp.ClientError, ConnectionError)):
        await pending_http
    with pytest.raises((EOFError, ConnectionError)):
        await pending_dns
    await client.close()
    assert not exists(ca_path)
    for port in (dns_port, https_port):
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(world.host, port)
    assert asyncio.all_tasks() == {asyncio.current_task()}
    with pytest.raises(RuntimeError):
        await world.__aenter__()


# -- DANE support: TLSA records and zones marked signed (AD bit, RFC 6840 §5.7) ---------------------------------


async def _ask(world: World, name: str, rdtype: str, *, ad: bool = False, do: bool = False) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, want_dnssec=do)
    if ad:
        query.flags |= dns.flags.AD
    return await dns.asyncquery.udp(query, world.dns_host, port=world.dns_port, timeout=2)


async def test_tlsa_record_and_ad_bit_only_for_signed_zones_and_only_when_asked() -> None:
    async with World() as world:
        world.tlsa("_25._tcp.mx.signed.example", 3, 1, 1, "ab" * 32)
        world.add_record("mx.plain.example", "A", "127.0.0.2")
        world.add_record("alias.signed.example", "CNAME", "mx.plain.example")
        world.sign("signed.example")
        answer = await _ask(world, "_25._tcp.mx.signed.example", "TLSA", ad=True)
        assert answer.flags & dns.flags.AD
        assert answer.answer[0].to_text().endswith("TLSA 3 1 1 " + "ab" * 32)
        assert (await _ask(world, "_25._tcp.mx.signed.example", "TLSA", do=True)).flags & dns.flags.AD
        assert not (await _ask(world, "_25._tcp.mx.signed.example", "TLSA")).flags & dns.flags.AD  # not asked
        assert not (await _ask(world, "mx.plain.example", "A", ad=True)).flags & dns.flags.AD  # not signed
        # a CNAME chain leaving the signed zones is not validated as a whole
        assert not (await _ask(world, "alias.signed.example", "A", ad=True)).flags & dns.flags.AD
        # authenticated denial: NXDOMAIN in a signed zone carries AD; SERVFAIL (a bogus signature) never does
        missing = await _ask(world, "_25._tcp.nothing.signed.example", "TLSA", ad=True)
        assert missing.rcode() == dns.rcode.NXDOMAIN and missing.flags & dns.flags.AD
        world.set_failure("_25._tcp.mx.signed.example", "servfail")
        bogus = await _ask(world, "_25._tcp.mx.signed.example", "TLSA", ad=True)
        assert bogus.rcode() == dns.rcode.SERVFAIL and not bogus.flags & dns.flags.AD
        world.unsign("signed.example")
        world.set_failure("_25._tcp.mx.signed.example", None)
        assert not (await _ask(world, "_25._tcp.mx.signed.example", "TLSA", ad=True)).flags & dns.flags.AD


async def test_dns_server_on_a_chosen_address_and_port() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.9", 0))
        port = probe.getsockname()[1]
    async with World(dns_host="127.0.0.9", dns_port=port) as world:
        assert (world.dns_host, world.dns_port) == ("127.0.0.9", port)
        world.add_record("mx.example", "A", "127.0.0.2")
        answer = await world.resolver().resolve("mx.example", "A")
        assert [r.to_text() for r in answer] == ["127.0.0.2"]
