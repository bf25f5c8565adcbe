"""The mail form of a TLS-RPT report (RFC 8460 §5.3): the ``multipart/report`` message, its headers. Pure.

Bytes in, bytes out, no I/O: the transport (:mod:`mtasts.tlsrpt.transport`) signs and sends what this builds.

* **The message** (§5.3): ``Content-Type: multipart/report; report-type="tlsrpt"`` — a human-readable
  ``text/plain`` part, then the report as an ``application/tlsrpt+gzip`` attachment (:data:`MEDIA_TYPE`, §6.5),
  base64, named :attr:`~mtasts.tlsrpt.report.Report.filename` (the §5.1 file name, built with the report in
  :mod:`mtasts.tlsrpt.report`) — as one plain quoted parameter, as in §5.3.1's example. CRLF line ends,
  7-bit (non-ASCII text encoded, so no 8BITMIME is needed), base64 lines of 76 characters (RFC 2045 §6.8).
* **The headers** (§5.3): ``TLS-Report-Domain`` (the Policy Domain, A-labels) and ``TLS-Report-Submitter``
  (MUST); the submitter MUST match the domain of the report's ``contact-info`` (:func:`sender_identity` checks
  it before anything is built); the ``Subject`` is §5.3's ``Report Domain: <d> Submitter: <s> Report-ID: <id>``
  — its ABNF asks for an RFC 5322 msg-id, so a report-id without ``@`` gets ``@<submitter>`` appended.
* **TLS-Required: No** (RFC 8689; its abstract: the field requests "that recipient-side policy mechanisms such as
  MTA-STS and [DANE] be ignored when relaying a message for which security is unimportant"): RFC 8460 §3 (MUST
  deliver reports "despite any TLS-related failures") and §5.3 (MUST NOT honor MTA-STS or DANE TLSA failures),
  carried to every MTA that relays the report — e.g. the local MTA a ``mailer=`` hands it to. RFC 8460 itself
  names no header for this (docs/decisions.md). A report is told by its ``TLS-Report-Domain`` header
  (:func:`mtasts.tlsrpt.exclude.is_report_message`), so its delivery is never recorded.
* **The addresses**: a ``mailto:`` rua URI (§3) is percent-decoded (RFC 6068) and its ``?header=...`` part
  ignored; an address that is not a plain RFC 5322 ``dot-atom@domain`` is refused, so no decoded byte can reach
  a header unsafely (no header injection). Domains become A-labels.
"""

from __future__ import annotations

import datetime
import email.policy
import email.utils
import re
import urllib.parse
from email.message import EmailMessage, MIMEPart
from typing import Any

from ..domain import normalize_domain
from ..errors import DomainError, MTASTSError, UsageError
from .report import Report

__all__ = ["MEDIA_TYPE", "build_message", "check_address", "mailto_recipients", "sender_identity"]

#: The media type of a gzip-compressed report (§5.3, §5.4, §6.5).
MEDIA_TYPE = "application/tlsrpt+gzip"

# RFC 5322 §3.2.3 dot-atom (atext): the only local parts accepted, so no decoded byte can reach a header unsafely.
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
# CRLF, non-ASCII text encoded (no 8BITMIME needed), base64 in 76-character lines (RFC 2045 §6.8) ...
_MAIL_POLICY = email.policy.SMTP.clone(cte_type="7bit")
# ... and header lines up to RFC 5322's 998, so the §5.1 file name stays one plain quoted parameter (as in
# §5.3.1) instead of RFC 2231 continuations that simple report parsers miss.
_HEADER_POLICY = _MAIL_POLICY.clone(max_line_length=998)


def check_address(address: str) -> str:
    """``dot-atom@domain`` with the domain as A-labels; raise :class:`MTASTSError` for anything else."""
    if not isinstance(address, str):
        raise MTASTSError(f"an address must be a str, not {type(address).__name__}")
    local, at, domain = address.rpartition("@")
    if not at or _DOT_ATOM.fullmatch(local) is None:
        raise MTASTSError(f"not a usable mail address: {address[:200]!r}")
    try:
        return f"{local}@{normalize_domain(domain)}"
    except DomainError as exc:
        raise MTASTSError(f"not a usable mail address: {address[:200]!r} ({exc.message})") from None


def mailto_recipients(uri: str) -> list[str]:
    """The addresses of a ``mailto:`` URI (RFC 6068): percent-decoded, ``?hfields`` ignored, each checked."""
    to = uri[len("mailto:") :].partition("?")[0].partition("#")[0]
    try:
        decoded = urllib.parse.unquote(to, errors="strict")
    except UnicodeDecodeError:
        raise MTASTSError(f"{uri[:200]!r}: the address is not UTF-8 once percent-decoded") from None
    recipients = [check_address(part.strip()) for part in decoded.split(",") if part.strip()]
    if not recipients:
        raise MTASTSError(f"{uri[:200]!r}: no address")
    return recipients


