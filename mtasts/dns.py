"""DNS for MTA-STS through dnspython: the ``_mta-sts`` TXT discovery (RFC 8461 §3.1) and host addresses.

This module is a boundary: every dnspython exception is translated here, into a :class:`TxtAnswer` status
(discovery never raises) or a :class:`~mtasts.errors.PolicyFetchError` (policy host addresses).

The resolver is the caller's ``dns.asyncresolver.Resolver``: point it at any server and it defines the world.
mtasts never enables dnspython's own cache (all caching decisions use the injected clock).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

from .errors import PolicyFetchError

__all__ = ["TxtAnswer", "TxtStatus", "query_txt", "resolve_addresses"]

# What a failed dnspython call can raise beside DNSException: socket errors, and ValueError/EOFError from
# malformed answers.
_DNS_FAILURES = (dns.exception.DNSException, OSError, ValueError, EOFError)


class TxtStatus(enum.StrEnum):
    """How a TXT query ended."""

    FOUND = "found"  # one or more TXT records
    NXDOMAIN = "nxdomain"  # the name does not exist (or a CNAME chain ends in NXDOMAIN)
    NODATA = "nodata"  # the name exists but has no TXT record
    ERROR = "error"  # SERVFAIL, REFUSED, timeout, malformed answer: nothing is known


@dataclass(frozen=True, slots=True)
class TxtAnswer:
    """The TXT records at a name (each record's character-strings joined, §3.1), or why there are none."""

    status: TxtStatus
    records: tuple[bytes, ...] = ()
    error: str | None = None


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def query_txt(resolver: dns.asyncresolver.Resolver, name: str) -> TxtAnswer:
    """Query the TXT records of ``name`` (an absolute A-label name, no trailing dot needed). Never raises.

    CNAMEs are followed (§3.1 "senders MUST follow the CNAME pointers"); multi-string records are joined
    without separators (§3.1 MUST) — not with dnspython's ``to_text()``, which quotes each string.
    """
    try:
        qname = dns.name.from_text(name)
        answer = await resolver.resolve(qname, dns.rdatatype.TXT, search=False, raise_on_no_answer=False)
    except dns.resolver.NXDOMAIN:
        return TxtAnswer(TxtStatus.NXDOMAIN)
    except _DNS_FAILURES as exc:
        return TxtAnswer(TxtStatus.ERROR, error=_describe(exc))
    if answer.rrset is None:
        return TxtAnswer(TxtStatus.NODATA)
    return TxtAnswer(TxtStatus.FOUND, tuple(b"".join(rdata.strings) for rdata in answer.rrset))


async def resolve_addresses(resolver: dns.asyncresolver.Resolver, host: str) -> list[str]:
    """The IPv4 addresses of ``host``, else its IPv6 addresses; raise :class:`PolicyFetchError` if none.

    A first, AAAA only when there is no A: one address query per policy host in the common case.
    """
    qname = dns.name.from_text(host)
    problems: list[str] = []
    for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
        try:
            answer = await resolver.resolve(qname, rdtype, search=False, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            raise PolicyFetchError(f"{host}: no such host (NXDOMAIN)") from None
        except _DNS_FAILURES as exc:
            problems.append(f"{dns.rdatatype.to_text(rdtype)}: {_describe(exc)}")
            continue
        if answer.rrset is not None:
            return [rdata.address for rdata in answer.rrset]
    detail = "; ".join(problems) if problems else "no A or AAAA record"
    raise PolicyFetchError(f"{host}: cannot resolve ({detail})")
