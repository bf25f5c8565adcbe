"""The socketmap answers, sans I/O: what the server says for a policy, which domain a key names, the replies.

Postfix (``socketmap_table(5)``) sends one netstring per lookup, ``<name> <key>``, and reads one netstring
back::

    OK <data>            the key was found; <data> is the TLS policy (postconf(5) smtp_tls_policy_maps)
    NOTFOUND <SP>        not found (note the trailing space)
    TEMP <reason>        a temporary error: Postfix defers the mail (and retries later)
    TIMEOUT <reason>     (not sent by this server)
    PERM <reason>        a permanent error in the request

For Postfix >= 3.10 the answer to an enforce policy can carry the policy itself (:func:`format_tlsrpt`), as
Postfix's TLSRPT_README, "MTA-STS Support via smtp_tls_policy_maps", describes: Postfix reports TLS-RPT (RFC 8460)
results with it and, from 3.10.5 on (``smtp_tls_enforce_sts_mx_patterns = yes``, the default), enforces the
policy's own ``mx`` patterns. The server adds them for the map name :data:`TLSRPT_MAP_NAME` (postfix-tlspol's),
or for every name with ``tlsrpt = true``.

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
    "DANE_ONLY",
    "DANE_ONLY_NETSTRING",
    "NOTFOUND",
    "NOTFOUND_NETSTRING",
    "PERM_REQUEST",
    "PERM_REQUEST_NETSTRING",
    "SENDMAIL_MAP_NAME",
    "TEMP_DANE_MX",
    "TEMP_DANE_MX_NETSTRING",
    "TEMP_DNS",
    "TEMP_DNS_NETSTRING",
    "TEMP_INTERNAL",
    "TEMP_INTERNAL_NETSTRING",
    "TEMP_LOCAL",
    "TEMP_LOCAL_NETSTRING",
    "TEMP_PENDING",
    "TEMP_PENDING_NETSTRING",
    "TLSRPT_MAP_NAME",
    "format_policy",
    "format_tlsrpt",
    "parse_key",
    "policy_reply",
    "tlsrpt_reply",
]

# The reply payloads.
NOTFOUND: Final = b"NOTFOUND "
TEMP_PENDING: Final = b"TEMP policy lookup in progress"
TEMP_INTERNAL: Final = b"TEMP internal error"
TEMP_LOCAL: Final = b"TEMP MTA-STS lookup failed on this host (local error)"
TEMP_DNS: Final = b"TEMP MTA-STS DNS lookup failed (dns_error = defer)"
TEMP_DANE_MX: Final = b"TEMP DANE: the MX lookup failed"  # RFC 7672 §2.2.1: a failed MX lookup defers
#: DANE governs the domain's MX hosts (mtasts.dane.postfix_level): Postfix then verifies TLSA itself, and needs
#: smtp_dns_support_level = dnssec (docs/postfix.md, "DANE first"). Never with TLS-RPT attributes: Postfix
#: reports DANE sessions itself, and rejects the sts attributes on a non-sts level.
DANE_ONLY: Final = b"OK dane-only"
PERM_REQUEST: Final = b'PERM malformed request: expected "<name> <key>"'

# The same replies as the netstrings the server writes (encoded once).
NOTFOUND_NETSTRING: Final = encode(NOTFOUND)
TEMP_PENDING_NETSTRING: Final = encode(TEMP_PENDING)
TEMP_INTERNAL_NETSTRING: Final = encode(TEMP_INTERNAL)
TEMP_LOCAL_NETSTRING: Final = encode(TEMP_LOCAL)
TEMP_DNS_NETSTRING: Final = encode(TEMP_DNS)
TEMP_DANE_MX_NETSTRING: Final = encode(TEMP_DANE_MX)
DANE_ONLY_NETSTRING: Final = encode(DANE_ONLY)
PERM_REQUEST_NETSTRING: Final = encode(PERM_REQUEST)

#: The socketmap name whose answers carry the TLS-RPT attributes (``socketmap:inet:127.0.0.1:8461:QUERYwithTLSRPT``):
#: postfix-tlspol's, so that its users switch without editing main.cf. Compared exactly, as Postfix sends it.
TLSRPT_MAP_NAME: Final = b"QUERYwithTLSRPT"

#: The map name of sendmail 8.17's ``FEATURE(`sts')`` (its ``Ksts socket ...`` map, docs/sendmail.md): always the
#: plain MTA-STS answer — never the TLS-RPT attributes (its rules take everything after ``match=`` up to a final
#: ``servername=hostname`` as the host list) and never ``OK dane-only`` (no ``secure`` in it: sendmail would check
#: nothing, and Debian's sendmail has no DANE).
SENDMAIL_MAP_NAME: Final = b"sts"

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


# Postfix TLSRPT_README, "MTA-STS Support via smtp_tls_policy_maps" (Postfix >= 3.10): after the level and its
# matching attributes,
#   policy_type=sts                  "Specify sts or no-policy-found"
#   policy_domain=name               "The domain that the MTA-STS policy applies to"
#   mx_host_pattern=pattern          "one mx_host_pattern instance for each "mx:" feature", as written:
#                                    mx_host_pattern=*.example.net (smtp_tls_enforce_sts_mx_patterns, >= 3.10.5,
#                                    then allows exactly one label for the "*", RFC 8461 §4.1)
#   { policy_string = value }        "one policy_string instance for each MTA-STS policy feature, enclosed inside
#                                    "{" and "}" to protect whitespace"; whitespace after "{", around "=" and
#                                    before "}" is ignored. Postfix hands them to the TLS-RPT library as the
#                                    report's policy-string (RFC 8460 §4.4).
#   policy_ttl=time                  the policy's max_age: named by mtasts's API contract (../shared/api.md) and
#                                    accepted by Postfix 3.10, which marks it "(deprecated) The time value is not
#                                    used, and support for this attribute will eventually be removed" — when a
#                                    Postfix release drops it, so will this answer (docs/decisions.md).
# Not sent:
#   policy_failure=type              only for a policy that failed; such a domain is answered NOTFOUND (§3.3).
# "match=" stays: Postfix 3.10.0-3.10.4 match certificates against it, and 3.10.5+ transform the policy (match the
# MX host name, connect only to MX hosts matching a pattern) only when match= is present (smtp_tls_policy.c).
# "servername=hostname" (Postfix >= 3.4) is supported by every Postfix that reads these attributes.
# Postfix <= 3.9 rejects these attributes ("invalid attribute name"): they are opt-in (docs/postfix.md).
#
# Postfix splits the answer on spaces and commas outside braces (mystrtokq), so a policy line containing "{" or
# "}" (only an extension's value can) cannot be quoted: it is left out of the policy strings, the rest is sent.
_UNQUOTABLE = re.compile(r"[{}]")


def format_tlsrpt(policy: Policy, domain: str) -> str | None:
    """:func:`format_policy`'s answer followed by the TLS-RPT attributes of Postfix >= 3.10, or None (not enforce).

    ``domain`` is the Policy Domain, normalised (A-labels, lowercase). For RFC 8461 §3.2's example policy::

        secure match=mail.example.com:.example.net:backupmx.example.com servername=hostname policy_type=sts
        policy_domain=example.com policy_ttl=604800 mx_host_pattern=mail.example.com mx_host_pattern=*.example.net
        mx_host_pattern=backupmx.example.com { policy_string = version: STSv1 } { policy_string = mode: enforce }
        { policy_string = mx: mail.example.com } { policy_string = mx: *.example.net }
        { policy_string = mx: backupmx.example.com } { policy_string = max_age: 604800 }

    (one line). The policy strings are the policy's lines (:meth:`Policy.lines`: the fields as parsed, every
    ``mx`` line, extensions last).
    """
    text = format_policy(policy)
    if text is None:
        return None
    patterns = "".join(f" mx_host_pattern={pattern}" for pattern in dict.fromkeys(policy.mx))
    strings = "".join(f" {{ policy_string = {line} }}" for line in policy.lines() if _UNQUOTABLE.search(line) is None)
    return f"{text} policy_type=sts policy_domain={domain} policy_ttl={policy.max_age}{patterns}{strings}"


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


def tlsrpt_reply(policy: Policy, domain: str) -> bytes:
    """The netstring answering a key of ``domain`` (normalised) on the TLS-RPT map name: :func:`format_tlsrpt`'s
    answer under enforce, else NOTFOUND. Extension values may be UTF-8 (RFC 8461 §3.2 sts-policy-vchar)."""
    text = format_tlsrpt(policy, domain)
    return NOTFOUND_NETSTRING if text is None else encode(b"OK " + text.encode("utf-8"))
