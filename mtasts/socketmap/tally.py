"""The socketmap server's answers by kind and its lookup latency, counted so that a cache hit pays nothing.

Every request is counted once (``SocketmapServer.requests``, as before). A cache hit answered ``OK secure ...``
— the hot path — counts nothing more: its kind is what is left once every other answer has been counted where it
is made (:meth:`Tally.answers`). The other answers are counted by one increment each, where they are produced:
NOTFOUND, PERM, the quick path's TEMP and the DANE replies (:attr:`Tally.notfound` ...); a request that needs
a lookup is counted when its lookup starts (:attr:`Tally.lookups`) and its answer, of any kind, when the lookup
ends (:meth:`Tally.answered`, which also observes the latency). So a request whose connection closed before its
lookup ended is counted in no answer, and lookups in flight are in none yet.

**A reply made anywhere else must be counted where it is made** (one of the counters below), or it is counted
``secure``: ``tests/test_metrics.py`` checks the counts against the replies of every kind of request.

Pure: no I/O, no clock (the server measures the durations).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Final

__all__ = ["ANSWERS", "LATENCY_BUCKETS", "Tally", "answer_kind"]

#: The answer kinds (the label ``answer`` of ``mtasts_socketmap_requests_total``).
ANSWERS: Final = ("secure", "notfound", "temp", "perm", "dane")

#: Upper bounds (seconds) of the latency histogram's buckets; a cache hit counts in the first.
LATENCY_BUCKETS: Final = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def answer_kind(reply: bytes) -> str:
    """The kind of an encoded reply (a netstring, ``b"12:OK dane-only,"``): one of :data:`ANSWERS`.

    ``OK dane-only`` is ``dane``; any other ``OK`` answer is ``secure`` (the only other one the server gives).
    """
    payload = reply[reply.find(b":") + 1 :]
    if payload.startswith(b"OK "):
        return "dane" if payload.startswith(b"OK dane-only") else "secure"
    if payload.startswith(b"NOTFOUND"):
        return "notfound"
    if payload.startswith(b"PERM"):
        return "perm"
    return "temp"  # TEMP (and anything unexpected: Postfix would defer on it)


@dataclass(slots=True)
class Tally:
    """The counters of one server (see the module docs); read at scrape time by :meth:`answers`."""

    # Answers made without a lookup (each counted where it is made), but the secure cache hits
    notfound: int = 0
    temp: int = 0
    perm: int = 0
    dane: int = 0
    # Requests handed to a lookup, and the answers of the lookups that ended, by kind
    lookups: int = 0
    looked_up: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ANSWERS, 0))
    # The lookups' latency: a count per bucket of LATENCY_BUCKETS (and one beyond the last), and their sum
    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    seconds: float = 0.0
    # The server's other counters (SocketmapServer.errors, .timeouts, .deferred), kept here: fewer attributes on
    # the server keep its instance attributes in CPython's fast layout (see SocketmapServer.__init__)
    errors: int = 0
    timeouts: int = 0
    deferred: int = 0

    def answered(self, reply: bytes, seconds: float) -> None:
        """A lookup ended with ``reply`` after ``seconds``."""
        self.looked_up[answer_kind(reply)] += 1
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.seconds += seconds

    def answers(self, requests: int) -> dict[str, int]:
        """Requests answered so far, by kind, out of ``requests`` received: the secure cache hits are the rest."""
        quick = {"notfound": self.notfound, "temp": self.temp, "perm": self.perm, "dane": self.dane}
        counts = {kind: quick.get(kind, 0) + self.looked_up[kind] for kind in ANSWERS}
        counts["secure"] += max(0, requests - self.lookups - sum(quick.values()))
        return counts

    def latency(self, requests: int) -> tuple[list[int], float]:
        """Cumulative bucket counts (the last is +Inf, every answer) and the sum of seconds: the lookups as
        measured, the requests answered at once (not looked up) in the first bucket, as 0 seconds."""
        hits = max(0, requests - self.lookups)
        cumulative, total = [], hits
        for count in self.buckets:
            total += count
            cumulative.append(total)
        return cumulative, self.seconds
