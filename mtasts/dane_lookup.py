"""DANE's DNS lookups (RFC 7672 §2.2): the MX RRset, each host's addresses and TLSA records, with the AD bit.

Like Postfix, mtasts trusts the AD bit of the configured resolver, which must be a local validating resolver
(unbound, knot-resolver, systemd-resolved with DNSSEC=yes ...) on a trusted path (RFC 7672 §2.1, RFC 6698 §4.1;
docs/security.md). A validating resolver sets AD only for a query that sets AD or DO (RFC 6840 §5.7): the
queries here set AD. What the answers make of a host is decided in :mod:`mtasts.dane` (pure); this module only
asks, and maps dnspython's exceptions to that module's outcomes at one place (:func:`_ask`).
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rdatatype
import dns.resolver

from ._exceptions import local_os_error
from ._gate import Gate
from .dane import DomainDane, HostDane, TlsaAnswer, TlsaRecord, TlsaStatus, host_state, tlsa_name
from .dns import DNS_FAILURES, DnsResolver, MxHosts, describe_failure, describe_local_error, find_mx
from .errors import LocalError

__all__ = ["DaneResolver", "validating_resolver"]

_MIN_TTL = 60.0  # a DANE state is re-checked at least this long after it was found...
_MAX_TTL = 3600.0  # ...and at most this long (a TLSA rollover must be seen in good time)


def validating_resolver(resolver: DnsResolver) -> DnsResolver:
    """A copy of a dnspython resolver whose queries set AD (RFC 6840 §5.7) and that caches nothing of its own.

    The copy shares the servers, ports, timeouts and lifetime; it keeps no cache so that an answer cached
    without AD (asked by someone else) is never taken for an insecure one. Another resolver object (a wrapper)
    is returned as it is: it must ask for AD itself.
    """
    if not isinstance(resolver, dns.resolver.BaseResolver):
        return resolver
    clone = copy.copy(resolver)
    clone.flags = (resolver.flags if resolver.flags is not None else dns.flags.RD) | dns.flags.AD
    clone.cache = None
    return clone


@dataclass(frozen=True, slots=True)
class _Asked:
    """One query's answer: the rdatas (empty: NXDOMAIN/NODATA), AD, the TTL; or the error."""

    rdatas: tuple[object, ...] = ()
    secure: bool = False
    ttl: float = _MAX_TTL
    error: str | None = None
    local: bool = False


