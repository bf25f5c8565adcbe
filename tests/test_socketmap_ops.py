"""``mtasts serve-socketmap`` run as systemd runs it: real processes, real sockets, the loopback world.

Notification (READY=1, WATCHDOG=1, STOPPING=1 on an AF_UNIX datagram socket), socket activation (a listening
socket passed as descriptor 3), SIGHUP reloads on an open connection, and ``--user``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import re
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from mtasts import PolicyResolver
from mtasts.cli import main
from mtasts.errors import UsageError
from mtasts.socketmap import ServerConfig, SocketmapServer
from mtasts.socketmap.privileges import resolve_identity
from mtasts.socketmap.reload import plan_reload
from mtasts.testing import World

from ._process import stop_process
from .conftest import world_flags
from .test_socketmap import Client

ENFORCE = "version: STSv1\nmode: enforce\nmx: mx.enforce.example\nmax_age: 86400\n"
SECURE = b"OK secure match=mx.enforce.example servername=hostname"

# Systemd's side of socket activation in a few lines: the passed socket becomes descriptor 3, LISTEN_PID is
# the daemon's own pid (known only in the child), then mtasts' command line runs as usual.
ACTIVATE = """
import os, sys
fd = int(os.environ.pop("TEST_LISTEN_FD"))
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ["LISTEN_PID"] = str(os.getpid())
os.environ["LISTEN_FDS"] = "1"
from mtasts import PolicyResolver
from mtasts.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with World() as w:
        w.publish("enforce.example", ENFORCE)
        w.publish("slow.example", ENFORCE, delay=0.6)
        yield w


