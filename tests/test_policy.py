"""RFC 8461 §3.2: the policy file (checklist items 32-37, corner cases C1, C3, C5, C6, C8, C12, C15, C16, C22)."""

from __future__ import annotations

import pickle

import pytest

from mtasts import MAX_MAX_AGE, Mode, Policy, PolicyError, parse_policy

BASE = "version: STSv1\nmode: enforce\nmx: mx.example.com\nmax_age: 86400\n"


def body_with(line: str) -> str:
    return BASE + line + "\n"


@pytest.mark.parametrize(
    "extra",
    [
        "foo_bar: baz qux ✓",  # unknown field, UTF-8 in an extension value (item 37)
        "x: a b  c",  # internal spaces in an extension value
        "mode: bogus",  # a later duplicate is ignored, whatever its value (decisions table)
        "max_age: not-a-number",
        "version: STSv9",
        "a" * 32 + ": v",  # longest extension name
        "x.y-z_1: v",
        "x:v",
    ],
)
def test_valid_extra_lines(extra: str) -> None:
    policy = parse_policy(body_with(extra))
    assert policy.mode is Mode.ENFORCE
    assert policy.max_age == 86400


@pytest.mark.parametrize(
    "extra",
    [
        "x: a\tb",  # HTAB is a CTL, not allowed inside an extension value
        "x: \x7f",
        "x:",
        "x: ",
        "a" * 33 + ": v",
        "_x: v",
        "x : v",
        "\tx: v",
        "mode: ",  # a later duplicate must still be a syntactically valid field
        "mx: a.example.com, b.example.com",
        "mx: a.example.com b.example.com",
        "mx: *example.com",
        "mx: *",
        "mx: *.",
        "mx: mail*.example.com",
        "mx: -a.example.com",
        "mx: a-.example.com",
        "mx: _x.example.com",
        "mx: a..example.com",
        "mx: a.example.com..",
        "mx: " + "a" * 64 + ".example.com",
        "mx: " + ".".join(["a" * 60] * 5),  # 304 characters
        "mx: [192.0.2.1]",
        "mx: 2001:db8::1",
        "x: a\ud800b",  # a lone surrogate is not UTF-8
    ],
)
def test_invalid_extra_lines(extra: str) -> None:
    with pytest.raises(PolicyError):
        parse_policy(body_with(extra))


def test_error_names_the_line_and_result_type() -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy("version: STSv1\nmode: enforce\nmx: bad_host.example\nmax_age: 1\n")
    assert info.value.line == 3
    assert "line 3" in str(info.value)
    assert info.value.result_type == "sts-policy-invalid"


def test_mx_lines_accumulate_in_file_order() -> None:
    policy = parse_policy("mx: b.example\nversion: STSv1\nmx: *.A.example\nmode: testing\nmx: c.example\nmax_age: 5\n")
    assert policy.mx == ("b.example", "*.a.example", "c.example")
    assert policy.mode is Mode.TESTING


def test_mode_none_keeps_valid_mx_lines_and_rejects_invalid_ones() -> None:
    assert parse_policy("version: STSv1\nmode: none\nmx: a.example\nmax_age: 1\n").mx == ("a.example",)
    with pytest.raises(PolicyError):
        parse_policy("version: STSv1\nmode: none\nmx: a b\nmax_age: 1\n")


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0", 0), ("0000000000", 0), ("31557600", 31557600), ("31557601", MAX_MAX_AGE), ("9999999999", MAX_MAX_AGE)],
)
def test_max_age_bounds(value: str, expected: int) -> None:
    assert parse_policy(f"version: STSv1\nmode: none\nmax_age: {value}\n").max_age == expected


@pytest.mark.parametrize("value", ["", "-1", "+5", "1e6", "0x10", "12345678901", "١٢", "1 2", "86400s"])
def test_max_age_invalid(value: str) -> None:
    with pytest.raises(PolicyError):
        parse_policy(f"version: STSv1\nmode: none\nmax_age: {value}\n")


@pytest.mark.parametrize(
    "body",
    [
        "\n" + BASE,  # blank first line
        BASE.replace("\n", "\n\n"),  # blank lines between fields
        BASE.replace("\n", "\r\n") + "\r\n",
        BASE + " \t \n\n",  # whitespace-only lines
        "\ufeff" + BASE,
    ],
)
def test_tolerated_blank_lines_and_bom(body: str) -> None:
    assert parse_policy(body) == parse_policy(BASE)
    assert parse_policy(body.encode("utf-8")) == parse_policy(BASE)


@pytest.mark.parametrize(
    "body",
    [
        b"\xef\xbb\xbf\xef\xbb\xbf" + BASE.encode(),  # only one BOM is stripped
        BASE.encode() + b"x: \xff\n",  # invalid UTF-8
        BASE.encode() + b"x: \xc3\n",  # truncated UTF-8 sequence
        BASE.encode() + b"x: \xed\xa0\x80\n",  # UTF-8-encoded surrogate
        ("version: STSv1\nmode: enforce\nmx: bücher.example\nmax_age: 1\n").encode(),
    ],
)
def test_invalid_encodings(body: bytes) -> None:
    with pytest.raises(PolicyError):
        parse_policy(body)


