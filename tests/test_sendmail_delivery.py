"""Debian's sendmail 8.17 delivering real mail under ``FEATURE(`sts')`` and a live ``mtasts serve-socketmap``.

One world (DNS on port 53 of 127.0.3.53, the address these tests own), one set of aiosmtpd MX servers (127.0.3.x,
one port: sendmail's mailer arguments name it), one daemon started from docs/sendmail.md's command line and TOML,
and one sendmail configuration built from docs/sendmail.md's .mc lines serve the module; every test uses domains
of its own. Each message is submitted with ``sendmail -odi -v`` (delivered in the foreground, the SMTP dialogue
on stdout) into a queue directory of its own: a message still queued afterwards was deferred, and its queue
file's ``M`` line says why. What arrived is read from the MX servers' inbox.

Without the unpacked sendmail (``./run fetch-sendmail``) these tests skip with the reason.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import shutil
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from aiosmtpd.smtp import SMTP, Envelope, Session

from mtasts.testing import World

from ._dns53 import world_on_port_53
from ._process import stop_process
from ._sendmail import Outcome, Sendmail, Tools, find_sendmail, sendmail_instance, substitute
from ._smtp import MailWorld, free_port
from .conftest import world_flags
from .test_sendmail import documented_block, documented_mc

pytestmark = pytest.mark.asyncio(loop_scope="module")

# The world's DNS server must be on port 53 (resolv.conf has no port): the first free one of these addresses.
DNS_ADDRESSES = ("127.0.3.53", "127.0.3.54", "127.0.3.55")
_addresses = (f"127.0.3.{n}" for n in itertools.count(10) if n not in range(53, 56))


def policy(mode: str, *mx: str) -> str:
    lines = "".join(f"mx: {pattern}\n" for pattern in mx)
    return f"version: STSv1\nmode: {mode}\n{lines}max_age: 86400\n"


@pytest.fixture(scope="module")
def tools() -> Tools:
    return find_sendmail()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def world(tools: Tools) -> AsyncIterator[World]:
    async with world_on_port_53(DNS_ADDRESSES) as w:
        yield w
        assert not w.errors


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def mail(world: World) -> AsyncIterator[MailWorld]:
    m = MailWorld(world, free_port("127.0.3.10"))
    try:
        yield m
    finally:
        await m.close()


async def start_daemon(world: World, directory: Path) -> tuple[asyncio.subprocess.Process, int]:
    """docs/sendmail.md's daemon: its command line and TOML, on a free port, with a memory store and the world
    options. Its log goes to a file (nobody has to keep reading a pipe)."""
    config = directory / "sendmail.toml"
    config.write_text(documented_block("toml"))
    command = next(line for line in documented_block("sh").splitlines() if line.startswith("mtasts serve-"))
    command = substitute(command, {"127.0.0.1:8461": "127.0.0.1:0", "/etc/mtasts/sendmail.toml": str(config)})
    argv = [sys.executable, "-m", "mtasts", *command.split()[1:], "--store", "memory", *world_flags(world)]
    log = directory / "daemon.log"
    with log.open("wb") as stderr:
        daemon = await asyncio.create_subprocess_exec(*argv, stderr=stderr, stdin=asyncio.subprocess.DEVNULL)
    for _ in range(750):  # 15 s
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", log.read_text())
        if match:
            return daemon, int(match.group(1))
        if daemon.returncode is not None:
            break
        await asyncio.sleep(0.02)
    await stop_process(daemon)
    raise AssertionError(f"the daemon did not start:\n{log.read_text()}")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def sendmail(tools: Tools, world: World, mail: MailWorld) -> AsyncIterator[Sendmail]:
    instance, directory = sendmail_instance(tools, nameserver=world.dns_host)
    daemon = None
    try:
        daemon, port = await start_daemon(world, directory)
        instance.configure(
            documented_mc(directory, address=f"inet:{port}@127.0.0.1", ca_file=world.ca_pem_path, mx_port=mail.port)
        )
        yield instance
        log = (directory / "daemon.log").read_text()
        assert not re.search(r" (WARNING|ERROR|CRITICAL) ", log), log
    finally:
        if daemon is not None:
            await stop_process(daemon)
        shutil.rmtree(directory, ignore_errors=True)


async def add_domain(mail: MailWorld, domain: str, mode: str | None, *mx: tuple[int, str, str | None]) -> None:
    """MX servers ``(preference, host, certificate kind or None for no STARTTLS)`` for ``domain``, and its policy
    (``mode`` None: none published) listing exactly those hosts."""
    for _, host, cert in mx:
        await mail.add_mx(host, cert, ip=next(_addresses))
    mail.set_mx(domain, *((preference, host) for preference, host, _ in mx))
    if mode is not None:
        mail.world.publish(domain, policy(mode, *(host for _, host, _ in mx)))


class Sink:
    """An aiosmtpd handler accepting every message (the SNI test's own MX servers)."""

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 Message accepted"


def assert_arrived(mail: MailWorld, mx: str, outcome: Outcome, *, tls: bool = True) -> None:
    received = mail.inbox.to(mx)
    assert len(received) == 1, (mx, received)
    assert received[0].rcpt_tos == [outcome.recipient]
    assert received[0].tls is tls


async def test_enforce_with_a_valid_certificate_is_sent_over_verified_tls(
    world: World, sendmail: Sendmail, mail: MailWorld
) -> None:
    await add_domain(mail, "valid.enforce.test", "enforce", (10, "mx.valid.enforce.test", "valid"))
    outcome = await sendmail.deliver("rcpt@valid.enforce.test")
    assert (outcome.status, outcome.hosts) == ("sent", ["mx.valid.enforce.test"]), outcome
    assert ">>> STARTTLS" in outcome.transcript and "Sent (Message accepted)" in outcome.transcript
    # sendmail's resolver asked the world (the namespace's resolv.conf), and so did the daemon
    assert world.queries("valid.enforce.test", "MX") >= 1 and world.queries("mx.valid.enforce.test", "A") >= 1
    assert world.queries("_mta-sts.valid.enforce.test", "TXT") == 1  # three lookups per delivery, one fetch
    assert_arrived(mail, "mx.valid.enforce.test", outcome)


async def test_a_star_pattern_matches_one_label(sendmail: Sendmail, mail: MailWorld) -> None:
    await mail.add_mx("mx.star.test", "valid", ip=next(_addresses))
    mail.set_mx("star.test", (10, "mx.star.test"))
    mail.world.publish("star.test", policy("enforce", "*.star.test"))  # answered "match=.star.test"
    outcome = await sendmail.deliver("rcpt@star.test")
    assert outcome.status == "sent", outcome
    assert_arrived(mail, "mx.star.test", outcome)


@pytest.mark.parametrize(
    ("case", "cert", "listed", "reason"),
    [
        pytest.param(
            "wrong-name", "wrong-name", True, "mx.wrong-name.enforce.test not listed in SANs", id="wrong-name"
        ),
        pytest.param("cn-only", "cn-only", True, "mx.cn-only.enforce.test not listed in SANs", id="cn-only"),
        pytest.param("untrusted", "untrusted", True, "403 4.7.0 authentication failed", id="untrusted"),
        pytest.param("expired", "expired", True, "403 4.7.0 authentication failed", id="expired"),
        pytest.param("plaintext", None, True, "403 4.7.0 other side does not support STARTTLS", id="no-starttls"),
        pytest.param(
            "unlisted",
            "valid",
            False,
            "mx.unlisted.enforce.test not found in other.unlisted.enforce.test",
            id="mx-not-in-policy",
        ),
        # a limitation of sendmail 8.17.1's rules, not of the policy: a wildcard certificate name never matches
        pytest.param("wildcard", "wildcard", True, "mx.wildcard.enforce.test not listed in SANs", id="wildcard-cert"),
    ],
)
async def test_enforce_defers_what_the_policy_does_not_allow(
    sendmail: Sendmail, mail: MailWorld, case: str, cert: str | None, listed: bool, reason: str
) -> None:
    domain, mx = f"{case}.enforce.test", f"mx.{case}.enforce.test"
    await mail.add_mx(mx, cert, ip=next(_addresses))
    mail.set_mx(domain, (10, mx))
    # "unlisted": the MX host (with a valid certificate for its own name) is not among the policy's mx names
    mail.world.publish(domain, policy("enforce", mx if listed else f"other.{domain}"))
    outcome = await sendmail.deliver(f"rcpt@{domain}")
    assert (outcome.status, outcome.hosts) == ("deferred", [mx]), outcome
    assert reason in outcome.reason, outcome
    assert mail.inbox.connections.get(mx, 0) >= 1  # sendmail went there, and refused to hand the message over
    assert mail.inbox.to(mx) == []


async def test_testing_none_and_no_policy_are_sent(sendmail: Sendmail, mail: MailWorld) -> None:
    """Without an enforce policy the socketmap says NOTFOUND and sendmail's ordinary STARTTLS rules apply: the
    mail goes out even to certificates that enforce would refuse, or in plaintext."""
    await add_domain(mail, "testing.test", "testing", (10, "mx.testing.test", "wrong-name"))
    await add_domain(mail, "none.test", "none", (10, "mx.none.test", "untrusted"))
    await add_domain(mail, "nopolicy.test", None, (10, "mx.nopolicy.test", None))
    outcomes = await asyncio.gather(
        *(sendmail.deliver(f"rcpt@{d}") for d in ["testing.test", "none.test", "nopolicy.test"])
    )
    for outcome in outcomes:
        assert outcome.status == "sent", outcome
    assert_arrived(mail, "mx.testing.test", outcomes[0])
    assert_arrived(mail, "mx.none.test", outcomes[1])
    assert_arrived(mail, "mx.nopolicy.test", outcomes[2], tls=False)


@pytest.mark.parametrize("bad", ["wrong-name", "untrusted", None], ids=["wrong-name", "untrusted", "no-starttls"])
async def test_enforce_skips_a_bad_mx_for_a_good_one(sendmail: Sendmail, mail: MailWorld, bad: str | None) -> None:
    domain = f"mixed-{bad or 'plain'}.test"
    await add_domain(mail, domain, "enforce", (10, f"bad.{domain}", bad), (20, f"good.{domain}", "valid"))
    outcome = await sendmail.deliver(f"rcpt@{domain}")
    assert (outcome.status, outcome.hosts) == ("sent", [f"bad.{domain}", f"good.{domain}"]), outcome
    assert mail.inbox.to(f"bad.{domain}") == []
    assert_arrived(mail, f"good.{domain}", outcome)


async def test_an_unreachable_daemon_defers(tools: Tools, world: World, mail: MailWorld) -> None:
    """THE ONE RULE on sendmail's side: no answer from the socket map is a temporary failure (``-T<TMPF>``),
    never "no policy"."""
    await add_domain(mail, "nodaemon.test", "enforce", (10, "mx.nodaemon.test", "valid"))
    instance, directory = sendmail_instance(tools, nameserver=world.dns_host)
    try:
        port = free_port("127.0.0.1")  # nothing listens there
        instance.configure(
            documented_mc(directory, address=f"inet:{port}@127.0.0.1", ca_file=world.ca_pem_path, mx_port=mail.port)
        )
        outcome = await instance.deliver("rcpt@nodaemon.test")
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    assert outcome.status == "deferred", outcome
    assert re.search(r"Deferred: 450 4\.7\.0 .*STS lookup temp fail", outcome.transcript), outcome
    assert mail.inbox.to("mx.nodaemon.test") == []


async def sni_recording_mx(mail: MailWorld, mx: str) -> tuple[asyncio.Server, list[str | None]]:
    """An MX server for ``mx`` (valid certificate, its own address) that records the SNI of every handshake."""
    seen: list[str | None] = []
    context = mail.world.server_ssl_context(mx, "valid")

    def record(sock: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
        seen.append(name)

    context.sni_callback = record

    def factory() -> SMTP:
        return SMTP(Sink(), tls_context=context, hostname=mx)

    address = next(_addresses)
    mail.world.add_record(mx, "A", address)
    server = await asyncio.get_running_loop().create_server(factory, host=address, port=mail.port)
    return server, seen


async def test_servername_hostname_sends_the_mx_name_as_sni(sendmail: Sendmail, mail: MailWorld) -> None:
    """``servername=hostname`` in our answer is what makes sendmail's Set_SNI rule ask for SNI: the MX server
    sees its own name in the TLS ClientHello; without an enforce policy sendmail sends none."""
    names: dict[str, list[str | None]] = {}
    for domain, mode in [("sni.enforce.test", "enforce"), ("sni.testing.test", "testing")]:
        server, names[domain] = await sni_recording_mx(mail, f"mx.{domain}")
        try:
            mail.set_mx(domain, (10, f"mx.{domain}"))
            mail.world.publish(domain, policy(mode, f"mx.{domain}"))
            outcome = await sendmail.deliver(f"rcpt@{domain}")
        finally:
            server.close()
            await server.wait_closed()
        assert outcome.status == "sent", outcome
    assert names == {"sni.enforce.test": ["mx.sni.enforce.test"], "sni.testing.test": [None]}
