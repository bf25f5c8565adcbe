"""TLS-RPT etiquette (issue 17): a day's reports go out at a randomised time after the UTC day ends (RFC 8460
§4.1), the delivery of a report is never recorded (§3), and recipient domains that share a Policy Domain share
its one report (§1.1).

Real parts only: the loopback World (DNS, signed zones, HTTPS), aiosmtpd MX hosts with STARTTLS, an aiohttp
HTTPS collector, ``python -m mtasts`` as a process. Time is a :class:`FakeClock` and an injected ``sleep``.
"""

from __future__ import annotations

import asyncio
import datetime
import email
import email.policy
import json
import math
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from mtasts import parse_policy
from mtasts.cli import main
from mtasts.delivery import deliver
from mtasts.errors import UsageError
from mtasts.stores import MemoryStore, SQLiteStore
from mtasts.testing import World
from mtasts.tlsrpt import ReportStatus, SendSchedule, is_report_message
from mtasts.tlsrpt.exclude import in_report_delivery, report_delivery
from mtasts.tlsrpt.message import build_message
from mtasts.tlsrpt.recorder import TLSReporter
from mtasts.tlsrpt.schedule import day_number
from mtasts.tlsrpt.send import ReportSender

from ._process import stop_process
from ._smtp import MailWorld
from .conftest import FakeClock
from .test_tlsrpt import validate
from .test_tlsrpt_send import start_collector

SENDER = "tlsrpt@sender.example"
DAY = datetime.date(2027, 1, 15)
NOON = datetime.datetime(2027, 1, 15, 12, tzinfo=datetime.UTC).timestamp()
MIDNIGHT = NOON + 12 * 3600  # the end of DAY
MESSAGE = b"From: alice@sender.example\r\nSubject: hi\r\n\r\nhello\r\n"


def reporter(clock: FakeClock, **kwargs: Any) -> TLSReporter:
    return TLSReporter(organization_name="Sender Inc.", contact_info=SENDER, clock=clock, **kwargs)


def sts(domain: str) -> str:
    return f"version: STSv1\nmode: enforce\nmx: mx.{domain}\nmax_age: 86400\n"


# -- when a day's reports go out (§4.1) --------------------------------------------------------------------------


def test_the_send_time_is_after_the_day_spread_over_the_window_and_stable_per_sender() -> None:
    schedule = SendSchedule(3600, 14400, seed=SENDER)
    domains = [f"d{i}.example" for i in range(200)]
    offsets = [schedule.due_at(DAY, domain) - MIDNIGHT - 3600 for domain in domains]
    assert all(0 <= offset < 14400 and offset == int(offset) for offset in offsets)
    assert min(offsets) < 1800 and max(offsets) > 12600 and len(set(offsets)) > 150  # spread, not all at once
    again = SendSchedule(3600, 14400, seed=SENDER)  # another process, a restart, tomorrow's cron run
    assert [again.due_at(DAY, domain) for domain in domains] == [schedule.due_at(DAY, d) for d in domains]
    assert schedule.due_at(day_number(DAY), "d1.example") == schedule.due_at(DAY, "d1.example")
    other_sender = SendSchedule(3600, 14400, seed="reports@elsewhere.example")
    assert sum(other_sender.offset(DAY, d) == schedule.offset(DAY, d) for d in domains) < 5
    next_day = DAY + datetime.timedelta(days=1)
    assert sum(schedule.offset(next_day, d) == schedule.offset(DAY, d) for d in domains) < 5
    assert SendSchedule(3600, 0, seed=SENDER).due_at(DAY, "d1.example") == MIDNIGHT + 3600  # no window: fixed
    assert reporter(FakeClock()).schedule == SendSchedule(3600, 14400, seed=SENDER)  # the defaults: 01:00-05:00


@pytest.mark.parametrize(("delay", "window"), [(-1, 0), (0, -1), (math.inf, 0), (0, math.nan), (3600, 86400)])
def test_a_schedule_that_makes_no_sense_is_a_usage_error(delay: float, window: float) -> None:
    with pytest.raises(UsageError):
        SendSchedule(delay, window)
    with pytest.raises(UsageError):
        reporter(FakeClock(), send_delay=delay, send_window=window)