@pytest.mark.parametrize("body", [None, 3, ["version: STSv1"]])
def test_wrong_types_are_typed_errors(body: object) -> None:
    with pytest.raises(PolicyError):
        parse_policy(body)  # type: ignore[arg-type]


def test_extensions_first_wins_in_file_order() -> None:
    policy = parse_policy(BASE + "b: 1\na: 2\nb: 3\n")
    assert list(policy.extensions.items()) == [("b", "1"), ("a", "2")]


def test_policy_is_immutable_hashable_and_slotted() -> None:
    policy = parse_policy(BASE)
    with pytest.raises(AttributeError):
        policy.mode = Mode.NONE  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del policy.mx
    assert not hasattr(policy, "__dict__")
    with pytest.raises(TypeError):
        policy.extensions["x"] = "y"  # type: ignore[index]
    assert {policy: 1}[parse_policy(BASE)] == 1
    assert policy != parse_policy(BASE.replace("86400", "86401"))
    assert policy != parse_policy(BASE + "x: 1\n")
    assert parse_policy(BASE + "a: 1\nb: 2\n") == parse_policy(BASE + "b: 2\na: 1\n")
    assert policy != "not a policy"


def test_policy_pickles() -> None:
    policy = parse_policy(BASE + "x: é\n")
    assert pickle.loads(pickle.dumps(policy)) == policy


def test_constructor_validates_like_the_parser() -> None:
    policy = Policy(Mode.ENFORCE, ["MX.Example.com."], 40_000_000, {"x": "1"})
    assert policy.mx == ("mx.example.com",)
    assert policy.max_age == MAX_MAX_AGE
    assert Policy("none", (), 0).mode is Mode.NONE
    for bad in [
        lambda: Policy("reject", ["a.example"], 1),
        lambda: Policy(Mode.ENFORCE, [], 1),
        lambda: Policy(Mode.ENFORCE, "a.example", 1),
        lambda: Policy(Mode.ENFORCE, ["bücher.example"], 1),
        lambda: Policy(Mode.ENFORCE, ["a.example"], -1),
        lambda: Policy(Mode.ENFORCE, ["a.example"], True),
        lambda: Policy(Mode.ENFORCE, ["a.example"], 1, {"mode": "x"}),
        lambda: Policy(Mode.ENFORCE, ["a.example"], 1, {"x": "a\tb"}),
        lambda: Policy(Mode.ENFORCE, ["a.example"], 1, version="STSv2"),
    ]:
        with pytest.raises(PolicyError):
            bad()


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_to_text_round_trips(newline: str) -> None:
    policy = parse_policy(
        "max_age: 604800\nmx: *.example.net\nmode: testing\nversion: STSv1\nmx: mail.example.com\nnote: café au lait\n"
    )
    text = policy.to_text(newline)
    assert text.startswith(f"version: STSv1{newline}mode: testing{newline}")
    assert parse_policy(text) == policy
    with pytest.raises(PolicyError):
        policy.to_text("\r")


def test_lines_are_the_tlsrpt_policy_string() -> None:
    policy = parse_policy("version: STSv1\r\nmode: testing\r\nmx: a\r\nmx: b\r\nmax_age: 604800\r\n")
    assert policy.lines() == ["version: STSv1", "mode: testing", "mx: a", "mx: b", "max_age: 604800"]


def test_long_line_of_spaces_parses_quickly() -> None:
    # Guards against a quadratic value split: 64 KiB of spaces inside one extension value.
    with pytest.raises(PolicyError):
        parse_policy(BASE + "x: a" + " " * 65536 + "\t b\n")
    assert parse_policy(BASE + "x: a" + " " * 65536 + "b\n").extensions["x"].endswith(" b")


@pytest.mark.parametrize(
    "body",
    [
        "version: STSv1\nmode: enforce\nmx: mx.example.com\nmax_age: 60\r",  # a bare CR ends the body (issue 13)
        "version: STSv1\r\nmode: enforce\r\nmx: mx.example.com\r\nmax_age: 60\r",
        "version: STSv1\nmode: enforce\nmx: mx.example.com\nmax_age: 60\n\r",
        b"version: STSv1\nmode: enforce\nmx: mx.example.com\nmax_age: 60\r",
    ],
)
def test_a_bare_cr_at_the_end_is_invalid(body: str | bytes) -> None:
    with pytest.raises(PolicyError, match="bare CR"):
        parse_policy(body)
    assert parse_policy("version: STSv1\r\nmode: enforce\r\nmx: mx.example.com\r\nmax_age: 60\r\n").max_age == 60
