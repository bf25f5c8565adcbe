"""The ``mtasts`` command line (also ``python -m mtasts``).

    mtasts demo                          the loopback demo (the README's)
    mtasts check DOMAIN [--json] [--starttls]
    mtasts serve-socketmap [...]         a Postfix socketmap server (docs/postfix.md)
    mtasts tlsrpt show|send              TLS-RPT reports (docs/tlsrpt.md)
    mtasts bench [--quick] [--json PATH] the benchmark runner (from a source checkout)

``check`` and ``serve-socketmap`` take the world options ``--nameserver IP[:PORT]``, ``--cafile PEM`` and
``--policy-port N``, so they run against a :mod:`mtasts.testing` world as well as the internet.
Exit codes: 0 ok, 1 problems found (``check``) or a failure, 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import sys
from collections.abc import Sequence
from typing import Any

import dns.asyncresolver

from .errors import MTASTSError
from .policy import parse_policy
from .verdict import evaluate

__all__ = ["add_world_options", "main", "world_from_args"]

#: RFC 8461 §3.2's example policy.
RFC_EXAMPLE_POLICY = """\
version: STSv1
mode: enforce
mx: mail.example.com
mx: *.example.net
mx: backupmx.example.com
max_age: 604800
"""


# -- the world options, shared by check and serve-socketmap -----------------------------------------------------


def add_world_options(parser: argparse.ArgumentParser) -> None:
    """``--nameserver IP[:PORT]``, ``--cafile PEM``, ``--policy-port N``."""
    group = parser.add_argument_group("world (default: the system's DNS and trust store, port 443)")
    group.add_argument("--nameserver", metavar="IP[:PORT]", help="DNS server to use instead of the system's")
    group.add_argument("--cafile", metavar="PEM", help="trust store for policy hosts and MX certificates")
    group.add_argument("--policy-port", metavar="N", type=int, default=443, help="HTTPS port of policy hosts")


def parse_nameserver(text: str) -> tuple[str, int]:
    """``192.0.2.1``, ``192.0.2.1:5353``, ``[2001:db8::1]:5353``, ``2001:db8::1`` → (address, port)."""
    host, port = text, 53
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise MTASTSError(f"bad --nameserver {text!r}")
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, raw_port = text.partition(":")
        port = int(raw_port)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise MTASTSError(f"--nameserver needs an IP address, not {host!r}") from None
    if not 0 < port < 65536:
        raise MTASTSError(f"bad port in --nameserver {text!r}")
    return host, port


def world_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for :class:`~mtasts.resolver.PolicyResolver` (and the MX TLS context) from the options."""
    from .tls import create_client_context  # noqa: PLC0415 - loads ssl only when needed

    kwargs: dict[str, Any] = {"policy_port": args.policy_port}
    if args.nameserver:
        try:
            host, port = parse_nameserver(args.nameserver)
        except ValueError:
            raise MTASTSError(f"bad --nameserver {args.nameserver!r}") from None
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [host]
        resolver.port = port
        resolver.lifetime = 10.0
        kwargs["dns_resolver"] = resolver
    if args.cafile:
        try:
            kwargs["ssl_context"] = create_client_context(cafile=args.cafile)
        except OSError as exc:
            raise MTASTSError(f"cannot read --cafile {args.cafile}: {exc}") from None
    return kwargs


# -- demo ---------------------------------------------------------------------------------------------------------


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


def _bench(args: argparse.Namespace) -> int:
    try:
        from benchmarks.run import main as bench_main  # noqa: PLC0415 - a source checkout only
    except ImportError:
        print("mtasts bench runs the benchmarks of a source checkout: run it from the repository root", file=sys.stderr)
        return 2
    argv = ["--quick"] if args.quick else []
    if args.json:
        argv += ["--json", args.json]
    return bench_main(argv)


def _register_optional(commands: Any) -> None:
    """Subcommands that live in their own modules."""
    from . import check, socketmap  # noqa: PLC0415
    from .tlsrpt import cli as tlsrpt_cli  # noqa: PLC0415

    check.register_cli(commands)
    socketmap.register_cli(commands)
    tlsrpt_cli.register_cli(commands)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mtasts", description="MTA-STS (RFC 8461) for sending mail servers")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="a loopback world of MTA-STS domains and what mtasts makes of them")
    demo.add_argument("--static", action="store_true", help="only the RFC's example policy, no servers")
    demo.set_defaults(handler=_demo)
    bench = commands.add_parser("bench", help="the benchmark runner (from a source checkout)")
    bench.add_argument("--quick", action="store_true", help="a run of under two minutes")
    bench.add_argument("--json", metavar="PATH", help="write the results as JSON")
    bench.set_defaults(handler=_bench)
    _register_optional(commands)
    args = parser.parse_args(argv)
    try:
        result: int = args.handler(args)
    except MTASTSError as exc:
        print(f"mtasts: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
