"""``mtasts cache list | show DOMAIN | purge DOMAIN | export | warm FILE`` — the commands, as plain functions.

Each runs against a running daemon (:class:`Target` ``control``: its control socket) or directly against a
store (``store``: what the daemon would restore at start-up). The flags are :mod:`mtasts.cli`'s. Exit status:
0 done, 1 a failure (the daemon not reachable, the store not readable, ``show`` of a domain not cached, a purge
not complete), 2 usage (raised as :class:`~mtasts.errors.UsageError`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..errors import ControlError, MTASTSError, UsageError
from ..options import WorldOptions
from .protocol import (
    DEFAULT_CONCURRENCY,
    MAX_WARM_DOMAINS,
    Pacer,
    Request,
    cache_state,
    entry,
    export_lines,
    format_time,
    parse_domain_list,
    request_domain,
)

__all__ = ["Target", "export", "list_cache", "purge", "show", "target", "warm"]


@dataclass(frozen=True, slots=True)
class Target:
    """What a command works on: the daemon's control socket, or a store spec (exactly one)."""

    control: str | None = None
    store: str | None = None

    @property
    def label(self) -> str:
        return f"the daemon at {self.control}" if self.control is not None else f"the store {self.store}"


def target(*, control: str | None, store: str | None, config: str | None) -> Target:
    """The target the flags name: ``--control PATH``, ``--store SPEC``, or ``--config FILE.toml``'s
    ``control_socket``; :class:`UsageError` for none (or for a configuration without one)."""
    if control is not None:
        return Target(control=control)
    if store is not None:
        from ..stores import check_store_spec  # noqa: PLC0415

        return Target(store=check_store_spec(store))
    if config is not None:
        from ..socketmap.config import load_config  # noqa: PLC0415

        socket_path = load_config(config).control_socket
        if socket_path is None:
            raise UsageError(f"{config} sets no control_socket: give --control PATH or --store STORE")
        return Target(control=socket_path)
    raise UsageError(
        "say where the cache is: --control PATH (the daemon's control socket), --config FILE.toml "
        "(its control_socket) or --store STORE (the store itself, no daemon)"
    )


# -- running a command -----------------------------------------------------------------------------------------


def _run(action: str, work: Callable[[], Awaitable[int]], *, reads: Target | None = None) -> int:
    """Run ``work``; a failure of the daemon or the store is one line on stderr and exit status 1. ``reads``:
    the target is read, so a SQLite store that does not exist is such a failure (reading creates none)."""
    try:
        if reads is not None and reads.store is not None:
            _check_exists(reads.store)
        return asyncio.run(_guarded(work))
    except _Failed as exc:
        print(f"mtasts cache {action}: {exc}", file=sys.stderr)
        return 1


def _check_exists(spec: str) -> None:
    from ..stores import default_path  # noqa: PLC0415

    if spec == "sqlite" or spec.startswith("sqlite:"):
        path = str(default_path()) if spec == "sqlite" else spec.removeprefix("sqlite:")
        if not os.path.exists(path):
            raise _Failed(f"no store at {path}")


class _Failed(Exception):
    """The command failed (exit 1), for the reason given."""


async def _guarded(work: Callable[[], Awaitable[int]]) -> int:
    try:
        return await work()
    except (UsageError, _Failed):
        raise
    except ControlError as exc:
        raise _Failed(exc.message) from None
    except MTASTSError as exc:
        raise _Failed(exc.message) from None
    except OSError as exc:
        raise _Failed(f"{exc.strerror or exc}") from None
    except Exception as exc:  # a store's own exception (sqlite3, redis): the store cannot be used
        raise _Failed(f"the store failed: {type(exc).__name__}: {exc}") from None


async def _call(path: str, request: Request, on_item: Callable[[dict[str, Any]], object] | None = None) -> Any:
    from .client import ControlClient  # noqa: PLC0415

    async with await ControlClient.connect(path) as client:
        return await client.call(request, on_item)


@contextlib.asynccontextmanager
async def _opened(spec: str) -> AsyncIterator[Any]:
    """The store ``spec`` names, closed afterwards."""
    from ..stores import open_store  # noqa: PLC0415

    store = open_store(spec)
    try:
        yield store
    finally:
        await store.aclose()


