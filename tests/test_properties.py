"""Property tests (hypothesis): the parsers raise only their own errors; round trips; matching vs a reference."""

from __future__ import annotations

import string

from hypothesis import assume, example, given
from hypothesis import strategies as st

from mtasts import (
    MAX_MAX_AGE,
    Mode,
    Policy,
    PolicyError,
    TxtRecordError,
    mx_matches,
    parse_policy,
    parse_txt_record,
    select_txt_record,
)

# -- generators --------------------------------------------------------------------------------------------------

LDH = string.ascii_letters + string.digits
label = st.builds(
    lambda first, middle, last: first + middle + last if middle or last else first,
    st.sampled_from(LDH),
    st.text(LDH + "-", max_size=6),
    st.sampled_from(LDH),
).filter(lambda s: "--" not in s[2:4] or s.lower().startswith("xn--"))
hostname = st.lists(label, min_size=1, max_size=4).map(".".join).filter(lambda n: not n.rsplit(".", 1)[-1].isdigit())
pattern = st.one_of(hostname, hostname.map(lambda h: "*." + h))

ext_name = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,31}\Z").filter(
    lambda n: n not in {"version", "mode", "mx", "max_age"}
)
vchar = st.characters(min_codepoint=0x21, max_codepoint=0x10FFFF, exclude_categories=("Cs",)).filter(
    lambda c: c != "\x7f"
)
# sts-policy-ext-value: vchar, then any run of (spaces, vchar) pairs — never a leading or trailing space.
ext_value = st.builds(
    lambda first, rest: first + "".join(spaces + char for spaces, char in rest),
    vchar,
    st.lists(st.tuples(st.text(" ", max_size=2), vchar), max_size=5),
)

valid_policy = st.builds(
    lambda mode, mx, max_age, ext: Policy(mode, mx if mode is not Mode.NONE or mx else [], max_age, ext),
    st.sampled_from(Mode),
    st.lists(pattern, min_size=1, max_size=5),
    st.integers(min_value=0, max_value=MAX_MAX_AGE),
    st.dictionaries(ext_name, ext_value, max_size=4),
)

# Text built from the grammar's own pieces finds more interesting failures than random text alone.
policy_fragment = st.sampled_from(
    [
        "version", "mode", "mx", "max_age", "STSv1", "enforce", "testing", "none", ":", ": ", " ", "\t",
        "\n", "\r\n", "\r", "*.", ".", "example.com", "0", "86400", "9999999999", "\ufeff", "é", "\x00", "x_y",
    ]
)  # fmt: skip
policy_like = st.lists(policy_fragment, max_size=40).map("".join)
txt_fragment = st.sampled_from(["v=STSv1", "v=STSv10", "id=", "abc", "1", ";", " ", "\t", "=", "x", "é", "-", "_"])
txt_like = st.lists(txt_fragment, max_size=20).map("".join)

# -- the parsers raise nothing but their own errors -------------------------------------------------------------


@given(st.one_of(st.text(), st.binary(), policy_like, policy_like.map(lambda s: s.encode("utf-8", "surrogatepass"))))
@example("version: STSv1\nmode: enforce\nmx: a\ud800\nmax_age: 1\n")
def test_parse_policy_raises_only_policy_error(body: str | bytes) -> None:
    try:
        policy = parse_policy(body)
    except PolicyError as exc:
        assert exc.result_type == "sts-policy-invalid"
    else:
        assert parse_policy(policy.to_text()) == policy


@given(st.one_of(st.text(), st.binary(), txt_like, txt_like.map(str.encode)))
def test_parse_txt_record_raises_only_txt_record_error(text: str | bytes) -> None:
    try:
        record = parse_txt_record(text)
    except TxtRecordError:
        pass
    else:
        assert 1 <= len(record.id) <= 32 and record.id.isalnum() and record.id.isascii()


@given(st.lists(st.one_of(st.text(), st.binary(), txt_like), max_size=4))
def test_select_txt_record_never_raises(records: list[str | bytes]) -> None:
    select_txt_record(records)


# -- round trip --------------------------------------------------------------------------------------------------


@given(valid_policy, st.sampled_from(["\n", "\r\n"]))
def test_to_text_round_trips(policy: Policy, newline: str) -> None:
    assert parse_policy(policy.to_text(newline)) == policy
    assert parse_policy(policy.to_text(newline).encode("utf-8")) == policy


# -- matching agrees with a simple reference ---------------------------------------------------------------------


def reference_match(pattern: str, host: str) -> bool:
    """RFC 8461 §4.1 written as plainly as possible."""
    pattern, host = pattern.lower(), host.lower()
    if host.endswith("."):
        host = host[:-1]
    host_labels = host.split(".")
    pattern_labels = pattern.split(".")
    if pattern_labels[0] == "*":
        return (
            len(host_labels) == len(pattern_labels) and host_labels[0] != "" and host_labels[1:] == pattern_labels[1:]
        )
    return host_labels == pattern_labels


@st.composite
def pattern_and_host(draw: st.DrawFn) -> tuple[str, str]:
    pat = draw(pattern)
    base = pat[2:] if pat.startswith("*.") else pat
    host = draw(
        st.one_of(
            st.just(base),
            label.map(lambda lbl: f"{lbl}.{base}"),
            st.tuples(label, label).map(lambda ls: f"{ls[0]}.{ls[1]}.{base}"),
            hostname,
        )
    )
    if draw(st.booleans()):
        host = host.upper() if draw(st.booleans()) else host.swapcase()
    if draw(st.booleans()):
        host += "."
    return pat, host


@given(pattern_and_host())
def test_mx_matches_agrees_with_reference(case: tuple[str, str]) -> None:
    pat, host = case
    assume(len(host.rstrip(".")) <= 253)
    expected = reference_match(pat, host)
    assert mx_matches(pat, host) is expected
    policy = Policy(Mode.ENFORCE, [pat], 1)
    assert policy.matches(host) is expected
