"""The socketmap server: the asyncio protocol around the answers of :mod:`mtasts.socketmap.answers`.

Connections carry pipelined requests, answered concurrently and replied to in order, with back-pressure; the
server bounds its connections (``max_connections``, the first-request and idle timeouts) and closes idle ones
to make room. A request the cache can answer is answered without a task (:meth:`SocketmapServer._quick`, the
hot path: ``python -m benchmarks.instructions --only socketmap`` counts its instructions).

Requests on the map name ``QUERYwithTLSRPT`` (every name with ``tlsrpt=True``) are answered with Postfix 3.10's
TLS-RPT attributes (:func:`~mtasts.socketmap.answers.format_tlsrpt`), memoised apart from the plain replies.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import socket
import stat
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, cast

from .._checks import check_count, check_seconds
from ..dane import postfix_level
from ..dane_lookup import DaneResolver
from ..domain import normalize_domain
from ..errors import DomainError, LocalError, MTASTSError, MXPermanentFailure, MXTransientFailure, UsageError
from ..netstring import NetstringDecoder, NetstringError
from ..options import format_host_port
from ..policy import Mode, Policy
from ..resolver import NOT_CACHED, LookupStatus, NotCached, PolicyResolver, PurgeResult
from .answers import (
    DANE_ONLY_NETSTRING,
    NOTFOUND_NETSTRING,
    PERM_REQUEST_NETSTRING,
    SENDMAIL_MAP_NAME,
    TEMP_DANE_MX_NETSTRING,
    TEMP_DNS_NETSTRING,
    TEMP_INTERNAL_NETSTRING,
    TEMP_LOCAL_NETSTRING,
    TEMP_PENDING_NETSTRING,
    TLSRPT_MAP_NAME,
    parse_key,
    policy_reply,
    tlsrpt_reply,
)
from .exim import EximLookup, EximMap, Outcome, exim_request
from .exim_answers import EXIM_MAP_NAME
from .overrides import OVERRIDE_KINDS, Override, check_overrides
from .tally import LATENCY_BUCKETS, Tally, answer_kind

__all__ = ["SocketmapServer"]

log = logging.getLogger("mtasts.socketmap")  # the package's logger: one name for every part of the server

_REPLY_MEMO_SIZE = 4096  # formatted replies kept per distinct policy (the cache interns identical policies)
_LIMIT_LOG_PERIOD = 60.0  # seconds between two WARNINGs about the connection limit


class _PlainLookup(str):
    """A normalised domain to look up whose answer is the plain MTA-STS one whatever ``dane`` and ``tlsrpt`` say
    (a request on sendmail's map name, :data:`~mtasts.socketmap.answers.SENDMAIL_MAP_NAME`)."""


#: The reply memo's key for a policy's plain answer on sendmail's map ("" is no domain, so no TLS-RPT key's).
_PLAIN = ""


class _TlsrptLookup(str):
    """A normalised domain to look up whose answer carries the TLS-RPT attributes (a request on the TLS-RPT name).

    :meth:`SocketmapServer._quick` returns the domain of a lookup it cannot answer from memory; a request on the
    TLS-RPT name returns it as this subclass, so that the plain name's path carries no flag.
    """

    __slots__ = ()


@dataclass(slots=True)
class _LimitLog:
    """What the connection-limit WARNING will report: evictions and rejections since it was last logged."""

    counts: list[int] = dataclasses.field(default_factory=lambda: [0, 0])  # evicted, rejected
    logged_at: float = -math.inf
    timer: asyncio.TimerHandle | None = None


@dataclass(slots=True)
class _Listen:
    """Where and how the server listens (one attribute of the server: see ``_limit_log``)."""

    port: int
    unix_mode: int | None
    accept_batch: int
    listen_queue: int
    sock: socket.socket | None = None  # a listening socket to serve on instead of binding (socket activation)


_DOMAIN_MEMO_SIZE = 65536  # domains a per-domain memo holds (DANE states and replies, overrides seen); then cleared


@dataclass(slots=True)
class _Dane:
    """DANE first (RFC 8461 §2, RFC 7672): the lookups, and per normalised domain (expiry, reply) — the
    ``OK dane-only`` netstring, or None when DANE does not apply and MTA-STS answers."""

    lookup: DaneResolver
    clock: Callable[[], float]
    states: dict[str, tuple[float, bytes | None]] = dataclasses.field(default_factory=dict)
    inflight: dict[str, asyncio.Future[bytes | None]] = dataclasses.field(default_factory=dict)
    # The hit path's memo: domain as asked -> (expiry, the reply, the policy it was made for — None for OK dane-only,
    # which stands whatever the enforce policy: the hit path tells the two kinds apart by it); one per answer kind
    replies: dict[str, tuple[float, bytes, Policy | None]] = dataclasses.field(default_factory=dict)
    tlsrpt_replies: dict[str, tuple[float, bytes, Policy | None]] = dataclasses.field(default_factory=dict)


@dataclass(slots=True)
class _Overrides:
    """The operator's answers per normalised domain, and how often each kind was used."""

    table: dict[str, Override]
    used: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(OVERRIDE_KINDS, 0))
    # domain as asked -> whether it is overridden: the hit path's one lookup (normalised once per spelling)
    seen: dict[str, bool] = dataclasses.field(default_factory=dict)

    def find(self, domain: str) -> Override | None:
        """The override for ``domain`` as asked (any spelling: normalised here), or None."""
        found = self.table.get(domain)
        if found is None:
            try:
                found = self.table.get(normalize_domain(domain))
            except DomainError:
                return None
        return found

    def learn(self, domain: str) -> bool:
        """Whether ``domain`` as asked is overridden, remembered in :attr:`seen` (cleared when full)."""
        seen = self.seen
        if len(seen) >= _DOMAIN_MEMO_SIZE:
            seen.clear()
        overridden = seen[domain] = self.find(domain) is not None
        return overridden

    def note(self, domain: str, override: Override) -> None:
        """Count a use and log it — every use (issue 17: an operator's allowlist is an audit trail): ``policy =
        "none"`` at WARNING (MTA-STS not applied to this delivery), an ``answer`` at INFO."""
        self.used[override.kind] += 1
        domain = normalize_domain(domain)
        if override.kind == "none":
            log.warning("override for %s: policy = none, answered NOTFOUND (MTA-STS not applied)", domain,
                        extra={"event": "override", "domain": domain, "answer": "notfound"})  # fmt: skip
        else:
            log.info("override for %s: answered %r", domain, override.reply[:200],
                     extra={"event": "override", "domain": domain, "answer": "override"})  # fmt: skip


