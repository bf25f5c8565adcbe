"""mtasts.tlsrpt.send: rua discovery, HTTPS and mail delivery of reports, the retry schedule (RFC 8460 §3, §5).

Real loopback servers only: an aiohttp HTTPS collector and aiosmtpd MX hosts, names resolved by the World's DNS.
"""

from __future__ import annotations

import asyncio
import datetime
import email
import email.policy
import gzip
import itertools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

import pytest
from aiohttp import web

from mtasts import MTASTSError, PolicyResolver
from mtasts.delivery import DeliveryStatus, deliver
from mtasts.testing import World
from mtasts.tlsrpt.report import Report, build_report
from mtasts.tlsrpt.send import (
    ReportSender,
    RetryPolicy,
    RuaStatus,
    SendResult,
    discover_rua,
)

from ._smtp import MailWorld, free_port
from .conftest import FakeClock

COLLECTOR = "collector.example"
RUA_DOMAIN = "reports.example"
STS_POLICY = f"version: STSv1\nmode: enforce\nmx: mx.{RUA_DOMAIN}\nmax_age: 86400\n"


def make_report(*, contact: str = "tlsrpt@sender.example") -> Report:
    policy = {
        "policy-type": "sts",
        "policy-string": ["version: STSv1", "mode: enforce", "mx: mx1.example.com", "max_age: 86400"],
        "policy-domain": "example.com",
        "mx-host": ["mx1.example.com"],
    }
    detail = {"result-type": "certificate-expired", "receiving-mx-hostname": "mx1.example.com"}
    return build_report(
        organization_name="Sender Inc.",
        contact_info=contact,
        sender_domain="sender.example",
        policy_domain="example.com",
        day=datetime.date(2026, 11, 25),
        policies=[(policy, 12, [(detail, 3)])],
    )


# -- an HTTPS collector ------------------------------------------------------------------------------------------


@dataclass
class Hit:
    method: str
    path: str
    content_type: str | None
    content_encoding: str | None
    user_agent: str | None
    body: bytes


@dataclass
class Collector:
    """Stores every request; answers from ``script`` (then 200). A 3xx carries ``Location: /elsewhere``."""

    hits: list[Hit] = field(default_factory=list)
    script: list[int] = field(default_factory=list)
    stall: asyncio.Event | None = None  # set: the handler waits for it (a collector that never answers)
    port: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.hits.append(
            Hit(
                request.method,
                request.path,
                request.headers.get("Content-Type"),
                request.headers.get("Content-Encoding"),
                request.headers.get("User-Agent"),
                await request.read(),
            )
        )
        if self.stall is not None:
            await self.stall.wait()
        status = self.script.pop(0) if self.script else 200
        if 300 <= status < 400:
            return web.Response(status=status, headers={"Location": "/elsewhere"})
        return web.Response(status=status, text="thanks" if status < 300 else "no")

    def uri(self, path: str = "/v1/tlsrpt", host: str = COLLECTOR) -> str:
        return f"https://{host}:{self.port}{path}"


async def start_collector(world: World, host: str = COLLECTOR, kind: str = "valid") -> tuple[Collector, web.AppRunner]:
    collector = Collector()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", collector.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, world.host, 0, ssl_context=world.server_ssl_context(host, kind))
    await site.start()
    collector.port = runner.addresses[0][1]
    world.add_record(host, "A", world.host)
    return collector, runner


@pytest.fixture
async def collector(world: World) -> AsyncIterator[Collector]:
    collector, runner = await start_collector(world)
    yield collector
    if collector.stall is not None:
        collector.stall.set()
    await runner.cleanup()


@pytest.fixture
async def resolver(world: World) -> AsyncIterator[PolicyResolver]:
    async with world.policy_resolver(clock=FakeClock(), fetch_timeout=5) as r:
        yield r


def https_sender(world: World, **kwargs: Any) -> ReportSender:
    kwargs.setdefault("ssl_context", world.client_ssl_context())
    kwargs.setdefault("timeout", 5)
    return ReportSender(dns_resolver=world.resolver(), **kwargs)


