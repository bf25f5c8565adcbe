"""mtasts.delivery against real aiosmtpd MX servers with STARTTLS and trustme certificates (issue 4)."""

from __future__ import annotations

import asyncio
import errno
import inspect
import random
import ssl
from collections.abc import AsyncIterator
from email.message import EmailMessage
from typing import Any

import aiosmtplib
import aiosmtplib.errors
import pytest
from aiosmtpd.smtp import SMTP

from mtasts import LocalError, MTASTSError, PolicyResolver
from mtasts._smtp import SMTP_ERRORS, map_smtp_errors
from mtasts.delivery import Attempt, DeliveryResult, DeliveryStatus, deliver, find_mx_hosts, probe_starttls
from mtasts.errors import (
    NoStartTLSError,
    SMTPConnectionError,
    SMTPError,
    SMTPRecipientsRefusedError,
    SMTPReplyError,
    SMTPTLSError,
)
from mtasts.testing import World

from ._smtp import MailWorld
from .conftest import FakeClock

DOMAIN = "example.com"


def policy(mode: str, *patterns: str) -> str:
    mx = "".join(f"mx: {p}\n" for p in patterns)
    return f"version: STSv1\nmode: {mode}\n{mx}max_age: 86400\n"


def message() -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "alice@sender.example"
    msg["To"] = "bob@example.com"
    msg["Subject"] = "hello"
    msg.set_content("Hello over MTA-STS.\n")
    return msg


@pytest.fixture
async def resolver(world: World) -> AsyncIterator[PolicyResolver]:
    async with world.policy_resolver(clock=FakeClock(), fetch_timeout=5) as r:
        yield r


async def send(world: World, mail: MailWorld, resolver: PolicyResolver, **kwargs: Any) -> DeliveryResult:
    attempts: list[Attempt] = []
    kwargs.setdefault("reporter", attempts.append)
    result = await deliver(
        message(),
        ["bob@example.com"],
        resolver=resolver,
        port=mail.port,
        tls_context=world.client_ssl_context(),
        local_hostname="sender.example",
        command_timeout=10,
        **kwargs,
    )
    if kwargs["reporter"] == attempts.append:
        assert tuple(attempts) == result.attempts  # the reporter saw every attempt
    return result


def publish(world: World, mode: str | None, *patterns: str, id: str = "1") -> None:
    if mode is None:
        world.publish(DOMAIN, None, txt_failure="nxdomain")
    else:
        world.publish(DOMAIN, policy(mode, *(patterns or ("mx1.example.com",))), id=id)


# -- the matrix: MX certificate kinds x modes ----------------------------------------------------------------

KINDS: list[tuple[str | None, str | None]] = [
    ("valid", None),
    ("wildcard", None),
    ("wrong-name", "certificate-host-mismatch"),
    ("cn-only", "certificate-host-mismatch"),
    ("expired", "certificate-expired"),
    ("untrusted", "certificate-not-trusted"),
    (None, "starttls-not-supported"),
]


@pytest.mark.parametrize(("kind", "failure"), KINDS, ids=[str(k) for k, _ in KINDS])
@pytest.mark.parametrize("mode", ["enforce", "testing", None])
async def test_single_mx_matrix(
    world: World, mail: MailWorld, resolver: PolicyResolver, kind: str | None, failure: str | None, mode: str | None
) -> None:
    publish(world, mode)
    await mail.add_mx("mx1.example.com", kind)
    mail.set_mx(DOMAIN, (10, "mx1.example.com"))
    result = await send(world, mail, resolver)
    [attempt] = result.attempts
    assert attempt.mx == "mx1.example.com" and attempt.ips == ("127.0.0.2",)
    assert attempt.tls_failure == failure
    if mode == "enforce" and failure is not None:
        assert result.status is DeliveryStatus.DEFERRED  # never bounced for a policy reason (§5)
        assert mail.inbox.messages == []
        assert attempt.result_type == failure and attempt.verdict is not None and attempt.verdict.require_tls
        assert result.rechecked
    else:
        assert result.status is DeliveryStatus.DELIVERED and result.mx == "mx1.example.com"
        [received] = mail.inbox.to("mx1.example.com")
        assert received.rcpt_tos == ["bob@example.com"] and b"Hello over MTA-STS." in received.content
        # what is reported: the failure under testing, nothing without a policy
        assert attempt.result_type == (failure if mode == "testing" else None)
        # opportunistic TLS: encrypted whenever STARTTLS is offered, even with a bad certificate
        assert received.tls is (kind is not None)
        assert attempt.tls is (kind is not None)


