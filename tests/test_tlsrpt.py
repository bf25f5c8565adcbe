"""TLS-RPT (RFC 8460): the _smtp._tls record, the session recorder, daily reports against a JSON Schema of §4.4."""

from __future__ import annotations

import datetime
import gzip
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from mtasts import MTASTSError, PolicyResolver, parse_policy
from mtasts.delivery import DeliveryStatus, deliver
from mtasts.stores import MemoryStore, SQLiteStore
from mtasts.testing import World
from mtasts.tlsrpt import TlsRptRecordError, parse_tlsrpt_record, select_tlsrpt_record
from mtasts.tlsrpt.recorder import TLSReporter

from ._smtp import MailWorld
from .conftest import FakeClock

SCHEMA = json.loads((Path(__file__).parent / "tlsrpt_schema.json").read_text())
ENFORCE = "version: STSv1\r\nmode: enforce\r\nmx: mx1.example.com\r\nmx: *.mail.example.com\r\nmax_age: 604800\r\n"
DAY = datetime.date(2027, 1, 15)
NOON = datetime.datetime(2027, 1, 15, 12, tzinfo=datetime.UTC).timestamp()


def validate(report_json: dict[str, Any]) -> None:
    jsonschema.validate(report_json, SCHEMA, format_checker=jsonschema.FormatChecker())


# -- the _smtp._tls record (§3) -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "rua"),
    [
        ("v=TLSRPTv1;rua=mailto:reports@example.com", ("mailto:reports@example.com",)),
        ("v=TLSRPTv1; rua=https://r.example/v1, mailto:a@b.example", ("https://r.example/v1", "mailto:a@b.example")),
        ("v=TLSRPTv1 ; rua=mailto:a@b.example ; ext=1 ;", ("mailto:a@b.example",)),
        ("v=TLSRPTv1; rua=ftp://x.example,https://r.example/", ("https://r.example/",)),
        ("v=TLSRPTv1; rua=mailto:a@b.example; rua=https://ignored.example/", ("mailto:a@b.example",)),
        ("v=TLSRPTv1; rua=mailto:a@b%21c.example", ("mailto:a@b%21c.example",)),
    ],
)
def test_valid_tlsrpt_records(text: str, rua: tuple[str, ...]) -> None:
    assert parse_tlsrpt_record(text).rua == rua
    assert parse_tlsrpt_record(text.encode()).rua == rua


@pytest.mark.parametrize(
    "text",
    [
        "v=TLSRPTv1",
        "v=TLSRPTv1;",
        "v=tlsrptv1; rua=mailto:a@b.example",
        "v=TLSRPTv1; ext=1",  # rua is required
        "v=TLSRPTv1; rua=",
        "v=TLSRPTv1; rua=mailto:a@b!c.example",  # "!" MUST be encoded
        "v=TLSRPTv1; rua=ftp://only.example",  # no supported scheme left
        "rua=mailto:a@b.example; v=TLSRPTv1",
        b"v=TLSRPTv1; rua=mailto:\xff@b.example",
    ],
)
def test_invalid_tlsrpt_records(text: str | bytes) -> None:
    with pytest.raises(TlsRptRecordError) as info:
        parse_tlsrpt_record(text)
    assert isinstance(info.value, MTASTSError)


def test_tlsrpt_multiple_record_rule() -> None:
    one = "v=TLSRPTv1; rua=mailto:a@b.example"
    assert select_tlsrpt_record(["v=spf1 -all", one]) is not None
    assert select_tlsrpt_record([one, "v=TLSRPTv1; rua=mailto:c@d.example"]) is None
    assert select_tlsrpt_record([]) is None


# -- recording and reports (§4) ----------------------------------------------------------------------------------


def reporter(clock: FakeClock, **kwargs: Any) -> TLSReporter:
    return TLSReporter(organization_name="Sender Inc.", contact_info="tlsrpt@sender.example", clock=clock, **kwargs)


