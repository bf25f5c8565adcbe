"""The ``exim`` map: Exim's ``${readsocket}`` asks the socketmap listener which MX hosts it may use (docs/exim.md).

A request ``exim example.com`` is answered with :mod:`~mtasts.socketmap.exim_answers`' replies: ``OK`` and the MX
hosts an enforce policy allows, ``NOTFOUND `` (no policy, testing, none) or ``TEMP`` — never ``NOTFOUND`` for a
domain whose enforce policy is known when anything fails on the way (THE ONE RULE of docs/decisions.md).

:func:`exim_request` is the server's synchronous step: a domain known to need no MX hosts (no policy, testing,
none, in the cache) is answered at once, any other becomes an :class:`EximLookup` for :meth:`EximMap.answer`,
which looks the policy up (the same lookup as the ``postfix`` map's) and, under enforce, the domain's MX hosts —
through the policy resolver's DNS servers, at most ``dns_limit`` queries at a time.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

from ..dns import GatedResolver, find_mx
from ..domain import normalize_domain
from ..errors import DomainError, MXPermanentFailure, MXTransientFailure
from ..policy import Mode, Policy
from ..resolver import NOT_CACHED, LookupStatus, NotCached, PolicyResolver
from .answers import (
    NOTFOUND_NETSTRING,
    TEMP_DNS_NETSTRING,
    TEMP_INTERNAL_NETSTRING,
    TEMP_LOCAL_NETSTRING,
    TEMP_PENDING_NETSTRING,
    parse_key,
)
from .exim_answers import TEMP_MX_LOOKUP_NETSTRING, TEMP_NO_MATCH_NETSTRING, TEMP_NO_MX_NETSTRING, exim_reply

__all__ = ["EximAnswer", "EximLookup", "EximMap", "Outcome", "exim_request"]

log = logging.getLogger("mtasts.socketmap")


class EximLookup(str):
    """A normalised domain whose ``exim`` answer needs a lookup (:meth:`EximMap.answer`)."""

    __slots__ = ()


def exim_request(cached_policy: Callable[[str], Policy | NotCached | None], key: bytes) -> bytes | EximLookup:
    """The reply to ``exim <key>`` when the cache settles it (``NOTFOUND``), else the domain to look up.

    Keys are read as the ``postfix`` map reads them (:func:`~mtasts.socketmap.answers.parse_key`): an address
    literal, a malformed or undecodable key never has a policy. A cached enforce policy still needs the MX hosts.
    """
    try:
        domain = parse_key(key.decode())
        if domain is None:
            return NOTFOUND_NETSTRING
        policy = cached_policy(domain)
        normalized = normalize_domain(domain)
    except (UnicodeDecodeError, DomainError):
        return NOTFOUND_NETSTRING
    if policy is None or (policy is not NOT_CACHED and policy.mode is not Mode.ENFORCE):
        return NOTFOUND_NETSTRING
    return EximLookup(normalized)


class Outcome(enum.Enum):
    """What an answer counts as in the server's counters."""

    ANSWERED = "answered"  # OK, NOTFOUND, or TEMP because no MX host matches (the policy's verdict)
    TIMEOUT = "timeout"  # still running after the request timeout (TEMP)
    DEFERRED = "deferred"  # cannot be answered now: a local fault, a DNS failure (TEMP)
    ERROR = "error"  # an internal error (TEMP)


@dataclass(frozen=True, slots=True)
class EximAnswer:
    netstring: bytes
    outcome: Outcome = Outcome.ANSWERED


class EximMap:
    """Answers ``exim`` requests with ``resolver``'s policies and the domains' MX hosts.

    MX lookups go to ``resolver.dns_resolver`` (the world options ``--nameserver`` included), at most
    ``dns_limit`` at a time, each waiting at most ``dns_wait`` seconds for its turn. Nothing is cached here: the
    policy is the resolver's (cached), the MX RRset is asked per request (a local caching resolver keeps it), so
    ties between equal MX preferences are shuffled per request (``rng``), as RFC 5321 §5.1 wants.
    """

    def __init__(
        self, resolver: PolicyResolver, *, dns_limit: int = 64, dns_wait: float = 30.0, rng: random.Random | None = None
    ) -> None:
        self.resolver = resolver
        self._dns = GatedResolver(resolver.dns_resolver, dns_limit, dns_wait)
        self._rng = rng or random.Random()

    async def answer(self, domain: str, *, timeout: float) -> EximAnswer:
        """The reply for the normalised ``domain``: ``TEMP`` when it takes longer than ``timeout`` seconds or fails
        on this side; never raises."""
        try:
            async with asyncio.timeout(timeout):
                return await self._answer(domain)
        except TimeoutError:
            log.info("exim lookup for %s still running after %g s: answered TEMP", domain, timeout)
            return EximAnswer(TEMP_PENDING_NETSTRING, Outcome.TIMEOUT)
        except Exception:
            log.exception("exim lookup for %s failed", domain)
            return EximAnswer(TEMP_INTERNAL_NETSTRING, Outcome.ERROR)

    async def _answer(self, domain: str) -> EximAnswer:
        try:
            lookup = await self.resolver.lookup(domain)
        except DomainError:
            return EximAnswer(NOTFOUND_NETSTRING)
        if lookup.defer:  # a local fault, or a DNS failure under dns_error = "defer": never NOTFOUND
            log.info("policy lookup for %s: %s (%s): answered TEMP", domain, lookup.status, lookup.error)
            reply = TEMP_LOCAL_NETSTRING if lookup.status == LookupStatus.LOCAL_ERROR else TEMP_DNS_NETSTRING
            return EximAnswer(reply, Outcome.DEFERRED)
        policy = lookup.policy
        if policy is None or policy.mode is not Mode.ENFORCE:
            return EximAnswer(NOTFOUND_NETSTRING)
        try:
            mx = await find_mx(self._dns, domain, rng=self._rng)
        except MXTransientFailure as exc:
            log.info("exim lookup for %s (enforce): %s: answered TEMP", domain, exc.message)
            return EximAnswer(TEMP_MX_LOOKUP_NETSTRING, Outcome.DEFERRED)
        except MXPermanentFailure as exc:
            log.info("exim lookup for %s (enforce): %s: answered TEMP", domain, exc.message)
            return EximAnswer(TEMP_NO_MX_NETSTRING, Outcome.DEFERRED)
        reply = exim_reply(policy, mx.hosts)
        if reply == TEMP_NO_MATCH_NETSTRING:
            log.info("exim lookup for %s (enforce): none of the MX hosts %s matches the policy", domain, mx.hosts)
        return EximAnswer(reply)
