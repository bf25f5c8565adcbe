"""The daemon's monitoring listener (``metrics_listen``): ``GET /metrics`` and ``GET /healthz`` over HTTP.

On the daemon's own event loop (aiohttp's server, no thread). ``/healthz`` answers 200 with ``{"status": "ok",
"store": "up"}`` — ``"down"`` while the store is in an outage: still 200, since the daemon keeps serving from
memory — once the socketmap server listens (after the store was restored), and 503 with ``"status": "starting"``
before, ``"stopping"`` from the moment shutdown begins. ``/metrics`` is the Prometheus text format of a
:class:`~mtasts.socketmap.metrics.DaemonCollector`'s registry (docs/operations.md).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Final

from aiohttp import web

from ..errors import MTASTSError
from ..options import format_host_port

__all__ = ["STATES", "MonitorListener"]

#: What ``/healthz`` reports: 200 only while ``serving``.
STATES: Final = ("starting", "serving", "stopping")

_TEXT_FORMAT: Final = "text/plain; version=0.0.4; charset=utf-8"  # what prometheus_client.generate_latest writes


class MonitorListener:
    """``GET /metrics`` (the bytes ``metrics()`` returns, computed per scrape) and ``GET /healthz`` (from
    :attr:`state` and ``store_up()``) on ``host``:``port`` (0: the system picks; see :attr:`address`)."""

    def __init__(self, host: str, port: int, *, metrics: Callable[[], bytes], store_up: Callable[[], bool]) -> None:
        self.host, self._port = host, port
        self._metrics = metrics
        self._store_up = store_up
        self.state = "starting"
        self._runner: web.AppRunner | None = None
        self._bound: list[tuple[str, int]] = []

    async def start(self) -> None:
        """Listen; a failure to bind is an :class:`~mtasts.errors.MTASTSError` naming the address."""
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._serve_metrics)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            where = format_host_port(self.host, self._port)
            raise MTASTSError(f"cannot listen on {where} for metrics: {exc.strerror or exc}") from None
        self._runner = runner
        self._bound = [(address[0], address[1]) for address in runner.addresses]

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        if not self._bound:
            raise MTASTSError("the monitoring listener is not listening")
        return self._bound[0][1]

    @property
    def address(self) -> str:
        """``http://127.0.0.1:8463`` (the first address bound)."""
        return f"http://{format_host_port(self.host if not self._bound else self._bound[0][0], self.port)}"

    async def aclose(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _healthz(self, request: web.Request) -> web.Response:
        body = {"status": "ok" if self.state == "serving" else self.state, "store": self._store_state()}
        return web.Response(
            status=200 if self.state == "serving" else 503,
            text=json.dumps(body),
            content_type="application/json",
            headers={"Cache-Control": "no-store"},
        )

    def _store_state(self) -> str:
        try:
            return "up" if self._store_up() else "down"
        except Exception:  # health must answer: a store it cannot judge is not up
            return "down"

    async def _serve_metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self._metrics(), headers={"Content-Type": _TEXT_FORMAT, "Cache-Control": "no-store"})