def test_a_day_of_sessions_makes_one_report_per_domain() -> None:
    clock = FakeClock(NOON)
    rec = reporter(clock)
    policy = parse_policy(ENFORCE)
    for _ in range(3):
        rec.record("example.com", policy=policy, mx_host="mx1.example.com", sending_ip="192.0.2.1",
                   receiving_ip="203.0.113.5")  # fmt: skip
    for _ in range(2):
        rec.record("Example.COM", policy=policy, mx_host="MX1.example.com.", result_type="certificate-expired",
                   sending_ip="2001:0db8:0000::0001", receiving_ip="203.0.113.5",
                   failure_reason_code="certificate has expired")  # fmt: skip
    rec.record("other.example", policy=None, mx_host="mx.other.example")
    clock.advance(86400)  # the next day's sessions do not belong to DAY's reports
    rec.record("example.com", policy=policy, mx_host="mx1.example.com")
    reports = rec.build_reports(DAY)
    assert [r.policy_domain for r in reports] == ["example.com", "other.example"]
    for report in reports:
        validate(report.json)
    document = reports[0].json
    assert document["date-range"] == {"start-datetime": "2027-01-15T00:00:00Z", "end-datetime": "2027-01-15T23:59:59Z"}
    assert document["organization-name"] == "Sender Inc." and document["contact-info"] == "tlsrpt@sender.example"
    [entry] = document["policies"]
    assert entry["policy"] == {
        "policy-type": "sts",
        "policy-string": ["version: STSv1", "mode: enforce", "mx: mx1.example.com", "mx: *.mail.example.com",
                          "max_age: 604800"],
        "policy-domain": "example.com",
        "mx-host": ["mx1.example.com", "*.mail.example.com"],
    }  # fmt: skip
    assert entry["summary"] == {"total-successful-session-count": 3, "total-failure-session-count": 2}
    assert entry["failure-details"] == [
        {"result-type": "certificate-expired", "sending-mta-ip": "2001:db8::1", "receiving-mx-hostname":
         "mx1.example.com", "receiving-ip": "203.0.113.5", "failure-reason-code": "certificate has expired",
         "failed-session-count": 2}
    ]  # fmt: skip
    other = reports[1].json["policies"][0]
    assert other["policy"]["policy-type"] == "no-policy-found" and other["policy"]["mx-host"] == []
    assert other["summary"] == {"total-successful-session-count": 1, "total-failure-session-count": 0}
    assert "failure-details" not in other


def test_file_name_and_gzip() -> None:
    clock = FakeClock(NOON)
    rec = reporter(clock)
    rec.record("xn--bcher-kva.example", policy=None)
    [report] = rec.build_reports(DAY)
    begin = int(datetime.datetime(2027, 1, 15, tzinfo=datetime.UTC).timestamp())
    assert re.fullmatch(rf"sender\.example!xn--bcher-kva\.example!{begin}!{begin + 86399}![0-9a-f]+\.json\.gz",
                        report.filename)  # fmt: skip
    compressed = report.gzip()
    assert compressed[:2] == b"\x1f\x8b" and json.loads(gzip.decompress(compressed)) == report.json
    assert rec.build_reports(DAY)[0].report_id == report.report_id  # the same report, the same id
    assert rec.build_reports(DAY + datetime.timedelta(days=1)) == []


def test_mode_none_and_dane() -> None:
    clock = FakeClock(NOON)
    rec = reporter(clock)
    none = parse_policy("version: STSv1\nmode: none\nmax_age: 86400\n")
    rec.record("none.example", policy=none)
    rec.record("none.example", policy=none, result_type="starttls-not-supported")  # not reportable (§6)
    rec.record("mx.dane.example", policy=parse_policy(ENFORCE), dane=True, result_type="tlsa-invalid")
    reports = {r.policy_domain: r.json for r in rec.build_reports(DAY)}
    assert reports["none.example"]["policies"][0]["policy"]["policy-type"] == "no-policy-found"
    assert reports["none.example"]["policies"][0]["summary"]["total-failure-session-count"] == 0
    dane = reports["mx.dane.example"]["policies"][0]
    assert dane["policy"]["policy-type"] == "tlsa" and dane["failure-details"][0]["result-type"] == "tlsa-invalid"
    for document in reports.values():
        validate(document)


def test_contact_info_must_be_an_address() -> None:
    with pytest.raises(MTASTSError):
        TLSReporter(organization_name="x", contact_info="not-an-address")


