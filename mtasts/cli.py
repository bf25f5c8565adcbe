"""The ``mtasts`` command line: ``mtasts demo`` (more subcommands come with the resolver and the socketmap)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from .policy import parse_policy
from .verdict import evaluate

__all__ = ["main"]

#: RFC 8461 §3.2's example policy.
RFC_EXAMPLE_POLICY = """\
version: STSv1
mode: enforce
mx: mail.example.com
mx: *.example.net
mx: backupmx.example.com
max_age: 604800
"""


def _demo(args: argparse.Namespace) -> int:
    if not args.static:
        from .demo import run_demo  # noqa: PLC0415 - the live demo loads the async shell

        return asyncio.run(run_demo())
    policy = parse_policy(RFC_EXAMPLE_POLICY)
    print("RFC 8461 §3.2 example policy:")
    for line in policy.lines():
        print(f"    {line}")
    print()
    cases: list[tuple[str, str | None]] = [
        ("mail.example.com", None),
        ("MX1.example.net.", None),
        ("a.b.example.net", None),
        ("example.net", None),
        ("backupmx.example.com", "certificate-expired"),
        ("mail.example.com", "starttls-not-supported"),
    ]
    header = f"{'MX host':<24} {'TLS session':<24} {'deliver':<8} {'require TLS':<12} result type"
    print(header)
    print("-" * len(header))
    for host, failure in cases:
        verdict = evaluate(policy, host, tls_failure=failure)
        print(
            f"{host:<24} {failure or 'validated':<24} {'yes' if verdict.deliver else 'NO':<8} "
            f"{'yes' if verdict.require_tls else 'no':<12} {verdict.result_type or '-'}"
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mtasts", description="MTA-STS (RFC 8461) for sending mail servers")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="a loopback world of MTA-STS domains and what mtasts makes of them")
    demo.add_argument("--static", action="store_true", help="only the RFC's example policy, no servers")
    demo.set_defaults(handler=_demo)
    args = parser.parse_args(argv)
    handler = args.handler
    result: int = handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