@pytest.mark.parametrize("mode", ["enforce", "testing", None])
async def test_mx_not_matching_the_policy(
    world: World, mail: MailWorld, resolver: PolicyResolver, mode: str | None
) -> None:
    publish(world, mode, "*.other.example")
    await mail.add_mx("mx1.example.com", "valid")
    mail.set_mx(DOMAIN, (10, "mx1.example.com"))
    result = await send(world, mail, resolver)
    [attempt] = result.attempts
    if mode == "enforce":
        assert result.status is DeliveryStatus.DEFERRED
        assert attempt.skipped and mail.inbox.connections.get("mx1.example.com", 0) == 0  # never connected
        assert (attempt.result_type, attempt.failure_reason_code) == ("validation-failure", "mx-not-in-sts-policy")
    else:
        assert result.status is DeliveryStatus.DELIVERED
        assert attempt.result_type == ("validation-failure" if mode == "testing" else None)


@pytest.mark.parametrize("mode", ["enforce", "testing", None])
async def test_first_mx_bad_second_good(
    world: World, mail: MailWorld, resolver: PolicyResolver, mode: str | None
) -> None:
    publish(world, mode, "*.example.com")
    await mail.add_mx("mx1.example.com", "expired")
    await mail.add_mx("mx2.example.com", "valid")
    mail.set_mx(DOMAIN, (10, "mx1.example.com"), (20, "mx2.example.com"))
    result = await send(world, mail, resolver)
    assert result.status is DeliveryStatus.DELIVERED
    if mode == "enforce":
        assert [a.mx for a in result.attempts] == ["mx1.example.com", "mx2.example.com"]
        assert result.attempts[0].result_type == "certificate-expired" and not result.attempts[0].delivered
        assert result.mx == "mx2.example.com" and len(mail.inbox.to("mx2.example.com")) == 1
        assert mail.inbox.to("mx1.example.com") == []
    else:  # opportunistic: the first MX takes it (over unauthenticated TLS)
        assert result.mx == "mx1.example.com"
        assert result.attempts[0].tls_failure == "certificate-expired"


async def test_enforce_every_mx_bad_defers_after_exactly_one_txt_recheck(
    world: World, mail: MailWorld, resolver: PolicyResolver
) -> None:
    publish(world, "enforce", "*.example.com")
    await mail.add_mx("mx1.example.com", "expired")
    await mail.add_mx("mx2.example.com", None)
    mail.set_mx(DOMAIN, (10, "mx1.example.com"), (20, "mx2.example.com"))
    result = await send(world, mail, resolver)
    assert result.status is DeliveryStatus.DEFERRED and result.rechecked
    assert [a.result_type for a in result.attempts] == ["certificate-expired", "starttls-not-supported"]
    assert "MTA-STS" in (result.reason or "")
    assert world.queries("_mta-sts.example.com", "TXT") == 2  # the lookup, then one re-check
    assert world.requests("mta-sts.example.com") == 1
    assert mail.inbox.messages == []


async def test_txt_change_during_the_recheck_that_fixes_the_policy_delivers(
    world: World, mail: MailWorld, resolver: PolicyResolver
) -> None:
    world.publish(DOMAIN, policy("enforce", "mx.old.example"), id="1")
    await resolver.get_policy(DOMAIN)  # the old policy is cached
    world.publish(DOMAIN, policy("enforce", "mx1.example.com"), id="2")  # the domain fixes it
    await mail.add_mx("mx1.example.com", "valid")
    mail.set_mx(DOMAIN, (10, "mx1.example.com"))
    result = await send(world, mail, resolver)
    assert result.status is DeliveryStatus.DELIVERED and result.rechecked
    assert result.attempts[0].skipped and result.attempts[1].delivered
    assert result.policy is not None and result.policy.mx == ("mx1.example.com",)
    assert world.queries("_mta-sts.example.com", "TXT") == 2


# -- DANE precedence (RFC 8461 §2) ---------------------------------------------------------------------------


