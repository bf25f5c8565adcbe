"""Delivering one message to one domain under MTA-STS, with aiosmtplib (extra ``smtp``).

``await deliver(message, recipients, resolver=...)`` does what RFC 8461 §4, §5 and §5.1 ask of a sender:

1. the Policy Domain's policy comes from the :class:`~mtasts.resolver.PolicyResolver` (§5.1 step 1);
2. the MX hosts come from DNS through the resolver's own dnspython resolver, in preference order with ties
   shuffled (RFC 5321 §5.1); no MX record → the domain itself (implicit MX); a null MX (RFC 7505) → permanent
   failure;
3. each MX in turn (§5.1 step 2): under enforce, an MX matching no ``mx`` pattern is skipped without a
   connection (§4.1); otherwise connect, EHLO, STARTTLS with SNI = the MX name (§7.1) and the certificate
   validated (§4.2: chain, expiry, DNS-ID, no CN fallback); :func:`~mtasts.verdict.evaluate` decides:
   under enforce a failed MX is treated as unreachable — never a plaintext retry (§5, C18); under testing or
   with no policy, delivery is opportunistic (TLS without authentication if the certificate failed, plaintext if
   STARTTLS is absent) and the failure is reported;
4. when no MX could be used because of the enforce policy, the TXT record is checked once more and, if the
   policy changed, the MX list is tried once again (§5 MUST, §5.1 step 3); otherwise the message is
   **deferred** — never bounced for a policy reason (§5 SHOULD treat as transient, C19).

DANE (RFC 7672) takes precedence (RFC 8461 §2): where DANE applies to an MX, MTA-STS is not evaluated for it;
TLS is required and a failing DANE result is never overridden (no other MX policy, no plaintext). With
``dane=True`` mtasts decides and verifies DANE itself: the MX RRset, each host's addresses and its TLSA records
are asked of the resolver's dnspython resolver with the AD bit (:mod:`mtasts.dane_lookup`; that resolver must
be a local validating one), the host's state follows :mod:`mtasts.dane`'s table, and the session is judged by
:mod:`mtasts.dane_verify` (DANE-EE against the leaf, DANE-TA against the chain the server sent). A host whose
TLSA lookup fails is not used (RFC 7672 §2.1.1). With a ``dane`` callable (an MTA that does DANE itself), it
says where DANE applies and ``dane_verifier`` (or, without one, the PKIX context) judges the certificate.

Every attempt (which MX, which addresses, the verdict, the RFC 8460 result type) goes to ``reporter``.

Every SMTP call runs inside :func:`mtasts._smtp.map_smtp_errors`, the one boundary where aiosmtplib, ``ssl``,
socket and timeout exceptions become :class:`~mtasts.errors.SMTPError` subclasses (a TLS failure in STARTTLS:
:class:`~mtasts.errors.SMTPTLSError` with its RFC 8460 result type) or :class:`~mtasts.errors.LocalError`; this
module only reads those.
"""

from __future__ import annotations

import asyncio
import email.message
import email.utils
import enum
import logging
import random
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import dns.asyncresolver

try:
    import aiosmtplib
except ImportError as error:  # pragma: no cover - depends on the installed extras
    raise ImportError("mtasts.delivery needs aiosmtplib: pip install 'mtasts[smtp]'") from error

from . import dns as mtasts_dns
from ._smtp import map_smtp_errors
from .dane import HostState, TlsaRecord
from .dane_lookup import DaneResolver
from .dane_verify import peer_chain, verify_session
from .domain import is_address_literal, normalize_domain
from .errors import (
    DomainError,
    HostLookupError,
    LocalError,
    NoStartTLSError,
    SMTPError,
    SMTPRecipientsRefusedError,
    SMTPReplyError,
    SMTPTLSError,
    UsageError,
)
from .policy import Mode, Policy
from .resolver import LookupStatus, PolicyLookup, PolicyResolver
from .results import ResultType
from .tls import create_client_context, create_opportunistic_context, ensure_strict
from .verdict import Verdict, evaluate

