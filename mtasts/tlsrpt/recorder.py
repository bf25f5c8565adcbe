"""Recording TLS sessions and building daily reports (RFC 8460 §4), persisted so a restart loses nothing.

:meth:`TLSReporter.record` is called once per SMTP session (the delivery helper's ``reporter=`` hook does it for
you: :meth:`TLSReporter.record_attempt`), and once per failed policy fetch (the resolver's ``on_fetch_failure=``
hook: :meth:`TLSReporter.record_fetch_failure`). It only increments an in-memory counter (measured: about a
microsecond, ``benchmarks/``); :meth:`flush` (also run by a background task and at close) adds the increments to
the store, atomically, so several processes may count into one store.

Counting rules (docs/decisions.md):

* sessions are counted per UTC day and per *applied policy*: ``sts`` (the MTA-STS policy), ``tlsa`` (DANE
  applied, RFC 8461 §2) or ``no-policy-found`` — which also covers ``mode: none`` (RFC 8461 §5: "as though it
  does not have any active policy");
* under ``mode: none`` failures are not reported (RFC 8461 §6), so such a failed session is not counted at all;
* a failed policy fetch is counted once per fetch attempt, as a failure with its result type
  (``sts-policy-fetch-error``, ``sts-webpki-invalid``, ``sts-policy-invalid``) under the cached policy, or under
  ``no-policy-found`` when nothing was cached — with no MX or IP fields, which are then left out;
* report deliveries themselves are never recorded (RFC 8460 §3 SHOULD NOT): :meth:`TLSReporter.record` counts
  nothing while a report is being sent (:mod:`~mtasts.tlsrpt.exclude`), and :meth:`TLSReporter.reporter_for`
  gives no ``deliver()`` hook for a report message queued to be sent later;
* the Policy Domain of a DANE session is the MX host — the TLSA base domain (RFC 8460 §1.1) — so every recipient
  domain whose mail goes to one DANE MX host adds to that host's one report; an MTA-STS session's is the
  recipient domain, or the smart host's domain when mail is relayed through one (§1.1), so the recipient
  domains behind one smart host share its one report.

Reports are sent at a randomised time after their UTC day ends (§4.1): :class:`~mtasts.tlsrpt.schedule.SendSchedule`
(``send_delay`` + an offset in ``[0, send_window)``, stable per sender, day and domain); :meth:`TLSReporter.send_due`
sends nothing before it (``force=True`` does), :meth:`TLSReporter.next_send_time` says when something is next due
and :meth:`TLSReporter.send_loop` keeps sending as reports fall due.

A counter's key names the §4.4 fields it stands for: :class:`PolicyKey` (the ``policy`` object) and
:class:`FailureKey` (a ``failure-details`` entry without its count). :meth:`TLSReporter.send_due_outcomes` says
what it did with each due report as a :class:`ReportOutcome` (a :class:`ReportStatus` and its details);
:meth:`TLSReporter.send_due` gives the same as the JSON objects ``mtasts tlsrpt send`` prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import email.message
import enum
import functools
import ipaddress
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from .._checks import check_seconds
from ..domain import normalize_domain
from ..errors import UsageError
from ..policy import Mode, Policy
from .exclude import in_report_delivery, is_report_message, report_delivery
from .report import DETAIL_FIELDS, Report, build_report
from .retry import RetryPolicy
from .schedule import DEFAULT_SEND_DELAY, DEFAULT_SEND_WINDOW, SendSchedule, day_number, day_of

if TYPE_CHECKING:
    from ..delivery import Attempt
    from ..resolver import FetchFailure, PolicyResolver
    from ..stores import PolicyStore
    from .transport import ReportSender, RuaDiscovery

__all__ = ["FailureKey", "PolicyKey", "ReportOutcome", "ReportStatus", "TLSReporter"]

log = logging.getLogger("mtasts.tlsrpt")

_NO_POLICY = "no-policy-found"

_CACHED_KEYS = 10_000  # policy and failure keys remembered per reporter (then forgotten, and made again)


class PolicyKey(NamedTuple):
    """The applied policy sessions are counted under: the RFC 8460 §4.4 ``policy`` object (§4.4 "policy-type" ...)."""

    kind: str  # policy-type: "sts", "tlsa" or "no-policy-found"
    domain: str  # policy-domain (A-labels)
    strings: tuple[str, ...]  # policy-string: the policy's lines (§4.5)
    patterns: tuple[str, ...]  # mx-host: the policy's mx patterns

    def as_json(self) -> dict[str, Any]:
        """The §4.4 ``policy`` object."""
        return {"policy-type": self.kind, "policy-string": list(self.strings), "policy-domain": self.domain,
                "mx-host": list(self.patterns)}  # fmt: skip


class FailureKey(NamedTuple):
    """One RFC 8460 §4.4 ``failure-details`` entry without its count; the fields in :data:`DETAIL_FIELDS` order."""

    result_type: str  # §4.3
    sending_mta_ip: str | None = None
    receiving_mx_hostname: str | None = None
    receiving_mx_helo: str | None = None
    receiving_ip: str | None = None
    additional_information: str | None = None
    failure_reason_code: str | None = None

    def as_json(self) -> dict[str, str | None]:
        """The §4.4 field names and values (None for a field that is not known)."""
        return dict(zip(DETAIL_FIELDS, self, strict=True))


# What record() is given for a failure, in FailureKey order before normalization: it finds the FailureKey made
# for the same values before, so a repeated failure costs one dict lookup.
_FailureInput = tuple[str, str | None, str | None, str | None, str | None, str | None, str | None]

# A counter's key: (UTC day number, policy, failure or None for a successful session). A plain tuple: one is made
# per recorded session, and a NamedTuple costs several times more to make; read by unpacking it into names.
CountKey = tuple[int, PolicyKey, FailureKey | None]


class ReportStatus(enum.StrEnum):
    """What :meth:`TLSReporter.send_due_outcomes` did with one due report (RFC 8460 §3, §5.5)."""

    DELIVERED = "delivered"  # a rua endpoint accepted it (§3: the first that accepts ends it)
    RETRY = "retry"  # not delivered: tried again from next_attempt on (§5.5 exponential backoff)
    GAVE_UP = "gave-up"  # every endpoint failed for good, or the §5.5 24 hours are over
    NO_RECORD = "no-record"  # no (valid) _smtp._tls record: the domain wants no reports (§3); counts dropped
    EMPTY = "empty"  # no sessions were left to report for that day and domain


@dataclass(frozen=True, slots=True)
class ReportOutcome:
    """One due report (one Policy Domain, one UTC day, §4.1) and what :meth:`TLSReporter.send_due_outcomes` did.

    ``to``: the URI that accepted it (DELIVERED). ``error``: why it was not delivered (RETRY, GAVE_UP).
    ``next_attempt``: when it is tried again (RETRY; epoch seconds).
    """

    domain: str
    day: datetime.date
    status: ReportStatus
    to: str | None = None
    error: str | None = None
    next_attempt: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """The JSON object ``mtasts tlsrpt send`` prints: ``domain``, ``day`` (ISO date), ``status``, then ``to``,
        ``error`` and ``next_attempt`` when they are set."""
        result: dict[str, Any] = {"domain": self.domain, "day": self.day.isoformat(), "status": self.status.value}
        if self.to is not None:
            result["to"] = self.to
        if self.error is not None:
            result["error"] = self.error
        if self.next_attempt is not None:
            result["next_attempt"] = self.next_attempt
        return result


@dataclass(frozen=True, slots=True)
class _Progress:
    """A report's delivery state, as kept in the store (``get_report_state`` / ``put_report_state``) as JSON:
    ``{"first": t, "attempts": n, "next": t}`` while it is retried, ``{"done": true, "status": ...}`` after."""

    done: bool = False  # delivered, unwanted or given up: never sent again
    first: float | None = None  # when the first attempt was made (§5.5 counts the 24 hours from it)
    attempts: int = 0  # failed attempts so far
    next: float = 0  # not tried before this time

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> _Progress:
        return cls(bool(state.get("done")), state.get("first"), state.get("attempts", 0), state.get("next", 0))


@dataclass
class _Tally:
    """The sessions of one applied policy in one report: successes, and each failure detail's count."""

    successes: int = 0
    failures: dict[FailureKey, int] = field(default_factory=dict)


