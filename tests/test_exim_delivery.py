"""A real Exim delivering real mail under docs/exim.md's configuration, to aiosmtpd MX servers.

The configuration is docs/exim.md's ```exim block exactly (its placeholders filled in), the daemon runs the
command line of its ```sh block (plus the world's options). One Exim instance, one daemon, one world and one set
of MX servers (port 25 of 127.0.26.x) serve the module; every test uses domains of its own. Outcomes are read
twice: from Exim's mainlog (router, transport, TLS, ``CV=``) and from the MX servers' inbox (what arrived).

Without the unpacked Exim these tests are skipped with the reason (``./run tests`` fetches it: tests/_exim.py).
"""

from __future__ import annotations

import asyncio
import re
import shlex
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from mtasts.testing import World

from ._exim import Delivery, Exim, add_mx, exim_instance, find_exim, world_for_exim
from ._process import stop_process
from ._smtp import MailWorld
from .conftest import world_flags

pytestmark = pytest.mark.asyncio(loop_scope="module")

DOC = Path(__file__).resolve().parent.parent / "docs" / "exim.md"
NO_ANSWER = "MTA-STS: TEMP no answer from the mtasts daemon"  # the configuration's words for a missing answer


def doc_sections() -> list[tuple[str, list[tuple[str, str]]]]:
    """docs/exim.md as (heading, [(fence language, block text), ...]) per section, in order (a ``#`` line inside
    a fenced block is the block's, not a heading)."""
    sections: list[tuple[str, list[tuple[str, str]]]] = [("", [])]
    fence: tuple[str, list[str]] | None = None
    for line in DOC.read_text(encoding="utf-8").splitlines(keepends=True):
        if fence is not None:
            if line.rstrip() == "```":
                sections[-1][1].append((fence[0], "".join(fence[1])))
                fence = None
            else:
                fence[1].append(line)
        elif line.startswith("```"):
            fence = (line[3:].strip(), [])
        elif line.startswith("#"):
            sections.append((line.strip(), []))
    assert fence is None, "docs/exim.md has an unclosed fenced block"
    return sections


def doc_config() -> str:
    """The one ```exim block under the heading that contains "Configuration"."""
    found = [
        text
        for heading, blocks in doc_sections()
        if "Configuration" in heading
        for kind, text in blocks
        if kind == "exim"
    ]
    assert len(found) == 1, f"{len(found)} exim blocks under a Configuration heading of docs/exim.md"
    return found[0]


def doc_daemon_command() -> list[str]:
    """The first line starting ``mtasts serve-`` in a ```sh block of docs/exim.md, split as the shell would."""
    for _, blocks in doc_sections():
        for kind, text in blocks:
            for line in text.splitlines() if kind == "sh" else []:
                if line.startswith("mtasts serve-"):
                    return shlex.split(line)
    raise AssertionError("docs/exim.md has no `mtasts serve-` line in a sh block")


def policy(mode: str, *mx: str) -> str:
    lines = "".join(f"mx: {pattern}\n" for pattern in mx)
    return f"version: STSv1\nmode: {mode}\n{lines}max_age: 86400\n"


@dataclass
class Daemon:
    process: asyncio.subprocess.Process
    port: int
    log: list[str]
    reader: asyncio.Task[None]

    async def stop(self) -> None:
        await stop_process(self.process)
        await self.reader


