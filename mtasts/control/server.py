"""The daemon's control socket: :class:`ControlServer` answers ``mtasts cache ... --control PATH``.

A Unix stream socket speaking :mod:`mtasts.control.protocol` (one JSON object per line each way), against the
daemon's own resolver and socketmap server. Access control is the socket file's: it is created mode ``0600``
(``control_mode``, e.g. ``0660`` for the daemon's group) under a matching umask, so it never exists with looser
permissions, even for an instant. **Whoever can open the socket can list, purge and warm.**

Bounded: at most ``max_connections`` control connections (one more is told so and closed), request lines of
at most :data:`~mtasts.control.protocol.MAX_REQUEST` bytes (a longer one is answered with an error and its
connection closed), a connection idle for ``idle_timeout`` seconds is closed. A malformed request gets an error
reply, a bug an error reply and a log entry: nothing a client sends can stop the daemon or change a socketmap
answer but a purge (after which the next lookup starts afresh) and a warm (which fills the cache).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import stat
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from .._checks import check_count, check_seconds
from ..errors import MTASTSError, UsageError
from ..resolver import PolicyResolver, PurgeResult
from ..socketmap.answers import format_policy
from .protocol import (
    MAX_REQUEST,
    Pacer,
    Request,
    cache_state,
    done,
    entry,
    failure,
    item,
    parse_request,
    request_domain,
    warm_item,
)
from .warm import look_up, warm

__all__ = ["ControlServer"]

log = logging.getLogger("mtasts.control")

_DRAIN_EVERY = 256  # list items written between two waits for the client to read


class ControlServer:
    """The control socket at ``path`` for ``resolver`` (see the module docs).

    ``purge`` forgets a domain (default :meth:`PolicyResolver.purge`; the daemon passes
    :meth:`~mtasts.socketmap.SocketmapServer.purge`, which also forgets the socketmap's memos of it).
    """

    def __init__(
        self,
        resolver: PolicyResolver,
        *,
        path: str,
        mode: int = 0o600,
        purge: Callable[[str], Awaitable[PurgeResult]] | None = None,
        max_connections: int = 8,
        idle_timeout: float = 60.0,
    ) -> None:
        if not isinstance(path, str) or not path:
            raise UsageError("the control socket needs a path")
        if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o777 or mode & 0o007:
            raise UsageError(f"control socket mode must not give others access (such as 0o600), not {mode!r}")
        check_count("max_connections", max_connections)
        check_seconds("idle_timeout", idle_timeout, positive=True)
        self.resolver = resolver
        self.path = path
        self.mode = mode
        self._purge = purge or resolver.purge
        self.max_connections = max_connections
        self.idle_timeout = float(idle_timeout)
        self.requests = 0
        self.errors = 0  # malformed requests and internal errors
        self.rejected = 0  # connections over max_connections
        self._server: asyncio.Server | None = None
        self._inode: tuple[int, int] | None = None
        self._clients: set[asyncio.Task[Any]] = set()

    # -- lifecycle ------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the socket (replacing a dead daemon's) and accept; :class:`MTASTSError` if it cannot."""
        if self._server is not None:
            return
        sock = _bind(self.path, self.mode)
        try:
            info = os.stat(self.path)
            self._inode = (info.st_dev, info.st_ino)
            self._server = await asyncio.start_unix_server(self._client, sock=sock, limit=MAX_REQUEST)
        except BaseException:
            sock.close()
            self._unlink()
            raise

    async def __aenter__(self) -> ControlServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop accepting, end the control connections (a purge under way finishes), remove the socket."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        clients = list(self._clients)
        for task in clients:
            task.cancel()
        await asyncio.gather(*clients, return_exceptions=True)
        with contextlib.suppress(Exception):
            await server.wait_closed()
        self._unlink()

    def _unlink(self) -> None:
        """Remove the socket file if it is still the one this server created."""
        with contextlib.suppress(OSError):
            info = os.lstat(self.path)
            if stat.S_ISSOCK(info.st_mode) and (info.st_dev, info.st_ino) == self._inode:
                os.unlink(self.path)

    # -- connections ----------------------------------------------------------------------------------------------

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            if len(self._clients) > self.max_connections:
                self.rejected += 1
                log.warning("control socket: %d connections open, refusing one more", self.max_connections)
                writer.write(failure(f"too many control connections (at most {self.max_connections}); try again"))
                await writer.drain()
                return
            await self._serve(reader, writer, _Session())
        except (ConnectionError, OSError):
            pass  # the client went away
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, session: _Session) -> None:
        while True:
            try:
                async with asyncio.timeout(self.idle_timeout):
                    line = await reader.readline()
            except TimeoutError:
                return
            except ValueError:  # longer than the limit (asyncio's LimitOverrunError, as readline raises it)
                self.errors += 1
                writer.write(failure(f"request longer than {MAX_REQUEST} bytes"))
                await writer.drain()
                return
            if not line.strip():
                if not line:
                    return  # end of file
                continue
            self.requests += 1
            try:
                request = parse_request(line)
            except UsageError as exc:
                self.errors += 1
                writer.write(failure(exc.message))
                await writer.drain()
                continue
            try:
                await self._answer(request, writer, session)
            except (ConnectionError, OSError):
                raise
            except MTASTSError as exc:  # bad input only the operation could see (a domain name)
                self.errors += 1
                writer.write(failure(exc.message))
            except Exception:
                self.errors += 1
                log.exception("control request %s failed", request.op)
                writer.write(failure("internal error (see the daemon's log)"))
            await writer.drain()

    # -- the operations ---------------------------------------------------------------------------------------------

    async def _answer(self, request: Request, writer: asyncio.StreamWriter, session: _Session) -> None:
        resolver = self.resolver
        if request.op == "list":
            now, count = resolver.clock(), 0
            for domain, cached in resolver.cached_entries():
                writer.write(
                    item(
                        entry(
                            domain,
                            cached.policy,
                            cached.policy_id,
                            fetched_at=cached.fetched_at,
                            expires_at=cached.expires_at,
                            next_txt_check=cached.fresh_until,
                            now=now,
                            postfix_policy=format_policy(cached.policy),
                        )
                    )
                )
                count += 1
                if count % _DRAIN_EVERY == 0:
                    await writer.drain()
            writer.write(done(count=count))
        elif request.op == "show":
            assert request.domain is not None
            writer.write(done(found=(state := self._state(request.domain)) is not None, state=state))
        elif request.op == "purge":
            assert request.domain is not None
            # shielded: a client that goes away (or a shutdown) does not leave a purge half done
            result = await asyncio.shield(self._purge(request.domain))
            writer.write(done(purged=dataclasses.asdict(result)))
        elif request.op == "warm":
            count = 0
            async with contextlib.aclosing(self._warm(request, session)) as outcomes:
                async for outcome in outcomes:
                    writer.write(item(outcome))
                    await writer.drain()
                    count += 1
            writer.write(done(count=count))
        else:  # ping
            writer.write(done(cached=resolver.cache_size, pid=os.getpid()))

    def _state(self, domain: str) -> dict[str, Any] | None:
        resolver = self.resolver
        state = resolver.cache_state(domain)
        if state is None:
            return None
        cached = state.entry
        negative = state.negative
        return cache_state(
            state.domain,
            entry=None
            if cached is None
            else entry(
                state.domain,
                cached.policy,
                cached.policy_id,
                fetched_at=cached.fetched_at,
                expires_at=cached.expires_at,
                next_txt_check=cached.fresh_until,
                now=resolver.clock(),
                postfix_policy=format_policy(cached.policy),
            )
            | {"policy_text": cached.policy.to_text()},
            negative=None
            if negative is None
            else {
                "status": negative.status.value,
                "result_type": negative.result_type,
                "error": negative.error,
                "until": state.negative_until,
            },
            backoff=None
            if state.backoff_id is None
            else {
                "id": state.backoff_id,
                "result_type": state.backoff_result_type,
                "error": state.backoff_error,
                "until": state.backoff_until,
            },
        )

    async def _warm(self, request: Request, session: _Session) -> AsyncGenerator[dict[str, Any], None]:
        """The outcomes of a warm request: names that are no domain at once, the rest paced by the session's
        pacer (one per connection, so a long list sent in several requests keeps its rate)."""
        valid: list[str] = []
        for name in request.domains:
            try:
                valid.append(request_domain(name))
            except UsageError as exc:
                yield warm_item(name[:100], "invalid", error=exc.message)
        if session.pacer is None or session.pacer.rate != request.rate:
            session.pacer = Pacer(request.rate, asyncio.get_running_loop().time)
        outcomes = warm(valid, self._look_up, concurrency=request.concurrency, pacer=session.pacer)
        async with contextlib.aclosing(outcomes):
            async for outcome in outcomes:
                yield outcome

    async def _look_up(self, domain: str) -> dict[str, Any]:
        return await look_up(self.resolver, domain)


