"""The world's HTTPS server: ``https://mta-sts.<domain>/.well-known/mta-sts.txt`` (RFC 8461 §3.3), misbehaving
on request.

One aiohttp server for every domain: the TLS ``server_name`` (SNI, RFC 6066 §3) picks the certificate, the
Host header picks the domain. Misbehaviours aiohttp cannot express (an HTTP/1.0 body ended by the close,
endless header lines) are written raw on the request's transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import http
import itertools
import socket
import ssl
import struct
import zlib
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web

from ._certs import CertFactory
from ._config import DomainConfig, RequestRecord, ResponseRecord, name_key

__all__ = ["WELL_KNOWN_PATH", "HttpsServer"]

WELL_KNOWN_PATH = "/.well-known/mta-sts.txt"
DEFAULT_CERT_NAME = "unknown.invalid"
_SHUTDOWN_TIMEOUT = 0.1  # requests still running when the world exits are cancelled after this
_SLICE = 16_384  # bodies go out in awaited slices: a 10 MB body never sits whole in a send buffer


class _Response(web.StreamResponse):
    """A response that may go out without any Content-Type (aiohttp otherwise adds application/octet-stream)."""

    drop_content_type = False


async def _drop_content_type(request: web.Request, response: web.StreamResponse) -> None:
    # on_response_prepare runs after aiohttp filled in its default headers and before they are sent.
    if isinstance(response, _Response) and response.drop_content_type:
        response.headers.popall(hdrs.CONTENT_TYPE, None)


def host_of(header: str) -> str:
    """The host of a Host header: no port, lowercase, no trailing dot (``[::1]:443`` → ``::1``)."""
    header = header.strip()
    if header.startswith("["):
        return header[1:].partition("]")[0].lower()
    host, colon, port = header.rpartition(":")
    if colon and port.isdigit():
        header = host
    return name_key(header) if header else ""


def _encode(body: bytes, coding: str | None) -> bytes:
    if coding is None:
        return body
    coding = coding.strip().lower()
    if coding in ("gzip", "x-gzip"):
        return gzip.compress(body, mtime=0)
    if coding == "deflate":  # RFC 9110 §8.4.1.2: the zlib format
        return zlib.compress(body)
    return body  # identity, or a coding the world cannot produce: the header alone is the test


class HttpsServer:
    """The aiohttp application, its runner and the SNI callback."""

    def __init__(
        self,
        domains: dict[str, DomainConfig],
        certs: CertFactory,
        on_request: Callable[[RequestRecord], None],
        on_sni: Callable[[str], None],
        on_error: Callable[[BaseException], None],
        *,
        on_response: Callable[[ResponseRecord], None] = lambda record: None,
    ) -> None:
        self._domains = domains
        self._certs = certs
        self._on_request = on_request
        self._on_response = on_response
        self._on_sni = on_sni
        self._on_error = on_error
        self._runner: web.AppRunner | None = None

    async def start(self, host: str) -> int:
        """Listen on ``host`` (a free port); return the port."""
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._handle)
        app.on_response_prepare.append(_drop_content_type)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=_SHUTDOWN_TIMEOUT)
        await runner.setup()
        self._runner = runner
        context = self._certs.new_context(DEFAULT_CERT_NAME, "valid")
        context.sni_callback = self._sni
        site = web.TCPSite(runner, host, 0, ssl_context=context, backlog=4096)
        await site.start()
        port: int = runner.addresses[0][1]
        return port

    async def close(self) -> None:
        """Stop listening and close every connection (requests still running are cancelled)."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    def _sni(self, ssl_object: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext) -> int | None:
        """Switch to the certificate of ``mta-sts.<domain>`` (its ``cert`` kind); other names keep the default."""
        if server_name is None:
            return None
        try:
            self._on_sni(server_name)
            hostname = name_key(server_name)
            if hostname.startswith("mta-sts."):
                config = self._domains.get(hostname[len("mta-sts.") :])
                if config is not None:
                    ssl_object.context = self._certs.context(hostname, config.cert)
        except Exception as exc:  # never let an exception escape into OpenSSL's callback
            self._on_error(exc)
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        host = host_of(request.headers.get(hdrs.HOST, ""))
        self._on_request(RequestRecord(host, request.method, request.raw_path, request.headers))
        config = self._domains.get(host[len("mta-sts.") :]) if host.startswith("mta-sts.") else None
        if config is None or request.path != WELL_KNOWN_PATH:
            return web.Response(status=404, text="not found\n")
        return await self._serve(request, host, config)

    async def _serve(self, request: web.Request, host: str, config: DomainConfig) -> web.StreamResponse:
        if config.delay > 0:
            await asyncio.sleep(config.delay)
        body = config.body_bytes()
        status = config.status
        if config.redirect_to is not None and status == 200:
            status = 301
        elif body is None and status == 200:
            status = 404
        if body is None:
            body = b""
        elif not config.precompressed:
            body = _encode(body, config.content_encoding)
        progress = _Progress(host, status, None if config.endless_headers is not None else len(body))
        try:
            if config.endless_headers is not None:
                return await _endless_headers(request, config, status, progress)
            if config.http10:
                return await _http10(request, config, status, body, progress)
            return await _http11(request, config, status, body, progress)
        finally:
            self._on_response(progress.record())