async def start_daemon(world: World) -> Daemon:
    """docs/exim.md's daemon command line, run with this tree's code and pointed at ``world`` (the options
    appended last win: a free port, a memory store, the world's DNS server, CA and policy port)."""
    argv = doc_daemon_command()
    assert argv[:2] == ["mtasts", "serve-socketmap"], argv
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mtasts",
        *argv[1:],
        "--listen",
        "127.0.0.1:0",
        "--store",
        "memory",
        *world_flags(world),
        stdin=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    stderr = process.stderr
    log: list[str] = []
    try:
        async with asyncio.timeout(15):
            while True:
                line = (await stderr.readline()).decode(errors="replace")
                assert line, f"the daemon exited before listening:\n{''.join(log)}"
                log.append(line)
                match = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
                if match:
                    break
    except BaseException:
        await stop_process(process)
        raise

    async def drain() -> None:  # the daemon must never block on a full stderr pipe
        while line := await stderr.readline():
            log.append(line.decode(errors="replace"))

    return Daemon(process, int(match.group(1)), log, asyncio.create_task(drain()))


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def world() -> AsyncIterator[World]:
    find_exim()  # skip before anything listens when Exim is not unpacked
    async with world_for_exim() as w:
        yield w
        assert not w.errors


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def mail(world: World) -> AsyncIterator[MailWorld]:
    m = MailWorld(world, 25)  # the configuration's transports use port 25
    try:
        yield m
    finally:
        await m.close()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def daemon(world: World) -> AsyncIterator[Daemon]:
    d = await start_daemon(world)
    try:
        yield d
    finally:
        await d.stop()
    assert "Traceback" not in "".join(d.log), "".join(d.log)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def exim(world: World, daemon: Daemon) -> AsyncIterator[Exim]:
    async with exim_instance(world, doc_config(), mtasts_host="127.0.0.1", mtasts_port=daemon.port) as instance:
        yield instance
        assert instance.paniclog() == ""


async def add_domain(mail: MailWorld, domain: str, mode: str | None, *mx: tuple[int, str, str | None]) -> None:
    """MX servers ``(preference, host, certificate kind or None for no STARTTLS)`` for ``domain``, and its
    policy (``mode`` None: none published) listing exactly those hosts."""
    for _, host, cert in mx:
        await add_mx(mail, host, cert)
    mail.set_mx(domain, *((preference, host) for preference, host, _ in mx))
    if mode is not None:
        mail.world.publish(domain, policy(mode, *(host for _, host, _ in mx)))


def assert_arrived(mail: MailWorld, mx: str, outcome: Delivery, *, tls: bool = True) -> None:
    received = mail.inbox.to(mx)
    assert len(received) == 1, (mx, received)
    assert received[0].rcpt_tos == [outcome.recipient]
    assert received[0].tls is tls
    assert f"Message-ID: <{outcome.message_id}>".encode() in received[0].content


def assert_enforced(outcome: Delivery, mx: str) -> None:
    """Delivered by the enforce route, over TLS, with the certificate verified (``CV=yes``)."""
    assert (outcome.status, outcome.router, outcome.transport, outcome.host) == (
        "delivered",
        "mtasts_enforce",
        "mtasts_smtp",
        mx,
    ), outcome.log()
    assert outcome.tls is not None and outcome.tls.startswith("TLS1."), outcome.log()
    assert outcome.verified == "yes", outcome.log()


async def test_enforce_with_a_valid_certificate_is_delivered_over_verified_tls(
    world: World, exim: Exim, mail: MailWorld
) -> None:
    await add_domain(mail, "valid.enforce.test", "enforce", (10, "mx.valid.enforce.test", "valid"))
    outcome = (await exim.deliver("rcpt@valid.enforce.test"))["rcpt@valid.enforce.test"]
    assert_enforced(outcome, "mx.valid.enforce.test")
    assert_arrived(mail, "mx.valid.enforce.test", outcome)
    # the daemon found the policy and the MX hosts in the world, and Exim the MX host's address
    assert world.queries("_mta-sts.valid.enforce.test", "TXT") == 1
    assert world.queries("valid.enforce.test", "MX") >= 1 and world.queries("mx.valid.enforce.test", "A") >= 1