__all__ = ["Attempt", "DeliveryResult", "DeliveryStatus", "StartTLSProbe", "deliver", "find_mx_hosts", "probe_starttls"]

# MX selection lives with the other DNS code; re-exported here, where most callers look for it.
find_mx_hosts = mtasts_dns.find_mx_hosts
_PermanentFailure = mtasts_dns.MXPermanentFailure
_TransientFailure = mtasts_dns.MXTransientFailure

log = logging.getLogger("mtasts.delivery")


class DeliveryStatus(enum.StrEnum):
    """How :func:`deliver` ended."""

    DELIVERED = "delivered"  # an MX accepted the message (for at least one recipient)
    DEFERRED = "deferred"  # transient: try again later (every policy-related failure ends here)
    FAILED = "failed"  # permanent: null MX, no such domain, or a 5xx answer from the MX


@dataclass(frozen=True, slots=True)
class Attempt:
    """One MX host tried (or skipped): what mtasts decided and what happened."""

    mx: str
    verdict: Verdict | None  # None when MTA-STS was not evaluated (DANE applied, or no connection was made)
    result_type: str | None  # RFC 8460 result type of a TLS/policy failure, None when TLS validated
    error: str | None = None  # why this MX did not take the message
    policy_domain: str = ""
    ips: tuple[str, ...] = ()  # the MX's addresses
    receiving_ip: str | None = None  # the address a session was made with
    sending_ip: str | None = None  # our side of that session
    tls: bool = False  # the message (if sent) went over TLS
    tls_failure: str | None = None  # what STARTTLS validation found, whatever the policy made of it
    delivered: bool = False
    dane: bool = False  # DANE applied to this MX (MTA-STS not evaluated)
    failure_reason_code: str | None = None  # RFC 8460 detail (OpenSSL message, mx-not-in-sts-policy, ...)
    skipped: bool = False  # never contacted (enforce and the MX matches no pattern)


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """The outcome of :func:`deliver`."""

    status: DeliveryStatus
    mx: str | None  # the MX that accepted the message
    attempts: tuple[Attempt, ...]
    reason: str | None = None
    policy: Policy | None = None  # the policy applied (the re-checked one, if it changed)
    lookup: PolicyLookup | None = None
    refused: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))  # recipient -> reply
    rechecked: bool = False  # the TXT record was re-checked after every MX failed under enforce (§5.1)

    @property
    def delivered(self) -> bool:
        return self.status is DeliveryStatus.DELIVERED


@dataclass
class _Job:
    """Everything one delivery needs, passed down the helpers."""

    message: bytes | email.message.Message
    recipients: list[str]
    sender: str
    domain: str
    resolver: PolicyResolver
    port: int
    tls_context: ssl.SSLContext
    local_hostname: str | None
    timeout: float
    dane: Callable[[str], Awaitable[bool]] | None
    dane_verifier: Callable[[str, bytes], Awaitable[str | None]] | None
    reporter: Callable[[Attempt], object] | None
    attempts: list[Attempt] = field(default_factory=list)
    dane_lookup: DaneResolver | None = None  # dane=True: the built-in RFC 7672 lookups and verification
    mx_secure: bool = False  # the MX RRset was DNSSEC-validated (dane=True)
    tlsa: dict[str, tuple[TlsaRecord, ...]] = field(default_factory=dict)  # usable records of DANE hosts

    def record(self, attempt: Attempt) -> Attempt:
        self.attempts.append(attempt)
        if self.reporter is not None:
            try:
                self.reporter(attempt)
            except Exception:
                log.exception("delivery reporter %r raised", self.reporter)
        return attempt


@dataclass
class _Outcome:
    """What one pass over the MX list produced."""

    delivered_mx: str | None = None
    refused: dict[str, str] = field(default_factory=dict)
    permanent: str | None = None  # a 5xx reply: stop, fail
    policy_blocked: bool = False  # at least one MX was refused by the enforce policy (or DANE)
    last_error: str | None = None


