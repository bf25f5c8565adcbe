"""A tiny HTTP CONNECT proxy on loopback, so the peer (which always fetches ``https://mta-sts.<domain>/``, port
443) reaches the world's HTTPS server on its free port.

Every ``CONNECT <host>:443`` tunnel is piped byte for byte to ``(target_host, target_port)``; TLS stays end to
end (the world's server picks the certificate by SNI), so the client verifies exactly what it would verify
without the proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Self

__all__ = ["ConnectProxy"]

HEADER_LIMIT = 8192  # bytes of request line + headers before the proxy gives up on a client
HEADER_TIMEOUT = 10.0  # seconds a client has to send its CONNECT request
CONNECT_TIMEOUT = 10.0  # seconds to reach the target
CHUNK = 65536


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, asyncio.CancelledError):
        await writer.wait_closed()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy ``reader`` to ``writer`` until EOF, then half-close ``writer`` (if it can)."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof() and not writer.is_closing():
            writer.write_eof()
    except OSError:
        # A reset on either side ends this direction; the other direction ends when its socket closes.
        writer.close()


class ConnectProxy:
    """``async with ConnectProxy(host, port) as proxy``: an HTTP CONNECT proxy at :attr:`url`.

    Only ``CONNECT <anything>:443`` is accepted (403 for other ports, 405 for other methods, 400 for a
    malformed or oversized request head, 502 if the target cannot be reached). :attr:`connections` counts the
    client connections accepted. On exit the listener stops and every open tunnel is closed.
    """

    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = host
        self.port = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        """The proxy URL, e.g. for ``https_proxy`` or aiohttp's ``proxy=``."""
        return f"http://{self.host}:{self.port}"

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._handle, self.host, 0, limit=HEADER_LIMIT)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.connections += 1
        try:
            await self._tunnel(reader, writer)
        except asyncio.CancelledError:
            pass  # the proxy is closing: the finally clause closes the client
        finally:
            await _close(writer)
            self._handlers.discard(task)

    async def _tunnel(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(HEADER_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
            await self._refuse(writer, "400 Bad Request")
            return
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            await self._refuse(writer, "400 Bad Request")
            return
        method, authority, _ = parts
        if method != "CONNECT":
            await self._refuse(writer, "405 Method Not Allowed")
            return
        _, sep, port = authority.rpartition(":")
        if not sep or port != "443":
            await self._refuse(writer, "403 Forbidden")
            return
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                target_reader, target_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except (OSError, TimeoutError):
            await self._refuse(writer, "502 Bad Gateway")
            return
        try:
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            await asyncio.gather(_pipe(reader, target_writer), _pipe(target_reader, writer))
        except OSError:
            pass
        finally:
            await _close(target_writer)

    @staticmethod
    async def _refuse(writer: asyncio.StreamWriter, status: str) -> None:
        with contextlib.suppress(OSError):
            writer.write(f"HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
