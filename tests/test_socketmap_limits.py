"""The socketmap server's bounds: connections, descriptors, first-request timeout — and the daemon under 256 fds.

A local fault must never weaken a policy: a full descriptor table must not stop new Postfix connections from
being answered nor an enforce domain's cold lookup from opening its sockets. Real sockets, a real daemon in a
subprocess whose descriptor limit is lowered (it cannot raise it), the loopback :class:`World`; no mocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from mtasts import PolicyResolver
from mtasts.errors import MTASTSError
from mtasts.socketmap import (
    DESCRIPTOR_RESERVE,
    DescriptorPlan,
    ServerConfig,
    SocketmapServer,
    load_config,
    plan_descriptors,
    serve,
)
from mtasts.testing import World

from .conftest import world_flags
from .test_postfix import postmap
from .test_socketmap import Client, world_config

ROOT = Path(__file__).resolve().parent.parent
POLICY = "version: STSv1\nmode: enforce\nmx: mx.{name}\nmax_age: 86400\n"
LITERAL = "[192.0.2.1]"  # answered NOTFOUND from memory: a request that costs no I/O
TEMP_DNS = b"TEMP MTA-STS DNS lookup failed (dns_error = defer)"


def ok(name: str) -> bytes:
    return f"OK secure match=mx.{name} servername=hostname".encode()


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with World() as w:
        for name in ("first.example", "cold.example"):
            w.publish(name, POLICY.format(name=name))
        for i in range(4):
            w.publish(f"slow{i}.example", POLICY.format(name=f"slow{i}.example"), delay=1.0)
        yield w
        assert not w.errors


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait (bounded) until ``condition()`` holds."""
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"still not true after {timeout} s")


def read(path: Path) -> str:
    return path.read_text(errors="replace")


# -- the descriptor plan (pure) ------------------------------------------------------------------------------------


def plan(nofile: int, max_connections: int | None = None, dns: int = 256, fetches: int = 512) -> DescriptorPlan:
    return plan_descriptors(
        nofile, max_connections=max_connections, max_concurrent_dns=dns, max_concurrent_fetches=fetches
    )


def test_plan_at_systemds_default_1024() -> None:
    p = plan(1024)
    assert (p.reserve, p.accept_batch, p.accepting) == (DESCRIPTOR_RESERVE, 30, 90)
    # 768 lookups would take more than half of the 870 left: scaled to 435, still 1:2
    assert (p.max_concurrent_dns, p.max_concurrent_fetches, p.max_connections) == (145, 290, 435)
    assert p.fits and p.total == 1024


def test_plan_at_256_scales_the_lookups_down() -> None:
    p = plan(256)
    assert (p.accept_batch, p.max_concurrent_dns, p.max_concurrent_fetches, p.max_connections) == (6, 29, 58, 87)
    assert p.max_concurrent_fetches == 2 * p.max_concurrent_dns
    assert p.fits and p.total == 256


def test_plan_at_65536_keeps_the_configured_lookups() -> None:
    p = plan(65536)
    assert (p.max_concurrent_dns, p.max_concurrent_fetches) == (256, 512)
    assert p.max_connections == 65536 - DESCRIPTOR_RESERVE - 3 * p.accept_batch - 768 == 64608
    assert p.fits
    assert plan(1 << 20).max_connections == 100_000  # capped


def test_plan_honours_an_explicit_max_connections() -> None:
    assert plan(65536, max_connections=1000).max_connections == 1000
    assert plan(65536, max_connections=1000).fits
    big = plan(1024, max_connections=5000)  # kept, but it can exhaust the descriptors: serve() warns
    assert big.max_connections == 5000 and not big.fits
    assert (big.max_concurrent_dns, big.max_concurrent_fetches) == (145, 290)


