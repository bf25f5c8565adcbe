"""A socketmap load generator (Postfix's protocol: netstrings ``<len>:<name> <key>,``), for any server.

Run in its own worker process (``benchmarks.workers client ...``) so the server under test has a core to itself.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast


def _encode(payload: bytes) -> bytes:
    return b"%d:%s," % (len(payload), payload)


async def _read_reply(reader: asyncio.StreamReader) -> bytes:
    length = int((await reader.readuntil(b":"))[:-1])
    data = await reader.readexactly(length + 1)
    return data[:-1]


async def warm(port: int, domains: list[str], rounds: int = 20) -> dict[str, Any]:
    """Ask for every domain until each answers ``OK`` (cold lookups fill the server's cache)."""
    pending = list(domains)
    for _ in range(rounds):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        failed = []
        for start in range(0, len(pending), 100):
            chunk = pending[start : start + 100]
            writer.write(b"".join(_encode(b"postfix " + d.encode()) for d in chunk))
            await writer.drain()
            for domain in chunk:
                if not (await _read_reply(reader)).startswith(b"OK "):
                    failed.append(domain)
        writer.close()
        await writer.wait_closed()
        pending = failed
        if not pending:
            break
        await asyncio.sleep(0.5)
    return {"warm": len(domains) - len(pending), "not_ok": len(pending)}


class _LoadProtocol(asyncio.Protocol):
    """One client connection keeping ``depth`` requests in flight; replies parsed straight from the buffer
    (the client must cost less per request than the servers it measures)."""

    def __init__(self, payloads: list[bytes], depth: int, latencies: list[int], done: asyncio.Future[int]) -> None:
        self.payloads, self.depth, self.latencies, self.done = payloads, depth, latencies, done
        self.sent: list[int] = []
        self.buffer = b""
        self.received = 0
        self.ok = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio subclasses
        self._send(min(self.depth, len(self.payloads)))

    def _send(self, count: int) -> None:
        assert self.transport is not None
        start = len(self.sent)
        batch = self.payloads[start : start + count]
        now = time.perf_counter_ns()
        self.sent.extend([now] * len(batch))
        self.transport.write(b"".join(batch))

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        position, replies = 0, 0
        now = time.perf_counter_ns()
        while True:
            colon = buffer.find(b":", position)
            if colon < 0:
                break
            end = colon + 1 + int(buffer[position:colon])
            if end >= len(buffer):
                break
            if buffer.startswith(b"OK ", colon + 1):
                self.ok += 1
            self.latencies.append(now - self.sent[self.received + replies])
            replies += 1
            position = end + 1
        self.buffer = buffer[position:]
        self.received += replies
        more = min(replies, len(self.payloads) - len(self.sent))
        if more > 0:
            self._send(more)
        if self.received == len(self.payloads) and not self.done.done():
            self.done.set_result(self.ok)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(exc or ConnectionError("closed early"))


async def load(port: int, domains: list[str], connections: int, depth: int, requests: int) -> dict[str, Any]:
    """``connections`` connections, each keeping ``depth`` requests in flight (depth 1: one at a time);
    ``requests`` in all. Returns throughput and latency percentiles (send to reply, per request)."""
    loop = asyncio.get_running_loop()
    per_connection = max(1, requests // connections)
    latencies: list[int] = []
    futures: list[asyncio.Future[int]] = []
    transports = []
    start = time.perf_counter()
    for k in range(connections):
        payloads = [
            _encode(b"postfix " + domains[(k * 104729 + i * 7919) % len(domains)].encode())
            for i in range(per_connection)
        ]
        done: asyncio.Future[int] = loop.create_future()
        futures.append(done)
        transport, _ = await loop.create_connection(
            lambda payloads=payloads, done=done: _LoadProtocol(payloads, depth, latencies, done), "127.0.0.1", port
        )
        transports.append(transport)
    start = time.perf_counter()
    oks = await asyncio.gather(*futures)
    elapsed = time.perf_counter() - start
    for transport in transports:
        transport.close()
    latencies.sort()
    return {
        "connections": connections,
        "depth": depth,
        "requests": len(latencies),
        "requests_per_s": len(latencies) / elapsed,
        "p50_us": latencies[len(latencies) // 2] / 1000,
        "p99_us": latencies[int(len(latencies) * 0.99)] / 1000,
        "replies": {"ok": sum(oks), "other": len(latencies) - sum(oks)},
    }
