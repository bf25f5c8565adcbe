"""``mtasts tlsrpt show`` (what would be sent) and ``mtasts tlsrpt send`` (send what is due).

The commands themselves, as plain functions; their flags are :mod:`mtasts.cli`'s. ``send`` sends each report at
its randomised send time (RFC 8460 §4.1, :mod:`mtasts.tlsrpt.schedule`): ``now=True`` (``--now``) sends every
complete day's reports at once; ``wait=True`` (``--wait``) keeps running and sends each report when it falls
due, until SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import signal
import socket
from collections.abc import Coroutine
from typing import Any

from .._rfc3339 import utc_timestamp
from ..errors import UsageError
from ..options import WorldOptions
from .schedule import DEFAULT_SEND_DELAY, DEFAULT_SEND_WINDOW, SendSchedule

__all__ = ["send", "show"]


def _reporter(store: str, organization: str, contact: str | None, schedule: SendSchedule | None = None) -> Any:
    from ..stores import open_store  # noqa: PLC0415
    from .recorder import TLSReporter  # noqa: PLC0415

    contact = contact or f"postmaster@{socket.getfqdn()}"
    schedule = schedule or SendSchedule()
    return TLSReporter(organization_name=organization, contact_info=contact, store=open_store(store),
                       send_delay=schedule.delay, send_window=schedule.window)  # fmt: skip


def show(
    *, store: str, organization: str, contact: str | None, day: datetime.date | None = None, as_json: bool = False
) -> int:
    """Print the reports of ``day`` (default yesterday, UTC) from ``store``; with ``as_json``, only a JSON list.
    The text form names each report's send time (under the default schedule)."""

    async def run() -> tuple[list[Any], SendSchedule]:
        reporter = _reporter(store, organization, contact)
        try:
            when = day or (datetime.datetime.now(datetime.UTC).date() - datetime.timedelta(days=1))
            return list(await reporter.collect_reports(when)), reporter.schedule
        finally:
            await reporter._store.aclose()

    reports, schedule = asyncio.run(run())
    if as_json:
        print(json.dumps([report.json for report in reports], indent=2))
    elif not reports:
        print("no sessions recorded for that day")
    for report in [] if as_json else reports:
        due = utc_timestamp(schedule.due_at(report.day, report.policy_domain))
        print(f"# {report.filename} (send time {due})\n{json.dumps(report.json, indent=2)}\n")
    return 0


def send(
    options: WorldOptions,
    *,
    store: str,
    organization: str,
    contact: str | None,
    smtp_port: int = 25,
    now: bool = False,
    wait: bool = False,
    send_delay: float | None = None,
    send_window: float | None = None,
) -> int:
    """Send every report that is due, in the world ``options`` names; one JSON line per outcome, 1 if any failed.

    ``now``: do not wait for the reports' send time. ``wait``: keep running, sending each report when it falls due
    (one JSON line per outcome as it happens), until SIGTERM / SIGINT: then 0. ``send_delay`` / ``send_window``:
    the schedule, in seconds (docs/tlsrpt.md).
    """
    from ..resolver import PolicyResolver  # noqa: PLC0415
    from .recorder import ReportOutcome, ReportStatus  # noqa: PLC0415
    from .send import ReportSender  # noqa: PLC0415

    if now and wait:
        raise UsageError("--now and --wait exclude each other (--wait sends each report at its send time)")
    schedule = SendSchedule(
        DEFAULT_SEND_DELAY if send_delay is None else send_delay,
        DEFAULT_SEND_WINDOW if send_window is None else send_window,
    )
    world = options.resolver_kwargs()

    def printed(outcome: ReportOutcome) -> None:
        print(json.dumps(outcome.as_dict()), flush=True)

    async def run() -> list[ReportOutcome]:
        reporter = _reporter(store, organization, contact, schedule)
        async with PolicyResolver(**world) as resolver:
            sender = ReportSender(
                resolver=resolver,
                submitter_domain=reporter.submitter_domain,
                from_address=reporter.contact_info,
                ssl_context=world.get("ssl_context"),
                tls_context=world.get("ssl_context"),
                port=smtp_port,
            )
            try:
                if wait:
                    await _until_signalled(reporter.send_loop(resolver, sender=sender, on_outcome=printed))
                    return []
                return list(await reporter.send_due_outcomes(resolver, sender=sender, force=now))
            finally:
                await reporter.aclose()
                await reporter._store.aclose()

    outcomes = asyncio.run(run())
    for outcome in outcomes:
        printed(outcome)
    return 1 if any(o.status in (ReportStatus.RETRY, ReportStatus.GAVE_UP) for o in outcomes) else 0


async def _until_signalled(work: Coroutine[Any, Any, None]) -> None:
    """Run ``work`` until it ends, or until SIGTERM / SIGINT cancels it (then return normally)."""
    task = asyncio.ensure_future(work)
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    signalled: list[int] = []

    def stop(signum: int) -> None:
        signalled.append(signum)
        task.cancel()

    for signum in signals:
        loop.add_signal_handler(signum, stop, signum)
    try:
        await task
    except asyncio.CancelledError:
        if not signalled:
            raise  # not a signal: this coroutine itself is being cancelled
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)