class _Progress:
    """How far one response got (becomes a :class:`ResponseRecord`)."""

    def __init__(self, host: str, status: int, size: int | None) -> None:
        self.host, self.status, self.size = host, status, size
        self.sent = 0
        self.complete = False

    def record(self) -> ResponseRecord:
        return ResponseRecord(self.host, self.status, self.size, self.sent, self.complete)


def _has_body(request: web.Request, status: int) -> bool:
    """RFC 9112 §6.3: HEAD responses, 1xx, 204 and 304 end with the headers."""
    return request.method != hdrs.METH_HEAD and status >= 200 and status not in (204, 304)


async def _write_body(
    write: Callable[[bytes], Awaitable[None]], data: bytes, byte_delay: float, progress: _Progress
) -> None:
    """Write ``data`` in slices, each awaited (flow control: a client that stops reading stops the server)."""
    if byte_delay > 0:
        for index in range(len(data)):
            await write(data[index : index + 1])
            progress.sent += 1
            if index + 1 < len(data):
                await asyncio.sleep(byte_delay)
        return
    for start in range(0, len(data), _SLICE):
        piece = data[start : start + _SLICE]
        await write(piece)
        progress.sent += len(piece)


def _cut(transport: asyncio.Transport | None, *, reset: bool) -> None:
    """Drop the connection without a TLS close_notify; with ``reset``, with a TCP RST (SO_LINGER 0)."""
    if transport is None:
        return
    if reset:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def _http11(
    request: web.Request, config: DomainConfig, status: int, body: bytes, progress: _Progress
) -> web.StreamResponse:
    """An aiohttp response with ``Content-Length`` (RFC 9112 §6.2), misbehaving as ``config`` asks."""
    response = _Response(status=status)
    if config.content_type is None:
        response.drop_content_type = True
    else:
        response.headers[hdrs.CONTENT_TYPE] = config.content_type
    if config.content_encoding is not None:
        response.headers[hdrs.CONTENT_ENCODING] = config.content_encoding
    if config.redirect_to is not None:
        response.headers[hdrs.LOCATION] = config.redirect_to
    response.content_length = len(body)
    try:
        await response.prepare(request)
        if not _has_body(request, status):
            pass
        elif config.close_mid_body or config.reset_mid_body:
            await _write_body(response.write, body[: len(body) // 2], 0, progress)
            _cut(request.transport, reset=config.reset_mid_body)  # no close_notify, no rest of the body
            return response
        else:
            await _write_body(response.write, body, config.body_chunk_delay, progress)
        await response.write_eof()
        progress.complete = True
    except ConnectionError:  # the client went away mid-response: nothing left to do
        pass
    return response


async def _http10(
    request: web.Request, config: DomainConfig, status: int, body: bytes, progress: _Progress
) -> web.StreamResponse:
    """An HTTP/1.0 response written raw, without ``Content-Length``: the body ends when the connection
    closes (RFC 9112 §6.3 rule 8), normally with a TLS close_notify first (RFC 9112 §9.8)."""
    lines = [f"HTTP/1.0 {status} {_reason(status)}"]
    if config.content_type is not None:
        lines.append(f"Content-Type: {config.content_type}")
    if config.content_encoding is not None:
        lines.append(f"Content-Encoding: {config.content_encoding}")
    if config.redirect_to is not None:
        lines.append(f"Location: {config.redirect_to}")
    lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")
    writer, transport = request.writer, request.transport
    try:
        await writer.write(head)
        if _has_body(request, status):
            if config.close_mid_body or config.reset_mid_body:
                await _write_body(writer.write, body[: len(body) // 2], 0, progress)
                _cut(transport, reset=config.reset_mid_body)  # the client cannot tell this from the end
                return web.Response()
            await _write_body(writer.write, body, config.body_chunk_delay, progress)
        await writer.drain()
        progress.complete = True
    except ConnectionError:
        pass
    if transport is not None:
        transport.close()  # TLS close_notify, then FIN: the end of the body
    return web.Response()  # never sent: aiohttp finds the transport closed and drops it


async def _endless_headers(
    request: web.Request, config: DomainConfig, status: int, progress: _Progress
) -> web.StreamResponse:
    """A status line, then header lines forever (one every ``config.endless_headers`` seconds)."""
    writer, transport = request.writer, request.transport
    try:
        await writer.write(f"HTTP/1.1 {status} {_reason(status)}\r\nContent-Type: text/plain\r\n".encode())
        for index in itertools.count():
            line = f"X-Endless-{index}: {'x' * 40}\r\n".encode()
            await writer.write(line)
            progress.sent += len(line)
            await asyncio.sleep(config.endless_headers or 0)  # 0: as fast as the client reads
    except ConnectionError:
        pass
    _cut(transport, reset=False)
    return web.Response()


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Status"
