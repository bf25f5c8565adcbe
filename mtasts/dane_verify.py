"""Judging a TLS session by an MX host's usable TLSA records (RFC 7672 §3): the one place certificates from a
live session are read for DANE.

- DANE-EE(3): the leaf matches a record; names and expiry are not checked (RFC 7672 §3.1.1).
- DANE-TA(2): a record designates a trust anchor among the certificates the server sent (or is a full
  certificate itself); the leaf must chain to it, be valid now and carry the MX host name (RFC 7672 §3.1.2,
  §3.2.2, reference identifier the MX host name — no CNAME expansion). The chain check needs
  ``cryptography`` (>= 42, part of the ``smtp`` extra); without it, or where the runtime does not expose the
  peer's chain, a DANE-TA record cannot be verified and the session fails (never MTA-STS or PKIX instead).

Returns an RFC 8460 result type (``tlsa-invalid``) with a reason, or None when DANE authenticates the peer.
"""

from __future__ import annotations

import datetime
import ssl
from collections.abc import Sequence

from .dane import DANE_TA, TlsaRecord, match_end_entity, match_trust_anchor
from .results import ResultType

__all__ = ["peer_chain", "verify_session"]


def peer_chain(ssl_object: ssl.SSLObject) -> list[bytes]:
    """The DER certificates the peer sent, leaf first (Python >= 3.13 ``get_unverified_chain``; before that the
    same method of the underlying ``_ssl`` object), or just the leaf when neither is there."""
    getter = getattr(ssl_object, "get_unverified_chain", None)
    if getter is None:
        getter = getattr(getattr(ssl_object, "_sslobj", None), "get_unverified_chain", None)
    if getter is not None:
        try:
            chain = getter() or []
            encoded = [c if isinstance(c, bytes) else c.public_bytes(ssl._ssl.ENCODING_DER) for c in chain]  # type: ignore[attr-defined]
            if encoded:
                return encoded
        except (AttributeError, ValueError, ssl.SSLError):
            pass
    leaf = ssl_object.getpeercert(binary_form=True)
    return [leaf] if leaf else []


def verify_session(
    records: Sequence[TlsaRecord], chain: Sequence[bytes], mx: str, *, now: datetime.datetime | None = None
) -> tuple[str, str] | None:
    """None if ``chain`` (leaf first) satisfies ``records`` for ``mx``; else (result type, reason)."""
    if not chain:
        return ResultType.TLSA_INVALID, "the server sent no certificate"
    if match_end_entity(records, chain[0]) is not None:
        return None
    if not any(r.usage == DANE_TA for r in records):
        return ResultType.TLSA_INVALID, "no DANE-EE record matches the server's certificate"
    anchor = match_trust_anchor(records, chain)
    if anchor is None:
        return ResultType.TLSA_INVALID, "no DANE-TA record matches a certificate the server sent"
    problem = _chain_to_anchor(chain, anchor, mx, now or datetime.datetime.now(datetime.UTC))
    return None if problem is None else (ResultType.TLSA_INVALID, problem)


def _chain_to_anchor(chain: Sequence[bytes], anchor: bytes, mx: str, now: datetime.datetime) -> str | None:
    try:
        from cryptography import x509  # noqa: PLC0415 - optional (the smtp extra)
        from cryptography.x509.verification import PolicyBuilder, Store, VerificationError  # noqa: PLC0415
    except ImportError:
        return "DANE-TA needs the cryptography package (pip install 'mtasts[smtp]')"
    try:
        leaf = x509.load_der_x509_certificate(chain[0])
        intermediates = [x509.load_der_x509_certificate(c) for c in chain[1:] if c != anchor]
        verifier = (
            PolicyBuilder()
            .store(Store([x509.load_der_x509_certificate(anchor)]))
            .time(now)
            .build_server_verifier(x509.DNSName(mx))
        )
        verifier.verify(leaf, intermediates)
    except VerificationError as exc:
        return f"DANE-TA: the chain does not validate for {mx}: {exc}"
    except ValueError as exc:  # a certificate cryptography cannot parse
        return f"DANE-TA: malformed certificate: {exc}"
    return None
