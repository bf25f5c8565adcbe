"""Observability of ``mtasts serve-socketmap`` (issue 17): /metrics, /healthz, JSON logs and policy-change lines —
over real sockets, in a real process, against the loopback world (no mocks)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import socket
import struct
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mtasts import PolicyResolver
from mtasts.errors import MTASTSError
from mtasts.logs import JsonFormatter
from mtasts.netstring import encode
from mtasts.socketmap import ServerConfig, SocketmapServer, load_config, serve
from mtasts.socketmap.monitor import MonitorListener
from mtasts.socketmap.tally import ANSWERS, answer_kind
from mtasts.stores import MemoryStore
from mtasts.testing import World

from ._process import stop_process
from .conftest import FakeClock, world_flags
from .test_socketmap import Client, world_config
from .test_socketmap_dane import dane_domain

ROOT = Path(__file__).resolve().parent.parent
ENFORCE = "version: STSv1\nmode: enforce\nmx: mx.{d}\nmax_age: 86400\n"
TESTING = "version: STSv1\nmode: testing\nmx: mx.{d}\nmax_age: 86400\n"
NONE = "version: STSv1\nmode: none\nmax_age: 86400\n"


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with World() as w:
        for name in ("enforce.example", "other.example"):
            w.publish(name, ENFORCE.format(d=name))
        w.publish("testing.example", TESTING.format(d="testing.example"))
        w.publish("none.example", NONE)
        w.publish("slow.example", ENFORCE.format(d="slow.example"), delay=0.5)
        w.publish("expired-cert.example", ENFORCE.format(d="expired-cert.example"), cert="expired")
        w.publish("servfail.example", ENFORCE.format(d="servfail.example"))
        w.set_failure("_mta-sts.servfail.example", "servfail")
        dane_domain(w, "dane.example", tlsa_hosts=2)
        yield w


# -- the answers by kind: every kind of request, on every path, counted as it was answered ----------------------

# Requests of every kind: looked up, then (the second round) answered from memory on each path of _quick.
PAYLOADS = [
    b"postfix enforce.example",  # secure: looked up, then the memo
    b"postfix ENFORCE.Example.",  # a key normalised on the slow path
    b"postfix [other.example]:25",  # parsed key
    b"postfix testing.example",  # NOTFOUND: a testing policy (never memoised)
    b"postfix none.example",  # NOTFOUND: mode none
    b"postfix nopolicy.example",  # NOTFOUND: looked up, then the negative cache
    b"postfix .enforce.example",  # NOTFOUND: a parent-domain lookup, no I/O
    b"postfix [192.0.2.1]",  # NOTFOUND: an address literal
    b"postfix [bad",  # NOTFOUND: a malformed next-hop
    b"postfix \xff.example",  # NOTFOUND: not UTF-8
    b"postfix",  # PERM: no key
    b"QUERYwithTLSRPT enforce.example",  # secure with the TLS-RPT attributes
    b"QUERYwithTLSRPT testing.example",  # NOTFOUND on the TLS-RPT name
    b"QUERYwithTLSRPT nopolicy.example",
    b"other-name enforce.example",
    b"postfix servfail.example",  # TEMP under dns_error = defer
    b"postfix slow.example",  # TEMP: still looking up after request_timeout, then secure from the cache
    b"postfix expired-cert.example",  # NOTFOUND: the fetch failed
    b"postfix dane.example",  # dane-only with DANE on, else secure
    b"QUERYwithTLSRPT dane.example",
    b"sts enforce.example",  # sendmail's map: the plain answer, never dane-only
    b"sts dane.example",
    b"sts testing.example",
    b"sts nopolicy.example",
    b"exim testing.example",  # Exim's map: NOTFOUND from memory once cached
    b"exim enforce.example",  # always a lookup (the MX hosts), then OK or TEMP
    b"exim nopolicy.example",
]


async def answer_rounds(server: SocketmapServer, rounds: int = 2) -> Counter[str]:
    """Send PAYLOADS ``rounds`` times over one connection (pipelined); the kinds of the replies received."""
    client = await Client.connect(server)
    kinds: Counter[str] = Counter()
    try:
        for _ in range(rounds):
            client.writer.write(b"".join(encode(payload) for payload in PAYLOADS))
            for reply in await client.replies_for(len(PAYLOADS)):
                kinds[answer_kind(encode(reply))] += 1
            await asyncio.sleep(0.6)  # slow.example's lookup ends (its request was answered TEMP)
    finally:
        await client.close()
    return kinds


@pytest.mark.parametrize(("dane", "tlsrpt"), [(False, False), (True, False), (False, True), (True, True)])
async def test_answers_are_counted_by_kind_on_every_path(
    world: World, clock: FakeClock, dane: bool, tlsrpt: bool
) -> None:
    async with (
        world.policy_resolver(clock=clock, store=MemoryStore(), fetch_timeout=5.0, dns_error="defer") as resolver,
        SocketmapServer(resolver, port=0, dane=dane, tlsrpt=tlsrpt, request_timeout=0.2) as server,
    ):
        kinds = await answer_rounds(server)
        answers = server.answers()
        assert answers == {kind: kinds[kind] for kind in ANSWERS}
        assert sum(answers.values()) == server.requests == 2 * len(PAYLOADS)
        assert answers["temp"] >= 2 and answers["perm"] == 2 and answers["notfound"] >= 10
        assert answers["secure"] >= 4
        assert (answers["dane"] >= 2) is dane
        # the latency histogram: every answer in it; the answers from memory in the first bucket
        bounds, cumulative, seconds = server.latency()
        assert len(cumulative) == len(bounds) + 1 and cumulative == sorted(cumulative)
        assert cumulative[-1] == server.requests
        assert cumulative[0] >= server.requests - server._tally.lookups
        assert 0 < seconds < 10


async def test_a_request_whose_connection_closes_before_its_lookup_ends_is_in_no_answer(
    world: World, resolver: PolicyResolver
) -> None:
    async with SocketmapServer(resolver, port=0) as server:
        client = await Client.connect(server)
        client.send("slow.example")
        await asyncio.sleep(0.1)
        sock = client.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.writer.transport.abort()  # a reset: the server cancels the request (a half close would be answered)
        await asyncio.sleep(0.6)
        assert server.requests == 1
        assert sum(server.answers().values()) == 0
        assert await server.answer(b"postfix slow.example") == b"OK secure match=mx.slow.example servername=hostname"
        assert server.answers()["secure"] == 1


# -- the resolver's counters and its policy-change lines (an injected clock) -------------------------------------


def json_lines(records: list[logging.LogRecord]) -> list[dict[str, Any]]:
    formatter = JsonFormatter()
    lines = [formatter.format(record) for record in records]
    assert all("\n" not in line for line in lines)
    return [json.loads(line) for line in lines]


async def test_policy_changes_are_counted_and_logged(
    world: World, resolver: PolicyResolver, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mtasts")
    world.publish("change.example", ENFORCE.format(d="change.example"), id="1")
    assert (await resolver.lookup("change.example")).policy_id == "1"
    clock.advance(301)  # the TXT record is due a check (txt_check_interval)
    world.publish("change.example", ENFORCE.format(d="change.example").replace("mx.", "mx2."), id="2")
    assert (await resolver.lookup("change.example")).policy_id == "2"
    clock.advance(301)
    world.publish("change.example", TESTING.format(d="change.example").replace("86400", "700"), id="3")
    assert (await resolver.lookup("change.example")).policy_id == "3"
    clock.advance(701)  # past max_age: expired, dropped, fetched again
    world.unpublish("change.example")
    assert (await resolver.lookup("change.example")).policy is None
    events = [line for line in json_lines(caplog.records) if line["event"].startswith("policy-")]
    assert [(line["event"], line["change"]) for line in events] == [
        ("policy-changed", "added"),
        ("policy-changed", "new-id"),
        ("policy-changed", "mode-change"),
        ("policy-expired", "expired"),
    ]
    assert all(line["domain"] == "change.example" and line["level"] == "info" for line in events)
    assert events[2] | {"old_mode": "enforce", "mode": "testing", "old_policy_id": "2", "policy_id": "3"} == events[2]
    assert "id 2 -> 3, mode enforce -> testing" in events[2]["message"]
    assert dict(resolver.stats.changes) == {"added": 1, "new-id": 1, "mode-change": 1, "expired": 1}
    assert resolver.stats.fetches[("success", "uncached")] == 1
    assert resolver.stats.fetches[("success", "enforce")] == 2
    assert resolver.stats.lookups[("lookup", "fetched")] == 3
    assert resolver.stats.lookups[("lookup", "no-policy")] == 1


async def test_fetch_failures_are_counted_by_result_type(world: World, resolver: PolicyResolver) -> None:
    world.publish("broken.example", None)  # the policy URL answers 404
    for domain in ("expired-cert.example", "broken.example", "expired-cert.example"):  # the 3rd: from memory
        assert (await resolver.lookup(domain)).policy is None
    assert dict(resolver.stats.fetches) == {
        ("sts-webpki-invalid", "uncached"): 1,
        ("sts-policy-fetch-error", "uncached"): 1,
    }
    assert resolver.stats.lookups[("lookup", "fetch-error")] == 2


# -- the monitoring listener: real HTTP ------------------------------------------------------------------------


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as reply:
        return reply.status, await reply.text()


async def test_healthz_follows_the_state_and_never_fails() -> None:
    store: list[bool | Exception] = [True]

    def store_up() -> bool:
        value = store[0]
        if isinstance(value, Exception):
            raise value
        return value

    listener = MonitorListener("127.0.0.1", 0, metrics=lambda: b"# nothing\n", store_up=store_up)
    await listener.start()
    try:
        url = f"{listener.address}/healthz"
        assert await get(url) == (503, '{"status": "starting", "store": "up"}')
        listener.state = "serving"
        assert await get(url) == (200, '{"status": "ok", "store": "up"}')
        store[0] = False
        assert await get(url) == (200, '{"status": "ok", "store": "down"}')  # degraded, still serving
        store[0] = RuntimeError("cannot tell")
        assert await get(url) == (200, '{"status": "ok", "store": "down"}')
        listener.state = "stopping"
        assert await get(url) == (503, '{"status": "stopping", "store": "down"}')
        assert await get(f"{listener.address}/metrics") == (200, "# nothing\n")
        assert (await get(f"{listener.address}/other"))[0] == 404
    finally:
        await listener.aclose()


async def test_a_metrics_address_in_use_is_a_clear_error(world: World) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = world_config(world, metrics_listen=f"127.0.0.1:{port}")
        with pytest.raises(MTASTSError, match=rf"cannot listen on 127\.0\.0\.1:{port} for metrics"):
            await serve(config, stop=asyncio.Event())


@dataclass
class Serving:
    server: SocketmapServer
    metrics: str  # http://HOST:PORT


@contextlib.asynccontextmanager
async def serving(
    config: ServerConfig, caplog: pytest.LogCaptureFixture, stop: asyncio.Event
) -> AsyncIterator[tuple[Serving, asyncio.Task[None]]]:
    """serve() in this process, until ``stop``; the metrics address from its log line."""
    caplog.set_level(logging.INFO, logger="mtasts")
    started: asyncio.Future[SocketmapServer] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(config, ready=started.set_result, stop=stop))
    try:
        server = await asyncio.wait_for(asyncio.shield(started), 10)
        [address] = [r.__dict__["address"] for r in caplog.records if r.__dict__.get("event") == "metrics-listening"]
        yield Serving(server, address), task
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics page: (name, labels) → value (parsed by prometheus_client's own parser)."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def test_health_is_503_once_shutdown_begins(world: World, caplog: pytest.LogCaptureFixture) -> None:
    stop = asyncio.Event()
    config = world_config(world, metrics_listen="127.0.0.1:0", shutdown_grace=5.0)
    async with serving(config, caplog, stop) as (running, task):
        assert await get(f"{running.metrics}/healthz") == (200, '{"status": "ok", "store": "up"}')
        client = await Client.connect(running.server)
        client.send("slow.example")  # in flight while the server shuts down
        await asyncio.sleep(0.1)
        stop.set()
        await asyncio.sleep(0.1)
        assert not task.done()
        assert await get(f"{running.metrics}/healthz") == (503, '{"status": "stopping", "store": "up"}')
        assert await client.replies_for(1) == [b"OK secure match=mx.slow.example servername=hostname"]
        await client.close()


async def test_store_down_is_reported_and_still_healthy(
    world: World, caplog: pytest.LogCaptureFixture, unused_tcp_port: int
) -> None:
    """A Redis store on a dead port: the restore fails, the store is down — still serving (200), enforce intact."""
    stop = asyncio.Event()
    config = world_config(world, metrics_listen="127.0.0.1:0", store=f"redis://127.0.0.1:{unused_tcp_port}/0")
    async with serving(config, caplog, stop) as (running, _):
        assert await get(f"{running.metrics}/healthz") == (200, '{"status": "ok", "store": "down"}')
        assert await running.server.answer(b"postfix enforce.example") == (
            b"OK secure match=mx.enforce.example servername=hostname"
        )
        status, text = await get(f"{running.metrics}/metrics")
        assert status == 200
        samples = scrape(text)
        assert samples[("mtasts_store_up", (("operation", "read"),))] == 0
        assert samples[("mtasts_store_errors_total", (("error", "outage"),))] >= 1
        assert samples[("mtasts_socketmap_requests_total", (("answer", "secure"),))] == 1
    assert any(r.__dict__.get("event") == "store-down" for r in caplog.records)


# -- the daemon: a real process, JSON logs, /metrics over HTTP ---------------------------------------------------


@dataclass
class Daemon:
    process: asyncio.subprocess.Process
    log: Path
    port: int
    metrics: str

    def lines(self) -> list[dict[str, Any]]:
        """Every stderr line, each parsed as JSON (a line that is not JSON fails the test)."""
        return [json.loads(line) for line in read(self.log).splitlines()]


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


@contextlib.asynccontextmanager
async def daemon(world: World, log: Path, *flags: str) -> AsyncIterator[Daemon]:
    """``mtasts serve-socketmap --log-format json --metrics 127.0.0.1:0`` on the world, its stderr in ``log``."""
    with log.open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mtasts", "serve-socketmap", "--listen", "127.0.0.1:0", "--store", "memory",
            *world_flags(world), "--log-format", "json", "--metrics", "127.0.0.1:0", *flags,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=output, cwd=ROOT,
        )  # fmt: skip
    try:
        for _ in range(400):  # until it listens (at most 20 s)
            text = read(log)
            if '"event": "listening"' in text:
                break
            assert process.returncode is None, text
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"the daemon is not listening after 20 s: {text}")
        events = {line["event"]: line for line in map(json.loads, text.splitlines())}
        port = int(events["listening"]["address"].rpartition(":")[2])
        yield Daemon(process, log, port, events["metrics-listening"]["address"])
    finally:
        await stop_process(process, 20)


async def test_the_daemon_serves_metrics_health_and_json_logs(world: World, tmp_path: Path) -> None:
    async with daemon(world, tmp_path / "daemon.log", "--dns-error", "defer") as d:
        status, body = await get(f"{d.metrics}/healthz")
        assert (status, json.loads(body)) == (200, {"status": "ok", "store": "up"})
        client = Client(*await asyncio.open_connection("127.0.0.1", d.port))
        for key in ["enforce.example", "enforce.example", "nopolicy.example", "servfail.example", ".x.example"]:
            await client.ask(key)
        await client.close()
        status, text = await get(f"{d.metrics}/metrics")
        assert status == 200
        samples = scrape(text)
        requests = {kind: samples[("mtasts_socketmap_requests_total", (("answer", kind),))] for kind in ANSWERS}
        assert requests == {"secure": 2, "notfound": 2, "temp": 1, "perm": 0, "dane": 0}
        assert samples[("mtasts_socketmap_request_duration_seconds_count", ())] == 5
        assert samples[("mtasts_socketmap_request_duration_seconds_bucket", (("le", "0.001"),))] >= 2
        assert samples[("mtasts_resolver_lookups_total", (("kind", "lookup"), ("status", "fetched")))] == 1
        assert samples[("mtasts_resolver_lookups_total", (("kind", "lookup"), ("status", "dns-error")))] == 1
        assert samples[("mtasts_policy_fetches_total", (("cached_mode", "uncached"), ("result", "success")))] == 1
        assert samples[("mtasts_cache_entries", (("mode", "enforce"),))] == 1
        assert samples[("mtasts_cache_policies", (("mode", "testing"),))] == 0
        assert samples[("mtasts_store_up", (("operation", "write"),))] == 1
        build = [labels for (name, labels) in samples if name == "mtasts_build_info"]
        assert build and dict(build[0])["event_loop"] == "asyncio" and dict(build[0])["version"]
        assert ("process_open_fds", ()) in samples
    lines = d.lines()  # every line is one JSON object (the process has exited: all of stderr)
    assert {"time", "level", "logger", "event", "message"} <= set(lines[0])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", lines[0]["time"])
    [added] = [line for line in lines if line["event"] == "policy-changed"]
    assert added | {"domain": "enforce.example", "change": "added", "mode": "enforce", "level": "info"} == added
    assert [line["event"] for line in lines if line["event"] in ("listening", "stopping")] == ["listening", "stopping"]


def test_metrics_without_the_extra_is_a_clear_error() -> None:
    code = (
        "import sys\nsys.modules['prometheus_client'] = None\nfrom mtasts.cli import main\n"
        "sys.exit(main(['serve-socketmap', '--listen', '127.0.0.1:0', '--store', 'memory', "
        "'--metrics', '127.0.0.1:0']))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "pip install 'mtasts[metrics]'" in result.stderr
    assert "Traceback" not in result.stderr


# -- configuration ------------------------------------------------------------------------------------------------


def test_the_metrics_and_log_format_keys(tmp_path: Path) -> None:
    import argparse

    from mtasts.cli import register_serve_socketmap, serve_socketmap_config
    from mtasts.errors import UsageError

    assert (ServerConfig().metrics_listen, ServerConfig().log_format) == (None, "text")
    path = tmp_path / "mtasts.toml"
    path.write_text('metrics_listen = "[::1]:9100"\nlog_format = "json"\n')
    config = load_config(path)
    assert (config.metrics_listen, config.log_format) == ("[::1]:9100", "json")
    parser = argparse.ArgumentParser()
    register_serve_socketmap(parser.add_subparsers())
    args = parser.parse_args(["serve-socketmap", "--config", str(path), "--metrics", "127.0.0.1:0",
                              "--log-format", "text"])  # fmt: skip
    config = serve_socketmap_config(args)
    assert (config.metrics_listen, config.log_format) == ("127.0.0.1:0", "text")
    with pytest.raises(UsageError, match="log_format must be one of text, json"):
        ServerConfig(log_format="xml")
    with pytest.raises(UsageError, match="metrics address"):
        ServerConfig(metrics_listen="127.0.0.1:99999")


def test_json_lines_carry_extra_fields_and_tracebacks() -> None:
    logger = logging.getLogger("mtasts.test")
    record = logger.makeRecord(
        "mtasts.test", logging.WARNING, __file__, 1, "two\nlines %s", ("x",), None,
        extra={"event": "answer", "domain": "example.com", "duration": 0.25, "odd": object()},
    )  # fmt: skip
    [line] = json_lines([record])
    assert line | {"level": "warning", "event": "answer", "domain": "example.com", "duration": 0.25} == line
    assert line["message"] == "two\nlines x" and line["odd"].startswith("<object")
    try:
        raise ValueError("boom")
    except ValueError:
        failed = logger.makeRecord("mtasts.test", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    [line] = json_lines([failed])
    assert line["event"] == "log" and "ValueError: boom" in line["exception"]


# -- the docs ---------------------------------------------------------------------------------------------------


async def test_every_metric_is_documented(world: World, resolver: PolicyResolver) -> None:
    from mtasts.socketmap.metrics import DaemonCollector

    doc = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    collector = DaemonCollector(resolver, event_loop="asyncio")
    async with SocketmapServer(resolver, port=0) as server:
        collector.server = server
        await server.answer(b"postfix enforce.example")
        families = list(collector.collect())
    assert len(families) >= 20
    for family in families:
        name = f"{family.name}_total" if family.type == "counter" else family.name
        assert f"| `{name}` |" in doc, name
        for sample in family.samples:
            for label in set(sample.labels) - {"le"}:  # (a histogram's buckets)
                assert re.search(rf"^\| `{name}` \|[^|]*\|[^|]*`{label}`", doc, re.MULTILINE), (name, label)


def test_the_operations_examples_are_valid(tmp_path: Path) -> None:
    doc = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    [toml] = [block for block in re.findall(r"```toml\n(.*?)```", doc, re.DOTALL) if "metrics_listen" in block]
    path = tmp_path / "socketmap.toml"
    path.write_text(toml)
    config = load_config(path)
    assert (config.metrics_listen, config.log_format) == ("127.0.0.1:8463", "json")
    [line] = [block for block in re.findall(r"```json\n(.*?)\n```", doc, re.DOTALL) if '"event"' in block]
    assert {"time", "level", "logger", "event", "message", "domain"} <= set(json.loads(line))


async def test_overrides_show_up_in_the_metrics(world: World, resolver: PolicyResolver) -> None:
    """Issue 17: overrides win over discovery and show up in metrics: mtasts_socketmap_overrides_total{kind}."""
    from prometheus_client import CollectorRegistry, generate_latest

    from mtasts.socketmap import Override
    from mtasts.socketmap.metrics import DaemonCollector

    overrides = {"broken.example": Override.no_policy(), "fixed.example": Override.fixed("OK encrypt")}
    async with SocketmapServer(resolver, port=0, overrides=overrides) as server:
        collector = DaemonCollector(resolver, event_loop="asyncio")
        collector.server = server
        registry = CollectorRegistry()
        registry.register(collector)
        assert await server.answer(b"postfix broken.example") == b"NOTFOUND "
        assert await server.answer(b"postfix broken.example") == b"NOTFOUND "
        assert await server.answer(b"postfix fixed.example") == b"OK encrypt"
        families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
        used = {s.labels["kind"]: s.value for s in families["mtasts_socketmap_overrides"].samples}
        assert used == {"none": 2.0, "answer": 1.0}
        answers = {s.labels["answer"]: s.value for s in families["mtasts_socketmap_requests"].samples}
        assert answers["notfound"] == 2.0 and answers["secure"] == 1.0  # counted as answers too
