"""Run one benchmark step in a fresh process, for mtasts or the peer, side by side on the same world.

Each implementation module (``benchmarks.mtasts_impl``, ``benchmarks.peer_impl``) exposes async functions
(``hit``, ``load``, ``cold``, ``herd``, ``memory``) taking JSON-able keyword arguments and returning a JSON-able
dict. ``python -m benchmarks.workers IMPL COMMAND ARGS_JSON [LOOP]`` (``-``: the JSON comes on stdin) runs one
and prints its result as one JSON line; :func:`run_worker` does that from the runner, with extra environment
variables (the peer needs ``SSL_CERT_FILE`` and ``https_proxy`` set before aiohttp is imported). ``LOOP`` is
``asyncio`` (the default) or ``uvloop`` (the event loop the step runs on; the socketmap load client always takes
uvloop when it is installed).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import resource
import sys
from dataclasses import asdict, dataclass
from typing import Any

IMPLEMENTATIONS = {
    "mtasts": "benchmarks.mtasts_impl",
    "peer": "benchmarks.peer_impl",
    "client": "benchmarks.socketmap_client",
    "http-client": "benchmarks.http_client",
}


@dataclass(frozen=True)
class WorldEnv:
    """How a worker process reaches the loopback world started by the runner."""

    dns_host: str
    dns_port: int
    https_port: int
    ca_pem_path: str
    proxy_url: str | None = None  # an HTTP CONNECT proxy forwarding *:443 to the world's HTTPS port

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def uvloop_available() -> bool:
    """Whether uvloop can be imported here (the ``fast`` extra, or the ``bench`` one)."""
    try:
        import uvloop  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


async def run_worker(
    impl: str,
    command: str,
    args: dict[str, Any],
    *,
    env: dict[str, str] | None = None,
    timeout: float = 1800,
    loop: str = "asyncio",
) -> dict[str, Any]:
    """Run ``impl.command(**args)`` in a subprocess on the event loop ``loop``; return its result (or
    ``{"error": ...}``)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.workers",
        impl,
        command,
        "-",  # the arguments come on stdin: a list of 10,000 domains does not fit in argv
        loop,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(json.dumps(args).encode()), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        return {"error": f"{impl} {command}: timed out after {timeout:g} s"}
    lines = stdout.decode().strip().splitlines()
    if process.returncode != 0 or not lines:
        tail = stderr.decode(errors="replace").strip().splitlines()[-5:]
        return {"error": f"{impl} {command} exited {process.returncode}: {' | '.join(tail)}"}
    result: dict[str, Any] = json.loads(lines[-1])
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # this worker's CPU (workers run one at a time)
    result.setdefault("cpu_seconds", after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return result


def main(argv: list[str]) -> int:
    impl, command, raw_args, *rest = argv
    loop = rest[0] if rest else "asyncio"
    if raw_args == "-":
        raw_args = sys.stdin.read()
    module = importlib.import_module(IMPLEMENTATIONS[impl])
    function = getattr(module, command)
    if loop == "uvloop":
        import uvloop  # noqa: PLC0415

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    elif loop != "asyncio":
        raise SystemExit(f"unknown event loop {loop!r}: asyncio or uvloop")
    elif impl in ("client", "http-client"):
        # The load generator must cost less per request than the servers it measures: uvloop if available.
        try:
            import uvloop  # noqa: PLC0415

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        except ImportError:
            pass
    result = asyncio.run(function(**json.loads(raw_args)))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