@pytest.mark.parametrize(
    ("case", "cert", "log"),
    [
        pytest.param("wrong-name", "wrong-name", "certificate verification failed", id="wrong-name"),
        pytest.param("untrusted", "untrusted", "certificate verification failed", id="untrusted"),
        pytest.param("plaintext", None, "a TLS session is required, but the server did not offer TLS", id="no-tls"),
    ],
)
async def test_enforce_defers_what_the_policy_does_not_allow(
    exim: Exim, mail: MailWorld, case: str, cert: str | None, log: str
) -> None:
    domain, mx = f"{case}.enforce.test", f"mx.{case}.enforce.test"
    await add_domain(mail, domain, "enforce", (10, mx, cert))
    outcome = (await exim.deliver(f"rcpt@{domain}"))[f"rcpt@{domain}"]
    assert (outcome.status, outcome.router, outcome.transport, outcome.host) == (
        "deferred",
        "mtasts_enforce",
        "mtasts_smtp",
        mx,
    ), outcome.log()
    assert log in outcome.text, outcome.log()
    assert mail.inbox.connections.get(mx, 0) >= 1  # Exim went there, and refused to hand the message over
    assert mail.inbox.to(mx) == []


async def test_enforce_skips_a_bad_mx_for_a_good_one(exim: Exim, mail: MailWorld) -> None:
    await add_domain(
        mail,
        "mixed.enforce.test",
        "enforce",
        (10, "bad.mixed.enforce.test", "wrong-name"),  # preferred: tried first
        (20, "good.mixed.enforce.test", "valid"),
    )
    outcome = (await exim.deliver("rcpt@mixed.enforce.test"))["rcpt@mixed.enforce.test"]
    assert_enforced(outcome, "good.mixed.enforce.test")
    assert mail.inbox.connections["bad.mixed.enforce.test"] >= 1
    assert mail.inbox.to("bad.mixed.enforce.test") == []
    assert_arrived(mail, "good.mixed.enforce.test", outcome)


async def test_enforce_never_uses_an_mx_host_the_policy_does_not_list(exim: Exim, mail: MailWorld) -> None:
    # the preferred MX has a certificate valid for its own name: only the policy keeps Exim away from it
    await add_mx(mail, "rogue.unlisted.test", "valid")
    await add_mx(mail, "mx.unlisted.test", "valid")
    mail.set_mx("unlisted.test", (10, "rogue.unlisted.test"), (20, "mx.unlisted.test"))
    mail.world.publish("unlisted.test", policy("enforce", "mx.unlisted.test"))
    outcome = (await exim.deliver("rcpt@unlisted.test"))["rcpt@unlisted.test"]
    assert_enforced(outcome, "mx.unlisted.test")
    assert_arrived(mail, "mx.unlisted.test", outcome)
    assert mail.inbox.connections.get("rogue.unlisted.test", 0) == 0


async def test_enforce_without_an_allowed_mx_host_defers(exim: Exim, mail: MailWorld) -> None:
    await add_mx(mail, "rogue.nomatch.test", "valid")
    mail.set_mx("nomatch.test", (10, "rogue.nomatch.test"))
    mail.world.publish("nomatch.test", policy("enforce", "mx.nomatch.test"))
    outcome = (await exim.deliver("rcpt@nomatch.test"))["rcpt@nomatch.test"]
    assert (outcome.status, outcome.router, outcome.host) == ("deferred", "mtasts_lookup", None), outcome.log()
    assert "MTA-STS: TEMP MTA-STS: no MX host of the domain matches its enforce policy" in outcome.text
    assert mail.inbox.connections.get("rogue.nomatch.test", 0) == 0


async def test_testing_none_and_no_policy_keep_exims_defaults(exim: Exim, mail: MailWorld) -> None:
    """Without an enforce policy the daemon says NOTFOUND and Exim's own defaults decide: the mail goes out even
    to certificates that enforce would refuse, or in plaintext."""
    await add_domain(mail, "testing.test", "testing", (10, "mx.testing.test", "wrong-name"))
    await add_domain(mail, "none.test", "none", (10, "mx.none.test", "untrusted"))
    await add_domain(mail, "nopolicy.test", None, (10, "mx.nopolicy.test", None))
    outcomes = await exim.deliver("rcpt@testing.test", "rcpt@none.test", "rcpt@nopolicy.test")
    for recipient, outcome in outcomes.items():
        assert (outcome.status, outcome.router, outcome.transport) == ("delivered", "dnslookup", "remote_smtp"), (
            recipient,
            outcome.log(),
        )
    assert outcomes["rcpt@testing.test"].verified == "no"  # TLS, the certificate tried and not required
    assert outcomes["rcpt@none.test"].verified == "no"
    assert outcomes["rcpt@nopolicy.test"].tls is None
    assert_arrived(mail, "mx.testing.test", outcomes["rcpt@testing.test"])
    assert_arrived(mail, "mx.none.test", outcomes["rcpt@none.test"])
    assert_arrived(mail, "mx.nopolicy.test", outcomes["rcpt@nopolicy.test"], tls=False)