def _overriding(
    cached_policy: Callable[[str], Policy | NotCached | None], overrides: _Overrides
) -> Callable[[str], Policy | NotCached | None]:
    """``cached_policy`` with the overrides first: the hit path's reader while any are configured (so that
    without any it costs nothing). An overridden domain reads as not cached, whatever the cache holds: its
    request goes to :meth:`SocketmapServer._slow`, which answers the override (no lookup, no DANE)."""
    seen, learn = overrides.seen, overrides.learn

    def cached_unless_overridden(domain: str) -> Policy | NotCached | None:
        overridden = seen.get(domain)
        if overridden is None:
            overridden = learn(domain)
        return NOT_CACHED if overridden else cached_policy(domain)

    return cached_unless_overridden


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
    fault, or a DNS failure under ``dns_error = "defer"``); the answers by kind and the lookups' latency:
    :meth:`answers`, :meth:`latency` (:mod:`mtasts.socketmap.tally`: a cache hit pays nothing for them).

    A request on the map name ``QUERYwithTLSRPT`` — on every name with ``tlsrpt=True`` — is answered, for an
    enforce policy, with the TLS-RPT attributes of Postfix >= 3.10 after the policy (docs/postfix.md, "TLS-RPT
    with Postfix 3.10"); every other answer is the same on every name.

    ``overrides`` (normalised domain → :class:`~mtasts.socketmap.overrides.Override`) are answered as they say,
    before the cache, a lookup or DANE (docs/operations.md, "Overrides"); :attr:`overrides_used` counts their
    uses per kind. ``sock``: serve on this listening socket (TCP or Unix, e.g. from systemd) instead of binding
    ``host``/``port``/``unix_path``; it is closed with the server, and no file is unlinked for it.
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
        tlsrpt: bool = False,
        dane: bool | DaneResolver = False,
        sock: socket.socket | None = None,
        overrides: dict[str, Override] | None = None,
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
        if not isinstance(tlsrpt, bool):
            raise UsageError(f"tlsrpt must be True or False, not {tlsrpt!r}")
        if not isinstance(dane, bool | DaneResolver):
            raise UsageError(f"dane must be True, False or a DaneResolver, not {dane!r}")
        if sock is not None and (not isinstance(sock, socket.socket) or sock.type != socket.SOCK_STREAM):
            raise UsageError(f"sock must be a listening stream socket, not {sock!r}")
        self.resolver = resolver
        # The resolver's hot path, read once (PolicyResolver sets it per instance, a closure shadowing the method).
        # Called through a local (_quick_unguarded): CPython 3.11 specialises no method lookup that finds an
        # instance attribute, as self.resolver.cached_policy(...) and self._cached_policy(...) both would be —
        # ~150 instructions more per answer, measured with python -m benchmarks.instructions.
        self._cached_policy = resolver.cached_policy
        self.host = host
        self.unix_path = unix_path
        self.max_request = max_request
        self.request_timeout = float(request_timeout)
        self.max_pipeline = max_pipeline
        self.idle_timeout = float(idle_timeout)
        self.max_connections = max_connections
        self.first_request_timeout = float(first_request_timeout)
        self._listen = _Listen(port, unix_mode, accept_batch, max(listen_queue, accept_batch), sock)
        self._secure_hits = 0  # secure answers from memory (the hot path's one increment: mtasts.socketmap.tally)
        self.connections = 0
        self.rejected = 0
        self.evicted = 0
        self._tally = Tally()  # the answers by kind, latency, errors, timeouts, deferred: one attribute (see below)
        # The memo of encoded replies: policy -> the plain reply; (domain as asked, policy) -> the TLS-RPT reply
        # (policies are interned across domains, but a TLS-RPT reply names its domain). With tlsrpt=True no policy
        # key is ever stored, so the plain name's hits fall through to _remember, which gives the TLS-RPT reply.
        self._replies: dict[Policy | tuple[str, Policy], bytes] = {}
        if tlsrpt:  # else the class attribute: a 30th instance attribute costs the answer path ~300 instructions
            self._tlsrpt_every_name = True
        if dane is not False:  # DANE state per domain, looked up through the resolver's own DNS resolver
            lookup = dane if isinstance(dane, DaneResolver) else DaneResolver(resolver.dns_resolver)
            self._dane = _Dane(lookup, resolver.clock)
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
        if overrides:
            self.set_overrides(overrides)

    #: Every map name is answered with the TLS-RPT attributes (tlsrpt=True), not only TLSRPT_MAP_NAME.
    _tlsrpt_every_name = False
    #: DANE first (dane=True): None, the class default, answers as MTA-STS alone.
    _dane: _Dane | None = None
    #: The ``exim`` map (docs/exim.md), made at its first request.
    _exim: EximMap | None = None
    #: The overrides, once any were set (set_overrides): None, the class default, has none and never had.
    _overrides: _Overrides | None = None

    @property
    def unix_mode(self) -> int | None:
        return self._listen.unix_mode

    @property
    def accept_batch(self) -> int:
        return self._listen.accept_batch

    @property
    def listen_queue(self) -> int:
        return self._listen.listen_queue

    @property
    def dane(self) -> bool:
        """True when enforce domains whose MX hosts have validated TLSA records are answered ``OK dane-only``."""
        return self._dane is not None

    # -- counters (kept in the tally: one instance attribute, see __init__) --------------------------------------

    @property
    def errors(self) -> int:
        return self._tally.errors

    @errors.setter
    def errors(self, value: int) -> None:
        self._tally.errors = value

    @property
    def timeouts(self) -> int:
        return self._tally.timeouts

    @timeouts.setter
    def timeouts(self, value: int) -> None:
        self._tally.timeouts = value

    @property
    def deferred(self) -> int:
        return self._tally.deferred

    @deferred.setter
    def deferred(self, value: int) -> None:
        self._tally.deferred = value

    @property
    def requests(self) -> int:
        """Requests received (answered from memory, or handed to a lookup)."""
        return self._tally.requests(self._secure_hits)

    def answers(self) -> dict[str, int]:
        """Requests answered so far by kind: ``secure``, ``notfound``, ``temp``, ``perm``, ``dane`` (a request
        whose lookup is still running, or whose connection closed before it ended, is in none)."""
        return self._tally.answers(self._secure_hits)

    def latency(self) -> tuple[tuple[float, ...], list[int], float]:
        """The answers' latency as a histogram: the buckets' upper bounds (seconds), the cumulative counts (one
        more: +Inf), the sum of seconds. Answers from memory count in the first bucket as 0 seconds; lookups as
        measured, from the request to the answer."""
        cumulative, seconds = self._tally.latency(self._secure_hits)
        return LATENCY_BUCKETS, cumulative, seconds

    # -- lifecycle ------------------------------------------------------------------------------------------------

    async def __aenter__(self) -> SocketmapServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def bind(self) -> None:
        """Bind the listening socket (or take ``sock``) without accepting connections yet (idempotent): the
        daemon binds as root, drops its privileges, restores the cache, and only then :meth:`start` accepts."""
        if self._server is not None:
            return
        if self._closing:
            raise MTASTSError("the socketmap server is closed")
        loop = asyncio.get_running_loop()
        sock = self._listen.sock
        if sock is not None:
            if sock.family == socket.AF_UNIX:
                # Python >= 3.13 would unlink the socket's file on close: not ours to remove (systemd made it)
                keep: dict[str, Any] = {"cleanup_socket": False} if sys.version_info >= (3, 13) else {}
                self._server = await loop.create_unix_server(
                    lambda: _Connection(self), sock=sock, backlog=self.accept_batch, start_serving=False, **keep
                )
            else:
                self._server = await loop.create_server(
                    lambda: _Connection(self), sock=sock, backlog=self.accept_batch, start_serving=False
                )
        elif self.unix_path is not None:
            self._server = await loop.create_unix_server(
                lambda: _Connection(self), self.unix_path, backlog=self.accept_batch, start_serving=False
            )
            if self.unix_mode is not None:
                os.chmod(self.unix_path, self.unix_mode)
        else:
            self._server = await loop.create_server(
                lambda: _Connection(self),
                self.host,
                self._listen.port,
                reuse_address=True,
                backlog=self.accept_batch,
                start_serving=False,
            )

    async def start(self) -> None:
        """Bind (unless :meth:`bind` did) and start accepting connections (idempotent)."""
        await self.bind()
        assert self._server is not None
        if self._server.is_serving():
            return
        await self._server.start_serving()
        for sock in self._server.sockets:  # asyncio's backlog is both; a longer queue drops no SYN in a burst
            with sock.dup() as listening:
                listening.listen(self.listen_queue)

    @property
    def port(self) -> int:
        """The bound TCP port (useful with ``port=0``)."""
        if (
            self._server is None
            or not self._server.sockets
            or self.unix_path is not None
            or self._server.sockets[0].family == socket.AF_UNIX
        ):
            raise UsageError("the server is not listening on TCP")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def address(self) -> str:
        """Where the server listens, for logs: ``127.0.0.1:8461``, ``[::1]:8461``, ``unix:/run/mtasts.sock``."""
        if self.unix_path is not None:
            return f"unix:{self.unix_path}"
        if self._server is None or not self._server.sockets:
            if self._listen.sock is not None:
                return "a passed socket (not listening)"
            return f"{self.host}:{self._listen.port} (not listening)"
        return ", ".join(
            f"unix:{sock.getsockname() or '(unnamed)'}"
            if sock.family == socket.AF_UNIX
            else format_host_port(*sock.getsockname()[:2])
            for sock in self._server.sockets
        )

    @property
    def tlsrpt(self) -> bool:
        """True when every map name is answered with the TLS-RPT attributes (not only ``QUERYwithTLSRPT``)."""
        return self._tlsrpt_every_name

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

    # -- reconfiguring (a reload) -----------------------------------------------------------------------------------

    def update_limits(
        self,
        *,
        max_request: int | None = None,
        request_timeout: float | None = None,
        max_pipeline: int | None = None,
        idle_timeout: float | None = None,
        max_connections: int | None = None,
        first_request_timeout: float | None = None,
    ) -> None:
        """Change limits while serving (None: unchanged); every value is checked before any is applied.

        Open connections keep going: ``max_request`` applies to new connections (a connection's decoder is made
        with it); the timeouts to the next request, or the next time a connection's timer fires; a lower
        ``max_connections`` closes nothing, but new connections then evict or are refused until below it.
        """
        counts = {"max_request": max_request, "max_pipeline": max_pipeline, "max_connections": max_connections}
        seconds = {
            "request_timeout": request_timeout,
            "idle_timeout": idle_timeout,
            "first_request_timeout": first_request_timeout,
        }
        checked: dict[str, float | int] = {}
        for name, count in counts.items():
            if count is not None:
                checked[name] = check_count(name, count)
        for name, value in seconds.items():
            if value is not None:
                checked[name] = check_seconds(name, value, positive=True)
        for name, value in checked.items():
            setattr(self, name, value)

    def set_overrides(self, overrides: dict[str, Override]) -> None:
        """Answer these domains as the operator says from now on (replacing the previous overrides; ``{}``: none).

        Keys are normalised here (:class:`~mtasts.errors.UsageError` for an invalid one). The counts of
        :attr:`overrides_used` go on across calls.
        """
        table = check_overrides(overrides)
        state = self._overrides
        if state is None:
            if not table:
                return
            state = self._overrides = _Overrides(table)
        state.table = table
        state.seen = {}
        # Only while there are overrides does the hit path's reader look at them (none: the resolver's own).
        self._cached_policy = _overriding(self.resolver.cached_policy, state) if table else self.resolver.cached_policy

    @property
    def overrides(self) -> dict[str, Override]:
        """The overrides in force: normalised domain → :class:`~mtasts.socketmap.overrides.Override`."""
        return dict(self._overrides.table) if self._overrides is not None else {}

    @property
    def overrides_used(self) -> dict[str, int]:
        """Requests answered by an override, per kind (``{"none": n, "answer": m}``), since the server started."""
        if self._overrides is None:
            return dict.fromkeys(OVERRIDE_KINDS, 0)
        return dict(self._overrides.used)

    # -- cache control (mtasts cache purge, through mtasts.control) -------------------------------------------------

    async def purge(self, domain: str, *, wait: float = 60.0) -> PurgeResult:
        """:meth:`PolicyResolver.purge` ``domain``, and forget what this server remembers of it: its DANE state and
        the replies memoised for it — so the next request for it is answered from a fresh TXT query and fetch
        (and a fresh DANE lookup), never from a memo. A DANE lookup of the domain in flight is waited for (up
        to ``wait`` seconds) and its outcome forgotten too. Requests meanwhile get the fresh lookup's answer,
        or ``TEMP`` after ``request_timeout`` (never ``NOTFOUND`` because memory was emptied)."""
        key = normalize_domain(domain)
        dane = self._dane
        in_flight = dane.inflight.get(key) if dane is not None else None
        self._forget(key)
        result = await self.resolver.purge(key, wait=wait)
        if in_flight is not None:
            await asyncio.wait([in_flight], timeout=wait)
            self._forget(key)
        return result

    def _forget(self, key: str) -> None:
        """Drop the memos held for the normalised domain ``key`` (those keyed by the domain as asked included)."""
        dane = self._dane
        if dane is not None:
            dane.states.pop(key, None)
            for memo in (dane.replies, dane.tlsrpt_replies):
                for asked in [asked for asked in memo if _names(asked, key)]:
                    del memo[asked]
        replies = self._replies
        for memo_key in [k for k in replies if isinstance(k, tuple) and _names(k[0], key)]:
            del replies[memo_key]

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
        """The encoded reply when memory can answer, else the normalised domain to look up.

        Each request is counted once, by kind, where its answer is made — a domain to look up as a lookup
        (:mod:`mtasts.socketmap.tally`): a reply added to this path must be counted too.
        """
        try:
            return self._quick_unguarded(payload)
        except Exception:
            self.errors += 1
            self._tally.temp += 1
            log.exception("internal error answering %r", payload[:200])
            return TEMP_INTERNAL_NETSTRING

    def _notfound(self) -> bytes:
        """NOTFOUND, counted (for the paths that return it before the cache is read)."""
        self._tally.notfound += 1
        return NOTFOUND_NETSTRING

    def _quick_unguarded(self, payload: bytes) -> bytes | str:
        # The documented map name, "postfix", is recognised by the split itself (a payload starting "postfix " has
        # an empty head): its path tests no name, and is _quick_named's for that name, inlined. Any other name —
        # the TLS-RPT one, an empty one, no space at all — goes to _quick_named.
        head, plain, raw_key = payload.partition(b"postfix ")
        if head or not plain:
            return self._quick_named(payload)
        try:
            key = raw_key.decode()
        except UnicodeDecodeError:
            return self._notfound()
        if key and key[0] not in ".[" and ":" not in key:
            domain = key  # the common case: a plain domain (cached_policy normalises it)
        else:
            try:
                parsed = parse_key(key)
            except DomainError:
                return self._notfound()
            if parsed is None:
                return self._notfound()
            domain = parsed
        cached_policy = self._cached_policy  # an attribute load, not a method lookup (see __init__)
        try:
            policy = cached_policy(domain)
        except DomainError:
            return self._notfound()
        if policy is NOT_CACHED:
            return self._lookup(normalize_domain(domain))
        if policy is None:
            self._tally.notfound += 1
            return NOTFOUND_NETSTRING
        reply = self._replies.get(policy)  # only OK secure replies are memoised under a policy
        if reply is not None:
            self._secure_hits += 1
            return reply
        return self._remember(policy, domain)

    def _quick_named(self, payload: bytes) -> bytes | str:
        """:meth:`_quick_unguarded` for any map name: the TLS-RPT one gets the TLS-RPT reply (or lookup)."""
        name, space, raw_key = payload.partition(b" ")
        if not space or not name:
            self._tally.perm += 1
            return PERM_REQUEST_NETSTRING
        if name == EXIM_MAP_NAME:  # Exim's ${readsocket}: the MX hosts an enforce policy allows (docs/exim.md)
            request = exim_request(self._cached_policy, raw_key)
            if isinstance(request, str):  # the MX hosts are needed: always a lookup
                return self._lookup(request)
            self._tally.notfound += 1  # (exim_request settles only NOTFOUND from memory)
            return request
        # sendmail's FEATURE(`sts'): the plain answer only, never dane-only nor TLS-RPT attributes (docs/sendmail.md)
        plain = name == SENDMAIL_MAP_NAME
        tlsrpt = not plain and (name == TLSRPT_MAP_NAME or self._tlsrpt_every_name)
        try:
            key = raw_key.decode()
            domain = parse_key(key)
        except (UnicodeDecodeError, DomainError):
            return self._notfound()
        if domain is None:
            return self._notfound()
        try:
            policy = self._cached_policy(domain)
        except DomainError:
            return self._notfound()
        if policy is NOT_CACHED:
            normalized = normalize_domain(domain)
            return self._lookup(
                _PlainLookup(normalized) if plain else _TlsrptLookup(normalized) if tlsrpt else normalized
            )
        if policy is None:
            return self._notfound()
        if plain:
            if policy.mode is Mode.ENFORCE:
                self._secure_hits += 1
            else:
                self._tally.notfound += 1
            return self._plain_reply(policy)
        reply = self._replies.get((domain, policy) if tlsrpt else policy)
        if reply is not None:
            self._secure_hits += 1
            return reply
        return self._remember_tlsrpt(domain, policy) if tlsrpt else self._remember(policy, domain)

    def _lookup(self, domain: str) -> str:
        """``domain`` to look up (a lookup counted: its answer is counted when it ends)."""
        self._tally.lookups += 1
        return domain

    def _plain_reply(self, policy: Policy) -> bytes:
        """The plain answer for ``policy`` (``NOTFOUND `` unless it is an enforce policy), memoised."""
        return self._replies.get((_PLAIN, policy)) or self._memo((_PLAIN, policy), policy_reply(policy))

    async def _slow(self, domain: str) -> bytes:
        """:meth:`_look_up`, its answer counted by kind with its latency (and logged at DEBUG); the request was
        counted a lookup when :meth:`_quick` handed it on."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        reply = await self._look_up(domain)
        seconds = loop.time() - started
        self._tally.answered(reply, seconds)
        if log.isEnabledFor(logging.DEBUG):
            text = reply[reply.find(b":") + 1 : -1][:200].decode("utf-8", "replace")
            log.debug(
                "%s: %s (looked up in %.3f s)", domain, text, seconds,
                extra={"event": "answer", "domain": str(domain), "answer": answer_kind(reply), "duration": seconds},
            )  # fmt: skip
        return reply

    async def _look_up(self, domain: str) -> bytes:
        """The encoded reply after a lookup (TEMP when it outlasts ``request_timeout``, or cannot answer now); an
        overridden domain's reply, without one (on the ``exim`` map only ``policy = "none"`` applies: an answer is
        Postfix's)."""
        overrides = self._overrides
        if overrides is not None:
            try:
                override = overrides.find(domain)
                if override is not None and (override.kind == "none" or type(domain) is not EximLookup):
                    overrides.note(domain, override)
                    return override.netstring
            except Exception:
                self.errors += 1
                log.exception("answering the override for %s failed", domain)
                return TEMP_INTERNAL_NETSTRING
        if type(domain) is EximLookup:
            return await self._exim_answer(domain)
        try:
            async with asyncio.timeout(self.request_timeout):
                lookup = await self.resolver.lookup(domain)
        except TimeoutError:
            self.timeouts += 1
            log.info("policy lookup for %s still running after %g s: answered TEMP", domain, self.request_timeout)
            return TEMP_PENDING_NETSTRING
        except DomainError:
            return NOTFOUND_NETSTRING
        except Exception:
            self.errors += 1
            log.exception("policy lookup for %s failed", domain)
            return TEMP_INTERNAL_NETSTRING
        if lookup.defer:  # a local fault, or a DNS failure under dns_error = "defer": never NOTFOUND
            self.deferred += 1
            log.info("policy lookup for %s: %s (%s): answered TEMP", domain, lookup.status, lookup.error)
            return TEMP_LOCAL_NETSTRING if lookup.status == LookupStatus.LOCAL_ERROR else TEMP_DNS_NETSTRING
        policy = lookup.policy
        if policy is None:
            return NOTFOUND_NETSTRING
        if type(domain) is _PlainLookup:
            return self._plain_reply(policy)
        dane = self._dane
        if dane is not None and policy.mode is Mode.ENFORCE:  # DANE first (RFC 8461 §2)
            tlsrpt = type(domain) is _TlsrptLookup or self._tlsrpt_every_name
            try:
                async with asyncio.timeout(self.request_timeout):
                    reply = await self._dane_state(dane, str(domain))
            except TimeoutError:
                self.timeouts += 1
                log.info("DANE lookup for %s still running after %g s: answered TEMP", domain, self.request_timeout)
                return TEMP_PENDING_NETSTRING
            except _DaneDeferred as deferred:
                self.deferred += 1
                log.info("DANE lookup for %s: %s: answered TEMP", domain, deferred.why)
                return deferred.reply
            except Exception:
                self.errors += 1
                log.exception("DANE lookup for %s failed", domain)
                return TEMP_INTERNAL_NETSTRING
            return reply or self._sts_reply(str(domain), policy, tlsrpt)
        # Not through _remember, which counts the answers it makes (this one is counted by _slow); never a NOTFOUND
        # memoised under a policy, where the hit path takes every reply for OK secure.
        if policy.mode is not Mode.ENFORCE:
            return NOTFOUND_NETSTRING
        if type(domain) is _TlsrptLookup or self._tlsrpt_every_name:
            return self._replies.get((domain, policy)) or self._memo_tlsrpt(domain, policy)
        return self._replies.get(policy) or self._memo(policy, policy_reply(policy))

    async def _exim_answer(self, domain: EximLookup) -> bytes:
        """The ``exim`` map's reply for ``domain`` (:class:`~mtasts.socketmap.exim.EximMap`), counted."""
        exim = self._exim
        if exim is None:
            exim = self._exim = EximMap(self.resolver)
        answer = await exim.answer(domain, timeout=self.request_timeout)  # never raises: TEMP for any failure
        self.timeouts += answer.outcome is Outcome.TIMEOUT
        self.deferred += answer.outcome is Outcome.DEFERRED
        self.errors += answer.outcome is Outcome.ERROR
        return answer.netstring

    def _remember(self, policy: Policy, domain: str) -> bytes | str:
        """The plain reply for ``policy``, memoised — or, with ``tlsrpt``, the TLS-RPT reply for ``domain``; with
        DANE and an enforce policy, the domain's DANE answer (a domain to look up when it is not known).

        Each answer is counted here (``testing`` and ``none``: NOTFOUND, never memoised — the memo under a policy
        holds only ``OK secure`` replies, so that the hit path knows what it answers)."""
        if policy.mode is not Mode.ENFORCE:
            self._tally.notfound += 1
            return NOTFOUND_NETSTRING
        dane = self._dane
        if dane is not None:
            memo = dane.tlsrpt_replies if self._tlsrpt_every_name else dane.replies
            entry = memo.get(domain)
            if entry is not None:
                if entry[2] is policy and entry[0] > dane.clock():  # MTA-STS's reply
                    self._secure_hits += 1
                    return entry[1]
                if entry[2] is None and entry[0] > dane.clock():  # OK dane-only
                    self._tally.dane += 1
                    return entry[1]
            return self._dane_quick(domain, policy, self._tlsrpt_every_name)
        if self._tlsrpt_every_name:  # the plain name's hits: no policy key is memoised with tlsrpt=True
            reply = self._replies.get((domain, policy))
            if reply is not None:
                self._secure_hits += 1
                return reply
            return self._remember_tlsrpt(domain, policy)
        reply = self._memo(policy, policy_reply(policy))
        self._secure_hits += 1
        return reply

    def _remember_tlsrpt(self, domain: str, policy: Policy) -> bytes | str:
        """The TLS-RPT reply for ``domain`` (as asked: normalised here) and ``policy``, memoised (or DANE's);
        counted (as in :meth:`_remember`)."""
        if policy.mode is not Mode.ENFORCE:
            self._tally.notfound += 1
            return NOTFOUND_NETSTRING
        dane = self._dane
        if dane is not None:
            entry = dane.tlsrpt_replies.get(domain)
            if entry is not None:
                if entry[2] is policy and entry[0] > dane.clock():  # MTA-STS's reply (as in _remember)
                    self._secure_hits += 1
                    return entry[1]
                if entry[2] is None and entry[0] > dane.clock():  # OK dane-only
                    self._tally.dane += 1
                    return entry[1]
            return self._dane_quick(domain, policy, True)
        reply = self._memo_tlsrpt(domain, policy)
        self._secure_hits += 1
        return reply

    def _memo_tlsrpt(self, domain: str, policy: Policy) -> bytes:
        """The TLS-RPT reply for ``domain`` (as asked) and the enforce ``policy``, memoised."""
        return self._memo((str(domain), policy), tlsrpt_reply(policy, normalize_domain(domain)))

    # -- DANE first ---------------------------------------------------------------------------------------------
    # With DANE on, no enforce reply is memoised under the keys the hit path reads (the policy, (domain, policy)):
    # such hits fall through to _remember / _remember_tlsrpt, and from there here.

    def _dane_quick(self, domain: str, policy: Policy, tlsrpt: bool) -> bytes | str:
        """The answer from the domain's remembered DANE state (memoised for the hit path: ``OK dane-only`` with no
        policy, MTA-STS's reply with the policy it was made for), or the domain to look up (unknown or expired)."""
        dane = self._dane
        assert dane is not None
        entry = dane.states.get(domain)
        if entry is None or entry[0] <= dane.clock():
            normalized = normalize_domain(domain)
            return self._lookup(_TlsrptLookup(normalized) if tlsrpt else normalized)
        memo = dane.tlsrpt_replies if tlsrpt else dane.replies
        if len(memo) >= _DOMAIN_MEMO_SIZE:
            memo.clear()
        if entry[1] is not None:
            memo[domain] = (entry[0], entry[1], None)
            self._tally.dane += 1
            return entry[1]
        reply = self._sts_reply(domain, policy, tlsrpt)
        memo[domain] = (entry[0], reply, policy)
        self._secure_hits += 1
        return reply

    @staticmethod
    def _sts_reply(domain: str, policy: Policy, tlsrpt: bool) -> bytes:
        """MTA-STS's reply for a domain DANE does not govern (the hit path keeps it in the DANE memo)."""
        return tlsrpt_reply(policy, normalize_domain(domain)) if tlsrpt else policy_reply(policy)

    async def _dane_state(self, dane: _Dane, domain: str) -> bytes | None:
        """``OK dane-only`` or None (MTA-STS answers) for ``domain``: remembered, or looked up once for all
        the requests that want it now. Raises :class:`_DaneDeferred` when it cannot be known now."""
        entry = dane.states.get(domain)
        if entry is not None and entry[0] > dane.clock():
            return entry[1]
        pending = dane.inflight.get(domain)
        if pending is None:
            pending = asyncio.ensure_future(self._dane_fetch(dane, domain))
            dane.inflight[domain] = pending
            pending.add_done_callback(lambda done: _settle(dane, domain, done))
        return await asyncio.shield(pending)

    async def _dane_fetch(self, dane: _Dane, domain: str) -> bytes | None:
        try:
            state, ttl = await dane.lookup.domain(domain)
        except MXPermanentFailure:  # NXDOMAIN or a null MX: no DANE; Postfix will find no MX either
            reply, ttl = None, 300.0
        except MXTransientFailure as exc:  # RFC 7672 §2.2.1: a failed MX lookup defers (not remembered)
            raise _DaneDeferred(TEMP_DANE_MX_NETSTRING, exc.message) from None
        except LocalError as exc:  # a fault on this side says nothing about the domain (not remembered)
            raise _DaneDeferred(TEMP_LOCAL_NETSTRING, exc.message) from None
        else:
            reply = DANE_ONLY_NETSTRING if postfix_level(state) == "dane-only" else None
        if len(dane.states) >= _DOMAIN_MEMO_SIZE:
            dane.states.clear()
        dane.states[domain] = (dane.clock() + ttl, reply)
        return reply

    def _memo(self, key: Policy | tuple[str, Policy], reply: bytes) -> bytes:
        if len(self._replies) >= _REPLY_MEMO_SIZE:
            self._replies.clear()
        self._replies[key] = reply
        return reply


class _DaneDeferred(Exception):
    """DANE's state cannot be known now: answer ``reply`` (a TEMP netstring)."""

    def __init__(self, reply: bytes, why: str) -> None:
        super().__init__(why)
        self.reply, self.why = reply, why


def _names(asked: str, key: str) -> bool:
    """Whether the domain ``asked`` (as a request named it) is the normalised domain ``key``."""
    if asked == key:
        return True
    if asked.isascii():
        return asked.lower().removesuffix(".") == key
    try:
        return normalize_domain(asked) == key
    except DomainError:
        return False


def _settle(dane: _Dane, domain: str, done: asyncio.Future[bytes | None]) -> None:
    """A finished DANE lookup: forget it, and mark its exception seen (its waiters may all have gone)."""
    if dane.inflight.get(domain) is done:
        del dane.inflight[domain]
    if not done.cancelled():
        done.exception()


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
        transport = cast(asyncio.Transport, transport)  # a stream transport (uvloop's is one without subclassing)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = format_host_port(peer[0], peer[1]) if isinstance(peer, tuple) else "unix socket"
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
