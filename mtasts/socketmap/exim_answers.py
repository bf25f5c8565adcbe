"""The ``exim`` map's answers, sans I/O: which MX hosts an enforce policy lets Exim use (docs/exim.md).

Exim has no MTA-STS client. Its configuration (docs/exim.md) asks the socketmap listener, per recipient domain,
with ``${readsocket}``: the request is the netstring ``exim <domain>``, the reply one netstring::

    OK <host>:<host>...   an enforce policy: the domain's MX hosts that the policy allows (RFC 8461 §4.1), in
                          MX order (lowest preference first, ties shuffled, RFC 5321 §5.1) — an Exim host list,
                          for a ``manualroute`` router whose transport requires verified TLS
    NOTFOUND <SP>         no policy, ``testing`` or ``none``: Exim's own routing and TLS defaults apply
    TEMP <reason>         anything else: Exim defers (an enforce domain none of whose MX hosts the policy
                          allows — RFC 8461 §5, no delivery to a non-matching MX —, a failed MX lookup, a
                          policy lookup that cannot answer now, a fault on this side)

The daemon does the RFC 8461 work (the policy, the MX lookup, the §4.1 matching: ``*.example.net`` is exactly one
leftmost label, which Exim's domain lists cannot express — their ``*.example.net`` matches any depth) and hands
Exim a plain host list. Every host in it passed :meth:`Policy.matches`, so it is a valid LDH name: nothing in it
can be read by Exim's list syntax as anything but one host name (no ``:``, space, or option word).

Nothing here does I/O: :mod:`mtasts.socketmap.exim` looks the domain up and answers with these.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from ..matching import host_key
from ..netstring import encode
from ..policy import Mode, Policy
from .answers import NOTFOUND_NETSTRING

__all__ = [
    "EXIM_MAP_NAME",
    "TEMP_MX_LOOKUP",
    "TEMP_MX_LOOKUP_NETSTRING",
    "TEMP_NO_MATCH",
    "TEMP_NO_MATCH_NETSTRING",
    "TEMP_NO_MX",
    "TEMP_NO_MX_NETSTRING",
    "allowed_hosts",
    "exim_reply",
]

#: The socketmap name of Exim's requests (``exim example.com``), compared exactly.
EXIM_MAP_NAME: Final = b"exim"

# The reply payloads of the MX step (fixed texts: Exim puts them in its log and in delay warnings to senders,
# so they name no resolver address; the daemon logs the details).
TEMP_NO_MATCH: Final = b"TEMP MTA-STS: no MX host of the domain matches its enforce policy"
TEMP_MX_LOOKUP: Final = b"TEMP MTA-STS: the MX lookup failed"
#: NXDOMAIN, a null MX (RFC 7505), no MX and no address: under an enforce policy this defers too (never a bounce
#: on a DNS answer alone, and never Exim's own routing: RFC 8461 §5) until Exim's retry rules give up.
TEMP_NO_MX: Final = b"TEMP MTA-STS: the domain has no usable MX host"

TEMP_NO_MATCH_NETSTRING: Final = encode(TEMP_NO_MATCH)
TEMP_MX_LOOKUP_NETSTRING: Final = encode(TEMP_MX_LOOKUP)
TEMP_NO_MX_NETSTRING: Final = encode(TEMP_NO_MX)


def allowed_hosts(policy: Policy, mx_hosts: Iterable[str]) -> list[str]:
    """The MX hosts, in the order given, that ``policy``'s ``mx`` patterns match (RFC 8461 §4.1), each once, as
    lowercase A-labels without a trailing dot.

    >>> from mtasts import parse_policy
    >>> policy = parse_policy("version: STSv1\\nmode: enforce\\nmx: *.example.net\\nmax_age: 86400\\n")
    >>> allowed_hosts(policy, ["mx1.example.net.", "a.b.example.net", "example.net", "MX2.example.net"])
    ['mx1.example.net', 'mx2.example.net']
    """
    allowed: dict[str, None] = {}
    for host in mx_hosts:
        if policy.matches(host):  # a valid name, then: host_key cannot fail
            allowed[host_key(host)] = None
    return list(allowed)


def exim_reply(policy: Policy | None, mx_hosts: Iterable[str]) -> bytes:
    """The netstring answering an ``exim`` request for a domain with ``policy`` and these MX hosts (in order).

    Enforce: ``OK <host>:<host>...`` (the allowed hosts), or :data:`TEMP_NO_MATCH` when none is allowed.
    No policy, ``testing``, ``none``: ``NOTFOUND `` (the MX hosts are not looked at).
    """
    if policy is None or policy.mode is not Mode.ENFORCE:
        return NOTFOUND_NETSTRING
    hosts = allowed_hosts(policy, mx_hosts)
    if not hosts:
        return TEMP_NO_MATCH_NETSTRING
    return encode(b"OK " + ":".join(hosts).encode("ascii"))
