"""When to try a TLS-RPT report again (RFC 8460 §5.5), and when to give up. Pure: no clock, no state.

§5.5: "the submitter SHOULD attempt redelivery for up to 24 hours after the initial attempt ... with
exponential backoff". :class:`RetryPolicy` is that schedule as arithmetic: the caller persists when the first
attempt was made and how many failed (:class:`~mtasts.tlsrpt.recorder.TLSReporter` keeps both in the store), and
asks :meth:`RetryPolicy.next_attempt`; None means give up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .._checks import check_seconds
from ..errors import UsageError

__all__ = ["RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff for up to ``give_up_after`` seconds after the first attempt (§5.5). Pure.

    The ``n``-th failed attempt is followed by a wait of ``min(first_delay * factor ** (n - 1), max_delay)``; the
    schedule counts from the first attempt, so a late run (a restart, a busy queue) does not push it back.
    """

    first_delay: float = 300.0
    factor: float = 2.0
    max_delay: float = 7200.0
    give_up_after: float = 86400.0

    def __post_init__(self) -> None:
        for name in ("first_delay", "factor", "max_delay", "give_up_after"):
            check_seconds(f"RetryPolicy.{name}", getattr(self, name))
        if self.first_delay <= 0 or self.factor < 1 or self.max_delay < self.first_delay:
            raise UsageError("RetryPolicy needs first_delay > 0, factor >= 1 and max_delay >= first_delay")

    def delay(self, attempts: int) -> float:
        """The wait after the ``attempts``-th failed attempt (1 for the first)."""
        steps = max(attempts, 1) - 1
        if steps >= self._growing_steps():
            return self.max_delay
        return min(self.first_delay * self.factor**steps, self.max_delay)

    def _growing_steps(self) -> float:
        """How many delays are below ``max_delay`` (the rest equal it)."""
        if self.first_delay >= self.max_delay:
            return 0
        if self.factor == 1:
            return math.inf
        return math.ceil(math.log(self.max_delay / self.first_delay) / math.log(self.factor))

    def offset(self, attempts: int) -> float:
        """Seconds from the first attempt to the one after ``attempts`` failed attempts (the sum of the delays)."""
        attempts = max(attempts, 0)
        growing = int(min(attempts, self._growing_steps()))
        if self.factor == 1:
            geometric = self.first_delay * growing
        else:
            geometric = self.first_delay * (self.factor**growing - 1) / (self.factor - 1)
        return geometric + (attempts - growing) * self.max_delay

    def next_attempt(self, first_attempt_at: float, attempts: int, now: float) -> float | None:
        """When to try again after ``attempts`` failed attempts, the first at ``first_attempt_at``.

        ``attempts == 0``: the first attempt is due at ``first_attempt_at``. Returns a time >= ``now`` (an
        overdue attempt is due now), or None once that would be more than ``give_up_after`` seconds after the
        first attempt: give up.
        """
        due = max(first_attempt_at + self.offset(attempts), now)
        return None if due > first_attempt_at + self.give_up_after else due
