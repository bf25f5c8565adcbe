"""A real validating resolver for the tests: Debian's ``unbound``, validating loopback zones signed here.

::

    zones = standard_zones(cert_pem=leaf.cert_chain_pems[0].bytes())
    async with signed_dns(zones) as world:
        answer = await world.resolver().resolve("mx.signed.test.", "A")
        assert answer.response.flags & dns.flags.AD
        message = await world.query("nope.signed.test.", "A")   # a dns.message.Message, any rcode

Pieces:

- :class:`Zone` — a zone to serve, built before the start with :meth:`Zone.add` (and :meth:`Zone.add_tlsa` for
  a certificate). ``Zone(origin)`` is signed with one ECDSAP256SHA256 key (a CSK, flags 257) whose DS is
  unbound's trust anchor; ``signed=False`` is unsigned (unbound gets ``domain-insecure`` for it);
  ``wrong_anchor=True`` is signed, but unbound trusts the DS of another key, so every answer is bogus; and
  ``add(..., bad_signature=True)`` serves that one RRset with a corrupted RRSIG inside an otherwise good zone.
  Signing is :func:`dns.dnssec.sign_zone` (NSEC chain, RRSIGs valid from an hour ago for a week).
- :func:`standard_zones` — ``signed.test.`` (:data:`SIGNED`), ``plain.test.`` (:data:`PLAIN`) and
  ``bogus.test.`` (:data:`BOGUS`, a wrong anchor), each with ``@ MX 10 mx``, ``mx A 127.0.0.1``,
  ``_25._tcp.mx TLSA 3 1 1 …`` and ``_mta-sts TXT``.
- :func:`tlsa_3_1_1` — the ``3 1 1`` TLSA data of a PEM certificate (SHA-256 of its DER SubjectPublicKeyInfo,
  RFC 7671 §5.1, the form RFC 7672 §3.1.1 recommends for SMTP).
- :class:`AuthServer` — the zones' authoritative server (UDP and TCP on one free port, RFC 1035 §4.2): RRSIGs
  only when the query sets DO (RFC 4035 §3.1.1), NSEC proofs for NXDOMAIN, NODATA and empty non-terminals
  (RFC 4035 §3.1.3), UDP answers over the client's EDNS payload (or 512) truncated with TC (RFC 7766 §5).
  No wildcards, no delegations. :attr:`AuthServer.queries` records every question it got.
- :func:`signed_dns` — the async context manager that starts both: the server, then an ``unbound`` of the
  test's own (config, pid and log files in a temporary directory, every zone a ``stub-zone`` pointing at the
  server, no root hints or internet needed, no control socket), waits until it answers, and stops it by its
  pid on exit (SIGTERM, then SIGKILL). It yields a :class:`SignedDNS`: ``unbound_host``, ``unbound_port``,
  ``resolver(do=True, ad=False)`` (a :class:`dns.asyncresolver.Resolver` on unbound; RFC 6840 §5.7: a
  validating resolver sets AD only when the query sets DO or AD), ``query(qname, rdtype, do=, ad=, cd=, tcp=)``
  (one raw message, whatever its rcode) and ``log()`` (unbound's log, for assertion messages).

Only a missing ``unbound`` binary skips (``./run tests`` installs it); ``MTASTS_UNBOUND`` names another one.
Nothing here touches the machine's ``/etc/resolv.conf`` or a system unbound.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import cast

import dns.asyncquery
import dns.asyncresolver
import dns.dnssec
import dns.dnssectypes
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rdtypes.ANY.DNSKEY
import dns.zone
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ._process import stop_process

__all__ = [
    "BOGUS",
    "PLAIN",
    "SIGNED",
    "AuthServer",
    "SignedDNS",
    "Zone",
    "answer",
    "signed_dns",
    "standard_zones",
    "tlsa_3_1_1",
    "unbound_binary",
]

SIGNED = "signed.test."
PLAIN = "plain.test."
BOGUS = "bogus.test."

TTL = 300
PAYLOAD = 1232  # the EDNS payload both sides advertise (the DNS flag day 2020 value)
HOST = "127.0.0.1"

_ALGORITHM = dns.dnssectypes.Algorithm.ECDSAP256SHA256
_CSK_FLAGS = 257  # ZONE | SEP: one key signs everything (RFC 4034 §2.1.1)
_MAX_CNAME_CHAIN = 8
_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 5.0
_PORT_TRIES = 20
_START_TRIES = 3
_TCP_IDLE = 10.0
_TCP_MESSAGES = 64  # per connection; then the server closes it


def tlsa_3_1_1(cert_pem: bytes | str) -> str:
    """The ``3 1 1`` TLSA rdata (DANE-EE, SPKI, SHA-256) of a PEM certificate, as zone-file text."""
    data = cert_pem.encode("ascii") if isinstance(cert_pem, str) else cert_pem
    cert = x509.load_pem_x509_certificate(data)
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return "3 1 1 " + hashlib.sha256(spki).hexdigest()


def _new_key() -> tuple[ec.EllipticCurvePrivateKey, dns.rdtypes.ANY.DNSKEY.DNSKEY]:
    private = ec.generate_private_key(ec.SECP256R1())
    return private, dns.dnssec.make_dnskey(private.public_key(), _ALGORITHM, flags=_CSK_FLAGS)


class Zone:
    """One zone to serve: records are added before :func:`signed_dns` starts, then it is signed and frozen."""

    def __init__(self, origin: str, *, signed: bool = True, wrong_anchor: bool = False, ttl: int = TTL) -> None:
        if wrong_anchor and not signed:
            raise ValueError("wrong_anchor needs a signed zone")
        self.origin = dns.name.from_text(origin)
        self.signed = signed
        self.wrong_anchor = wrong_anchor
        self.ttl = ttl
        self._records: list[tuple[dns.name.Name, int, dns.rdata.Rdata]] = []
        self._bad: set[tuple[dns.name.Name, dns.rdatatype.RdataType]] = set()
        self._zone: dns.zone.Zone | None = None
        self.anchor: str | None = None  # unbound's trust-anchor line, once built

    def name(self, name: str) -> dns.name.Name:
        """``name`` relative to the origin (``"@"`` is the apex; a name ending in a dot is absolute)."""
        return dns.name.from_text(name, self.origin)

    def add(self, name: str, rdtype: str, *rdatas: str, ttl: int | None = None, bad_signature: bool = False) -> Zone:
        """Add records (zone-file text, names relative to the origin); ``bad_signature`` corrupts its RRSIG."""
        if self._zone is not None:
            raise RuntimeError(f"{self.origin} is already signed and served: add records before the start")
        owner = self.name(name)
        if not owner.is_subdomain(self.origin):
            raise ValueError(f"{owner} is not in {self.origin}")
        kind = dns.rdatatype.from_text(rdtype)
        for text in rdatas:
            rdata = dns.rdata.from_text(dns.rdataclass.IN, kind, text, origin=self.origin, relativize=False)
            self._records.append((owner, self.ttl if ttl is None else ttl, rdata))
        if bad_signature:
            self._bad.add((owner, kind))
        return self

    def add_tlsa(self, name: str, cert_pem: bytes | str, *, port: int = 25, bad_signature: bool = False) -> Zone:
        """``_<port>._tcp.<name> TLSA 3 1 1`` for the certificate (``name`` relative to the origin)."""
        return self.add(f"_{port}._tcp.{name}", "TLSA", tlsa_3_1_1(cert_pem), bad_signature=bad_signature)

    def build(self, now: float | None = None) -> dns.zone.Zone:
        """Sign (if signed) and freeze the zone; the result is also :attr:`zone`. Called by :func:`signed_dns`."""
        if self._zone is not None:
            return self._zone
        now = time.time() if now is None else now
        zone = dns.zone.Zone(self.origin, relativize=False)
        apex = self.origin
        with zone.writer() as txn:
            soa = f"ns.{apex} hostmaster.{apex} 1 3600 600 86400 {self.ttl}"
            txn.add(apex, self.ttl, dns.rdata.from_text("IN", "SOA", soa))
            txn.add(apex, self.ttl, dns.rdata.from_text("IN", "NS", f"ns.{apex}"))
            txn.add(self.name("ns"), self.ttl, dns.rdata.from_text("IN", "A", HOST))
            for owner, ttl, rdata in self._records:
                txn.add(owner, ttl, rdata)
        if self.signed:
            private, dnskey = _new_key()
            anchor_key = _new_key()[1] if self.wrong_anchor else dnskey
            dns.dnssec.sign_zone(zone, keys=[(private, dnskey)], inception=now - 3600, lifetime=7 * 86400)
            ds = dns.dnssec.make_ds(apex, anchor_key, "SHA256")
            self.anchor = f"{apex} DS {ds.to_text()}"
            self._corrupt(zone)
        self._zone = zone
        return zone

    @property
    def zone(self) -> dns.zone.Zone:
        if self._zone is None:
            raise RuntimeError(f"{self.origin} is not built yet")
        return self._zone

    def _corrupt(self, zone: dns.zone.Zone) -> None:
        with zone.writer() as txn:
            for owner, kind in sorted(self._bad):
                rrsigs = txn.get(owner, dns.rdatatype.RRSIG, kind)
                if rrsigs is None:
                    raise ValueError(f"no RRSIG for {owner} {kind.name} to corrupt")
                broken = [rr.replace(signature=bytes([rr.signature[0] ^ 0xFF]) + rr.signature[1:]) for rr in rrsigs]
                txn.replace(owner, dns.rdataset.from_rdata_list(rrsigs.ttl, broken))


def standard_zones(cert_pem: bytes | str | None = None) -> list[Zone]:
    """``signed.test.``, ``plain.test.`` and ``bogus.test.`` with the same records (see the module docstring).

    The TLSA record is for ``cert_pem`` when given, else a digest that matches no key."""
    tlsa = tlsa_3_1_1(cert_pem) if cert_pem is not None else "3 1 1 " + hashlib.sha256(b"no key").hexdigest()
    zones = [Zone(SIGNED), Zone(PLAIN, signed=False), Zone(BOGUS, wrong_anchor=True)]
    for zone in zones:
        zone.add("@", "MX", "10 mx")
        zone.add("mx", "A", "127.0.0.1")
        zone.add("_25._tcp.mx", "TLSA", tlsa)
        zone.add("_mta-sts", "TXT", '"v=STSv1; id=20240101T000000"')
    return zones


# -- the authoritative side: a pure answer function and its UDP/TCP server -----------------------------------------


def answer(zones: Sequence[Zone], query: dns.message.Message) -> dns.message.Message:
    """The authoritative answer of the (built) ``zones`` to ``query``."""
    response = dns.message.make_response(query, our_payload=PAYLOAD)
    if query.opcode() != dns.opcode.QUERY:
        response.set_rcode(dns.rcode.NOTIMP)
        return response
    if len(query.question) != 1:
        response.set_rcode(dns.rcode.FORMERR)
        return response
    question = query.question[0]
    served = [z for z in zones if question.name.is_subdomain(z.origin)]
    if question.rdclass != dns.rdataclass.IN or not served:
        response.set_rcode(dns.rcode.REFUSED)
        return response
    zone = max(served, key=lambda z: len(z.origin))
    do = query.edns >= 0 and bool(query.ednsflags & dns.flags.DO)
    if do:
        response.want_dnssec(True)
    response.flags |= dns.flags.AA
    _Lookup(zone.zone, response, do).run(question.name, question.rdtype)
    return response


class _Lookup:
    """One question against one zone (RFC 1034 §4.3.2 without delegations or wildcards; RFC 4035 §3.1)."""

    def __init__(self, zone: dns.zone.Zone, response: dns.message.Message, do: bool) -> None:
        self.zone = zone
        self.response = response
        self.do = do
        assert zone.origin is not None
        self.origin: dns.name.Name = zone.origin

    def run(self, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> None:
        for _ in range(_MAX_CNAME_CHAIN):
            node = self.zone.get_node(qname)
            if node is None:
                self._negative(qname)
                return
            found = node.get_rdataset(dns.rdataclass.IN, rdtype)
            if found is not None:
                self._add(self.response.answer, qname, found)
                return
            cname = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.CNAME)
            if cname is None or rdtype == dns.rdatatype.CNAME:
                self._nodata(qname)
                return
            self._add(self.response.answer, qname, cname)
            target: dns.name.Name = cname[0].target
            if not target.is_subdomain(self.origin):
                return  # the resolver follows it elsewhere
            qname = target

    def _add(self, section: list[dns.rrset.RRset], name: dns.name.Name, rdataset: dns.rdataset.Rdataset) -> None:
        rrset = self.response.find_rrset(section, name, rdataset.rdclass, rdataset.rdtype, rdataset.covers, create=True)
        rrset.update(rdataset)  # type: ignore[no-untyped-call]
        if self.do:
            rrsig = self.zone.get_rdataset(name, dns.rdatatype.RRSIG, rdataset.rdtype)
            if rrsig is not None:
                sig = self.response.find_rrset(section, name, rrsig.rdclass, rrsig.rdtype, rrsig.covers, create=True)
                sig.update(rrsig)  # type: ignore[no-untyped-call]

    def _soa(self) -> None:
        soa = self.zone.get_rdataset(self.origin, dns.rdatatype.SOA)
        assert soa is not None
        self._add(self.response.authority, self.origin, soa)

    def _nsec_at(self, name: dns.name.Name) -> None:
        nsec = self.zone.get_rdataset(name, dns.rdatatype.NSEC)
        if self.do and nsec is not None:
            self._add(self.response.authority, name, nsec)

    def _covering(self, name: dns.name.Name) -> None:
        """The NSEC whose owner sorts before ``name`` and whose next name after it (RFC 4034 §6.1 order)."""
        if not self.do:
            return
        for owner, node in self.zone.nodes.items():
            nsec = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.NSEC)
            if nsec is None:
                continue
            following: dns.name.Name = nsec[0].next
            if owner < name and (name < following or following == self.origin):
                if self.response.get_rrset(self.response.authority, owner, nsec.rdclass, nsec.rdtype) is None:
                    self._add(self.response.authority, owner, nsec)
                return

    def _nodata(self, qname: dns.name.Name) -> None:
        self._soa()
        self._nsec_at(qname)

    def _negative(self, qname: dns.name.Name) -> None:
        self._soa()
        names = list(self.zone.nodes)
        if any(n != qname and n.is_subdomain(qname) for n in names):
            self._covering(qname)  # an empty non-terminal: NODATA, the covering NSEC shows it
            return
        self.response.set_rcode(dns.rcode.NXDOMAIN)
        encloser = qname.parent()
        while encloser != self.origin and not any(n.is_subdomain(encloser) for n in names):
            encloser = encloser.parent()
        self._covering(qname)
        self._covering(dns.name.Name(("*", *encloser.labels)))  # no wildcard could have answered


class AuthServer:
    """The zones' authoritative server on ``host``: UDP and TCP on one free port."""

    def __init__(self, zones: Sequence[Zone], host: str = HOST) -> None:
        self.zones = list(zones)
        self.host = host
        self.port = 0
        self.queries: list[tuple[str, str, bool, str]] = []  # (qname, qtype, DO, "udp" | "tcp")
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    def handle(self, wire: bytes, transport: str) -> bytes | None:
        """The wire answer to one wire query (``None``: dropped, not a query we can answer)."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        if query.flags & dns.flags.QR:
            return None
        if query.question:
            q = query.question[0]
            do = query.edns >= 0 and bool(query.ednsflags & dns.flags.DO)
            self.queries.append((q.name.to_text(), dns.rdatatype.to_text(q.rdtype), do, transport))
        response = answer(self.zones, query)
        udp_limit = max(512, min(query.payload, PAYLOAD)) if query.edns >= 0 else 512  # RFC 6891 §6.2.5
        limit = 65535 if transport == "tcp" else udp_limit
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            truncated = dns.message.make_response(query, our_payload=PAYLOAD)
            truncated.flags |= dns.flags.TC | dns.flags.AA
            return truncated.to_wire()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(_PORT_TRIES):
            udp, _protocol = await loop.create_datagram_endpoint(lambda: _UdpProtocol(self), local_addr=(self.host, 0))
            port: int = udp.get_extra_info("sockname")[1]
            try:
                self._tcp = await asyncio.start_server(self._serve_tcp, self.host, port)
            except OSError:
                udp.close()
                continue
            self._udp, self.port = udp, port
            return
        raise RuntimeError(f"no free UDP+TCP port on {self.host} after {_PORT_TRIES} tries")

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            await self._tcp.wait_closed()
            self._tcp = None

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            for _ in range(_TCP_MESSAGES):
                length = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), _TCP_IDLE), "big")
                wire = await asyncio.wait_for(reader.readexactly(length), _TCP_IDLE)
                reply = self.handle(wire, "tcp")
                if reply is None:
                    return
                writer.write(len(reply).to_bytes(2, "big") + reply)
                await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            return
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: AuthServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = self.server.handle(data, "udp")
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


# -- the resolver side: unbound of the test's own ------------------------------------------------------------------


def unbound_binary() -> str | None:
    """``$MTASTS_UNBOUND``, else ``unbound`` on the PATH or in /usr/sbin (not on every user's PATH)."""
    candidate = os.environ.get("MTASTS_UNBOUND") or shutil.which("unbound")
    if candidate:
        return candidate
    return "/usr/sbin/unbound" if os.access("/usr/sbin/unbound", os.X_OK) else None


def _free_port(host: str) -> int:
    """A port free for both UDP and TCP on ``host`` right now (unbound binds it a moment later)."""
    for _ in range(_PORT_TRIES):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port: int = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return port
    raise RuntimeError(f"no free UDP+TCP port on {host} after {_PORT_TRIES} tries")


def _config(directory: Path, host: str, port: int, auth: AuthServer) -> str:
    lines = [
        "server:",
        "    verbosity: 1",
        "    val-log-level: 2",  # why an answer is bogus, in the log
        "    log-servfail: yes",
        f"    interface: {host}",
        f"    port: {port}",
        "    do-ip4: yes",
        "    do-ip6: no",
        "    do-udp: yes",
        "    do-tcp: yes",
        "    num-threads: 1",
        "    so-reuseport: no",
        "    outgoing-range: 64",
        "    do-daemonize: no",
        '    username: ""',
        '    chroot: ""',
        f'    directory: "{directory}"',
        f'    pidfile: "{directory / "unbound.pid"}"',
        "    use-syslog: no",
        f'    logfile: "{directory / "unbound.log"}"',
        "    access-control: 127.0.0.0/8 allow",
        "    do-not-query-localhost: no",  # the authoritative server is on loopback
        '    module-config: "validator iterator"',
        "    val-permissive-mode: no",
        "    harden-dnssec-stripped: yes",
        "    trust-anchor-signaling: no",
        "    root-key-sentinel: no",
        "    prefetch: no",
        f"    edns-buffer-size: {PAYLOAD}",
        '    local-zone: "test." nodefault',  # else unbound answers every .test name itself (RFC 6761 §6.2)
    ]
    for zone in auth.zones:
        if zone.anchor is not None:
            lines.append(f'    trust-anchor: "{zone.anchor}"')
        else:
            lines.append(f'    domain-insecure: "{zone.origin}"')
    lines += ["remote-control:", "    control-enable: no"]
    for zone in auth.zones:
        lines += [
            "stub-zone:",
            f'    name: "{zone.origin}"',
            f"    stub-addr: {auth.host}@{auth.port}",
            "    stub-prime: no",
        ]
    return "\n".join(lines) + "\n"


class SignedDNS:
    """What :func:`signed_dns` yields: the authoritative server and the unbound validating its zones."""

    def __init__(self, auth: AuthServer, directory: Path, host: str) -> None:
        self.auth = auth
        self.zones = {z.origin.to_text(): z for z in auth.zones}
        self.directory = directory
        self.unbound_host = host
        self.unbound_port = 0
        self.pid: int | None = None
        self._process: asyncio.subprocess.Process | None = None

    def resolver(self, *, do: bool = True, ad: bool = False, lifetime: float = 5.0) -> dns.asyncresolver.Resolver:
        """A resolver on unbound; ``do`` asks for DNSSEC records (EDNS DO), ``ad`` sets AD in queries."""
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [self.unbound_host]
        resolver.port = self.unbound_port
        resolver.lifetime = lifetime
        resolver.timeout = lifetime
        resolver.flags = dns.flags.RD | (dns.flags.AD if ad else 0)
        if do:
            resolver.use_edns(0, dns.flags.DO, PAYLOAD)
        return resolver

    async def query(
        self,
        qname: str,
        rdtype: str = "A",
        *,
        do: bool = True,
        ad: bool = False,
        cd: bool = False,
        tcp: bool = False,
        timeout: float = 5.0,
    ) -> dns.message.Message:
        """One query to unbound, its response as it came (any rcode); ``do=False`` sends no EDNS at all."""
        query = dns.message.make_query(qname, rdtype, want_dnssec=do, payload=PAYLOAD)
        query.flags |= (dns.flags.AD if ad else 0) | (dns.flags.CD if cd else 0)
        if tcp:
            return await dns.asyncquery.tcp(query, self.unbound_host, timeout, self.unbound_port)
        response, _ = await dns.asyncquery.udp_with_fallback(query, self.unbound_host, timeout, self.unbound_port)
        return response

    def log(self) -> str:
        """unbound's log and stderr so far (the tail)."""
        parts = []
        for name in ("unbound.stderr", "unbound.log"):
            path = self.directory / name
            if path.exists():
                parts.append(path.read_text(errors="replace"))
        return "".join(parts)[-4000:]

    async def start(self, binary: str) -> None:
        last = ""
        for _ in range(_START_TRIES):
            self.unbound_port = _free_port(self.unbound_host)
            conf = self.directory / "unbound.conf"
            conf.write_text(_config(self.directory, self.unbound_host, self.unbound_port, self.auth))
            with (self.directory / "unbound.stderr").open("wb") as stderr:
                self._process = await asyncio.create_subprocess_exec(
                    binary, "-d", "-c", str(conf),
                    stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=stderr,
                )  # fmt: skip
            self.pid = self._process.pid
            if await self._wait_ready():
                return
            await self.stop()
            last = self.log()
            if "already in use" not in last:
                break
        raise RuntimeError(f"unbound on {self.unbound_host}:{self.unbound_port} did not start:\n{last}")

    async def _wait_ready(self) -> bool:
        """Bounded: until unbound answers ``localhost. A`` (its own local data, no recursion) or exits."""
        assert self._process is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _START_TIMEOUT
        probe = dns.message.make_query("localhost.", "A")
        while loop.time() < deadline and self._process.returncode is None:
            with contextlib.suppress(dns.exception.DNSException, OSError):
                await dns.asyncquery.udp(probe, self.unbound_host, 0.2, self.unbound_port)
                return True
            await asyncio.sleep(0.02)
        return False

    async def stop(self) -> None:
        """SIGTERM to unbound's pid, SIGKILL if it has not exited within a few seconds."""
        process, self._process = self._process, None
        if process is not None:
            await stop_process(process, _STOP_TIMEOUT)


@contextlib.asynccontextmanager
async def signed_dns(zones: Iterable[Zone] | None = None, *, host: str = HOST) -> AsyncIterator[SignedDNS]:
    """The zones (default :func:`standard_zones`) served and validated by an unbound of the test's own."""
    binary = unbound_binary()
    if binary is None:
        pytest.skip("the unbound binary is not installed (./run tests installs it: apt-get install unbound)")
    chosen = standard_zones() if zones is None else list(zones)
    origins = [z.origin for z in chosen]
    if len(set(origins)) != len(origins):
        raise ValueError("two zones with the same origin")
    for zone in chosen:
        zone.build()
    auth = AuthServer(chosen, host)
    with tempfile.TemporaryDirectory(prefix="mtasts-unbound-") as directory:
        await auth.start()
        world = SignedDNS(auth, Path(directory), host)
        try:
            await world.start(binary)
            yield world
        finally:
            await world.stop()
            await auth.close()
