"""DANE for SMTP (RFC 7672), sans I/O: which TLSA records count, what a host's DNS answers make of it, and
whether a certificate matches.

RFC 8461 §2: "senders who implement MTA-STS validation MUST NOT allow MTA-STS Policy validation to override a
failing DANE validation" — where DANE applies to an MX host, MTA-STS is not evaluated for it
(docs/decisions.md). Whether DANE applies is decided here from what the DNS said, with the AD bit of a local
validating resolver standing for "secure" (RFC 7672 §2.1; RFC 6840 §5.7):

====================================  ============================  ========================================
MX RRset / host address / TLSA        host                          reference
====================================  ============================  ========================================
MX RRset insecure                     not DANE (every host)         RFC 7672 §2.2.1
host address records insecure         not DANE                      RFC 7672 §2.2.2
TLSA lookup failed (SERVFAIL ...)     failed: that host is unusable RFC 7672 §2.1.1, §2.2
TLSA insecure, NXDOMAIN or NODATA     not DANE                      RFC 7672 §2.2
TLSA secure, none usable              unusable: TLS, no auth        RFC 7672 §3.1, §2.2
TLSA secure, some usable              DANE                          RFC 7672 §2.2, §3.1
====================================  ============================  ========================================

Usable records (RFC 7672 §3.1): certificate usage DANE-TA(2) or DANE-EE(3) — PKIX-TA(0) and PKIX-EE(1) are not
for SMTP —, selector Cert(0) or SPKI(1), matching type Full(0), SHA2-256(1) or SHA2-512(2).

Matching (RFC 6698 §2.1, RFC 7671 §5): DANE-EE(3) against the leaf, names and expiry ignored (RFC 7672
§3.1.1); DANE-TA(2) picks the trust anchor among the chain the server sent (RFC 7672 §3.1.2: the server
must include it) or a full certificate in the record; the chain up to it, the names and the expiry are then
checked by the shell (:mod:`mtasts.dane_verify`).
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from .errors import MTASTSError

__all__ = [
    "DANE_EE",
    "DANE_TA",
    "DomainDane",
    "HostDane",
    "HostState",
    "TlsaAnswer",
    "TlsaRecord",
    "TlsaStatus",
    "association_data",
    "host_state",
    "is_usable",
    "match_end_entity",
    "match_trust_anchor",
    "postfix_level",
    "subject_public_key_info",
    "tlsa_name",
]

DANE_TA: Final = 2  # RFC 7218: certificate usage DANE-TA
DANE_EE: Final = 3  # RFC 7218: certificate usage DANE-EE
_SELECTORS: Final = frozenset({0, 1})  # Cert, SPKI
_MATCHING: Final = {0: None, 1: "sha256", 2: "sha512"}  # Full, SHA2-256, SHA2-512


@dataclass(frozen=True, slots=True)
class TlsaRecord:
    """One TLSA record's RDATA (RFC 6698 §2.1)."""

    usage: int
    selector: int
    mtype: int
    data: bytes

    def __str__(self) -> str:  # the RFC 8460 §4.3 policy-string form: "3 1 1 <hex>"
        return f"{self.usage} {self.selector} {self.mtype} {self.data.hex()}"


def is_usable(record: TlsaRecord) -> bool:
    """RFC 7672 §3.1: DANE-TA(2) or DANE-EE(3), selector 0/1, matching type 0/1/2 (and digest lengths right)."""
    if record.usage not in (DANE_TA, DANE_EE) or record.selector not in _SELECTORS:
        return False
    if record.mtype == 1:
        return len(record.data) == 32
    if record.mtype == 2:
        return len(record.data) == 64
    return record.mtype == 0 and bool(record.data)


def tlsa_name(host: str, port: int = 25) -> str:
    """The TLSA owner name for SMTP at ``host`` (RFC 7672 §2.2.3, RFC 6698 §3): ``_25._tcp.<host>``."""
    return f"_{port}._tcp.{host.rstrip('.')}"


class TlsaStatus(enum.StrEnum):
    """How a TLSA query ended."""

    SECURE = "secure"  # records, validated (AD)
    SECURE_NONE = "secure-none"  # NXDOMAIN or NODATA, validated (authenticated denial)
    INSECURE = "insecure"  # an answer (records or none) without AD
    FAILED = "failed"  # SERVFAIL (a bogus signature, RFC 7672 §2.1.1), timeout, malformed


@dataclass(frozen=True, slots=True)
class TlsaAnswer:
    """The TLSA records at a host, or why there are none."""

    status: TlsaStatus
    records: tuple[TlsaRecord, ...] = ()
    error: str | None = None


class HostState(enum.StrEnum):
    """What DANE makes of one MX host (the module's table)."""

    DANE = "dane"  # usable TLSA records: authenticate with them, never with MTA-STS or PKIX
    UNUSABLE = "unusable"  # secure TLSA records, none usable: TLS required, no authentication (RFC 7672 §2.2)
    FAILED = "failed"  # the TLSA lookup failed on a secure host: do not use this host now (RFC 7672 §2.1.1)
    NOT_DANE = "not-dane"  # DANE does not apply: MTA-STS (or the default) decides


@dataclass(frozen=True, slots=True)
class HostDane:
    """One MX host's DANE state, with its usable records."""

    host: str
    state: HostState
    records: tuple[TlsaRecord, ...] = ()
    error: str | None = None


