"""The socketmap server's answers by kind and its lookup latency, counted so that a cache hit pays nothing more.

Each request is counted once, by one integer increment where its answer is made — the one increment every request
paid before the answers were counted by kind (``SocketmapServer.requests`` is now their sum): a secure answer from
memory in the server's ``_secure_hits`` (an instance attribute: the hot path's), NOTFOUND, PERM, the quick path's
TEMP and ``OK dane-only`` in :attr:`Tally.notfound` ...; a request that needs a lookup in :attr:`Tally.lookups`
when it is handed to one, and its answer, of any kind, when the lookup ends (:meth:`Tally.answered`, which also
observes the latency). So a request whose connection closed before its lookup ended is counted in no answer, and
lookups in flight are in none yet.

**A reply made anywhere else on the quick path must be counted where it is made**, or the request is not counted
at all: ``tests/test_metrics.py`` checks the counts against the replies of every kind of request.

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

    # Answers made without a lookup (each counted where it is made), but the secure ones (the server's)
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

    def requests(self, secure_hits: int) -> int:
        """Requests received: answered from memory (``secure_hits`` of them secure), or handed to a lookup."""
        return secure_hits + self.notfound + self.temp + self.perm + self.dane + self.lookups

    def answers(self, secure_hits: int) -> dict[str, int]:
        """Requests answered so far, by kind (``secure_hits``: the secure answers from memory)."""
        quick = {"secure": secure_hits, "notfound": self.notfound, "temp": self.temp, "perm": self.perm,
                 "dane": self.dane}  # fmt: skip
        return {kind: quick[kind] + self.looked_up[kind] for kind in ANSWERS}

    def latency(self, secure_hits: int) -> tuple[list[int], float]:
        """Cumulative bucket counts (the last is +Inf, every answer) and the sum of seconds: the lookups as
        measured, the requests answered from memory in the first bucket, as 0 seconds."""
        hits = self.requests(secure_hits) - self.lookups
        cumulative, total = [], hits
        for count in self.buckets:
            total += count
            cumulative.append(total)
        return cumulative, self.seconds
