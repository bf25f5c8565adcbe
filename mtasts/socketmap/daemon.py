"""The socketmap daemon: :func:`serve` (``mtasts serve-socketmap``), the descriptor limit, signals, shutdown.

:func:`serve` raises the descriptor limit and plans its use (:func:`~mtasts.socketmap.config.plan_descriptors`),
opens the store, starts the resolver and the server, and runs until SIGTERM or SIGINT; :func:`run` is the
command around it (logging, exit status). The flags are :mod:`mtasts.cli`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, cast

from ..dane_lookup import DaneResolver
from ..errors import MTASTSError, UsageError
from ..logs import configure_logging
from ..resolver import PolicyResolver
from .config import DescriptorPlan, ServerConfig, parse_metrics_listen, plan_descriptors
from .server import SocketmapServer

if TYPE_CHECKING:
    from .metrics import DaemonCollector
    from .monitor import MonitorListener

__all__ = ["event_loop_factory", "raise_nofile_limit", "run", "serve"]

log = logging.getLogger("mtasts.socketmap")

_NOFILE_UNLIMITED: Final = 1 << 20  # what an unlimited RLIMIT_NOFILE is taken as (capped by fs.nr_open)


def raise_nofile_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; returns the soft limit now in force (logged at INFO).

    An unlimited limit counts as 2**20 descriptors (or ``fs.nr_open``, if lower). A failure is logged, not raised.
    """
    try:
        import resource  # noqa: PLC0415 - POSIX only
    except ImportError:  # pragma: no cover - not POSIX
        return _NOFILE_UNLIMITED
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    unlimited = _NOFILE_UNLIMITED
    with contextlib.suppress(OSError, ValueError), open("/proc/sys/fs/nr_open", encoding="ascii") as file:
        unlimited = min(unlimited, int(file.read()))
    target = unlimited if hard == resource.RLIM_INFINITY else hard
    current = unlimited if soft == resource.RLIM_INFINITY else soft
    if current >= target:
        log.info("descriptor limit: %d (hard limit %s)", current, _format_rlimit(hard, resource.RLIM_INFINITY))
        return current
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError) as exc:
        log.warning("descriptor limit: %d; raising it to %d failed: %s", current, target, exc)
        return current
    log.info(
        "descriptor limit: raised from %d to %d (hard limit %s)",
        current,
        target,
        _format_rlimit(hard, resource.RLIM_INFINITY),
    )
    return target


def _format_rlimit(value: int, infinity: int) -> str:
    return "unlimited" if value == infinity else str(value)


# -- the daemon ----------------------------------------------------------------------------------------------------


