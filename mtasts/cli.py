"""The ``mtasts`` command line (also ``python -m mtasts``).

    mtasts demo                          the loopback demo (the README's)
    mtasts check DOMAIN [--json] [--starttls]
    mtasts serve-socketmap [...]         a Postfix socketmap server (docs/postfix.md)
    mtasts tlsrpt show|send              TLS-RPT reports (docs/tlsrpt.md)
    mtasts bench [--quick] [--json PATH] the benchmark runner (from a source checkout)

``check`` and ``serve-socketmap`` take the world options ``--nameserver IP[:PORT]``, ``--cafile PEM`` and
``--policy-port N``, so they run against a :mod:`mtasts.testing` world as well as the internet.
Exit codes: 0 ok, 1 problems found (``check``) or a failure, 2 usage. A usage error is one line on stderr (and,
with ``--json``, ``{"error": ..., "exit": 2}`` on stdout); a closed pipe (``mtasts check ... | head -1``) ends
quietly.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import dns.asyncresolver

from .errors import MTASTSError, UsageError
from .policy import parse_policy
from .verdict import evaluate

__all__ = [
    "Parser",
    "add_world_options",
    "main",
    "port_number",
    "positive_count",
    "positive_seconds",
    "world_from_args",
]

#: RFC 8461 §3.2's example policy.
RFC_EXAMPLE_POLICY = """\
version: STSv1
mode: enforce
mx: mail.example.com
mx: *.example.net
mx: backupmx.example.com
max_age: 604800
"""


# -- argument types: a bad value is a usage error naming the option, never a traceback --------------------------


def port_number(text: str) -> int:
    """A TCP port, 1 to 65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a port number is 1 to 65535, not {text!r}") from None
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"a port number is 1 to 65535, not {value}")
    return value


def positive_seconds(text: str) -> float:
    """A finite number of seconds greater than 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds (a number > 0), not {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected seconds (a finite number > 0), not {text}")
    return value


def positive_count(text: str) -> int:
    """An integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, not {value}")
    return value


class _UsageExit(Exception):
    """argparse found a usage error (raised instead of its two-line message and exit)."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog
        self.message = message


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors reach :func:`main` as one line (not usage text plus an exit)."""

    def error(self, message: str) -> NoReturn:
        raise _UsageExit(self.prog, message)


# -- the world options, shared by check and serve-socketmap -----------------------------------------------------


def add_world_options(parser: argparse.ArgumentParser) -> None:
    """``--nameserver IP[:PORT]``, ``--cafile PEM``, ``--policy-port N``."""
    group = parser.add_argument_group("world (default: the system's DNS and trust store, port 443)")
    group.add_argument("--nameserver", metavar="IP[:PORT]", help="DNS server to use instead of the system's")
    group.add_argument("--cafile", metavar="PEM", help="trust store for policy hosts and MX certificates")
    group.add_argument("--policy-port", metavar="N", type=port_number, default=443, help="HTTPS port of policy hosts")


def parse_nameserver(text: str) -> tuple[str, int]:
    """``192.0.2.1``, ``192.0.2.1:5353``, ``[2001:db8::1]:5353``, ``2001:db8::1`` → (address, port)."""
    host, port = text, 53
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise UsageError(f"bad --nameserver {text!r}")
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, raw_port = text.partition(":")
        port = int(raw_port)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise UsageError(f"--nameserver needs an IP address, not {host!r}") from None
    if not 0 < port < 65536:
        raise UsageError(f"bad port in --nameserver {text!r}")
    return host, port


def world_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for :class:`~mtasts.resolver.PolicyResolver` (and the MX TLS context) from the options."""
    from .tls import create_client_context  # noqa: PLC0415 - loads ssl only when needed

    kwargs: dict[str, Any] = {"policy_port": args.policy_port}
    if args.nameserver:
        try:
            host, port = parse_nameserver(args.nameserver)
        except ValueError:
            raise UsageError(f"bad --nameserver {args.nameserver!r}") from None
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [host]
        resolver.port = port
        resolver.lifetime = 10.0
        kwargs["dns_resolver"] = resolver
    if args.cafile:
        try:
            kwargs["ssl_context"] = create_client_context(cafile=args.cafile)
        except OSError as exc:
            raise UsageError(f"cannot read --cafile {args.cafile}: {exc.strerror or exc}") from None
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
    arguments = list(sys.argv[1:] if argv is None else argv)
    try:
        code = _main(arguments)
        sys.stdout.flush()  # here, not at interpreter exit: a closed pipe is then caught below
        return code
    except BrokenPipeError:
        # The reader went away (``| head -1``): stop quietly. Point stdout at /dev/null so that the interpreter's
        # final flush does not raise again (the idiom of the Python docs, "Note on SIGPIPE").
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), sys.stdout.fileno())
        return 1


def _usage_error(prog: str, message: str, arguments: list[str]) -> int:
    """One line on stderr; with ``--json``, also a JSON object on stdout (for scripts that parse stdout)."""
    print(f"{prog}: {message}", file=sys.stderr)
    if "--json" in arguments:
        print(json.dumps({"error": message, "exit": 2}))
    return 2


def _main(arguments: list[str]) -> int:
    parser = Parser(prog="mtasts", description="MTA-STS (RFC 8461) for sending mail servers")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    demo = commands.add_parser("demo", help="a loopback world of MTA-STS domains and what mtasts makes of them")
    demo.add_argument("--static", action="store_true", help="only the RFC's example policy, no servers")
    demo.set_defaults(handler=_demo)
    bench = commands.add_parser("bench", help="the benchmark runner (from a source checkout)")
    bench.add_argument("--quick", action="store_true", help="a run of under two minutes")
    bench.add_argument("--json", metavar="PATH", help="write the results as JSON")
    bench.set_defaults(handler=_bench)
    _register_optional(commands)
    try:
        args = parser.parse_args(arguments)
    except _UsageExit as exc:
        return _usage_error(exc.prog, f"{exc.message} (see {exc.prog} --help)", arguments)
    try:
        result: int = args.handler(args)
    except MTASTSError as exc:  # bad input that only the command could see (a domain, a file, a value)
        return _usage_error(f"mtasts {args.command}", exc.message, arguments)
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