def host_state(host: str, *, mx_secure: bool, address_secure: bool, tlsa: TlsaAnswer | None) -> HostDane:
    """The module's table for one host. ``tlsa`` None: not looked up (the MX RRset or address was insecure)."""
    if not mx_secure:
        return HostDane(host, HostState.NOT_DANE, error="MX RRset not DNSSEC-validated")  # §2.2.1
    if not address_secure:
        return HostDane(host, HostState.NOT_DANE, error="address records not DNSSEC-validated")  # §2.2.2
    if tlsa is None or tlsa.status in (TlsaStatus.INSECURE, TlsaStatus.SECURE_NONE):
        return HostDane(host, HostState.NOT_DANE)
    if tlsa.status is TlsaStatus.FAILED:
        return HostDane(host, HostState.FAILED, error=tlsa.error or "TLSA lookup failed")  # §2.1.1
    usable = tuple(r for r in tlsa.records if is_usable(r))
    if not usable:
        return HostDane(host, HostState.UNUSABLE, error="no usable TLSA record (RFC 7672 §3.1)")
    return HostDane(host, HostState.DANE, usable)


@dataclass(frozen=True, slots=True)
class DomainDane:
    """A recipient domain's DANE state: its MX RRset's validation and each host's state."""

    domain: str
    mx_secure: bool
    hosts: tuple[HostDane, ...] = ()

    @property
    def applies(self) -> bool:
        """DANE governs at least one MX host (usable records, or a failed lookup that must not fall back)."""
        return any(h.state in (HostState.DANE, HostState.FAILED) for h in self.hosts)


def postfix_level(dane: DomainDane) -> str | None:
    """The Postfix TLS security level DANE asks for (``smtp_tls_policy_maps``), or None (MTA-STS decides).

    Postfix applies one level to a whole next-hop domain. ``dane-only`` whenever DANE governs any MX host —
    every host with TLSA, or only some (docs/decisions.md: under ``dane-only`` Postfix uses only the hosts that
    authenticate with DANE, so neither MTA-STS nor opportunistic TLS can stand in for a failing DANE host,
    RFC 8461 §2; ``dane`` would send to the other hosts with opportunistic TLS, weaker than the enforce policy).
    """
    return "dane-only" if dane.applies else None


# -- certificates (DER, RFC 5280 §4.1) ----------------------------------------------------------------------


def _tlv(data: bytes, offset: int) -> tuple[int, int, int]:
    """(tag, start of contents, end of contents) of the DER element at ``offset``."""
    if offset + 2 > len(data):
        raise MTASTSError("malformed certificate (truncated DER)")
    tag, first = data[offset], data[offset + 1]
    offset += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or offset + count > len(data):
            raise MTASTSError("malformed certificate (bad DER length)")
        length = int.from_bytes(data[offset : offset + count], "big")
        offset += count
    if offset + length > len(data):
        raise MTASTSError("malformed certificate (truncated DER)")
    return tag, offset, offset + length


def subject_public_key_info(certificate: bytes) -> bytes:
    """The DER SubjectPublicKeyInfo of a DER certificate (selector SPKI(1), RFC 6698 §2.1.2).

    Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber, signature,
    issuer, validity, subject, subjectPublicKeyInfo, ... }, ... } (RFC 5280 §4.1).
    """
    tag, start, _ = _tlv(certificate, 0)
    if tag != 0x30:
        raise MTASTSError("malformed certificate (not a SEQUENCE)")
    tag, position, tbs_end = _tlv(certificate, start)
    if tag != 0x30:
        raise MTASTSError("malformed certificate (no tbsCertificate)")
    tag, _, end = _tlv(certificate, position)
    if tag == 0xA0:  # [0] EXPLICIT version
        position = end
    for _ in range(5):  # serialNumber, signature, issuer, validity, subject
        _, _, position = _tlv(certificate, position)
    tag, _, end = _tlv(certificate, position)
    if tag != 0x30 or end > tbs_end:
        raise MTASTSError("malformed certificate (no subjectPublicKeyInfo)")
    return certificate[position:end]


def association_data(certificate: bytes, selector: int, mtype: int) -> bytes:
    """What a TLSA record with ``selector`` and ``mtype`` holds for ``certificate`` (RFC 6698 §2.1.2-§2.1.3)."""
    selected = certificate if selector == 0 else subject_public_key_info(certificate)
    algorithm = _MATCHING.get(mtype)
    return selected if algorithm is None else hashlib.new(algorithm, selected).digest()


def _matches(record: TlsaRecord, certificate: bytes) -> bool:
    try:
        return association_data(certificate, record.selector, record.mtype) == record.data
    except MTASTSError:
        return False


def match_end_entity(records: Iterable[TlsaRecord], leaf: bytes) -> TlsaRecord | None:
    """The DANE-EE(3) record that the server's leaf certificate matches, or None (RFC 7672 §3.1.1)."""
    for record in records:
        if record.usage == DANE_EE and is_usable(record) and _matches(record, leaf):
            return record
    return None


def match_trust_anchor(records: Iterable[TlsaRecord], chain: Sequence[bytes]) -> bytes | None:
    """The trust anchor (DER) a DANE-TA(2) record designates: an issuer certificate of ``chain`` (leaf first)
    that the record matches, or the record's own full certificate (selector 0, matching type 0). None if no
    record designates one (RFC 7672 §3.1.2)."""
    for record in records:
        if record.usage != DANE_TA or not is_usable(record):
            continue
        for certificate in chain[1:]:
            if _matches(record, certificate):
                return certificate
        if record.selector == 0 and record.mtype == 0:
            return record.data
    return None
