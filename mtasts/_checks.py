"""Argument checks shared by the constructors: a bad limit is a typed UsageError, named, at construction."""

from __future__ import annotations

import math

from .errors import UsageError

__all__ = ["check_count", "check_seconds"]


def check_seconds(name: str, value: object, *, positive: bool = False) -> float:
    """``value`` as a finite number of seconds, >= 0 (> 0 when ``positive``)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
        or (positive and value == 0)
    ):
        raise UsageError(f"{name} must be a finite number {'>' if positive else '>='} 0, not {value!r}")
    return float(value)


def check_count(name: str, value: object, *, minimum: int = 1) -> int:
    """``value`` as an integer >= ``minimum`` (booleans are not integers here)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UsageError(f"{name} must be an integer >= {minimum}, not {value!r}")
    return value
