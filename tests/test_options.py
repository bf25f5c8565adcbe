"""The one ``HOST:PORT`` parser (mtasts/options.py) used by every option and TOML key that takes an address."""

from __future__ import annotations

import pytest

from mtasts.errors import MTASTSError, UsageError
from mtasts.options import format_host_port, parse_host_port

GOOD = [
    # text, ip_only, port_zero, expected
    ("127.0.0.1", True, False, ("127.0.0.1", 53)),
    ("127.0.0.1:5353", True, False, ("127.0.0.1", 5353)),
    ("[::1]:5353", True, False, ("::1", 5353)),
    ("[::1]", True, False, ("::1", 53)),
    ("2001:db8::1", True, False, ("2001:db8::1", 53)),  # bare IPv6 with ip_only: an address, default port
    ("localhost", False, False, ("localhost", 53)),
    ("localhost:8461", False, False, ("localhost", 8461)),
    ("127.0.0.1:0", False, True, ("127.0.0.1", 0)),
    ("127.0.0.1:65535", False, False, ("127.0.0.1", 65535)),
]

BAD = [
    # text, ip_only, port_zero, part of the message
    ("", False, False, "no host"),
    (":53", False, False, "no host"),
    ("[]:53", True, False, "no host"),
    ("[::1", True, False, "use HOST:PORT"),
    ("[::1]x", True, False, "use HOST:PORT"),
    ("::1", False, False, "write IPv6 addresses as [::1]"),
    ("dns.example:53", True, False, "is not an IP address"),
    ("127.0.0.1:0", False, False, "a port is 1 to 65535"),
    ("127.0.0.1:65536", False, True, "a port is 0 to 65535"),
    ("127.0.0.1:-1", False, False, "bad port"),
    ("127.0.0.1:５３", False, False, "bad port"),  # non-ASCII digits are not a port
    ("127.0.0.1:", False, False, "bad port"),
]


@pytest.mark.parametrize(("text", "ip_only", "port_zero", "expected"), GOOD)
def test_parse_host_port_accepts(text: str, ip_only: bool, port_zero: bool, expected: tuple[str, int]) -> None:
    assert parse_host_port(text, what="x", default_port=53, ip_only=ip_only, port_zero=port_zero) == expected


@pytest.mark.parametrize(("text", "ip_only", "port_zero", "message"), BAD)
def test_parse_host_port_rejects_with_a_usage_error(text: str, ip_only: bool, port_zero: bool, message: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_host_port(text, what="--nameserver", default_port=53, ip_only=ip_only, port_zero=port_zero)
    assert message in str(caught.value)
    assert "--nameserver" in str(caught.value)
    assert isinstance(caught.value, MTASTSError) and isinstance(caught.value, ValueError)


@pytest.mark.parametrize(("host", "port"), [("127.0.0.1", 8461), ("::1", 8461), ("mail.example", 25)])
def test_format_host_port_reads_back(host: str, port: int) -> None:
    assert parse_host_port(format_host_port(host, port), what="x", default_port=1) == (host, port)