@pytest.mark.parametrize(("dns", "fetches"), [(256, 512), (1, 1), (10, 10_000), (5000, 3)])
def test_plan_never_exceeds_the_limit(dns: int, fetches: int) -> None:
    for nofile in [128, 129, 200, 256, 500, 1000, 1024, 4096, 10_000, 65536, 100_000, 1 << 20, *range(130, 9000, 97)]:
        p = plan(nofile, dns=dns, fetches=fetches)
        assert p.fits and p.total <= nofile, p
        assert p.max_connections >= 16 and p.max_concurrent_dns >= 1 and p.max_concurrent_fetches >= 1, p
        assert p.max_concurrent_dns <= dns and p.max_concurrent_fetches <= fetches, p
        left = nofile - p.reserve - p.accepting
        if dns + fetches > left // 2:  # scaled: at most half of what is left, in proportion
            assert p.max_concurrent_dns + p.max_concurrent_fetches <= max(2, left // 2), p
            assert abs(p.max_concurrent_fetches * dns - p.max_concurrent_dns * fetches) <= dns + fetches, p
        else:
            assert (p.max_concurrent_dns, p.max_concurrent_fetches) == (dns, fetches)


def test_plan_under_a_tiny_limit_says_it_does_not_fit() -> None:
    p = plan(64)
    assert (p.max_concurrent_dns, p.max_concurrent_fetches, p.max_connections) == (1, 1, 16)
    assert not p.fits


@pytest.mark.parametrize(
    "kwargs", [{"nofile": 0}, {"max_connections": 0}, {"dns": 0}, {"fetches": True}, {"max_connections": 1.5}]
)
def test_plan_rejects_bad_arguments(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"nofile": 1024, **kwargs}
    with pytest.raises(MTASTSError):
        plan(**args)  # type: ignore[arg-type]


# -- connection bounds, in process ----------------------------------------------------------------------------------


async def test_never_used_connections_are_evicted_first(world: World, resolver: PolicyResolver) -> None:
    async with SocketmapServer(resolver, port=0, max_connections=3) as server:
        active = await Client.connect(server)
        assert await active.ask(LITERAL) == b"NOTFOUND "
        unused = [await Client.connect(server), await Client.connect(server)]
        await until(lambda: server.open_connections == 3)
        newer = []
        for oldest in unused:  # each new connection closes the oldest never-used one, never the active one
            newer.append(await Client.connect(server))
            assert await oldest.closed_by_server(timeout=2.0)
            assert oldest.replies == []
        assert (server.evicted, server.rejected, server.open_connections) == (2, 0, 3)
        assert await active.ask("first.example") == ok("first.example")
        for client in newer:
            assert await client.ask(LITERAL) == b"NOTFOUND "
        for client in [active, *unused, *newer]:
            await client.close()


async def test_the_longest_idle_connection_is_evicted_when_all_were_used(resolver: PolicyResolver) -> None:
    async with SocketmapServer(resolver, port=0, max_connections=3) as server:
        c1, c2, c3 = [await Client.connect(server) for _ in range(3)]
        for client in (c1, c2, c3, c1):  # c2 is now the one idle the longest
            assert await client.ask(LITERAL) == b"NOTFOUND "
        c4 = await Client.connect(server)
        assert await c2.closed_by_server(timeout=2.0)
        for client in (c1, c3, c4):
            assert await client.ask(LITERAL) == b"NOTFOUND "
        assert (server.evicted, server.rejected, server.open_connections) == (1, 0, 3)
        for client in (c1, c2, c3, c4):
            await client.close()


async def test_a_new_connection_is_closed_when_every_one_is_busy(
    world: World, resolver: PolicyResolver, caplog: pytest.LogCaptureFixture
) -> None:
    async with SocketmapServer(resolver, port=0, max_connections=3) as server:
        busy = [await Client.connect(server) for _ in range(3)]
        for i, client in enumerate(busy):
            client.send(f"slow{i}.example")  # the policy host answers after 1 s
        await until(lambda: all(world.requests(f"mta-sts.slow{i}.example") == 1 for i in range(3)))
        with caplog.at_level(logging.WARNING, logger="mtasts.socketmap"):
            refused = [await Client.connect(server), await Client.connect(server)]
            for client in refused:
                assert await client.closed_by_server(timeout=1.0)  # closed at once, not after a lookup
                assert client.replies == []
            warnings = [r for r in caplog.records if "at the connection limit" in r.getMessage()]
            assert len(warnings) == 1  # rate-limited: once a minute, with counts
            assert "0 idle connections closed to make room, 1 new connections refused" in warnings[0].getMessage()
        assert (server.rejected, server.evicted, server.open_connections) == (2, 0, 3)
        for i, client in enumerate(busy):  # work in flight is never cut short
            assert await client.replies_for(1) == [ok(f"slow{i}.example")]
        late = await Client.connect(server)  # now they are idle: room is made
        assert await late.ask("first.example") == ok("first.example")
        assert server.evicted == 1
        for client in [*busy, *refused, late]:
            await client.close()
    summary = [r.getMessage() for r in caplog.records if "at the connection limit" in r.getMessage()]
    assert "1 idle connections closed to make room, 1 new connections refused in the last" in summary[-1]


async def test_postfix_sees_a_refused_connection_as_a_lookup_error(
    world: World, resolver: PolicyResolver, tmp_path: Path
) -> None:
    """A refused connection is never "not found" to Postfix: postmap reports a lookup error (smtp(8) defers)."""
    (tmp_path / "main.cf").write_text("")  # postmap -c: an empty main.cf, an hour old (see test_postfix)
    os.utime(tmp_path / "main.cf", (0, time.time() - 3600))
    async with SocketmapServer(resolver, port=0, max_connections=1) as server:
        busy = await Client.connect(server)
        busy.send("slow3.example")
        await until(lambda: world.requests("mta-sts.slow3.example") == 1)
        table = f"socketmap:inet:127.0.0.1:{server.port}:postfix"
        status, stdout, stderr = await postmap(tmp_path, "first.example", table)
        assert (status, stdout) == (1, b"")
        assert b"lookup error" in stderr, stderr
        assert server.rejected >= 1
        assert await busy.replies_for(1) == [ok("slow3.example")]
        await busy.close()


async def test_first_request_timeout(resolver: PolicyResolver) -> None:
    async with SocketmapServer(resolver, port=0, first_request_timeout=0.2) as server:
        start = time.monotonic()
        silent = await Client.connect(server)
        partial = await Client.connect(server)
        partial.writer.write(b"20:postfix first.exa")  # an incomplete request does not count
        sender = await Client.connect(server)
        assert await sender.ask(LITERAL) == b"NOTFOUND "
        assert await silent.closed_by_server(timeout=2.0)
        assert await partial.closed_by_server(timeout=2.0)
        assert time.monotonic() - start >= 0.2
        await asyncio.sleep(max(0.0, start + 0.5 - time.monotonic()))  # well past the first-request timeout
        assert server.open_connections == 1
        assert await sender.ask(LITERAL) == b"NOTFOUND "  # idle_timeout (600 s) applies to it now
        for client in (silent, partial, sender):
            await client.close()


# -- configuration -------------------------------------------------------------------------------------------------


def test_the_new_keys_load(tmp_path: Path) -> None:
    path = tmp_path / "mtasts.toml"
    path.write_text(
        'max_connections = 500\nfirst_request_timeout = 2.5\ndns_error = "defer"\nmax_concurrent_dns = 10\n'
        "max_concurrent_fetches = 20\nqueue_timeout = 3\n"
    )
    config = load_config(path)
    assert (config.max_connections, config.first_request_timeout, config.dns_error) == (500, 2.5, "defer")
    assert (config.max_concurrent_dns, config.max_concurrent_fetches, config.queue_timeout) == (10, 20, 3)
    defaults = ServerConfig()
    assert (defaults.max_connections, defaults.first_request_timeout, defaults.dns_error) == (None, 5.0, "no-policy")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('dns_error = "maybe"\n', "dns_error must be one of 'no-policy', 'defer'"),
        ("dns_error = 1\n", "dns_error must be a string"),
        ("first_request_timeout = 0\n", "first_request_timeout must be a finite number > 0"),
        ("max_connections = 0\n", "max_connections must be an integer >= 1"),
        ('max_connections = "10"\n', "max_connections must be an integer"),
        ("max_concurrent_dns = 0\n", "max_concurrent_dns must be an integer >= 1"),
        ("max_concurrent_fetches = 1.5\n", "max_concurrent_fetches must be an integer"),
        ("queue_timeout = -1\n", "queue_timeout must be a finite number >= 0"),
    ],
)
def test_bad_new_keys(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "mtasts.toml"
    path.write_text(text)
    with pytest.raises(MTASTSError, match=re.escape(message)):
        load_config(path)


def test_cli_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from mtasts.cli import register_serve_socketmap, serve_socketmap_config

    path = tmp_path / "mtasts.toml"
    path.write_text('max_connections = 7\ndns_error = "defer"\n')
    parser = argparse.ArgumentParser()
    register_serve_socketmap(parser.add_subparsers())
    config = serve_socketmap_config(
        parser.parse_args(["serve-socketmap", "--max-connections", "50", "--dns-error", "defer"])
    )
    assert (config.max_connections, config.dns_error) == (50, "defer")
    config = serve_socketmap_config(
        parser.parse_args(["serve-socketmap", "--config", str(path), "--dns-error", "no-policy"])
    )
    assert (config.max_connections, config.dns_error) == (7, "no-policy")
    with pytest.raises(SystemExit):
        parser.parse_args(["serve-socketmap", "--dns-error", "sometimes"])
    assert "invalid choice: 'sometimes'" in capsys.readouterr().err


async def test_serve_passes_the_plan_and_the_settings_on(world: World) -> None:
    config = world_config(world, first_request_timeout=1.5, dns_error="defer", queue_timeout=2.0)
    for max_connections in (None, 7):
        config.max_connections = max_connections
        stop = asyncio.Event()
        started: asyncio.Future[SocketmapServer] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(serve(config, ready=started.set_result, stop=stop))
        server = await asyncio.wait_for(asyncio.shield(started), 5)
        expected = plan(resource.getrlimit(resource.RLIMIT_NOFILE)[0], max_connections)  # raised to the hard limit
        assert (server.max_connections, server.accept_batch) == (expected.max_connections, expected.accept_batch)
        assert server.first_request_timeout == 1.5 and server.resolver.dns_error == "defer"
        stop.set()
        await asyncio.wait_for(task, 10)


# -- the real daemon -----------------------------------------------------------------------------------------------


def test_raise_nofile_limit_raises_the_soft_limit_to_the_hard_one() -> None:
    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (200, 300))

    code = (
        "import logging, resource; logging.basicConfig(level='INFO')\n"
        "from mtasts.socketmap import raise_nofile_limit\n"
        "print(raise_nofile_limit(), *resource.getrlimit(resource.RLIMIT_NOFILE))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        preexec_fn=lower,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["300", "300", "300"]
    assert "descriptor limit: raised from 200 to 300 (hard limit 300)" in result.stderr


@dataclass
class Daemon:
    process: asyncio.subprocess.Process
    port: int
    log: Path

    async def connect(self) -> Client:
        async with asyncio.timeout(5):
            return Client(*await asyncio.open_connection("127.0.0.1", self.port))

    def log_text(self) -> str:
        return read(self.log)


@contextlib.asynccontextmanager
async def daemon(world: World, log: Path, *flags: str, nofile: int | None = None) -> AsyncIterator[Daemon]:
    """``mtasts serve-socketmap`` on the world, its log in ``log``, under RLIMIT_NOFILE (nofile, nofile)."""

    def lower_the_limit() -> None:  # in the child: soft and hard, so it cannot raise it
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    with log.open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mtasts", "serve-socketmap", "--listen", "127.0.0.1:0", "--store", "memory",
            *world_flags(world), "--log-level", "info", *flags,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=output, cwd=ROOT, preexec_fn=lower_the_limit,
        )  # fmt: skip
    try:
        for _ in range(400):  # until it listens (at most 20 s)
            if match := re.search(r"listening on 127\.0\.0\.1:(\d+)", read(log)):
                break
            assert process.returncode is None, read(log)
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"the daemon is not listening after 20 s: {read(log)}")
        yield Daemon(process, int(match.group(1)), log)
        process.send_signal(signal.SIGTERM)  # by its PID
        async with asyncio.timeout(20):
            status = await process.wait()
        assert status == 0, read(log)[-3000:]
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def open_idle(port: int, count: int) -> list[socket.socket]:
    """``count`` connections that never send anything (kept open on this side)."""
    loop = asyncio.get_running_loop()
    sockets: list[socket.socket] = []
    try:
        async with asyncio.timeout(30):
            for _ in range(count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.setblocking(False)
                await loop.sock_connect(sock, ("127.0.0.1", port))
    except TimeoutError:
        for sock in sockets:
            sock.close()
        # the kernel queues connections the daemon has not accepted yet; once that queue is full, connect() waits
        raise AssertionError(f"only {len(sockets) - 1} of {count} connections within 30 s: accept() stalled") from None
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


async def test_the_daemon_under_256_descriptors_with_2000_idle_connections(world: World, tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096 <= hard or (soft < 4096 and hard == resource.RLIM_INFINITY):
        resource.setrlimit(resource.RLIMIT_NOFILE, (4096, hard))  # this side holds 2,000 sockets too
    async with daemon(world, tmp_path / "daemon.log", nofile=256) as d:
        postfix = await d.connect()
        assert await postfix.ask("first.example") == ok("first.example")
        idle: list[socket.socket] = []
        try:
            idle = await open_idle(d.port, 2000)
            times = []
            for _ in range(5):  # (a) a new Postfix connection is answered at once
                start = time.monotonic()
                client = await d.connect()
                assert await client.ask("first.example") == ok("first.example")
                times.append(time.monotonic() - start)
                await client.close()
            # (b) a cold lookup of an enforce domain still gets its DNS and HTTPS sockets: OK, never NOTFOUND
            assert await postfix.ask("cold.example") == ok("cold.example")
        finally:
            for sock in idle:
                sock.close()
            await postfix.close()
    answered = ", ".join(f"{t * 1000:.1f}" for t in times)
    print(f"\nunder 2,000 idle connections at 256 descriptors, new connections answered in (ms): {answered}")
    assert max(times) < 1.0, times
    text = d.log_text()
    assert "descriptor limit: 256 (hard limit 256)" in text
    assert "descriptor plan for a limit of 256: 87 connections, 29 DNS queries, 58 policy fetches" in text
    assert "at the connection limit (max_connections = 87)" in text
    assert "out of system resource" not in text and "Traceback" not in text, text[-3000:]  # accept() never EMFILE
    evicted = int(re.findall(r"(\d+) idle ones closed to make room", text)[-1])
    assert evicted >= 2000 - 87


@pytest.mark.parametrize(("flags", "expected"), [((), b"NOTFOUND "), (("--dns-error", "defer"), TEMP_DNS)])
async def test_the_daemon_on_a_servfail(world: World, tmp_path: Path, flags: tuple[str, ...], expected: bytes) -> None:
    world.publish("broken.example", POLICY.format(name="broken.example"))
    world.set_failure("_mta-sts.broken.example", "servfail")
    async with daemon(world, tmp_path / "daemon.log", *flags) as d:
        client = await d.connect()
        assert await client.ask("broken.example") == expected
        assert await client.ask("first.example") == ok("first.example")
        await client.close()
    assert world.queries("_mta-sts.broken.example", "TXT") >= 1