async def test_failing_dane_is_never_overridden_by_a_passing_sts(
    world: World, mail: MailWorld, resolver: PolicyResolver
) -> None:
    publish(world, "enforce", "mx1.example.com")
    await mail.add_mx("mx1.example.com", "valid")  # would pass MTA-STS
    mail.set_mx(DOMAIN, (10, "mx1.example.com"))

    async def dane(mx: str) -> bool:
        return True

    async def verifier(mx: str, certificate: bytes) -> str | None:
        assert certificate  # the DER certificate the MX presented
        return "tlsa-invalid"

    result = await send(world, mail, resolver, dane=dane, dane_verifier=verifier)
    assert result.status is DeliveryStatus.DEFERRED and mail.inbox.messages == []
    [attempt] = result.attempts
    assert attempt.dane and attempt.verdict is None and attempt.result_type == "tlsa-invalid"


async def test_passing_dane_stands_where_sts_would_refuse(
    world: World, mail: MailWorld, resolver: PolicyResolver
) -> None:
    publish(world, "enforce", "*.other.example")  # the MX does not match: STS alone would skip it
    await mail.add_mx("mx1.example.com", "untrusted")  # and its certificate fails PKIX
    mail.set_mx(DOMAIN, (10, "mx1.example.com"))

    async def dane(mx: str) -> bool:
        return mx == "mx1.example.com"

    async def verifier(mx: str, certificate: bytes) -> str | None:
        return None  # TLSA matches

    result = await send(world, mail, resolver, dane=dane, dane_verifier=verifier)
    assert result.status is DeliveryStatus.DELIVERED
    [attempt] = result.attempts
    assert attempt.dane and attempt.verdict is None and attempt.result_type is None and attempt.tls
    assert mail.inbox.to("mx1.example.com")[0].tls


async def test_dane_without_a_verifier_requires_pkix_tls(
    world: World, mail: MailWorld, resolver: PolicyResolver
) -> None:
    publish(world, None)
    await mail.add_mx("mx1.example.com", None)  # no STARTTLS: DANE forbids plaintext
    mail.set_mx(DOMAIN, (10, "mx1.example.com"))

    async def dane(mx: str) -> bool:
        return True

    result = await send(world, mail, resolver, dane=dane)
    assert result.status is DeliveryStatus.DEFERRED
    assert result.attempts[0].result_type == "starttls-not-supported"


# -- MX selection ---------------------------------------------------------------------------------------------


async def test_null_mx_fails_permanently(world: World, mail: MailWorld, resolver: PolicyResolver) -> None:
    publish(world, "enforce")
    world.add_record(DOMAIN, "MX", "0 .")
    result = await send(world, mail, resolver)
    assert result.status is DeliveryStatus.FAILED and "null MX" in (result.reason or "")


async def test_no_such_domain_fails_and_dns_failure_defers(
    world: World, mail: MailWorld, resolver: PolicyResolver
) -> None:
    result = await deliver(
        message(), ["bob@nowhere.example"], resolver=resolver, port=mail.port, tls_context=world.client_ssl_context()
    )
    assert result.status is DeliveryStatus.FAILED
    world.publish("broken.example", None, txt_failure="nxdomain")
    world.set_failure("broken.example", "servfail")
    result = await deliver(
        message(), ["bob@broken.example"], resolver=resolver, port=mail.port, tls_context=world.client_ssl_context()
    )
    assert result.status is DeliveryStatus.DEFERRED


async def test_implicit_mx(world: World, mail: MailWorld, resolver: PolicyResolver) -> None:
    world.publish("solo.example", policy("enforce", "solo.example"))
    await mail.add_mx("solo.example", "valid")  # an A record at the domain, no MX
    result = await deliver(
        message(), ["bob@solo.example"], resolver=resolver, port=mail.port, tls_context=world.client_ssl_context()
    )
    assert result.status is DeliveryStatus.DELIVERED and result.mx == "solo.example"


