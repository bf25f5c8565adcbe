"""The peer's side of the benchmarks: the CONNECT proxy, a cached hit, and a cold run in a worker process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest

pytest.importorskip("postfix_mta_sts_resolver")

from benchmarks import peer_impl
from benchmarks.proxy import ConnectProxy
from benchmarks.workers import WorldEnv, run_worker
from mtasts.testing import World

POLICY = "version: STSv1\nmode: enforce\nmx: mx.{domain}\nmax_age: 86400\n"


@pytest.fixture
async def proxy(world: World) -> AsyncIterator[ConnectProxy]:
    async with ConnectProxy(world.host, world.https_port) as proxy:
        yield proxy


async def test_proxy_pipes_tls_to_the_world(world: World, proxy: ConnectProxy) -> None:
    policy = POLICY.format(domain="example.com")
    world.publish("example.com", policy)
    assert proxy.url == f"http://127.0.0.1:{proxy.port}"
    connector = aiohttp.TCPConnector(ssl=world.client_ssl_context())
    async with aiohttp.ClientSession(connector=connector) as session:
        url = "https://mta-sts.example.com/.well-known/mta-sts.txt"
        async with session.get(url, proxy=proxy.url, allow_redirects=False) as response:
            assert response.status == 200
            assert await response.text() == policy
    assert proxy.connections == 1
    assert world.requests("mta-sts.example.com") == 1
    assert world.sni_names == ["mta-sts.example.com"]  # TLS is end to end: the world saw the client's SNI
    assert world.dns_log == []  # the client resolved nothing: the proxy tunnels by name to one address
    assert world.errors == []


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"CONNECT mta-sts.example.com:80 HTTP/1.1\r\n\r\n", b"403"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"405"),
        (b"CONNECT " + b"a" * 10_000 + b":443 HTTP/1.1\r\n\r\n", b"400"),
        (b"nonsense\r\n\r\n", b"400"),
    ],
)
async def test_proxy_refuses_other_requests(proxy: ConnectProxy, head: bytes, status: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(head)
        await writer.drain()
        assert (await reader.readline()).split(b" ")[1] == status
        assert (await asyncio.wait_for(reader.read(), 5)).endswith(b"\r\n\r\n")  # then the proxy closes
    finally:
        writer.close()
        await writer.wait_closed()


async def test_proxy_exit_closes_open_tunnels(world: World) -> None:
    async with ConnectProxy(world.host, world.https_port) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"CONNECT mta-sts.example.com:443 HTTP/1.1\r\nHost: mta-sts.example.com:443\r\n\r\n")
        await writer.drain()
        assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 200 Connection established\r\n\r\n"
    try:
        assert await asyncio.wait_for(reader.read(), 5) == b""  # the proxy closed the tunnel on exit
        assert proxy.connections == 1
    finally:
        writer.close()
        await writer.wait_closed()


async def test_hit_is_a_positive_figure() -> None:
    result = await peer_impl.hit(domains=100, iterations=1000)
    assert "error" not in result
    assert result["ns_per_op"] > 0
    assert result["responder_ns_per_op"] > 0
    assert "is_stale" in result["what"]


async def test_cold_run_in_a_worker(world: World, proxy: ConnectProxy) -> None:
    domains = [f"cold{i}.example" for i in range(20)]
    for domain in domains:
        world.publish(domain, POLICY.format(domain=domain), id="20240101")
    env = WorldEnv(world.host, world.dns_port, world.https_port, world.ca_pem_path, proxy.url)
    result = await run_worker(
        "peer",
        "cold",
        {"world": env.to_json(), "domains": domains, "concurrency": 8},
        env={"SSL_CERT_FILE": world.ca_pem_path, "https_proxy": proxy.url},
        timeout=60,
    )
    assert result.get("error") is None, result
    assert result["ok"] == 20
    assert result["failed"] == 0
    assert result["statuses"] == {"VALID": 20}
    assert result["seconds"] > 0
    for domain in domains:
        # Per cold domain the peer asks one TXT query and makes one HTTPS request (through one tunnel); it
        # never resolves mta-sts.<domain> itself: through a proxy, the proxy reaches the host.
        assert world.queries(f"_mta-sts.{domain}", "TXT") == 1
        assert world.queries(f"mta-sts.{domain}") == 0
        assert world.requests(f"mta-sts.{domain}") == 1
    assert len(world.dns_log) == 20
    assert proxy.connections == 20  # a new aiohttp session, hence a new connection, per fetch
    assert world.errors == []
