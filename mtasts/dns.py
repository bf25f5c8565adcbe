"""DNS for MTA-STS through dnspython: the ``_mta-sts`` TXT discovery (RFC 8461 §3.1) and host addresses.

This module is a boundary: every dnspython exception is translated here, into a :class:`TxtAnswer` status
(discovery never raises) or a :class:`~mtasts.errors.HostLookupError` (host addresses). A query that
could not be made because of this machine — no free descriptor or buffer (EMFILE, ENFILE, ENOBUFS), the query
queue full past its wait — is told apart from a failure of the domain: :attr:`TxtStatus.LOCAL_ERROR`, or
:class:`~mtasts.errors.LocalError`. It says nothing about the domain and must never become "no policy".

The resolver is the caller's ``dns.asyncresolver.Resolver``: point it at any server and it defines the world.
mtasts never enables dnspython's own cache (all caching decisions use the injected clock).
"""

from __future__ import annotations

import asyncio
import enum
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import dns._asyncbackend  # Backend, DatagramSocket: dns.asyncbackend re-exports them (not to type checkers)
import dns.asyncbackend
import dns.asyncresolver
import dns.exception
import dns.flags
import dns.name
import dns.rdatatype
import dns.resolver

from ._exceptions import local_os_error
from ._gate import Gate
from .errors import HostLookupError, LocalError, MXPermanentFailure, MXTransientFailure

__all__ = [
    "DNS_FAILURES",
    "DnsResolver",
    "GatedResolver",
    "HostLookupError",
    "MXPermanentFailure",
    "MXTransientFailure",
    "MxHosts",
    "TxtAnswer",
    "TxtStatus",
    "find_mx",
    "find_mx_hosts",
    "query_txt",
    "resolve_addresses",
]

_T = TypeVar("_T")

# What a failed dnspython call can raise beside DNSException: socket errors, and ValueError/EOFError from
# malformed answers.
DNS_FAILURES = (dns.exception.DNSException, OSError, ValueError, EOFError)


class DnsResolver(Protocol):
    """What mtasts needs of a resolver: dnspython's ``dns.asyncresolver.Resolver.resolve`` (or a wrapper)."""

    async def resolve(
        self,
        qname: dns.name.Name | str,
        rdtype: dns.rdatatype.RdataType | str = ...,
        *,
        raise_on_no_answer: bool = ...,
        search: bool | None = ...,
    ) -> dns.resolver.Answer: ...


class _DatagramSocket(dns._asyncbackend.DatagramSocket):
    """A UDP socket for one dnspython query, read when the loop says it is readable (no transport, no queue)."""

    def __init__(self, family: int, sock: socket.socket) -> None:
        super().__init__(family, socket.SOCK_DGRAM)
        self._sock = sock

    async def sendto(self, what: bytes, destination: Any, timeout: float | None) -> int:
        return await self._wait(lambda: self._sock.sendto(what, destination), timeout, write=True)

    async def recvfrom(self, size: int, timeout: float | None) -> tuple[bytes, Any]:
        return await self._wait(lambda: self._sock.recvfrom(size), timeout, write=False)

    async def _wait(self, call: Callable[[], _T], timeout: float | None, *, write: bool) -> _T:
        """``call()`` once the socket is ready for it, within ``timeout`` seconds. A send is tried at once (there is
        room, nearly always); a receive first waits (the answer cannot be there yet)."""
        sock = self._sock
        loop: Any = None
        ready_now = write
        while True:
            if ready_now:
                try:
                    return call()
                except (BlockingIOError, InterruptedError):
                    pass
            ready_now = True
            if loop is None:
                loop = asyncio.get_running_loop()
                expires = None if timeout is None else loop.time() + timeout
            ready = loop.create_future()
            fd = sock.fileno()
            (loop.add_writer if write else loop.add_reader)(fd, _wake, ready)
            try:
                async with asyncio.timeout_at(expires):
                    await ready
            except TimeoutError:
                raise dns.exception.Timeout(timeout=timeout) from None  # type: ignore[no-untyped-call]
            finally:
                (loop.remove_writer if write else loop.remove_reader)(fd)

    async def close(self) -> None:
        self._sock.close()

    async def getpeername(self) -> Any:
        return self._sock.getpeername()

    async def getsockname(self) -> Any:
        return self._sock.getsockname()

    async def getpeercert(self, timeout: float | None) -> Any:
        raise NotImplementedError


