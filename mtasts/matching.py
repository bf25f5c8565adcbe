"""MX host validation (RFC 8461 §4.1).

    A receiving candidate MX host is valid according to an applied MTA-STS Policy if the MX record name
    matches one or more of the "mx" fields in the applied policy. Matching is identical to the rules given in
    [RFC6125], with the restriction that the wildcard character '*' may only be used to match the entire
    left-most label in the presented identifier. Thus, the mx pattern "*.example.com" matches
    "mail.example.com" but not "example.com" or "foo.bar.example.com".

Comparison is case-insensitive (RFC 6125 §6.4.1). The host is the MX *record name* from DNS (not a CNAME
target, not a PTR name); a trailing dot is ignored; a U-label host is converted to A-labels with UTS #46.
A host that is not a valid name matches nothing.
"""

from __future__ import annotations

from .domain import is_label, normalize_domain
from .errors import DomainError

__all__ = ["host_key", "is_label", "match_key", "mx_matches"]


def host_key(host: str) -> str:
    """The form a host is compared in: lowercase A-labels, no trailing dot.

    ASCII input is only lowercased and stripped of one dot (it is compared against validated patterns, so
    invalid names simply match nothing); other input goes through UTS #46 and may raise :class:`DomainError`.
    """
    if host.isascii():
        key = host.lower()
        return key[:-1] if key.endswith(".") else key
    return normalize_domain(host)


def match_key(exact: frozenset[str], wildcard_suffixes: frozenset[str], key: str) -> bool:
    """Is the normalized host ``key`` in ``exact``, or one label + "." + one of ``wildcard_suffixes``?"""
    if key in exact:
        return True
    if not wildcard_suffixes:
        return False
    first, dot, rest = key.partition(".")
    # The wildcard stands for exactly one whole, valid label (§4.1): never empty, never "a.b", never "*".
    return bool(dot) and rest in wildcard_suffixes and first.isascii() and is_label(first)


def mx_matches(pattern: str, host: str) -> bool:
    """Does the policy ``mx`` pattern match the MX host name (RFC 8461 §4.1)?

    >>> mx_matches("*.example.com", "MAIL.example.com.")
    True
    >>> mx_matches("*.example.com", "a.b.example.com"), mx_matches("*.example.com", "example.com")
    (False, False)
    """
    if not isinstance(pattern, str) or not isinstance(host, str):
        return False
    try:
        key = host_key(host)
    except DomainError:
        return False
    if not key:
        return False
    pattern = pattern.lower()
    if pattern.endswith("."):
        pattern = pattern[:-1]
    if pattern.startswith("*."):
        return match_key(frozenset(), frozenset((pattern[2:],)), key)
    return key == pattern
