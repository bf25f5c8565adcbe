"""Delivering TLS-RPT aggregate reports (RFC 8460 §3, §5) — the names of the three layers, importable from here.

Report delivery is split by layer (issue 14), one module per concept:

* :mod:`mtasts.tlsrpt.message` — the §5.3 ``multipart/report`` message and its headers, ``mailto:`` addresses
  (pure: bytes in, bytes out);
* :mod:`mtasts.tlsrpt.retry` — :class:`RetryPolicy`, the §5.5 schedule (pure: no clock, no state);
* :mod:`mtasts.tlsrpt.transport` — :func:`discover_rua` (§3), :class:`ReportSender`: HTTPS ``POST`` (§5.4) and
  mail (§5.3) with first accept wins (§3), the DKIM hook.

This module re-exports their public names, so ``from mtasts.tlsrpt.send import ReportSender`` keeps working.
"""

from __future__ import annotations

from .message import MEDIA_TYPE
from .retry import RetryPolicy
from .transport import ReportSender, RuaDiscovery, RuaStatus, SendAttempt, SendResult, discover_rua

__all__ = [
    "MEDIA_TYPE",
    "ReportSender",
    "RetryPolicy",
    "RuaDiscovery",
    "RuaStatus",
    "SendAttempt",
    "SendResult",
    "discover_rua",
]
