"""The world's DNS server: one authoritative-and-recursive-looking zone over UDP and TCP (RFC 1035 §4.2).

Answers are built from the published domains (``_mta-sts.<domain>`` TXT, RFC 8461 §3.1; ``mta-sts.<domain>``
A/AAAA) and the extra records, following CNAME chains inside the world as a recursive resolver would
(RFC 1034 §4.3.2). UDP answers over 512 bytes (or the client's EDNS payload size, RFC 6891 §6.2.3) are
truncated with TC so the client retries over TCP (RFC 7766 §5).

Names under a zone marked signed (:meth:`Zone.is_signed`) are answered with the AD bit set when the query sets
AD or DO, as a validating resolver does (RFC 6840 §5.7; RFC 4035 §3.2.3): the world stands in for the local
validating resolver whose AD bit an MTA trusts (RFC 7672 §2.1). No RRSIG is served — a real validator is
exercised by the test suite's own unbound harness.

On request a name is answered the way a hostile server would (``HOSTILE_KINDS``): the true answer under a
wrong message id or for another question (RFC 5452 §9.1: a client must drop such responses), or a CNAME loop
inside the answer (RFC 1034 §3.6.2).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import Callable
from typing import Literal, cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.CNAME
import dns.rdtypes.ANY.TXT
import dns.rrset

from ._config import DomainConfig, name_key

__all__ = ["DnsServer", "Zone", "txt_rdata"]

TTL = 300
MAX_CNAME_CHAIN = 8
_UDP_LIMIT = 512  # RFC 1035 §4.2.1, without EDNS
_TCP_LIMIT = 65535
_RECEIVE_BUFFER = 4 * 1024 * 1024  # many clients in one burst must not overflow the UDP socket

Transport = Literal["udp", "tcp"]
Records = dict[dns.rdatatype.RdataType, list[tuple[int, dns.rdata.Rdata]]]


def txt_rdata(value: str | list[str]) -> dns.rdata.Rdata:
    """A TXT rdata: a str is one text, split into 255-byte character-strings; a list gives them exactly."""
    if isinstance(value, str):
        data = value.encode("utf-8")
        strings = [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]
    else:
        strings = [part.encode("utf-8") for part in value]
    return dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT, strings)


def _address_rdata(address: str) -> tuple[dns.rdatatype.RdataType, dns.rdata.Rdata]:
    rdtype = dns.rdatatype.AAAA if ipaddress.ip_address(address).version == 6 else dns.rdatatype.A
    return rdtype, dns.rdata.from_text(dns.rdataclass.IN, rdtype, address)


class Zone:
    """Every name the world knows, and the answer to a query for it."""

    def __init__(
        self,
        domains: dict[str, DomainConfig],
        on_query: Callable[[str, str, Transport], None],
        on_error: Callable[[BaseException], None],
    ) -> None:
        self.domains = domains
        self.records: dict[str, Records] = {}
        self.failures: dict[str, str] = {}
        #: Zones (lowercase, no trailing dot) whose answers are "validated": AD set when asked for.
        self.signed: set[str] = set()
        self._on_query = on_query
        self._on_error = on_error

    def _node(self, key: str) -> tuple[str | None, Records, bool]:
        """(failure, records, exists) for one name: set_failure, then the domain's own, then the records."""
        failure = self.failures.get(key)
        records: Records = {}
        exists = key in self.domains
        if key.startswith("_mta-sts."):
            config = self.domains.get(key[len("_mta-sts.") :])
            if config is not None:
                exists = True
                failure = failure or config.txt_failure
                if config.txt_cname is not None:
                    cname = dns.rdata.from_text(
                        dns.rdataclass.IN,
                        dns.rdatatype.CNAME,
                        name_key(config.txt_cname),
                        dns.name.root,
                        relativize=False,
                    )
                    records[dns.rdatatype.CNAME] = [(TTL, cname)]
                else:
                    texts = config.txt_records()
                    if texts:
                        records[dns.rdatatype.TXT] = [(TTL, txt_rdata(text)) for text in texts]
        elif key.startswith("mta-sts."):
            config = self.domains.get(key[len("mta-sts.") :])
            if config is not None:
                failure = failure or config.policy_host_failure
                for address in config.policy_host_addresses:
                    rdtype, rdata = _address_rdata(address)
                    records.setdefault(rdtype, []).append((TTL, rdata))
                    exists = True
        extra = self.records.get(key)
        if extra:
            exists = True
            for rdtype, rdatas in extra.items():
                records.setdefault(rdtype, []).extend(rdatas)
        return failure, records, exists

    def is_signed(self, name: dns.name.Name) -> bool:
        """Whether ``name`` is at or below a zone marked signed."""
        if not self.signed:
            return False
        key = name_key(name.to_text(omit_final_dot=True))
        while True:
            if key in self.signed:
                return True
            if "." not in key:
                return False
            key = key.partition(".")[2]

    def resolve(
        self, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType
    ) -> tuple[dns.rcode.Rcode, list[dns.rrset.RRset]] | None:
        """(rcode, answer section) for a query, or None when the query must go unanswered ("timeout")."""
        answer: list[dns.rrset.RRset] = []
        name = qname
        for _ in range(MAX_CNAME_CHAIN + 1):
            failure, records, exists = self._node(name_key(name.to_text(omit_final_dot=True)))
            if failure == "timeout":
                return None
            if failure == "cname-loop":
                return dns.rcode.NOERROR, answer + _cname_loop(name)
            if failure in ("servfail", "refused"):
                return (dns.rcode.SERVFAIL if failure == "servfail" else dns.rcode.REFUSED), []
            if failure in ("nxdomain", "nodata"):
                return (dns.rcode.NXDOMAIN if failure == "nxdomain" else dns.rcode.NOERROR), answer
            wanted = list(records) if rdtype == dns.rdatatype.ANY else [rdtype]
            found = [_rrset(name, t, records[t]) for t in wanted if t in records]
            if found:
                return dns.rcode.NOERROR, answer + found
            cnames = records.get(dns.rdatatype.CNAME)
            if not cnames or rdtype == dns.rdatatype.CNAME:
                return (dns.rcode.NOERROR if exists else dns.rcode.NXDOMAIN), answer
            answer.append(_rrset(name, dns.rdatatype.CNAME, cnames[:1]))
            target = cnames[0][1]
            assert isinstance(target, dns.rdtypes.ANY.CNAME.CNAME)
            name = target.target
        return dns.rcode.SERVFAIL, []  # a CNAME chain longer than MAX_CNAME_CHAIN, or a loop

    def respond(self, wire: bytes, transport: Transport) -> bytes | None:
        """The response to one query message, or None (malformed query, or a "timeout" name)."""
        try:
            query = dns.message.from_wire(wire)
        except Exception:  # malformed: ignored, as a resolver would
            return None
        if query.flags & dns.flags.QR or len(query.question) != 1:
            return None
        question = query.question[0]
        try:
            self._on_query(
                name_key(question.name.to_text(omit_final_dot=True)), dns.rdatatype.to_text(question.rdtype), transport
            )
            response = dns.message.make_response(query, recursion_available=True)
            response.flags |= dns.flags.AA
            if query.opcode() != dns.opcode.QUERY:
                response.set_rcode(dns.rcode.NOTIMP)
            elif question.rdclass != dns.rdataclass.IN:
                response.set_rcode(dns.rcode.REFUSED)
            else:
                result = self.resolve(question.name, question.rdtype)
                if result is None:
                    return None
                response.set_rcode(result[0])
                response.answer = result[1]
                asked_for_ad = bool(query.flags & dns.flags.AD) or bool(query.ednsflags & dns.flags.DO)
                if (
                    asked_for_ad
                    and result[0] in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN)
                    and self.is_signed(question.name)
                    and all(self.is_signed(rrset.name) for rrset in result[1])
                ):
                    response.flags |= dns.flags.AD  # RFC 6840 §5.7: only to a query that asked (AD or DO)
                spoof = self._node(name_key(question.name.to_text(omit_final_dot=True)))[0]
                if spoof == "wrong-id":
                    response.id = (query.id + 1) & 0xFFFF
                elif spoof == "wrong-question":
                    response.question = [_other_question(question.name, question.rdtype)]
            limit = _TCP_LIMIT if transport == "tcp" else max(_UDP_LIMIT, query.payload if query.edns >= 0 else 0)
            try:
                return response.to_wire(max_size=limit)
            except dns.exception.TooBig:
                response.answer, response.authority, response.additional = [], [], []
                response.flags |= dns.flags.TC
                return response.to_wire()
        except Exception as exc:  # a bad record in the world: report it, answer SERVFAIL
            self._on_error(exc)
            error_response = dns.message.make_response(query)
            error_response.set_rcode(dns.rcode.SERVFAIL)
            return error_response.to_wire()


