"""RFC 8461 §4.1: MX host validation (checklist items 41-43, corner cases C2, C3, C4)."""

from __future__ import annotations

import pytest

from mtasts import mx_matches, parse_policy


@pytest.mark.parametrize(
    ("pattern", "host", "expected"),
    [
        ("*.example.com", "mail.example.com", True),
        ("*.example.com", "MAIL.Example.COM", True),
        ("*.example.com", "mail.example.com.", True),
        ("*.Example.COM", "mail.example.com", True),
        ("*.example.com.", "mail.example.com", True),
        ("*.example.com", "example.com", False),
        ("*.example.com", "foo.bar.example.com", False),
        ("*.example.com", "mailexample.com", False),
        ("*.example.com", ".example.com", False),
        ("*.example.com", "*.example.com", False),  # "*" is not a label a host can have
        ("*.example.com", "a/b.example.com", False),
        ("*.example.com", "mail.example.com..", False),
        ("mail.example.com", "Mail.Example.Com", True),
        ("mail.example.com", "mail.example.com.evil", False),
        ("mail.example.com", "mail.example.com..", False),
        ("mail.example.com", "", False),
        ("", "", False),
        ("*.", "a.", False),
        ("*", "a", False),
        ("xn--bcher-kva.example", "BÜCHER.example", True),
        ("*.xn--bcher-kva.example", "mx.bücher.example.", True),
        ("mx.example.com", "mx.exa\u2603mple.com", False),  # UTS #46 refuses: no match, no exception
        ("mx.example.com", "mx.exam\x00ple.com", False),
    ],
)
def test_mx_matches(pattern: str, host: str, expected: bool) -> None:
    assert mx_matches(pattern, host) is expected


def test_policy_matches_any_pattern() -> None:
    policy = parse_policy("version: STSv1\nmode: enforce\nmx: mail.example.com\nmx: *.example.net\nmax_age: 1\n")
    assert policy.matches("mail.example.com")
    assert policy.matches("MX7.example.NET.")
    assert not policy.matches("example.net")
    assert not policy.matches("a.b.example.net")
    assert not policy.matches("other.example.com")
    assert not policy.matches("\udcff.example.net")  # unencodable: no match, no exception


def test_non_str_inputs_do_not_match() -> None:
    assert mx_matches(None, "a.example") is False  # type: ignore[arg-type]
    assert mx_matches("a.example", None) is False  # type: ignore[arg-type]
    policy = parse_policy("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 1\n")
    assert policy.matches(b"a.example") is False  # type: ignore[arg-type]
