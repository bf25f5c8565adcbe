"""RFC 8461 §3.1: the _mta-sts TXT record (checklist items 5-13, corner cases C20, C21)."""

from __future__ import annotations

import pytest

from mtasts import MTASTSError, TxtRecord, TxtRecordError, parse_txt_record, select_txt_record


@pytest.mark.parametrize(
    ("text", "expected_id"),
    [
        ("v=STSv1; id=20160831085700Z;", "20160831085700Z"),
        ("v=STSv1;id=a", "a"),
        ("v=STSv1 ; id=a", "a"),  # WSP before ";" is sts-field-delim (erratum 6285)
        ("v=STSv1; foo=bar; id=1", "1"),
        ("v=STSv1; id=" + "Z" * 32, "Z" * 32),
        ("v=STSv1;\tid=a\t;\t", "a"),
        ("v=STSv1; id=a; id=b", "a"),  # first duplicate wins (§3.2 last paragraph)
        ("v=STSv1; id=a; id=not-an-id", "a"),  # later duplicates are ignored, whatever they hold
        ("v=STSv1; id=1; ext.name-x_y=!\"#$%&'()*+,-./0123456789:<>?@[\\]^_`{|}~", "1"),
    ],
)
def test_valid_records(text: str, expected_id: str) -> None:
    assert parse_txt_record(text).id == expected_id
    assert parse_txt_record(text.encode("ascii")).id == expected_id


@pytest.mark.parametrize(
    "text",
    [
        "",
        "v=STSv1",
        "v=STSv1;",
        "v=STSv1; id=",
        "v=STSv1; id=" + "a" * 33,
        "v=STSv1; id=abc-def",
        "v=STSv1; id=abc.def",
        "v=STSv1; id=2024-01-01T00:00:00Z",
        "V=STSv1; id=1",
        "v=stsv1; id=1",
        "v=STSv10; id=1",
        "id=1; v=STSv1",
        " v=STSv1; id=1",
        "v=STSv1; id=1;;",
        "v=STSv1;; id=1",
        "v=STSv1; id=1; x=a b",
        "v=STSv1; id=1; novalue",
        "v=STSv1; id=1; x=a=b",
        "v=STSv1; id=1; _x=1",
        "v=STSv1; id=1; " + "x" * 33 + "=1",
        "v=STSv1; id=é1",
        "v=STSv1; id=a_b; id=1",  # decisions table: the first id must itself be valid
        "v=STSv1; id=1\x00",
        "v=STSv1; id=1\n",
        "v=STSv1\x0b; id=1",
        "v=STSv1; foo=bar",  # no id
        "v=STSv1; id=1 ",  # WSP after the last field belongs to a delimiter, and there is none
        "v=STSv1; id=1" + "; id=1" * 40 + "; !",  # failed in exponential time before (docs/fuzzing.md)
    ],
)
def test_invalid_records(text: str) -> None:
    with pytest.raises(TxtRecordError):
        parse_txt_record(text)


def test_non_ascii_bytes_are_invalid() -> None:
    with pytest.raises(TxtRecordError, match="US-ASCII"):
        parse_txt_record(b"v=STSv1; id=1; x=\xff")


def test_wrong_type_is_a_typed_error() -> None:
    with pytest.raises(TxtRecordError):
        parse_txt_record(42)  # type: ignore[arg-type]


def test_txt_record_error_is_an_mtasts_error_without_result_type() -> None:
    with pytest.raises(MTASTSError) as info:
        parse_txt_record("v=STSv1")
    assert info.value.result_type is None


def test_extensions_are_kept_first_wins_and_id_is_exact() -> None:
    record = parse_txt_record("v=STSv1; a=1; id=AbC; a=2; b=3")
    assert record.id == "AbC"
    assert dict(record.extensions) == {"a": "1", "b": "3"}
    assert record != parse_txt_record("v=STSv1; id=abc")  # ids are case-sensitive (§3.1, C3)
    assert record == TxtRecord("AbC")
    assert hash(record) == hash(TxtRecord("AbC"))


def test_record_is_immutable() -> None:
    record = parse_txt_record("v=STSv1; id=1")
    with pytest.raises(AttributeError):
        record.id = "2"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        (["v=spf1 -all", "v=STSv1; id=1"], "1"),
        (["v=STSv1; id=1", "v=STSv1; id=2"], None),
        (["v=STSv1; id=1", "v=STSv1; id=1"], None),
        (["v=STSv10; id=1"], None),
        (["v=STSv10; id=1", "v=STSv1; id=2"], "2"),
        (["v=STSv1 ; id=1"], "1"),  # ABNF-valid; kept as an STS record (decisions: erratum 6285)
        (["v=STSv1", "v=STSv1; id=2"], "2"),  # "v=STSv1" alone does not begin with "v=STSv1;": discarded
        (["v=STSv1;", "v=STSv1; id=2"], None),  # two STS records, one invalid: no policy
        (["v=STSv1; id=bad-id"], None),
        ([b"v=STSv1; id=", b"x"], None),  # callers join strings; these are two records
        ([b"v=STSv1; id=x", b"\xff\xfe"], "x"),  # a non-ASCII unrelated record is just discarded
        ([], None),
    ],
)
def test_select_txt_record(records: list[str | bytes], expected: str | None) -> None:
    record = select_txt_record(records)
    assert (record.id if record else None) == expected


def test_select_accepts_any_iterable() -> None:
    record = select_txt_record(r for r in ["v=STSv1; id=gen"])
    assert record is not None and record.id == "gen"
