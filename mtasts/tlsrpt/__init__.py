"""TLS reporting (RFC 8460): the ``_smtp._tls`` record, session recording, daily reports and their delivery."""

from __future__ import annotations

from .record import TlsRptRecord, TlsRptRecordError, parse_tlsrpt_record, select_tlsrpt_record

__all__ = ["TlsRptRecord", "TlsRptRecordError", "parse_tlsrpt_record", "select_tlsrpt_record"]
