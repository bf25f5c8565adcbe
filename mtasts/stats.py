"""What a :class:`~mtasts.resolver.PolicyResolver` counts, and how a policy change is described (sans I/O).

The resolver counts only off its hot path — a lookup that went to DNS or HTTPS, a fetch, a policy change — each
an increment of a :class:`collections.Counter`; :mod:`mtasts.socketmap.metrics` reads them at scrape time.
:func:`policy_change` names the change a fetched (or stored) policy makes to the cached one, for the resolver's
log line and counter (docs/operations.md, "Logs").
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Final

from .policy import Policy

__all__ = ["CHANGES", "ResolverStats", "cached_mode", "policy_change"]

#: The kinds of policy change (the label ``change`` of ``mtasts_policy_changes_total``).
CHANGES: Final = ("added", "new-id", "mode-change", "content-change", "expired")


@dataclass(slots=True)
class ResolverStats:
    """A resolver's counters (attribute ``PolicyResolver.stats``)."""

    #: (kind, status): lookups that went to DNS or HTTPS, one per domain in flight (shared by concurrent callers);
    #: kind is ``lookup``, ``recheck`` or ``refresh``, status a :class:`~mtasts.decision.LookupStatus` value
    lookups: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: (result, cached mode): policy fetches made (not backed off). result: ``success``, the failure's RFC 8460
    #: result type, or ``local-error`` (this host's fault); cached mode: the mode of the policy cached when the
    #: fetch began, or ``uncached``
    fetches: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: change (one of :data:`CHANGES`): policy changes seen in the cache
    changes: Counter[str] = field(default_factory=Counter)


def cached_mode(policy: Policy | None) -> str:
    """The ``cached_mode`` label: the cached policy's mode, or ``uncached``."""
    return "uncached" if policy is None else policy.mode.value


def policy_change(old: Policy | None, old_id: str | None, new: Policy, new_id: str) -> str | None:
    """What replacing the cached ``old`` (fetched under ``old_id``) with ``new`` (under ``new_id``) changes:
    ``added`` (nothing was cached), ``mode-change``, ``new-id``, ``content-change`` (the same id, another policy:
    a refresh, RFC 8461 §10.2), or None (the same policy again)."""
    if old is None:
        return "added"
    if old.mode is not new.mode:
        return "mode-change"
    if old_id != new_id:
        return "new-id"
    if old != new:
        return "content-change"
    return None