class Outbox:
    """A ``mailer``: what the caller's own MTA would have been handed."""

    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[bytes, str, list[str]]] = []
        self.fail = fail

    async def __call__(self, message: bytes, sender: str, recipients: list[str]) -> None:
        if self.fail:
            raise ConnectionRefusedError("local MTA down")
        self.sent.append((message, sender, recipients))


def parse(message: bytes) -> EmailMessage:
    parsed = email.message_from_bytes(message, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def assert_report_message(message: bytes, report: Report, *, to: str, submitter: str = "sender.example") -> None:
    """The §5.3 structure: multipart/report; report-type=tlsrpt, text then application/tlsrpt+gzip."""
    msg = parse(message)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "tlsrpt"
    assert msg["MIME-Version"] == "1.0"
    human, machine = list(msg.iter_parts())
    assert human.get_content_type() == "text/plain"
    assert "aggregate TLS report" in human.get_content() and report.report_id in human.get_content()
    assert machine.get_content_type() == "application/tlsrpt+gzip"
    assert machine["Content-Transfer-Encoding"] == "base64"
    assert machine.get_content_disposition() == "attachment"
    assert machine.get_filename() == report.filename
    payload = machine.get_payload(decode=True)
    assert isinstance(payload, bytes)
    assert json.loads(gzip.decompress(payload)) == report.json
    # headers (§5.3 MUST / SHOULD)
    assert msg["TLS-Report-Domain"] == "example.com"
    assert msg["TLS-Report-Submitter"] == submitter
    assert msg["TLS-Required"] == "No"  # RFC 8689: relays, too, deliver it despite MTA-STS / DANE failures
    assert msg["Subject"] == (
        f"Report Domain: example.com Submitter: {submitter} Report-ID: <{report.report_id}@{submitter}>"
    )
    assert msg["To"] == to and msg["From"] == "tlsrpt@sender.example"
    assert msg["Date"] and msg["Message-ID"].endswith(f"@{submitter}>")
    assert b"\r\n" in message and b"\n" not in message.replace(b"\r\n", b"")  # CRLF throughout
    assert f'filename="{report.filename}"'.encode() in message  # one plain parameter, as in §5.3.1
    lines = message.split(b"\r\n")
    assert max(map(len, lines)) <= 998
    body = message.split(b"Content-Transfer-Encoding: base64\r\n", 1)[1].split(b"\r\n\r\n", 1)[1]
    assert max(len(line) for line in body.split(b"\r\n--")[0].split(b"\r\n")) <= 76  # RFC 2045 §6.8


# -- HTTPS (§5.4) ------------------------------------------------------------------------------------------------


async def test_https_post_of_the_gzip_report(world: World, collector: Collector) -> None:
    report = make_report()
    result = await https_sender(world, user_agent="test-agent").send(report, [collector.uri()])
    assert result == SendResult(True, collector.uri(), result.attempts) and result.delivered
    [attempt] = result.attempts
    assert attempt.accepted and attempt.http_status == 200 and attempt.error is None
    [hit] = collector.hits
    assert (hit.method, hit.path) == ("POST", "/v1/tlsrpt")
    assert hit.content_type == "application/tlsrpt+gzip"
    assert hit.content_encoding is None  # a media type, not a content coding
    assert hit.user_agent == "test-agent"
    assert json.loads(gzip.decompress(hit.body)) == report.json
    assert world.queries(COLLECTOR, "A") >= 1  # resolved through the world's DNS


async def test_500_twice_then_200_on_the_retry_schedule(world: World, collector: Collector) -> None:
    collector.script = [500, 503]
    sender, report, retry, clock = https_sender(world), make_report(), RetryPolicy(), FakeClock()
    first = clock.now
    attempts, times, results = 0, [], []
    while (due := retry.next_attempt(first, attempts, clock.now)) is not None:
        clock.now = due  # no sleeping: the fake clock jumps to the due time
        times.append(clock.now - first)
        result = await sender.send(report, [collector.uri()])
        results.append(result)
        attempts += 1
        if result.delivered:
            break
    assert times == [0, 300, 900]
    assert [r.delivered for r in results] == [False, False, True]
    assert [r.attempts[0].http_status for r in results] == [500, 503, 200]
    assert results[0].should_retry and "HTTP 500" in (results[0].attempts[0].error or "")
    assert len(collector.hits) == 3  # delivered exactly once, after two refusals


async def test_a_redirect_is_a_failure_and_is_not_followed(world: World, collector: Collector) -> None:
    collector.script = [302]
    result = await https_sender(world).send(make_report(), [collector.uri()])
    assert not result.delivered
    [attempt] = result.attempts
    assert attempt.http_status == 302 and "/elsewhere" in (attempt.error or "") and "not followed" in attempt.error
    assert [hit.path for hit in collector.hits] == ["/v1/tlsrpt"]  # /elsewhere never asked


async def test_certificate_verification_is_on_by_default(world: World) -> None:
    collector, runner = await start_collector(world, "untrusted.example", "untrusted")
    try:
        uri = collector.uri(host="untrusted.example")
        refused = await https_sender(world).send(make_report(), [uri])
        assert not refused.delivered and "certificate" in (refused.attempts[0].error or "").lower()
        assert collector.hits == []
        # §3: submitters MAY ignore certificate errors — only when asked to
        accepted = await https_sender(world, verify_https=False).send(make_report(), [uri])
        assert accepted.delivered and len(collector.hits) == 1
    finally:
        await runner.cleanup()


async def test_a_collector_that_does_not_answer_times_out(world: World, collector: Collector) -> None:
    collector.stall = asyncio.Event()
    result = await https_sender(world, timeout=0.3).send(make_report(), [collector.uri()])
    assert not result.delivered and "0.3 s" in (result.attempts[0].error or "")


async def test_unresolvable_unreachable_and_malformed_uris_are_attempt_errors(world: World) -> None:
    closed = free_port("127.0.0.1")
    world.add_record("down.example", "A", "127.0.0.1")
    rua = [
        "https://nowhere.example/x",  # NXDOMAIN
        f"https://down.example:{closed}/x",  # connection refused
        "https://[bad/x",  # not a URL
        "ftp://files.example/x",  # not a TLS-RPT scheme
    ]
    result = await https_sender(world).send(make_report(), rua)
    assert not result.delivered and result.uri is None
    assert [a.uri for a in result.attempts] == rua
    assert all(a.error for a in result.attempts)
    assert [a.permanent for a in result.attempts] == [False, False, True, True]
    assert "NXDOMAIN" in (result.attempts[0].error or "")
    assert len(result.errors) == 4 and result.should_retry


# -- first accept wins (§3) --------------------------------------------------------------------------------------


async def test_the_first_uri_fails_the_second_gets_it(world: World, collector: Collector) -> None:
    collector.script = [500]
    outbox = Outbox()
    rua = [collector.uri(), "mailto:tlsrpt@reports.example", collector.uri("/never")]
    result = await https_sender(world, mailer=outbox).send(make_report(), rua)
    assert result.delivered and result.uri == "mailto:tlsrpt@reports.example"
    assert [a.accepted for a in result.attempts] == [False, True]  # the third URI is not tried
    assert result.attempts[0].http_status == 500
    assert [hit.path for hit in collector.hits] == ["/v1/tlsrpt"]
    assert len(outbox.sent) == 1


async def test_every_uri_fails_each_error_is_recorded(world: World, collector: Collector) -> None:
    collector.script = [500]
    rua = [collector.uri(), "mailto:tlsrpt@reports.example"]
    result = await https_sender(world, mailer=Outbox(fail=True)).send(make_report(), rua)
    assert not result.delivered and result.uri is None
    assert [uri for uri, _ in result.errors] == rua
    assert "HTTP 500" in result.errors[0][1] and "local MTA down" in result.errors[1][1]
    assert result.should_retry
    empty = await https_sender(world).send(make_report(), [])
    assert not empty.delivered and empty.attempts == () and not empty.should_retry


# -- mail (§5.3) -------------------------------------------------------------------------------------------------


async def test_mailto_delivered_despite_a_failing_enforce_policy(
    world: World, mail: MailWorld, resolver: PolicyResolver
) -> None:
    # The rua domain publishes an enforce policy that its only MX fails (expired certificate).
    world.publish(RUA_DOMAIN, STS_POLICY, id="1")
    await mail.add_mx(f"mx.{RUA_DOMAIN}", "expired")
    mail.set_mx(RUA_DOMAIN, (10, f"mx.{RUA_DOMAIN}"))
    report = make_report()
    sender = ReportSender(
        resolver=resolver,
        submitter_domain="sender.example",
        port=mail.port,
        tls_context=world.client_ssl_context(),
        local_hostname="sender.example",
        timeout=10,
    )
    uri = "mailto:tls%2Breports@reports.example?subject=ignored%0D%0ABcc:%20evil@attacker.example"
    result = await sender.send(report, [uri])
    assert result.delivered and result.uri == uri
    [attempt] = result.attempts
    [delivery] = attempt.deliveries
    assert delivery.status is DeliveryStatus.DELIVERED and delivery.mx == f"mx.{RUA_DOMAIN}"
    [received] = mail.inbox.messages
    assert received.rcpt_tos == ["tls+reports@reports.example"]  # percent-decoded, ?query ignored
    assert received.mail_from == "tlsrpt@sender.example"
    assert received.tls  # opportunistic STARTTLS despite the expired certificate
    assert_report_message(received.content, report, to="tls+reports@reports.example")
    assert b"evil" not in received.content
    assert world.queries(f"_mta-sts.{RUA_DOMAIN}") == 0  # MTA-STS never consulted (§5.3 MUST NOT honor)

    # The same MX refuses ordinary mail under the policy: the report got through only because of mta_sts=False.
    ordinary = await deliver(
        received.content,
        ["tls+reports@reports.example"],
        resolver=resolver,
        sender="tlsrpt@sender.example",
        port=mail.port,
        tls_context=world.client_ssl_context(),
        local_hostname="sender.example",
    )
    assert ordinary.status is DeliveryStatus.DEFERRED and len(mail.inbox.messages) == 1


async def test_mailto_that_cannot_be_delivered(world: World, mail: MailWorld, resolver: PolicyResolver) -> None:
    await mail.add_mx(f"mx.{RUA_DOMAIN}", "valid", rcpt_reply="550 no such user")
    mail.set_mx(RUA_DOMAIN, (10, f"mx.{RUA_DOMAIN}"))
    sender = ReportSender(resolver=resolver, port=mail.port, tls_context=world.client_ssl_context(), timeout=10)
    result = await sender.send(make_report(), ["mailto:nobody@reports.example", "mailto:x@nx.example"])
    assert not result.delivered
    first, second = result.attempts
    assert first.permanent and "550" in (first.error or "") and first.deliveries[0].status is DeliveryStatus.FAILED
    assert second.permanent and "NXDOMAIN" in (second.error or "")
    assert not result.should_retry


async def test_dkim_hook_signs_what_is_sent() -> None:
    seen: list[bytes] = []

    def dkim_sign(message: bytes) -> bytes:
        seen.append(message)
        return b"DKIM-Signature: v=1; a=rsa-sha256; d=sender.example; s=tlsrpt; h=from:tls-report-domain\r\n" + message

    outbox = Outbox()
    report = make_report()
    sender = ReportSender(mailer=outbox, dkim_sign=dkim_sign, clock=FakeClock())
    result = await sender.send(report, ["mailto:tlsrpt@reports.example"])
    assert result.delivered
    [(message, from_address, recipients)] = outbox.sent
    assert from_address == "tlsrpt@sender.example" and recipients == ["tlsrpt@reports.example"]
    assert (
        message
        == b"DKIM-Signature: v=1; a=rsa-sha256; d=sender.example; s=tlsrpt; h=from:tls-report-domain\r\n" + (seen[0])
    )
    assert parse(message)["DKIM-Signature"].startswith("v=1;")
    assert_report_message(seen[0], report, to="tlsrpt@reports.example")
    assert parse(message)["Date"] == "Fri, 15 Jan 2027 08:00:00 +0000"  # from the injected clock

    def broken(message: bytes) -> bytes:
        raise RuntimeError("no key")

    failed = await ReportSender(mailer=outbox, dkim_sign=broken).send(report, ["mailto:tlsrpt@reports.example"])
    assert not failed.delivered and "no key" in (failed.attempts[0].error or "") and len(outbox.sent) == 1


async def test_idn_and_several_addresses_in_one_mailto() -> None:
    outbox = Outbox()
    sender = ReportSender(mailer=outbox, submitter_domain="SENDER.example.")
    result = await sender.send(make_report(), ["mailto:a@b%C3%BCcher.example,b@reports.example"])
    assert result.delivered
    [(message, _, recipients)] = outbox.sent
    assert recipients == ["a@xn--bcher-kva.example", "b@reports.example"]
    assert parse(message)["TLS-Report-Submitter"] == "sender.example"


@pytest.mark.parametrize(
    "uri",
    [
        "mailto:a%0D%0ABcc:evil@reports.example",  # header injection
        "mailto:<a@reports.example>",
        "mailto:a b@reports.example",
        "mailto:noat.example",
        "mailto:?to=a@reports.example",  # the address is in the hfields only: ignored
        "mailto:a@bad_domain!.example",
        "mailto:a@%FF.example",  # not UTF-8
    ],
)
async def test_unusable_mailto_addresses_are_refused(uri: str) -> None:
    outbox = Outbox()
    result = await ReportSender(mailer=outbox).send(make_report(), [uri])
    assert not result.delivered and result.attempts[0].permanent and result.attempts[0].error
    assert outbox.sent == []


async def test_submitter_must_match_the_contact_info_domain() -> None:
    outbox = Outbox()
    mismatch = await ReportSender(mailer=outbox, submitter_domain="other.example").send(
        make_report(), ["mailto:tlsrpt@reports.example"]
    )
    assert not mismatch.delivered and "contact-info" in (mismatch.attempts[0].error or "")
    no_address = await ReportSender(mailer=outbox).send(
        make_report(contact="https://sender.example/contact"), ["mailto:tlsrpt@reports.example"]
    )
    assert not no_address.delivered and no_address.attempts[0].permanent
    assert outbox.sent == []
    explicit_from = ReportSender(mailer=outbox, from_address="noreply@sender.example")
    assert (await explicit_from.send(make_report(), ["mailto:tlsrpt@reports.example"])).delivered
    assert outbox.sent[0][1] == "noreply@sender.example"
    with pytest.raises(MTASTSError):
        ReportSender(from_address="not an address")
    with pytest.raises(MTASTSError):
        ReportSender(submitter_domain="bad domain")


def test_the_message_is_built_without_io() -> None:
    """The §5.3 message is a pure function of the report, the identity, the recipients and the time."""
    from mtasts.tlsrpt.message import build_message, sender_identity

    report = make_report()
    submitter, from_address = sender_identity(report, submitter=None, from_address=None)
    assert (submitter, from_address) == ("sender.example", "tlsrpt@sender.example")
    message = build_message(report, submitter, from_address, ["tlsrpt@reports.example"], 1_800_000_000.0)
    assert_report_message(message, report, to="tlsrpt@reports.example")
    assert parse(message)["Date"] == "Fri, 15 Jan 2027 08:00:00 +0000"


# -- discovery (§3) ----------------------------------------------------------------------------------------------


async def test_discover_rua(world: World) -> None:
    resolver = world.resolver()
    world.add_record("_smtp._tls.good.example", "TXT", "v=TLSRPTv1; rua=mailto:r@good.example,https://c.example/x")
    world.add_record("_smtp._tls.good.example", "TXT", "some-other=record")
    found = await discover_rua(resolver, "GOOD.example.")
    assert found.status is RuaStatus.FOUND and found.error is None and found.reason is None
    assert found.rua == ("mailto:r@good.example", "https://c.example/x")

    # multi-string record, behind a CNAME
    world.add_record("_smtp._tls.alias.example", "CNAME", "_smtp._tls.target.example.")
    world.add_record("_smtp._tls.target.example", "TXT", ["v=TLSRPTv1; rua=mai", "lto:r@target.example"])
    assert (await discover_rua(resolver, "alias.example")).rua == ("mailto:r@target.example",)

    world.add_record("_smtp._tls.two.example", "TXT", "v=TLSRPTv1; rua=mailto:a@two.example")
    world.add_record("_smtp._tls.two.example", "TXT", "v=TLSRPTv1; rua=mailto:b@two.example")
    several = await discover_rua(resolver, "two.example")
    assert several.status is RuaStatus.INVALID and several.record is None and "2 v=TLSRPTv1" in (several.reason or "")
    assert several.error is None

    none = await discover_rua(resolver, "absent.example")
    assert none.status is RuaStatus.NONE and none.record is None and none.error is None and none.rua == ()

    world.set_failure("_smtp._tls.broken.example", "servfail")
    failed = await discover_rua(resolver, "broken.example")
    assert failed.status is RuaStatus.ERROR and failed.record is None
    assert failed.error is not None and "DNS failure" in failed.error

    world.add_record("_smtp._tls.utf8.example", "TXT", "v=TLSRPTv1; rua=mailto:rapport@exämple.example")
    utf8 = await discover_rua(resolver, "utf8.example")
    assert utf8.status is RuaStatus.INVALID and "US-ASCII" in (utf8.reason or "")

    world.add_record("_smtp._tls.ftp.example", "TXT", "v=TLSRPTv1; rua=ftp://files.ftp.example/x")
    ftp = await discover_rua(resolver, "ftp.example")
    assert ftp.status is RuaStatus.INVALID and ftp.error is None

    world.add_record("_smtp._tls.other.example", "TXT", "v=spf1 -all")
    assert (await discover_rua(resolver, "other.example")).status is RuaStatus.NONE
    assert (await discover_rua(resolver, "not a domain")).status is RuaStatus.NONE


# -- retry schedule (§5.5) ---------------------------------------------------------------------------------------


def test_retry_schedule_grows_then_stops_after_24_hours() -> None:
    retry, first = RetryPolicy(), 1_000_000.0
    assert [retry.delay(n) for n in range(1, 9)] == [300, 600, 1200, 2400, 4800, 7200, 7200, 7200]
    times, attempts = [], 0
    while (due := retry.next_attempt(first, attempts, first)) is not None:
        times.append(due - first)
        attempts += 1
    assert times[:7] == [0, 300, 900, 2100, 4500, 9300, 16500]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps == sorted(gaps) and max(gaps) == 7200  # exponential, capped
    assert times[-1] <= 86400 < times[-1] + 7200  # the last one within the 24 hours
    # closed form equals the sum of the delays
    assert all(retry.offset(n) == sum(retry.delay(k) for k in range(1, n + 1)) for n in range(40))


def test_retry_next_attempt_with_a_late_clock() -> None:
    retry, first = RetryPolicy(), 0.0
    assert retry.next_attempt(first, 1, now=100.0) == 300.0
    assert retry.next_attempt(first, 1, now=5000.0) == 5000.0  # overdue: due now
    assert retry.next_attempt(first, 1, now=86400.0) == 86400.0  # still within the 24 hours
    assert retry.next_attempt(first, 1, now=86400.5) is None  # the 24 hours are over
    assert retry.next_attempt(first, 10**9, now=0.0) is None  # huge counts: no overflow
    flat = RetryPolicy(first_delay=60, factor=1, max_delay=60, give_up_after=300)
    assert [flat.next_attempt(0, n, 0) for n in range(7)] == [0, 60, 120, 180, 240, 300, None]


@pytest.mark.parametrize(
    "kwargs",
    [{"first_delay": 0}, {"factor": 0.5}, {"max_delay": 10}, {"give_up_after": -1}, {"first_delay": float("nan")}],
)
def test_retry_policy_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(MTASTSError):
        RetryPolicy(**kwargs)
