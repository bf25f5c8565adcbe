"""A raw TCP server for policy hosts that misbehave below HTTP: a TLS handshake that never completes, a
connection closed or reset at once, plaintext on the HTTPS port (RFC 8461 §3.3 fetches that never reach HTTP).

Run it on another loopback address at the world's HTTPS port and point a domain's policy host there::

    async with RawServer("127.0.0.7", world.https_port, behaviour="silent") as raw:
        world.publish("example.com", POLICY, policy_host_addresses=["127.0.0.7"])

(every ``127.0.0.0/8`` address is loopback on Linux), or give a resolver ``policy_port=raw.port``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Literal, Self, cast

__all__ = ["RAW_BEHAVIOURS", "RawConnection", "RawServer"]

#: What a :class:`RawServer` does with each connection.
RAW_BEHAVIOURS: Final = frozenset({"silent", "close", "reset", "plaintext"})

_PLAINTEXT = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


@dataclass(slots=True)
class RawConnection:
    """One accepted connection: when it opened and closed (event loop time), what arrived, who closed it."""

    opened_at: float
    closed_at: float | None = None
    received: int = 0
    closed_by: Literal["client", "server"] | None = None


class _RawProtocol(asyncio.Protocol):
    def __init__(self, server: RawServer) -> None:
        self._server = server
        self._loop = asyncio.get_running_loop()
        self.record = RawConnection(self._loop.time())
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._server.connections.append(self.record)
        self._server._open.add(self)
        behaviour = self._server.behaviour
        if behaviour in ("close", "reset"):
            self.record.closed_by = "server"
            if behaviour == "reset":
                sock = self.transport.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.transport.abort()
            else:
                self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.record.received += len(data)
        if self._server.behaviour == "plaintext" and self.transport is not None and not self.transport.is_closing():
            self.record.closed_by = "server"
            self.transport.write(_PLAINTEXT)
            self.transport.close()

    def eof_received(self) -> bool:
        return False  # the client closed its side: close ours

    def connection_lost(self, exc: Exception | None) -> None:
        self.record.closed_at = self._loop.time()
        if self.record.closed_by is None:
            self.record.closed_by = "client"
        self._server._open.discard(self)


class RawServer:
    """A TCP listener whose every connection misbehaves below HTTP (``behaviour``, one of
    :data:`RAW_BEHAVIOURS`):

    * ``"silent"`` — accept, read and discard, never send: a TLS handshake (or anything else) never completes;
    * ``"close"`` — accept, then close at once (FIN before any TLS);
    * ``"reset"`` — accept, then reset at once (TCP RST);
    * ``"plaintext"`` — answer the ClientHello with a plaintext HTTP response, then close (HTTP on port 443).

    ``connections`` records each accepted connection (:class:`RawConnection`): a test can assert when the
    client gave up. ``port=0`` picks a free port (:attr:`port`).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, behaviour: str = "silent") -> None:
        if behaviour not in RAW_BEHAVIOURS:
            raise ValueError(f"behaviour must be one of {sorted(RAW_BEHAVIOURS)}, not {behaviour!r}")
        self.host = host
        self.behaviour = behaviour
        self.connections: list[RawConnection] = []
        self._requested_port = port
        self._server: asyncio.Server | None = None
        self._open: set[_RawProtocol] = set()

    async def __aenter__(self) -> Self:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _RawProtocol(self), self.host, self._requested_port, reuse_address=True, backlog=1024
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def port(self) -> int:
        """The port listened on (inside ``async with``)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("RawServer.port is only available inside `async with`")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        """Stop listening and abort every open connection."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        for protocol in list(self._open):
            if protocol.transport is not None:
                protocol.record.closed_by = protocol.record.closed_by or "server"
                protocol.transport.abort()
        await server.wait_closed()
