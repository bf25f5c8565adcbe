"""A Postfix socketmap server answering ``smtp_tls_policy_maps`` from MTA-STS policies (docs/postfix.md).

Postfix (``socketmap_table(5)``) sends one netstring per lookup, ``<name> <key>``, and reads one netstring
back::

    OK <data>            the key was found; <data> is the TLS policy (postconf(5) smtp_tls_policy_maps)
    NOTFOUND <SP>        not found (note the trailing space)
    TEMP <reason>        a temporary error: Postfix defers the mail (and retries later)
    TIMEOUT <reason>     (not sent by this server)
    PERM <reason>        a permanent error in the request

For a domain with a valid ``mode: enforce`` policy the answer is ``OK secure match=<p1>:<p2>...
servername=hostname`` — the policy's ``mx`` patterns in order, ``*.example.net`` written ``.example.net`` as
Postfix expects (RFC 8461 §4.1, TLS_README "secure"). Everything else is ``NOTFOUND ``: no policy, ``testing``
(RFC 8461 §5.2: it must not stop delivery) and ``none``, failed lookups, invalid names, address literals
(§3.4), and Postfix's parent-domain lookups ``.example.com`` (§3.4: no parent-zone fallback). A lookup still
running after ``request_timeout`` is answered ``TEMP`` so Postfix defers rather than sends in plaintext; the
shared lookup goes on and the retry is answered from the cache.

Layers: :mod:`mtasts.netstring` (sans-I/O framing), :meth:`SocketmapServer.answer` (one request → one reply),
the asyncio protocol (pipelining, ordering, back-pressure, connection bounds), :func:`serve` (the daemon: the
descriptor limit and its plan, :func:`plan_descriptors`) and the CLI.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import re
import signal
import stat
import sys
import tomllib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final

from ._checks import check_count, check_seconds
from .cli import add_world_options, positive_count, world_from_args
from .domain import is_address_literal, normalize_domain
from .errors import DomainError, MTASTSError, UsageError
from .netstring import NetstringDecoder, NetstringError, encode
from .policy import Mode, Policy
from .resolver import DNS_ERROR_MODES, NOT_CACHED, LookupStatus, PolicyResolver

__all__ = [
    "DescriptorPlan",
    "ServerConfig",
    "SocketmapServer",
    "format_policy",
    "load_config",
    "parse_key",
    "parse_listen",
    "plan_descriptors",
    "raise_nofile_limit",
    "register_cli",
    "serve",
]

log = logging.getLogger("mtasts.socketmap")

NOTFOUND: Final = b"NOTFOUND "
TEMP_PENDING: Final = b"TEMP policy lookup in progress"
TEMP_INTERNAL: Final = b"TEMP internal error"
TEMP_LOCAL: Final = b"TEMP MTA-STS lookup failed on this host (local error)"
TEMP_DNS: Final = b"TEMP MTA-STS DNS lookup failed (dns_error = defer)"
PERM_REQUEST: Final = b'PERM malformed request: expected "<name> <key>"'

_NOTFOUND = encode(NOTFOUND)
_TEMP_PENDING = encode(TEMP_PENDING)
_TEMP_INTERNAL = encode(TEMP_INTERNAL)
_TEMP_LOCAL = encode(TEMP_LOCAL)
_TEMP_DNS = encode(TEMP_DNS)
_PERM_REQUEST = encode(PERM_REQUEST)
_REPLY_MEMO_SIZE = 4096  # formatted replies kept per distinct policy (the cache interns identical policies)

# A next-hop port after the host: digits or a service name, as Postfix accepts them ("[mx.example]:smtp").
_PORT = re.compile(r"[0-9]{1,5}|[A-Za-z][A-Za-z0-9-]{0,63}")
_LIMIT_LOG_PERIOD = 60.0  # seconds between two WARNINGs about the connection limit


# -- the answer: sans-I/O pieces --------------------------------------------------------------------------------


def format_policy(policy: Policy) -> str | None:
    """The Postfix TLS policy for ``policy``: ``secure match=... servername=hostname`` under enforce, else None.

    Patterns keep the policy's order, duplicates dropped; a ``*.`` wildcard becomes Postfix's ``.`` form.
    ``testing`` and ``none`` give None: Postfix then applies its default ``smtp_tls_security_level``.
    """
    if policy.mode is not Mode.ENFORCE:
        return None
    patterns = dict.fromkeys(p[1:] if p.startswith("*.") else p for p in policy.mx)
    return f"secure match={':'.join(patterns)} servername=hostname"


def parse_key(key: str) -> str | None:
    """The Policy Domain a socketmap key names (not yet normalised), or None when the key never has a policy.

    ``example.com``, ``example.com.``, ``[example.com]``, ``[example.com]:25``, ``example.com:25`` → the
    domain; ``.example.com`` (Postfix's parent-domain lookup, no fallback under RFC 8461 §3.4) and address
    literals ``[192.0.2.1]``, ``[IPv6:2001:db8::1]``, ``192.0.2.1``, ``2001:db8::1`` → None. Raises
    :class:`DomainError` for a malformed key (``[example.com``, ``example.com:x y``).
    """
    if key.startswith("."):
        return None
    if key.startswith("["):
        host, closed, rest = key[1:].partition("]")
        if not closed or (rest and not (rest.startswith(":") and _PORT.fullmatch(rest, 1))):
            raise DomainError(f"malformed next-hop {key[:100]!r}")
        if ":" in host or is_address_literal(host):  # [IPv6:...], [192.0.2.1]
            return None
        return host
    if ":" in key:
        if is_address_literal(key):  # a bare IPv6 address
            return None
        host, _, port = key.rpartition(":")
        if ":" in host or not _PORT.fullmatch(port):
            raise DomainError(f"malformed next-hop {key[:100]!r}")
        key = host
    if is_address_literal(key):  # a bare IPv4 address (with or without a port)
        return None
    return key


# -- the server -------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _LimitLog:
    """What the connection-limit WARNING will report: evictions and rejections since it was last logged."""

    counts: list[int] = dataclasses.field(default_factory=lambda: [0, 0])  # evicted, rejected
    logged_at: float = -math.inf
    timer: asyncio.TimerHandle | None = None


class SocketmapServer:
    """Postfix's socketmap protocol over TCP or a Unix socket, answered by a :class:`PolicyResolver`.

    Connections carry any number of requests, pipelined: each is answered as soon as it can be (a cache hit
    at once, a cold lookup when it ends) but replies are written in request order. At most ``max_pipeline``
    replies wait per connection; beyond that the connection is not read (back-pressure). A malformed
    netstring or one over ``max_request`` bytes closes that connection (after the replies already owed).
    A connection without a complete request ``first_request_timeout`` seconds after it opened is closed; after
    its first request, one idle for ``idle_timeout`` seconds is.

    At most ``max_connections`` connections are open. A new one beyond that closes an idle one to make room —
    the oldest that never sent a request, else the one idle the longest (nothing owed, nothing waiting); a
    connection with work in flight never is. When every one is busy, the new connection is closed at once
    (Postfix takes the failed lookup as a temporary error and defers). asyncio accepts up to ``accept_batch``
    connections at once — each a descriptor before it is counted — while the kernel's listen queue is longer
    (``listen_queue``, capped by ``net.core.somaxconn``) and costs no descriptor.

    Counters: ``requests``, ``connections`` (admitted), ``rejected`` (closed at once: no room), ``evicted``
    (idle connections closed to make room), ``errors`` (malformed input, internal errors), ``timeouts`` (TEMP
    answers after ``request_timeout``), ``deferred`` (TEMP answers for lookups that cannot answer now: a local
    fault, or a DNS failure under ``dns_error = "defer"``).
    """

    def __init__(
        self,
        resolver: PolicyResolver,
        *,
        host: str = "127.0.0.1",
        port: int = 8461,
        unix_path: str | None = None,
        unix_mode: int | None = None,
        max_request: int = 1024,
        request_timeout: float = 30.0,
        max_pipeline: int = 256,
        idle_timeout: float = 600.0,
        max_connections: int = 1000,
        first_request_timeout: float = 5.0,
        accept_batch: int = 100,
        listen_queue: int = 4096,
    ) -> None:
        for name, count in [
            ("max_request", max_request),
            ("max_pipeline", max_pipeline),
            ("max_connections", max_connections),
            ("accept_batch", accept_batch),
            ("listen_queue", listen_queue),
        ]:
            check_count(name, count)
        for name, seconds in [
            ("request_timeout", request_timeout),
            ("idle_timeout", idle_timeout),
            ("first_request_timeout", first_request_timeout),
        ]:
            check_seconds(name, seconds, positive=True)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port < 65536:
            raise UsageError(f"port must be 0 to 65535, not {port!r}")
        self.resolver = resolver
        self.host = host
        self._port = port
        self.unix_path = unix_path
        self.unix_mode = unix_mode
        self.max_request = max_request
        self.request_timeout = float(request_timeout)
        self.max_pipeline = max_pipeline
        self.idle_timeout = float(idle_timeout)
        self.max_connections = max_connections
        self.first_request_timeout = float(first_request_timeout)
        self.accept_batch = accept_batch
        self.listen_queue = max(listen_queue, accept_batch)
        self.requests = 0
        self.connections = 0
        self.rejected = 0
        self.evicted = 0
        self.errors = 0
        self.timeouts = 0
        self.deferred = 0
        self._replies: dict[Policy, bytes] = {}  # policy -> the encoded reply (memo)
        self._server: asyncio.Server | None = None
        self._open: set[_Connection] = set()
        self._fresh: dict[_Connection, None] = {}  # open connections yet to send a complete request, oldest first
        self._none_idle = False  # the last victim scan found no idle connection, and none has become idle since
        # the connection-limit WARNING: what happened since the last one, when that was, the timer for the next
        # (one object: CPython keeps an instance's attributes in its fast shared layout only up to 30 of them, and
        # the answer path reads several — measured with python -m benchmarks.instructions)
        self._limit_log = _LimitLog()
        self._closing = False
        self._stopped = asyncio.Event()

    # -- lifecycle ------------------------------------------------------------------------------------------------

    async def __aenter__(self) -> SocketmapServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Bind and start accepting connections (idempotent)."""
        if self._server is not None:
            return
        if self._closing:
            raise MTASTSError("the socketmap server is closed")
        loop = asyncio.get_running_loop()
        if self.unix_path is not None:
            self._server = await loop.create_unix_server(
                lambda: _Connection(self), self.unix_path, backlog=self.accept_batch
            )
            if self.unix_mode is not None:
                os.chmod(self.unix_path, self.unix_mode)
        else:
            self._server = await loop.create_server(
                lambda: _Connection(self), self.host, self._port, reuse_address=True, backlog=self.accept_batch
            )
        for sock in self._server.sockets:  # asyncio's backlog is both; a longer queue drops no SYN in a burst
            with sock.dup() as listening:
                listening.listen(self.listen_queue)

    @property
    def port(self) -> int:
        """The bound TCP port (useful with ``port=0``)."""
        if self._server is None or not self._server.sockets or self.unix_path is not None:
            raise UsageError("the server is not listening on TCP")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def address(self) -> str:
        """Where the server listens, for logs: ``127.0.0.1:8461``, ``[::1]:8461``, ``unix:/run/mtasts.sock``."""
        if self.unix_path is not None:
            return f"unix:{self.unix_path}"
        if self._server is None or not self._server.sockets:
            return f"{self.host}:{self._port} (not listening)"
        return ", ".join(_format_sockname(sock.getsockname()) for sock in self._server.sockets)

    @property
    def open_connections(self) -> int:
        return len(self._open)

    async def serve_forever(self) -> None:
        """Start if needed and serve until :meth:`aclose` (cancelling this closes the server at once)."""
        await self.start()
        try:
            await self._stopped.wait()
        except asyncio.CancelledError:
            await asyncio.shield(self.aclose(grace=0))
            raise

    async def aclose(self, grace: float = 5.0) -> None:
        """Stop accepting; let requests in flight finish within ``grace`` seconds; close every connection."""
        if self._closing:
            await self._stopped.wait()
            return
        self._closing = True
        try:
            if self._server is not None:
                self._server.close()
            connections = list(self._open)
            for connection in connections:
                connection.shutdown()
            waiting = [c.closed for c in connections if not c.closed.done()]
            if waiting:
                await asyncio.wait(waiting, timeout=max(grace, 0.0))
            late = [c for c in connections if not c.closed.done()]
            if late:
                log.info("aborting %d connections with requests still in flight", len(late))
                for connection in late:
                    connection.abort()
                await asyncio.gather(*(c.closed for c in late))
            if self._server is not None:
                await self._server.wait_closed()
            if self.unix_path is not None and self._server is not None:
                with contextlib.suppress(OSError):
                    if stat.S_ISSOCK(os.lstat(self.unix_path).st_mode):
                        os.unlink(self.unix_path)
        finally:
            self._report_limit()
            self._stopped.set()

    # -- the connection bounds ---------------------------------------------------------------------------------------

    def _make_room(self) -> bool:
        """Room for one more connection: True if there is (an idle one closed for it if need be), else False."""
        if len(self._open) < self.max_connections:
            return True
        victim = self._victim()
        if victim is None:
            self.rejected += 1
            self._note_limit(1)
            return False
        self.evicted += 1
        self._note_limit(0)
        victim.evict()
        return True

    def _victim(self) -> _Connection | None:
        """The connection to close for a new one: the oldest never used, else the one idle the longest, or None.

        O(connections), but only at the limit and only when no never-used connection is open; a scan that finds
        none is not repeated until a connection becomes idle.
        """
        victim = next(iter(self._fresh), None)
        if victim is not None or self._none_idle:
            return victim
        for connection in self._open:
            if connection.idle and (victim is None or connection.last_active < victim.last_active):
                victim = connection
        self._none_idle = victim is None
        return victim

    def _note_limit(self, which: int) -> None:
        """Count an eviction (0) or a rejection (1) for the WARNING, logged at most once per minute."""
        limit_log = self._limit_log
        limit_log.counts[which] += 1
        loop = asyncio.get_running_loop()
        due = limit_log.logged_at + _LIMIT_LOG_PERIOD
        if loop.time() >= due:
            self._report_limit()
        elif limit_log.timer is None:
            limit_log.timer = loop.call_at(due, self._report_limit)

    def _report_limit(self) -> None:
        limit_log = self._limit_log
        if limit_log.timer is not None:
            limit_log.timer.cancel()
            limit_log.timer = None
        evicted, rejected = limit_log.counts
        if not evicted and not rejected:
            return
        now = asyncio.get_running_loop().time()
        since = "" if math.isinf(limit_log.logged_at) else f" in the last {now - limit_log.logged_at:.0f} s"
        log.warning(
            "at the connection limit (max_connections = %d): %d idle connections closed to make room, "
            "%d new connections refused%s (Postfix defers on a refused lookup)",
            self.max_connections,
            evicted,
            rejected,
            since,
        )
        limit_log.counts = [0, 0]
        limit_log.logged_at = now

    # -- answers ----------------------------------------------------------------------------------------------------

    async def answer(self, payload: bytes) -> bytes:
        """The reply payload for one request payload (``b"postfix example.com"`` → ``b"OK secure ..."``)."""
        reply = self._quick(payload)
        if isinstance(reply, str):
            reply = await self._slow(reply)
        return reply[reply.index(b":") + 1 : -1]

    def _quick(self, payload: bytes) -> bytes | str:
        """The encoded reply when memory can answer, else the normalised domain to look up."""
        self.requests += 1
        try:
            return self._quick_unguarded(payload)
        except Exception:
            self.errors += 1
            log.exception("internal error answering %r", payload[:200])
            return _TEMP_INTERNAL

    def _quick_unguarded(self, payload: bytes) -> bytes | str:
        name, space, raw_key = payload.partition(b" ")
        if not space or not name:
            return _PERM_REQUEST
        try:
            key = raw_key.decode()
        except UnicodeDecodeError:
            return _NOTFOUND
        if key and key[0] not in ".[" and ":" not in key:
            domain = key  # the common case: a plain domain (cached_policy normalises it)
        else:
            try:
                parsed = parse_key(key)
            except DomainError:
                return _NOTFOUND
            if parsed is None:
                return _NOTFOUND
            domain = parsed
        try:
            policy = self.resolver.cached_policy(domain)
        except DomainError:
            return _NOTFOUND
        if policy is NOT_CACHED:
            return normalize_domain(domain)
        if policy is None:
            return _NOTFOUND
        return self._replies.get(policy) or self._remember(policy)

    async def _slow(self, domain: str) -> bytes:
        """The encoded reply after a lookup (TEMP when it outlasts ``request_timeout``, or cannot answer now)."""
        try:
            async with asyncio.timeout(self.request_timeout):
                lookup = await self.resolver.lookup(domain)
        except TimeoutError:
            self.timeouts += 1
            log.info("policy lookup for %s still running after %g s: answered TEMP", domain, self.request_timeout)
            return _TEMP_PENDING
        except DomainError:
            return _NOTFOUND
        except Exception:
            self.errors += 1
            log.exception("policy lookup for %s failed", domain)
            return _TEMP_INTERNAL
        if lookup.defer:  # a local fault, or a DNS failure under dns_error = "defer": never NOTFOUND
            self.deferred += 1
            log.info("policy lookup for %s: %s (%s): answered TEMP", domain, lookup.status, lookup.error)
            return _TEMP_LOCAL if lookup.status == LookupStatus.LOCAL_ERROR else _TEMP_DNS
        policy = lookup.policy
        if policy is None:
            return _NOTFOUND
        return self._replies.get(policy) or self._remember(policy)

    def _remember(self, policy: Policy) -> bytes:
        text = format_policy(policy)
        reply = _NOTFOUND if text is None else encode(b"OK " + text.encode("ascii"))
        if len(self._replies) >= _REPLY_MEMO_SIZE:
            self._replies.clear()
        self._replies[policy] = reply
        return reply


def _format_sockname(sockname: Any) -> str:
    host, port = sockname[0], sockname[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Connection(asyncio.Protocol):
    """One client connection: decode, answer (concurrently), reply in order."""

    def __init__(self, server: SocketmapServer) -> None:
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._decoder = NetstringDecoder(server.max_request)
        self._transport: asyncio.Transport | None = None
        # replies owed, in request order: encoded bytes (ready) or the task computing them
        self._pending: deque[bytes | asyncio.Task[bytes]] = deque()
        self._backlog: deque[bytes] = deque()  # requests read but not started (pipeline full)
        self._reading = True
        self._write_paused = False
        self._closing = False  # read nothing more: EOF, malformed input or shutdown; close once replies are out
        self._opened_at = self.last_active = self._loop.time()
        self._fresh = True  # no complete request yet (first_request_timeout applies, the first to be evicted)
        self._idle: asyncio.TimerHandle | None = None
        self.peer = "?"
        self.closed: asyncio.Future[None] = self._loop.create_future()

    # -- asyncio.Protocol --------------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = _format_sockname(peer) if isinstance(peer, tuple) else "unix socket"
        server = self._server
        if not server._make_room():
            log.debug("refusing the connection from %s: %d connections open", self.peer, server.max_connections)
            self._closing = True
            transport.close()  # nothing was read or written: the descriptor is free at once
            return
        server.connections += 1
        server._open.add(self)
        server._fresh[self] = None
        self._idle = self._loop.call_at(self._opened_at + server.first_request_timeout, self._check_idle)
        log.debug("connection from %s", self.peer)
        if server._closing:
            self.shutdown()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self.last_active = self._loop.time()
        try:
            payloads = self._decoder.feed(data)
        except NetstringError as exc:
            self._server.errors += 1
            log.warning("closing the connection from %s: %s", self.peer, exc.message)
            payloads = exc.payloads
            self._closing = True
        if payloads:
            if self._fresh:
                self._fresh = False
                self._server._fresh.pop(self, None)
                self._server._none_idle = False
            self._backlog.extend(payloads)
            self._drain()
        self._update()

    def eof_received(self) -> bool:
        self._closing = True
        # Replies still owed: keep the socket open for them (_update closes it); else let the transport close.
        return bool(self._pending or self._backlog)

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle is not None:
            self._idle.cancel()
        for item in self._pending:
            if not isinstance(item, bytes):
                item.cancel()  # only this request's wait: the shared lookup goes on
        self._pending.clear()
        self._backlog.clear()
        self._closing = True
        server = self._server
        server._open.discard(self)
        server._fresh.pop(self, None)
        if not self.closed.done():
            self.closed.set_result(None)

    # -- the pipeline ----------------------------------------------------------------------------------------------

    def _drain(self) -> None:
        """Start backlog requests while the pipeline has room; write replies that need not wait."""
        server, backlog, pending = self._server, self._backlog, self._pending
        limit = server.max_pipeline
        ready: list[bytes] = []
        while backlog and len(pending) < limit:
            reply = server._quick(backlog.popleft())
            if isinstance(reply, bytes):
                if pending:
                    pending.append(reply)
                else:
                    ready.append(reply)  # nothing owed before it: write now
            else:
                task = self._loop.create_task(server._slow(reply))
                task.add_done_callback(self._on_done)
                pending.append(task)
        if ready and self._transport is not None:
            self._transport.write(ready[0] if len(ready) == 1 else b"".join(ready))

    def _on_done(self, task: asyncio.Task[bytes]) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        pending = self._pending
        ready: list[bytes] = []
        while pending:
            head = pending[0]
            if isinstance(head, bytes):
                ready.append(head)
            elif head.done():
                if not head.cancelled():
                    ready.append(head.result())
            else:
                break
            pending.popleft()
        if ready:
            self.last_active = self._loop.time()
            self._transport.write(b"".join(ready))
        self._drain()
        if not pending:
            self._server._none_idle = False
        self._update()

    def _update(self) -> None:
        """Read or not (back-pressure); close once a closing connection owes nothing more."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if self._closing:
            if not self._pending and not self._backlog:
                transport.close()
                return
            want = False
        else:
            want = not self._write_paused and not self._backlog and len(self._pending) < self._server.max_pipeline
        if want != self._reading:
            self._reading = want
            if want:
                transport.resume_reading()
            else:
                transport.pause_reading()

    @property
    def idle(self) -> bool:
        """Nothing in flight: no reply owed, no request waiting, not closing already (an eviction candidate)."""
        return not self._pending and not self._backlog and not self._closing

    def _check_idle(self) -> None:
        """The connection's one timer: ``first_request_timeout`` until its first request, then ``idle_timeout``."""
        self._idle = None
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        now = self._loop.time()
        if self._fresh:
            deadline = self._opened_at + self._server.first_request_timeout
            if now >= deadline:
                log.debug("closing the connection from %s: no request within %g s", self.peer, now - self._opened_at)
                transport.close()
            else:
                self._idle = self._loop.call_at(deadline, self._check_idle)
            return
        timeout = self._server.idle_timeout
        deadline = self.last_active + timeout
        if now >= deadline and not self._pending and not self._backlog:
            log.debug("closing the idle connection from %s", self.peer)
            transport.close()
            return
        self._idle = self._loop.call_at(deadline if deadline > now else now + timeout, self._check_idle)

    def shutdown(self) -> None:
        """Read no more; close once the replies owed are written (the server is closing)."""
        self._closing = True
        self._update()

    def evict(self) -> None:
        """Close this idle connection to make room for a new one; it no longer counts as open."""
        server = self._server
        server._open.discard(self)
        server._fresh.pop(self, None)
        self._closing = True
        log.debug("closing the idle connection from %s to make room", self.peer)
        transport = self._transport
        if transport is not None:
            # Nothing is owed; replies written but not yet read by the peer would only delay the close.
            if transport.get_write_buffer_size():
                transport.abort()
            else:
                transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


# -- configuration ------------------------------------------------------------------------------------------------


_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


@dataclass
class ServerConfig:
    """Everything ``mtasts serve-socketmap`` needs; every field is a TOML key of the same name (docs/postfix.md),
    except ``host``/``port`` (TOML ``listen = "HOST:PORT"``) and ``unix_path`` (TOML ``unix``)."""

    host: str = "127.0.0.1"
    port: int = 8461
    unix_path: str | None = None
    unix_mode: int | None = None  # permissions of the Unix socket, e.g. 0o660
    store: str = "sqlite"  # memory | sqlite | sqlite:PATH | redis://HOST:PORT/DB
    cache_size: int = 100_000
    fetch_timeout: float = 60.0  # RFC 8461 §3.3 suggests one minute
    request_timeout: float = 30.0
    max_request: int = 1024
    max_pipeline: int = 256
    idle_timeout: float = 600.0
    first_request_timeout: float = 5.0  # a new connection without a complete request after this is closed
    max_connections: int | None = None  # None: sized from the descriptor limit (plan_descriptors)
    max_concurrent_dns: int = 256
    max_concurrent_fetches: int = 512
    queue_timeout: float = 30.0  # a lookup waits this long for a DNS or fetch slot, then answers TEMP
    dns_error: str = "no-policy"  # no-policy (RFC 8461) | defer: a failed TXT query with nothing cached is TEMP
    shutdown_grace: float = 5.0
    refresh_period: float = 3600.0  # proactive refresh (§3.3, §10.2) runs this often; 0 turns it off
    log_level: str = "info"
    nameserver: str | None = None  # IP[:PORT], instead of the system's resolver
    cafile: str | None = None  # PEM trust store for policy hosts, instead of the system's
    policy_port: int = 443

    def __post_init__(self) -> None:
        for name, expected in _FIELD_TYPES.items():
            value = getattr(self, name)
            if value is None and name in _OPTIONAL:
                continue
            if not _is_type(value, expected):
                raise UsageError(f"{name} must be {_TYPE_NAMES[expected]}, not {value!r}")
        for name in ("cache_size", "max_request", "max_pipeline", "max_concurrent_dns", "max_concurrent_fetches"):
            check_count(name, getattr(self, name))
        if self.max_connections is not None:
            check_count("max_connections", self.max_connections)
        for name in ("fetch_timeout", "request_timeout", "idle_timeout", "first_request_timeout"):
            check_seconds(name, getattr(self, name), positive=True)
        for name in ("shutdown_grace", "refresh_period", "queue_timeout"):
            check_seconds(name, getattr(self, name))
        if self.dns_error not in DNS_ERROR_MODES:
            raise UsageError(
                f"dns_error must be one of {', '.join(map(repr, DNS_ERROR_MODES))}, not {self.dns_error!r}"
            )
        if not 0 <= self.port < 65536:
            raise UsageError(f"port must be 0 to 65535, not {self.port}")
        if not 0 < self.policy_port < 65536:
            raise UsageError(f"policy_port must be 1 to 65535, not {self.policy_port}")
        if self.unix_mode is not None and not 0 <= self.unix_mode <= 0o7777:
            raise UsageError(f"unix_mode must be a permission mode such as 0o660, not {self.unix_mode!r}")
        if self.log_level.lower() not in _LOG_LEVELS:
            raise UsageError(f"log_level must be one of {', '.join(_LOG_LEVELS)}, not {self.log_level!r}")
        from .stores import check_store_spec  # noqa: PLC0415 - the stores load sqlite3 only when serving

        check_store_spec(self.store)

    @property
    def listen(self) -> str:
        """``HOST:PORT`` (``[::1]:8461`` for IPv6) or ``unix:PATH``."""
        if self.unix_path is not None:
            return f"unix:{self.unix_path}"
        return _format_sockname((self.host, self.port))


_FIELD_TYPES: dict[str, type] = {
    "host": str,
    "port": int,
    "unix_path": str,
    "unix_mode": int,
    "store": str,
    "cache_size": int,
    "fetch_timeout": float,
    "request_timeout": float,
    "max_request": int,
    "max_pipeline": int,
    "idle_timeout": float,
    "first_request_timeout": float,
    "max_connections": int,
    "max_concurrent_dns": int,
    "max_concurrent_fetches": int,
    "queue_timeout": float,
    "dns_error": str,
    "shutdown_grace": float,
    "refresh_period": float,
    "log_level": str,
    "nameserver": str,
    "cafile": str,
    "policy_port": int,
}
_OPTIONAL = frozenset({"unix_path", "unix_mode", "nameserver", "cafile", "max_connections"})
_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number"}
#: TOML keys that are not field names.
_TOML_ALIASES = {"listen": None, "unix": "unix_path"}
TOML_KEYS: Final = frozenset((set(_FIELD_TYPES) - {"host", "port", "unix_path"}) | set(_TOML_ALIASES))


def _is_type(value: object, expected: type) -> bool:
    if isinstance(value, bool):
        return False
    if expected is float:
        return isinstance(value, int | float)
    return isinstance(value, expected)


def parse_listen(text: str) -> tuple[str, int]:
    """``127.0.0.1:8461``, ``[::1]:8461``, ``localhost:8461`` → (host, port); a missing port means 8461."""
    host, port_text = text, ""
    if text.startswith("["):
        host, closed, rest = text[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            raise UsageError(f"bad listen address {text!r}: use HOST:PORT or [IPv6]:PORT")
        port_text = rest[1:]
    elif ":" in text:
        if text.count(":") > 1:
            raise UsageError(f"bad listen address {text!r}: write IPv6 addresses as [::1]:8461")
        host, _, port_text = text.partition(":")
    if not host:
        raise UsageError(f"bad listen address {text!r}: no host")
    if not port_text:
        return host, 8461
    if not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise UsageError(f"bad port in listen address {text!r}")
    return host, int(port_text)


def load_config(path: str | os.PathLike[str]) -> ServerConfig:
    """Read a TOML configuration file (keys: docs/postfix.md). Unknown keys and wrong types are errors."""
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        raise UsageError(f"cannot read the configuration {os.fspath(path)}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{os.fspath(path)} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - TOML_KEYS)
    if unknown:
        raise UsageError(
            f"unknown key{'s' if len(unknown) > 1 else ''} in {os.fspath(path)}: {', '.join(unknown)} "
            f"(known: {', '.join(sorted(TOML_KEYS))})"
        )
    fields: dict[str, Any] = {}
    for key, value in data.items():
        if key == "listen":
            if not isinstance(value, str):
                raise UsageError(f'listen must be a string such as "127.0.0.1:8461", not {value!r}')
            fields["host"], fields["port"] = parse_listen(value)
        else:
            fields[_TOML_ALIASES.get(key) or key] = value
    if "listen" in data and "unix" in data:
        raise UsageError(f"{os.fspath(path)}: set either listen or unix, not both")
    return ServerConfig(**fields)


# -- descriptors ---------------------------------------------------------------------------------------------------

#: Descriptors kept for everything but connections and lookups: listeners, epoll, the store's files, logs.
DESCRIPTOR_RESERVE: Final = 64
_MIN_CONNECTIONS: Final = 16
_MAX_CONNECTIONS: Final = 100_000
_MAX_ACCEPT_BATCH: Final = 32
_NOFILE_UNLIMITED: Final = 1 << 20  # what an unlimited RLIMIT_NOFILE is taken as (capped by fs.nr_open)


@dataclass(frozen=True, slots=True)
class DescriptorPlan:
    """How :func:`serve` splits the descriptor limit ``nofile``: see :func:`plan_descriptors`."""

    nofile: int
    reserve: int  # listeners, epoll, store files, logs
    accept_batch: int  # connections asyncio accepts per loop iteration (SocketmapServer(accept_batch=...))
    max_concurrent_dns: int  # one socket per DNS query
    max_concurrent_fetches: int  # one socket per policy fetch
    max_connections: int

    @property
    def accepting(self) -> int:
        """Connections accepted but not yet counted, or closed to make room but not yet released: up to three
        accept batches (accepted, then set up, then counted and their victims closed, a loop iteration each)."""
        return 3 * self.accept_batch

    @property
    def total(self) -> int:
        """Descriptors the plan may use at once."""
        return (
            self.reserve + self.accepting + self.max_concurrent_dns + self.max_concurrent_fetches + self.max_connections
        )

    @property
    def fits(self) -> bool:
        """False when the plan may need more descriptors than ``nofile`` (a limit too small, or max_connections)."""
        return self.total <= self.nofile


def plan_descriptors(
    nofile: int, *, max_connections: int | None, max_concurrent_dns: int, max_concurrent_fetches: int
) -> DescriptorPlan:
    """Share ``nofile`` descriptors between connections and lookups so that neither can starve the other.

    After a fixed reserve and three accept batches, lookups (DNS queries + policy fetches) keep their limits unless
    they would take more than half of what remains: then both are scaled down in proportion (at least 1 each).
    ``max_connections`` defaults to the rest (16 to 100,000); an explicit value is kept even when it does not fit
    (:attr:`DescriptorPlan.fits`).
    """
    check_count("nofile", nofile)
    check_count("max_concurrent_dns", max_concurrent_dns)
    check_count("max_concurrent_fetches", max_concurrent_fetches)
    if max_connections is not None:
        check_count("max_connections", max_connections)
    reserve = DESCRIPTOR_RESERVE
    batch = max(4, min(_MAX_ACCEPT_BATCH, (nofile - reserve) // 32))
    remaining = max(0, nofile - reserve - 3 * batch)
    dns, fetches = max_concurrent_dns, max_concurrent_fetches
    budget = remaining // 2
    if dns + fetches > budget:
        dns, fetches = max(1, dns * budget // (dns + fetches)), max(1, fetches * budget // (dns + fetches))
    if max_connections is None:
        max_connections = max(_MIN_CONNECTIONS, min(_MAX_CONNECTIONS, remaining - dns - fetches))
    return DescriptorPlan(nofile, reserve, batch, dns, fetches, max_connections)


def raise_nofile_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; returns the soft limit now in force (logged at INFO).

    An unlimited limit counts as 2**20 descriptors (or ``fs.nr_open``, if lower). A failure is logged, not raised.
    """
    try:
        import resource  # noqa: PLC0415 - POSIX only
    except ImportError:  # pragma: no cover - not POSIX
        return _NOFILE_UNLIMITED
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    unlimited = _NOFILE_UNLIMITED
    with contextlib.suppress(OSError, ValueError), open("/proc/sys/fs/nr_open", encoding="ascii") as file:
        unlimited = min(unlimited, int(file.read()))
    target = unlimited if hard == resource.RLIM_INFINITY else hard
    current = unlimited if soft == resource.RLIM_INFINITY else soft
    if current >= target:
        log.info("descriptor limit: %d (hard limit %s)", current, _format_rlimit(hard, resource.RLIM_INFINITY))
        return current
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError) as exc:
        log.warning("descriptor limit: %d; raising it to %d failed: %s", current, target, exc)
        return current
    log.info(
        "descriptor limit: raised from %d to %d (hard limit %s)",
        current,
        target,
        _format_rlimit(hard, resource.RLIM_INFINITY),
    )
    return target


def _format_rlimit(value: int, infinity: int) -> str:
    return "unlimited" if value == infinity else str(value)


# -- the daemon ----------------------------------------------------------------------------------------------------


async def serve(
    config: ServerConfig,
    *,
    ready: Callable[[SocketmapServer], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run the socketmap server until SIGTERM, SIGINT or ``stop`` is set, then shut down gracefully.

    Opens the store, restores the cache from it, starts the proactive refresh, listens, calls ``ready(server)``.
    On the way out: the server finishes its requests (``shutdown_grace``), the resolver flushes the store.
    """
    from .stores import open_store  # noqa: PLC0415 - the stores load sqlite3 only when serving

    world = world_from_args(
        argparse.Namespace(nameserver=config.nameserver, cafile=config.cafile, policy_port=config.policy_port)
    )
    plan = plan_descriptors(
        raise_nofile_limit(),
        max_connections=config.max_connections,
        max_concurrent_dns=config.max_concurrent_dns,
        max_concurrent_fetches=config.max_concurrent_fetches,
    )
    log.log(
        logging.INFO if plan.fits else logging.WARNING,
        "descriptor plan for a limit of %d: %d connections, %d DNS queries, %d policy fetches, "
        "%d accepted at once, %d in reserve%s",
        plan.nofile,
        plan.max_connections,
        plan.max_concurrent_dns,
        plan.max_concurrent_fetches,
        plan.accept_batch,
        plan.reserve,
        ""
        if plan.fits
        else f" — {plan.total} in all: descriptors may run out (raise LimitNOFILE, or lower max_connections)",
    )
    store = open_store(config.store)
    resolver = PolicyResolver(
        store=store,
        cache_size=config.cache_size,
        fetch_timeout=config.fetch_timeout,
        max_concurrent_dns=plan.max_concurrent_dns,
        max_concurrent_fetches=plan.max_concurrent_fetches,
        queue_timeout=config.queue_timeout,
        dns_error=config.dns_error,
        **world,
    )
    try:
        await resolver.start()
        if config.refresh_period > 0:
            resolver.start_background_refresh(config.refresh_period)
        server = SocketmapServer(
            resolver,
            host=config.host,
            port=config.port,
            unix_path=config.unix_path,
            unix_mode=config.unix_mode,
            max_request=config.max_request,
            request_timeout=config.request_timeout,
            max_pipeline=config.max_pipeline,
            idle_timeout=config.idle_timeout,
            max_connections=plan.max_connections,
            first_request_timeout=config.first_request_timeout,
            accept_batch=plan.accept_batch,
        )
        try:
            await server.start()
        except OSError as exc:
            raise MTASTSError(f"cannot listen on {config.listen}: {exc.strerror or exc}") from None
        try:
            log.info("mtasts socketmap server listening on %s (store %s)", server.address, config.store)
            if ready is not None:
                ready(server)
            await _wait_for_stop(stop)
        finally:
            log.info(
                "shutting down (%d requests, %d connections, %d idle ones closed to make room, %d refused)",
                server.requests,
                server.connections,
                server.evicted,
                server.rejected,
            )
            await server.aclose(config.shutdown_grace)
    finally:
        await resolver.aclose()


async def _wait_for_stop(stop: asyncio.Event | None) -> None:
    loop = asyncio.get_running_loop()
    signalled = asyncio.Event()
    installed: list[signal.Signals] = []

    def on_signal(signum: signal.Signals) -> None:
        log.info("received %s", signum.name)
        signalled.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(signum, on_signal, signum)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no signals here
            continue
        installed.append(signum)
    waiters = [asyncio.ensure_future(signalled.wait())]
    if stop is not None:
        waiters.append(asyncio.ensure_future(stop.wait()))
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        for signum in installed:
            loop.remove_signal_handler(signum)


# -- the command line ------------------------------------------------------------------------------------------------


def register_cli(commands: Any) -> None:
    """``mtasts serve-socketmap``: the subcommand (see :mod:`mtasts.cli`)."""
    parser = commands.add_parser(
        "serve-socketmap",
        help="a Postfix socketmap server for smtp_tls_policy_maps (docs/postfix.md)",
        description="Answer Postfix's smtp_tls_policy_maps lookups from MTA-STS policies. "
        "Flags override the configuration file.",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--listen", metavar="HOST:PORT", help="TCP address (default 127.0.0.1:8461; [::1]:8461)")
    where.add_argument("--unix", metavar="PATH", help="listen on a Unix socket instead")
    parser.add_argument("--config", metavar="FILE.toml", help="configuration file (keys: docs/postfix.md)")
    parser.add_argument("--store", metavar="SPEC", help="memory | sqlite (default) | sqlite:PATH | redis://...")
    parser.add_argument(
        "--cache-size", metavar="N", type=positive_count, help="policies kept in memory (default 100000)"
    )
    parser.add_argument("--log-level", choices=_LOG_LEVELS, help="default info")
    parser.add_argument(
        "--max-connections",
        metavar="N",
        type=positive_count,
        help="client connections open at most (default: from the limit)",
    )
    parser.add_argument(
        "--dns-error",
        choices=DNS_ERROR_MODES,
        help="a failed _mta-sts TXT query with nothing cached: no-policy (default, RFC 8461) or defer (TEMP)",
    )
    add_world_options(parser)
    parser.set_defaults(handler=_run, policy_port=None)  # None: not given, the file or the default applies


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """The configuration file (if any) with the command line's flags on top."""
    config = load_config(args.config) if args.config else ServerConfig()
    changes: dict[str, Any] = {}
    if args.listen is not None:
        changes["host"], changes["port"] = parse_listen(args.listen)
        changes["unix_path"] = None
    if args.unix is not None:
        changes["unix_path"] = args.unix
    for name in (
        "store",
        "cache_size",
        "log_level",
        "nameserver",
        "cafile",
        "policy_port",
        "max_connections",
        "dns_error",
    ):
        value = getattr(args, name, None)
        if value is not None:
            changes[name] = value
    return dataclasses.replace(config, **changes) if changes else config


def _run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(serve(config))
    except MTASTSError as exc:
        print(f"mtasts serve-socketmap: {exc}", file=sys.stderr)
        return 1
    return 0
