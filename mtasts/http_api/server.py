"""The HTTP API server: an aiohttp application over a :class:`~mtasts.resolver.PolicyResolver` (docs/http-api.md).

Routes: ``GET /v1/policy/{domain}``, ``POST /v1/verdict``, ``GET /v1/openapi.json``. Every answer is JSON, errors
included: a middleware turns aiohttp's own error responses (404 for an unknown route, 405, 413) and any internal
error into ``{"error": "..."}``, so no HTML or text page ever leaves. The bodies come from
:mod:`mtasts.http_api.answers`; this module only moves them.

Limits: request bodies of at most ``max_body`` bytes (4 KiB; 413 above); a body must arrive within
``request_timeout`` (408), and a lookup still running after ``request_timeout`` is answered 503 with
``Retry-After`` — never a 200 "no policy" — while the shared lookup goes on and fills the cache for the retry.
A lookup that cannot answer now (``PolicyLookup.defer``: a local fault, or ``dns_error = "defer"``) is a 503 too,
with the full answer in its body. Idle keep-alive connections close after ``idle_timeout``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, Final

from aiohttp import web

from .._checks import check_count, check_seconds
from ..decision import LookupStatus
from ..domain import normalize_domain
from ..errors import DomainError, UsageError
from ..resolver import NOT_CACHED, PolicyLookup, PolicyResolver
from ..socketmap.overrides import Override, check_overrides
from .answers import parse_verdict_request, policy_answer, verdict_answer
from .openapi import openapi_document

__all__ = ["DEFAULT_MAX_BODY", "DEFAULT_PORT", "DEFAULT_RETRY_AFTER", "HttpApiServer", "make_app"]

log = logging.getLogger("mtasts.http_api")

#: The TCP port of ``mtasts serve-http`` when ``--listen`` names none (the socketmap's is 8461).
DEFAULT_PORT: Final = 8462
#: Bytes a request body may hold (a verdict request is well under 1 KiB).
DEFAULT_MAX_BODY: Final = 4096
#: Seconds a 503's ``Retry-After`` asks the client to wait.
DEFAULT_RETRY_AFTER: Final = 5

#: Seconds a client whose body was refused (413, 408) gets to finish sending it before its connection closes.
_LINGERING_TIME: Final = 1.0

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Unavailable(Exception):
    """No answer now: a 503 with ``Retry-After``; ``body`` is the deferred answer, if the lookup gave one."""

    def __init__(self, message: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.body = body


class _Api:
    """The route handlers and their counters."""

    def __init__(
        self,
        resolver: PolicyResolver,
        *,
        request_timeout: float,
        retry_after: int,
        max_body: int,
        no_policy: frozenset[str] = frozenset(),
    ) -> None:
        self.resolver = resolver
        #: normalised domains with a TOML override ``policy = "none"``: answered as without MTA-STS, no lookup
        self.no_policy = no_policy
        self.overridden = 0  # requests so answered
        self._cached_policy = resolver.cached_policy  # the synchronous hot read (an attribute, not a method)
        self.request_timeout = request_timeout
        self.retry_after = retry_after
        self.max_body = max_body
        self.openapi = json.dumps(openapi_document(), indent=1).encode()
        self.requests = 0  # API requests answered (any status)
        self.bad_requests = 0  # 4xx
        self.timeouts = 0  # 503 or 408 after request_timeout
        self.deferred = 0  # 503 for a lookup that cannot answer now (defer)
        self.errors = 0  # internal errors (500, or 503 for a lookup that raised)

    # -- routes -----------------------------------------------------------------------------------------------

    async def policy(self, request: web.Request) -> web.StreamResponse:
        # The resolver normalises the name and refuses a bad one before any I/O (DomainError: a 400).
        lookup = await self._lookup(request.match_info["domain"])
        answer = policy_answer(lookup)
        if lookup.defer:
            raise self._deferred(lookup, answer)
        return _json_response(200, answer)

    async def verdict(self, request: web.Request) -> web.StreamResponse:
        asked = parse_verdict_request(await self._body(request))
        lookup = await self._lookup(asked.domain)
        answer = verdict_answer(lookup, asked)
        if lookup.defer:
            raise self._deferred(lookup, answer)
        return _json_response(200, answer)

    async def openapi_json(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=self.openapi, content_type="application/json")

    # -- the steps ------------------------------------------------------------------------------------------

    async def _body(self, request: web.Request) -> bytes:
        length = request.content_length
        if length is not None and length > self.max_body:
            raise web.HTTPRequestEntityTooLarge(self.max_body, length)
        try:
            async with asyncio.timeout(self.request_timeout):
                return await request.read()
        except TimeoutError:
            self.timeouts += 1
            raise web.HTTPRequestTimeout() from None

    async def _lookup(self, domain: str) -> PolicyLookup:
        if self.no_policy:
            overridden = self._overridden(domain)
            if overridden is not None:
                return overridden
        try:
            if self._cached_policy(domain) is not NOT_CACHED:
                # Memory answers (a cached policy or a remembered negative answer): no I/O, so no timer — a timer
                # per request would cost more than the lookup itself.
                return await self.resolver.lookup(domain)
            async with asyncio.timeout(self.request_timeout):
                return await self.resolver.lookup(domain)
        except TimeoutError:
            self.timeouts += 1
            log.info("policy lookup for %s still running after %g s: answered 503", domain, self.request_timeout)
            raise _Unavailable(
                f"the policy lookup for {domain} is still running after {self.request_timeout:g} s: try again later"
            ) from None
        except DomainError as exc:
            raise UsageError(f"domain: {exc.message}") from None
        except Exception:
            self.errors += 1
            log.exception("policy lookup for %s failed", domain)
            raise _Unavailable(f"the policy lookup for {domain} failed on this host: try again later") from None

    def _overridden(self, domain: str) -> PolicyLookup | None:
        """The answer for a domain the operator overrode with ``policy = "none"`` (logged on every use, as the
        socketmap does), or None."""
        try:
            normalized = normalize_domain(domain)
        except DomainError:
            return None  # (the lookup refuses it: a 400)
        if normalized not in self.no_policy:
            return None
        self.overridden += 1
        log.warning("override for %s: policy = none, answered as without MTA-STS", normalized,
                    extra={"event": "override", "domain": normalized, "answer": "notfound"})  # fmt: skip
        return PolicyLookup(normalized, LookupStatus.NOT_APPLICABLE, error='TOML override: policy = "none"')

    def _deferred(self, lookup: PolicyLookup, answer: dict[str, Any]) -> _Unavailable:
        self.deferred += 1
        log.info("policy lookup for %s: %s (%s): answered 503", lookup.domain, lookup.status, lookup.error)
        local = lookup.status == LookupStatus.LOCAL_ERROR
        why = "failed on this host" if local else "failed in DNS (dns_error = defer)"
        return _Unavailable(f"the policy lookup for {lookup.domain} {why}: try again later", answer)

    # -- every answer JSON --------------------------------------------------------------------------------------

    @web.middleware
    async def json_errors(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        """Every error as ``{"error": ...}`` JSON with its status code; nothing of aiohttp's own pages."""
        self.requests += 1
        try:
            return await handler(request)
        except UsageError as exc:
            self.bad_requests += 1
            return _json_response(400, {"error": exc.message})
        except _Unavailable as exc:
            body = {**(exc.body or {}), "error": exc.message}
            return _json_response(503, body, {"Retry-After": str(self.retry_after)})
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            if exc.status < 500:
                self.bad_requests += 1
            headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            response = _json_response(exc.status, {"error": self._http_error(request, exc)}, headers)
            if exc.status in (408, 413):  # the rest of the body is not read: the connection cannot be reused
                response.force_close()
            return response
        except Exception:
            self.errors += 1
            log.exception("internal error answering %s %s", request.method, request.path[:200])
            return _json_response(500, {"error": "internal error (logged): treat it as temporary"})

    def _http_error(self, request: web.Request, exc: web.HTTPException) -> str:
        path = request.path if len(request.path) <= 200 else f"{request.path[:200]}..."
        if isinstance(exc, web.HTTPNotFound):
            return f"no such route: {path} (routes: /v1/policy/{{domain}}, /v1/verdict, /v1/openapi.json)"
        if isinstance(exc, web.HTTPMethodNotAllowed):
            return f"{path} does not take {exc.method} (allowed: {', '.join(sorted(exc.allowed_methods))})"
        if isinstance(exc, web.HTTPRequestEntityTooLarge):
            return f"the request body is larger than {self.max_body} bytes"
        if isinstance(exc, web.HTTPRequestTimeout):
            return f"the request body did not arrive within {self.request_timeout:g} s"
        return f"{exc.status} {exc.reason}"


