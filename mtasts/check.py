"""``mtasts check DOMAIN``: what a sender would make of a domain's MTA-STS (and TLS-RPT) setup."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register_cli"]


def register_cli(commands: Any) -> None:
    parser = commands.add_parser("check", help="look a domain's MTA-STS policy up and report every problem")
    parser.add_argument("domain")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    raise NotImplementedError