def _wake(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


class _UdpBackend(dns._asyncbackend.Backend):
    """dnspython's asyncio backend with a leaner UDP socket: a query costs no datagram transport, protocol,
    ``asyncio.Queue`` and ``wait_for`` task (about a fifth of the CPU of a query over loopback, docs/benchmarks.md).
    Everything else — TCP, the queries, retries and their timing — is dnspython's own asyncio backend.

    For loops with ``add_reader`` (the standard library's selector loop, uvloop): :meth:`GatedResolver.resolve`.
    """

    def __init__(self) -> None:
        self._standard: Any = dns.asyncbackend.get_backend("asyncio")

    def name(self) -> str:
        return "asyncio"

    async def make_socket(  # noqa: PLR0917 - dnspython's signature
        self,
        af: int,
        socktype: int,
        proto: int = 0,
        source: Any = None,
        destination: Any = None,
        timeout: float | None = None,
        ssl_context: Any = None,
        server_hostname: str | None = None,
    ) -> Any:
        if socktype != socket.SOCK_DGRAM:
            return await self._standard.make_socket(
                af, socktype, proto, source, destination, timeout, ssl_context, server_hostname
            )
        sock = socket.socket(af, socket.SOCK_DGRAM, proto)
        try:
            sock.setblocking(False)
            if source is not None:
                sock.bind(source)
            if destination is not None:
                sock.connect(destination)
        except BaseException:
            sock.close()
            raise
        return _DatagramSocket(af, sock)

    async def sleep(self, interval: float) -> None:
        await asyncio.sleep(interval)

    def datagram_connection_required(self) -> bool:
        return False

    def get_transport_class(self) -> Any:
        return self._standard.get_transport_class()

    async def wait_for(self, awaitable: Any, timeout: float | None) -> Any:
        return await self._standard.wait_for(awaitable, timeout)


class GatedResolver:
    """At most ``limit`` queries in flight through ``resolver``; a query waits at most ``wait`` seconds for a slot.

    dnspython opens a socket per query: ten thousand concurrent lookups would hold ten thousand sockets. The
    resolver bounds its own queries with this (``PolicyResolver(max_concurrent_dns=..., queue_timeout=...)``).

    Queries still go through ``resolver.resolve`` (its servers, timeouts, retries, TCP fallback, EDNS); when it is
    dnspython's own ``Resolver.resolve`` and the loop is the standard selector loop, their UDP sockets are driven by
    :class:`_UdpBackend`.
    """

    def __init__(self, resolver: DnsResolver, limit: int, wait: float = 30.0) -> None:
        self.resolver = resolver
        self._gate = Gate(limit, wait, "DNS query")
        # dnspython's own resolve (a subclass that overrides it may not take a backend: it is called as before)
        own = isinstance(resolver, dns.asyncresolver.Resolver)
        if own and getattr(type(resolver), "resolve", None) is dns.asyncresolver.Resolver.resolve:
            self._backend: _UdpBackend | None = _UdpBackend()
        else:
            self._backend = None

    async def resolve(
        self,
        qname: dns.name.Name | str,
        rdtype: dns.rdatatype.RdataType | str = dns.rdatatype.A,
        *,
        raise_on_no_answer: bool = True,
        search: bool | None = None,
    ) -> dns.resolver.Answer:
        async with self._gate:
            backend = self._backend
            if backend is not None and _has_readers(asyncio.get_running_loop()):
                resolver: Any = self.resolver
                return await resolver.resolve(  # type: ignore[no-any-return]
                    qname, rdtype, raise_on_no_answer=raise_on_no_answer, search=search, backend=backend
                )
            return await self.resolver.resolve(qname, rdtype, raise_on_no_answer=raise_on_no_answer, search=search)


def _has_readers(loop: asyncio.AbstractEventLoop) -> bool:
    """The loop watches descriptors (``add_reader``): the standard selector loop or uvloop, not the proactor."""
    return isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop) or type(loop).__module__.startswith("uvloop")


