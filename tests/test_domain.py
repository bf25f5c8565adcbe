"""Domain input: UTS #46 to A-labels, lowercase, one trailing dot; address literals (RFC 8461 §3.4)."""

from __future__ import annotations

import pytest

from mtasts import DomainError, is_address_literal, normalize_domain


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("example.com", "example.com"),
        ("Example.COM.", "example.com"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("BÜCHER.example.", "xn--bcher-kva.example"),
        ("ＥＸＡＭＰＬＥ.com", "example.com"),  # UTS #46 maps full-width letters
        ("a-b.example", "a-b.example"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("localhost", "localhost"),
        ("1.example", "1.example"),
        ("exa\u200bmple.com", "example.com"),  # UTS #46 maps a zero-width space to nothing
    ],
)
def test_normalize_domain(name: str, expected: str) -> None:
    assert normalize_domain(name) == expected


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "..",
        "a..example",
        ".example.com",
        "example.com..",
        "a/b.example",
        "user@example.com",
        "exa mple.com",
        "example.com\n",
        "example.com\x00",
        "-a.example",
        "a-.example",
        "a_b.example",
        "*.example.com",
        "a" * 64 + ".example",
        ".".join(["a" * 63] * 4) + ".com",  # 259 characters
        "exa\u2603mple.com",  # a snowman: UTS #46 refuses it
        "\udcff.example",
    ],
)
def test_invalid_domains_raise_domain_error(name: str) -> None:
    with pytest.raises(DomainError):
        normalize_domain(name)


def test_non_str_is_a_domain_error() -> None:
    with pytest.raises(DomainError):
        normalize_domain(b"example.com")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("[192.0.2.1]", True),
        ("[IPv6:2001:db8::1]", True),
        ("192.0.2.1", True),
        ("2001:db8::1", True),
        ("example.com", False),
        ("192.0.2.1.example", False),
        (None, False),
    ],
)
def test_is_address_literal(name: str, expected: bool) -> None:
    assert is_address_literal(name) is expected


def test_error_messages_stay_small() -> None:
    with pytest.raises(DomainError) as info:
        normalize_domain("a/" * 50_000)
    assert len(str(info.value)) < 300