async def test_send_due_sends_a_day_at_its_randomised_time_never_at_midnight(world: World) -> None:
    collector, runner = await start_collector(world)
    world.add_record("_smtp._tls.example.com", "TXT", f"v=TLSRPTv1; rua={collector.uri()}")
    clock = FakeClock(NOON)
    rec = reporter(clock)  # the default schedule
    rec.record("example.com", policy=None)
    due = rec.schedule.due_at(DAY, "example.com")
    assert due > MIDNIGHT + 3600 + 60  # this sender's offset for this day and domain
    async with world.policy_resolver(clock=clock) as resolver:
        sender = ReportSender(resolver=resolver, ssl_context=world.client_ssl_context(), timeout=5)
        for now in (MIDNIGHT, MIDNIGHT + 1, MIDNIGHT + 3600, due - 1):
            clock.now = now
            assert await rec.send_due(resolver, sender=sender) == []
            assert await rec.next_send_time() == due
        assert collector.hits == []
        clock.now = due
        [outcome] = await rec.send_due_outcomes(resolver, sender=sender)
        assert (outcome.domain, outcome.day, outcome.status) == ("example.com", DAY, ReportStatus.DELIVERED)
        assert await rec.next_send_time() is None

        # force: a complete day goes out at once, the running day never
        rec.record("example.com", policy=None)  # the day after DAY, still running
        clock.now = MIDNIGHT + 86400 + 1
        rec.record("example.com", policy=None)  # two days after DAY: running
        [forced] = await rec.send_due_outcomes(resolver, sender=sender, force=True)
        assert (forced.day, forced.status) == (DAY + datetime.timedelta(days=1), ReportStatus.DELIVERED)
        assert await rec.send_due_outcomes(resolver, sender=sender, force=True) == []
    await runner.cleanup()
    assert len(collector.hits) == 2


async def test_the_send_loop_sleeps_until_each_report_is_due(world: World) -> None:
    collector, runner = await start_collector(world)
    domains = ("a.example", "b.example")
    for domain in domains:
        world.add_record(f"_smtp._tls.{domain}", "TXT", f"v=TLSRPTv1; rua={collector.uri()}")
    clock = FakeClock(NOON)
    rec = reporter(clock)
    for domain in domains:
        rec.record(domain, policy=None)
    (first, first_domain), (second, second_domain) = sorted((rec.schedule.due_at(DAY, d), d) for d in domains)
    assert first < second
    slept: list[float] = []

    async def sleep(seconds: float) -> None:  # time passes, nobody waits
        slept.append(seconds)
        clock.advance(seconds)

    seen: list[Any] = []
    async with world.policy_resolver(clock=clock) as resolver:
        sender = ReportSender(resolver=resolver, ssl_context=world.client_ssl_context(), timeout=5)
        await rec.send_loop(resolver, sender=sender, on_outcome=seen.append, max_sleep=86400, sleep=sleep, rounds=3)
        assert slept == [first - NOON, second - first]  # straight to each send time, nothing sent early
        assert [(o.domain, o.status) for o in seen] == [
            (first_domain, ReportStatus.DELIVERED),
            (second_domain, ReportStatus.DELIVERED),
        ]

        # the default bound: at most 15 minutes asleep, so new sessions (other processes') are seen
        slept.clear()
        clock.now = NOON + 86400
        rec.record("a.example", policy=None)
        await rec.send_loop(resolver, sender=sender, sleep=sleep, rounds=3)
        assert slept == [900.0, 900.0]
    await runner.cleanup()
    assert len(collector.hits) == 2


async def test_a_failing_round_does_not_end_the_send_loop(world: World) -> None:
    class Flaky(MemoryStore):
        outages = 1

        async def session_counts(self, day: int | None = None) -> list[Any]:
            if self.outages:
                self.outages -= 1
                raise OSError("store down")
            return await super().session_counts(day)

    clock = FakeClock(NOON)
    rec = reporter(clock, store=Flaky())
    rec.record("example.com", policy=None)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.advance(seconds)

    async with world.policy_resolver(clock=clock) as resolver:
        await rec.send_loop(resolver, max_sleep=600, sleep=sleep, rounds=2)
    assert slept[0] == 600  # the failed round waits the full bound, then the loop goes on
    assert len(slept) == 1 and await rec.next_send_time() == rec.schedule.due_at(DAY, "example.com")
    await rec.aclose()