async def test_counts_survive_a_restart_and_sum_across_processes(tmp_path: Path) -> None:
    clock = FakeClock(NOON)
    path = tmp_path / "policies.sqlite3"
    first = reporter(clock, store=SQLiteStore(path))
    second = reporter(clock, store=SQLiteStore(path))
    for _ in range(5):
        first.record("example.com", policy=None)
    for _ in range(2):
        second.record("example.com", policy=None, result_type="starttls-not-supported", mx_host="mx.example.com")
    await first.aclose()
    await second.aclose()
    restarted = reporter(clock, store=SQLiteStore(path))
    await restarted.start()
    for report in (restarted.build_reports(DAY)[0], (await restarted.collect_reports(DAY))[0]):
        summary = report.json["policies"][0]["summary"]
        assert summary == {"total-successful-session-count": 5, "total-failure-session-count": 2}
    await restarted._store.aclose()
    for store in (first._store, second._store):
        await store.aclose()


async def test_a_store_outage_keeps_the_counts() -> None:
    class Broken(MemoryStore):
        fail = True

        async def add_session_counts(self, counts: Any) -> None:
            if self.fail:
                raise OSError("disk full")
            await super().add_session_counts(counts)

    store = Broken()
    rec = reporter(FakeClock(NOON), store=store)
    rec.record("example.com", policy=None)
    assert not await rec.flush()
    store.fail = False
    assert await rec.flush()
    assert sum(n for *_, n in await store.session_counts()) == 1


# -- wired to the delivery helper and the resolver ----------------------------------------------------------------


async def test_delivery_attempts_and_fetch_failures_are_recorded(world: World, mail: MailWorld) -> None:
    clock = FakeClock(NOON)
    rec = reporter(clock)
    world.publish("example.com", ENFORCE, id="1")
    world.publish("broken.example", ENFORCE, id="1", status=500)
    await mail.add_mx("mx1.example.com", "expired")
    await mail.add_mx("a.mail.example.com", "valid")
    mail.set_mx("example.com", (10, "mx1.example.com"), (20, "a.mail.example.com"))
    resolver: PolicyResolver = world.policy_resolver(clock=clock, on_fetch_failure=rec.record_fetch_failure)
    async with resolver:
        result = await deliver(b"Subject: x\r\n\r\nhi\r\n", ["bob@example.com"], resolver=resolver,
                               sender="a@sender.example", port=mail.port, tls_context=world.client_ssl_context(),
                               reporter=rec.record_attempt)  # fmt: skip
        assert result.status is DeliveryStatus.DELIVERED
        await resolver.lookup("broken.example")
    reports = {r.policy_domain: r.json for r in rec.build_reports(DAY)}
    entry = reports["example.com"]["policies"][0]
    assert entry["summary"] == {"total-successful-session-count": 1, "total-failure-session-count": 1}
    [detail] = entry["failure-details"]
    assert detail["result-type"] == "certificate-expired" and detail["receiving-mx-hostname"] == "mx1.example.com"
    assert detail["receiving-ip"] == "127.0.0.2" and detail["sending-mta-ip"] == "127.0.0.1"
    broken = reports["broken.example"]["policies"][0]
    assert broken["policy"]["policy-type"] == "no-policy-found"
    assert broken["failure-details"][0]["result-type"] == "sts-policy-fetch-error"
    assert "receiving-ip" not in broken["failure-details"][0]  # unknown fields are left out
    for document in reports.values():
        validate(document)


# -- sending what is due (§4.1, §5.5) -------------------------------------------------------------------------