async def test_mx_order_is_by_preference_with_ties_shuffled(world: World) -> None:
    world.publish(DOMAIN, None)
    for host, preference in [("c", 30), ("a1", 10), ("a2", 10), ("b", 20)]:
        world.add_record(DOMAIN, "MX", f"{preference} {host}.example.com.")
    orders = {tuple(await find_mx_hosts(world.resolver(), DOMAIN, rng=random.Random(seed))) for seed in range(20)}
    assert orders == {
        ("a1.example.com", "a2.example.com", "b.example.com", "c.example.com"),
        ("a2.example.com", "a1.example.com", "b.example.com", "c.example.com"),
    }


async def test_smtp_5xx_fails_permanently_and_4xx_defers(
    world: World, mail: MailWorld, resolver: PolicyResolver
) -> None:
    publish(world, "enforce", "*.example.com")
    await mail.add_mx("mx1.example.com", "valid", rcpt_reply="550 No such user")
    mail.set_mx(DOMAIN, (10, "mx1.example.com"))
    assert (await send(world, mail, resolver)).status is DeliveryStatus.FAILED
    world.remove_records("mx1.example.com")
    await mail.add_mx("mx1.example.com", "valid", rcpt_reply="451 Try later")
    assert (await send(world, mail, resolver)).status is DeliveryStatus.DEFERRED


async def test_bytes_message_and_bad_arguments(world: World, mail: MailWorld, resolver: PolicyResolver) -> None:
    publish(world, "enforce")
    await mail.add_mx("mx1.example.com", "valid")
    mail.set_mx(DOMAIN, (10, "mx1.example.com"))
    raw = message().as_bytes()
    result = await deliver(
        raw, ["bob@example.com"], resolver=resolver, sender="a@s.example", port=mail.port,
        tls_context=world.client_ssl_context(),
    )  # fmt: skip
    assert result.delivered and mail.inbox.messages[0].mail_from == "a@s.example"
    for recipients, sender in [([], "a@s.example"), (["x@a.example", "y@b.example"], "a@s.example"),
                               (["no-at-sign"], "a@s.example"), (["x@[192.0.2.1]"], "a@s.example"),
                               (["bob@example.com"], None)]:  # fmt: skip
        with pytest.raises(MTASTSError):
            await deliver(raw, recipients, resolver=resolver, sender=sender, port=mail.port)


async def test_control_characters_in_an_address_are_a_usage_error(
    world: World, mail: MailWorld, resolver: PolicyResolver
) -> None:
    """A CR or LF in a path would split the SMTP command: a UsageError (MTASTSError and ValueError) before any
    connection, never aiosmtplib's bare ValueError from the middle of a session."""
    from mtasts.errors import UsageError

    publish(world, "enforce")
    await mail.add_mx("mx1.example.com", "valid")
    mail.set_mx(DOMAIN, (10, "mx1.example.com"))
    raw = message().as_bytes()
    cases = [
        (["bob\r\nRCPT TO:<eve@evil.example>@example.com"], "a@s.example"),
        (["bob@example.com"], "a@s.example\r\nRSET"),
        (["bo\x00b@example.com"], "a@s.example"),
    ]
    for recipients, sender in cases:
        with pytest.raises(UsageError, match="control characters"):
            await deliver(raw, recipients, resolver=resolver, sender=sender, port=mail.port,
                          tls_context=world.client_ssl_context())  # fmt: skip
    assert not mail.inbox.messages


async def test_a_lookup_that_cannot_answer_now_defers_without_contacting_any_mx(
    world: World, mail: MailWorld, clock: FakeClock
) -> None:
    """Issue 12: the policy unknown (here a DNS failure under dns_error="defer") is never "no policy"."""
    world.publish(DOMAIN, policy("enforce", "mx1.example.com"), txt_failure="servfail")
    await mail.add_mx("mx1.example.com", "wrong-name")
    mail.set_mx(DOMAIN, (10, "mx1.example.com"))
    async with world.policy_resolver(clock=clock, fetch_timeout=5, dns_error="defer") as deferring:
        result = await send(world, mail, deferring)
    assert result.status is DeliveryStatus.DEFERRED and result.attempts == ()
    assert result.lookup is not None and result.lookup.defer
    assert "unknown" in (result.reason or "")
    assert mail.inbox.messages == [] and mail.inbox.connections == {}
    async with world.policy_resolver(clock=clock, fetch_timeout=5) as default:  # RFC 8461: as if no policy
        assert (await send(world, mail, default)).status is DeliveryStatus.DELIVERED


