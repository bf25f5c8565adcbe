"""The ``mtasts`` command line (also ``python -m mtasts``).

    mtasts demo                          the loopback demo (the README's)
    mtasts check DOMAIN [--json] [--starttls]
    mtasts serve-socketmap [...]         a Postfix socketmap server (docs/postfix.md)
    mtasts serve-http [...]              a local HTTP API for other relays (docs/http-api.md)
    mtasts tlsrpt show|send              TLS-RPT reports (docs/tlsrpt.md)
    mtasts cache list|show|purge|export|warm   the daemon's cache, or a store (docs/operations.md)
    mtasts bench [--quick] [--json PATH] the benchmark runner (from a source checkout)

``check``, ``serve-socketmap``, ``serve-http`` and ``tlsrpt send`` take the world options ``--nameserver
IP[:PORT]``, ``--cafile PEM`` and ``--policy-port N`` (:class:`~mtasts.options.WorldOptions`), so they run against
a :mod:`mtasts.testing` world as well as the internet.
Exit codes: 0 ok, 1 problems found (``check``) or a failure, 2 usage. A usage error is one line on stderr (and,
with ``--json``, ``{"error": ..., "exit": 2}`` on stdout); a closed pipe (``mtasts check ... | head -1``) ends
quietly.

This module owns every subcommand's flags; each command is a plain function of its own module
(:func:`mtasts.check.run`, :func:`mtasts.socketmap.run`, :func:`mtasts.http_api.run`, :mod:`mtasts.tlsrpt.cli`),
and none of them imports this one.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from .errors import MTASTSError
from .options import WorldOptions

if TYPE_CHECKING:
    from .socketmap import ServerConfig

__all__ = [
    "Parser",
    "add_world_options",
    "main",
    "port_number",
    "positive_count",
    "positive_seconds",
    "register_cache",
    "register_check",
    "register_serve_http",
    "register_serve_socketmap",
    "register_tlsrpt",
    "serve_socketmap_config",
    "world_options",
]

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


# -- the world options, shared by check, serve-socketmap and tlsrpt send ---------------------------------------


def add_world_options(parser: argparse.ArgumentParser) -> None:
    """``--nameserver IP[:PORT]``, ``--cafile PEM``, ``--policy-port N``."""
    group = parser.add_argument_group("world (default: the system's DNS and trust store, port 443)")
    group.add_argument("--nameserver", metavar="IP[:PORT]", help="DNS server to use instead of the system's")
    group.add_argument("--cafile", metavar="PEM", help="trust store for policy hosts and MX certificates")
    group.add_argument("--policy-port", metavar="N", type=port_number, default=443, help="HTTPS port of policy hosts")


def world_options(args: argparse.Namespace) -> WorldOptions:
    """The world options :func:`add_world_options` parsed (checked when the command builds its resolver)."""
    return WorldOptions(nameserver=args.nameserver, cafile=args.cafile, policy_port=args.policy_port)


# -- check ----------------------------------------------------------------------------------------------------------


def register_check(commands: Any) -> None:
    """``mtasts check DOMAIN`` (:func:`mtasts.check.run`)."""
    parser = commands.add_parser(
        "check", help="look a domain's MTA-STS policy up and report every problem (exit 1 if any)"
    )
    parser.add_argument("domain")
    parser.add_argument("--json", action="store_true", help="print one JSON object (docs/cli.md)")
    parser.add_argument("--starttls", action="store_true", help="also check STARTTLS and the certificate of each MX")
    parser.add_argument("--smtp-port", type=port_number, default=25, help=argparse.SUPPRESS)  # for test worlds
    parser.add_argument(
        "--timeout", type=positive_seconds, default=30.0, help="seconds for each network step: DNS, fetch, SMTP"
    )
    add_world_options(parser)
    parser.set_defaults(handler=_check)


def _check(args: argparse.Namespace) -> int:
    from . import check  # noqa: PLC0415 - the async shell loads only for the commands that use it

    return check.run(
        world_options(args),
        args.domain,
        as_json=args.json,
        starttls=args.starttls,
        smtp_port=args.smtp_port,
        timeout=args.timeout,
    )


# -- serve-socketmap ------------------------------------------------------------------------------------------------


def register_serve_socketmap(commands: Any) -> None:
    """``mtasts serve-socketmap`` (:func:`mtasts.socketmap.run`); flags override the configuration file."""
    from .resolver import DNS_ERROR_MODES  # noqa: PLC0415 - the async shell loads only when a parser is built
    from .socketmap.config import EVENT_LOOPS, LOG_FORMATS, LOG_LEVELS  # noqa: PLC0415

    parser = commands.add_parser(
        "serve-socketmap",
        help="a Postfix socketmap server for smtp_tls_policy_maps (docs/postfix.md)",
        description="Answer Postfix's smtp_tls_policy_maps lookups from MTA-STS policies. "
        "Flags override the configuration file.",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--listen", metavar="HOST:PORT", help="TCP address (default 127.0.0.1:8461; [::1]:8461)")
    where.add_argument("--unix", metavar="PATH", help="listen on a Unix socket instead")
    parser.add_argument("--config", metavar="FILE.toml", help="configuration file (keys: docs/postfix.md)")
    parser.add_argument("--store", metavar="SPEC", help="memory | sqlite (default) | sqlite:PATH | redis://...")
    parser.add_argument(
        "--cache-size", metavar="N", type=positive_count, help="policies kept in memory (default 100000)"
    )
    parser.add_argument("--log-level", choices=LOG_LEVELS, help="default info")
    parser.add_argument(
        "--log-format", choices=LOG_FORMATS, help="text (default) or json: one object per line (docs/operations.md)"
    )
    parser.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve GET /metrics (Prometheus; pip install 'mtasts[metrics]') and GET /healthz there (default off)",
    )
    parser.add_argument(
        "--max-connections",
        metavar="N",
        type=positive_count,
        help="client connections open at most (default: from the limit)",
    )
    parser.add_argument(
        "--dns-error",
        choices=DNS_ERROR_MODES,
        help="a failed _mta-sts TXT query with nothing cached: no-policy (default, RFC 8461) or defer (TEMP)",
    )
    parser.add_argument(
        "--fetch-idle-timeout",
        metavar="SECONDS",
        type=positive_seconds,
        help="give a policy host up after this long without a byte (default 15)",
    )
    parser.add_argument(
        "--tlsrpt",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Postfix >= 3.10's TLS-RPT attributes on every map name, not only QUERYwithTLSRPT (default off)",
    )
    parser.add_argument(
        "--dane",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="answer 'dane-only' for enforce domains whose MX hosts have DNSSEC-validated TLSA records (default on; "
        "needs a validating resolver and Postfix's smtp_dns_support_level = dnssec)",
    )
    parser.add_argument(
        "--event-loop",
        choices=EVENT_LOOPS,
        help="asyncio (default) or uvloop (pip install 'mtasts[fast]'; less CPU per cold lookup)",
    )
    parser.add_argument(
        "--control",
        metavar="PATH",
        help="a control socket for 'mtasts cache ... --control PATH' (TOML control_socket; mode 0600)",
    )
    parser.add_argument(
        "--user",
        metavar="NAME",
        help="after binding, run as this user (start as root; docs/operations.md, Privileges)",
    )
    parser.add_argument("--group", metavar="NAME", help="with --user: run as this group (default: the user's own)")
    add_world_options(parser)
    parser.set_defaults(handler=_serve_socketmap, policy_port=None)  # None: not given, the file or the default applies


def serve_socketmap_config(args: argparse.Namespace) -> ServerConfig:
    """The configuration file (if any) with the command line's flags on top."""
    from .socketmap import ServerConfig, load_config, override  # noqa: PLC0415

    config = load_config(args.config) if args.config else ServerConfig()
    return override(
        config,
        listen=args.listen,
        unix=args.unix,
        store=args.store,
        cache_size=args.cache_size,
        log_level=args.log_level,
        nameserver=args.nameserver,
        cafile=args.cafile,
        policy_port=args.policy_port,
        max_connections=args.max_connections,
        dns_error=args.dns_error,
        fetch_idle_timeout=args.fetch_idle_timeout,
        tlsrpt=args.tlsrpt,
        dane=args.dane,
        event_loop=args.event_loop,
        control_socket=args.control,
        user=args.user,
        group=args.group,
        metrics_listen=args.metrics,
        log_format=args.log_format,
    )