async def test_send_due_delivers_each_report_once_with_retries(world: World, tmp_path: Path) -> None:
    from mtasts.tlsrpt.send import ReportSender

    from .test_tlsrpt_send import start_collector

    collector, runner = await start_collector(world)
    collector.script = [500, 503]  # fails twice, then accepts
    world.add_record("_smtp._tls.example.com", "TXT", f"v=TLSRPTv1; rua={collector.uri()}")
    clock = FakeClock(NOON)
    rec = reporter(clock, store=SQLiteStore(tmp_path / "p.sqlite3"), send_delay=3600, send_window=0)
    for _ in range(4):
        rec.record("example.com", policy=parse_policy(ENFORCE), mx_host="mx1.example.com")
    rec.record("nobody.example", policy=None)  # publishes no _smtp._tls record
    [expected] = [r for r in rec.build_reports(DAY) if r.policy_domain == "example.com"]
    async with world.policy_resolver(clock=clock) as resolver:
        sender = ReportSender(resolver=resolver, ssl_context=world.client_ssl_context(), timeout=5)
        assert await rec.send_due(resolver, sender=sender) == []  # the day is not over yet
        clock.now = NOON + 12 * 3600 + 1800  # 00:30 the next day: still inside send_delay
        assert await rec.send_due(resolver, sender=sender) == []
        clock.now = NOON + 12 * 3600 + 3601
        outcomes = {o["domain"]: o for o in await rec.send_due(resolver, sender=sender)}
        assert outcomes["nobody.example"]["status"] == "no-record"
        assert outcomes["example.com"]["status"] == "retry"
        assert await rec.send_due(resolver, sender=sender) == []  # backing off
        statuses = []
        for _ in range(10):
            clock.advance(1800)
            statuses += [o["status"] for o in await rec.send_due(resolver, sender=sender)]
            if "delivered" in statuses:
                break
        assert statuses == ["retry", "delivered"]
        clock.advance(86400)
        assert await rec.send_due(resolver, sender=sender) == []  # done: never sent twice
    await runner.cleanup()
    assert len(collector.hits) == 3
    hit = collector.hits[-1]
    assert hit.method == "POST" and hit.content_type == "application/tlsrpt+gzip"
    assert json.loads(gzip.decompress(hit.body)) == expected.json
    validate(expected.json)
    assert await rec._store.session_counts() == []  # delivered reports' counters are gone
    await rec.aclose()
    await rec._store.aclose()


async def test_tlsrpt_cli_show_and_send(world: World, tmp_path: Path) -> None:
    import asyncio
    import sys

    from .test_tlsrpt_send import start_collector

    collector, runner = await start_collector(world)
    world.add_record("_smtp._tls.example.com", "TXT", f"v=TLSRPTv1; rua={collector.uri()}")
    store_spec = f"sqlite:{tmp_path / 'p.sqlite3'}"
    # two days ago: due whatever the hour (a day's report waits for send_delay after its midnight)
    yesterday = datetime.datetime.now(datetime.UTC).date() - datetime.timedelta(days=2)
    noon = datetime.datetime.combine(yesterday, datetime.time(12), datetime.UTC).timestamp()
    rec = reporter(FakeClock(noon), store=SQLiteStore(tmp_path / "p.sqlite3"))
    rec.record("example.com", policy=parse_policy(ENFORCE), mx_host="mx1.example.com")
    await rec.aclose()
    await rec._store.aclose()

    async def run(*args: str) -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mtasts", "tlsrpt", *args, "--store", store_spec,
            "--contact", "tlsrpt@sender.example", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode is not None, err
        return process.returncode, out.decode()

    code, out = await run("show", "--json", "--day", yesterday.isoformat())
    assert code == 0
    [document] = json.loads(out)
    validate(document)
    assert document["policies"][0]["summary"]["total-successful-session-count"] == 1
    code, out = await run("send", "--nameserver", f"127.0.0.1:{world.dns_port}", "--cafile", world.ca_pem_path)
    assert code == 0 and json.loads(out.splitlines()[0])["status"] == "delivered"
    await runner.cleanup()
    assert len(collector.hits) == 1


# -- typed outcomes and named keys (issue 14) ---------------------------------------------------------------------


def test_counter_keys_name_the_report_fields() -> None:
    from mtasts.tlsrpt import FailureKey, PolicyKey
    from mtasts.tlsrpt.report import DETAIL_FIELDS

    assert tuple(name.replace("_", "-") for name in FailureKey._fields) == DETAIL_FIELDS  # §4.4, in order
    rec = reporter(FakeClock(NOON))
    for _ in range(2):  # the second session finds the key made for the first
        rec.record("example.com", policy=None, mx_host="MX.example.com.", result_type="certificate-expired",
                   sending_ip="2001:db8:0::1")  # fmt: skip
    [(day, policy, failure)] = rec._pending
    assert policy == PolicyKey("no-policy-found", "example.com", (), ())
    assert failure == FailureKey(
        "certificate-expired", sending_mta_ip="2001:db8::1", receiving_mx_hostname="mx.example.com"
    )
    assert rec._pending[(day, policy, failure)] == 2


