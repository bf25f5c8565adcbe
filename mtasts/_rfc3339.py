"""One way to write a moment: RFC 3339 ``date-time`` in UTC, whole seconds, ``Z`` (``2026-12-01T16:07:12Z``). Pure.

RFC 8460 §4.4 asks for it in reports ("Internet Date/Time Format"); the HTTP API's ``fetched_at``/``expires_at``,
``mtasts cache`` and ``mtasts tlsrpt show`` write times the same way.
"""

from __future__ import annotations

import datetime

__all__ = ["utc_timestamp"]


def utc_timestamp(seconds: float) -> str:
    """``seconds`` since the epoch (the fraction dropped) as ``YYYY-MM-DDTHH:MM:SSZ``. Raises OverflowError,
    OSError or ValueError for a time the platform cannot represent (beyond year 9999, say)."""
    return datetime.datetime.fromtimestamp(int(seconds), datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
