"""Cache control (issue 17): the daemon's control socket and ``mtasts cache list|show|purge|export|warm``.

Against real sockets and processes: the loopback World, ``serve()`` in-process with a control socket, one
``python -m mtasts serve-socketmap`` subprocess driven by the real ``python -m mtasts cache ...`` command line,
and SQLite files for the direct store mode. The World counts what a purge costs: ``world.queries(name, "TXT")``
and ``world.requests(host)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import shutil
import socket
import stat
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from mtasts import PolicyResolver, parse_policy
from mtasts.control import ControlClient, ControlServer
from mtasts.control import commands as cache_commands
from mtasts.control.protocol import (
    MAX_REQUEST,
    Pacer,
    Request,
    entry,
    export_lines,
    parse_domain_list,
    parse_request,
)
from mtasts.control.warm import warm
from mtasts.errors import ControlError, MTASTSError, UsageError
from mtasts.netstring import NetstringDecoder, encode
from mtasts.options import WorldOptions
from mtasts.socketmap import ServerConfig, SocketmapServer, format_policy, serve
from mtasts.stores import MemoryStore, SQLiteStore, StoredPolicy
from mtasts.stores._link import StoreLink
from mtasts.testing import World

from ._process import stop_process
from ._purity import absolute_imports
from .conftest import FakeClock, world_flags
from .test_socketmap import world_config

ENFORCE = "version: STSv1\nmode: enforce\nmx: mx.example.com\nmx: *.example.net\nmax_age: 86400\n"
OK_ENFORCE = b"OK secure match=mx.example.com:.example.net servername=hostname"
CHANGED = "version: STSv1\nmode: enforce\nmx: mx2.example.org\nmax_age: 86400\n"
OK_CHANGED = b"OK secure match=mx2.example.org servername=hostname"
TESTING = "version: STSv1\nmode: testing\nmx: mx.example.com\nmax_age: 86400\n"
NONE = "version: STSv1\nmode: none\nmax_age: 86400\n"
PACKAGE = Path(__file__).resolve().parent.parent / "mtasts"


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with World() as w:
        w.publish("enforce.example", ENFORCE)
        w.publish("testing.example", TESTING)
        w.publish("none.example", NONE)
        yield w
        assert not w.errors


@pytest.fixture
def sockdir() -> Iterator[str]:
    """A short directory for Unix sockets (a socket path is at most 107 bytes; pytest's tmp_path can be longer)."""
    path = tempfile.mkdtemp(prefix="mtc-", dir="/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.asynccontextmanager
async def daemon(world: World, sockdir: str, **kwargs: Any) -> AsyncIterator[tuple[SocketmapServer, str]]:
    """``serve()`` with a control socket, until the block ends: (the socketmap server, the control path)."""
    control = os.path.join(sockdir, "control.sock")
    config = world_config(world, control_socket=control, **kwargs)
    stop = asyncio.Event()
    started: asyncio.Future[SocketmapServer] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(config, ready=started.set_result, stop=stop))
    try:
        await asyncio.wait_for(asyncio.wait([started, task], return_when=asyncio.FIRST_COMPLETED), 5)  # type: ignore[type-var]
        if task.done():
            task.result()  # serve() failed: raise why
        yield started.result(), control
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert not Path(control).exists(), "the control socket is removed at shutdown"  # noqa: ASYNC240


async def ask(server: SocketmapServer, key: str) -> bytes:
    """One socketmap request over a real TCP connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(encode(b"postfix " + key.encode()))
        decoder = NetstringDecoder(100_000)
        async with asyncio.timeout(5):
            while True:
                data = await reader.read(65536)
                assert data, "the server closed the connection without a reply"
                replies = decoder.feed(data)
                if replies:
                    return replies[0]
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def control(path: str, request: Request) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One control request: (its final reply, its items)."""
    items: list[dict[str, Any]] = []
    async with await ControlClient.connect(path) as client:
        return await client.call(request, items.append), items


def counts(world: World, domain: str) -> tuple[int, int]:
    """(TXT queries for ``_mta-sts.domain``, policy fetches from ``mta-sts.domain``)."""
    return world.queries(f"_mta-sts.{domain}", "TXT"), world.requests(f"mta-sts.{domain}")


def texthash(lines: list[str]) -> dict[str, str]:
    """Postfix's texthash reading of a file: ``#`` comments and blank lines skipped, a line starting with
    whitespace continues the previous one (none should), else ``key whitespace value``."""
    table: dict[str, str] = {}
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        assert not line[0].isspace(), f"a continuation line: {line!r}"
        key, value = line.split(maxsplit=1)
        assert key not in table, f"duplicate key {key}"
        table[key] = value
    return table


# -- the protocol (sans I/O) -----------------------------------------------------------------------------------------


def test_protocol_module_is_pure() -> None:
    """The protocol's source imports no I/O module (the layering of tests/test_core_imports.py)."""
    imported = absolute_imports(PACKAGE / "control" / "protocol.py")
    assert not imported & {"asyncio", "socket", "ssl", "dns", "aiohttp", "time", "select", "os"}


def test_parse_request() -> None:
    assert parse_request(b'{"op": "list"}\n') == Request("list")
    assert parse_request(b'{"op":"show","domain":"Enforce.EXAMPLE."}') == Request("show", domain="enforce.example")
    assert parse_request('{"op":"purge","domain":"bücher.example"}'.encode()).domain == "xn--bcher-kva.example"
    warm_request = parse_request(b'{"op":"warm","domains":["a.example","x y"],"concurrency":3,"rate":2}')
    assert warm_request == Request("warm", domains=("a.example", "x y"), concurrency=3, rate=2.0)
    assert parse_request(json.dumps(warm_request.to_json()).encode()) == warm_request
    assert parse_request(b'{"op":"ping"}').op == "ping"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"garbage", "one JSON object"),
        (b"[1, 2]", "one JSON object"),
        (b"\xff\xfe", "one JSON object"),
        (b'{"op": "nuke"}', "op must be one of"),
        (b"{}", "op must be one of"),
        (b'{"op": "list", "domain": "x.example"}', "unknown key for list: domain"),
        (b'{"op": "show"}', "domain must be a domain name"),
        (b'{"op": "show", "domain": 7}', "domain must be a domain name"),
        (b'{"op": "purge", "domain": "[192.0.2.1]"}', "address literals"),
        (b'{"op": "purge", "domain": "a..example"}', "not a valid"),
        (b'{"op": "warm", "domains": []}', "domains must be a list"),
        (b'{"op": "warm", "domains": "a.example"}', "domains must be a list"),
        (json.dumps({"op": "warm", "domains": ["a.example"] * 201}).encode(), "domains must be a list"),
        (b'{"op": "warm", "domains": ["a.example"], "concurrency": 0}', "concurrency"),
        (b'{"op": "warm", "domains": ["a.example"], "concurrency": 65}', "concurrency"),
        (b'{"op": "warm", "domains": ["a.example"], "concurrency": true}', "concurrency"),
        (b'{"op": "warm", "domains": ["a.example"], "rate": 0}', "rate"),
        (b'{"op": "warm", "domains": ["a.example"], "rate": "fast"}', "rate"),
        (b'{"op": "warm", "domains": ["a.example"], "rate": 1e9}', "rate"),
        (b'{"op": "list", "pad": "' + b"x" * MAX_REQUEST + b'"}', "longer than"),
    ],
)
def test_malformed_requests_are_usage_errors(line: bytes, message: str) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        parse_request(line)


