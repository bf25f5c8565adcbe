"""A load generator for ``mtasts serve-http``: ``GET /v1/policy/{domain}`` over keep-alive HTTP/1.1 connections.

Run in its own worker process (``benchmarks.workers http-client ...``) so the server under test has a core to itself.
The load itself speaks HTTP/1.1 straight from an asyncio protocol (request bytes prepared in advance, responses
framed by their Content-Length) — the client must cost less per request than the server it measures; the warm-up
uses aiohttp's client.
"""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Any, cast

_FROM_CACHE = b'"from_cache": true'


def _request(domain: str) -> bytes:
    return f"GET /v1/policy/{domain} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()


async def warm(port: int, domains: list[str], rounds: int = 20) -> dict[str, Any]:
    """Ask for every domain until each answers 200 with an enforce policy (cold lookups fill the cache)."""
    import aiohttp  # noqa: PLC0415

    pending = list(domains)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=50)) as session:

        async def enforced(domain: str) -> bool:
            async with session.get(f"http://127.0.0.1:{port}/v1/policy/{domain}") as response:
                return response.status == 200 and (await response.json()).get("mode") == "enforce"

        for _ in range(rounds):
            results = await asyncio.gather(*(enforced(d) for d in pending), return_exceptions=True)
            pending = [d for d, ok in zip(pending, results, strict=True) if ok is not True]
            if not pending:
                break
            await asyncio.sleep(0.5)
    return {"warm": len(domains) - len(pending), "not_ok": len(pending)}


class _LoadProtocol(asyncio.Protocol):
    """One keep-alive connection, one request at a time; responses parsed straight from the buffer."""

    def __init__(self, requests: list[bytes], latencies: list[int], done: asyncio.Future[tuple[int, int]]) -> None:
        self.requests, self.latencies, self.done = requests, latencies, done
        self.buffer = b""
        self.received = 0
        self.ok = 0
        self.hits = 0
        self.sent_at = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio subclasses
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        self.sent_at = time.perf_counter_ns()
        self.transport.write(self.requests[self.received])

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        end_of_head = buffer.find(b"\r\n\r\n")
        if end_of_head < 0:
            self.buffer = buffer
            return
        head = buffer[:end_of_head].lower()
        at = head.find(b"\r\ncontent-length:") + 17  # aiohttp always sends it
        stop = head.find(b"\r\n", at)
        length = int(head[at : stop if stop >= 0 else None])
        end = end_of_head + 4 + length
        if len(buffer) < end:
            self.buffer = buffer
            return
        self.latencies.append(time.perf_counter_ns() - self.sent_at)
        if head.startswith(b"http/1.1 200 "):
            self.ok += 1
            if _FROM_CACHE in buffer[end_of_head:end]:
                self.hits += 1
        self.buffer = buffer[end:]
        self.received += 1
        if self.received < len(self.requests):
            self._send()
        elif not self.done.done():
            self.done.set_result((self.ok, self.hits))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(exc or ConnectionError("closed early"))


async def load(port: int, domains: list[str], connections: int, requests: int) -> dict[str, Any]:
    """``connections`` keep-alive connections, one request at a time each; ``requests`` in all. Returns throughput,
    latency percentiles (send to complete response) and how many answers were 200 and cache hits."""
    loop = asyncio.get_running_loop()
    per_connection = max(1, requests // connections)
    latencies: list[int] = []
    futures: list[asyncio.Future[tuple[int, int]]] = []
    transports = []
    prepared = [_request(domain) for domain in domains]
    for k in range(connections):
        batch = [prepared[(k * 104729 + i * 7919) % len(prepared)] for i in range(per_connection)]
        done: asyncio.Future[tuple[int, int]] = loop.create_future()
        futures.append(done)
        transport, _ = await loop.create_connection(functools.partial(_LoadProtocol, batch, latencies, done),
                                                    "127.0.0.1", port)  # fmt: skip
        transports.append(transport)
    start = time.perf_counter()
    counts = await asyncio.gather(*futures)
    elapsed = time.perf_counter() - start
    for transport in transports:
        transport.close()
    latencies.sort()
    ok = sum(c[0] for c in counts)
    return {
        "connections": connections,
        "requests": len(latencies),
        "requests_per_s": len(latencies) / elapsed,
        "p50_us": latencies[len(latencies) // 2] / 1000,
        "p99_us": latencies[int(len(latencies) * 0.99)] / 1000,
        "replies": {"ok": ok, "other": len(latencies) - ok},
        "cache_hits": sum(c[1] for c in counts),
    }