def _serve_socketmap(args: argparse.Namespace) -> int:
    from . import socketmap  # noqa: PLC0415

    # SIGHUP reads the file again and lays the same flags on top (None: no file, nothing to reload)
    reload = (lambda: serve_socketmap_config(args)) if args.config else None
    return socketmap.run(serve_socketmap_config(args), reload=reload)


# -- serve-http -----------------------------------------------------------------------------------------------------


def register_serve_http(commands: Any) -> None:
    """``mtasts serve-http`` (:func:`mtasts.http_api.run`); flags override the configuration file."""
    from .socketmap.config import LOG_LEVELS  # noqa: PLC0415 - the async shell loads only when a parser is built

    parser = commands.add_parser(
        "serve-http",
        help="a local HTTP API of MTA-STS policies and verdicts for other mail relays (docs/http-api.md)",
        description="Answer GET /v1/policy/{domain} and POST /v1/verdict with JSON, from the same resolver, store "
        "and configuration file as serve-socketmap. Flags override the configuration file.",
    )
    parser.add_argument("--listen", metavar="HOST:PORT", help="TCP address (default 127.0.0.1:8462; [::1]:8462)")
    parser.add_argument("--config", metavar="FILE.toml", help="configuration file (keys: docs/http-api.md)")
    parser.add_argument("--store", metavar="SPEC", help="memory | sqlite (default) | sqlite:PATH | redis://...")
    parser.add_argument("--log-level", choices=LOG_LEVELS, help="default info")
    add_world_options(parser)
    parser.set_defaults(handler=_serve_http, policy_port=None)  # None: not given, the file or the default applies


