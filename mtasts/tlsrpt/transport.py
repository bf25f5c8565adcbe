"""Delivering TLS-RPT aggregate reports (RFC 8460 §3, §5.3, §5.4): where to, over HTTPS or mail, first accept wins.

The I/O layer of report delivery; what it sends is built by the pure modules (:mod:`mtasts.tlsrpt.report`: the
§4.4 JSON, the §5.1 file name, the §5.2 gzip; :mod:`mtasts.tlsrpt.message`: the §5.3 mail), and when to try again
is :mod:`mtasts.tlsrpt.retry`'s (§5.5).

* **Where** (§3): the Policy Domain's ``_smtp._tls.<domain>`` TXT record lists ``rua`` URIs. :func:`discover_rua`
  queries it (character-strings joined, CNAMEs followed: :func:`mtasts.dns.query_txt`) and applies the
  multiple-record rule (:func:`~mtasts.tlsrpt.record.select_tlsrpt_record`: exactly one ``v=TLSRPTv1;`` record,
  else the domain does not implement TLS-RPT). A DNS failure is *not* "no record": :class:`RuaDiscovery` says
  which (``status`` / ``error``), so a caller can ask again later instead of dropping the report.
* **First accept wins** (§3): "the report SHOULD NOT be considered successfully delivered until one of the
  endpoints accepts delivery". :meth:`ReportSender.send` tries the URIs in their order and stops at the first
  that accepts; every attempt and its error is in the :class:`SendResult`.
* **HTTPS** (§3, §5.4): ``POST`` of the gzip file (§5.2) with ``Content-Type: application/tlsrpt+gzip`` — a media
  type, not a ``Content-Encoding``. Any 2xx is acceptance ("typically a 200 or 201"); anything else, a TLS or
  connection error, or the timeout is a failed attempt. Redirects are **not followed** (a 3xx is a failure): the
  report goes where the Policy Domain's DNS said, nowhere else. §3 says submitters MAY ignore certificate errors;
  verification stays **on** by default (``verify_https=False`` switches it off). Names are resolved through the
  same dnspython resolver as everything else (one resolver defines the world).
* **Mail** (§3, §5.3): the :mod:`~mtasts.tlsrpt.message` is sent by :func:`mtasts.delivery.deliver` with
  ``mta_sts=False`` (§5.3 "MUST NOT honor MTA-STS or DANE TLSA failures"; opportunistic TLS, plaintext as a last
  resort) and without a delivery reporter — or handed to the caller's own MTA (``mailer``). The message carries
  ``TLS-Required: No`` (RFC 8689) for the MTAs that relay it. Either way the session is not counted in the next
  report (§3 SHOULD NOT): :meth:`ReportSender.send` runs inside :func:`~mtasts.tlsrpt.exclude.report_delivery`.
  SMTP errors are mapped inside :func:`~mtasts.delivery.deliver` (:mod:`mtasts._smtp`), which never raises for
  what happens on the network.
* **DKIM** (§3): "Reports sent via SMTP MUST contain a valid DKIM signature by the reporting domain", and
  receivers MUST ignore unsigned ones. mtasts has no DKIM dependency: pass ``dkim_sign`` (message bytes in,
  signed bytes out; sign ``TLS-Report-Domain`` and ``TLS-Report-Submitter`` too, §5.3 SHOULD; never ``l=``).
  Without it reports go out unsigned and receivers may discard them.

Foreign exceptions (aiohttp, ssl, sockets, dnspython, the caller's hooks) are caught here and become attempt
errors; :meth:`ReportSender.send` and :func:`discover_rua` never raise for what happens on the network.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp
import dns.asyncresolver
import dns.exception
from aiohttp.abc import AbstractResolver, ResolveResult

from .. import dns as mtasts_dns
from .._checks import check_seconds
from ..domain import normalize_domain
from ..errors import DomainError, HostLookupError, MTASTSError, PolicyFetchError
from ..resolver import PolicyResolver
from ..tls import create_opportunistic_context
from .exclude import report_delivery
from .message import MEDIA_TYPE, build_message, check_address, mailto_recipients, sender_identity
from .record import TlsRptRecord, TlsRptRecordError, is_tlsrpt_record, parse_tlsrpt_record, select_tlsrpt_record
from .report import Report

if TYPE_CHECKING:
    from ..delivery import DeliveryResult

__all__ = ["ReportSender", "RuaDiscovery", "RuaStatus", "SendAttempt", "SendResult", "discover_rua"]

log = logging.getLogger("mtasts.tlsrpt.send")  # the name from before the split: logging configurations keep working

_HTTP_FAILURES = (aiohttp.ClientError, OSError, ValueError, EOFError, dns.exception.DNSException)


# -- discovery (§3) ----------------------------------------------------------------------------------------------


class _DnsPythonResolver(AbstractResolver):
    """aiohttp's name resolution through the caller's dnspython resolver (so one resolver defines the world).

    For the HTTPS report POST's aiohttp session (policy fetches are mtasts' own client, :mod:`mtasts.fetch`, and
    import no aiohttp); the policy-host lookup rules are :func:`mtasts.dns.resolve_addresses`'.
    """

    def __init__(self, resolver: mtasts_dns.DnsResolver) -> None:
        self._resolver = resolver

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        try:
            addresses = await mtasts_dns.resolve_addresses(self._resolver, host)
        except HostLookupError as exc:  # the policy host: a fetch failure (decisions table)
            raise PolicyFetchError(exc.message) from None
        return [
            {
                "hostname": host,
                "host": address,
                "port": port,
                "family": socket.AF_INET6 if ":" in address else socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
            for address in addresses
        ]

    async def close(self) -> None:
        return None


class RuaStatus(enum.StrEnum):
    """How :func:`discover_rua` ended."""

    FOUND = "found"  # one valid record: report to its rua
    NONE = "none"  # no v=TLSRPTv1 record (NXDOMAIN, no TXT, only other TXT records): no TLS-RPT
    INVALID = "invalid"  # several v=TLSRPTv1 records, or the one is invalid: no TLS-RPT (§3 MUST)
    ERROR = "error"  # DNS failure (SERVFAIL, timeout, ...): nothing is known, ask again later


@dataclass(frozen=True, slots=True)
class RuaDiscovery:
    """Where a Policy Domain wants its reports: ``record``, or why there is none.

    ``error`` is set only for a DNS failure (``status`` ERROR) — "unknown", unlike NONE / INVALID, which mean the
    domain does not implement TLS-RPT. ``reason`` explains every status but FOUND.
    """

    status: RuaStatus
    record: TlsRptRecord | None = None
    error: str | None = None
    reason: str | None = None

    @property
    def rua(self) -> tuple[str, ...]:
        """The ``mailto:`` and ``https:`` URIs to report to, in order (empty without a record)."""
        return self.record.rua if self.record is not None else ()


async def discover_rua(dns_resolver: dns.asyncresolver.Resolver, policy_domain: str) -> RuaDiscovery:
    """Look up ``_smtp._tls.<policy_domain>`` (RFC 8460 §3) and apply the multiple-record rule. Never raises."""
    try:
        domain = normalize_domain(policy_domain)
    except DomainError as exc:
        return RuaDiscovery(RuaStatus.NONE, reason=exc.message)
    name = f"_smtp._tls.{domain}"
    answer = await mtasts_dns.query_txt(dns_resolver, f"{name}.")
    if answer.status is mtasts_dns.TxtStatus.ERROR:
        error = f"{name}: DNS failure ({answer.error})"
        return RuaDiscovery(RuaStatus.ERROR, error=error, reason=error)
    if answer.status is not mtasts_dns.TxtStatus.FOUND:
        return RuaDiscovery(RuaStatus.NONE, reason=f"{name}: no TXT record ({answer.status})")
    record = select_tlsrpt_record(answer.records)
    if record is not None:
        return RuaDiscovery(RuaStatus.FOUND, record)
    candidates = [text for text in answer.records if is_tlsrpt_record(text)]
    if not candidates:
        return RuaDiscovery(RuaStatus.NONE, reason=f"{name}: no v=TLSRPTv1 record")
    if len(candidates) > 1:
        reason = f"{name}: {len(candidates)} v=TLSRPTv1 records, exactly one is allowed (RFC 8460 §3)"
        return RuaDiscovery(RuaStatus.INVALID, reason=reason)
    try:
        parse_tlsrpt_record(candidates[0])
    except TlsRptRecordError as exc:
        return RuaDiscovery(RuaStatus.INVALID, reason=f"{name}: {exc.message}")
    return RuaDiscovery(RuaStatus.INVALID, reason=f"{name}: invalid TLS-RPT record")  # pragma: no cover


# -- results -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendAttempt:
    """One rua URI tried by :meth:`ReportSender.send`.

    ``permanent``: trying this URI again cannot help (malformed or unsupported URI, a configuration error, a
    permanent mail failure). ``http_status``: the collector's answer, for ``https:``. ``deliveries``: one
    :class:`~mtasts.delivery.DeliveryResult` per recipient domain, for ``mailto:`` sent directly.
    """

    uri: str
    accepted: bool
    error: str | None = None
    permanent: bool = False
    http_status: int | None = None
    deliveries: tuple[DeliveryResult, ...] = ()


@dataclass(frozen=True, slots=True)
class SendResult:
    """The outcome of :meth:`ReportSender.send`: delivered once one URI accepted (§3)."""

    delivered: bool
    uri: str | None  # the URI that accepted the report
    attempts: tuple[SendAttempt, ...]

    @property
    def errors(self) -> tuple[tuple[str, str], ...]:
        """(uri, error) for every attempt that failed."""
        return tuple((a.uri, a.error) for a in self.attempts if a.error is not None)

    @property
    def should_retry(self) -> bool:
        """Not delivered, and at least one URI failed in a way that may pass later (§5.5)."""
        return not self.delivered and any(not a.permanent for a in self.attempts)


# -- sending (§5.3, §5.4) ----------------------------------------------------------------------------------------


class ReportSender:
    """Sends reports to rua URIs, first accept wins (RFC 8460 §3, §5). See the module docs.

    HTTPS: ``ssl_context`` (default: the system trust store, verifying), ``verify_https=False`` to ignore
    certificate errors (§3 MAY; ``ssl_context`` is then unused), ``timeout`` (seconds, whole request),
    ``user_agent``; names resolve through ``dns_resolver`` (default: ``resolver``'s, else the system's).

    Mail: ``submitter_domain`` (default: the domain of the report's ``contact-info``; must match it, §5.3),
    ``from_address`` (default: the report's ``contact-info``), ``dkim_sign`` (§3 MUST sign — without it receivers
    may discard the report), and either ``mailer(message, from_address, recipients)`` (hand the message to your
    MTA) or direct delivery via :func:`~mtasts.delivery.deliver` with ``mta_sts=False`` through ``resolver``'s DNS
    (default: a temporary :class:`PolicyResolver` over ``dns_resolver``), with ``port``, ``tls_context`` and
    ``local_hostname`` passed on. ``clock`` dates the messages.
    """

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        verify_https: bool = True,
        timeout: float = 60.0,
        user_agent: str = "mtasts (TLS-RPT)",
        resolver: PolicyResolver | None = None,
        dns_resolver: dns.asyncresolver.Resolver | None = None,
        submitter_domain: str | None = None,
        from_address: str | None = None,
        dkim_sign: Callable[[bytes], bytes] | None = None,
        mailer: Callable[[bytes, str, list[str]], Awaitable[None]] | None = None,
        port: int = 25,
        tls_context: ssl.SSLContext | None = None,
        local_hostname: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        check_seconds("timeout", timeout, positive=True)
        if dns_resolver is None and resolver is not None:
            dns_resolver = resolver.dns_resolver
        if verify_https:
            self._https_context = ssl_context if ssl_context is not None else _default_https_context()
        else:
            self._https_context = create_opportunistic_context()
        self._submitter = normalize_domain(submitter_domain) if submitter_domain is not None else None
        from_address = check_address(from_address) if from_address is not None else None
        self._timeout = float(timeout)
        self._user_agent = user_agent
        self._resolver = resolver
        self._dns_resolver = dns_resolver  # None: the system's, read when first needed
        self._from_address = from_address
        self._dkim_sign = dkim_sign
        self._mailer = mailer
        self._port = port
        self._tls_context = tls_context
        self._local_hostname = local_hostname
        self._clock = clock
        self._warned_unsigned = False

    async def send(self, report: Report, rua: Sequence[str]) -> SendResult:
        """Try each URI of ``rua`` in order until one accepts ``report`` (§3).

        Never raises for what happens on the way: every failure is an attempt's ``error``. Runs inside
        :func:`~mtasts.tlsrpt.exclude.report_delivery`: no recorder counts what this delivery does (§3 SHOULD
        NOT), even one wired into the ``mailer`` hook's own delivery.
        """
        if isinstance(rua, str):
            rua = [rua]
        with report_delivery():
            return await self._send(report, rua)

    async def _send(self, report: Report, rua: Sequence[str]) -> SendResult:
        attempts: list[SendAttempt] = []
        body: bytes | None = None
        session: aiohttp.ClientSession | None = None
        try:
            for uri in rua:
                scheme = uri.partition(":")[0].lower() if isinstance(uri, str) else ""
                if scheme == "https":
                    try:
                        session = session if session is not None else self._session()
                    except MTASTSError as exc:
                        attempt = SendAttempt(uri, False, exc.message)
                    else:
                        body = body if body is not None else report.gzip()
                        attempt = await self._post(session, uri, body)
                elif scheme == "mailto":
                    attempt = await self._mail(report, uri)
                else:
                    attempt = SendAttempt(str(uri), False, "unsupported URI scheme (RFC 8460 §3)", permanent=True)
                attempts.append(attempt)
                if attempt.accepted:
                    log.info("TLS-RPT report %s for %s accepted by %s", report.report_id, report.policy_domain, uri)
                    return SendResult(True, attempt.uri, tuple(attempts))
                log.info("TLS-RPT report %s: %s failed: %s", report.report_id, uri, attempt.error)
        finally:
            if session is not None:
                await session.close()
        return SendResult(False, None, tuple(attempts))

    # -- HTTPS (§5.4) ---------------------------------------------------------------------------------------------

    def _get_dns_resolver(self) -> dns.asyncresolver.Resolver:
        if self._dns_resolver is None:
            try:
                self._dns_resolver = dns.asyncresolver.Resolver()
            except (dns.exception.DNSException, OSError) as exc:
                raise MTASTSError(f"cannot read the system DNS configuration: {exc}") from None
        return self._dns_resolver

    def _session(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            resolver=_DnsPythonResolver(self._get_dns_resolver()),
            ssl=self._https_context,
            use_dns_cache=False,
            force_close=True,
        )
        return aiohttp.ClientSession(
            connector=connector,
            trust_env=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=self._timeout),
        )

    async def _post(self, session: aiohttp.ClientSession, uri: str, body: bytes) -> SendAttempt:
        """POST the gzip report; any 2xx is acceptance, a redirect is not followed (module docs)."""
        headers = {"Content-Type": MEDIA_TYPE, "User-Agent": self._user_agent}
        try:
            async with asyncio.timeout(self._timeout):
                async with session.post(uri, data=body, headers=headers, allow_redirects=False) as response:
                    status = response.status
                    if 200 <= status < 300:
                        return SendAttempt(uri, True, http_status=status)
                    error = f"HTTP {status} {response.reason or ''}".rstrip()
                    location = response.headers.get("Location")
                    if location is not None:
                        error += f" to {location[:200]!r} (redirects are not followed)"
                    return SendAttempt(uri, False, error, http_status=status)
        except TimeoutError:
            return SendAttempt(uri, False, f"no answer within {self._timeout:g} s")
        except aiohttp.InvalidURL as exc:
            return SendAttempt(uri, False, f"invalid URI: {exc}", permanent=True)
        except MTASTSError as exc:  # the host name did not resolve (_DnsPythonResolver)
            return SendAttempt(uri, False, exc.message)
        except _HTTP_FAILURES as exc:
            return SendAttempt(uri, False, _describe(exc))

    # -- mail (§5.3) ----------------------------------------------------------------------------------------------

    async def _mail(self, report: Report, uri: str) -> SendAttempt:
        try:
            recipients = mailto_recipients(uri)
            submitter, from_address = sender_identity(
                report, submitter=self._submitter, from_address=self._from_address
            )
            message = build_message(report, submitter, from_address, recipients, self._clock())
        except MTASTSError as exc:
            return SendAttempt(uri, False, exc.message, permanent=True)
        if self._dkim_sign is not None:
            try:
                signed = self._dkim_sign(message)
            except Exception as exc:  # the caller's hook: whatever it raises is this attempt's error
                return SendAttempt(uri, False, f"dkim_sign failed: {_describe(exc)}")
            if not isinstance(signed, bytes):
                return SendAttempt(uri, False, f"dkim_sign returned {type(signed).__name__}, not bytes")
            message = signed
        elif not self._warned_unsigned:
            self._warned_unsigned = True
            log.warning("TLS-RPT reports are mailed without a DKIM signature: receivers may discard them (§3)")
        if self._mailer is not None:
            return await self._hand_over(uri, message, from_address, recipients)
        return await self._deliver(uri, message, from_address, recipients)

    async def _hand_over(self, uri: str, message: bytes, from_address: str, recipients: list[str]) -> SendAttempt:
        assert self._mailer is not None
        try:
            async with asyncio.timeout(self._timeout):
                await self._mailer(message, from_address, list(recipients))
        except TimeoutError:
            return SendAttempt(uri, False, f"mailer: no answer within {self._timeout:g} s")
        except Exception as exc:  # the caller's hook: whatever it raises is this attempt's error
            return SendAttempt(uri, False, f"mailer failed: {_describe(exc)}")
        return SendAttempt(uri, True)

    async def _deliver(self, uri: str, message: bytes, from_address: str, recipients: list[str]) -> SendAttempt:
        """Direct delivery, one :func:`deliver` per recipient domain; accepted when one domain took it."""
        by_domain: dict[str, list[str]] = {}
        for recipient in recipients:
            by_domain.setdefault(recipient.rpartition("@")[2], []).append(recipient)
        if self._resolver is not None:
            results = await self._deliver_all(self._resolver, message, from_address, by_domain)
        else:
            try:
                dns_resolver = self._get_dns_resolver()
            except MTASTSError as exc:
                return SendAttempt(uri, False, exc.message)
            async with PolicyResolver(dns_resolver=dns_resolver) as resolver:
                results = await self._deliver_all(resolver, message, from_address, by_domain)
        deliveries = tuple(result for result in results if not isinstance(result, str))
        errors = [result for result in results if isinstance(result, str)]
        errors += [f"{r.status}: {r.reason}" for r in deliveries if not r.delivered]
        accepted = any(r.delivered for r in deliveries)
        # permanent: every domain failed for good (5xx, null MX, NXDOMAIN) or could not be tried (bad address)
        permanent = not accepted and all(isinstance(r, str) or r.status == "failed" for r in results)
        error = None if accepted else "; ".join(errors) or "not delivered"
        return SendAttempt(uri, accepted, error, permanent=permanent, deliveries=deliveries)

    async def _deliver_all(
        self, resolver: PolicyResolver, message: bytes, from_address: str, by_domain: dict[str, list[str]]
    ) -> list[DeliveryResult | str]:
        try:
            from ..delivery import deliver  # noqa: PLC0415 -- aiosmtplib (extra "smtp") only when mail is sent
        except ImportError as exc:
            return [f"direct mail delivery needs aiosmtplib (pip install 'mtasts[smtp]'), or pass mailer=: {exc}"]
        results: list[DeliveryResult | str] = []
        for recipients in by_domain.values():
            try:
                # §5.3: "MUST NOT honor MTA-STS or DANE TLSA failures"; no reporter: not counted in a report (§3)
                result = await deliver(
                    message,
                    recipients,
                    resolver=resolver,
                    sender=from_address,
                    port=self._port,
                    tls_context=self._tls_context,
                    local_hostname=self._local_hostname,
                    command_timeout=self._timeout,
                    mta_sts=False,
                )
            except MTASTSError as exc:
                results.append(exc.message)
                continue
            results.append(result)
        return results


# -- helpers -----------------------------------------------------------------------------------------------------


def _default_https_context() -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = max(context.minimum_version, ssl.TLSVersion.TLSv1_2)
    return context


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