def test_parse_domain_list() -> None:
    text = "# warm these\nenforce.example\n\n  Bücher.example   # an IDN\nx y\nenforce.example.\n[192.0.2.1]\n#x\n"
    domains, problems = parse_domain_list(text)
    assert domains == ["enforce.example", "xn--bcher-kva.example"]
    assert [(number, name) for number, name, _ in problems] == [(5, "x y"), (7, "[192.0.2.1]")]


def test_pacer_spaces_starts_at_the_rate(clock: FakeClock) -> None:
    pacer = Pacer(4.0, clock)
    assert [pacer.reserve() for _ in range(4)] == [0.0, 0.25, 0.5, 0.75]
    clock.advance(10)  # idle long enough: the next start is due at once, and the pace starts again from it
    assert [pacer.reserve(), pacer.reserve()] == [0.0, 0.25]
    assert Pacer(None, clock).reserve() == 0.0
    with pytest.raises(UsageError):
        Pacer(0.0, clock)


async def _warm_with_fake_time(
    clock: FakeClock, domains: list[str], *, concurrency: int, rate: float | None, fail: str | None = None
) -> tuple[list[dict[str, Any]], list[float], int]:
    """Run warm() with a fake clock and sleep: (outcomes, start times, most lookups at once)."""
    starts: list[float] = []
    running = peak = 0

    async def fake_sleep(seconds: float) -> None:
        await asyncio.sleep(0)  # (what was started before runs at the time it was started)
        clock.advance(seconds)

    async def lookup(domain: str) -> dict[str, Any]:
        nonlocal running, peak
        starts.append(clock())
        running += 1
        peak = max(peak, running)
        try:
            for _ in range(5):  # a lookup spans several loop iterations: lookups overlap
                await asyncio.sleep(0)
            if domain == fail:
                raise RuntimeError("boom")
            return {"domain": domain, "status": "fetched"}
        finally:
            running -= 1

    pacer = Pacer(rate, clock)
    outcomes = [o async for o in warm(domains, lookup, concurrency=concurrency, pacer=pacer, sleep=fake_sleep)]
    return outcomes, starts, peak


