"""The HTTP API daemon: :func:`serve_http` (``mtasts serve-http``), and :func:`run`, the command around it.

It shares the socketmap daemon's configuration (:class:`~mtasts.socketmap.ServerConfig`, the same TOML file),
its descriptor plan and the same store and resolver construction, so both daemons — even both at once, on one
SQLite file — resolve alike. The listener is its own: ``--listen`` (default ``127.0.0.1:8462``); the file's
``listen`` and ``unix`` keys are the socketmap's and are not read here. docs/http-api.md lists the keys that apply.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable

from ..errors import MTASTSError
from ..options import format_host_port, parse_host_port
from ..socketmap.config import ServerConfig
from ..socketmap.daemon import build_resolver, descriptor_plan, run_daemon, wait_for_stop
from .server import DEFAULT_PORT, HttpApiServer

__all__ = ["DEFAULT_LISTEN", "build_resolver", "parse_listen", "run", "serve_http"]

log = logging.getLogger("mtasts.http_api")

#: Where ``mtasts serve-http`` listens without ``--listen``: loopback only (the API has no authentication).
DEFAULT_LISTEN = f"127.0.0.1:{DEFAULT_PORT}"


def parse_listen(text: str) -> tuple[str, int]:
    """``127.0.0.1:8462``, ``[::1]:8462``, ``localhost`` → (host, port); a missing port means 8462, 0 any free one."""
    return parse_host_port(text, what="--listen address", default_port=DEFAULT_PORT, port_zero=True)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def serve_http(
    config: ServerConfig,
    *,
    listen: tuple[str, int] = ("127.0.0.1", DEFAULT_PORT),
    ready: Callable[[HttpApiServer], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run the HTTP API on ``listen`` until SIGTERM, SIGINT or ``stop`` is set, then shut down gracefully.

    Opens the store, restores the cache from it, starts the proactive refresh, listens, calls ``ready(server)``.
    On the way out: requests in flight finish (``shutdown_grace``), the resolver flushes the store.
    """
    host, port = listen
    plan = descriptor_plan(config)
    resolver = build_resolver(config, plan)
    try:
        await resolver.start()
        if config.refresh_period > 0:
            resolver.start_background_refresh(config.refresh_period)
        server = HttpApiServer(
            resolver,
            host=host,
            port=port,
            request_timeout=config.request_timeout,
            idle_timeout=config.idle_timeout,
            shutdown_grace=config.shutdown_grace,
            overrides=config.overrides,
        )
        try:
            await server.start()
        except OSError as exc:
            raise MTASTSError(f"cannot listen on {format_host_port(host, port)}: {exc.strerror or exc}") from None
        try:
            log.info(
                "mtasts HTTP API listening on %s (event loop %s; store %s; dns_error %s)",
                server.url,
                config.event_loop,
                config.store,
                config.dns_error,
            )
            if not _is_loopback(host):
                log.warning(
                    "the HTTP API on %s is not on a loopback address: it has no authentication, so anyone who "
                    "reaches it can make this host look policies up (firewall it, or listen on 127.0.0.1)",
                    server.address,
                )
            if ready is not None:
                ready(server)
            await wait_for_stop(stop)
        finally:
            log.info(
                "shutting down (%d requests: %d bad, %d timed out, %d deferred, %d internal errors)",
                server.requests,
                server.bad_requests,
                server.timeouts,
                server.deferred,
                server.errors,
            )
            await server.aclose()
    finally:
        await resolver.aclose()


def run(config: ServerConfig, *, listen: tuple[str, int] = ("127.0.0.1", DEFAULT_PORT)) -> int:
    """``mtasts serve-http``: :func:`serve_http` until stopped, through
    :func:`~mtasts.socketmap.daemon.run_daemon` (its logging, event loop and exit status); 1 on a failure."""
    return run_daemon("serve-http", config, lambda: serve_http(config, listen=listen))
