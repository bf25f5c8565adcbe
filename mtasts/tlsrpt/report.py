"""RFC 8460 §4 aggregate reports: the JSON object (§4.4), its file name (§5.1) and gzip (§5.2). Pure.

    {
      "organization-name": ..., "date-range": {"start-datetime": ..., "end-datetime": ...},
      "contact-info": ..., "report-id": ...,
      "policies": [{
        "policy": {"policy-type": "sts" | "tlsa" | "no-policy-found", "policy-string": [...],
                   "policy-domain": ..., "mx-host": [...]},
        "summary": {"total-successful-session-count": n, "total-failure-session-count": n},
        "failure-details": [{"result-type": ..., "sending-mta-ip": ..., "receiving-mx-hostname": ...,
                             "receiving-mx-helo": ..., "receiving-ip": ..., "failed-session-count": n,
                             "additional-information": ..., "failure-reason-code": ...}]
      }]
    }

Choices (docs/decisions.md): a report covers one full UTC day, 00:00:00Z to 23:59:59Z (§4.1 SHOULD); ``policies``
is always a list (§4 MUST); ``mx-host`` is always a list (§4.4; erratum 6241 — the example shows a string);
``policy-string`` holds the policy's lines without terminators (§4.5); failure-detail fields that are not known
(an IP, an MX name, for a policy fetch failure) are left out rather than sent empty; names are A-labels (MUST).
"""

from __future__ import annotations

import datetime
import gzip
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .._rfc3339 import utc_timestamp
from .schedule import day_number

__all__ = ["DETAIL_FIELDS", "Report", "build_report", "day_bounds"]

#: failure-detail fields in the order they are written (§4.4)
DETAIL_FIELDS = (
    "result-type",
    "sending-mta-ip",
    "receiving-mx-hostname",
    "receiving-mx-helo",
    "receiving-ip",
    "additional-information",
    "failure-reason-code",
)


def day_bounds(day: datetime.date) -> tuple[int, int]:
    """The report period as epoch seconds: 00:00:00 and 23:59:59 UTC of ``day``."""
    start = day_number(day) * 86400
    return start, start + 86399


@dataclass(frozen=True)
class Report:
    """One aggregate report: one policy domain, one UTC day."""

    policy_domain: str
    day: datetime.date
    json: dict[str, Any]  # exactly the RFC 8460 §4.4 object
    filename: str  # §5.1: sender!policy-domain!begin!end!unique-id.json.gz

    @property
    def report_id(self) -> str:
        return str(self.json["report-id"])

    def json_bytes(self) -> bytes:
        """The I-JSON document (UTF-8, no duplicate keys)."""
        return json.dumps(self.json, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    def gzip(self) -> bytes:
        """The report compressed (§5.2 SHOULD), deterministically (no timestamp in the gzip header)."""
        return gzip.compress(self.json_bytes(), mtime=0)


def build_report(
    *,
    organization_name: str,
    contact_info: str,
    sender_domain: str,
    policy_domain: str,
    day: datetime.date,
    policies: Sequence[tuple[Mapping[str, Any], int, Sequence[tuple[Mapping[str, Any], int]]]],
) -> Report:
    """Assemble the §4.4 object from aggregated counts.

    ``policies``: for each applied policy, its ``policy`` object, the successful session count, and its failure
    details as (detail fields without the count, failed session count).
    """
    begin, end = day_bounds(day)
    report_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"tlsrpt:{sender_domain}:{policy_domain}:{day.isoformat()}"))
    entries = []
    for policy, successes, failures in policies:
        details = []
        for detail, count in failures:
            item = {name: detail[name] for name in DETAIL_FIELDS if detail.get(name) is not None}
            item["failed-session-count"] = count
            details.append(item)
        entry: dict[str, Any] = {
            "policy": dict(policy),
            "summary": {
                "total-successful-session-count": successes,
                "total-failure-session-count": sum(count for _, count in failures),
            },
        }
        if details:
            entry["failure-details"] = details
        entries.append(entry)
    document = {
        "organization-name": organization_name,
        "date-range": {"start-datetime": utc_timestamp(begin), "end-datetime": utc_timestamp(end)},
        "contact-info": contact_info,
        "report-id": report_id,
        "policies": entries,
    }
    unique = report_id.replace("-", "")[:12]
    filename = f"{sender_domain}!{policy_domain}!{begin}!{end}!{unique}.json.gz"
    return Report(policy_domain, day, document, filename)