def _cname_loop(name: dns.name.Name) -> list[dns.rrset.RRset]:
    """``name`` CNAME ``loop.name``, ``loop.name`` CNAME ``name`` (a self-loop when the longer name cannot exist)."""
    try:
        other = dns.name.Name((b"loop", *name.labels))
    except dns.name.NameTooLong:
        other = name
    loop = [_rrset(name, dns.rdatatype.CNAME, [(TTL, _cname_rdata(other))])]
    if other != name:
        loop.append(_rrset(other, dns.rdatatype.CNAME, [(TTL, _cname_rdata(name))]))
    return loop


def _cname_rdata(target: dns.name.Name) -> dns.rdata.Rdata:
    return dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.CNAME, target.to_text())


def _other_question(name: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> dns.rrset.RRset:
    """A question section naming ``spoofed.invalid.`` instead of ``name`` (RFC 6761 §6.4: never a real name)."""
    other = dns.name.from_text("spoofed.invalid.")
    return dns.rrset.RRset(other if other != name else dns.name.from_text("other.invalid."), dns.rdataclass.IN, rdtype)


def _rrset(
    name: dns.name.Name, rdtype: dns.rdatatype.RdataType, rdatas: list[tuple[int, dns.rdata.Rdata]]
) -> dns.rrset.RRset:
    rrset = dns.rrset.RRset(name, dns.rdataclass.IN, rdtype)
    for ttl, rdata in rdatas:
        rrset.add(rdata, ttl)
    return rrset


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, zone: Zone) -> None:
        self._zone = zone
        self._transport: asyncio.DatagramTransport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)  # 3.11's selector transport lacks the base

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        response = self._zone.respond(data, "udp")
        if response is not None and self._transport is not None:
            self._transport.sendto(response, addr)

    def error_received(self, exc: Exception) -> None:
        pass  # e.g. ICMP port unreachable: the client gave up

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class _TcpProtocol(asyncio.Protocol):
    """DNS over TCP: 2-byte length prefixes, any number of queries per connection (RFC 7766 §6.2)."""

    def __init__(self, server: DnsServer) -> None:
        self._server = server
        self._buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._server.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= 2:
            size = int.from_bytes(self._buffer[:2], "big")
            if len(self._buffer) < 2 + size:
                break
            wire = bytes(self._buffer[2 : 2 + size])
            del self._buffer[: 2 + size]
            response = self._server.zone.respond(wire, "tcp")
            if response is not None and self.transport is not None and not self.transport.is_closing():
                self.transport.write(len(response).to_bytes(2, "big") + response)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        if not self.closed.done():
            self.closed.set_result(None)