def sender_identity(report: Report, *, submitter: str | None, from_address: str | None) -> tuple[str, str]:
    """(``TLS-Report-Submitter``, ``From``) for ``report``: both must agree with its ``contact-info`` (§5.3 MUST).

    ``submitter`` (an A-label domain) defaults to the domain of the contact-info address, ``from_address`` (checked
    already) to that address. Raises :class:`UsageError` when they cannot agree.
    """
    contact = report.json.get("contact-info")
    contact_domain: str | None = None
    if isinstance(contact, str) and "@" in contact:
        try:
            contact_domain = normalize_domain(contact.rpartition("@")[2])
        except DomainError:
            contact_domain = None
    submitter = submitter or contact_domain
    if submitter is None:
        raise UsageError(f"no submitter domain: pass submitter_domain, or a contact-info address ({contact!r})")
    if contact_domain != submitter:
        raise UsageError(
            f"TLS-Report-Submitter {submitter} does not match the domain of contact-info {contact!r} "
            "(RFC 8460 §5.3 MUST)"
        )
    if from_address is None:
        assert isinstance(contact, str)  # contact_domain was found in it
        from_address = check_address(contact)
    return submitter, from_address


def _subject_report_id(report_id: str, submitter: str) -> str:
    """The §5.3 Subject's ``"<" id-left "@" id-right ">"``."""
    return f"<{report_id}>" if "@" in report_id else f"<{report_id}@{submitter}>"


def build_message(report: Report, submitter: str, from_address: str, recipients: list[str], now: float) -> bytes:
    """The §5.3 ``multipart/report; report-type="tlsrpt"`` message, CRLF line ends, ready for SMTP.

    ``now`` (epoch seconds) is the ``Date``. Raises :class:`MTASTSError` for a value no header can carry.
    """
    try:
        policy_domain = normalize_domain(report.policy_domain)
    except DomainError as exc:
        raise MTASTSError(f"report policy domain: {exc.message}") from None
    report_id = report.report_id
    message = EmailMessage(policy=_MAIL_POLICY)
    try:
        message["From"] = from_address
        message["To"] = ", ".join(recipients)
        message["Date"] = email.utils.format_datetime(datetime.datetime.fromtimestamp(now, datetime.UTC))
        message["Message-ID"] = email.utils.make_msgid("tlsrpt", domain=submitter)
        message["Subject"] = (
            f"Report Domain: {policy_domain} Submitter: {submitter} "
            f"Report-ID: {_subject_report_id(report_id, submitter)}"
        )
        message["TLS-Report-Domain"] = policy_domain
        message["TLS-Report-Submitter"] = submitter
        message["TLS-Required"] = "No"  # RFC 8689: relays too ignore MTA-STS / DANE failures
        message["MIME-Version"] = "1.0"
        message["Content-Type"] = 'multipart/report; report-type="tlsrpt"'
        human = MIMEPart(policy=_MAIL_POLICY)
        human.set_content(_human_text(report, submitter, policy_domain))
        machine = MIMEPart(policy=_MAIL_POLICY)
        machine.set_content(
            report.gzip(),
            maintype="application",
            subtype="tlsrpt+gzip",
            cte="base64",
            disposition="attachment",
            filename=report.filename,
        )
        message.set_payload([human, machine])
        return message.as_bytes(policy=_HEADER_POLICY)
    except (ValueError, TypeError) as exc:  # a header value the email package refuses (e.g. CR/LF in an id)
        raise MTASTSError(f"cannot build the report message: {exc}") from None


def _human_text(report: Report, submitter: str, policy_domain: str) -> str:
    """The first, human-readable part (§5.3)."""
    document: dict[str, Any] = report.json
    successes = failures = 0
    for entry in document.get("policies") or []:
        summary = entry.get("summary", {}) if isinstance(entry, dict) else {}
        successes += int(summary.get("total-successful-session-count", 0) or 0)
        failures += int(summary.get("total-failure-session-count", 0) or 0)
    date_range = document.get("date-range") or {}
    return (
        f"This is an aggregate TLS report (RFC 8460)\n"
        f"from {submitter} about mail to {policy_domain}.\n"
        f"\n"
        f"Organization: {document.get('organization-name', '')}\n"
        f"Period: {date_range.get('start-datetime', '')} to {date_range.get('end-datetime', '')}\n"
        f"Report-ID: {report.report_id}\n"
        f"Sessions: {successes} successful, {failures} failed\n"
        f"\n"
        f"The report is attached ({MEDIA_TYPE}):\n"
        f"{report.filename}\n"
    )