async def deliver(
    message: email.message.EmailMessage | bytes,
    recipients: Sequence[str],
    *,
    resolver: PolicyResolver,
    sender: str | None = None,
    port: int = 25,
    tls_context: ssl.SSLContext | None = None,
    dane: Callable[[str], Awaitable[bool]] | bool | None = None,
    reporter: Callable[[Attempt], object] | None = None,
    dane_verifier: Callable[[str, bytes], Awaitable[str | None]] | None = None,
    local_hostname: str | None = None,
    command_timeout: float = 60.0,
    next_hop: str | None = None,
    rng: random.Random | None = None,
    mta_sts: bool = True,
) -> DeliveryResult:
    """Send ``message`` to ``recipients`` (all at one domain) under that domain's MTA-STS policy.

    ``port``: every MX is contacted on it. ``tls_context``: trust store for MX certificates (default: the
    system's, TLS >= 1.2, DNS-ID only). ``dane=True``: DANE (RFC 7672) looked up and verified by mtasts (the
    resolver's dnspython resolver must be a local validating resolver: its AD bit is trusted); or a callable,
    ``dane(mx)`` → True when DANE applies to that MX, with ``dane_verifier(mx, der_certificate)`` → None if DANE
    validates, else an RFC 8460 result type (``tlsa-invalid`` ...).
    ``reporter(attempt)`` gets every :class:`Attempt` (e.g. a TLS-RPT recorder). ``local_hostname``: the EHLO
    name; ``command_timeout``: seconds for each SMTP command. ``next_hop``: a smart host
    to deliver through — its domain is then the Policy Domain (§3.4). ``rng`` orders MX hosts of equal
    preference. ``mta_sts=False`` sends without any policy (opportunistic TLS, no DANE either): only for TLS-RPT
    reports, which RFC 8460 §5.3 says to deliver despite MTA-STS and DANE failures. Raises
    :class:`MTASTSError` only for bad arguments; every delivery outcome is a :class:`DeliveryResult`.
    """
    job = _Job(
        message=message,
        recipients=list(recipients),
        sender=_sender(message, sender),
        domain=_policy_domain(recipients, next_hop),
        resolver=resolver,
        port=port,
        tls_context=ensure_strict(tls_context) if tls_context is not None else create_client_context(),
        local_hostname=local_hostname,
        timeout=command_timeout,
        dane=dane if mta_sts and callable(dane) else None,
        dane_verifier=dane_verifier,
        reporter=reporter,
    )
    if dane is True and mta_sts:
        job.dane_lookup = DaneResolver(resolver.dns_resolver, port=port)
    elif dane is not None and not isinstance(dane, bool) and not callable(dane):
        raise UsageError(f"dane must be True, False, None or a callable, not {dane!r}")
    if mta_sts:
        lookup = await resolver.lookup(job.domain)
        if lookup.defer:  # a local fault (or a DNS failure under dns_error="defer"): the policy is unknown
            reason = f"MTA-STS policy unknown now ({lookup.status}: {lookup.error}): deferred"
            return DeliveryResult(DeliveryStatus.DEFERRED, None, (), reason, None, lookup)
    else:
        lookup = PolicyLookup(job.domain, LookupStatus.NOT_APPLICABLE)
    try:
        if job.dane_lookup is not None:  # the MX RRset's AD bit decides whether DANE can apply (RFC 7672 §2.2.1)
            found = await mtasts_dns.find_mx(job.dane_lookup.resolver, job.domain, rng=rng)
            mx_hosts, job.mx_secure = found.hosts, found.secure
        else:
            mx_hosts = await find_mx_hosts(resolver.dns_resolver, job.domain, rng=rng)
    except _PermanentFailure as exc:
        return DeliveryResult(DeliveryStatus.FAILED, None, (), exc.message, lookup.policy, lookup)
    except _TransientFailure as exc:
        return DeliveryResult(DeliveryStatus.DEFERRED, None, (), exc.message, lookup.policy, lookup)

    outcome = await _try_mx_hosts(job, mx_hosts, lookup.policy)
    rechecked = False
    if outcome.delivered_mx is None and outcome.permanent is None and outcome.policy_blocked:
        # §5: "MUST NOT permanently fail to deliver messages before checking, via DNS, for the presence of an
        # updated policy"; §5.1 step 3. One re-check; a changed policy gets one more pass over the MX list.
        rechecked = True
        fresh = await resolver.recheck(job.domain)
        if fresh.policy != lookup.policy or fresh.policy_id != lookup.policy_id:
            lookup = fresh
            outcome = await _try_mx_hosts(job, mx_hosts, fresh.policy)
    return _result(job, outcome, lookup, rechecked)