async def test_warm_bounds_concurrency_and_rate(clock: FakeClock) -> None:
    domains = [f"d{i}.example" for i in range(10)]
    outcomes, starts, peak = await _warm_with_fake_time(clock, domains, concurrency=3, rate=None)
    assert sorted(o["domain"] for o in outcomes) == domains
    assert peak == 3  # never more than the concurrency, and it is used
    begin = clock()
    outcomes, starts, peak = await _warm_with_fake_time(clock, domains, concurrency=3, rate=5.0, fail="d4.example")
    assert len(outcomes) == 10 and peak <= 3
    assert [o["status"] for o in outcomes if o["domain"] == "d4.example"] == ["error"]  # the others went on
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert all(gap >= 0.2 - 1e-9 for gap in gaps), gaps  # 5 a second: 0.2 s apart at least
    assert starts[-1] - begin == pytest.approx(9 * 0.2)


def test_export_lines_are_the_socketmap_answers() -> None:
    now = 1_800_000_000.0
    enforce, testing = parse_policy(ENFORCE), parse_policy(TESTING)
    other = parse_policy("version: STSv1\nmode: enforce\nmx: *.a.example\nmx: b.example\nmax_age: 600\n")

    def cached(domain: str, policy: Any, *, age: float = 60) -> dict[str, Any]:
        fetched = now - age
        expires = fetched + policy.max_age
        return entry(
            domain,
            policy,
            "1",
            fetched_at=fetched,
            expires_at=expires,
            next_txt_check=None,
            now=now,
            postfix_policy=format_policy(policy),
        )

    entries = [
        cached("z.example", enforce),
        cached("a.example", other),
        cached("testing.example", testing),
        cached("expired.example", other, age=601),
    ]
    lines = export_lines(entries, now=now, source="the store sqlite:/x")
    assert lines[0].startswith("# mtasts cache export, 2027-01-15T08:00:00Z")
    table = texthash(lines)
    assert list(table) == ["a.example", "z.example"]  # sorted; only unexpired enforce policies
    assert table == {"a.example": format_policy(other), "z.example": format_policy(enforce)}
    assert table["z.example"] == OK_ENFORCE.decode().removeprefix("OK ")


# -- the store link: a purge's delete is never read back -------------------------------------------------------------


class _FailingWrites(MemoryStore):
    async def write(self, puts: Any, deletes: Any) -> None:
        raise OSError("read-only file system")


async def test_a_pending_delete_is_never_read_back() -> None:
    row = StoredPolicy("a.example", "1", ENFORCE, 1.0, 1.0, 2.0e9)
    for store in (MemoryStore(), _FailingWrites()):
        await MemoryStore.write(store, [row], [])
        link = StoreLink(store)
        assert await link.get("a.example") == row
        link.delete("a.example")  # queued, not yet written
        assert await link.get("a.example") is None
        assert await link.delete_now("a.example") is (not isinstance(store, _FailingWrites))
        assert await link.get("a.example") is None  # written, or still pending: either way never the old row
        await link.aclose()


# -- the resolver and the socketmap server ---------------------------------------------------------------------------