async def test_cli_send_waits_for_the_send_time_now_sends_at_once_and_wait_keeps_sending(
    world: World, tmp_path: Path
) -> None:
    collector, runner = await start_collector(world)
    for domain in ("example.com", "later.example"):
        world.add_record(f"_smtp._tls.{domain}", "TXT", f"v=TLSRPTv1; rua={collector.uri()}")
    path = tmp_path / "p.sqlite3"
    world_args = ["--store", f"sqlite:{path}", "--contact", SENDER, "--nameserver", f"127.0.0.1:{world.dns_port}",
                  "--cafile", world.ca_pem_path]  # fmt: skip

    async def record(domain: str, days_ago: int) -> None:
        day = datetime.datetime.now(datetime.UTC).date() - datetime.timedelta(days=days_ago)
        noon = datetime.datetime.combine(day, datetime.time(12), datetime.UTC).timestamp()
        rec = reporter(FakeClock(noon), store=SQLiteStore(path))
        rec.record(domain, policy=None)
        await rec.aclose()
        await rec._store.aclose()

    async def run(*args: str) -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mtasts", "tlsrpt", "send", *args, *world_args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode is not None, err
        return process.returncode, out.decode()

    await record("example.com", 1)  # yesterday: complete; under a day's delay its send time is tomorrow
    assert await run("--send-delay", "86400", "--send-window", "0") == (0, "")
    assert collector.hits == []
    code, out = await run("--now")
    assert code == 0 and json.loads(out)["status"] == "delivered" and len(collector.hits) == 1

    await record("later.example", 2)  # due whatever the hour
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mtasts", "tlsrpt", "send", "--wait", *world_args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        outcome = json.loads(line)
        assert (outcome["domain"], outcome["status"], outcome["to"]) == ("later.example", "delivered", collector.uri())
        process.send_signal(signal.SIGTERM)  # asleep until the next send time: stops at once, cleanly
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        await stop_process(process)
    await runner.cleanup()
    assert len(collector.hits) == 2

    assert main(["tlsrpt", "send", "--now", "--wait"]) == 2  # they exclude each other
    assert main(["tlsrpt", "send", "--send-window", "-5", "--store", f"sqlite:{path}"]) == 2


# -- the delivery of a report is never recorded (§3) ----------------------------------------------------------------


async def test_a_report_mailed_through_a_recorder_wired_mta_is_never_recorded(world: World, mail: MailWorld) -> None:
    clock = FakeClock(NOON)
    rec = reporter(clock, send_window=0)
    rec.record("example.com", policy=None, mx_host="mx.example.com")
    world.add_record("_smtp._tls.example.com", "TXT", "v=TLSRPTv1; rua=mailto:tlsrpt@reports.example")
    world.publish("reports.example", sts("reports.example"))
    await mail.add_mx("mx.reports.example", "valid")
    mail.set_mx("reports.example", (10, "mx.reports.example"))
    async with world.policy_resolver(clock=clock, on_fetch_failure=rec.record_fetch_failure) as resolver:

        async def mta(message: bytes, sender: str, recipients: list[str]) -> None:
            """The operator's own MTA, built on deliver(): it records every delivery it makes."""
            result = await deliver(message, recipients, resolver=resolver, sender=sender, port=mail.port,
                                   tls_context=world.client_ssl_context(), local_hostname="sender.example",
                                   reporter=rec.record_attempt)  # fmt: skip
            assert result.delivered, result.reason

        clock.now = MIDNIGHT + 3600
        [outcome] = await rec.send_due_outcomes(resolver, sender=ReportSender(resolver=resolver, mailer=mta))
        assert (outcome.domain, outcome.status) == ("example.com", ReportStatus.DELIVERED)
        [received] = mail.inbox.messages
        assert received.tls
        headers = email.message_from_bytes(received.content, policy=email.policy.default)
        assert headers["TLS-Report-Domain"] == "example.com" and headers["TLS-Required"] == "No"  # RFC 8689
        assert rec.days() == [] and not in_report_delivery()  # the report's own session was not counted

        await mta(MESSAGE, "alice@sender.example", ["bob@reports.example"])  # ordinary mail: counted
    [report] = rec.build_reports(DAY + datetime.timedelta(days=1))
    assert report.policy_domain == "reports.example"
    assert report.json["policies"][0]["summary"]["total-successful-session-count"] == 1


async def test_a_report_queued_for_later_delivery_gets_no_reporter(world: World, mail: MailWorld) -> None:
    clock = FakeClock(NOON)
    rec = reporter(clock)
    rec.record("example.com", policy=None)
    [report] = rec.build_reports(DAY)
    queued = build_message(report, "sender.example", SENDER, ["tlsrpt@reports.example"], NOON)
    assert is_report_message(queued) and rec.reporter_for(queued) is None
    assert rec.reporter_for(email.message_from_bytes(queued, policy=email.policy.default)) is None
    plain = b"Subject: hi\r\n\r\nTLS-Report-Domain: example.com (in a body, not a header)\r\n"
    assert not is_report_message(plain) and rec.reporter_for(plain) == rec.record_attempt
    assert is_report_message(b"tls-report-domain : example.com\n\nbody")  # any case, LF line ends
    assert not is_report_message(b"X-Note: a\r\n TLS-Report-Domain: folded into X-Note\r\n\r\n")

    # later, the queue runner delivers both with the hook it is given: only the ordinary message counts
    await mail.add_mx("mx.reports.example", "valid")
    mail.set_mx("reports.example", (10, "mx.reports.example"))
    rec = reporter(clock)
    async with world.policy_resolver(clock=clock) as resolver:
        for message in (queued, MESSAGE):
            result = await deliver(message, ["tlsrpt@reports.example"], resolver=resolver, sender=SENDER,
                                   port=mail.port, tls_context=world.client_ssl_context(),
                                   reporter=rec.reporter_for(message))  # fmt: skip
            assert result.delivered
    [counted] = rec.build_reports(DAY)
    assert counted.json["policies"][0]["summary"]["total-successful-session-count"] == 1