def _result(job: _Job, outcome: _Outcome, lookup: PolicyLookup, rechecked: bool) -> DeliveryResult:
    attempts = tuple(job.attempts)
    refused = MappingProxyType(dict(outcome.refused))
    if outcome.delivered_mx is not None:
        return DeliveryResult(
            DeliveryStatus.DELIVERED, outcome.delivered_mx, attempts, None, lookup.policy, lookup, refused, rechecked
        )
    if outcome.permanent is not None:
        return DeliveryResult(
            DeliveryStatus.FAILED, None, attempts, outcome.permanent, lookup.policy, lookup, refused, rechecked
        )
    reason = outcome.last_error or "no MX host could be reached"
    if outcome.policy_blocked:
        reason = f"no MX host satisfied the MTA-STS policy (deferred; last: {reason})"
    return DeliveryResult(DeliveryStatus.DEFERRED, None, attempts, reason, lookup.policy, lookup, refused, rechecked)


async def _try_mx_hosts(job: _Job, mx_hosts: list[str], policy: Policy | None) -> _Outcome:
    outcome = _Outcome()
    for mx in mx_hosts:
        attempt = await _try_mx(job, mx, policy, outcome)
        job.record(attempt)
        if attempt.delivered or outcome.permanent is not None:
            break
        if (attempt.verdict is not None and not attempt.verdict.deliver) or (attempt.dane and attempt.result_type):
            outcome.policy_blocked = True
        outcome.last_error = attempt.error or outcome.last_error
    return outcome


async def _try_mx(job: _Job, mx: str, policy: Policy | None, outcome: _Outcome) -> Attempt:
    base = Attempt(mx=mx, verdict=None, result_type=None, policy_domain=job.domain)
    if job.dane_lookup is not None:
        try:
            host, _ = await job.dane_lookup.host(mx, mx_secure=job.mx_secure)
        except LocalError as exc:  # cannot tell whether DANE applies: do not use this host now
            return replace(base, dane=True, error=f"{mx}: DANE lookup failed here: {exc.message}")
        if host.state is HostState.FAILED:  # RFC 7672 §2.1.1: never fall back to MTA-STS or plaintext
            return replace(
                base,
                dane=True,
                result_type=ResultType.DNSSEC_INVALID,
                tls_failure=ResultType.DNSSEC_INVALID,
                failure_reason_code="tlsa-lookup-failed",
                error=f"{mx}: TLSA lookup failed ({host.error}): not used",
                skipped=True,
            )
        dane = host.state is HostState.DANE
        if dane:
            job.tlsa[mx] = host.records
    else:
        dane = job.dane is not None and await job.dane(mx)
    if dane:
        base = replace(base, dane=True)
    elif policy is not None and policy.mode is Mode.ENFORCE and not policy.matches(mx):
        # §4.1 under enforce: never connect to an MX outside the policy.
        verdict = evaluate(policy, mx)
        return replace(
            base,
            verdict=verdict,
            result_type=verdict.result_type,
            failure_reason_code=verdict.failure_reason_code,
            error=f"{mx} matches no mx pattern of the enforce policy",
            skipped=True,
        )
    try:
        ips = tuple(await mtasts_dns.resolve_addresses(job.resolver.dns_resolver, mx))
    except HostLookupError as exc:
        return replace(base, error=exc.message)
    base = replace(base, ips=ips)
    last = base
    for ip in ips:
        last = await _session(job, base, ip, policy, outcome)
        if last.receiving_ip is not None:
            return last  # a session was made: its outcome stands for this MX; the next address only after no connection
    return last