@functools.lru_cache(maxsize=4096)
def _ip(text: str | None) -> str | None:
    """An address as RFC 8460 §4.4 wants it: IPv6 in RFC 5952 form (compressed, lowercase)."""
    if text is None:
        return None
    try:
        return ipaddress.ip_address(text).compressed
    except ValueError:
        return None


def _day(key: CountKey) -> int:
    """The UTC day number a counter counts for."""
    day, _, _ = key
    return day


def _domain(key: CountKey) -> str:
    """The Policy Domain a counter counts for."""
    _, policy, _ = key
    return policy.domain


def _encode_key(policy: PolicyKey, failure: FailureKey | None) -> str:
    """The store's counter key: JSON, so any store (and a human) can read it."""
    return json.dumps(
        [[policy.kind, policy.domain, list(policy.strings), list(policy.patterns)], list(failure) if failure else None]
    )


def _decode_key(text: str) -> tuple[PolicyKey, FailureKey | None] | None:
    """The (policy, failure) of a store counter key (:func:`_encode_key`); None for a key that is not one."""
    try:
        (kind, domain, strings, patterns), failure = json.loads(text)
        policy = PolicyKey(str(kind), str(domain), tuple(map(str, strings)), tuple(map(str, patterns)))
        if failure is None:
            return policy, None
        if len(failure) != len(FailureKey._fields):
            return None
        result_type, *details = failure
        if not isinstance(result_type, str):
            return None
        return policy, FailureKey(result_type, *(None if value is None else str(value) for value in details))
    except (ValueError, TypeError):
        return None


