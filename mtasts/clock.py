"""Time for cache decisions that never runs backwards, although the wall clock may (RFC 8461 §3.3, §5.1).

Cached policies, negative answers and back-offs are kept in absolute times of the injected wall ``clock``
(default ``time.time``: stores share those times between processes and across restarts). A wall clock can step
back — an NTP correction, a VM restored from a snapshot, an operator's ``date -s`` — and then every entry
would look younger than it is: a policy served a day past its ``max_age``, a 30-second "DNS failed" answer kept
for a day while the domain's enforce policy is ignored.

:class:`SteadyClock` reads the wall clock through an offset that absorbs backward steps. A step is seen when a
reading comes out earlier than the previous one, or when, between two full readings, the wall clock advanced
less than the monotonic clock by more than :data:`TOLERANCE` (plus 0.1 % for slewing): a step back while
nothing was read. Time then continues from the previous full reading plus the real time elapsed since,
measured on the monotonic clock, and the offset keeps it so. Entries therefore age in real elapsed time across
a step; forward jumps are taken as they come (they can only make entries expire sooner). Times handed to the
outside world (the store, :class:`~mtasts.resolver.PolicyLookup`) are converted back with :meth:`to_wall`.

Pure: both clocks are injected callables, so tests step a fake wall clock by hand.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

__all__ = ["TOLERANCE", "SteadyClock"]

log = logging.getLogger("mtasts.clock")

#: Seconds by which the wall clock may lag the monotonic clock between two readings before it counts as a step
#: (NTP slews the wall clock by at most 500 ppm; 0.1 % of the interval is allowed on top of this).
TOLERANCE = 1.0


class SteadyClock:
    """Wall-clock seconds that never decrease; see the module docs.

    The hot paths inline :meth:`now`'s common case — ``t = fast()``; ``t < last`` means a step, else
    ``last = t`` — where :attr:`fast` is the wall clock itself until an offset is needed; everything else calls
    :meth:`now`.
    """

    __slots__ = ("_mono_at_sync", "_synced", "fast", "last", "monotonic", "offset", "steps", "wall")

    def __init__(self, wall: Callable[[], float], monotonic: Callable[[], float]) -> None:
        self.wall = wall
        self.monotonic = monotonic
        #: ``wall() + offset`` as one call: the wall clock itself while the offset is 0
        self.fast: Callable[[], float] = wall
        #: added to every wall reading: 0 until the wall clock first steps back
        self.offset = 0.0
        #: the latest time handed out (hot paths update it too)
        self.last = float("-inf")
        self._synced = float("-inf")  # the latest time handed out by now() itself ...
        self._mono_at_sync = 0.0  # ... and the monotonic reading taken with it
        #: backward steps absorbed so far
        self.steps = 0

    def now(self) -> float:
        """The current time: the wall clock plus :attr:`offset`, never earlier than an earlier reading."""
        wall = self.wall()
        mono = self.monotonic()
        t = wall + self.offset
        real = mono - self._mono_at_sync  # real seconds since the last full reading
        if t < self.last or t - self._synced < real - TOLERANCE - real / 1000:
            # The wall clock stepped back: continue from the last full reading plus the real time since (the
            # monotonic clock cannot step), and never before a reading already handed out.
            t = max(self.last, self._synced + max(0.0, real))
            step = t - wall - self.offset
            self.offset = offset = t - wall
            self.fast = lambda: self.wall() + offset
            self.steps += 1
            log.warning(
                "the wall clock stepped back by %.3f s: cache ages continue in real elapsed time "
                "(offset now %.3f s)", step, self.offset,
            )  # fmt: skip
        self.last = self._synced = t
        self._mono_at_sync = mono
        return t

    def to_wall(self, t: float) -> float:
        """A time of this clock as the wall clock shows it now (for stores and callers)."""
        return t - self.offset

    def from_wall(self, t: float) -> float:
        """A wall-clock time (a stored row, a caller's ``fetched_at``) on this clock."""
        return t + self.offset