async def test_resolver_purge_forgets_policy_backoff_and_negative_answers(
    world: World, resolver: PolicyResolver, clock: FakeClock
) -> None:
    assert (await resolver.lookup("enforce.example")).policy == parse_policy(ENFORCE)
    state = resolver.cache_state("Enforce.Example.")
    assert state is not None and state.entry is not None and state.entry.policy_id == "1"
    assert [domain for domain, _ in resolver.cached_entries()] == ["enforce.example"]
    result = await resolver.purge("enforce.example")
    assert (result.policy, result.negative, result.backoff, result.store) == (True, False, False, "deleted")
    assert resolver.cache_state("enforce.example") is None
    assert await resolver.purge("enforce.example") == type(result)("enforce.example", store="deleted")

    world.publish("broken.example", None)  # 404: the fetch fails and is backed off (§3.3)
    assert (await resolver.lookup("broken.example")).policy is None
    assert (await resolver.lookup("broken.example")).policy is None
    assert world.requests("mta-sts.broken.example") == 1
    state = resolver.cache_state("broken.example")
    assert state is not None and state.backoff_id == "1" and state.backoff_until == clock() + 300
    world.publish("broken.example", ENFORCE)  # repaired, same id: without a purge, backed off for 5 minutes
    assert (await resolver.purge("broken.example")).backoff
    assert (await resolver.lookup("broken.example")).policy == parse_policy(ENFORCE)

    assert (await resolver.lookup("later.example")).policy is None  # nothing published: remembered
    state = resolver.cache_state("later.example")
    assert state is not None and state.negative is not None and state.negative.status == "no-policy"
    world.publish("later.example", ENFORCE)
    assert (await resolver.lookup("later.example")).policy is None
    assert (await resolver.purge("later.example")).negative
    assert (await resolver.lookup("later.example")).policy == parse_policy(ENFORCE)
    with pytest.raises(UsageError):
        await resolver.purge("[192.0.2.1]")


async def test_a_purge_the_store_cannot_write_still_forgets_the_row(world: World, clock: FakeClock) -> None:
    """The store refuses writes (a read-only file): the purge says ``pending``, and the next lookup still does
    the TXT query and the fetch — the old row, still stored, is never read back while its delete is pending."""
    store = _FailingWrites()
    row = StoredPolicy("enforce.example", "1", CHANGED, clock() - 60, clock() - 60, clock() - 60 + 86400)
    await MemoryStore.write(store, [row], [])
    async with world.policy_resolver(clock=clock, store=store) as resolver:
        assert (await resolver.lookup("enforce.example")).policy == parse_policy(CHANGED)  # restored, no I/O
        assert counts(world, "enforce.example") == (0, 0)
        assert (await resolver.purge("enforce.example")).store == "pending"
        lookup = await resolver.lookup("enforce.example")
        assert (lookup.status, lookup.policy) == ("fetched", parse_policy(ENFORCE))
        assert counts(world, "enforce.example") == (1, 1)


def dane_domain(world: World, domain: str) -> None:
    """An enforce domain whose two MX hosts have validated TLSA records (DANE governs it)."""
    world.publish(domain, f"version: STSv1\nmode: enforce\nmx: *.{domain}\nmax_age: 86400\n")
    for i in range(2):
        mx = f"mx{i}.{domain}"
        world.add_record(domain, "MX", f"{10 * (i + 1)} {mx}.")
        world.add_record(mx, "A", f"127.0.0.{i + 2}")
        world.tlsa(f"_25._tcp.{mx}", 3, 1, 1, world.tlsa_data(mx))
    world.sign(domain)


async def test_purge_forgets_the_servers_dane_memo(world: World, resolver: PolicyResolver) -> None:
    """The socketmap remembers a domain's DANE state for its TTL and memoises the reply: a purge drops both, so
    the next answer follows what is published now."""
    dane_domain(world, "dane.example")
    async with SocketmapServer(resolver, port=0, dane=True) as server:
        for key in ("dane.example", "DANE.example."):  # memoised as asked, in two spellings
            assert await ask(server, key) == b"OK dane-only"
            assert await ask(server, key) == b"OK dane-only"
        for i in range(2):
            world.remove_records(f"_25._tcp.mx{i}.dane.example", "TLSA")  # DANE withdrawn
        assert await ask(server, "DANE.example.") == b"OK dane-only"  # remembered (its TTL is 300 s)
        await server.purge("dane.example")
        for key in ("dane.example", "DANE.example."):
            assert await ask(server, key) == b"OK secure match=.dane.example servername=hostname"
    assert world.queries("_mta-sts.dane.example", "TXT") == 2