def _json_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=json.dumps(body).encode(), content_type="application/json", headers=headers)


_API_KEY: Final = web.AppKey("mtasts.http_api", _Api)


def make_app(
    resolver: PolicyResolver,
    *,
    request_timeout: float = 30.0,
    retry_after: int = DEFAULT_RETRY_AFTER,
    max_body: int = DEFAULT_MAX_BODY,
    overrides: Mapping[str, Override] | None = None,
) -> web.Application:
    """The aiohttp application of the HTTP API over ``resolver`` (started and closed by the caller). Of the TOML
    ``overrides``, ``policy = "none"`` applies (an ``answer`` is a Postfix reply, for the socketmap only)."""
    check_seconds("request_timeout", request_timeout, positive=True)
    check_count("retry_after", retry_after)
    check_count("max_body", max_body)
    no_policy = frozenset(domain for domain, override in check_overrides(overrides or {}).items()
                          if override.kind == "none")  # fmt: skip
    api = _Api(resolver, request_timeout=request_timeout, retry_after=retry_after, max_body=max_body,
               no_policy=no_policy)  # fmt: skip
    app = web.Application(middlewares=[api.json_errors], client_max_size=max_body)
    app[_API_KEY] = api
    app.router.add_get("/v1/policy/{domain}", api.policy)
    app.router.add_post("/v1/verdict", api.verdict)
    app.router.add_get("/v1/openapi.json", api.openapi_json)
    return app


