"""``mtasts tlsrpt show`` (what would be sent) and ``mtasts tlsrpt send`` (send what is due).

The commands themselves, as plain functions; their flags are :mod:`mtasts.cli`'s.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import socket
from typing import Any

from ..options import WorldOptions

__all__ = ["send", "show"]


def _reporter(store: str, organization: str, contact: str | None) -> Any:
    from ..stores import open_store  # noqa: PLC0415
    from .recorder import TLSReporter  # noqa: PLC0415

    contact = contact or f"postmaster@{socket.getfqdn()}"
    return TLSReporter(organization_name=organization, contact_info=contact, store=open_store(store))


def show(
    *, store: str, organization: str, contact: str | None, day: datetime.date | None = None, as_json: bool = False
) -> int:
    """Print the reports of ``day`` (default yesterday, UTC) from ``store``; with ``as_json``, only a JSON list."""

    async def run() -> list[Any]:
        reporter = _reporter(store, organization, contact)
        try:
            when = day or (datetime.datetime.now(datetime.UTC).date() - datetime.timedelta(days=1))
            return list(await reporter.collect_reports(when))
        finally:
            await reporter._store.aclose()

    reports = asyncio.run(run())
    if as_json:
        print(json.dumps([report.json for report in reports], indent=2))
    elif not reports:
        print("no sessions recorded for that day")
    for report in [] if as_json else reports:
        print(f"# {report.filename}\n{json.dumps(report.json, indent=2)}\n")
    return 0


def send(options: WorldOptions, *, store: str, organization: str, contact: str | None, smtp_port: int = 25) -> int:
    """Send every report that is due, in the world ``options`` names; one JSON line per outcome, 1 if any failed."""
    from ..resolver import PolicyResolver  # noqa: PLC0415
    from .recorder import ReportOutcome, ReportStatus  # noqa: PLC0415
    from .send import ReportSender  # noqa: PLC0415

    world = options.resolver_kwargs()

    async def run() -> list[ReportOutcome]:
        reporter = _reporter(store, organization, contact)
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
                return list(await reporter.send_due_outcomes(resolver, sender=sender))
            finally:
                await reporter.aclose()
                await reporter._store.aclose()

    outcomes = asyncio.run(run())
    for outcome in outcomes:
        print(json.dumps(outcome.as_dict()))
    return 1 if any(o.status in (ReportStatus.RETRY, ReportStatus.GAVE_UP) for o in outcomes) else 0
