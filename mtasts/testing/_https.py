"""The world's HTTPS server: ``https://mta-sts.<domain>/.well-known/mta-sts.txt`` (RFC 8461 §3.3), misbehaving
on request.

One aiohttp server for every domain: the TLS ``server_name`` (SNI, RFC 6066 §3) picks the certificate, the
Host header picks the domain.
"""

from __future__ import annotations

import asyncio
import gzip
import ssl
import zlib
from collections.abc import Callable

from aiohttp import hdrs, web

from ._certs import CertFactory
from ._config import DomainConfig, RequestRecord, name_key

__all__ = ["WELL_KNOWN_PATH", "HttpsServer"]

WELL_KNOWN_PATH = "/.well-known/mta-sts.txt"
DEFAULT_CERT_NAME = "unknown.invalid"
_SHUTDOWN_TIMEOUT = 0.1  # requests still running when the world exits are cancelled after this


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
    ) -> None:
        self._domains = domains
        self._certs = certs
        self._on_request = on_request
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
        return await self._serve(request, config)

    async def _serve(self, request: web.Request, config: DomainConfig) -> web.StreamResponse:
        if config.delay > 0:
            await asyncio.sleep(config.delay)
        body = config.body_bytes()
        status = config.status
        if config.redirect_to is not None and status == 200:
            status = 301
        elif body is None and status == 200:
            status = 404
        body = b"" if body is None else _encode(body, config.content_encoding)
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
            if request.method == hdrs.METH_HEAD or status < 200 or status in (204, 304):
                pass  # RFC 9112 §6.3: these responses end with the headers
            elif config.close_mid_body:
                await response.write(body[: len(body) // 2])
                if request.transport is not None:
                    request.transport.abort()  # no TLS close_notify, no rest of the body
                return response
            elif config.body_chunk_delay > 0:
                for index in range(len(body)):
                    await response.write(body[index : index + 1])
                    if index + 1 < len(body):
                        await asyncio.sleep(config.body_chunk_delay)
            else:
                await response.write(body)
            await response.write_eof()
        except ConnectionError:  # the client went away mid-response: nothing left to do
            pass
        return response