# -- the SMTP boundary (mtasts._smtp): nothing foreign escapes ------------------------------------------------


def aiosmtplib_exception_classes() -> set[type[Exception]]:
    """Every exception class aiosmtplib defines (its package and its errors module)."""
    return {
        value
        for module in (aiosmtplib, aiosmtplib.errors)
        for value in vars(module).values()
        if isinstance(value, type) and issubclass(value, Exception) and value.__module__.startswith("aiosmtplib")
    }


SAMPLE_ARGUMENTS: dict[str, Any] = {
    "message": "something failed",
    "code": 550,
    "sender": "alice@sender.example",
    "recipient": "bob@example.com",
    "recipients": [aiosmtplib.SMTPRecipientRefused(550, "No such user", "bob@example.com")],
}


def instance_of(cls: type[Exception]) -> Exception:
    """An instance of ``cls``, its constructor's arguments taken by name from SAMPLE_ARGUMENTS."""
    names = [name for name in inspect.signature(cls).parameters if name not in ("args", "kwargs")]
    return cls(*(SAMPLE_ARGUMENTS[name] for name in names))


def mapped(exc: BaseException, *, tls: bool = False) -> BaseException:
    """What ``map_smtp_errors`` raises for ``exc`` raised inside it."""
    with pytest.raises(BaseException) as info, map_smtp_errors(tls=tls):
        raise exc
    return info.value


def test_every_aiosmtplib_exception_is_mapped_to_an_mtasts_error() -> None:
    """httpx's test, for aiosmtplib: a class of a newer aiosmtplib that nobody mapped fails here."""
    classes = aiosmtplib_exception_classes()
    assert aiosmtplib.SMTPRecipientsRefused in classes and len(classes) >= 15
    unmapped = {cls.__name__ for cls in classes} - {cls.__name__ for cls in SMTP_ERRORS}
    assert not unmapped, f"aiosmtplib exceptions missing from mtasts._smtp.SMTP_ERRORS: {sorted(unmapped)}"
    for cls in sorted(classes, key=lambda c: c.__name__):
        outside, inside = mapped(instance_of(cls)), mapped(instance_of(cls), tls=True)
        assert type(outside) is SMTP_ERRORS[cls], cls
        assert isinstance(inside, SMTPTLSError), cls
        for error in (outside, inside):
            assert isinstance(error, MTASTSError) and not isinstance(error, aiosmtplib.SMTPException), cls
            assert isinstance(error, SMTPError) and error.origin == cls.__name__
        if issubclass(cls, aiosmtplib.SMTPResponseException):  # the reply, as on the wire
            assert isinstance(outside, SMTPError) and (outside.code, outside.message) == (550, "550 something failed")