# -- against a running daemon ----------------------------------------------------------------------------------------


async def test_list_and_show_after_a_lookup(world: World, sockdir: str) -> None:
    async with daemon(world, sockdir) as (server, path):
        assert await ask(server, "enforce.example") == OK_ENFORCE
        assert await ask(server, "testing.example") == b"NOTFOUND "
        final, items = await control(path, Request("list"))
        assert final == {"ok": True, "count": 2}
        listed = {item["domain"]: item for item in items}
        assert set(listed) == {"enforce.example", "testing.example"}
        cached = listed["enforce.example"]
        assert (cached["status"], cached["mode"], cached["id"], cached["max_age"]) == ("valid", "enforce", "1", 86400)
        assert cached["mx"] == ["mx.example.com", "*.example.net"]
        assert cached["expires_at"] - cached["fetched_at"] == 86400
        assert abs(cached["fetched_at"] - time.time()) < 60
        assert cached["postfix_policy"] == OK_ENFORCE.decode().removeprefix("OK ")
        assert listed["testing.example"]["postfix_policy"] is None
        final, _ = await control(path, Request("show", domain="enforce.example"))
        assert final["found"] and final["state"]["entry"]["policy_text"] == ENFORCE
        assert final["state"]["negative"] is None and final["state"]["backoff"] is None
        final, _ = await control(path, Request("show", domain="unknown.example"))
        assert final == {"ok": True, "found": False, "state": None}
        final, _ = await control(path, Request("ping"))
        assert final["cached"] == 2 and final["pid"] == os.getpid()


@pytest.mark.parametrize("store", ["memory", "sqlite"])
async def test_purge_causes_exactly_one_new_txt_query_and_fetch(world: World, sockdir: str, store: str) -> None:
    """The acceptance point: after ``cache purge``, the next socketmap request does one TXT query and one fetch
    (and nothing more), and is answered ``OK secure ...``. With a SQLite store, the purge deletes the row too —
    else the next lookup would adopt it again, without any query."""
    spec = "memory" if store == "memory" else f"sqlite:{os.path.join(sockdir, 'policies.sqlite3')}"
    async with daemon(world, sockdir, store=spec) as (server, path):
        assert await ask(server, "enforce.example") == OK_ENFORCE
        assert await ask(server, "enforce.example") == OK_ENFORCE
        assert counts(world, "enforce.example") == (1, 1)
        final, _ = await control(path, Request("purge", domain="enforce.example"))
        purged = final["purged"]
        assert purged["domain"] == "enforce.example" and purged["policy"] is True
        assert purged["store"] == "deleted" and purged["unfinished"] == 0
        assert counts(world, "enforce.example") == (1, 1)  # the purge itself does no I/O
        assert await ask(server, "enforce.example") == OK_ENFORCE
        assert counts(world, "enforce.example") == (2, 2)
        assert await ask(server, "enforce.example") == OK_ENFORCE
        assert counts(world, "enforce.example") == (2, 2)  # cached again


async def test_purge_picks_up_a_policy_changed_under_the_same_id(world: World, sockdir: str) -> None:
    """postfix-mta-sts-resolver #109/#113: a domain changed its policy but not its id; without a purge the old
    one is answered until its max_age runs out (a day here)."""
    async with daemon(world, sockdir, store=f"sqlite:{os.path.join(sockdir, 'p.sqlite3')}") as (server, path):
        assert await ask(server, "enforce.example") == OK_ENFORCE
        world.publish("enforce.example", CHANGED, id="1")  # same id
        assert await ask(server, "enforce.example") == OK_ENFORCE
        await control(path, Request("purge", domain="enforce.example"))
        assert await ask(server, "enforce.example") == OK_CHANGED
        final, _ = await control(path, Request("show", domain="enforce.example"))
        assert final["state"]["entry"]["mx"] == ["mx2.example.org"]


async def test_a_purged_domain_whose_host_is_slow_is_answered_temp_never_notfound(world: World, sockdir: str) -> None:
    async with daemon(world, sockdir, request_timeout=0.2) as (server, path):
        assert await ask(server, "enforce.example") == OK_ENFORCE
        world.domain("enforce.example").delay = 0.6  # the policy host is slow from now on
        await control(path, Request("purge", domain="enforce.example"))
        assert await ask(server, "enforce.example") == b"TEMP policy lookup in progress"
        assert await ask(server, "enforce.example") == b"TEMP policy lookup in progress"  # joins the same lookup
        async with asyncio.timeout(5):
            while not (await control(path, Request("show", domain="enforce.example")))[0]["found"]:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        assert await ask(server, "enforce.example") == OK_ENFORCE
        assert counts(world, "enforce.example") == (2, 2)


