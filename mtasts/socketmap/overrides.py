"""Per-domain overrides, sans I/O: the operator's fixed answer for a domain, instead of discovery.

TOML (docs/operations.md, "Overrides")::

    [overrides."broken.example"]
    policy = "none"                       # as if the domain had no MTA-STS policy: NOTFOUND
    [overrides."example.net"]
    answer = "OK secure match=mx1.example.net"   # this Postfix reply, verbatim

An override wins over everything the server would otherwise say — the cache, a lookup, DANE — because it is the
operator's decision for a receiver they know (an allowlist for a broken one, a pinned answer). Domains are
normalised as requests are (:func:`~mtasts.domain.normalize_domain`: lower case, A-labels, no trailing dot).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from ..domain import normalize_domain
from ..errors import DomainError, UsageError
from ..netstring import encode

__all__ = ["MAX_ANSWER", "OVERRIDE_KINDS", "TLS_LEVELS", "Override", "check_overrides", "parse_overrides"]

#: The kinds of override, the keys of :attr:`SocketmapServer.overrides_used`.
OVERRIDE_KINDS: Final = ("none", "answer")

#: The longest reply Postfix's socketmap client accepts (socketmap_table(5): 100000 characters, not counting
#: the netstring's own framing).
MAX_ANSWER: Final = 100_000

#: Postfix's TLS security levels (postconf(5) smtp_tls_policy_maps, TLS_README): the first word after ``OK``.
TLS_LEVELS: Final = frozenset({"none", "may", "encrypt", "dane", "dane-only", "fingerprint", "verify", "secure"})

_STATUSES: Final = ("OK", "NOTFOUND", "TEMP", "PERM")


@dataclass(frozen=True, slots=True)
class Override:
    """One domain's override: ``kind`` ``"none"`` (no policy: ``NOTFOUND ``) or ``"answer"`` (``reply`` as given).

    Make one with :meth:`no_policy` or :meth:`fixed`; ``netstring`` is the reply as the server writes it.
    """

    kind: Literal["none", "answer"]
    reply: str
    netstring: bytes

    @classmethod
    def no_policy(cls) -> Override:
        """``policy = "none"``: answered ``NOTFOUND `` — Postfix applies its own default TLS level."""
        return cls("none", "NOTFOUND ", encode(b"NOTFOUND "))

    @classmethod
    def fixed(cls, reply: str) -> Override:
        """``answer = reply``: a Postfix socketmap reply (``OK <policy>``, ``NOTFOUND``, ``TEMP <why>``, ``PERM <why>``)
        sent verbatim; :class:`~mtasts.errors.UsageError` for anything Postfix would not take."""
        text = check_answer(reply)
        return cls("answer", text, encode(text.encode("ascii")))


def check_answer(reply: object) -> str:
    """``reply`` as a socketmap reply (``"NOTFOUND"`` gets its trailing space); UsageError if it is not one.

    It must start with ``OK``, ``NOTFOUND``, ``TEMP`` or ``PERM``; ``OK`` needs a Postfix TLS level
    (:data:`TLS_LEVELS`) after it; printable ASCII only (no control characters: one line); at most
    :data:`MAX_ANSWER` characters.
    """
    if not isinstance(reply, str):
        raise UsageError(f'an answer must be a string such as "OK encrypt", not {reply!r}')
    if not reply.isascii() or not reply.isprintable():
        raise UsageError(f"an answer must be printable ASCII on one line, not {reply[:100]!r}")
    if len(reply) > MAX_ANSWER:
        raise UsageError(f"an answer must be at most {MAX_ANSWER} characters (Postfix's limit), not {len(reply)}")
    status, _, data = reply.partition(" ")
    if status not in _STATUSES:
        raise UsageError(f"an answer must start with OK, NOTFOUND, TEMP or PERM, not {reply[:100]!r}")
    if status == "NOTFOUND":
        if data.strip():
            raise UsageError(f'NOTFOUND takes nothing after it, not {reply[:100]!r} (write "NOTFOUND")')
        return "NOTFOUND "
    if status == "OK":
        level = data.split(" ", 1)[0]
        if level not in TLS_LEVELS:
            raise UsageError(
                f"an OK answer must name a Postfix TLS level ({', '.join(sorted(TLS_LEVELS))}), not {reply[:100]!r}"
            )
    return reply


def parse_overrides(table: object) -> dict[str, Override]:
    """The TOML table ``[overrides]`` → normalised domain → :class:`Override`; UsageError naming the domain.

    Each entry is a table with exactly one of ``policy = "none"`` or ``answer = "<postfix reply>"``.
    """
    if not isinstance(table, dict):
        raise UsageError(f'overrides must be a table ([overrides."example.com"]), not {table!r}')
    parsed: dict[str, Override] = {}
    for domain, entry in table.items():
        if not isinstance(entry, dict):
            raise UsageError(f'override for {domain!r} must be a table with policy = "none" or answer = "...", '
                             f"not {entry!r}")  # fmt: skip
        unknown = sorted(set(entry) - {"policy", "answer"})
        if unknown or len(entry) != 1:
            raise UsageError(
                f'override for {domain!r} needs exactly one of policy = "none" or answer = "<postfix reply>"'
                + (f" (unknown: {', '.join(unknown)})" if unknown else f", not {', '.join(sorted(entry)) or 'none'}")
            )
        try:
            if "policy" in entry:
                if entry["policy"] != "none":
                    raise UsageError(f'policy must be "none" (the only policy override), not {entry["policy"]!r}')
                override = Override.no_policy()
            else:
                override = Override.fixed(entry["answer"])
        except UsageError as exc:
            raise UsageError(f"override for {domain!r}: {exc.message}") from None
        parsed[domain] = override
    return check_overrides(parsed)


def check_overrides(overrides: Mapping[str, Override]) -> dict[str, Override]:
    """``overrides`` keyed by normalised domain; UsageError naming a domain that is invalid or given twice."""
    if not isinstance(overrides, Mapping):
        raise UsageError(f"overrides must be a mapping of domain to Override, not {overrides!r}")
    checked: dict[str, Override] = {}
    for domain, override in overrides.items():
        if not isinstance(override, Override):
            raise UsageError(f"override for {domain!r} must be an Override, not {override!r}")
        try:
            key = normalize_domain(domain)
        except DomainError as exc:
            raise UsageError(f"override for {domain!r}: {exc.message}") from None
        if key in checked:
            raise UsageError(f"override for {domain!r}: {key} has an override already")
        checked[key] = override
    return checked
