"""Domain and host names: the one normal form mtasts uses everywhere (decisions table, "domain input").

A name is converted to A-labels with UTS #46 (``idna.encode(..., uts46=True)``, non-transitional) when it holds
non-ASCII characters, lowercased, and stripped of one trailing dot. The result must be a host name in the
RFC 5321 §4.1.2 ``Domain`` syntax (letters, digits, hyphens; no leading or trailing hyphen in a label) within
the DNS length limits (RFC 1035 §2.3.4). Anything else — ``/``, ``@``, spaces, control characters, empty labels,
over-long labels, Unicode that UTS #46 refuses — raises :class:`~mtasts.errors.DomainError` before any I/O,
cache key or file name can see it.

Address literals (RFC 5321 §4.1.3, ``[192.0.2.1]``, ``[IPv6:2001:db8::1]``) have no MTA-STS policy
(RFC 8461 §3.4); :func:`is_address_literal` recognises them, and bare IP addresses too.
"""

from __future__ import annotations

import ipaddress

import idna

from . import _abnf
from .errors import DomainError

__all__ = ["is_address_literal", "is_label", "normalize_domain"]


def is_label(label: str) -> bool:
    """Is ``label`` one valid LDH label (RFC 5321 §4.1.2 sub-domain, at most 63 characters)? The one rule."""
    if len(label) > _abnf.MAX_LABEL_LENGTH:
        return False
    # Fast path: letters and digits only (callers pass ASCII, so isalnum() is exactly [A-Za-z0-9]).
    return label.isalnum() or _abnf.ldh_label.fullmatch(label) is not None


def normalize_domain(name: str) -> str:
    """Return ``name`` as lowercase A-labels without a trailing dot; raise :class:`DomainError` if invalid.

    ``Example.COM.`` → ``example.com``; ``Bücher.example`` → ``xn--bcher-kva.example``.
    """
    if not isinstance(name, str):
        raise DomainError(f"a domain name must be a str, not {type(name).__name__}")
    if name.isascii():
        ascii_name = name.lower()
    else:
        try:
            ascii_name = idna.encode(name, uts46=True, transitional=False).decode("ascii")
        except (idna.IDNAError, UnicodeError, ValueError) as exc:
            raise DomainError(f"not a valid internationalized domain name: {_shown(name)} ({exc})") from None
    if ascii_name.endswith("."):
        ascii_name = ascii_name[:-1]
    _check_host_name(ascii_name, name)
    return ascii_name


def _shown(name: str, limit: int = 100) -> str:
    """``name`` quoted for an error message, cut to ``limit`` characters (errors must stay small)."""
    return repr(name) if len(name) <= limit else f"{name[:limit]!r}... ({len(name)} characters)"


def _check_host_name(ascii_name: str, original: str) -> None:
    if not ascii_name:
        raise DomainError(f"empty domain name: {_shown(original)}")
    if len(ascii_name) > _abnf.MAX_NAME_LENGTH:
        raise DomainError(f"domain name longer than {_abnf.MAX_NAME_LENGTH} characters: {_shown(original)}")
    for label in ascii_name.split("."):
        if len(label) > _abnf.MAX_LABEL_LENGTH:
            raise DomainError(f"label longer than {_abnf.MAX_LABEL_LENGTH} characters in {_shown(original)}")
        if not is_label(label):
            raise DomainError(f"not a valid host name (RFC 5321 §4.1.2): {_shown(original)}")


def is_address_literal(name: str) -> bool:
    """True for an RFC 5321 address literal (``[192.0.2.1]``, ``[IPv6:...]``) or a bare IP address."""
    if not isinstance(name, str):
        return False
    if name.startswith("[") and name.endswith("]"):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