class Daemon:
    """A ``serve-socketmap`` child process, its stderr read line by line as it comes."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self._seen = 0
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stderr is not None
        while line := await self.process.stderr.readline():
            self.lines.append(line.decode(errors="replace"))
            self._changed.set()
        self._changed.set()

    async def expect(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """The first line after the last one expected that matches ``pattern`` (waiting for it)."""
        async with asyncio.timeout(timeout):
            while True:
                for index in range(self._seen, len(self.lines)):
                    match = re.search(pattern, self.lines[index])
                    if match:
                        self._seen = index + 1
                        return match
                if self._reader.done():
                    raise AssertionError(f"exited ({self.process.returncode}) before {pattern!r}:\n{self.text}")
                self._changed.clear()
                await self._changed.wait()

    @property
    def text(self) -> str:
        return "".join(self.lines)

    async def port(self) -> int:
        return int((await self.expect(r"listening on 127\.0\.0\.1:(\d+)")).group(1))

    async def wait(self, timeout: float = 10.0) -> int:
        """The exit status, once the process has exited by itself (within ``timeout``)."""
        code = await asyncio.wait_for(self.process.wait(), timeout)
        await self._reader
        return code

    async def stop(self) -> int:
        await stop_process(self.process, 10)
        await self._reader
        assert self.process.returncode is not None
        return self.process.returncode


@contextlib.asynccontextmanager
async def daemon(*args: str, env: dict[str, str] | None = None, **kwargs: object) -> AsyncIterator[Daemon]:
    """``python -m mtasts serve-socketmap ARGS`` (or ``python -c ...`` when ``args`` starts with ``-c``)."""
    command = args if args[0] == "-c" else ("-m", "mtasts", "serve-socketmap", *args)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *command,
        env={**os.environ, **(env or {})},
        stderr=asyncio.subprocess.PIPE,
        **kwargs,  # type: ignore[arg-type]
    )
    running = Daemon(process)
    try:
        yield running
    finally:
        await running.stop()


def exists(path: str) -> bool:
    return os.path.exists(path)


def proc_status(pid: int) -> str:
    return Path(f"/proc/{pid}/status").read_text()


async def connect(port: int) -> Client:
    return Client(*await asyncio.open_connection("127.0.0.1", port))


@pytest.fixture
def notify_socket() -> Iterator[tuple[str, socket.socket]]:
    with tempfile.TemporaryDirectory(prefix="mtasts-") as directory:  # short: sun_path holds 108 bytes
        path = os.path.join(directory, "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path)
            sock.setblocking(False)
            yield path, sock


async def datagram(sock: socket.socket, timeout: float = 10.0) -> str:
    async with asyncio.timeout(timeout):
        return (await asyncio.get_running_loop().sock_recv(sock, 4096)).decode()


# -- systemd notification -----------------------------------------------------------------------------------------


async def test_ready_watchdog_and_stopping_on_the_notify_socket(
    world: World, notify_socket: tuple[str, socket.socket]
) -> None:
    """READY=1 once listening (after the cache is restored), WATCHDOG=1 every WATCHDOG_USEC/2 from the event
    loop, STOPPING=1 on SIGTERM, in that order; exit 0."""
    path, sock = notify_socket
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"}
    async with daemon("--listen", "127.0.0.1:0", "--store", "memory", *world_flags(world), env=env) as running:
        ready = await datagram(sock)
        assert ready.startswith("READY=1\nSTATUS=listening on 127.0.0.1:")
        assert f"MAINPID={running.process.pid}" in ready
        port = await running.port()  # READY=1 came once it was listening: it answers now
        client = await connect(port)
        assert await client.ask("enforce.example") == SECURE
        await client.close()
        assert await datagram(sock) == "WATCHDOG=1"
        with contextlib.suppress(BlockingIOError):
            while sock.recv(4096):  # the pings sent meanwhile
                pass
        loop = asyncio.get_running_loop()
        started = loop.time()
        pings = [await datagram(sock) for _ in range(3)]
        assert pings == ["WATCHDOG=1"] * 3
        assert 0.15 < loop.time() - started < 2.0  # 0.1 s apart (WATCHDOG_USEC / 2)
        running.process.send_signal(signal.SIGTERM)
        while (message := await datagram(sock)) == "WATCHDOG=1":
            pass
        assert message == "STOPPING=1"
        assert await running.wait() == 0
    assert "shutting down" in running.text


# -- socket activation --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("event_loop", ["asyncio", "uvloop"])
async def test_socket_activation_serves_on_the_passed_tcp_socket(world: World, event_loop: str) -> None:
    """LISTEN_FDS=1: the daemon answers on descriptor 3 and binds nothing — its --listen names the very address
    the passed socket holds, so binding it would fail. On both event loops."""
    with socket.create_server(("127.0.0.1", 0)) as listening:
        port = listening.getsockname()[1]
        args = ("-c", ACTIVATE, "serve-socketmap", "--listen", f"127.0.0.1:{port}", "--event-loop", event_loop)
        env = {"TEST_LISTEN_FD": str(listening.fileno())}
        flags = ("--store", "memory", *world_flags(world))
        async with daemon(*args, *flags, env=env, pass_fds=(listening.fileno(),)) as running:
            match = await running.expect(r"listening on (\S+) \(socket from systemd\)")
            assert match.group(1) == f"127.0.0.1:{port}"
            client = await connect(port)
            assert await client.ask("enforce.example") == SECURE
            await client.close()
            assert await running.stop() == 0


async def test_socket_activation_on_a_unix_socket_unlinks_nothing(world: World) -> None:
    with tempfile.TemporaryDirectory(prefix="mtasts-") as directory:
        path = os.path.join(directory, "socketmap.sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listening:
            listening.bind(path)
            listening.listen()
            args = ("-c", ACTIVATE, "serve-socketmap", "--store", "memory")
            env = {"TEST_LISTEN_FD": str(listening.fileno())}
            async with daemon(*args, *world_flags(world), env=env, pass_fds=(listening.fileno(),)) as running:
                await running.expect(rf"listening on unix:{re.escape(path)} \(socket from systemd\)")
                reader, writer = await asyncio.open_unix_connection(path)
                client = Client(reader, writer)
                assert await client.ask("enforce.example") == SECURE
                await client.close()
                assert await running.stop() == 0
            assert exists(path)  # systemd's socket: not the daemon's to remove


# -- SIGHUP ---------------------------------------------------------------------------------------------------------


async def test_sighup_reloads_overrides_on_an_open_connection(world: World, tmp_path: Path) -> None:
    """An override added by SIGHUP answers on the connection already open, the cache survives, a broken file
    keeps the configuration in force (logged at ERROR with the file's error), a setting that cannot change live
    is logged as needing a restart, and the command line's flags are laid on the new file too."""
    config = tmp_path / "socketmap.toml"
    config.write_text('listen = "127.0.0.1:0"\nstore = "memory"\nrequest_timeout = 30\n')
    async with daemon("--config", str(config), *world_flags(world)) as running:
        client = await connect(await running.port())
        assert await client.ask("enforce.example") == SECURE

        config.write_text(
            'listen = "127.0.0.1:0"\nstore = "memory"\nrequest_timeout = 10\n'
            '[overrides."Enforce.Example."]\npolicy = "none"\n'
        )
        running.process.send_signal(signal.SIGHUP)
        line = (await running.expect(r"reloaded the configuration: .*")).group(0)
        assert "request_timeout = 10" in line and "overrides: 1 domains (enforce.example)" in line
        assert "restart" not in running.text  # the world flags were laid on the new file as on the first
        assert await client.ask("enforce.example") == b"NOTFOUND "  # the same connection
        await running.expect(r"WARNING .*override for enforce\.example: policy = none")

        config.write_text("listen = [\n")  # not TOML
        running.process.send_signal(signal.SIGHUP)
        await running.expect(r"ERROR .*reload failed, keeping the configuration in use: .* is not valid TOML")
        assert await client.ask("enforce.example") == b"NOTFOUND "  # the old overrides are kept

        config.write_text('listen = "127.0.0.1:0"\nstore = "sqlite:/nonexistent/x.sqlite3"\n')
        running.process.send_signal(signal.SIGHUP)
        await running.expect(r"WARNING .*reload: store changed, which needs a restart")
        await running.expect(r"reloaded the configuration: overrides: 0 domains")
        assert await client.ask("enforce.example") == SECURE  # the override is gone; the cache answers
        await client.close()
        assert await running.stop() == 0
    assert world.requests("mta-sts.enforce.example") == 1  # fetched once: the cache survived every reload


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_sighup_moves_the_metrics_listener(world: World, tmp_path: Path) -> None:
    """``metrics_listen`` changes live: the new listener serves before the old one closes; one that cannot bind
    keeps the old one (logged at ERROR); removing the key stops it. Client connections stay open throughout."""
    import aiohttp

    first, second = free_port(), free_port()
    config = tmp_path / "socketmap.toml"
    config.write_text(f'listen = "127.0.0.1:0"\nstore = "memory"\nmetrics_listen = "127.0.0.1:{first}"\n')
    async with daemon("--config", str(config), *world_flags(world)) as running, aiohttp.ClientSession() as http:
        client = await connect(await running.port())
        assert await client.ask("enforce.example") == SECURE

        async def health(port: int) -> int | None:
            try:
                async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
                    return response.status
            except aiohttp.ClientConnectionError:
                return None

        assert await health(first) == 200
        config.write_text(f'listen = "127.0.0.1:0"\nstore = "memory"\nmetrics_listen = "127.0.0.1:{second}"\n')
        running.process.send_signal(signal.SIGHUP)
        await running.expect(rf"reload: metrics on http://127\.0\.0\.1:{second}/metrics")
        assert (await health(second), await health(first)) == (200, None)

        with socket.socket() as taken:  # a port someone else holds: the listener stays where it is
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            busy = taken.getsockname()[1]
            config.write_text(f'listen = "127.0.0.1:0"\nstore = "memory"\nmetrics_listen = "127.0.0.1:{busy}"\n')
            running.process.send_signal(signal.SIGHUP)
            await running.expect(rf"ERROR .*reload: cannot serve metrics on 127\.0\.0\.1:{busy}")
            assert await health(second) == 200

        config.write_text('listen = "127.0.0.1:0"\nstore = "memory"\n')
        running.process.send_signal(signal.SIGHUP)
        await running.expect(r"reload: metrics off")
        assert await health(second) is None
        assert await client.ask("enforce.example") == SECURE  # the same connection, served all along
        await client.close()
        assert await running.stop() == 0


async def test_sighup_without_a_configuration_file_changes_nothing(world: World) -> None:
    async with daemon("--listen", "127.0.0.1:0", "--store", "memory", *world_flags(world)) as running:
        port = await running.port()
        running.process.send_signal(signal.SIGHUP)
        await running.expect(r"nothing to reload")
        client = await connect(port)  # still serving: SIGHUP did not end it
        assert await client.ask("enforce.example") == SECURE
        await client.close()
        assert await running.stop() == 0


def test_plan_reload_splits_live_and_restart_settings() -> None:
    current = ServerConfig(store="memory", request_timeout=30.0)
    new = ServerConfig(store="sqlite", host="::1", request_timeout=5.0, log_level="debug", max_connections=50)
    plan = plan_reload(current, new)
    assert plan.changed == ("log_level", "request_timeout", "max_connections")
    assert plan.restart == ("listen", "store")
    assert (plan.config.store, plan.config.host) == ("memory", "127.0.0.1")  # left as they were
    assert (plan.config.request_timeout, plan.config.max_connections) == (5.0, 50)
    assert plan_reload(current, current).changed == plan_reload(current, current).restart == ()


async def test_limits_change_while_serving(world: World, resolver: PolicyResolver) -> None:
    async with SocketmapServer(resolver, port=0) as server:
        client = await Client.connect(server)
        server.update_limits(request_timeout=0.2, max_pipeline=2, max_connections=5)
        assert await client.ask("slow.example") == b"TEMP policy lookup in progress"  # the next request's timeout
        with pytest.raises(UsageError, match="max_pipeline"):
            server.update_limits(request_timeout=1.0, max_pipeline=0)
        assert (server.request_timeout, server.max_pipeline, server.max_connections) == (0.2, 2, 5)  # all or none
        await client.close()


# -- privileges -------------------------------------------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
async def test_user_nobody_after_binding(world: World) -> None:
    """Bound as root, then running as nobody (every uid and gid of /proc/PID/status), still answering."""
    nobody = pwd.getpwnam("nobody")
    args = ("--listen", "127.0.0.1:0", "--store", "memory", "--user", "nobody", *world_flags(world))
    async with daemon(*args) as running:
        port = await running.port()
        status = proc_status(running.process.pid)
        uids = re.search(r"^Uid:\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)$", status, re.MULTILINE)
        gids = re.search(r"^Gid:\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)$", status, re.MULTILINE)
        assert uids is not None and gids is not None
        assert set(uids.groups()) == {str(nobody.pw_uid)}
        assert set(gids.groups()) == {str(nobody.pw_gid)}
        assert re.search(r"^Groups:\s*$", status, re.MULTILINE)  # supplementary groups cleared
        client = await connect(port)
        assert await client.ask("enforce.example") == SECURE
        await client.close()
        assert await running.stop() == 0
    assert "running as user nobody" in running.text


def test_unknown_user_or_group_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve-socketmap", "--store", "memory", "--user", "no-such-user-mtasts"]) == 2
    assert "no such user" in capsys.readouterr().err
    with pytest.raises(UsageError, match="no such group"):
        resolve_identity("nobody", "no-such-group-mtasts")
    with pytest.raises(UsageError, match="not root"):
        resolve_identity("root")
    with pytest.raises(UsageError, match="group needs user"):
        ServerConfig(group="nogroup")
    nobody = pwd.getpwnam("nobody")
    assert resolve_identity("nobody").uid == resolve_identity(str(nobody.pw_uid)).uid == nobody.pw_uid