class HttpApiServer:
    """The HTTP API listening on ``host:port`` (port 0: any free port, then :attr:`port`).

    Use as ``async with HttpApiServer(resolver, port=0) as server:``, or :meth:`start` and :meth:`aclose`. The
    resolver is the caller's: started before, closed after. Counters: ``requests``, ``bad_requests``,
    ``timeouts``, ``deferred``, ``errors``.
    """

    def __init__(
        self,
        resolver: PolicyResolver,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        request_timeout: float = 30.0,
        idle_timeout: float = 75.0,
        shutdown_grace: float = 5.0,
        retry_after: int = DEFAULT_RETRY_AFTER,
        max_body: int = DEFAULT_MAX_BODY,
        overrides: Mapping[str, Override] | None = None,
    ) -> None:
        check_seconds("idle_timeout", idle_timeout, positive=True)
        check_seconds("shutdown_grace", shutdown_grace)
        self.resolver = resolver
        self.host = host
        self.port = port
        self.app = make_app(
            resolver, request_timeout=request_timeout, retry_after=retry_after, max_body=max_body, overrides=overrides
        )
        self._api = self.app[_API_KEY]
        self._runner = web.AppRunner(
            self.app,
            access_log=None,  # one log line per request would cost more than the answer
            keepalive_timeout=idle_timeout,
            lingering_time=_LINGERING_TIME,
            shutdown_timeout=shutdown_grace,
            handle_signals=False,
        )
        self._started = False

    async def start(self) -> None:
        """Listen (raises :class:`OSError` when the address cannot be bound)."""
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except BaseException:
            await self._runner.cleanup()
            raise
        self._started = True
        self.port = int(self._runner.addresses[0][1])

    @property
    def address(self) -> str:
        """``HOST:PORT`` (``[::1]:PORT`` for IPv6) as listened on."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """``http://HOST:PORT``."""
        return f"http://{self.address}"

    @property
    def requests(self) -> int:
        """API requests answered, whatever their status."""
        return self._api.requests

    @property
    def bad_requests(self) -> int:
        """4xx answers: bad input, unknown routes, wrong methods, bodies too large or too slow."""
        return self._api.bad_requests

    @property
    def timeouts(self) -> int:
        """Answers after ``request_timeout``: 503 for a lookup still running, 408 for a body still arriving."""
        return self._api.timeouts

    @property
    def deferred(self) -> int:
        """503 answers for lookups that cannot answer now (a local fault, or ``dns_error = "defer"``)."""
        return self._api.deferred

    @property
    def errors(self) -> int:
        """Internal errors (500, or 503 for a lookup that raised)."""
        return self._api.errors

    async def aclose(self) -> None:
        """Stop listening, let requests in flight finish (``shutdown_grace``), close every connection."""
        if self._started:
            self._started = False
            await self._runner.cleanup()

    async def __aenter__(self) -> HttpApiServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
