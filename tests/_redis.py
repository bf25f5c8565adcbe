"""The redis-server helper lives in mtasts.testing.redis (the benchmarks use it too).

Here: the high-availability deployments, as real processes on loopback ports, each in its own temporary
directory and stopped by PID — :func:`sentinel_group` (a primary, a replica, three sentinels: ``redis-server
--sentinel``) and :func:`redis_cluster` (masters with ``cluster-enabled yes``, slots assigned and nodes met by
CLUSTER commands). Only the ``redis-server`` binary is needed (``MTASTS_REDIS_SERVER`` overrides it). Every wait
has a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import redis.asyncio

from mtasts.testing.redis import RedisServer, redis_server

from ._process import stop_process

__all__ = [
    "ClusterGroup",
    "RedisProcess",
    "RedisServer",
    "SentinelGroup",
    "redis_binary",
    "redis_cluster",
    "redis_server",
    "sentinel_group",
    "wait_until",
]

_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 5.0


def redis_binary() -> str | None:
    return os.environ.get("MTASTS_REDIS_SERVER") or shutil.which("redis-server")


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (held open together while chosen, so they differ)."""
    probes = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


async def wait_until(what: str, check: Callable[[], Awaitable[bool]], timeout: float, interval: float = 0.05) -> None:
    """Poll ``check`` until it is true; AssertionError naming ``what`` after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            if await check():
                return
        except (redis.exceptions.RedisError, OSError):
            pass
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(interval)


def _client(port: int) -> redis.asyncio.Redis:
    return redis.asyncio.Redis(host="127.0.0.1", port=port, socket_timeout=1.0, socket_connect_timeout=1.0)


async def _ask(port: int, *command: Any) -> Any:
    """One command on a fresh connection (closed after)."""
    client = _client(port)
    try:
        return await client.execute_command(*command)
    finally:
        await client.aclose()


class RedisProcess:
    """One redis-server process (a server, a replica, a sentinel, a cluster node) on ``port``."""

    def __init__(self, binary: str, directory: Path, port: int, arguments: Sequence[str]) -> None:
        self.binary, self.directory, self.port = binary, directory, port
        self.arguments = list(arguments)
        self.process: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    async def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        log = self.directory / "redis.log"
        self.process = await asyncio.create_subprocess_exec(
            self.binary, *self.arguments, "--logfile", str(log),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            cwd=self.directory,
        )  # fmt: skip

        async def answers() -> bool:
            if self.process is not None and self.process.returncode is not None:
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
                raise RuntimeError(f"redis-server on port {self.port} exited:\n{tail}")
            return bool(await _ask(self.port, "PING"))

        await wait_until(f"redis-server on port {self.port}", answers, _START_TIMEOUT, 0.02)

    def kill(self) -> None:
        """SIGKILL, by PID: no shutdown, no goodbye to replicas or sentinels."""
        if self.process is not None and self.process.returncode is None:
            os.kill(self.process.pid, signal.SIGKILL)

    async def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        await stop_process(process, _STOP_TIMEOUT, resume=True)


def _server_arguments(port: int, directory: Path, *extra: str) -> list[str]:
    return [
        "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(directory),
        *extra,
    ]  # fmt: skip


class SentinelGroup:
    """A primary, one replica and three sentinels monitoring them as :attr:`service`."""

    service = "mtasts-ha"

    def __init__(self, primary: RedisProcess, replica: RedisProcess, sentinels: list[RedisProcess]) -> None:
        self.primary, self.replica, self.sentinels = primary, replica, sentinels

    def url(self, *, extra_sentinels: Sequence[str] = (), db: int = 0) -> str:
        hosts = [*extra_sentinels, *(f"127.0.0.1:{sentinel.port}" for sentinel in self.sentinels)]
        return f"redis+sentinel://{','.join(hosts)}/{self.service}/{db}"

    async def master_port(self, sentinel: RedisProcess) -> int | None:
        client = _client(sentinel.port)
        try:
            answer = await client.sentinel_get_master_addr_by_name(self.service)
        finally:
            await client.aclose()
        return int(answer[1]) if answer else None

    async def wait_ready(self, timeout: float = 10.0) -> None:
        """Until every sentinel knows the replica and the two other sentinels (hello messages: every 2 s)."""

        async def ready() -> bool:
            for sentinel in self.sentinels:
                client = _client(sentinel.port)
                try:
                    state = await client.sentinel_master(self.service)
                finally:
                    await client.aclose()
                if int(state["num-slaves"]) < 1 or int(state["num-other-sentinels"]) < len(self.sentinels) - 1:
                    return False
            return True

        await wait_until("the sentinels to know each other and the replica", ready, timeout)

    async def wait_failover(self, timeout: float = 15.0) -> None:
        """Until the sentinels name the replica as master and it says it is one."""

        async def promoted() -> bool:
            ports = [await self.master_port(sentinel) for sentinel in self.sentinels]
            if ports.count(self.replica.port) < 2:
                return False
            role = await _ask(self.replica.port, "ROLE")
            return bool(role[0] == b"master")

        await wait_until("the sentinels to promote the replica", promoted, timeout)


@contextlib.asynccontextmanager
async def sentinel_group(
    *, down_after_ms: int = 500, failover_timeout_ms: int = 3000, sentinels: int = 3
) -> AsyncIterator[SentinelGroup]:
    """A running Sentinel deployment on loopback (the replica synced, the sentinels aware of each other)."""
    binary = redis_binary()
    if binary is None:
        raise FileNotFoundError("redis-server is not installed")
    with tempfile.TemporaryDirectory(prefix="mtasts-sentinel-") as temporary:
        base = Path(temporary)
        ports = _free_ports(2 + sentinels)
        sync = ("--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0")
        primary = RedisProcess(binary, base / "primary", ports[0], _server_arguments(ports[0], base / "primary", *sync))
        replica = RedisProcess(
            binary, base / "replica", ports[1],
            _server_arguments(ports[1], base / "replica", *sync, "--replicaof", "127.0.0.1", str(ports[0])),
        )  # fmt: skip
        watchers: list[RedisProcess] = []
        for number, port in enumerate(ports[2:]):
            directory = base / f"sentinel{number}"
            directory.mkdir()
            config = directory / "sentinel.conf"  # sentinels rewrite their own configuration file
            config.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {directory}\n"
                f"sentinel monitor {SentinelGroup.service} 127.0.0.1 {ports[0]} 2\n"
                f"sentinel down-after-milliseconds {SentinelGroup.service} {down_after_ms}\n"
                f"sentinel failover-timeout {SentinelGroup.service} {failover_timeout_ms}\n"
                f"sentinel parallel-syncs {SentinelGroup.service} 1\n"
            )
            watchers.append(RedisProcess(binary, directory, port, [str(config), "--sentinel"]))
        group = SentinelGroup(primary, replica, watchers)
        everything = [primary, replica, *watchers]
        try:
            await primary.start()
            await replica.start()

            async def synced() -> bool:
                info = _text_info(await _ask(replica.port, "INFO", "replication"))
                return info.get("master_link_status") == "up"

            await wait_until("the replica to sync", synced, 10.0)
            await asyncio.gather(*(watcher.start() for watcher in watchers))
            await group.wait_ready()
            yield group
        finally:
            await asyncio.gather(*(process.stop() for process in everything), return_exceptions=True)


class ClusterGroup:
    """Masters of one Redis Cluster, the 16384 slots split evenly between them."""

    def __init__(self, nodes: list[RedisProcess]) -> None:
        self.nodes = nodes

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    async def ask(self, node: RedisProcess, *command: Any) -> Any:
        return await _ask(node.port, *command)


@contextlib.asynccontextmanager
async def redis_cluster(masters: int = 3) -> AsyncIterator[ClusterGroup]:
    """A running Redis Cluster of ``masters`` masters (no replicas) on loopback, its state ``ok`` everywhere."""
    binary = redis_binary()
    if binary is None:
        raise FileNotFoundError("redis-server is not installed")
    with tempfile.TemporaryDirectory(prefix="mtasts-cluster-") as temporary:
        base = Path(temporary)
        ports = _free_ports(2 * masters)  # a client port and a cluster bus port each
        nodes = [
            RedisProcess(
                binary, base / f"node{i}", ports[2 * i],
                _server_arguments(
                    ports[2 * i], base / f"node{i}", "--cluster-enabled", "yes", "--cluster-port",
                    str(ports[2 * i + 1]), "--cluster-config-file", str(base / f"node{i}" / "nodes.conf"),
                    "--cluster-node-timeout", "5000",
                ),
            )
            for i in range(masters)
        ]  # fmt: skip
        try:
            await asyncio.gather(*(node.start() for node in nodes))
            for i, node in enumerate(nodes):
                first, last = 16384 * i // masters, 16384 * (i + 1) // masters - 1
                await _ask(node.port, "CLUSTER", "SET-CONFIG-EPOCH", i + 1)
                await _ask(node.port, "CLUSTER", "ADDSLOTSRANGE", first, last)
            for i, node in enumerate(nodes[1:], start=1):
                await _ask(nodes[0].port, "CLUSTER", "MEET", "127.0.0.1", node.port, ports[2 * i + 1])

            async def healthy() -> bool:
                for node in nodes:
                    info = _text_info(await _ask(node.port, "CLUSTER", "INFO"))
                    if info.get("cluster_state") != "ok" or info.get("cluster_known_nodes") != str(masters):
                        return False
                return True

            await wait_until("the cluster state to be ok on every node", healthy, 15.0)
            yield ClusterGroup(nodes)
        finally:
            await asyncio.gather(*(node.stop() for node in nodes), return_exceptions=True)


def _text_info(raw: bytes | str | dict[str, Any]) -> dict[str, str]:
    """INFO-style ``name:value`` lines (or redis-py's parsed dict of them) as text."""
    if isinstance(raw, dict):
        return {name: str(value) for name, value in raw.items()}
    text = raw.decode() if isinstance(raw, bytes) else raw
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
