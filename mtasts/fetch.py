"""The strict HTTPS policy fetch (RFC 8461 §3.2, §3.3, §7.1, §8.2) over aiohttp.

``GET https://mta-sts.<domain>[:port]/.well-known/mta-sts.txt`` with:

* the host resolved through the caller's dnspython resolver (one world for DNS and HTTPS);
* SNI and the certificate checked for ``mta-sts.<domain>`` (DNS-ID only, §3.3, §7.1);
* status 200 only, redirects never followed (§3.3 MUST NOT), no HTTP caching (§3.3, §8.2 MUST NOT: no
  validators are sent, no cache is kept, ``trust_env=False`` keeps environment proxies out);
* ``Content-Type: text/plain`` (parameters ignored, §3.2 SHOULD; a missing type fails — decisions table);
* a total deadline (connect to last byte, §3.3 MAY; default 60 s) and a body cap (default 64 KiB,
  inclusive), counted on *decoded* bytes: a ``Content-Encoding: gzip`` bomb stops at the cap (C14);
* every foreign exception mapped here, once, to :class:`PolicyFetchError` / :class:`PolicyWebPKIError`
  / :class:`PolicyError` with its RFC 8460 result type (decisions table) — or to :class:`LocalError` when the
  failure was this machine's (no free descriptor, buffer or local port; the fetch queue full past its wait),
  which says nothing about the domain.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import aiohttp.abc

from . import dns as mtasts_dns
from ._exceptions import exception_chain, local_os_error
from ._gate import Gate
from .errors import HostLookupError, LocalError, MTASTSError, PolicyError, PolicyFetchError, PolicyWebPKIError
from .policy import Policy, parse_policy

__all__ = ["FetchReport", "PolicyFetcher", "policy_url"]

WELL_KNOWN_PATH = "/.well-known/mta-sts.txt"
_CHUNK = 16_384


def policy_url(domain: str, port: int = 443) -> str:
    """The policy URL for an A-label ``domain`` (§3.2): ``https://mta-sts.<domain>/.well-known/mta-sts.txt``."""
    authority = f"mta-sts.{domain}" if port == 443 else f"mta-sts.{domain}:{port}"
    return f"https://{authority}{WELL_KNOWN_PATH}"


@dataclass
class FetchReport:
    """What a fetch saw, for diagnostics (``mtasts check``): filled in as far as the fetch got."""

    url: str
    status: int | None = None
    content_type: str | None = None
    body: bytes | None = None
    error: MTASTSError | None = None