async def _connect(job: _Job, ip: str, mx: str) -> aiosmtplib.SMTP:
    return await _open_session(ip, job.port, job.local_hostname, job.timeout)


async def _open_session(ip: str, port: int, local_hostname: str | None, timeout: float) -> aiosmtplib.SMTP:
    """Connect and EHLO, no TLS yet (aiosmtplib's own opportunistic STARTTLS is switched off).

    Raises :class:`SMTPError` or :class:`LocalError` (:func:`map_smtp_errors`).
    """
    client = aiosmtplib.SMTP(
        hostname=ip,
        port=port,
        local_hostname=local_hostname,
        timeout=timeout,
        start_tls=False,
        use_tls=False,
    )
    with map_smtp_errors():
        await client.connect()
        await client.ehlo()
    return client


async def _starttls(client: aiosmtplib.SMTP, mx: str, context: ssl.SSLContext) -> None:
    """STARTTLS with SNI = ``mx`` (RFC 8461 §7.1) and ``context``'s checks, then EHLO again (RFC 3207 §4.2).

    Raises :class:`NoStartTLSError` (not offered, or refused with an error reply: ``starttls-not-supported``),
    :class:`SMTPTLSError` (the handshake or the certificate failed: its RFC 8460 result type) or
    :class:`LocalError`.
    """
    if not client.supports_extension("starttls"):
        raise NoStartTLSError(f"{mx} does not offer STARTTLS")
    try:
        with map_smtp_errors(tls=True):
            await client.starttls(server_hostname=mx, tls_context=context)
    except SMTPTLSError as exc:
        if exc.code is None:
            raise
        # an error reply to the STARTTLS command itself (RFC 3207 §4: 454 TLS not available ...): refused
        raise NoStartTLSError(f"{mx} refused STARTTLS: {exc.message}", code=exc.code, origin=exc.origin) from None
    with map_smtp_errors(tls=True):
        await client.ehlo()  # RFC 3207 §4.2: discard what was learned before TLS


def _describe(exc: SMTPError | LocalError) -> str:
    """``origin: message`` for an SMTP failure (as it was first reported), the message for a local fault."""
    return exc.detail if isinstance(exc, SMTPError) else exc.message


async def _session(job: _Job, base: Attempt, ip: str, policy: Policy | None, outcome: _Outcome) -> Attempt:
    """One SMTP session with ``ip``: validate TLS, decide, and send if the verdict allows."""
    mx = base.mx
    attempt = replace(base, receiving_ip=ip)
    client: aiosmtplib.SMTP | None = None
    try:
        try:
            client = await _connect(job, ip, mx)
        except (SMTPError, LocalError) as exc:
            return replace(attempt, receiving_ip=None, error=f"{mx} [{ip}]: cannot connect: {exc.message}")
        attempt = replace(attempt, sending_ip=_local_ip(client))
        tls_failure, reason_code, tls_error = await _validate_tls(job, client, mx, dane=base.dane)
        if base.dane:
            verdict = None
            may_send = tls_failure is None  # DANE applies: TLS required, its failure is never overridden
        else:
            verdict = evaluate(policy, mx, tls_failure=tls_failure)
            may_send = verdict.deliver
        attempt = replace(
            attempt,
            verdict=verdict,
            result_type=tls_failure if verdict is None else verdict.result_type,
            failure_reason_code=reason_code,
            tls=tls_failure is None,
            tls_failure=tls_failure,
        )
        if not may_send:
            return replace(attempt, error=f"{mx} [{ip}]: {tls_error or tls_failure}")
        if tls_failure is not None:
            # Opportunistic (testing / none / no policy): the session died with the failed handshake, or has
            # no TLS: reconnect, encrypt without authentication if STARTTLS is offered, else plaintext.
            _close(client)
            client, tls_used = await _opportunistic_session(job, ip, mx)
            attempt = replace(attempt, tls=tls_used)
        return await _send(job, client, attempt, outcome)
    except (SMTPError, LocalError) as exc:
        return replace(attempt, error=f"{mx} [{ip}]: {_describe(exc)}")
    finally:
        if client is not None:
            await _quit(client)


