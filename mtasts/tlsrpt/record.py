"""The ``_smtp._tls`` TXT record (RFC 8460 §3): where a domain wants its TLS reports.

    tlsrpt-record    = tlsrpt-version 1*(field-delim tlsrpt-field) [field-delim]
    field-delim      = *WSP ";" *WSP
    tlsrpt-field     = tlsrpt-rua /        ; Note that the tlsrpt-rua record is required.
                       tlsrpt-extension
    tlsrpt-version   = %s"v=TLSRPTv1"
    tlsrpt-rua       = %s"rua="
                       tlsrpt-uri *(*WSP "," *WSP tlsrpt-uri)
    tlsrpt-uri       = URI
                       ; "URI" is imported from [RFC3986];
                       ; commas (ASCII 0x2C), exclamation points (ASCII 0x21), and semicolons (ASCII 0x3B)
                       ; MUST be encoded
    tlsrpt-extension = tlsrpt-ext-name "=" tlsrpt-ext-value
    tlsrpt-ext-name  = (ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" / "-" / ".")
    tlsrpt-ext-value = 1*(%x21-3A / %x3C / %x3E-7E)   ; chars excluding "=", ";", SP, and control chars

"Two URI schemes are supported: "mailto" and "https"" — others are ignored, and a record left with no supported
URI is treated as no record (decisions table). Of several records, those not beginning with ``v=TLSRPTv1;`` are
discarded, and unless exactly one remains the domain does not implement TLS-RPT (§3 MUST). Of duplicated fields,
the first wins (as RFC 8461 §3.2 rules for its records).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ..errors import TlsRptRecordError
from ..txt import explain_one, select_one, split_record

__all__ = [
    "TlsRptRecord",
    "TlsRptRecordError",
    "explain_tlsrpt_records",
    "is_tlsrpt_record",
    "parse_tlsrpt_record",
    "select_tlsrpt_record",
]

_WSP = r"[ \t]"
# RFC 3986 URI characters (unreserved, reserved, "%" of pct-encoded), less the three RFC 8460 says MUST be encoded.
_URI = r"[A-Za-z][A-Za-z0-9+.-]*:[A-Za-z0-9\-._~:/?#\[\]@$&'()*+=%]+"
_RUA = r"rua=" + _URI + r"(?:" + _WSP + r"*," + _WSP + r"*" + _URI + r")*"
_EXT_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}"
_EXT_VALUE = r"[\x21-\x3a\x3c\x3e-\x7e]+"
# Matched field by field (mtasts.txt.split_record): "rua=mailto:..." is both a tlsrpt-rua and an extension, so
# one regex for the whole record backtracks exponentially on a failing record (found by benchmarks/fuzz.py).
_FIELD = re.compile(r"(?:" + _RUA + r"|" + _EXT_NAME + r"=" + _EXT_VALUE + r")")
_RUA_VALUE = re.compile(_WSP + r"*," + _WSP + r"*")
_RUA_FIELD = re.compile(_RUA)
_PREFIX = re.compile(r"v=TLSRPTv1" + _WSP + r"*;")
_SUPPORTED = ("mailto:", "https:")


@dataclass(frozen=True, slots=True)
class TlsRptRecord:
    """A valid TLS-RPT record: the ``mailto:`` and ``https:`` report URIs, in order."""

    rua: tuple[str, ...]
    ignored_rua: tuple[str, ...] = ()  # URIs of other schemes (ignored, §3)
    extensions: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), compare=False)


def parse_tlsrpt_record(text: str | bytes) -> TlsRptRecord:
    """Parse one TLS-RPT TXT record (strings already joined); raise :class:`TlsRptRecordError` if invalid."""
    if isinstance(text, bytes | bytearray | memoryview):
        try:
            text = bytes(text).decode("ascii")
        except UnicodeDecodeError:
            raise TlsRptRecordError("the TLS-RPT record is not US-ASCII") from None
    if not isinstance(text, str):
        raise TlsRptRecordError(f"a TLS-RPT record must be str or bytes, not {type(text).__name__}")
    if not text.startswith("v=TLSRPTv1"):
        raise TlsRptRecordError("the TLS-RPT record does not begin with v=TLSRPTv1 (RFC 8460 §3)")
    rua: list[str] | None = None
    extensions: dict[str, str] = {}
    for item in split_record(text, "v=TLSRPTv1", TlsRptRecordError, "RFC 8460 §3"):
        if _FIELD.fullmatch(item) is None:
            raise TlsRptRecordError(f"invalid field {item[:80]!r} in the TLS-RPT record (RFC 8460 §3 grammar)")
        name, _, value = item.partition("=")
        if name == "rua":
            # "rua=..." also has the shape of an extension; the first rua field must be a valid URI list.
            if rua is None:
                if _RUA_FIELD.fullmatch(item) is None:
                    raise TlsRptRecordError(f"invalid rua {value[:200]!r}: URIs, with ',' '!' ';' percent-encoded")
                rua = _RUA_VALUE.split(value)
        else:
            extensions.setdefault(name, value)
    if rua is None:
        raise TlsRptRecordError("the TLS-RPT record has no rua field (RFC 8460 §3)")
    supported = tuple(uri for uri in rua if uri.lower().startswith(_SUPPORTED))
    if not supported:
        raise TlsRptRecordError(f"no mailto: or https: URI in rua={','.join(rua)[:200]} (RFC 8460 §3)")
    ignored = tuple(uri for uri in rua if uri not in supported)
    return TlsRptRecord(supported, ignored, MappingProxyType(extensions))


def is_tlsrpt_record(record: str | bytes) -> bool:
    """Does this TXT record claim to be a TLS-RPT record (begin with ``v=TLSRPTv1`` ``*WSP`` ``;``)?"""
    text = record.decode("ascii", "replace") if isinstance(record, bytes | bytearray | memoryview) else record
    return isinstance(text, str) and _PREFIX.match(text) is not None


def select_tlsrpt_record(records: Iterable[str | bytes]) -> TlsRptRecord | None:
    """RFC 8460 §3's multiple-record rule: the one valid ``v=TLSRPTv1;`` record, else None."""
    return select_one(records, is_tlsrpt_record, parse_tlsrpt_record)


def explain_tlsrpt_records(records: Iterable[str | bytes]) -> tuple[TlsRptRecord | None, str | None]:
    """:func:`select_tlsrpt_record` and, when it gives None, why."""
    return explain_one(
        records, is_tlsrpt_record, parse_tlsrpt_record, kind="TLS-RPT", prefix="v=TLSRPTv1;", section="RFC 8460 §3"
    )
