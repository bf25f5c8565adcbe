"""A small local HTTP API for mail relays that are not Postfix (Haraka, Postal, home-grown ones): docs/http-api.md.

    GET  /v1/policy/{domain}    the MTA-STS policy that applies now: mode, mx patterns, max_age, id, times, status
    POST /v1/verdict            {"domain", "mx_host", "tls_failure"} -> {"deliver", "require_tls", "result_type", ...}
    GET  /v1/openapi.json       the OpenAPI 3.1 document

Every answer is JSON, errors too (``{"error": ...}``: 400 bad input, 404, 405, 408, 413, 500). Any 503 means
"defer the mail, try again later": a lookup still running after ``request_timeout``, or one that cannot answer
now (a fault on this host, ``dns_error = "defer"``) — never reported as "no policy".

Layers, each a module of this package:

- :mod:`~mtasts.http_api.answers` — sans-I/O: request bodies checked, lookups and verdicts as JSON objects;
- :mod:`~mtasts.http_api.openapi` — sans-I/O: the OpenAPI document and its schemas;
- :mod:`~mtasts.http_api.server` — the aiohttp application, :class:`HttpApiServer` (routes, JSON errors, limits);
- :mod:`~mtasts.http_api.daemon` — :func:`serve_http` (``mtasts serve-http``): the socketmap's configuration,
  store and resolver, signals, shutdown.

The I/O modules load on first use of their names, so importing the pure ones loads no aiohttp.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports
from .answers import TLS_FAILURES, VERDICT_FIELDS, VerdictRequest, parse_verdict_request, policy_answer, verdict_answer
from .openapi import openapi_document

if TYPE_CHECKING:
    from .daemon import DEFAULT_LISTEN, build_resolver, parse_listen, run, serve_http
    from .server import DEFAULT_PORT, HttpApiServer, make_app

_LAZY = {
    "DEFAULT_LISTEN": "daemon",
    "DEFAULT_PORT": "server",
    "HttpApiServer": "server",
    "build_resolver": "daemon",
    "make_app": "server",
    "parse_listen": "daemon",
    "run": "daemon",
    "serve_http": "daemon",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)


__all__ = [
    "DEFAULT_LISTEN",
    "DEFAULT_PORT",
    "TLS_FAILURES",
    "VERDICT_FIELDS",
    "HttpApiServer",
    "VerdictRequest",
    "build_resolver",
    "make_app",
    "openapi_document",
    "parse_listen",
    "parse_verdict_request",
    "policy_answer",
    "run",
    "serve_http",
    "verdict_answer",
]