def test_the_smtp_boundary_maps_replies_refusals_ssl_sockets_timeouts_and_local_faults() -> None:
    refused = mapped(aiosmtplib.SMTPRecipientsRefused([
        aiosmtplib.SMTPRecipientRefused(550, "No such user", "a@example.com"),
        aiosmtplib.SMTPRecipientRefused(551, "Gone", "b@example.com"),
    ]))  # fmt: skip
    assert isinstance(refused, SMTPRecipientsRefusedError) and refused.permanent and refused.code is None
    assert refused.message == "a@example.com: 550 No such user; b@example.com: 551 Gone"
    assert [(r.recipient, r.code) for r in refused.refusals] == [("a@example.com", 550), ("b@example.com", 551)]
    transient = mapped(aiosmtplib.SMTPRecipientsRefused([aiosmtplib.SMTPRecipientRefused(450, "Later", "a@x.example")]))
    assert isinstance(transient, SMTPRecipientsRefusedError) and not transient.permanent

    reply = mapped(aiosmtplib.SMTPDataError(451, "Try again later"))
    assert isinstance(reply, SMTPReplyError) and (reply.code, reply.message) == (451, "451 Try again later")
    assert not reply.permanent and reply.detail == "SMTPDataError: 451 Try again later"
    greeting = mapped(aiosmtplib.SMTPConnectResponseError(554, "Go away"))
    assert isinstance(greeting, SMTPConnectionError) and greeting.code == 554 and greeting.permanent

    for foreign in (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), TimeoutError(),
                    ssl.SSLError("bad record mac"), aiosmtplib.SMTPServerDisconnected("Connection lost")):  # fmt: skip
        error = mapped(foreign)
        assert type(error) is SMTPConnectionError and error.code is None, foreign
        assert error.detail == f"{type(foreign).__name__}: {foreign}"

    # during STARTTLS: the RFC 8460 result type of the certificate check (tls_errors.classify_tls_error)
    expired = ssl.SSLCertVerificationError(1, "certificate verify failed")
    expired.verify_code, expired.verify_message = 10, "certificate has expired"
    tls = mapped(expired, tls=True)
    assert isinstance(tls, SMTPTLSError) and tls.result_type == "certificate-expired"
    assert tls.failure_reason_code == "certificate has expired"
    for foreign in (ConnectionResetError(), aiosmtplib.SMTPTimeoutError("Timed out while upgrading transport")):
        error = mapped(foreign, tls=True)
        assert isinstance(error, SMTPTLSError) and error.result_type == "validation-failure", foreign
    refusal = mapped(aiosmtplib.SMTPResponseException(454, "TLS not available"), tls=True)
    assert isinstance(refusal, SMTPTLSError) and refusal.code == 454

    # a local fault (no free descriptor) says nothing about the MX, wrapped or not, in STARTTLS or not
    emfile = OSError(errno.EMFILE, "Too many open files")
    wrapped = aiosmtplib.SMTPConnectError("Error connecting to 127.0.0.2 on port 25")
    wrapped.__cause__ = emfile
    for foreign, tls_stage in [(emfile, False), (emfile, True), (wrapped, False)]:
        error = mapped(foreign, tls=tls_stage)
        assert type(error) is LocalError and "Too many open files" in error.message and error.result_type is None

    # ours pass through untouched; what is not an SMTP failure is not caught
    ours = NoStartTLSError("mx.example does not offer STARTTLS")
    assert mapped(ours) is ours and mapped(ours, tls=True) is ours
    assert ours.result_type == ours.failure_reason_code == "starttls-not-supported"
    bug = ValueError("Command arg contains a prohibited control character")
    assert mapped(bug) is bug and mapped(bug, tls=True) is bug


class RefusingSTARTTLS(SMTP):
    """An MX that offers STARTTLS in its EHLO, then refuses the command (RFC 3207 §4)."""

    async def smtp_STARTTLS(self, arg: str) -> None:
        await self.push("454 4.7.0 TLS not available due to temporary reason")


class Inbox:
    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        self.messages.append(envelope.content)
        return "250 OK"


@pytest.mark.parametrize("mode", ["enforce", "testing"])
async def test_an_mx_that_refuses_starttls_is_starttls_not_supported(
    world: World, mail: MailWorld, resolver: PolicyResolver, mode: str
) -> None:
    publish(world, mode)
    ip = "127.0.0.9"
    world.add_record("mx1.example.com", "A", ip)
    mail.set_mx(DOMAIN, (10, "mx1.example.com"))
    inbox, context = Inbox(), world.server_ssl_context("mx1.example.com")
    server = await asyncio.get_running_loop().create_server(
        lambda: RefusingSTARTTLS(inbox, tls_context=context, hostname="mx1.example.com"), host=ip, port=mail.port
    )
    try:
        result = await send(world, mail, resolver)
        probe = await probe_starttls("mx1.example.com", resolver=world.resolver(), port=mail.port,
                                     tls_context=world.client_ssl_context(), timeout=10)  # fmt: skip
    finally:
        server.close()
        await server.wait_closed()
    [attempt] = result.attempts
    assert (attempt.tls_failure, attempt.failure_reason_code) == ("starttls-not-supported", "starttls-not-supported")
    assert (probe.ip, probe.result_type) == (ip, "starttls-not-supported")
    assert probe.detail == "mx1.example.com refused STARTTLS: 454 4.7.0 TLS not available due to temporary reason"
    if mode == "enforce":
        assert result.status is DeliveryStatus.DEFERRED and inbox.messages == []
        assert attempt.error == f"mx1.example.com [{ip}]: {probe.detail}"
    else:  # opportunistic: STARTTLS refused again on the new session, so plaintext
        assert result.status is DeliveryStatus.DELIVERED and not attempt.tls and len(inbox.messages) == 1
