"""Stopping a server process a test started: by its PID, politely, then surely (bounded in time)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal


async def stop_process(process: asyncio.subprocess.Process, timeout: float = 5.0, *, resume: bool = False) -> None:
    """SIGTERM (after SIGCONT when ``resume``: a paused process would not act on it), SIGKILL if it has not
    exited within ``timeout``; waits for it either way."""
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        if resume:
            os.kill(process.pid, signal.SIGCONT)
        os.kill(process.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        await asyncio.wait_for(process.wait(), timeout)


async def communicate(process: asyncio.subprocess.Process, stdin: bytes | None, timeout: float) -> tuple[bytes, bytes]:
    """``process.communicate(stdin)`` within ``timeout``: on TimeoutError the process is killed and reaped first.
    (stdout, stderr), each b"" when not piped."""
    try:
        async with asyncio.timeout(timeout):
            stdout, stderr = await process.communicate(stdin)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise
    return stdout or b"", stderr or b""