def _entry_of_row(row: Any, now: float) -> dict[str, Any] | None:
    """A stored row's policy as an entry, or None (no policy in it, or one that does not parse)."""
    from ..policy import parse_policy  # noqa: PLC0415
    from ..socketmap.answers import format_policy  # noqa: PLC0415 - the socketmap's own answer
    from ..stores import validate_row  # noqa: PLC0415

    try:
        row = validate_row(row)
        if not row.has_policy:
            return None
        policy = parse_policy(row.policy_text)
    except (ValueError, MTASTSError):
        return None
    result = entry(
        row.domain,
        policy,
        row.policy_id,
        fetched_at=row.fetched_at,
        expires_at=row.expires_at,
        next_txt_check=None,
        now=now,
        postfix_policy=format_policy(policy),
    )
    result["policy_text"] = policy.to_text()
    return result


async def _entries(where: Target) -> list[dict[str, Any]]:
    """Every cached policy of the daemon, or every policy in the store, sorted by domain."""
    found: list[dict[str, Any]] = []
    if where.control is not None:
        await _call(where.control, Request("list"), found.append)
    else:
        assert where.store is not None
        now = time.time()
        async with _opened(where.store) as store:
            async for row in store.scan():
                cached = _entry_of_row(row, now)
                if cached is not None:
                    cached.pop("policy_text")
                    found.append(cached)
    found.sort(key=lambda e: str(e["domain"]))
    return found


# -- list ----------------------------------------------------------------------------------------------------------


def list_cache(where: Target, *, as_json: bool = False) -> int:
    """Print every cached policy: a table, or with ``as_json`` a JSON list of entries (docs/operations.md)."""

    async def work() -> int:
        entries = await _entries(where)
        if as_json:
            print(json.dumps(entries, indent=2))
            return 0
        rows = [
            [
                str(e["domain"]),
                str(e["status"]),
                str(e["mode"]),
                str(e["id"]),
                str(e["max_age"]),
                format_time(e["expires_at"]),
                " ".join(e["mx"]) or "-",
            ]
            for e in entries
        ]
        _table(["DOMAIN", "STATUS", "MODE", "ID", "MAX_AGE", "EXPIRES", "MX"], rows)
        print(f"{len(entries)} cached polic{'y' if len(entries) == 1 else 'ies'} in {where.label}")
        return 0

    return _run("list", work, reads=where)


def _table(header: list[str], rows: list[list[str]]) -> None:
    if not rows:
        return
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    for line in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())


# -- show ----------------------------------------------------------------------------------------------------------


def show(where: Target, domain: str, *, as_json: bool = False) -> int:
    """Print what is remembered of ``domain``; exit 1 with "not cached" when nothing is."""
    key = request_domain(domain)

    async def work() -> int:
        state = await _state(where, key)
        if as_json:
            print(json.dumps(state or cache_state(key, entry=None), indent=2))
        elif state is None:
            print(f"{key}: not cached")
        else:
            _print_state(state)
        return 0 if state is not None else 1

    return _run("show", work, reads=where)


async def _state(where: Target, key: str) -> dict[str, Any] | None:
    if where.control is not None:
        reply = await _call(where.control, Request("show", domain=key))
        state: dict[str, Any] | None = reply.get("state")
        return state
    assert where.store is not None
    now = time.time()
    async with _opened(where.store) as store:
        row = await store.get(key)
    if row is None:
        return None
    cached = _entry_of_row(row, now)
    backoff = None
    if getattr(row, "failed_id", None) and (row.retry_after or 0.0) > now:
        backoff = {
            "id": row.failed_id,
            "result_type": row.failure,
            "error": row.failure_detail,
            "until": row.retry_after,
        }
    if cached is None and backoff is None:
        return None
    return cache_state(key, entry=cached, backoff=backoff)


