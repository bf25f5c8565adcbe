"""What is never recorded: the delivery of a TLS-RPT report itself (RFC 8460 §3).

§3: "When sending failure reports via SMTP, Sending MTAs MUST deliver reports despite any TLS-related failures
and SHOULD NOT include this SMTP session in the next report." Otherwise every report mailed to a domain with a
broken MX would be the next day's failure in the next report — a report loop.

Two ways a report's session can reach a recorder, two guards:

* **While it is being sent** — :meth:`~mtasts.tlsrpt.transport.ReportSender.send` runs inside
  :func:`report_delivery`. Anything it calls, and anything those call (the ``mailer`` hook, a
  :func:`~mtasts.delivery.deliver` wired with ``reporter=recorder.record_attempt``, a resolver wired with
  ``on_fetch_failure=``), sees :func:`in_report_delivery` true, and
  :meth:`~mtasts.tlsrpt.recorder.TLSReporter.record` counts nothing then. The flag lives in a
  :class:`contextvars.ContextVar`: it belongs to the task sending the report (and to tasks it starts), so the
  ordinary deliveries running at the same time in the same process are counted as always.
* **Later, from a queue** — a ``mailer`` that only queues the message returns before the message is sent. The
  message says what it is: every report carries ``TLS-Report-Domain`` (§5.3 MUST).
  :func:`is_report_message` tells, and :meth:`~mtasts.tlsrpt.recorder.TLSReporter.reporter_for` gives
  ``deliver()`` no reporter for it.
"""

from __future__ import annotations

import contextlib
import contextvars
import email.message
import re
from collections.abc import Callable, Iterator

__all__ = ["in_report_delivery", "is_report_message", "report_delivery"]

_SENDING_REPORT: contextvars.ContextVar[bool] = contextvars.ContextVar("mtasts_tlsrpt_sending_report", default=False)

# A top-level header line naming the field (§5.3: "These message header fields MUST be included").
_REPORT_HEADER = re.compile(rb"(?im)^TLS-Report-Domain[ \t]*:")


@contextlib.contextmanager
def report_delivery() -> Iterator[None]:
    """Everything run inside (in this task, and in tasks started from it) is the delivery of a report."""
    token = _SENDING_REPORT.set(True)
    try:
        yield
    finally:
        _SENDING_REPORT.reset(token)


#: ``in_report_delivery()``: True while a report is being delivered (inside :func:`report_delivery`), so record
#: nothing. The context variable's own ``get`` — no Python frame on the recording path (``TLSReporter.record``).
in_report_delivery: Callable[[], bool] = _SENDING_REPORT.get


def is_report_message(message: bytes | email.message.Message) -> bool:
    """True for a TLS-RPT report message (it has a ``TLS-Report-Domain`` header, §5.3). Only the header block of
    ``bytes`` is read."""
    if isinstance(message, email.message.Message):
        return message.get("TLS-Report-Domain") is not None
    if not isinstance(message, bytes | bytearray | memoryview):
        return False
    data = bytes(message)
    end = min((i for i in (data.find(b"\r\n\r\n"), data.find(b"\n\n")) if i >= 0), default=len(data))
    return _REPORT_HEADER.search(data, 0, end) is not None