@dataclasses.dataclass(slots=True)
class _Session:
    """What one control connection keeps between its requests."""

    pacer: Pacer | None = None


def _bind(path: str, mode: int) -> socket.socket:
    """A listening Unix socket at ``path`` whose file never has more permissions than ``mode``: it is bound
    under the umask ``~mode`` (restored at once), then set to exactly ``mode``."""
    _clear_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        previous = os.umask(0o777 & ~mode)
        try:
            sock.bind(path)
        finally:
            os.umask(previous)
        os.chmod(path, mode)
        sock.listen(16)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise MTASTSError(f"cannot create the control socket {path}: {exc.strerror or exc}") from None
    return sock


def _clear_stale(path: str) -> None:
    """Remove a socket left at ``path`` by a daemon that is gone; refuse a live one, or anything else there."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise MTASTSError(f"cannot use the control socket path {path}: {exc.strerror or exc}") from None
    if not stat.S_ISSOCK(info.st_mode):
        raise MTASTSError(f"cannot create the control socket {path}: something else than a socket is there")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a dead daemon's socket
        return
    except OSError as exc:
        raise MTASTSError(f"cannot check the control socket {path}: {exc.strerror or exc}") from None
    finally:
        probe.close()
    raise MTASTSError(f"another process is listening on the control socket {path}")