class DaneResolver:
    """TLSA and validated MX lookups for DANE, at most ``limit`` queries at a time (each waits ``wait`` s).

    ``resolver``: a dnspython resolver pointed at a local validating resolver (a copy that sets AD is used,
    :func:`validating_resolver`). ``port``: the SMTP port whose TLSA records count (RFC 7672 §2.2.3).
    """

    def __init__(self, resolver: DnsResolver, *, port: int = 25, limit: int = 64, wait: float = 30.0) -> None:
        self.resolver = validating_resolver(resolver)
        self.port = port
        self._gate = Gate(limit, wait, "DANE DNS query")

    async def _ask(self, name: str, rdtype: dns.rdatatype.RdataType) -> _Asked:
        """The one place dnspython's answers and exceptions are read."""
        try:
            async with self._gate:
                answer = await self.resolver.resolve(
                    dns.name.from_text(name), rdtype, search=False, raise_on_no_answer=False
                )
        except dns.resolver.NXDOMAIN as exc:
            responses = list(exc.responses().values())  # type: ignore[no-untyped-call]
            secure = bool(responses) and all(bool(r.flags & dns.flags.AD) for r in responses)
            return _Asked(secure=secure, ttl=_negative_ttl(responses))
        except LocalError as exc:
            return _Asked(error=exc.message, local=True)
        except DNS_FAILURES as exc:
            local = local_os_error(exc)
            if local is not None:
                return _Asked(error=f"{name}: {describe_local_error(local)}", local=True)
            return _Asked(error=describe_failure(exc, self.resolver, name, dns.rdatatype.to_text(rdtype)))
        secure = bool(answer.response.flags & dns.flags.AD)
        if answer.rrset is None:
            return _Asked(secure=secure, ttl=_negative_ttl([answer.response]))
        return _Asked(tuple(answer.rrset), secure, float(answer.rrset.ttl))

    async def tlsa(self, host: str) -> tuple[TlsaAnswer, float]:
        """The TLSA records of ``host`` on :attr:`port` (and their TTL); raises :class:`LocalError` for ours."""
        asked = await self._ask(tlsa_name(host, self.port), dns.rdatatype.TLSA)
        if asked.local:
            raise LocalError(asked.error or "TLSA lookup failed here")
        if asked.error is not None:
            return TlsaAnswer(TlsaStatus.FAILED, error=asked.error), _MIN_TTL
        if not asked.secure:
            return TlsaAnswer(TlsaStatus.INSECURE), asked.ttl
        if not asked.rdatas:
            return TlsaAnswer(TlsaStatus.SECURE_NONE), asked.ttl
        records = tuple(
            TlsaRecord(r.usage, r.selector, r.mtype, bytes(r.cert))  # type: ignore[attr-defined]
            for r in asked.rdatas
        )
        return TlsaAnswer(TlsaStatus.SECURE, records), asked.ttl

    async def host(self, host: str, *, mx_secure: bool) -> tuple[HostDane, float]:
        """``host``'s DANE state (:func:`mtasts.dane.host_state`) and how long it holds."""
        if not mx_secure:
            return host_state(host, mx_secure=False, address_secure=False, tlsa=None), _MAX_TTL
        address, (tlsa, tlsa_ttl) = await asyncio.gather(self._address(host), self.tlsa(host))
        if address.local:
            raise LocalError(address.error or "address lookup failed here")
        # An address lookup that failed leaves the host unreachable anyway; its TLSA state still stands.
        address_secure = address.secure if address.error is None else True
        state = host_state(host, mx_secure=True, address_secure=address_secure, tlsa=tlsa)
        return state, min(address.ttl, tlsa_ttl)

    async def _address(self, host: str) -> _Asked:
        asked = await self._ask(host, dns.rdatatype.A)
        if asked.error is None and not asked.rdatas and asked.secure:
            aaaa = await self._ask(host, dns.rdatatype.AAAA)
            return aaaa if aaaa.rdatas or aaaa.error is not None or aaaa.local else asked
        return asked

    async def mx_hosts(self, domain: str) -> MxHosts:
        """The MX hosts in order, with whether the MX RRset is validated (:func:`mtasts.dns.find_mx`; a failed
        MX lookup raises ``MXTransientFailure``: RFC 7672 §2.2.1, defer)."""
        async with self._gate:
            return await find_mx(self.resolver, domain)

    async def domain(self, domain: str) -> tuple[DomainDane, float]:
        """``domain``'s DANE state (every MX host's) and how long it holds (its smallest TTL, 60 s to 1 h).

        Raises :class:`~mtasts.errors.MXTransientFailure` when the MX RRset cannot be had,
        :class:`~mtasts.errors.MXPermanentFailure` for a null MX or NXDOMAIN, :class:`LocalError` for a fault here.
        """
        mx = await self.mx_hosts(domain)
        states = await asyncio.gather(*(self.host(h, mx_secure=mx.secure) for h in mx.hosts))
        ttl = min([mx.ttl, *(t for _, t in states)])
        return DomainDane(domain, mx.secure, tuple(s for s, _ in states)), max(_MIN_TTL, min(_MAX_TTL, ttl))

    async def hosts(self, hosts: Sequence[str], *, mx_secure: bool) -> dict[str, HostDane]:
        """Each host's state (for a delivery that has its MX list already)."""
        states = await asyncio.gather(*(self.host(h, mx_secure=mx_secure) for h in hosts))
        return {s.host: s for s, _ in states}


def _negative_ttl(responses: Sequence[dns.message.Message]) -> float:
    """The SOA minimum of a negative answer (RFC 2308 §5), or the upper bound when there is none."""
    for response in responses:
        for rrset in response.authority:
            if rrset.rdtype == dns.rdatatype.SOA:
                return float(min(rrset.ttl, rrset[0].minimum))
    return _MAX_TTL