async def test_a_purge_waits_for_a_lookup_in_flight(world: World, sockdir: str) -> None:
    """A lookup running when the purge arrives finishes first; what it learnt is forgotten too, so the next
    request after the purge's reply still does its own TXT query and fetch."""
    world.domain("enforce.example").delay = 0.5
    async with daemon(world, sockdir) as (server, path):
        first = asyncio.create_task(ask(server, "enforce.example"))
        async with asyncio.timeout(5):
            while world.requests("mta-sts.enforce.example") == 0:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        final, _ = await control(path, Request("purge", domain="enforce.example"))
        assert await first == OK_ENFORCE  # the request waiting on it got its answer
        assert (final["purged"]["waited"], final["purged"]["unfinished"]) == (1, 0)
        assert (await control(path, Request("show", domain="enforce.example")))[0]["found"] is False
        world.domain("enforce.example").delay = 0
        assert await ask(server, "enforce.example") == OK_ENFORCE
        assert counts(world, "enforce.example") == (2, 2)


async def test_warm_through_the_daemon(world: World, sockdir: str) -> None:
    """N domains → N fetches, never more than the concurrency at once (each policy host takes 0.2 s)."""
    domains = [f"w{i}.example" for i in range(6)]
    for domain in domains:
        world.publish(domain, ENFORCE, delay=0.2)
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, len(world.request_log) - len(world.response_log))
            await asyncio.sleep(0.005)

    async with daemon(world, sockdir) as (server, path):
        watcher = asyncio.create_task(watch())
        try:
            final, items = await control(path, Request("warm", domains=(*domains, "not a name"), concurrency=2))
        finally:
            watcher.cancel()
        assert final == {"ok": True, "count": 7}
        assert sorted(i["domain"] for i in items if i["status"] == "fetched") == domains
        assert [i["error"] for i in items if i["status"] == "invalid"] != []
        assert sum(world.requests(f"mta-sts.{d}") for d in domains) == 6
        assert peak == 2
        for domain in domains:  # warm: answered from memory, no new query
            assert await ask(server, domain) == OK_ENFORCE
        assert sum(world.queries(f"_mta-sts.{d}", "TXT") for d in domains) == 6


async def test_the_control_socket_is_private_and_survives_bad_clients(world: World, sockdir: str) -> None:
    async with daemon(world, sockdir) as (server, path):
        mode = os.stat(path).st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
        reader, writer = await asyncio.open_unix_connection(path)
        for line in (b"garbage\n", b'{"op": "purge"}\n', b'{"op": "show", "domain": "[::1]"}\n'):
            writer.write(line)
            reply = json.loads(await asyncio.wait_for(reader.readline(), 5))
            assert reply["ok"] is False and reply["error"]
        writer.write(b'{"op": "ping"}\n')  # the same connection still works
        assert json.loads(await asyncio.wait_for(reader.readline(), 5))["ok"] is True
        writer.write(b"x" * (MAX_REQUEST + 10) + b"\n")  # too long: an error, then the connection is closed
        reply = json.loads(await asyncio.wait_for(reader.readline(), 5))
        assert reply == {"ok": False, "error": f"request longer than {MAX_REQUEST} bytes"}
        with contextlib.suppress(ConnectionResetError):  # (closed with the line unread: the kernel may say so)
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed
        writer.close()
        idle = [await asyncio.open_unix_connection(path) for _ in range(8)]  # the limit: 8 control connections
        reader, writer = await asyncio.open_unix_connection(path)
        reply = json.loads(await asyncio.wait_for(reader.readline(), 5))
        assert reply["ok"] is False and "too many control connections" in reply["error"]
        writer.close()
        for _, other in idle:
            other.close()
        assert await ask(server, "enforce.example") == OK_ENFORCE  # the daemon kept serving throughout
        async with asyncio.timeout(5):
            while True:  # the idle connections' handlers notice the close
                with contextlib.suppress(ControlError):
                    assert (await control(path, Request("ping")))[0]["ok"]
                    break
                await asyncio.sleep(0.02)


