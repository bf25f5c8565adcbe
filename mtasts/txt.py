"""The ``_mta-sts`` TXT record (RFC 8461 §3.1): parsing one record, and choosing among several.

The grammar is in :mod:`mtasts._abnf`. Rules applied here:

* the record is US-ASCII (§3.1 "MUST be US-ASCII"), begins with ``v=STSv1`` (§3.1 MUST) and is
  case-sensitive (RFC 7405 ``%s``);
* ``id`` is 1–32 ALPHA / DIGIT and compared as an exact string; unknown fields are ignored but kept as
  :attr:`TxtRecord.extensions`; of duplicated fields the first wins (§3.2, last paragraph);
* of several TXT records, those that do not begin with ``v=STSv1;`` are discarded, and unless exactly one
  remains and it is valid, the domain has no available policy (§3.1).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeVar

from . import _abnf
from .errors import MTASTSError, TxtRecordError

__all__ = ["TxtRecord", "explain_txt_records", "is_policy_id", "parse_txt_record", "select_txt_record"]

_EMPTY: Mapping[str, str] = MappingProxyType({})
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class TxtRecord:
    """A valid ``_mta-sts`` TXT record: its policy ``id`` and any extension fields (in record order)."""

    id: str
    #: Unknown fields, first occurrence of each; not part of equality (the id names the policy, §3.1).
    extensions: Mapping[str, str] = field(default_factory=lambda: _EMPTY, compare=False)


def _as_text(text: str | bytes) -> str:
    if isinstance(text, bytes | bytearray | memoryview):
        try:
            return bytes(text).decode("ascii")
        except UnicodeDecodeError:
            raise TxtRecordError("the TXT record is not US-ASCII (RFC 8461 §3.1)") from None
    if not isinstance(text, str):
        raise TxtRecordError(f"a TXT record must be str or bytes, not {type(text).__name__}")
    return text


def split_record(record: str, version: str, error: type[MTASTSError], source: str) -> list[str]:
    """The fields of ``version 1*(field-delim field) [field-delim]``, ``field-delim = *WSP ";" *WSP``.

    The shape shared by the ``_mta-sts`` (RFC 8461 §3.1) and ``_smtp._tls`` (RFC 8460 §3) records. No field may
    hold ";" or WSP, so splitting on ";" and stripping WSP recovers the fields, in linear time; each is then
    matched on its own (one regex for the whole record backtracks exponentially: see :mod:`mtasts._abnf`).
    """
    first, *fields = record.split(";")
    if first.rstrip(" \t") != version:
        raise error(f"the record does not begin with {version}; ({source}): {record[:200]!r}")
    if fields and not fields[-1].strip(" \t"):
        fields.pop()  # the optional final field-delim
    elif fields and fields[-1] != fields[-1].rstrip(" \t"):
        raise error(f"whitespace after the last field, with no ';' ({source} grammar)")
    if not fields:
        raise error(f"the record has no fields after {version} ({source})")
    return [field.strip(" \t") for field in fields]


def select_one(
    records: Iterable[str | bytes], is_candidate: Callable[[str | bytes], bool], parse: Callable[[str | bytes], R]
) -> R | None:
    """The multiple-record rule shared by RFC 8461 §3.1 and RFC 8460 §3: keep the records ``is_candidate`` accepts;
    unless exactly one is left and ``parse`` accepts it (rather than raising an MTASTSError), the answer is None."""
    return explain_one(records, is_candidate, parse, kind="", prefix="", section="")[0]


def explain_one(
    records: Iterable[str | bytes],
    is_candidate: Callable[[str | bytes], bool],
    parse: Callable[[str | bytes], R],
    *,
    kind: str,
    prefix: str,
    section: str,
) -> tuple[R | None, str | None]:
    """:func:`select_one`, with the reason when the answer is None: no candidate, several, or an invalid one.

    The one place that says why a set of TXT records holds no usable record; ``kind`` ("MTA-STS"), ``prefix``
    ("v=STSv1;") and ``section`` ("RFC 8461 §3.1") only word the reason.
    """
    every = list(records)
    candidates = [record for record in every if is_candidate(record)]
    if not candidates:
        others = f" ({len(every)} other TXT record{'s' if len(every) != 1 else ''})" if every else ""
        return None, f"no TXT record begins with {prefix}{others}"
    if len(candidates) > 1:
        return None, f"{len(candidates)} {kind} TXT records: {section} requires exactly one"
    try:
        return parse(candidates[0]), None
    except MTASTSError as exc:
        shown = candidates[0].decode("ascii", "replace") if isinstance(candidates[0], bytes) else candidates[0]
        return None, f"invalid {kind} TXT record {shown[:100]!r}: {exc.message}"


def is_policy_id(value: object) -> bool:
    """Is ``value`` a policy id: 1 to 32 letters and digits (§3.1 ``sts-id-value``)? The one rule."""
    return isinstance(value, str) and _abnf.sts_id_value.fullmatch(value) is not None


def parse_txt_record(text: str | bytes) -> TxtRecord:
    """Parse one TXT record (its character-strings already joined); raise :class:`TxtRecordError` if invalid.

    >>> parse_txt_record("v=STSv1; id=20160831085700Z;").id
    '20160831085700Z'
    """
    record = _as_text(text)
    if not record.isascii():
        raise TxtRecordError("the TXT record is not US-ASCII (RFC 8461 §3.1)")
    if not record.startswith("v=STSv1"):
        raise TxtRecordError("the TXT record does not begin with v=STSv1 (RFC 8461 §3.1)")
    fields = split_record(record, "v=STSv1", TxtRecordError, "RFC 8461 §3.1")
    policy_id: str | None = None
    extensions: dict[str, str] = {}
    for item in fields:
        if _abnf.sts_field.fullmatch(item) is None:
            raise TxtRecordError(f"invalid field {item[:80]!r} in the TXT record (RFC 8461 §3.1 grammar)")
        name, _, value = item.partition("=")
        if name == "id":
            if policy_id is None:
                if not is_policy_id(value):
                    raise TxtRecordError(f"invalid id {value[:40]!r}: 1 to 32 letters and digits (RFC 8461 §3.1)")
                policy_id = value
            continue
        extensions.setdefault(name, value)
    if policy_id is None:
        raise TxtRecordError("the TXT record has no id field (RFC 8461 §3.1)")
    return TxtRecord(policy_id, MappingProxyType(extensions) if extensions else _EMPTY)


def is_sts_record(text: str | bytes) -> bool:
    """Does this TXT record claim to be an MTA-STS record (begin with ``v=STSv1`` ``*WSP`` ``;``)?"""
    if isinstance(text, bytes | bytearray | memoryview):
        return _abnf.sts_record_prefix_bytes.match(bytes(text)) is not None
    return isinstance(text, str) and _abnf.sts_record_prefix.match(text) is not None


def select_txt_record(records: Iterable[str | bytes]) -> TxtRecord | None:
    """Apply the §3.1 multiple-record rule; return the one valid STS record, or ``None``.

    Each item is one TXT RR with its character-strings joined with no separator (§3.1 MUST). Records that do
    not begin with ``v=STSv1;`` are discarded; if not exactly one remains, or it is invalid, return ``None``:
    "senders MUST assume the recipient domain does not have an available MTA-STS Policy".
    """
    return select_one(records, is_sts_record, parse_txt_record)


def explain_txt_records(records: Iterable[str | bytes]) -> tuple[TxtRecord | None, str | None]:
    """:func:`select_txt_record` and, when it gives None, why (the same rule: ``v=STSv10`` is not an STS record)."""
    return explain_one(
        records, is_sts_record, parse_txt_record, kind="MTA-STS", prefix="v=STSv1;", section="RFC 8461 §3.1"
    )
