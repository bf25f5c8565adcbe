"""TLS reporting (RFC 8460): the ``_smtp._tls`` record, session recording, daily reports and their delivery.

See docs/tlsrpt.md. Delivery (:mod:`mtasts.tlsrpt.send`) is imported on first use: it needs aiohttp, and
aiosmtplib for ``mailto:`` reports.
"""

from __future__ import annotations

from .record import TlsRptRecord, TlsRptRecordError, parse_tlsrpt_record, select_tlsrpt_record
from .recorder import TLSReporter
from .report import Report, build_report

__all__ = [
    "Report",
    "TLSReporter",
    "TlsRptRecord",
    "TlsRptRecordError",
    "build_report",
    "parse_tlsrpt_record",
    "select_tlsrpt_record",
]