async def test_a_stale_socket_is_replaced_and_a_live_one_refused(resolver: PolicyResolver, sockdir: str) -> None:
    path = os.path.join(sockdir, "c.sock")
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(path)  # what a killed daemon leaves behind
    async with ControlServer(resolver, path=path):
        assert (await control(path, Request("ping")))[0]["ok"]
        with pytest.raises(MTASTSError, match="another process is listening"):
            await ControlServer(resolver, path=path).start()
    Path(path).write_text("not a socket")  # noqa: ASYNC240
    with pytest.raises(MTASTSError, match="something else than a socket"):
        await ControlServer(resolver, path=path).start()
    with pytest.raises(UsageError):
        ControlServer(resolver, path=path, mode=0o666)


def test_control_keys_and_flags(tmp_path: Path) -> None:
    from mtasts.cli import register_serve_socketmap, serve_socketmap_config
    from mtasts.socketmap import load_config

    path = tmp_path / "mtasts.toml"
    path.write_text('control_socket = "/run/mtasts/control.sock"\ncontrol_mode = 0o660\n')
    config = load_config(path)
    assert (config.control_socket, config.control_mode) == ("/run/mtasts/control.sock", 0o660)
    assert ServerConfig().control_socket is None and ServerConfig().control_mode == 0o600
    for bad in ("control_mode = 0o666\n", "control_mode = 0o604\n", 'control_socket = ""\n'):
        path.write_text(bad)
        with pytest.raises(UsageError, match="control_"):
            load_config(path)
    import argparse

    parser = argparse.ArgumentParser()
    register_serve_socketmap(parser.add_subparsers())
    args = parser.parse_args(["serve-socketmap", "--control", "/tmp/c.sock"])
    assert serve_socketmap_config(args).control_socket == "/tmp/c.sock"


# -- the command line ------------------------------------------------------------------------------------------------