def _serve_http(args: argparse.Namespace) -> int:
    from . import http_api  # noqa: PLC0415
    from .socketmap import ServerConfig, load_config, override  # noqa: PLC0415

    config = load_config(args.config) if args.config else ServerConfig()
    config = override(
        config,
        store=args.store,
        log_level=args.log_level,
        nameserver=args.nameserver,
        cafile=args.cafile,
        policy_port=args.policy_port,
    )
    return http_api.run(config, listen=http_api.parse_listen(args.listen or http_api.DEFAULT_LISTEN))


# -- tlsrpt show | send ---------------------------------------------------------------------------------------------


def register_tlsrpt(commands: Any) -> None:
    """``mtasts tlsrpt show`` and ``mtasts tlsrpt send`` (:mod:`mtasts.tlsrpt.cli`)."""
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
            _add_tlsrpt_schedule_options(action)
        action.set_defaults(handler=_tlsrpt_show if name == "show" else _tlsrpt_send)


def _add_tlsrpt_schedule_options(action: argparse.ArgumentParser) -> None:
    """``tlsrpt send``: when reports go out (RFC 8460 §4.1; docs/tlsrpt.md, "When reports are sent")."""
    when = action.add_mutually_exclusive_group()
    when.add_argument(
        "--now",
        action="store_true",
        help="send every complete day's reports now, without waiting for their randomised send time",
    )
    when.add_argument(
        "--wait",
        action="store_true",
        help="keep running: send each report at its send time (SIGTERM or SIGINT stops)",
    )
    action.add_argument(
        "--send-delay",
        type=float,
        metavar="SECONDS",
        help="seconds after the UTC day ends before its reports go out (default 3600)",
    )
    action.add_argument(
        "--send-window",
        type=float,
        metavar="SECONDS",
        help="plus an offset (per sender, day and domain) below this many seconds (default 14400)",
    )


def _tlsrpt_show(args: argparse.Namespace) -> int:
    from .tlsrpt import cli  # noqa: PLC0415

    return cli.show(
        store=args.store, organization=args.organization, contact=args.contact, day=args.day, as_json=args.json
    )


