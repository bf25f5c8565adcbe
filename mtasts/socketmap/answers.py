"""The socketmap answers, sans I/O: what the server says for a policy, which domain a key names, the replies.

Postfix (``socketmap_table(5)``) sends one netstring per lookup, ``<name> <key>``, and reads one netstring
back::

    OK <data>            the key was found; <data> is the TLS policy (postconf(5) smtp_tls_policy_maps)
    NOTFOUND <SP>        not found (note the trailing space)
    TEMP <reason>        a temporary error: Postfix defers the mail (and retries later)
    TIMEOUT <reason>     (not sent by this server)
    PERM <reason>        a permanent error in the request

Nothing here does I/O or imports asyncio: :mod:`mtasts.socketmap.server` answers each request with these.
"""

from __future__ import annotations

import re
from typing import Final

from ..domain import is_address_literal
from ..errors import DomainError
from ..netstring import encode
from ..policy import Mode, Policy

__all__ = [
    "NOTFOUND",
    "NOTFOUND_NETSTRING",
    "PERM_REQUEST",
    "PERM_REQUEST_NETSTRING",
    "TEMP_DNS",
    "TEMP_DNS_NETSTRING",
    "TEMP_INTERNAL",
    "TEMP_INTERNAL_NETSTRING",
    "TEMP_LOCAL",
    "TEMP_LOCAL_NETSTRING",
    "TEMP_PENDING",
    "TEMP_PENDING_NETSTRING",
    "format_policy",
    "parse_key",
    "policy_reply",
]

# The reply payloads.
NOTFOUND: Final = b"NOTFOUND "
TEMP_PENDING: Final = b"TEMP policy lookup in progress"
TEMP_INTERNAL: Final = b"TEMP internal error"
TEMP_LOCAL: Final = b"TEMP MTA-STS lookup failed on this host (local error)"
TEMP_DNS: Final = b"TEMP MTA-STS DNS lookup failed (dns_error = defer)"
PERM_REQUEST: Final = b'PERM malformed request: expected "<name> <key>"'

# The same replies as the netstrings the server writes (encoded once).
NOTFOUND_NETSTRING: Final = encode(NOTFOUND)
TEMP_PENDING_NETSTRING: Final = encode(TEMP_PENDING)
TEMP_INTERNAL_NETSTRING: Final = encode(TEMP_INTERNAL)
TEMP_LOCAL_NETSTRING: Final = encode(TEMP_LOCAL)
TEMP_DNS_NETSTRING: Final = encode(TEMP_DNS)
PERM_REQUEST_NETSTRING: Final = encode(PERM_REQUEST)

# A next-hop port after the host: digits or a service name, as Postfix accepts them ("[mx.example]:smtp").
_PORT = re.compile(r"[0-9]{1,5}|[A-Za-z][A-Za-z0-9-]{0,63}")


def format_policy(policy: Policy) -> str | None:
    """The Postfix TLS policy for ``policy``: ``secure match=... servername=hostname`` under enforce, else None.

    Patterns keep the policy's order, duplicates dropped; a ``*.`` wildcard becomes Postfix's ``.`` form.
    ``testing`` and ``none`` give None: Postfix then applies its default ``smtp_tls_security_level``.
    """
    if policy.mode is not Mode.ENFORCE:
        return None
    patterns = dict.fromkeys(p[1:] if p.startswith("*.") else p for p in policy.mx)
    return f"secure match={':'.join(patterns)} servername=hostname"


def parse_key(key: str) -> str | None:
    """The Policy Domain a socketmap key names (not yet normalised), or None when the key never has a policy.

    ``example.com``, ``example.com.``, ``[example.com]``, ``[example.com]:25``, ``example.com:25`` → the
    domain; ``.example.com`` (Postfix's parent-domain lookup, no fallback under RFC 8461 §3.4) and address
    literals ``[192.0.2.1]``, ``[IPv6:2001:db8::1]``, ``192.0.2.1``, ``2001:db8::1`` → None. Raises
    :class:`DomainError` for a malformed key (``[example.com``, ``example.com:x y``).
    """
    if key.startswith("."):
        return None
    if key.startswith("["):
        host, closed, rest = key[1:].partition("]")
        if not closed or (rest and not (rest.startswith(":") and _PORT.fullmatch(rest, 1))):
            raise DomainError(f"malformed next-hop {key[:100]!r}")
        if ":" in host or is_address_literal(host):  # [IPv6:...], [192.0.2.1]
            return None
        return host
    if ":" in key:
        if is_address_literal(key):  # a bare IPv6 address
            return None
        host, _, port = key.rpartition(":")
        if ":" in host or not _PORT.fullmatch(port):
            raise DomainError(f"malformed next-hop {key[:100]!r}")
        key = host
    if is_address_literal(key):  # a bare IPv4 address (with or without a port)
        return None
    return key


def policy_reply(policy: Policy) -> bytes:
    """The netstring answering a key whose domain has ``policy``: ``OK secure ...`` under enforce, else NOTFOUND."""
    text = format_policy(policy)
    return NOTFOUND_NETSTRING if text is None else encode(b"OK " + text.encode("ascii"))
