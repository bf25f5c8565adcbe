"""``mtasts tlsrpt show`` (what would be sent) and ``mtasts tlsrpt send`` (send what is due)."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import socket
from typing import Any

__all__ = ["register_cli"]


def register_cli(commands: Any) -> None:
    from ..cli import add_world_options, port_number  # noqa: PLC0415 - cli imports this module

    parser = commands.add_parser("tlsrpt", help="TLS-RPT (RFC 8460) reports: show them, send them")
    actions = parser.add_subparsers(dest="tlsrpt_command", required=True)
    for name, help_text in [
        ("show", "print the reports of a day (default yesterday, UTC) from the store"),
        ("send", "send every report that is due (to each domain's _smtp._tls rua), with retries"),
    ]:
        action = actions.add_parser(name, help=help_text)
        action.add_argument(
            "--store",
            default="sqlite",
            metavar="SPEC",
            help="where sessions were recorded: sqlite, sqlite:PATH, redis://",
        )
        action.add_argument("--organization", default="mtasts", help="organization-name of the reports")
        action.add_argument("--contact", help="contact-info: an address at the submitting domain "
                            "(default postmaster@ this host's name)")  # fmt: skip
        if name == "show":
            action.add_argument("--day", type=datetime.date.fromisoformat, help="YYYY-MM-DD (UTC)")
            action.add_argument("--json", action="store_true", help="the report objects only, as a JSON list")
        else:
            add_world_options(action)
            action.add_argument("--smtp-port", type=port_number, default=25, help=argparse.SUPPRESS)  # for test worlds
        action.set_defaults(handler=_show if name == "show" else _send)


def _reporter(args: argparse.Namespace) -> Any:
    from ..stores import open_store  # noqa: PLC0415
    from .recorder import TLSReporter  # noqa: PLC0415

    contact = args.contact or f"postmaster@{socket.getfqdn()}"
    return TLSReporter(organization_name=args.organization, contact_info=contact, store=open_store(args.store))


def _show(args: argparse.Namespace) -> int:
    async def run() -> list[Any]:
        reporter = _reporter(args)
        try:
            day = args.day or (datetime.datetime.now(datetime.UTC).date() - datetime.timedelta(days=1))
            return list(await reporter.collect_reports(day))
        finally:
            await reporter._store.aclose()

    reports = asyncio.run(run())
    if args.json:
        print(json.dumps([report.json for report in reports], indent=2))
    elif not reports:
        print("no sessions recorded for that day")
    for report in [] if args.json else reports:
        print(f"# {report.filename}\n{json.dumps(report.json, indent=2)}\n")
    return 0


def _send(args: argparse.Namespace) -> int:
    from ..cli import world_from_args  # noqa: PLC0415
    from ..resolver import PolicyResolver  # noqa: PLC0415
    from .send import ReportSender  # noqa: PLC0415

    world = world_from_args(args)

    async def run() -> list[dict[str, Any]]:
        reporter = _reporter(args)
        async with PolicyResolver(**world) as resolver:
            sender = ReportSender(
                resolver=resolver,
                submitter_domain=reporter.submitter_domain,
                from_address=reporter.contact_info,
                ssl_context=world.get("ssl_context"),
                tls_context=world.get("ssl_context"),
                port=args.smtp_port,
            )
            try:
                return list(await reporter.send_due(resolver, sender=sender))
            finally:
                await reporter.aclose()
                await reporter._store.aclose()

    outcomes = asyncio.run(run())
    for outcome in outcomes:
        print(json.dumps(outcome))
    return 1 if any(o.get("status") in ("retry", "gave-up") for o in outcomes) else 0
