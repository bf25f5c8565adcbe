"""A throw-away redis-server on a loopback port, for tests of a RedisStore (yours or ours) and benchmarks:
``async with redis_server() as server: RedisStore(server.url) ...``.

No persistence (``--save "" --appendonly no``), its own temporary directory, stopped and removed on exit.
``server.stop()`` and ``server.start()`` simulate an outage and a restart on the same port, ``server.pause()``
and ``server.resume()`` a hung server. Set
``MTASTS_REDIS_SERVER`` to use another binary; a missing binary raises ``FileNotFoundError`` (tests fail, they
are never skipped).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

__all__ = ["RedisServer", "redis_server"]

_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 5.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class RedisServer:
    """One redis-server process (started by :func:`redis_server`)."""

    def __init__(self, binary: str, directory: Path, port: int) -> None:
        self.binary = binary
        self.directory = directory
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self._process: asyncio.subprocess.Process | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def start(self) -> None:
        """Start (or restart) the server on :attr:`port` and wait until it answers PING."""
        if self.running:
            return
        log = self.directory / "redis.log"
        self._process = await asyncio.create_subprocess_exec(
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.directory),
            "--logfile", str(log),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _START_TIMEOUT
        while not await self._answers_ping():
            if self._process.returncode is not None or loop.time() > deadline:
                await self.stop()
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
                raise RuntimeError(f"redis-server on port {self.port} did not start:\n{tail}")
            await asyncio.sleep(0.02)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections are accepted by the kernel but never answered."""
        if self._process is not None and self._process.returncode is None:
            self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Undo :meth:`pause` (SIGCONT)."""
        if self._process is not None and self._process.returncode is None:
            self._process.send_signal(signal.SIGCONT)

    async def stop(self) -> None:
        """Terminate the server and wait for it (killed if it takes longer than a few seconds)."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGCONT)  # a paused server would not act on SIGTERM
                process.terminate()
            try:
                await asyncio.wait_for(process.wait(), _STOP_TIMEOUT)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await asyncio.wait_for(process.wait(), _STOP_TIMEOUT)

    async def _answers_ping(self) -> bool:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), 1.0)
        except (OSError, TimeoutError):
            return False
        try:
            writer.write(b"PING\r\n")
            await writer.drain()
            return (await asyncio.wait_for(reader.readline(), 1.0)).startswith(b"+PONG")
        except (OSError, TimeoutError):
            return False
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


@contextlib.asynccontextmanager
async def redis_server() -> AsyncIterator[RedisServer]:
    """A running redis-server on a free loopback port; stopped and its directory removed afterwards."""
    binary = os.environ.get("MTASTS_REDIS_SERVER") or shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError(
            "redis-server is not installed (apt-get install -y redis-server, or set MTASTS_REDIS_SERVER)"
        )
    with tempfile.TemporaryDirectory(prefix="mtasts-redis-") as directory:
        server = RedisServer(binary, Path(directory), _free_port())
        try:
            await server.start()
            yield server
        finally:
            await server.stop()