def _tlsrpt_send(args: argparse.Namespace) -> int:
    from .tlsrpt import cli  # noqa: PLC0415

    return cli.send(
        world_options(args),
        store=args.store,
        organization=args.organization,
        contact=args.contact,
        smtp_port=args.smtp_port,
        now=args.now,
        wait=args.wait,
        send_delay=args.send_delay,
        send_window=args.send_window,
    )


# -- cache list | show | purge | export | warm ----------------------------------------------------------------------


def register_cache(commands: Any) -> None:
    """``mtasts cache list|show DOMAIN|purge DOMAIN|export|warm FILE`` (:mod:`mtasts.control.commands`)."""
    parser = commands.add_parser(
        "cache",
        help="the policy cache of a running daemon (--control PATH) or of a store (--store STORE)",
        description="Inspect and control the policy cache: a running daemon's, through its control socket, or a "
        "store's directly (docs/operations.md).",
    )
    actions = parser.add_subparsers(dest="cache_command", required=True)
    for name, help_text in [
        ("list", "every cached policy"),
        ("show", "what is remembered of one domain (exit 1: not cached)"),
        ("purge", "forget a domain: its next lookup queries the TXT record and fetches the policy afresh"),
        ("export", "Postfix texthash lines (smtp_tls_policy_maps) for the unexpired enforce policies"),
        ("warm", "look up every domain of a file (one per line), politely"),
    ]:
        action = actions.add_parser(name, help=help_text)
        if name in ("show", "purge"):
            action.add_argument("domain")
        elif name == "warm":
            action.add_argument("file", help="one domain per line; # comments; - for standard input")
        where = action.add_mutually_exclusive_group()
        where.add_argument("--control", metavar="PATH", help="the daemon's control socket (its control_socket)")
        where.add_argument("--config", metavar="FILE.toml", help="the daemon's configuration: its control_socket")
        where.add_argument(
            "--store", metavar="STORE", help="the store itself, no daemon: sqlite | sqlite:PATH | redis://..."
        )
        action.add_argument("--json", action="store_true", help="JSON output (docs/operations.md)")
        if name == "export":
            action.add_argument("--output", "-o", metavar="FILE", help="write the file (atomically) instead of stdout")
        if name == "warm":
            action.add_argument(
                "--concurrency", metavar="N", type=positive_count, default=8, help="lookups at once (default 8, max 64)"
            )
            action.add_argument(
                "--rate",
                metavar="N",
                type=positive_seconds,
                help="lookups started per second at most (default: no limit)",
            )
            add_world_options(action)  # for --store: this process looks the domains up
        action.set_defaults(handler=_cache)


def _cache(args: argparse.Namespace) -> int:
    from .control import commands  # noqa: PLC0415
    from .control.protocol import MAX_CONCURRENCY, MAX_RATE  # noqa: PLC0415
    from .errors import UsageError  # noqa: PLC0415

    where = commands.target(control=args.control, store=args.store, config=args.config)
    action = args.cache_command
    if action == "list":
        return commands.list_cache(where, as_json=args.json)
    if action == "show":
        return commands.show(where, args.domain, as_json=args.json)
    if action == "purge":
        return commands.purge(where, args.domain, as_json=args.json)
    if action == "export":
        return commands.export(where, output=args.output, as_json=args.json)
    if args.concurrency > MAX_CONCURRENCY:
        raise UsageError(f"--concurrency is at most {MAX_CONCURRENCY}, not {args.concurrency}")
    if args.rate is not None and args.rate > MAX_RATE:
        raise UsageError(f"--rate is at most {MAX_RATE:g} lookups per second, not {args.rate:g}")
    return commands.warm(
        where,
        args.file,
        concurrency=args.concurrency,
        rate=args.rate,
        world=world_options(args),
        as_json=args.json,
    )


# -- demo ---------------------------------------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    from . import demo  # noqa: PLC0415

    return demo.run(static=args.static)


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
    register_check(commands)
    register_serve_socketmap(commands)
    register_serve_http(commands)
    register_tlsrpt(commands)
    register_cache(commands)
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