async def _cli(*arguments: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mtasts", "cache", *arguments, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_the_command_line_against_a_subprocess_daemon(
    world: World, sockdir: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``python -m mtasts serve-socketmap --control PATH`` driven by ``python -m mtasts cache ...``."""
    control_path, socketmap_path = os.path.join(sockdir, "control.sock"), os.path.join(sockdir, "map.sock")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mtasts", "serve-socketmap", "--unix", socketmap_path, "--control", control_path,
        "--store", f"sqlite:{os.path.join(sockdir, 'policies.sqlite3')}", *world_flags(world),
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip

    async def ask_unix(key: str) -> bytes:
        reader, writer = await asyncio.open_unix_connection(socketmap_path)
        writer.write(encode(b"postfix " + key.encode()))
        data = await asyncio.wait_for(reader.read(65536), 5)
        writer.close()
        [reply] = NetstringDecoder(100_000).feed(data)
        return reply

    try:
        async with asyncio.timeout(15):
            while True:
                with contextlib.suppress(ControlError):
                    await control(control_path, Request("ping"))
                    break
                assert process.returncode is None, "the daemon exited"
                await asyncio.sleep(0.05)
        assert await ask_unix("enforce.example") == OK_ENFORCE
        (status, out, err), (export_status, export, export_err) = await asyncio.gather(
            _cli("list", "--control", control_path, "--json"), _cli("export", "--control", control_path)
        )
        assert (status, export_status) == (0, 0), err + export_err
        assert [(e["domain"], e["mode"]) for e in json.loads(out)] == [("enforce.example", "enforce")]
        assert texthash(export.splitlines()) == {"enforce.example": OK_ENFORCE.decode().removeprefix("OK ")}
        status, out, err = await _cli("purge", "enforce.example", "--control", control_path)
        assert (status, err) == (0, "")
        assert "purged enforce.example: the cached policy; its stored row is deleted" in out
        assert await ask_unix("enforce.example") == OK_ENFORCE
        assert counts(world, "enforce.example") == (2, 2)
    finally:
        await stop_process(process)
    from mtasts.cli import main

    capsys.readouterr()
    assert await asyncio.to_thread(main, ["cache", "list", "--control", control_path]) == 1  # the daemon is gone
    assert capsys.readouterr().err.startswith(
        f"mtasts cache list: no control socket at {control_path}: is the daemon running"
    )


def test_without_a_daemon_the_commands_fail_clearly(sockdir: str, capsys: pytest.CaptureFixture[str]) -> None:
    from mtasts.cli import main

    path = os.path.join(sockdir, "dead.sock")
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(path)  # a socket file, nobody listening
    assert main(["cache", "show", "enforce.example", "--control", path]) == 1
    assert capsys.readouterr().err == (
        f"mtasts cache show: the daemon is not running: nothing listens on the control socket {path}\n"
    )
    assert main(["cache", "list"]) == 2
    assert "--control PATH" in capsys.readouterr().err
    assert main(["cache", "list", "--control", path, "--store", "memory"]) == 2
    assert main(["cache", "purge", "[192.0.2.1]", "--control", path]) == 2
    assert main(["cache", "warm", "f", "--control", path, "--concurrency", "65"]) == 2
    assert main(["cache", "list", "--store", f"sqlite:{sockdir}/absent.sqlite3"]) == 1
    assert "no store at" in capsys.readouterr().err


# -- directly against a store ----------------------------------------------------------------------------------------


def test_direct_store_mode_on_a_sqlite_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mtasts.cli import main

    path = tmp_path / "policies.sqlite3"
    now = time.time()
    rows = [
        StoredPolicy("enforce.example", "7", ENFORCE, now - 60, now - 60, now - 60 + 86400),
        StoredPolicy("testing.example", "1", TESTING, now - 60, now - 60, now - 60 + 86400),
        StoredPolicy("old.example", "1", ENFORCE, now - 90000, now - 90000, now - 90000 + 86400),  # expired
        StoredPolicy(
            "failed.example",
            failed_id="2",
            failure="sts-webpki-invalid",
            failure_detail="bad cert",
            retry_after=now + 200,
        ),
    ]

    async def fill() -> None:
        store = SQLiteStore(path)
        await store.write(rows, [])
        await store.aclose()

    asyncio.run(fill())
    spec = f"sqlite:{path}"
    assert main(["cache", "list", "--store", spec, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(e["domain"], e["status"]) for e in listed] == [
        ("enforce.example", "valid"),
        ("old.example", "expired"),
        ("testing.example", "valid"),
    ]
    assert main(["cache", "list", "--store", spec]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^enforce\.example\s+valid\s+enforce\s+7\s+86400\s", out, re.MULTILINE)
    assert out.rstrip().endswith(f"3 cached policies in the store {spec}")
    assert main(["cache", "show", "failed.example", "--store", spec]) == 0
    assert "the fetch of id 2 failed (sts-webpki-invalid: bad cert)" in capsys.readouterr().out
    assert main(["cache", "show", "nowhere.example", "--store", spec]) == 1
    assert capsys.readouterr().out == "nowhere.example: not cached\n"
    export = tmp_path / "snapshot"
    assert main(["cache", "export", "--store", spec, "--output", str(export)]) == 0
    assert texthash(export.read_text().splitlines()) == {"enforce.example": format_policy(parse_policy(ENFORCE))}
    assert main(["cache", "purge", "enforce.example", "--store", spec]) == 0
    assert "A running daemon keeps its memory copy until purged through --control" in capsys.readouterr().out
    assert main(["cache", "show", "enforce.example", "--store", spec, "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["entry"] is None


async def test_warm_directly_into_a_store(world: World, tmp_path: Path) -> None:
    """``cache warm FILE --store``: this process looks the domains up (the world options say where) and the
    store keeps them — a daemon on the store would restore them."""
    domains = [f"w{i}.example" for i in range(4)]
    for domain in domains:
        world.publish(domain, ENFORCE)
    listing = tmp_path / "domains.txt"
    listing.write_text("# to warm\n" + "\n".join(domains) + "\nnot a domain\n")
    spec = f"sqlite:{tmp_path / 'policies.sqlite3'}"
    options = WorldOptions(
        nameserver=f"{world.host}:{world.dns_port}", cafile=world.ca_pem_path, policy_port=world.https_port
    )
    where = cache_commands.Target(store=spec)
    assert await asyncio.to_thread(cache_commands.warm, where, str(listing), concurrency=2, rate=50, world=options) == 0
    assert sum(world.requests(f"mta-sts.{d}") for d in domains) == 4
    store = SQLiteStore(tmp_path / "policies.sqlite3")
    try:
        assert sorted([row.domain async for row in store.scan()]) == domains
    finally:
        await store.aclose()