def _print_state(state: dict[str, Any]) -> None:
    print(state["domain"])
    lines: list[tuple[str, str]] = []
    cached = state.get("entry")
    if cached is not None:
        lines += [
            ("status", str(cached["status"])),
            ("policy", f"mode {cached['mode']}, id {cached['id']}, max_age {cached['max_age']}"),
            ("mx", ", ".join(cached["mx"]) or "-"),
            ("fetched", format_time(cached["fetched_at"])),
            ("expires", format_time(cached["expires_at"])),
        ]
        if cached.get("next_txt_check") is not None:
            lines.append(("next TXT check", format_time(cached["next_txt_check"])))
        lines.append(("postfix", str(cached["postfix_policy"] or "NOTFOUND (not enforce)")))
    negative = state.get("negative")
    if negative is not None:
        detail = f": {negative['error']}" if negative.get("error") else ""
        lines.append(("remembered", f"{negative['status']} until {format_time(negative['until'])}{detail}"))
    backoff = state.get("backoff")
    if backoff is not None:
        lines.append(
            (
                "back-off",
                f"the fetch of id {backoff['id']} failed ({backoff['result_type']}: {backoff['error']}); "
                f"not fetched again before {format_time(backoff['until'])}",
            )
        )
    for label, value in lines:
        print(f"  {label:<15} {value}")
    if cached is not None and cached.get("policy_text"):
        print("  policy text")
        for line in str(cached["policy_text"]).splitlines():
            print(f"    {line}")


# -- purge ---------------------------------------------------------------------------------------------------------


def purge(where: Target, domain: str, *, as_json: bool = False) -> int:
    """Forget ``domain`` in the daemon (memory, back-off, the store's row) or delete its row in the store."""
    key = request_domain(domain)

    async def work() -> int:
        if where.control is not None:
            reply = await _call(where.control, Request("purge", domain=key))
            result: dict[str, Any] = reply["purged"]
            complete = result.get("store") != "pending" and not result.get("unfinished")
            if as_json:
                print(json.dumps(result, indent=2))
            else:
                _print_purged(result)
            return 0 if complete else 1
        assert where.store is not None
        async with _opened(where.store) as store:
            row = await store.get(key)
            if row is not None:
                await store.write([], [key])
        if as_json:
            print(json.dumps({"domain": key, "store": "deleted" if row is not None else "none"}, indent=2))
        elif row is None:
            print(f"{key}: nothing stored in {where.store}")
        else:
            print(
                f"deleted the stored row of {key} from {where.store}. A running daemon keeps its memory copy "
                "until purged through --control."
            )
        return 0

    return _run("purge", work, reads=where)


def _print_purged(result: dict[str, Any]) -> None:
    domain = result["domain"]
    dropped = [
        what
        for what, flag in (
            ("the cached policy", "policy"),
            ("a remembered negative answer", "negative"),
            ("a fetch back-off", "backoff"),
        )
        if result.get(flag)
    ]
    store = {"deleted": "; its stored row is deleted", "pending": "", "none": ""}.get(result.get("store", ""), "")
    if dropped:
        print(f"purged {domain}: {', '.join(dropped)}{store}.")
    else:
        print(f"{domain}: nothing was cached in memory{store}.")
    print("The next lookup queries the TXT record and fetches the policy afresh.")
    if result.get("store") == "pending":
        print(
            "warning: the store could not be written now; the daemon retries the delete (and does not read the "
            "old row meanwhile), but a restart before then would restore it",
            file=sys.stderr,
        )
    if result.get("unfinished"):
        print(
            f"warning: {result['unfinished']} lookups of {domain} were still running after the wait: what they "
            "learn is kept; purge again once they are done",
            file=sys.stderr,
        )


# -- export --------------------------------------------------------------------------------------------------------


def export(where: Target, *, output: str | None = None, as_json: bool = False) -> int:
    """Postfix ``texthash`` lines for the unexpired enforce policies (to stdout, or written to ``output``)."""

    async def work() -> int:
        entries = await _entries(where)
        now = time.time()
        if as_json:
            text = json.dumps(
                [
                    {"domain": e["domain"], "policy": e["postfix_policy"]}
                    for e in entries
                    if e.get("postfix_policy") and now < float(e["expires_at"])
                ],
                indent=2,
            )
        else:
            text = "\n".join(export_lines(entries, now=now, source=where.label))
        if output is None:
            print(text)
        else:
            _write_atomically(output, text + "\n")
        return 0

    return _run("export", work, reads=where)


