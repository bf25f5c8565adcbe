"""The socketmap daemon: :func:`serve` (``mtasts serve-socketmap``), the descriptor limit, signals, shutdown.

:func:`serve` raises the descriptor limit and plans its use (:func:`~mtasts.socketmap.config.plan_descriptors`),
binds (or takes systemd's socket), drops root (``user``), restores the cache from the store, starts accepting,
tells systemd it is ready (:mod:`~mtasts.socketmap.systemd`), and runs until SIGTERM or SIGINT; SIGHUP re-reads
the configuration (:mod:`~mtasts.socketmap.reload`). :func:`run` is the command around it (logging, exit
status). The flags are :mod:`mtasts.cli`'s. docs/operations.md describes the whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final, cast

from ..dane_lookup import DaneResolver
from ..errors import MTASTSError, UsageError
from ..logs import configure_logging
from ..resolver import PolicyResolver
from .config import DescriptorPlan, ServerConfig, parse_metrics_listen, plan_descriptors
from .privileges import drop_privileges, resolve_identity
from .reload import ReloadPlan, plan_reload
from .server import SocketmapServer
from .systemd import Notifier, activated_socket, watchdog_interval

if TYPE_CHECKING:
    from ..control.server import ControlServer
    from .metrics import DaemonCollector
    from .monitor import MonitorListener

__all__ = [
    "build_resolver",
    "descriptor_plan",
    "event_loop_factory",
    "raise_nofile_limit",
    "run",
    "run_daemon",
    "serve",
    "wait_for_stop",
]

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
    reload: Callable[[], ServerConfig] | None = None,
    environ: Mapping[str, str] | None = None,
) -> None:
    """Run the socketmap server until SIGTERM, SIGINT or ``stop`` is set, then shut down gracefully.

    Binds (or serves on the socket systemd passed: ``$LISTEN_FDS``), drops root for ``config.user``, opens the
    store and restores the cache from it, starts the proactive refresh, accepts, calls ``ready(server)`` and
    tells systemd (``$NOTIFY_SOCKET``: ``READY=1``, ``WATCHDOG=1`` every ``$WATCHDOG_USEC``/2). SIGHUP calls
    ``reload`` (the configuration file again, with the command line's flags on top) and applies what can change
    live. On the way out: ``STOPPING=1``, the server finishes its requests (``shutdown_grace``), the resolver
    flushes the store. ``environ`` (default ``os.environ``) holds systemd's variables.
    With ``metrics_listen``, ``/metrics`` and ``/healthz`` are served from before the store is restored (503:
    starting) until the end (503 from the moment shutdown begins): :mod:`mtasts.socketmap.monitor`.
    """

    environ = os.environ if environ is None else environ
    identity = resolve_identity(config.user, config.group) if config.user is not None else None
    activated = activated_socket(environ, os.getpid())
    if config.metrics_listen is not None:
        _check_metrics_extra()
    plan = descriptor_plan(config)
    resolver = build_resolver(config, plan)  # its store opens nothing yet: the first use does, after the drop
    notifier = Notifier.from_environ(environ)
    monitor: _Monitor | None = None
    try:
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
            sock=activated,
            overrides=config.overrides,
        )
        running = _Running(config, server, plan, notifier, reload)
        try:
            await server.bind()
        except OSError as exc:
            raise MTASTSError(f"cannot listen on {config.listen}: {exc.strerror or exc}") from None
        control: ControlServer | None = None
        try:
            if config.metrics_listen is not None:  # bound before the drop (a port below 1024 needs root)
                monitor = running.monitor = await _start_monitor(config.metrics_listen, config.event_loop, resolver)
            if identity is not None and not drop_privileges(identity):
                log.info("already running as user %s: --user changes nothing", identity.user)
            await resolver.start()
            if config.refresh_period > 0:
                resolver.start_background_refresh(config.refresh_period)
            control = await _start_control(config, server)  # after the drop: its socket is the user's
            await server.start()
            with _signals(running.reload) as signalled:
                log.info(
                    "mtasts socketmap server listening on %s%s (event loop %s; store %s; TLS-RPT attributes for %s; "
                    "DANE %s; %d overrides)",
                    server.address,
                    " (socket from systemd)" if activated is not None else "",
                    config.event_loop,
                    config.store,
                    "every map name" if config.tlsrpt else "the map name QUERYwithTLSRPT",
                    "first (the resolver must validate DNSSEC; Postfix needs smtp_dns_support_level = dnssec)"
                    if config.dane
                    else "off",
                    len(config.overrides),
                    extra={"event": "listening", "address": server.address},
                )
                if monitor is not None:
                    monitor.collector.server = server
                    monitor.listener.state = "serving"
                notifier.ready(f"listening on {server.address}")
                if ready is not None:
                    ready(server)
                interval = watchdog_interval(environ, os.getpid())
                with _watchdog(notifier, interval):
                    await _until(signalled, stop)
        finally:
            await running.settle()
            monitor = running.monitor  # (a reload may have moved it)
            if monitor is not None:
                monitor.listener.state = "stopping"
            notifier.stopping()
            log.info(
                "shutting down (%d requests, %d connections, %d idle ones closed to make room, %d refused)",
                server.requests,
                server.connections,
                server.evicted,
                server.rejected,
                extra={"event": "stopping"},
            )
            if control is not None:
                await control.aclose()
            await server.aclose(running.config.shutdown_grace)
    finally:
        if monitor is not None:
            monitor.listener.state = "stopping"
        notifier.close()
        await resolver.aclose()
        if monitor is not None:
            await monitor.listener.aclose()


# -- the monitoring listener (metrics_listen) -----------------------------------------------------------------


class _Monitor:
    """The listener and the collector it serves (whose ``server`` is set once the server listens)."""

    def __init__(self, listener: MonitorListener, collector: DaemonCollector, listen: str) -> None:
        self.listener, self.collector, self.listen = listener, collector, listen


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
    return _Monitor(listener, collector, metrics_listen)


class _Running:
    """The running daemon's configuration, and SIGHUP's reload of it (:mod:`~mtasts.socketmap.reload`)."""

    def __init__(
        self,
        config: ServerConfig,
        server: SocketmapServer,
        plan: DescriptorPlan,
        notifier: Notifier,
        load: Callable[[], ServerConfig] | None,
    ) -> None:
        self.config, self.server, self.plan, self.notifier, self.load = config, server, plan, notifier, load
        self.monitor: _Monitor | None = None  # the metrics listener (metrics_listen), replaced by a reload
        self._switching: asyncio.Task[None] | None = None

    def reload(self) -> None:
        """Read the configuration again and apply what can change live; on any failure keep the one in force."""
        if self.load is None:
            log.warning("SIGHUP: started without a configuration file (--config): nothing to reload")
            return
        self.notifier.reloading()
        try:
            try:
                new = self.load()
            except MTASTSError as exc:
                log.error("reload failed, keeping the configuration in use: %s", exc.message)
                return
            except Exception:
                log.exception("reload failed, keeping the configuration in use")
                return
            plan = plan_reload(self.config, new)
            if plan.restart:
                log.warning(
                    "reload: %s changed, which needs a restart: left as %s until then",
                    ", ".join(plan.restart),
                    "it was" if len(plan.restart) == 1 else "they were",
                )
            try:
                self._apply(plan)
            except Exception:  # a bug: what was applied stays, the rest is as it was
                log.exception("reload failed while applying it; the configuration in use may be partly new")
                return
            self.config = plan.config
            if plan.changed:
                log.info("reloaded the configuration: %s", "; ".join(_describe(plan.config, plan.changed)))
            else:
                log.info("reloaded the configuration: nothing that can change live has changed")
        finally:
            self.notifier.ready(f"listening on {self.server.address}")

    def _apply(self, plan: ReloadPlan) -> None:
        config, changed = plan.config, plan.changed
        max_connections = plan_descriptors(
            self.plan.nofile,
            max_connections=config.max_connections,
            max_concurrent_dns=config.max_concurrent_dns,
            max_concurrent_fetches=config.max_concurrent_fetches,
        ).max_connections
        self.server.update_limits(
            max_request=config.max_request,
            request_timeout=config.request_timeout,
            max_pipeline=config.max_pipeline,
            idle_timeout=config.idle_timeout,
            max_connections=max_connections,
            first_request_timeout=config.first_request_timeout,
        )
        if "overrides" in changed:
            self.server.set_overrides(config.overrides)
        if "log_level" in changed:
            logging.getLogger().setLevel(config.log_level.upper())  # run() configured the root logger
        if "metrics_listen" in changed:
            previous = self._switching
            self._switching = asyncio.ensure_future(self._switch_metrics(previous, config.metrics_listen))

    async def _switch_metrics(self, previous: asyncio.Task[None] | None, listen: str | None) -> None:
        """The metrics listener moved to ``listen`` (or stopped): the new one listens before the old one closes; if
        it cannot, the old one stays (and ``metrics_listen`` with it), logged at ERROR."""
        if previous is not None:
            await asyncio.gather(previous, return_exceptions=True)
        old, new = self.monitor, None
        if listen is not None:
            try:
                _check_metrics_extra()
                new = await _start_monitor(listen, self.config.event_loop, self.server.resolver)
            except (MTASTSError, OSError) as exc:
                kept = old.listener.address if old is not None else "none"
                log.error("reload: cannot serve metrics on %s (%s): keeping %s", listen, exc, kept)
                self.config = dataclasses.replace(self.config, metrics_listen=self._listen_of(old))
                return
            new.collector.server = self.server
            new.listener.state = "serving"
        self.monitor = new
        if old is not None:
            old.listener.state = "stopping"
            await old.listener.aclose()
        log.info("reload: metrics %s", f"on {new.listener.address}/metrics" if new is not None else "off")

    @staticmethod
    def _listen_of(monitor: _Monitor | None) -> str | None:
        return None if monitor is None else monitor.listen

    async def settle(self) -> None:
        """Wait for a metrics switch a reload started (at shutdown)."""
        if self._switching is not None:
            await asyncio.gather(self._switching, return_exceptions=True)


def _describe(config: ServerConfig, changed: tuple[str, ...]) -> list[str]:
    """``request_timeout = 10``, ``overrides: 2 domains (a.example, b.example)`` — for the reload's log line."""
    described = []
    for name in changed:
        if name == "overrides":
            domains = sorted(config.overrides)
            shown = ", ".join(domains[:10]) + (f", … ({len(domains) - 10} more)" if len(domains) > 10 else "")
            described.append(f"overrides: {len(domains)} domains" + (f" ({shown})" if domains else ""))
        else:
            described.append(f"{name} = {getattr(config, name)!r}")
    return described


@contextlib.contextmanager
def _watchdog(notifier: Notifier, interval: float | None) -> Iterator[None]:
    """``WATCHDOG=1`` every ``interval`` seconds while in the block, sent from the event loop itself: a loop
    that hangs stops the pings, and systemd restarts the service (``WatchdogSec=``)."""
    if interval is None or not notifier.enabled:
        yield
        return
    loop = asyncio.get_running_loop()
    handle: asyncio.TimerHandle | None = None

    def ping() -> None:
        nonlocal handle
        notifier.watchdog()
        handle = loop.call_later(interval, ping)

    log.info("systemd watchdog: pinging every %g s", interval)
    ping()
    try:
        yield
    finally:
        if handle is not None:
            handle.cancel()


async def _start_control(config: ServerConfig, server: SocketmapServer) -> ControlServer | None:
    """The control socket (``control_socket``), serving ``mtasts cache ... --control PATH``; None without one.

    A purge through it goes through :meth:`SocketmapServer.purge`, which also forgets the server's memos.
    """
    if config.control_socket is None:
        return None
    from ..control.server import ControlServer  # noqa: PLC0415 - only with a control socket

    control = ControlServer(server.resolver, path=config.control_socket, mode=config.control_mode, purge=server.purge)
    try:
        await control.start()
    except BaseException:
        await server.aclose(0)
        raise
    log.info("control socket %s (mode %s): mtasts cache ... --control PATH", control.path, oct(control.mode))
    return control


def descriptor_plan(config: ServerConfig) -> DescriptorPlan:
    """The descriptor limit raised to the hard one and shared out (:func:`plan_descriptors`), logged (a WARNING
    when it may not fit): the start of ``serve-socketmap`` and ``serve-http``."""
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
    return plan


def build_resolver(config: ServerConfig, plan: DescriptorPlan) -> PolicyResolver:
    """The store and the resolver ``config`` describes, within the DNS and fetch shares of ``plan`` (not started):
    the one construction behind ``serve-socketmap`` and ``serve-http``."""
    from ..stores import open_store  # noqa: PLC0415 - the stores load sqlite3 only when serving

    return PolicyResolver(
        store=open_store(config.store),
        cache_size=config.cache_size,
        fetch_timeout=config.fetch_timeout,
        fetch_idle_timeout=config.fetch_idle_timeout,
        max_concurrent_dns=plan.max_concurrent_dns,
        max_concurrent_fetches=plan.max_concurrent_fetches,
        queue_timeout=config.queue_timeout,
        dns_error=config.dns_error,
        **config.world.resolver_kwargs(),
    )


def _dane_lookup(resolver: PolicyResolver, plan: DescriptorPlan, queue_timeout: float) -> DaneResolver:
    """DANE's lookups through the resolver's DNS servers, within the DNS share of the descriptor plan."""
    return DaneResolver(resolver.dns_resolver, limit=max(1, plan.max_concurrent_dns // 4), wait=queue_timeout)


@contextlib.contextmanager
def _signals(reload: Callable[[], None] | None = None) -> Iterator[asyncio.Event]:
    """While in the block: SIGTERM and SIGINT set the event yielded, SIGHUP calls ``reload`` if given (on the
    event loop, between two callbacks). The socketmap installs them before it says it listens, so that no
    signal sent after that finds the default action (which, for SIGHUP, ends the process)."""
    loop = asyncio.get_running_loop()
    signalled = asyncio.Event()
    installed: list[signal.Signals] = []

    def on_signal(signum: signal.Signals) -> None:
        log.info("received %s", signum.name)
        signalled.set()

    def on_hangup() -> None:
        log.info("received SIGHUP: reloading the configuration")
        assert reload is not None
        reload()

    handlers: list[tuple[signal.Signals, Callable[..., None], tuple[signal.Signals, ...]]] = [
        (signal.SIGTERM, on_signal, (signal.SIGTERM,)),
        (signal.SIGINT, on_signal, (signal.SIGINT,)),
    ]
    if reload is not None:
        handlers.append((signal.SIGHUP, on_hangup, ()))
    for signum, handler, args in handlers:
        try:
            loop.add_signal_handler(signum, handler, *args)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no signals here
            continue
        installed.append(signum)
    try:
        yield signalled
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)


async def wait_for_stop(stop: asyncio.Event | None) -> None:
    """Until SIGTERM, SIGINT or ``stop`` (``mtasts serve-http``'s wait: its signals only while it waits)."""
    with _signals() as signalled:
        await _until(signalled, stop)


async def _until(signalled: asyncio.Event, stop: asyncio.Event | None) -> None:
    """Until ``signalled`` (SIGTERM, SIGINT: see :func:`_signals`) or ``stop`` is set."""
    waiters = [asyncio.ensure_future(signalled.wait())]
    if stop is not None:
        waiters.append(asyncio.ensure_future(stop.wait()))
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)


def run(config: ServerConfig, *, reload: Callable[[], ServerConfig] | None = None) -> int:
    """``mtasts serve-socketmap``: :func:`serve` until stopped, through :func:`run_daemon` (SIGHUP: ``reload``);
    1 on a failure. An unknown ``user`` or ``group`` raises :class:`~mtasts.errors.UsageError` before anything
    starts."""
    if config.user is not None:
        resolve_identity(config.user, config.group)
    return run_daemon("serve-socketmap", config, lambda: serve(config, reload=reload))


def run_daemon(command: str, config: ServerConfig, main: Callable[[], Coroutine[Any, Any, None]]) -> int:
    """Log at ``config.log_level`` in ``config.log_format``, run ``main()`` until it returns on the event loop
    ``config.event_loop`` names; an :class:`~mtasts.errors.MTASTSError` is one line on stderr and exit status 1.
    The daemons' common frame (``serve-socketmap``, ``serve-http``)."""
    configure_logging(config.log_level, config.log_format)
    try:
        with asyncio.Runner(loop_factory=event_loop_factory(config.event_loop)) as runner:
            runner.run(main())
    except MTASTSError as exc:
        print(f"mtasts {command}: {exc}", file=sys.stderr)
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
