"""The :class:`World`: a loopback DNS server and HTTPS server that publish MTA-STS domains for tests."""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import ssl
import tempfile
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, Unpack

import dns.asyncresolver
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import trustme

from ._certs import CertFactory
from ._config import (
    DomainConfig,
    DomainOptions,
    QueryRecord,
    RequestRecord,
    ResponseRecord,
    check_failure,
    name_key,
)
from ._dns import DnsServer, Transport, Zone, txt_rdata
from ._https import HttpsServer

if TYPE_CHECKING:
    from mtasts.resolver import PolicyResolver

__all__ = ["World"]

_log = logging.getLogger("mtasts.testing")


def _write_temporary(data: bytes) -> str:
    fd, path = tempfile.mkstemp(prefix="mtasts-testing-ca-", suffix=".pem")
    with os.fdopen(fd, "wb") as file:
        file.write(data)
    return path


def _remove_file(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


class World:
    """A loopback MTA-STS world: ``async with World() as world``, then :meth:`publish` domains.

    Inside the ``async with`` a DNS server (UDP and TCP) and an HTTPS server listen on ``host`` with free
    ports; on exit both stop, every connection is closed and the temporary files are removed. Publishing
    is pure bookkeeping (no I/O, no certificate): certificates are issued at the first TLS handshake that
    names them.
    """

    def __init__(self, *, host: str = "127.0.0.1", dns_host: str | None = None, dns_port: int = 0) -> None:
        """``host``: where both servers listen. ``dns_host``/``dns_port``: the DNS server's own address instead
        (``dns_port=53`` on, say, ``127.0.0.53`` for a client that reads ``resolv.conf``, which has no port);
        0 picks a free port."""
        self.host = host
        #: The DNS server's address (``host`` unless ``dns_host`` was given).
        self.dns_host = dns_host or host
        self._wanted_dns_port = dns_port
        #: The CA every "valid" certificate chains to; trust it (:meth:`client_ssl_context`, :attr:`ca_pem_path`).
        self.ca = trustme.CA()
        #: The CA of the "untrusted" certificate kind: never trusted by the world's client contexts.
        self.untrusted_ca = trustme.CA()
        #: Queries received, by (lowercase name without trailing dot, type such as "TXT").
        self.dns_queries: collections.Counter[tuple[str, str]] = collections.Counter()
        #: Every query received, in order, with its transport.
        self.dns_log: list[QueryRecord] = []
        #: HTTP requests received, by Host header host (lowercase, no port).
        self.http_requests: collections.Counter[str] = collections.Counter()
        #: Every HTTP request received, in order.
        self.request_log: list[RequestRecord] = []
        #: How every policy response ended, in order (complete, or cut after how many body bytes).
        self.response_log: list[ResponseRecord] = []
        #: Every TLS server_name (SNI) the HTTPS server saw, in order.
        self.sni_names: list[str] = []
        #: Exceptions raised inside the servers (e.g. a record that cannot be encoded); empty in a sane world.
        self.errors: list[BaseException] = []
        self._domains: dict[str, DomainConfig] = {}
        self._queries_by_name: collections.Counter[str] = collections.Counter()
        self._zone = Zone(self._domains, self._count_query, self._server_error)
        self._certs = CertFactory(self.ca, self.untrusted_ca)
        self._dns = DnsServer(self._zone)
        self._https = HttpsServer(
            self._domains,
            self._certs,
            self._record_request,
            self.sni_names.append,
            self._server_error,
            on_response=self.response_log.append,
        )
        self._dns_port: int | None = None
        self._https_port: int | None = None
        self._ca_pem_path: str | None = None
        self._state = "new"

    # -- lifecycle ---------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._state != "new":
            raise RuntimeError("a World can be entered only once")
        self._state = "running"
        try:
            self._ca_pem_path = _write_temporary(self.ca.cert_pem.bytes())
            self._dns_port = await self._dns.start(self.dns_host, self._wanted_dns_port)
            self._https_port = await self._https.start(self.host)
        except BaseException:
            await self._stop()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stop()

    async def _stop(self) -> None:
        self._state = "closed"
        try:
            await self._https.close()
        finally:
            try:
                await self._dns.close()
            finally:
                self._certs.close()
                if self._ca_pem_path is not None:
                    _remove_file(self._ca_pem_path)

    def _running(self, what: str) -> None:
        if self._state != "running":
            raise RuntimeError(f"World.{what} is only available inside `async with World() as world`")

    @property
    def dns_port(self) -> int:
        """The DNS server's port on :attr:`dns_host` (UDP and TCP)."""
        self._running("dns_port")
        assert self._dns_port is not None
        return self._dns_port

    @property
    def https_port(self) -> int:
        """The HTTPS server's port on :attr:`host`: fetch ``https://mta-sts.<domain>:<https_port>/...``."""
        self._running("https_port")
        assert self._https_port is not None
        return self._https_port

    @property
    def ca_pem_path(self) -> str:
        """A temporary file holding :attr:`ca`'s certificate (PEM); removed when the world exits."""
        self._running("ca_pem_path")
        assert self._ca_pem_path is not None
        return self._ca_pem_path

    # -- clients -----------------------------------------------------------------------------------------

    def resolver(self, *, lifetime: float = 2.0) -> dns.asyncresolver.Resolver:
        """A new dnspython resolver asking only the world's DNS server, without a cache.

        ``lifetime`` bounds a whole resolution; each try waits at most half of it, so a query lost under
        load is retried once (a name that never answers is queried twice).
        """
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [self.dns_host]
        resolver.port = self.dns_port
        resolver.cache = None
        resolver.lifetime = lifetime
        resolver.timeout = lifetime / 2
        return resolver

    def client_ssl_context(self) -> ssl.SSLContext:
        """A new client context trusting only :attr:`ca`: TLS >= 1.2, host name checked against DNS-IDs only.

        RFC 8461 §3.3: the policy host's certificate must be valid for its name, without CN fallback.
        """
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = True
        context.verify_mode = ssl.CERT_REQUIRED
        context.hostname_checks_common_name = False
        self.ca.configure_trust(context)
        return context

    def server_ssl_context(self, hostname: str, kind: str = "valid") -> ssl.SSLContext:
        """A server context presenting a ``kind`` certificate for ``hostname`` (cached per name and kind).

        Kinds: ``valid``; ``expired``; ``not-yet-valid``; ``wrong-name`` (for ``wrong.<hostname>``);
        ``untrusted`` (from :attr:`untrusted_ca`); ``cn-only`` (CN=hostname, no subjectAltName, signed by
        :attr:`ca`); ``wildcard`` (for ``*.<parent of hostname>``). Use it for MX servers' STARTTLS.
        """
        return self._certs.context(hostname, kind)

    def policy_resolver(self, **kwargs: Any) -> PolicyResolver:
        """A :class:`mtasts.resolver.PolicyResolver` that discovers and fetches from this world.

        ``dns_resolver``, ``ssl_context`` and ``policy_port`` default to :meth:`resolver`,
        :meth:`client_ssl_context` and :attr:`https_port`; every keyword is passed on.
        """
        from mtasts.resolver import PolicyResolver  # noqa: PLC0415 -- the async shell is optional here

        kwargs.setdefault("dns_resolver", self.resolver())
        kwargs.setdefault("ssl_context", self.client_ssl_context())
        kwargs.setdefault("policy_port", self.https_port)
        return PolicyResolver(**kwargs)

    # -- publishing --------------------------------------------------------------------------------------

    def publish(
        self, domain: str, policy: str | bytes | None = None, *, id: str = "1", **config: Unpack[DomainOptions]
    ) -> DomainConfig:
        """Publish ``domain``: ``_mta-sts.<domain>`` TXT, ``mta-sts.<domain>`` A, and the policy over HTTPS.

        Replaces any earlier configuration of the domain; returns the new :class:`DomainConfig`, whose
        fields can be changed at any time. ``policy=None`` serves HTTP 404.
        """
        config.setdefault("policy_host_addresses", [self.host])
        settings = DomainConfig(policy=policy, id=id, **config)
        self._domains[name_key(domain)] = settings
        return settings

    def domain(self, name: str) -> DomainConfig:
        """The configuration of a published domain (KeyError if it is not published)."""
        return self._domains[name_key(name)]

    def unpublish(self, domain: str) -> None:
        """Withdraw a published domain: its names vanish from DNS (NXDOMAIN) and HTTPS answers 404."""
        del self._domains[name_key(domain)]

    def add_record(self, name: str, rdtype: str, value: str | list[str], ttl: int = 300) -> None:
        """Add a DNS record. ``value`` is presentation format (``"10 mx1.example.com."``), except for TXT.

        Names in ``value`` without a trailing dot are taken as absolute. A TXT ``value`` is the plain text
        of one record (no quoting; split into 255-byte character-strings automatically), or a list of
        character-strings given exactly.
        """
        rdatatype = dns.rdatatype.from_text(rdtype.upper())
        if rdatatype == dns.rdatatype.TXT:
            rdata = txt_rdata(value)
        elif isinstance(value, str):
            rdata = dns.rdata.from_text(dns.rdataclass.IN, rdatatype, value, dns.name.root, relativize=False)
        else:
            raise TypeError(f"a {rdtype} record value is one string in presentation format")
        self._zone.records.setdefault(name_key(name), {}).setdefault(rdatatype, []).append((ttl, rdata))

    def remove_records(self, name: str, rdtype: str | None = None) -> None:
        """Remove the records added to ``name`` with :meth:`add_record` (of one type, or all)."""
        key = name_key(name)
        if rdtype is None:
            self._zone.records.pop(key, None)
            return
        records = self._zone.records.get(key)
        if records is not None:
            records.pop(dns.rdatatype.from_text(rdtype.upper()), None)
            if not records:
                del self._zone.records[key]

    def tlsa(self, name: str, usage: int, selector: int, mtype: int, data_hex: str, *, ttl: int = 300) -> None:
        """Publish a TLSA record (RFC 6698 §2) at ``name``, e.g. ``world.tlsa("_25._tcp.mx.example", 3, 1, 1, h)``.

        DANE for SMTP (RFC 7672) uses it only where the answer is validated: :meth:`sign` the zone too.
        """
        self.add_record(name, "TLSA", f"{usage} {selector} {mtype} {data_hex}", ttl)

    def tlsa_data(
        self, hostname: str, kind: str = "valid", *, usage: int = 3, selector: int = 1, mtype: int = 1
    ) -> str:
        """The hex association data of a TLSA record for the certificate :meth:`server_ssl_context` presents
        for ``hostname`` and ``kind``: usage 3 (DANE-EE) describes that leaf, usage 2 (DANE-TA) its CA (which
        the server sends after the leaf). ``world.tlsa(name, 3, 1, 1, world.tlsa_data(mx))``."""
        from mtasts.dane import association_data  # noqa: PLC0415 - the testing package needs no more of mtasts

        der = self._certs.leaf_der(hostname, kind) if usage == 3 else self._certs.issuer_der(kind)
        return association_data(der, selector, mtype).hex()

    def sign(self, zone: str) -> None:
        """Mark ``zone`` (and every name below it) as DNSSEC-signed: answers for it carry the AD bit when the
        query sets AD or DO, as a validating resolver's do (RFC 6840 §5.7). An answer whose CNAME chain leaves
        the signed zones is not marked. ``set_failure(name, "servfail")`` stands for a bogus signature."""
        self._zone.signed.add(name_key(zone))

    def unsign(self, zone: str) -> None:
        """Undo :meth:`sign` for ``zone``."""
        self._zone.signed.discard(name_key(zone))

    def set_failure(self, name: str, kind: str | None) -> None:
        """Make every query for ``name`` fail (``nxdomain``, ``servfail``, ``timeout``, ``nodata``,
        ``refused``) or be answered like a hostile server would (``wrong-id``, ``wrong-question``,
        ``cname-loop``), overriding records and domain settings; ``None`` clears it."""
        check_failure(kind, "kind")
        if kind is None:
            self._zone.failures.pop(name_key(name), None)
        else:
            self._zone.failures[name_key(name)] = kind

    # -- counters ----------------------------------------------------------------------------------------

    def queries(self, name: str, rdtype: str | None = None) -> int:
        """How many queries for ``name`` (of type ``rdtype``, or of any type) the DNS server received."""
        key = name_key(name)
        if rdtype is None:
            return self._queries_by_name[key]
        return self.dns_queries[(key, rdtype.upper())]

    def requests(self, host: str) -> int:
        """How many HTTP requests carried Host ``host`` (the port is ignored)."""
        return self.http_requests[name_key(host)]

    def reset_counters(self) -> None:
        """Forget every query, request, response and SNI name seen so far (not :attr:`errors`)."""
        self.dns_queries.clear()
        self._queries_by_name.clear()
        self.dns_log.clear()
        self.http_requests.clear()
        self.request_log.clear()
        self.response_log.clear()
        self.sni_names.clear()

    def _count_query(self, name: str, rdtype: str, transport: Transport) -> None:
        self.dns_queries[(name, rdtype)] += 1
        self._queries_by_name[name] += 1
        self.dns_log.append(QueryRecord(name, rdtype, transport))

    def _record_request(self, record: RequestRecord) -> None:
        self.http_requests[record.host] += 1
        self.request_log.append(record)

    def _server_error(self, exc: BaseException) -> None:
        self.errors.append(exc)
        _log.warning("mtasts.testing server error: %r", exc)