async def test_only_the_task_delivering_a_report_is_not_counted() -> None:
    rec = reporter(FakeClock(NOON))
    go = asyncio.Event()

    async def ordinary(domain: str) -> None:
        await go.wait()
        rec.record(domain, policy=None)

    busy = asyncio.create_task(ordinary("busy.example"))  # an ordinary delivery running meanwhile
    with report_delivery():
        assert in_report_delivery()
        rec.record("reports.example", policy=None)
        spawned = asyncio.create_task(ordinary("spawned.example"))  # started by the report's delivery
        go.set()
        await asyncio.gather(busy, spawned)
    assert not in_report_delivery()
    assert [r.policy_domain for r in rec.build_reports(DAY)] == ["busy.example"]


# -- one report per Policy Domain (§1.1, §3) -----------------------------------------------------------------------


async def test_recipient_domains_behind_one_dane_mx_host_share_its_one_report(world: World, mail: MailWorld) -> None:
    host = "mx.hoster.example"
    collector, runner = await start_collector(world)
    await mail.add_mx(host, "valid")
    world.tlsa(f"_{mail.port}._tcp.{host}", 3, 1, 1, world.tlsa_data(host, "valid"))
    world.sign("hoster.example")
    for domain in ("a.example", "b.example", host):
        world.add_record(f"_smtp._tls.{domain}", "TXT", f"v=TLSRPTv1; rua={collector.uri()}")
    for domain in ("a.example", "b.example"):
        mail.set_mx(domain, (10, host))
        world.sign(domain)
    clock = FakeClock(NOON)
    rec = reporter(clock, send_window=0)
    async with world.policy_resolver(clock=clock) as resolver:
        for domain in ("a.example", "b.example"):
            result = await deliver(MESSAGE, [f"bob@{domain}"], resolver=resolver, sender="alice@sender.example",
                                   port=mail.port, tls_context=world.client_ssl_context(), dane=True,
                                   reporter=rec.record_attempt)  # fmt: skip
            assert result.delivered and result.attempts[0].dane
        [report] = rec.build_reports(DAY)  # one, for the TLSA base domain — not one per recipient domain
        validate(report.json)
        assert report.policy_domain == host
        [entry] = report.json["policies"]
        assert entry["policy"]["policy-type"] == "tlsa" and entry["policy"]["policy-domain"] == host
        assert entry["summary"] == {"total-successful-session-count": 2, "total-failure-session-count": 0}
        clock.now = MIDNIGHT + 3600
        sender = ReportSender(resolver=resolver, ssl_context=world.client_ssl_context(), timeout=5)
        outcomes = await rec.send_due_outcomes(resolver, sender=sender)
    await runner.cleanup()
    assert [(o.domain, o.status) for o in outcomes] == [(host, ReportStatus.DELIVERED)]
    assert len(collector.hits) == 1


async def test_recipient_domains_relayed_through_one_smart_host_share_its_one_report(
    world: World, mail: MailWorld
) -> None:
    relay = "relay.example"
    world.publish(relay, sts(relay))
    await mail.add_mx(f"mx.{relay}", "valid")
    mail.set_mx(relay, (10, f"mx.{relay}"))
    clock = FakeClock(NOON)
    rec = reporter(clock)
    async with world.policy_resolver(clock=clock) as resolver:
        for domain in ("a.example", "b.example"):
            result = await deliver(MESSAGE, [f"bob@{domain}"], resolver=resolver, sender="alice@sender.example",
                                   port=mail.port, tls_context=world.client_ssl_context(), next_hop=relay,
                                   reporter=rec.record_attempt)  # fmt: skip
            assert result.delivered
    [report] = rec.build_reports(DAY)  # RFC 8460 §1.1: the smart host's domain is the Policy Domain
    validate(report.json)
    [entry] = report.json["policies"]
    assert report.policy_domain == relay and entry["policy"]["policy-domain"] == relay
    assert entry["policy"]["policy-type"] == "sts" and entry["summary"]["total-successful-session-count"] == 2

    # the same policy *text* (say, a CNAME'd _mta-sts) under two recipient domains is two Policy Domains
    shared = parse_policy(sts("hoster.example"))
    rec = reporter(clock)
    for domain in ("a.example", "b.example"):
        rec.record(domain, policy=shared, mx_host="mx.hoster.example")
    assert [r.policy_domain for r in rec.build_reports(DAY)] == ["a.example", "b.example"]