class TxtStatus(enum.StrEnum):
    """How a TXT query ended."""

    FOUND = "found"  # one or more TXT records
    NXDOMAIN = "nxdomain"  # the name does not exist (or a CNAME chain ends in NXDOMAIN)
    NODATA = "nodata"  # the name exists but has no TXT record
    ERROR = "error"  # SERVFAIL, REFUSED, timeout, malformed answer: nothing is known
    LOCAL_ERROR = "local-error"  # the query could not be made here (descriptors, buffers, a full queue)


@dataclass(frozen=True, slots=True)
class TxtAnswer:
    """The TXT records at a name (each record's character-strings joined, §3.1), or why there are none."""

    status: TxtStatus
    records: tuple[bytes, ...] = ()
    error: str | None = None


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def servers(resolver: object) -> str:
    """The DNS servers a (possibly wrapped) dnspython resolver asks, for messages: ``127.0.0.1:5353``."""
    for _ in range(4):  # GatedResolver and similar wrappers keep the real one in .resolver
        if hasattr(resolver, "nameservers"):
            break
        resolver = getattr(resolver, "resolver", None)
    nameservers = getattr(resolver, "nameservers", None) or []
    port = getattr(resolver, "port", 53)
    shown = []
    for server in list(nameservers)[:3]:
        text = str(getattr(server, "address", server))
        shown.append(f"[{text}]:{port}" if ":" in text else f"{text}:{port}")
    return ", ".join(shown) or "the system's DNS servers"


def timeout_message(resolver: object, name: str, rdtype: str, seconds: float) -> str:
    """One line for a DNS query that got no answer in time."""
    return f"DNS timeout after {seconds:g} s asking {servers(resolver)} for {name.rstrip('.')} {rdtype}"


def describe_failure(exc: BaseException, resolver: object, name: str, rdtype: str) -> str:
    """One short line for a failed DNS query (dnspython's own texts run to hundreds of characters)."""
    shown = name.rstrip(".")
    if isinstance(exc, dns.exception.Timeout):
        seconds = exc.kwargs.get("timeout") if isinstance(getattr(exc, "kwargs", None), dict) else None
        return timeout_message(resolver, name, rdtype, seconds if isinstance(seconds, int | float) else 0.0)
    if isinstance(exc, dns.resolver.NoNameservers):
        errors = exc.kwargs.get("errors") or []
        said = [str(item[3]) for item in errors if isinstance(item, tuple) and len(item) > 3][:1]
        detail = f": {said[0][:80]}" if said else ""
        return f"no DNS server answered {shown} {rdtype} (asked {servers(resolver)}{detail})"
    local = local_os_error(exc)
    if local is not None:
        return describe_local_error(local)
    return f"DNS error asking {servers(resolver)} for {shown} {rdtype}: {_describe(exc)[:120]}"


def describe_local_error(exc: OSError) -> str:
    return f"a local resource ran out: {exc.strerror or exc}"


def _qname(text: str) -> dns.name.Name:
    """``text`` as an absolute DNS name. The A-label names mtasts asks for (no escapes) are split here: a third
    of the cost of dnspython's text parser, with the same label checks (``dns.name.Name``)."""
    if text.isascii() and "\\" not in text and text not in ("", ".", "@"):
        labels = text.encode("ascii").split(b".")
        if labels[-1]:
            labels.append(b"")
        return dns.name.Name(labels)
    return dns.name.from_text(text)


async def query_txt(resolver: DnsResolver, name: str) -> TxtAnswer:
    """Query the TXT records of ``name`` (an absolute A-label name, no trailing dot needed). Never raises.

    CNAMEs are followed (§3.1 "senders MUST follow the CNAME pointers"); multi-string records are joined
    without separators (§3.1 MUST) — not with dnspython's ``to_text()``, which quotes each string.
    """
    try:
        qname = _qname(name)
        answer = await resolver.resolve(qname, dns.rdatatype.TXT, search=False, raise_on_no_answer=False)
    except dns.resolver.NXDOMAIN:
        return TxtAnswer(TxtStatus.NXDOMAIN)
    except LocalError as exc:
        return TxtAnswer(TxtStatus.LOCAL_ERROR, error=exc.message)
    except DNS_FAILURES as exc:
        local = local_os_error(exc)
        if local is not None:
            return TxtAnswer(TxtStatus.LOCAL_ERROR, error=describe_local_error(local))
        return TxtAnswer(TxtStatus.ERROR, error=describe_failure(exc, resolver, name, "TXT"))
    if answer.rrset is None:
        return TxtAnswer(TxtStatus.NODATA)
    return TxtAnswer(TxtStatus.FOUND, tuple(b"".join(rdata.strings) for rdata in answer.rrset))