async def _validate_tls(
    job: _Job, client: aiosmtplib.SMTP, mx: str, *, dane: bool
) -> tuple[str | None, str | None, str | None]:
    """STARTTLS with full validation. Returns (result type, failure-reason-code, readable error) or Nones."""
    records = job.tlsa.get(mx) if dane else None
    verifier = job.dane_verifier if dane and records is None else None
    context = create_opportunistic_context() if verifier is not None or records is not None else job.tls_context
    try:
        await _starttls(client, mx, context)
    except NoStartTLSError as exc:
        return exc.result_type, exc.failure_reason_code, exc.message
    except SMTPTLSError as exc:
        return exc.result_type, exc.failure_reason_code, f"TLS failed: {exc.message}"
    if records is not None:  # the built-in RFC 7672 §3 verification: names and expiry only under DANE-TA
        ssl_object = client.get_transport_info("ssl_object")
        chain = peer_chain(ssl_object) if isinstance(ssl_object, ssl.SSLObject) else []
        failure = verify_session(records, chain, mx)
        if failure is not None:
            return failure[0], "dane-validation-failed", f"DANE validation failed: {failure[1]}"
    elif verifier is not None:
        certificate = _peer_certificate(client)
        result = await verifier(mx, certificate) if certificate else ResultType.TLSA_INVALID
        if result is not None:
            return result, "dane-validation-failed", f"DANE validation failed: {result}"
    return None, None, None


async def _opportunistic_session(job: _Job, ip: str, mx: str) -> tuple[aiosmtplib.SMTP, bool]:
    """A new session, encrypted without authentication if STARTTLS is offered and works, else plaintext."""
    client = await _connect(job, ip, mx)
    if not client.supports_extension("starttls"):
        return client, False
    try:
        with map_smtp_errors(tls=True):
            await client.starttls(server_hostname=mx, tls_context=create_opportunistic_context())
            await client.ehlo()
        return client, True
    except SMTPTLSError:
        _close(client)
        return await _connect(job, ip, mx), False  # plaintext, as a last resort


async def _send(job: _Job, client: aiosmtplib.SMTP, attempt: Attempt, outcome: _Outcome) -> Attempt:
    """MAIL, RCPT, DATA. A 5yz reply (to the message, or to every recipient) ends the delivery: ``failed``."""
    try:
        with map_smtp_errors():
            if isinstance(job.message, bytes):
                errors, _ = await client.sendmail(job.sender, job.recipients, job.message)
            else:
                errors, _ = await client.send_message(job.message, sender=job.sender, recipients=job.recipients)
    except SMTPRecipientsRefusedError as exc:
        if exc.permanent:
            outcome.permanent = f"every recipient refused by {attempt.mx}: {exc.message}"
        return replace(attempt, error=f"recipients refused: {exc.message}")
    except SMTPReplyError as exc:
        if exc.permanent:
            outcome.permanent = f"{attempt.mx} answered {exc.message}"
        return replace(attempt, error=exc.message)
    outcome.delivered_mx = attempt.mx
    outcome.refused.update({rcpt: f"{resp.code} {resp.message}" for rcpt, resp in errors.items()})
    return replace(attempt, delivered=True)


@dataclass(frozen=True, slots=True)
class StartTLSProbe:
    """What :func:`probe_starttls` found at one MX host."""

    mx: str
    ip: str | None  # the address that answered (None: none did)
    result_type: str | None  # None: STARTTLS offered and the certificate valid for the MX (§4.2)
    detail: str | None = None
    certificate: dict[str, Any] | None = None  # the verified certificate (ssl.getpeercert())


