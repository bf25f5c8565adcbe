"""TLS reporting (RFC 8460): the ``_smtp._tls`` record, session recording, daily reports and their delivery.

See docs/tlsrpt.md. One module per concept, the pure ones first:

* :mod:`~mtasts.tlsrpt.record` — the ``_smtp._tls`` TXT record (§3);
* :mod:`~mtasts.tlsrpt.report` — the §4.4 JSON report, its §5.1 file name and §5.2 gzip;
* :mod:`~mtasts.tlsrpt.message` — the §5.3 ``multipart/report`` mail message and its headers;
* :mod:`~mtasts.tlsrpt.retry` — the §5.5 retry schedule;
* :mod:`~mtasts.tlsrpt.schedule` — the §4.1 randomised send time of a day's reports;
* :mod:`~mtasts.tlsrpt.exclude` — what is never recorded: the delivery of a report itself (§3);
* :mod:`~mtasts.tlsrpt.recorder` — counting sessions (§4) and sending what is due, persisted in a store;
* :mod:`~mtasts.tlsrpt.transport` — rua discovery (§3), HTTPS (§5.4) and mail (§5.3) delivery.

The transport (and the message module, which it uses) is imported on first use of one of its names: it needs
aiohttp, and aiosmtplib for ``mailto:`` reports sent directly. (:mod:`mtasts.tlsrpt.send` re-exports the
delivery names under their old home.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports
from .exclude import is_report_message
from .record import TlsRptRecord, TlsRptRecordError, parse_tlsrpt_record, select_tlsrpt_record
from .recorder import FailureKey, PolicyKey, ReportOutcome, ReportStatus, TLSReporter
from .report import Report, build_report
from .retry import RetryPolicy
from .schedule import SendSchedule

if TYPE_CHECKING:
    from .message import MEDIA_TYPE, build_message
    from .transport import ReportSender, RuaDiscovery, RuaStatus, SendAttempt, SendResult, discover_rua

_LAZY = {
    "MEDIA_TYPE": "message",
    "build_message": "message",
    "ReportSender": "transport",
    "RuaDiscovery": "transport",
    "RuaStatus": "transport",
    "SendAttempt": "transport",
    "SendResult": "transport",
    "discover_rua": "transport",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)


__all__ = [
    "MEDIA_TYPE",
    "FailureKey",
    "PolicyKey",
    "Report",
    "ReportOutcome",
    "ReportSender",
    "ReportStatus",
    "RetryPolicy",
    "RuaDiscovery",
    "RuaStatus",
    "SendAttempt",
    "SendResult",
    "SendSchedule",
    "TLSReporter",
    "TlsRptRecord",
    "TlsRptRecordError",
    "build_message",
    "build_report",
    "discover_rua",
    "is_report_message",
    "parse_tlsrpt_record",
    "select_tlsrpt_record",
]
