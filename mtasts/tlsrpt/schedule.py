"""When a day's TLS-RPT reports are sent (RFC 8460 §4.1): after the UTC day ends, at a randomised time. Pure.

§4.1: "To avoid unintentionally overloading the system processing the reports, the reports should be delivered
after some delay, perhaps several hours", with the example of "a random delay of up to four hours"
(``random(1, 14400)`` seconds). If every sender sent at 00:00 UTC, every collector would take the whole
Internet's reports in the same minute.

:class:`SendSchedule` is that rule as arithmetic: day ``D``'s report for a Policy Domain is due at the end of
``D`` plus ``delay`` plus an offset in ``[0, window)``. The offset is not drawn from a random generator at each
run: it is derived from a hash of the sender's identity (``seed``: the report's contact-info), the day and the
Policy Domain (docs/decisions.md) — so

* it looks random to the collectors (spread over the window, different for every sender),
* it is stable: the same sender computes the same time in every run, every process and after a restart, so a
  cron job or a fleet sharing a store never jitters a report back and forth, and tests are deterministic;
* the reports of one sender to many domains are spread over the window too, not sent in one burst (a collector
  serving many domains gets them one by one).
"""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import dataclass

from .._checks import check_seconds
from ..errors import UsageError

__all__ = ["DEFAULT_SEND_DELAY", "DEFAULT_SEND_WINDOW", "SendSchedule", "day_number", "day_of"]

_EPOCH = datetime.date(1970, 1, 1)

#: Seconds after the end of the UTC day before any report of that day goes out: room for other processes to flush
#: the day's last counts into a shared store.
DEFAULT_SEND_DELAY = 3600.0
#: The randomised part (§4.1's example: up to four hours).
DEFAULT_SEND_WINDOW = 14400.0


def day_number(day: datetime.date | int) -> int:
    """A UTC day as the number of days since 1970-01-01 (the counters' and the store's day key)."""
    return day if isinstance(day, int) else (day - _EPOCH).days


def day_of(number: int) -> datetime.date:
    """The UTC day of a day number (:func:`day_number`'s inverse)."""
    return _EPOCH + datetime.timedelta(days=number)


@dataclass(frozen=True, slots=True)
class SendSchedule:
    """Day ``D``'s reports are due at ``end of D (UTC) + delay + offset``, ``0 <= offset < window``. Pure.

    ``seed``: who sends (different senders get different offsets; the same one always the same).
    ``window=0`` makes every report due exactly ``delay`` after midnight.
    """

    delay: float = DEFAULT_SEND_DELAY
    window: float = DEFAULT_SEND_WINDOW
    seed: str = ""

    def __post_init__(self) -> None:
        check_seconds("send delay", self.delay)
        check_seconds("send window", self.window)
        if self.delay + self.window > 86400:
            raise UsageError("send delay + send window must be at most a day (86400 s): a report goes out the next day")

    def offset(self, day: datetime.date | int, policy_domain: str = "") -> float:
        """The randomised part for ``day`` (a date, or a day number since 1970-01-01) and ``policy_domain``:
        whole seconds in ``[0, window)``, from a hash of the seed, the day and the domain."""
        if self.window < 1:
            return 0.0
        number = day_number(day)
        digest = hashlib.blake2b(f"{self.seed}\0{number}\0{policy_domain}".encode(), digest_size=8).digest()
        return float(int.from_bytes(digest, "big") % int(self.window))

    def due_at(self, day: datetime.date | int, policy_domain: str = "") -> float:
        """When the report of ``day`` for ``policy_domain`` may be sent first (epoch seconds)."""
        number = day_number(day)
        return (number + 1) * 86400 + self.delay + self.offset(number, policy_domain)