class DnsServer:
    """UDP and TCP listeners on one port of ``host``."""

    def __init__(self, zone: Zone) -> None:
        self.zone = zone
        self.connections: set[_TcpProtocol] = set()
        self._udp: _UdpProtocol | None = None
        self._udp_transport: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None

    async def start(self, host: str, port: int = 0) -> int:
        """Listen on ``host`` (UDP and TCP, the same port: ``port``, or a free one when 0); return the port."""
        loop = asyncio.get_running_loop()
        udp, tcp, port = _bind_pair(host, port)
        try:
            self._udp = _UdpProtocol(self.zone)
            udp_protocol = self._udp
            self._udp_transport, _ = await loop.create_datagram_endpoint(lambda: udp_protocol, sock=udp)
        except BaseException:
            udp.close()
            tcp.close()
            raise
        try:
            self._tcp = await loop.create_server(lambda: _TcpProtocol(self), sock=tcp, backlog=1024)
        except BaseException:
            tcp.close()
            raise
        return port

    async def close(self) -> None:
        """Stop listening, close every open connection, and wait until the sockets are closed."""
        waits: list[asyncio.Future[None]] = []
        if self._tcp is not None:
            self._tcp.close()
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.abort()
            waits.append(connection.closed)
        if self._udp_transport is not None and self._udp is not None:
            self._udp_transport.close()
            waits.append(self._udp.closed)
        if waits:
            await asyncio.wait(waits, timeout=5)
        if self._tcp is not None:
            await self._tcp.wait_closed()
        self._tcp = self._udp_transport = self._udp = None


def _bind_pair(host: str, wanted: int = 0) -> tuple[socket.socket, socket.socket, int]:
    """A UDP and a TCP socket bound to the same port of ``host``: ``wanted``, or a free one when 0."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(1 if wanted else 50):
        udp = socket.socket(family, socket.SOCK_DGRAM)
        with contextlib.suppress(OSError):
            udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECEIVE_BUFFER)
        try:
            udp.bind((host, wanted))
        except BaseException:
            udp.close()
            raise
        port: int = udp.getsockname()[1]
        tcp = socket.socket(family, socket.SOCK_STREAM)
        try:
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind((host, port))
        except OSError:
            udp.close()
            tcp.close()
            if wanted:
                raise
            continue
        except BaseException:
            udp.close()
            tcp.close()
            raise
        udp.setblocking(False)
        tcp.setblocking(False)
        return udp, tcp, port
    raise OSError(f"no free port for both UDP and TCP on {host}")