def _write_atomically(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same directory, renamed over it."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix=".mtasts-export-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


# -- warm ----------------------------------------------------------------------------------------------------------


def warm(
    where: Target,
    file: str,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    rate: float | None = None,
    world: WorldOptions | None = None,
    as_json: bool = False,
) -> int:
    """Look every domain of ``file`` (``-``: standard input) up, ``concurrency`` at once and at most ``rate``
    a second: through the daemon, or with a resolver of this process on the store (in the world ``world``).
    Names that are not domains are reported (not fatal). Exit 0 once every domain was looked up, whatever
    each found (the output says)."""
    try:
        if file == "-":
            text = sys.stdin.read()
        else:
            with open(file, encoding="utf-8") as handle:
                text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {file}: {getattr(exc, 'strerror', None) or exc}") from None
    domains, problems = parse_domain_list(text)
    invalid = [{"line": number, "text": name, "error": why} for number, name, why in problems]
    for problem in [] if as_json else invalid:
        print(f"{file}:{problem['line']}: skipped {problem['text']!r}: {problem['error']}", file=sys.stderr)
    outcomes: list[dict[str, Any]] = []

    def report(outcome: dict[str, Any]) -> None:
        outcomes.append(outcome)
        if not as_json:
            details = [f"mode {outcome['mode']}" if outcome.get("mode") else "", outcome.get("error") or ""]
            print(f"{outcome['domain']}  {outcome['status']}  {'; '.join(d for d in details if d)}".rstrip())

    async def work() -> int:
        if where.control is not None:
            from .client import ControlClient  # noqa: PLC0415

            async with await ControlClient.connect(where.control) as client:
                for start in range(0, len(domains), MAX_WARM_DOMAINS):  # one connection: the daemon keeps the pace
                    chunk = tuple(domains[start : start + MAX_WARM_DOMAINS])
                    await client.call(Request("warm", domains=chunk, concurrency=concurrency, rate=rate), report)
        else:
            assert where.store is not None
            await _warm_directly(
                where.store,
                domains=domains,
                concurrency=concurrency,
                rate=rate,
                world=world or WorldOptions(),
                report=report,
            )
        counts: dict[str, int] = {}
        for outcome in outcomes:
            counts[outcome["status"]] = counts.get(outcome["status"], 0) + 1
        if as_json:
            print(json.dumps({"results": outcomes, "invalid": invalid, "counts": counts}, indent=2))
        else:
            summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "nothing to do"
            skipped = f"; {len(invalid)} invalid name{'s' if len(invalid) != 1 else ''} skipped" if invalid else ""
            warmed = f"{len(outcomes)} domain{'s' if len(outcomes) != 1 else ''}"
            print(f"warmed {warmed} in {where.label}: {summary}{skipped}")
        return 0

    return _run("warm", work)


async def _warm_directly(
    spec: str,
    *,
    domains: list[str],
    concurrency: int,
    rate: float | None,
    world: WorldOptions,
    report: Callable[[dict[str, Any]], object],
) -> None:
    """Warm with a resolver of this process on the store: what it fetches is written there, where a daemon
    sharing the store finds it on its next memory miss."""
    from ..resolver import PolicyResolver  # noqa: PLC0415
    from ..stores import open_store  # noqa: PLC0415
    from .warm import look_up as warm_look_up  # noqa: PLC0415
    from .warm import warm as warm_all  # noqa: PLC0415

    options = world.resolver_kwargs()
    async with PolicyResolver(store=open_store(spec), **options) as resolver:

        async def look_up(domain: str) -> dict[str, Any]:
            return await warm_look_up(resolver, domain)

        pacer = Pacer(rate, asyncio.get_running_loop().time)
        async with contextlib.aclosing(warm_all(domains, look_up, concurrency=concurrency, pacer=pacer)) as outcomes:
            async for outcome in outcomes:
                report(outcome)