def test_report_outcomes_as_the_json_objects_the_cli_prints() -> None:
    from mtasts.tlsrpt import ReportOutcome, ReportStatus

    assert [list(ReportOutcome("a.example", DAY, status, **extra).as_dict().items()) for status, extra in [
        (ReportStatus.DELIVERED, {"to": "https://c.example/r"}),
        (ReportStatus.RETRY, {"error": "x: HTTP 500", "next_attempt": 1.5}),
        (ReportStatus.GAVE_UP, {"error": ""}),
        (ReportStatus.NO_RECORD, {}),
    ]] == [
        [("domain", "a.example"), ("day", "2027-01-15"), ("status", "delivered"), ("to", "https://c.example/r")],
        [("domain", "a.example"), ("day", "2027-01-15"), ("status", "retry"), ("error", "x: HTTP 500"),
         ("next_attempt", 1.5)],
        [("domain", "a.example"), ("day", "2027-01-15"), ("status", "gave-up"), ("error", "")],
        [("domain", "a.example"), ("day", "2027-01-15"), ("status", "no-record")],
    ]  # fmt: skip
    assert json.dumps(ReportOutcome("a.example", DAY, ReportStatus.EMPTY).as_dict()) == (
        '{"domain": "a.example", "day": "2027-01-15", "status": "empty"}'
    )


async def test_send_due_outcomes_are_typed_and_send_due_gives_them_as_json_objects(world: World) -> None:
    from mtasts.tlsrpt import ReportStatus
    from mtasts.tlsrpt.send import ReportSender

    from .test_tlsrpt_send import Outbox, start_collector

    collector, runner = await start_collector(world)
    world.add_record("_smtp._tls.example.com", "TXT", f"v=TLSRPTv1; rua={collector.uri()}")
    world.add_record("_smtp._tls.bad.example", "TXT", "v=TLSRPTv1; rua=mailto:nobody")  # no usable address
    world.set_failure("_smtp._tls.broken.example", "servfail")
    clock = FakeClock(NOON)
    typed, plain = reporter(clock, send_window=0), reporter(clock, send_window=0)  # due an hour after midnight
    for rec in (typed, plain):
        for domain in ("example.com", "bad.example", "broken.example", "nobody.example"):
            rec.record(domain, policy=None)
    clock.now = NOON + 12 * 3600 + 3601  # the next day, after send_delay
    async with world.policy_resolver(clock=clock) as resolver:
        sender = ReportSender(resolver=resolver, ssl_context=world.client_ssl_context(), timeout=5, mailer=Outbox())
        outcomes = await typed.send_due_outcomes(resolver, sender=sender)
        objects = await plain.send_due(resolver, sender=sender)
    await runner.cleanup()
    assert [(o.domain, o.day, o.status) for o in outcomes] == [
        ("bad.example", DAY, ReportStatus.GAVE_UP),
        ("broken.example", DAY, ReportStatus.RETRY),
        ("example.com", DAY, ReportStatus.DELIVERED),
        ("nobody.example", DAY, ReportStatus.NO_RECORD),
    ]
    broken = outcomes[1]
    assert broken.next_attempt == clock.now + 300 and "DNS failure" in (broken.error or "")
    assert [list(o.items()) for o in objects] == [list(o.as_dict().items()) for o in outcomes]
    assert objects[0] == {"domain": "bad.example", "day": "2027-01-15", "status": "gave-up",
                          "error": "mailto:nobody: not a usable mail address: 'nobody'"}  # fmt: skip
    assert objects[2] == {"domain": "example.com", "day": "2027-01-15", "status": "delivered", "to": collector.uri()}
    assert objects[3] == {"domain": "nobody.example", "day": "2027-01-15", "status": "no-record"}
    assert len(collector.hits) == 2  # one report each