async def probe_starttls(
    mx: str,
    *,
    resolver: dns.asyncresolver.Resolver,
    port: int = 25,
    tls_context: ssl.SSLContext | None = None,
    local_hostname: str | None = None,
    timeout: float = 30.0,
) -> StartTLSProbe:
    """Connect to ``mx``, EHLO, STARTTLS with SNI = ``mx`` and full §4.2 validation; report, never raise."""
    context = ensure_strict(tls_context) if tls_context is not None else create_client_context()
    try:
        ips = await mtasts_dns.resolve_addresses(resolver, mx)
    except HostLookupError as exc:
        return StartTLSProbe(mx, None, None, f"cannot resolve: {exc.message}")
    last_error = "no address"
    for ip in ips:
        try:
            client = await _open_session(ip, port, local_hostname, timeout)
        except (SMTPError, LocalError) as exc:
            last_error = f"{ip}: cannot connect: {exc.message}"
            continue
        try:
            await _starttls(client, mx, context)
            ssl_object = client.get_transport_info("ssl_object")
            certificate = ssl_object.getpeercert() if isinstance(ssl_object, ssl.SSLObject) else None
            return StartTLSProbe(mx, ip, None, None, certificate)
        except NoStartTLSError as exc:
            return StartTLSProbe(mx, ip, exc.result_type, exc.message)
        except SMTPTLSError as exc:
            return StartTLSProbe(mx, ip, exc.result_type, exc.failure_reason_code)
        finally:
            await _quit(client)
    return StartTLSProbe(mx, None, None, last_error)


def _peer_certificate(client: aiosmtplib.SMTP) -> bytes:
    ssl_object = client.get_transport_info("ssl_object")
    if isinstance(ssl_object, ssl.SSLObject):
        der = ssl_object.getpeercert(binary_form=True)
        return der or b""
    return b""


def _local_ip(client: aiosmtplib.SMTP) -> str | None:
    sockname = client.get_transport_info("sockname")
    if isinstance(sockname, tuple) and sockname:
        return str(sockname[0])
    return None


def _close(client: aiosmtplib.SMTP) -> None:
    client.close()


async def _quit(client: aiosmtplib.SMTP) -> None:
    """QUIT politely (5 s at most); if that fails (an SMTP failure or a local fault), just close the connection."""
    if client.is_connected:
        try:
            with map_smtp_errors():
                await asyncio.wait_for(client.quit(), timeout=5)
        except (SMTPError, LocalError):
            client.close()


def _check_path(what: str, address: str) -> str:
    """An SMTP path may hold no control character (RFC 5321 §4.1.2: Mailbox is printable; a CR or LF would end
    the MAIL/RCPT command early — aiosmtplib refuses it with a bare ValueError, mapped here to a UsageError)."""
    if not isinstance(address, str) or any(ord(char) < 0x20 or ord(char) == 0x7F for char in address):
        raise UsageError(f"{what} is not an address (control characters): {address!r}")
    return address


def _sender(message: email.message.Message | bytes, sender: str | None) -> str:
    if sender is not None:
        return _check_path("sender", sender)
    if isinstance(message, email.message.Message):
        header = message.get("Sender") or message.get("From")
        if header:
            _, address = email.utils.parseaddr(str(header))
            if address:
                return _check_path("sender", address)
    raise UsageError("deliver() needs a sender: pass sender=, or a message with a From header")


def _policy_domain(recipients: Sequence[str], next_hop: str | None) -> str:
    """The Policy Domain: the smart host's domain if there is one (§3.4), else the recipients' one domain."""
    if isinstance(recipients, str) or not recipients:
        raise UsageError("recipients must be a non-empty sequence of addresses")
    domains: set[str] = set()
    for recipient in recipients:
        local, at, domain = _check_path("recipient", recipient).rpartition("@")
        if not at or not local:
            raise UsageError(f"not an address: {recipient!r}")
        if is_address_literal(domain):
            raise UsageError(f"address literals have no MTA-STS policy (RFC 8461 §3.4): {recipient!r}")
        try:
            domains.add(normalize_domain(domain))
        except DomainError as exc:
            raise UsageError(f"{recipient!r}: {exc.message}") from None
    if len(domains) != 1:
        raise UsageError(f"deliver() sends to one domain at a time, not {sorted(domains)}")
    if next_hop is not None:
        return normalize_domain(next_hop)
    return domains.pop()