async def test_a_daemon_that_does_not_answer_defers_everything(world: World, mail: MailWorld) -> None:
    """The daemon stopped: no answer defers every remote address — an enforce domain (which Exim's
    defaults would send in plaintext to this MX) and a domain without a policy alike — and nothing is sent."""
    await add_domain(mail, "stopped.enforce.test", "enforce", (10, "mx.stopped.enforce.test", None))
    await add_domain(mail, "stopped.nopolicy.test", None, (10, "mx.stopped.nopolicy.test", None))
    await add_domain(mail, "before.enforce.test", "enforce", (10, "mx.before.enforce.test", "valid"))
    daemon = await start_daemon(world)
    try:
        async with exim_instance(world, doc_config(), mtasts_host="127.0.0.1", mtasts_port=daemon.port) as exim:
            before = (await exim.deliver("rcpt@before.enforce.test"))["rcpt@before.enforce.test"]
            assert_enforced(before, "mx.before.enforce.test")
            await daemon.stop()
            outcomes = await exim.deliver("rcpt@stopped.enforce.test", "rcpt@stopped.nopolicy.test")
            assert exim.paniclog() == ""
    finally:
        await daemon.stop()
    for outcome in outcomes.values():
        assert (outcome.status, outcome.router, outcome.host) == ("deferred", "mtasts_lookup", None), outcome.log()
        assert outcome.text.endswith(NO_ANSWER), outcome.log()
    for mx in ["mx.stopped.enforce.test", "mx.stopped.nopolicy.test"]:
        assert mail.inbox.connections.get(mx, 0) == 0
        assert mail.inbox.to(mx) == []


@pytest.mark.parametrize(
    ("case", "reply", "logged"),
    [
        ("closed", b"", NO_ANSWER),  # what a daemon at max_connections does
        ("cut-short", b"30:OK mx.garbled.test", NO_ANSWER),
        ("not-a-netstring", b"OK mx.garbled.test", NO_ANSWER),
        ("wrong-length", b"17:OK mx.garbled.test,", NO_ANSWER),
        ("a-newline", b"19:OK mx.garbled.test\n,", NO_ANSWER),
        ("not-a-host-list", b"35:OK mx.garbled.test mx2.garbled.test,", "MTA-STS: OK mx.garbled.test mx2.garbled.test"),
        ("no-host", b"3:OK ,", "MTA-STS: OK "),
    ],
)
async def test_an_answer_that_is_not_ok_or_notfound_defers(
    world: World, mail: MailWorld, case: str, reply: bytes, logged: str
) -> None:
    """The configuration takes only a well-formed ``OK <hosts>`` or ``NOTFOUND `` from the listener: anything
    else — here from a listener that is not mtasts — defers, even for a domain Exim's defaults would send."""
    domain = f"{case}.garbled.test"
    await add_domain(mail, domain, None, (10, f"mx.{domain}", None))

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1000)
        writer.write(reply)
        writer.close()

    listener = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        async with exim_instance(world, doc_config(), mtasts_host="127.0.0.1", mtasts_port=port) as exim:
            outcome = (await exim.deliver(f"rcpt@{domain}"))[f"rcpt@{domain}"]
            assert exim.paniclog() == ""
    finally:
        listener.close()
        await listener.wait_closed()
    assert (outcome.status, outcome.router, outcome.host) == ("deferred", "mtasts_lookup", None), outcome.log()
    assert outcome.text.endswith(logged), outcome.log()
    assert mail.inbox.connections.get(f"mx.{domain}", 0) == 0
