"""Postfix itself as the socketmap client: ``postmap -q`` against the server (Debian package ``postfix``).

``./run tests`` installs postfix; without ``postmap`` these tests fail (they are the proof that Postfix speaks
to us), they are never skipped.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mtasts import PolicyResolver
from mtasts.socketmap import SocketmapServer
from mtasts.testing import World

from .conftest import world_flags

ENFORCE = "version: STSv1\nmode: enforce\nmx: mx.example.com\nmx: *.example.net\nmax_age: 86400\n"
SECURE = b"secure match=mx.example.com:.example.net servername=hostname\n"
TESTING = "version: STSv1\nmode: testing\nmx: mx.example.com\nmax_age: 86400\n"


def find_postmap() -> str:
    path = shutil.which("postmap") or ("/usr/sbin/postmap" if os.access("/usr/sbin/postmap", os.X_OK) else None)
    if path is None:
        pytest.fail(
            "postmap not found: these tests run Postfix's own socketmap client. "
            "Install Postfix (Debian: apt-get install postfix) or run ./run tests, which installs it."
        )
    return path


@pytest.fixture
def postfix_config(tmp_path: Path) -> Path:
    """A Postfix configuration directory for postmap -c: an empty main.cf is enough."""
    main_cf = tmp_path / "main.cf"
    main_cf.write_text("")
    # Postfix re-reads a configuration file modified within the last second until it is a second old (a guard
    # against reading it half-written): an hour-old mtime saves up to 2 s per postmap run.
    os.utime(main_cf, (0, time.time() - 3600))
    return tmp_path


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with World() as w:
        w.publish("enforce.example", ENFORCE)
        w.publish("testing.example", TESTING)
        w.publish("slow.example", ENFORCE, delay=1.0)
        yield w
        assert not w.errors


async def postmap(config: Path, key: str, table: str) -> tuple[int, bytes, bytes]:
    """``postmap -c CONFIG -q KEY TABLE``: (exit status, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        find_postmap(),
        "-c",
        str(config),
        "-q",
        key,
        table,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(15):
            stdout, stderr = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, stdout, stderr


async def test_postmap_queries(postfix_config: Path, world: World, resolver: PolicyResolver) -> None:
    async with SocketmapServer(resolver, port=0) as server:
        table = f"socketmap:inet:127.0.0.1:{server.port}:postfix"
        assert await postmap(postfix_config, "enforce.example", table) == (0, SECURE, b"")
        assert await postmap(postfix_config, "[Enforce.Example]:25", table) == (0, SECURE, b"")
        for key in ["unpublished.example", "testing.example", ".enforce.example", "[192.0.2.1]"]:
            assert await postmap(postfix_config, key, table) == (1, b"", b""), key  # NOTFOUND
    assert server.requests == 6 and server.errors == 0
    assert world.queries("_mta-sts.enforce.example", "TXT") == 1


async def test_postmap_defers_on_temp(postfix_config: Path, world: World, resolver: PolicyResolver) -> None:
    async with SocketmapServer(resolver, port=0, request_timeout=0.2) as server:
        table = f"socketmap:inet:127.0.0.1:{server.port}:postfix"
        status, stdout, stderr = await postmap(postfix_config, "slow.example", table)
        # Postfix reads TEMP as a lookup error: the SMTP client defers the mail instead of sending it in clear.
        assert (status, stdout) == (1, b"")
        assert b"socketmap server temporary error: policy lookup in progress" in stderr


async def test_postmap_over_a_unix_socket(postfix_config: Path, resolver: PolicyResolver, tmp_path: Path) -> None:
    path = tmp_path / "mtasts.sock"
    async with SocketmapServer(resolver, unix_path=str(path)):
        assert await postmap(postfix_config, "enforce.example", f"socketmap:unix:{path}:postfix") == (0, SECURE, b"")


@pytest.mark.parametrize("event_loop", ["asyncio", "uvloop"])
async def test_the_daemon_from_the_command_line(postfix_config: Path, world: World, event_loop: str) -> None:
    """``mtasts serve-socketmap`` as systemd would run it, queried by postmap, stopped by SIGTERM — on asyncio's
    loop and on uvloop (``--event-loop``, the fast extra)."""
    daemon = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mtasts",
        "serve-socketmap",
        "--listen",
        "127.0.0.1:0",
        "--store",
        "memory",
        *world_flags(world),
        "--event-loop",
        event_loop,
        stderr=asyncio.subprocess.PIPE,
    )
    assert daemon.stderr is not None
    try:
        async with asyncio.timeout(15):
            while True:
                line = (await daemon.stderr.readline()).decode()
                assert line, "the daemon exited before listening"
                match = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
                if match:
                    break
        assert f"event loop {event_loop}" in line
        table = f"socketmap:inet:127.0.0.1:{match.group(1)}:postfix"
        assert await postmap(postfix_config, "enforce.example", table) == (0, SECURE, b"")
        assert await postmap(postfix_config, "testing.example", table) == (1, b"", b"")
        daemon.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            rest = await daemon.stderr.read()
            assert await daemon.wait() == 0, rest.decode()
        assert b"shutting down" in rest
    finally:
        if daemon.returncode is None:
            daemon.kill()
            await daemon.wait()
