"""mtasts.delivery against real aiosmtpd MX servers with STARTTLS and trustme certificates (issue 4)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from email.message import EmailMessage
from typing import Any

import pytest

from mtasts import MTASTSError, PolicyResolver
from mtasts.delivery import Attempt, DeliveryResult, DeliveryStatus, deliver, find_mx_hosts
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