class _DnsPythonResolver(aiohttp.abc.AbstractResolver):
    """aiohttp's name resolution through the caller's dnspython resolver (so one resolver defines the world)."""

    def __init__(self, resolver: mtasts_dns.DnsResolver) -> None:
        self._resolver = resolver

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[aiohttp.abc.ResolveResult]:
        try:
            addresses = await mtasts_dns.resolve_addresses(self._resolver, host)
        except HostLookupError as exc:  # the policy host: a fetch failure (decisions table)
            raise PolicyFetchError(exc.message) from None
        return [
            {
                "hostname": host,
                "host": address,
                "port": port,
                "family": socket.AF_INET6 if ":" in address else socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
            for address in addresses
        ]

    async def close(self) -> None:
        return None


def _is_certificate_error(exc: BaseException) -> bool:
    return any(
        isinstance(link, ssl.SSLCertVerificationError | aiohttp.ClientConnectorCertificateError)
        for link in exception_chain(exc)
    )


@contextlib.contextmanager
def _map_exceptions(url: str, timeout: float) -> Iterator[None]:
    """The one place where aiohttp / ssl / socket / dnspython exceptions become mtasts errors."""
    try:
        yield
    except MTASTSError:
        raise
    except aiohttp.ServerTimeoutError as exc:  # (a TimeoutError too: caught first) the idle timeout
        raise PolicyFetchError(f"{url}: the host stopped answering ({type(exc).__name__})") from None
    except TimeoutError:
        raise PolicyFetchError(f"{url}: no complete response within {timeout:g} s") from None
    except (aiohttp.ClientError, OSError, ValueError, EOFError, zlib.error) as exc:
        local = local_os_error(exc)
        if local is not None:
            raise LocalError(f"{url}: a local resource ran out: {local.strerror or local}") from None
        detail = f"{url}: {type(exc).__name__}: {exc}"
        if _is_certificate_error(exc):
            raise PolicyWebPKIError(detail) from None
        raise PolicyFetchError(detail) from None


class _Decoder:
    """Content-Encoding decoding with a bound on the output (a decompression bomb stops at the cap)."""

    def __init__(self, encoding: str) -> None:
        self._zlib: Any = None
        if encoding in ("", "identity"):
            return
        if encoding in ("gzip", "x-gzip"):
            self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self._zlib = zlib.decompressobj(zlib.MAX_WBITS | 32)  # zlib or gzip header, auto-detected
        else:
            raise PolicyFetchError(f"unsupported Content-Encoding {encoding!r}")

    def decode(self, chunk: bytes, limit: int) -> bytes:
        """Decode ``chunk``, producing at most ``limit`` bytes (more input may remain unconsumed)."""
        if self._zlib is None:
            return chunk[:limit]
        return bytes(self._zlib.decompress(chunk, limit))

    def finish(self) -> None:
        """The body ended: a compressed stream must have ended too, with nothing after it (never parse a prefix)."""
        if self._zlib is not None and (not self._zlib.eof or self._zlib.unused_data):
            raise PolicyFetchError("the compressed body is truncated or followed by other data")


class PolicyFetcher:
    """Fetches and parses policies over HTTPS; one aiohttp session, bounded concurrency.

    Create inside a running event loop (the session is made on first use) and close with :meth:`aclose`.
    """

    def __init__(
        self,
        *,
        dns_resolver: mtasts_dns.DnsResolver,
        ssl_context: ssl.SSLContext,
        port: int = 443,
        timeout: float = 60.0,
        idle_timeout: float = 15.0,
        max_size: int = 65_536,
        max_concurrent: int = 512,
        queue_timeout: float = 30.0,
        user_agent: str = "mtasts",
    ) -> None:
        self._dns_resolver = dns_resolver
        self._ssl_context = ssl_context
        self._port = port
        self._timeout = timeout
        # A host that sends nothing for idle_timeout (no TCP/TLS connection, no response, a stalled body) is given
        # up before the total deadline: hung hosts hold a fetch slot for seconds, not a minute (docs/security.md).
        self._client_timeout = aiohttp.ClientTimeout(
            total=None, connect=min(idle_timeout, timeout), sock_read=min(idle_timeout, timeout)
        )
        self._max_size = max_size
        self._gate = Gate(max_concurrent, queue_timeout, "policy fetch")
        self._headers = {
            "User-Agent": user_agent,
            "Accept": "text/plain",
            "Accept-Encoding": "identity",
            "Cache-Control": "no-cache",
        }
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                resolver=_DnsPythonResolver(self._dns_resolver),
                ssl=self._ssl_context,
                use_dns_cache=False,
                force_close=True,  # every policy host is a different host: keep no idle connections
                limit=0,  # the semaphore bounds concurrency
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                trust_env=False,  # no proxy (and so no caching proxy) from the environment (§8.2)
                auto_decompress=False,  # decoded here, under the size cap
                cookie_jar=aiohttp.DummyCookieJar(),
                max_field_size=8190,
                max_line_size=8190,
            )
        return self._session

    async def aclose(self) -> None:
        """Close the HTTP session (idempotent)."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def fetch(self, domain: str) -> Policy:
        """Fetch and parse the policy of the A-label ``domain``.

        Raises :class:`PolicyFetchError` (``sts-policy-fetch-error``), :class:`PolicyWebPKIError`
        (``sts-webpki-invalid``) or :class:`PolicyError` (``sts-policy-invalid``).
        """
        return parse_policy(await self.fetch_body(domain))

    async def fetch_body(self, domain: str, report: FetchReport | None = None) -> bytes:
        """Fetch the raw policy body (decoded, at most ``max_size`` bytes) after every HTTP-level check."""
        url = policy_url(domain, self._port)
        async with self._gate:
            with _map_exceptions(url, self._timeout):
                async with asyncio.timeout(self._timeout):
                    return await self._get(url, report)

    async def fetch_report(self, domain: str) -> FetchReport:
        """Fetch like :meth:`fetch_body`, never raising: the status, media type, certificate, body or error."""
        report = FetchReport(policy_url(domain, self._port))
        try:
            report.body = await self.fetch_body(domain, report)
        except MTASTSError as exc:
            report.error = exc
        return report

    async def _get(self, url: str, report: FetchReport | None = None) -> bytes:
        session = self._get_session()
        async with session.get(
            url, allow_redirects=False, headers=self._headers, timeout=self._client_timeout
        ) as response:
            if report is not None:
                report.status = response.status
                report.content_type = response.headers.get("Content-Type")
            if response.status != 200:
                where = response.headers.get("Location")
                detail = f" to {where[:200]!r} (redirects are not followed)" if where else ""
                raise PolicyFetchError(f"{url}: HTTP {response.status}{detail} (RFC 8461 §3.3: 200 only)")
            _check_content_type(url, response.headers.get("Content-Type"))
            _check_framing(url, response)
            decoder = _Decoder(response.headers.get("Content-Encoding", "").strip().lower())
            return await self._read_capped(url, response, decoder)

    async def _read_capped(self, url: str, response: aiohttp.ClientResponse, decoder: _Decoder) -> bytes:
        """Read at most ``max_size`` decoded bytes; one byte more is an error (never truncate-then-parse)."""
        limit = self._max_size + 1
        body = bytearray()
        while True:
            chunk = await response.content.read(_CHUNK)
            if not chunk:
                break
            body += decoder.decode(chunk, limit - len(body))
            if len(body) >= limit:
                raise PolicyError(f"{url}: the policy is larger than {self._max_size} bytes")
        decoder.finish()
        return bytes(body)


def _check_framing(url: str, response: aiohttp.ClientResponse) -> None:
    """The body's end must be knowable: a Content-Length or chunked transfer coding (decisions table).

    A body delimited only by the connection closing (HTTP/1.0 style) cannot be told from one an attacker cut
    short with a TCP FIN or RST — asyncio reports a close without TLS close_notify like a clean one — and a cut
    ``max_age: 86400`` reads as a valid ``max_age: 8`` (RFC 9112 §9.8: such a response is incomplete).
    """
    chunked = "chunked" in response.headers.get("Transfer-Encoding", "").lower()
    if response.content_length is None and not chunked:
        raise PolicyFetchError(f"{url}: a body without Content-Length or chunked coding (truncation undetectable)")


def _check_content_type(url: str, content_type: str | None) -> None:
    """§3.2: "senders SHOULD validate that the media type is "text/plain"" — parameters are ignored."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type != "text/plain":
        shown = "no Content-Type" if content_type is None else f"Content-Type {content_type[:80]!r}"
        raise PolicyError(f"{url}: {shown}, expected text/plain (RFC 8461 §3.2)")