class TLSReporter:
    """RFC 8460 session recorder and report builder; see the module docs.

    ``organization_name`` and ``contact_info`` (an email address; its domain is the report's submitter, §5.3)
    go into every report. ``store``: one of :mod:`mtasts.stores` (anything with the ReportStore methods) — the
    counts survive restarts; None keeps them in memory. ``clock``: the time source (tests inject one).
    ``send_delay`` and ``send_window``: a day's report for a domain is due ``send_delay`` + an offset in
    ``[0, send_window)`` seconds after the day ends (:attr:`schedule`, §4.1; the offset is derived from
    ``contact_info``, the day and the domain, so every process of one sender computes the same time).
    """

    def __init__(
        self,
        *,
        organization_name: str,
        contact_info: str,
        store: PolicyStore | None = None,
        clock: Callable[[], float] = time.time,
        flush_interval: float = 10.0,
        send_delay: float = DEFAULT_SEND_DELAY,
        max_counters: int = 1_000_000,
        send_window: float = DEFAULT_SEND_WINDOW,
    ) -> None:
        local, at, domain = contact_info.rpartition("@")
        if not at or not local:
            raise UsageError(f"contact_info must be an email address (RFC 8460 §4.4), not {contact_info!r}")
        self.organization_name = organization_name
        self.contact_info = contact_info
        self.submitter_domain = normalize_domain(domain)
        self._store: Any = store
        self._clock = clock
        self._flush_interval = flush_interval
        self.schedule = SendSchedule(send_delay, send_window, seed=contact_info)
        self._max_counters = max_counters
        self._counts: dict[CountKey, int] = {}  # everything known: restored + recorded
        self._pending: dict[CountKey, int] = {}  # recorded since the last flush
        self._policy_keys: dict[tuple[str, Policy | None, bool], PolicyKey] = {}
        self._failure_keys: dict[_FailureInput, FailureKey] = {}
        self._flusher: asyncio.Task[None] | None = None
        self._overflow_logged = False
        self._memory_states: dict[tuple[int, str], dict[str, Any]] = {}  # report delivery state, without a store

    # -- recording (the hot path) ---------------------------------------------------------------------------------

    def record(
        self,
        policy_domain: str,
        *,
        policy: Policy | None,
        mx_host: str | None = None,
        result_type: str | None = None,
        sending_ip: str | None = None,
        receiving_ip: str | None = None,
        dane: bool = False,
        failure_reason_code: str | None = None,
        receiving_mx_helo: str | None = None,
        additional_information: str | None = None,
    ) -> None:
        """Count one SMTP session to ``mx_host`` for ``policy_domain`` (``result_type`` None: TLS succeeded).

        Nothing is counted while a report is being delivered (:func:`~mtasts.tlsrpt.exclude.in_report_delivery`,
        RFC 8460 §3).
        """
        if in_report_delivery():
            return
        policy_key = self._policy_keys.get((policy_domain, policy, dane))
        if policy_key is None:
            policy_key = self._new_policy_key(policy_domain, policy, dane)
        failure: FailureKey | None = None
        if result_type is not None:
            if policy is not None and policy.mode is Mode.NONE and not dane:
                return  # RFC 8461 §6: nothing under mode none is a reportable failure
            given = (result_type, sending_ip, mx_host, receiving_mx_helo, receiving_ip, additional_information,
                     failure_reason_code)  # fmt: skip
            failure = self._failure_keys.get(given)
            if failure is None:
                failure = self._new_failure_key(given)
        key = (int(self._clock() // 86400), policy_key, failure)
        counts = self._pending
        if key in counts:
            counts[key] += 1
        elif len(self._counts) < self._max_counters:
            counts[key] = 1
        else:
            self._overflow(key)
        self._kick()

    def _new_policy_key(self, policy_domain: str, policy: Policy | None, dane: bool) -> PolicyKey:
        domain = normalize_domain(policy_domain)
        if dane:
            key = PolicyKey("tlsa", domain, (), ())
        elif policy is None or policy.mode is Mode.NONE:
            key = PolicyKey(_NO_POLICY, domain, (), ())
        else:
            key = PolicyKey("sts", domain, tuple(policy.lines()), policy.mx)
        if len(self._policy_keys) > _CACHED_KEYS:
            self._policy_keys.clear()
        self._policy_keys[(policy_domain, policy, dane)] = key
        return key

    def _new_failure_key(self, given: _FailureInput) -> FailureKey:
        """§4.4's form of a failure: the MX name lowercase without the root dot, IPv6 in RFC 5952 form."""
        result_type, sending_ip, mx_host, helo, receiving_ip, information, reason = given
        host = mx_host.lower().removesuffix(".") if mx_host else None
        key = FailureKey(result_type, _ip(sending_ip), host, helo, _ip(receiving_ip), information, reason)
        if len(self._failure_keys) > _CACHED_KEYS:
            self._failure_keys.clear()
        self._failure_keys[given] = key
        return key

    def _overflow(self, key: CountKey) -> None:
        """Too many distinct counters: keep counting, without the per-session IP and host details."""
        if not self._overflow_logged:
            log.warning("TLS-RPT: more than %d distinct counters; details are being merged", self._max_counters)
            self._overflow_logged = True
        day, policy_key, failure = key
        coarse = (day, policy_key, FailureKey(failure.result_type) if failure else None)
        self._pending[coarse] = self._pending.get(coarse, 0) + 1

    def record_attempt(self, attempt: Attempt) -> None:
        """The ``reporter=`` hook of :func:`mtasts.delivery.deliver`: one call per MX tried.

        An MX skipped without a connection (enforce, pattern mismatch) is a failed session under the policy
        (``validation-failure``, ``mx-not-in-sts-policy``); an MX that could not be reached at all is not a TLS
        session and is not counted (RFC 8460 §4.3.4: transient network errors need not be reported). Where DANE
        applied, the session counts for the MX host, the TLSA base domain (§1.1: the Policy Domain "for DANE"),
        not for the recipient domain.
        """
        if attempt.receiving_ip is None and not attempt.skipped:
            return
        verdict = attempt.verdict
        self.record(
            attempt.mx if attempt.dane else attempt.policy_domain,
            policy=verdict.policy if verdict is not None else None,
            mx_host=attempt.mx,
            result_type=attempt.result_type if not attempt.dane else attempt.tls_failure,
            sending_ip=attempt.sending_ip,
            receiving_ip=attempt.receiving_ip,
            dane=attempt.dane,
            failure_reason_code=attempt.failure_reason_code,
        )

    def reporter_for(self, message: bytes | email.message.Message) -> Callable[[Attempt], None] | None:
        """The ``reporter=`` for delivering ``message``: :meth:`record_attempt`, or None for a TLS-RPT report
        (:func:`~mtasts.tlsrpt.exclude.is_report_message`) — a report queued by a ``mailer`` and delivered later
        is never counted in a report (§3 SHOULD NOT)."""
        return None if is_report_message(message) else self.record_attempt

    def record_fetch_failure(self, failure: FetchFailure) -> None:
        """The resolver's ``on_fetch_failure=`` hook: one failed policy fetch (RFC 8461 §6 reportable event)."""
        if failure.result_type is None:
            return
        if failure.cached_policy is not None and failure.cached_policy.mode is Mode.NONE:
            return  # §6: "except if that policy's mode is none"
        self.record(
            failure.domain,
            policy=failure.cached_policy,
            result_type=failure.result_type,
            failure_reason_code=failure.error[:200],
        )

    # -- persistence ------------------------------------------------------------------------------------------------

    def _kick(self) -> None:
        if self._store is None or (self._flusher is not None and not self._flusher.done()):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a synchronous caller): flush() later
        self._flusher = loop.create_task(self._flush_later())

    async def _flush_later(self) -> None:
        await asyncio.sleep(self._flush_interval)
        await self.flush()

    async def start(self) -> None:
        """Load the counts already in the store (a restart loses nothing)."""
        if self._store is None:
            return
        for day, _, text, count in await self._store.session_counts():
            decoded = _decode_key(text)
            if decoded is not None:
                policy, failure = decoded
                key = (day, policy, failure)
                self._counts[key] = self._counts.get(key, 0) + count

    async def flush(self) -> bool:
        """Add what was recorded since the last flush to the store; True when nothing is left pending."""
        pending, self._pending = self._pending, {}
        for key, count in pending.items():
            self._counts[key] = self._counts.get(key, 0) + count
        if self._store is None or not pending:
            return True
        rows = [(day, policy.domain, _encode_key(policy, failure), n) for (day, policy, failure), n in pending.items()]
        try:
            await self._store.add_session_counts(rows)
        except Exception as exc:  # a store outage: keep the increments, try again at the next flush
            log.warning("TLS-RPT: store write failed (%s: %s); counts kept in memory", type(exc).__name__, exc)
            for key, count in pending.items():
                self._counts[key] -= count
                self._pending[key] = self._pending.get(key, 0) + count
            return False
        return True

    async def aclose(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        await self.flush()

    # -- reports ------------------------------------------------------------------------------------------------

    def days(self) -> list[datetime.date]:
        """The UTC days with sessions recorded (here, or restored from the store)."""
        return sorted({day_of(day) for day, _, _ in (*self._counts, *self._pending)})

    def build_reports(self, day: datetime.date) -> list[Report]:
        """One report per policy domain with sessions on ``day`` (UTC), from what this process knows."""
        merged: dict[CountKey, int] = dict(self._counts)
        for key, count in self._pending.items():
            merged[key] = merged.get(key, 0) + count
        wanted = day_number(day)
        return self._reports(day, ((key, count) for key, count in merged.items() if _day(key) == wanted))

    async def collect_reports(self, day: datetime.date) -> list[Report]:
        """Like :meth:`build_reports`, from the store: every process's sessions (after flushing ours)."""
        if self._store is None:
            return self.build_reports(day)
        await self.flush()
        counts: dict[CountKey, int] = {}
        for number, _, text, count in await self._store.session_counts(day_number(day)):
            decoded = _decode_key(text)
            if decoded is not None:
                policy, failure = decoded
                key = (number, policy, failure)
                counts[key] = counts.get(key, 0) + count
        return self._reports(day, counts.items())

    def _reports(self, day: datetime.date, counts: Iterable[tuple[CountKey, int]]) -> list[Report]:
        by_domain: dict[str, dict[PolicyKey, _Tally]] = {}
        for (_, policy, failure), count in counts:
            if count <= 0:
                continue
            tallies = by_domain.setdefault(policy.domain, {})
            tally = tallies.get(policy)
            if tally is None:
                tally = tallies[policy] = _Tally()
            if failure is None:
                tally.successes += count
            else:
                tally.failures[failure] = tally.failures.get(failure, 0) + count
        reports = []
        for domain in sorted(by_domain):
            policies = [
                (policy.as_json(), tally.successes, [(failure.as_json(), n) for failure, n in tally.failures.items()])
                for policy, tally in by_domain[domain].items()
            ]
            reports.append(
                build_report(
                    organization_name=self.organization_name,
                    contact_info=self.contact_info,
                    sender_domain=self.submitter_domain,
                    policy_domain=domain,
                    day=day,
                    policies=policies,
                )
            )
        return reports

    # -- delivery ------------------------------------------------------------------------------------------------

    async def send_due(
        self,
        resolver: PolicyResolver,
        *,
        sender: ReportSender | None = None,
        retry: RetryPolicy | None = None,
        force: bool = False,
    ) -> list[dict[str, Any]]:
        """:meth:`send_due_outcomes`, each outcome as the JSON object ``mtasts tlsrpt send`` prints
        (:meth:`ReportOutcome.as_dict`: ``domain``, ``day``, ``status``, ...)."""
        outcomes = await self.send_due_outcomes(resolver, sender=sender, retry=retry, force=force)
        return [outcome.as_dict() for outcome in outcomes]

    async def send_due_outcomes(
        self,
        resolver: PolicyResolver,
        *,
        sender: ReportSender | None = None,
        retry: RetryPolicy | None = None,
        force: bool = False,
    ) -> list[ReportOutcome]:
        """Deliver every report that is due: each complete UTC day, at its randomised send time (:attr:`schedule`,
        §4.1 "after some delay"), one report per Policy Domain, to the ``rua`` of the domain's ``_smtp._tls``
        record (§3), retrying with exponential back-off for up to 24 hours (§5.5, ``retry``). ``force``: do not
        wait for the send time (a complete day only; a retry's back-off still applies). Returns one
        :class:`ReportOutcome` per report considered.
        """
        from .transport import ReportSender, discover_rua  # noqa: PLC0415 - needs aiohttp (and aiosmtplib for mail)

        sender = sender or ReportSender(resolver=resolver, submitter_domain=self.submitter_domain,
                                        from_address=self.contact_info)  # fmt: skip
        retry = retry or RetryPolicy()
        now = self._clock()
        today = int(now // 86400)
        outcomes = []
        for day, domain in await self._pending_reports():
            if day >= today or (not force and now < self.schedule.due_at(day, domain)):
                continue
            progress = _Progress.from_state(await self._load_state(day, domain))
            if progress.done or now < progress.next:
                continue
            found = await discover_rua(resolver.dns_resolver, domain)
            outcomes.append(await self._send_one(day, domain, progress, now, found, sender, retry))
        return outcomes

    async def _pending_reports(self) -> list[tuple[int, str]]:
        """(day number, Policy Domain) of every report with counts (after flushing ours), in order."""
        await self.flush()
        keys = await self._store.session_counts() if self._store is not None else None
        pairs = (
            {(day, policy.domain) for day, policy, _ in self._counts}
            if keys is None
            else {(day, domain) for day, domain, _, _ in keys}
        )
        return sorted(pairs)

    async def next_send_time(self) -> float | None:
        """When :meth:`send_due_outcomes` next has a report to try (epoch seconds; possibly already past): the
        earliest send time (:attr:`schedule`) or retry time (§5.5) of a report not done yet. None: nothing
        recorded is waiting (sessions recorded later make a new report, due after their day)."""
        earliest: float | None = None
        for day, domain in await self._pending_reports():
            progress = _Progress.from_state(await self._load_state(day, domain))
            if progress.done:
                continue
            at = max(self.schedule.due_at(day, domain), progress.next)
            earliest = at if earliest is None else min(earliest, at)
        return earliest

    async def send_loop(
        self,
        resolver: PolicyResolver,
        *,
        sender: ReportSender | None = None,
        retry: RetryPolicy | None = None,
        on_outcome: Callable[[ReportOutcome], object] | None = None,
        max_sleep: float = 900.0,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        rounds: int | None = None,
    ) -> None:
        """Send reports as they fall due, until cancelled (or after ``rounds`` rounds): each round sends what is due
        (:meth:`send_due_outcomes`, each outcome to ``on_outcome``), then sleeps until :meth:`next_send_time` —
        at least a second, at most ``max_sleep`` seconds, so sessions recorded meanwhile (by other processes too)
        are seen. A round that fails (a store outage, a bug) is logged and tried again after ``max_sleep``; the
        loop itself never ends on an error. ``sleep`` (and the reporter's ``clock``) are injected by tests.
        """
        check_seconds("max_sleep", max_sleep, positive=True)
        done = 0
        while rounds is None or done < rounds:
            done += 1
            try:
                for outcome in await self.send_due_outcomes(resolver, sender=sender, retry=retry):
                    if on_outcome is not None:
                        on_outcome(outcome)
                upcoming = await self.next_send_time()
            except Exception as exc:  # the loop outlives any one round: log, wait, try again
                log.warning("TLS-RPT: sending reports failed (%s: %s); trying again in %g s",
                            type(exc).__name__, exc, max_sleep)  # fmt: skip
                wait = max_sleep
            else:
                wait = max_sleep if upcoming is None else min(max(upcoming - self._clock(), 1.0), max_sleep)
            if rounds is None or done < rounds:
                await sleep(wait)

    async def _send_one(  # noqa: PLR0917 - one report's whole context
        self,
        day: int,
        domain: str,
        progress: _Progress,
        now: float,
        found: RuaDiscovery,
        sender: ReportSender,
        retry: RetryPolicy,
    ) -> ReportOutcome:
        date = day_of(day)
        if found.record is None and found.error is None:  # the domain wants no reports: nothing to keep
            await self._finish(day, domain, ReportStatus.NO_RECORD)
            return ReportOutcome(domain, date, ReportStatus.NO_RECORD)
        if found.record is None:
            error = found.error  # a DNS failure: the rua is unknown now, ask again later
        else:
            reports = [r for r in await self.collect_reports(date) if r.policy_domain == domain]
            if not reports:
                await self._finish(day, domain, ReportStatus.EMPTY)
                return ReportOutcome(domain, date, ReportStatus.EMPTY)
            with report_delivery():  # whatever sender is given: its deliveries are never counted (§3)
                result = await sender.send(reports[0], found.record.rua)
            if result.delivered:
                await self._finish(day, domain, ReportStatus.DELIVERED, to=result.uri)
                return ReportOutcome(domain, date, ReportStatus.DELIVERED, to=result.uri)
            error = "; ".join(f"{uri}: {reason}" for uri, reason in result.errors)
            if not result.should_retry:  # every endpoint failed for good (malformed URI, 5xx mail...)
                await self._finish(day, domain, ReportStatus.GAVE_UP, error=error[:500])
                return ReportOutcome(domain, date, ReportStatus.GAVE_UP, error=error)
        first = progress.first if progress.first is not None else now
        attempts = progress.attempts + 1
        next_at = retry.next_attempt(first, attempts, now)
        if next_at is None:
            log.warning("TLS-RPT: giving up on the %s report for %s after %d attempts", date, domain, attempts)
            await self._finish(day, domain, ReportStatus.GAVE_UP)
            return ReportOutcome(domain, date, ReportStatus.GAVE_UP, error=error)
        await self._save_state(day, domain, {"first": first, "attempts": attempts, "next": next_at})
        return ReportOutcome(domain, date, ReportStatus.RETRY, error=error, next_attempt=next_at)

    async def _load_state(self, day: int, domain: str) -> dict[str, Any]:
        if self._store is None:
            return dict(self._memory_states.get((day, domain), {}))
        text = await self._store.get_report_state(day, domain)
        try:
            state = json.loads(text) if text else {}
        except ValueError:
            state = {}
        return state if isinstance(state, dict) else {}

    async def _save_state(self, day: int, domain: str, state: dict[str, Any]) -> None:
        if self._store is None:
            self._memory_states[(day, domain)] = state
        else:
            await self._store.put_report_state(day, domain, json.dumps(state))

    async def _finish(
        self, day: int, domain: str, status: ReportStatus, *, to: str | None = None, error: str | None = None
    ) -> None:
        """A report is done (delivered, unwanted, or given up): drop its counters, remember it is done."""
        state: dict[str, Any] = {"done": True, "status": status.value}
        if to is not None:
            state["to"] = to
        if error is not None:
            state["error"] = error
        await self._save_state(day, domain, state)
        for key in [key for key in self._counts if _day(key) == day and _domain(key) == domain]:
            del self._counts[key]
        if self._store is not None:
            await self._store.delete_session_counts(day, domain)