async def serve(
    config: ServerConfig,
    *,
    ready: Callable[[SocketmapServer], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run the socketmap server until SIGTERM, SIGINT or ``stop`` is set, then shut down gracefully.

    Opens the store, restores the cache from it, starts the proactive refresh, listens, calls ``ready(server)``.
    On the way out: the server finishes its requests (``shutdown_grace``), the resolver flushes the store.
    With ``metrics_listen``, ``/metrics`` and ``/healthz`` are served from before the store is restored (503:
    starting) until the end (503 from the moment shutdown begins): :mod:`mtasts.socketmap.monitor`.
    """
    from ..stores import open_store  # noqa: PLC0415 - the stores load sqlite3 only when serving

    if config.metrics_listen is not None:
        _check_metrics_extra()
    world = config.world.resolver_kwargs()
    plan = plan_descriptors(
        raise_nofile_limit(),
        max_connections=config.max_connections,
        max_concurrent_dns=config.max_concurrent_dns,
        max_concurrent_fetches=config.max_concurrent_fetches,
    )
    log.log(
        logging.INFO if plan.fits else logging.WARNING,
        "descriptor plan for a limit of %d: %d connections, %d DNS queries, %d policy fetches, "
        "%d accepted at once, %d in reserve%s",
        plan.nofile,
        plan.max_connections,
        plan.max_concurrent_dns,
        plan.max_concurrent_fetches,
        plan.accept_batch,
        plan.reserve,
        ""
        if plan.fits
        else f" — {plan.total} in all: descriptors may run out (raise LimitNOFILE, or lower max_connections)",
    )
    store = open_store(config.store)
    resolver = PolicyResolver(
        store=store,
        cache_size=config.cache_size,
        fetch_timeout=config.fetch_timeout,
        fetch_idle_timeout=config.fetch_idle_timeout,
        max_concurrent_dns=plan.max_concurrent_dns,
        max_concurrent_fetches=plan.max_concurrent_fetches,
        queue_timeout=config.queue_timeout,
        dns_error=config.dns_error,
        **world,
    )
    monitor: _Monitor | None = None
    try:
        if config.metrics_listen is not None:
            monitor = await _start_monitor(config.metrics_listen, config.event_loop, resolver)
        await resolver.start()
        if config.refresh_period > 0:
            resolver.start_background_refresh(config.refresh_period)
        server = SocketmapServer(
            resolver,
            host=config.host,
            port=config.port,
            unix_path=config.unix_path,
            unix_mode=config.unix_mode,
            max_request=config.max_request,
            request_timeout=config.request_timeout,
            max_pipeline=config.max_pipeline,
            idle_timeout=config.idle_timeout,
            max_connections=plan.max_connections,
            first_request_timeout=config.first_request_timeout,
            accept_batch=plan.accept_batch,
            tlsrpt=config.tlsrpt,
            dane=_dane_lookup(resolver, plan, config.queue_timeout) if config.dane else False,
        )
        try:
            await server.start()
        except OSError as exc:
            raise MTASTSError(f"cannot listen on {config.listen}: {exc.strerror or exc}") from None
        try:
            log.info(
                "mtasts socketmap server listening on %s (event loop %s; store %s; TLS-RPT attributes for %s; DANE %s)",
                server.address,
                config.event_loop,
                config.store,
                "every map name" if config.tlsrpt else "the map name QUERYwithTLSRPT",
                "first (the resolver must validate DNSSEC; Postfix needs smtp_dns_support_level = dnssec)"
                if config.dane
                else "off",
                extra={"event": "listening", "address": server.address},
            )
            if monitor is not None:
                monitor.collector.server = server
                monitor.listener.state = "serving"
            if ready is not None:
                ready(server)
            await _wait_for_stop(stop)
        finally:
            if monitor is not None:
                monitor.listener.state = "stopping"
            log.info(
                "shutting down (%d requests, %d connections, %d idle ones closed to make room, %d refused)",
                server.requests,
                server.connections,
                server.evicted,
                server.rejected,
                extra={"event": "stopping"},
            )
            await server.aclose(config.shutdown_grace)
    finally:
        if monitor is not None:
            monitor.listener.state = "stopping"
        await resolver.aclose()
        if monitor is not None:
            await monitor.listener.aclose()


# -- the monitoring listener (metrics_listen) -----------------------------------------------------------------


class _Monitor:
    """The listener and the collector it serves (whose ``server`` is set once the server listens)."""

    def __init__(self, listener: MonitorListener, collector: DaemonCollector) -> None:
        self.listener, self.collector = listener, collector


def _check_metrics_extra() -> None:
    """A clear :class:`UsageError` when prometheus-client (the metrics extra) is missing."""
    try:
        import prometheus_client  # noqa: F401, PLC0415 - optional (the metrics extra)
    except ImportError:
        raise UsageError("metrics_listen (--metrics) needs prometheus-client: pip install 'mtasts[metrics]'") from None


async def _start_monitor(metrics_listen: str, event_loop: str, resolver: PolicyResolver) -> _Monitor:
    """Listen on ``metrics_listen`` (503 until the server listens); logs the address (``metrics-listening``)."""
    from prometheus_client import generate_latest  # noqa: PLC0415 - optional (the metrics extra)

    from .metrics import DaemonCollector, metrics_registry  # noqa: PLC0415
    from .monitor import MonitorListener  # noqa: PLC0415 - aiohttp's server loads only with metrics_listen

    host, port = parse_metrics_listen(metrics_listen)
    collector = DaemonCollector(resolver, event_loop=event_loop)
    registry = metrics_registry(collector)

    def store_up() -> bool:
        link = resolver.store_link
        return link is None or not link.down

    listener = MonitorListener(host, port, metrics=lambda: generate_latest(registry), store_up=store_up)
    await listener.start()
    log.info("metrics on %s/metrics, health on %s/healthz", listener.address, listener.address,
             extra={"event": "metrics-listening", "address": listener.address})  # fmt: skip
    return _Monitor(listener, collector)


def _dane_lookup(resolver: PolicyResolver, plan: DescriptorPlan, queue_timeout: float) -> DaneResolver:
    """DANE's lookups through the resolver's DNS servers, within the DNS share of the descriptor plan."""
    return DaneResolver(resolver.dns_resolver, limit=max(1, plan.max_concurrent_dns // 4), wait=queue_timeout)


async def _wait_for_stop(stop: asyncio.Event | None) -> None:
    loop = asyncio.get_running_loop()
    signalled = asyncio.Event()
    installed: list[signal.Signals] = []

    def on_signal(signum: signal.Signals) -> None:
        log.info("received %s", signum.name)
        signalled.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(signum, on_signal, signum)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no signals here
            continue
        installed.append(signum)
    waiters = [asyncio.ensure_future(signalled.wait())]
    if stop is not None:
        waiters.append(asyncio.ensure_future(stop.wait()))
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        for signum in installed:
            loop.remove_signal_handler(signum)


def run(config: ServerConfig) -> int:
    """``mtasts serve-socketmap``: log at ``config.log_level`` and :func:`serve` until stopped, on the event loop
    ``config.event_loop`` names; 1 on a failure."""
    configure_logging(config.log_level, config.log_format)
    try:
        with asyncio.Runner(loop_factory=event_loop_factory(config.event_loop)) as runner:
            runner.run(serve(config))
    except MTASTSError as exc:
        print(f"mtasts serve-socketmap: {exc}", file=sys.stderr)
        return 1
    return 0


def event_loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The loop factory for ``event_loop = name``: None (asyncio's own) or uvloop's, which needs the ``fast``
    extra (a clear :class:`~mtasts.errors.UsageError` without it)."""
    if name == "asyncio":
        return None
    try:
        import uvloop  # noqa: PLC0415 - optional (the fast extra)
    except ImportError:
        raise UsageError("event_loop = uvloop needs uvloop: pip install 'mtasts[fast]'") from None
    return cast("Callable[[], asyncio.AbstractEventLoop]", uvloop.new_event_loop)