async def resolve_addresses(resolver: DnsResolver, host: str) -> list[str]:
    """The IPv4 addresses of ``host``, else its IPv6 addresses; raise :class:`HostLookupError` if none.

    A first, AAAA only when there is no A: one address query per policy host in the common case.
    """
    qname = _qname(host)
    problems: list[str] = []
    for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
        try:
            answer = await resolver.resolve(qname, rdtype, search=False, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            raise HostLookupError(f"{host}: no such host (NXDOMAIN)") from None
        except DNS_FAILURES as exc:
            local = local_os_error(exc)
            if local is not None:
                raise LocalError(f"{host}: {describe_local_error(local)}") from None
            problems.append(describe_failure(exc, resolver, host, dns.rdatatype.to_text(rdtype)))
            continue
        if answer.rrset is not None:
            return [rdata.address for rdata in answer.rrset]
    detail = "; ".join(problems) if problems else "no A or AAAA record"
    raise HostLookupError(f"{host}: cannot resolve ({detail})")


@dataclass(frozen=True, slots=True)
class MxHosts:
    """A domain's MX hosts in the order to try them, whether the answer was DNSSEC-validated (the AD bit of a
    query that asked for it, RFC 6840 §5.7), and its TTL."""

    hosts: list[str]
    secure: bool = False
    ttl: float = 300.0


async def find_mx_hosts(resolver: DnsResolver, domain: str, *, rng: random.Random | None = None) -> list[str]:
    """The MX host names of ``domain`` in the order to try them (RFC 5321 §5.1, RFC 7505): :func:`find_mx`."""
    return (await find_mx(resolver, domain, rng=rng)).hosts


async def find_mx(resolver: DnsResolver, domain: str, *, rng: random.Random | None = None) -> MxHosts:
    """The MX host names of ``domain`` in the order to try them (RFC 5321 §5.1, RFC 7505), with the answer's AD.

    Lowest preference first, ties shuffled; the domain itself when it has no MX but has an address (implicit MX).
    Raises ``MTASTSError`` subclasses for a null MX / NXDOMAIN (permanent) and DNS failures (transient).
    """
    rng = rng or random.Random()
    qname = _qname(domain)
    try:
        answer = await resolver.resolve(qname, dns.rdatatype.MX, search=False, raise_on_no_answer=False)
    except dns.resolver.NXDOMAIN:
        raise MXPermanentFailure(f"{domain}: no such domain (NXDOMAIN)") from None
    except LocalError as exc:
        raise MXTransientFailure(f"{domain}: MX lookup failed here ({exc.message})") from None
    except DNS_FAILURES as exc:
        raise MXTransientFailure(
            f"{domain}: MX lookup failed ({describe_failure(exc, resolver, domain, 'MX')})"
        ) from None
    secure = bool(answer.response.flags & dns.flags.AD)
    if answer.rrset is None:  # RFC 5321 §5.1: no MX records -> the domain is its own MX, if it has an address
        try:
            await resolve_addresses(resolver, domain)
        except LocalError as exc:
            raise MXTransientFailure(f"{domain}: address lookup failed here ({exc.message})") from None
        except HostLookupError as exc:
            raise MXPermanentFailure(f"{domain}: no MX and no address ({exc.message})") from None
        return MxHosts([domain], secure)
    records = [(rdata.preference, rdata.exchange) for rdata in answer.rrset]
    if any(exchange == dns.name.root for _, exchange in records):
        raise MXPermanentFailure(f"{domain}: null MX (RFC 7505): the domain accepts no mail")
    by_preference: dict[int, list[str]] = {}
    for preference, exchange in records:
        host = exchange.to_text(omit_final_dot=True).lower()
        by_preference.setdefault(preference, []).append(host)
    ordered: list[str] = []
    for preference in sorted(by_preference):
        hosts = by_preference[preference]
        rng.shuffle(hosts)
        ordered.extend(hosts)
    return MxHosts(ordered, secure, float(answer.rrset.ttl))
