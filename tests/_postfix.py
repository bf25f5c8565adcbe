"""A Postfix instance of the test's own, delivering real mail under our socketmap (Debian package ``postfix``).

``async with postfix_instance(world, policy_map=...) as postfix`` writes a private configuration and queue in a
temporary directory, starts its ``master`` and stops it again; ``await postfix.deliver(rcpt, ...)`` submits one
message per recipient with ``sendmail -C`` and waits until the maillog shows each one's first delivery outcome.

What the instance is, and why:

- Its own ``main.cf``/``master.cf``, queue, data directory and ``maillog_file`` (the ``postlog`` service):
  nothing of the machine's ``/etc/postfix`` is read or written. ``master -c DIR -w`` starts it directly (what
  ``postfix start`` does after its integrity checks); we create the queue directories ourselves. Running as
  root is what lets ``sendmail -C``/``postdrop``/``postqueue`` accept a non-default configuration directory
  without ``alternate_config_directories`` in the default ``main.cf`` (postdrop(1), "MAIL_CONFIG").
- No ``smtpd`` at all: mail enters through ``sendmail`` only, leaves through ``smtp`` only.
- ``smtp`` runs chrooted in the queue directory, whose ``etc/resolv.conf`` names the world's DNS server: the
  system resolver library then asks the world without the machine's ``/etc/resolv.conf`` being touched.
  Postfix's DANE needs the AD bit of the answers (``smtp_dns_support_level = dnssec``); glibc >= 2.31 clears it
  unless the server is trusted. Postfix 3.7 asks for that trust itself when it wants DNSSEC (DANE works here
  without it); ``options trust-ad`` says the same for any other reader of this resolv.conf.
- MX hosts are reached on port 25 (Postfix has no per-MX port): the MX servers listen there on their own
  127.0.0.x addresses.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mtasts.testing import World

from ._dns53 import world_on_port_53
from ._process import communicate

SENDER = "sender@sender.test"

# A Postfix configuration file modified within the last second is re-read until it is a second old (a guard
# against half-written files): every program would wait for it. An hour-old mtime saves that second.
_OLD = 3600.0


@dataclass(frozen=True)
class Tools:
    """Where Postfix's programs are on this machine."""

    command_directory: Path  # postfix, postconf, postqueue, postsuper, sendmail
    daemon_directory: Path  # master, smtp, ...

    def command(self, name: str) -> str:
        return str(self.command_directory / name)

    @property
    def master(self) -> str:
        return str(self.daemon_directory / "master")


def find_postfix() -> Tools:
    """Postfix's programs, or a skip with the reason printed when Postfix is not installed (``./run tests``
    installs it; where it cannot be installed these tests cannot run)."""
    postconf = shutil.which("postconf") or "/usr/sbin/postconf"
    if not os.access(postconf, os.X_OK):
        reason = "Postfix is not installed (no postconf): apt-get install postfix, or ./run tests, installs it"
        print(f"SKIP: {reason}")  # shown with -s, and in the log of a CI run
        pytest.skip(reason)
    defaults = subprocess.run(
        [postconf, "-d", "-h", "command_directory", "daemon_directory"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.split()
    tools = Tools(Path(defaults[0]), Path(defaults[1]))
    for program in [tools.command("postfix"), tools.command("sendmail"), tools.master]:
        if not os.access(program, os.X_OK):
            reason = f"Postfix is incompletely installed: {program} missing"
            print(f"SKIP: {reason}")
            pytest.skip(reason)
    return tools


# -- the maillog ---------------------------------------------------------------------------------------------------

# "<time> <host> postfix/smtp[1234]: <text>"
_LINE = re.compile(r"(?P<program>[\w.-]+(?:/[\w.-]+)+)\[(?P<pid>\d+)\]: (?P<text>.*)$")
_QUEUE_ID = re.compile(r"(?P<qid>[0-9A-Za-z]{6,}): (?P<rest>.*)$")
# "to=<a@b>, [orig_to=<..>, ]relay=mx[1.2.3.4]:25, delay=.., [conn_use=.., ]delays=.., dsn=4.7.5, status=deferred (..)"
_STATUS = re.compile(
    r"to=<(?P<to>[^>]*)>, (?:orig_to=<[^>]*>, )?relay=(?P<relay>[^,]+), .*?"
    r"dsn=(?P<dsn>[^,]+), status=(?P<status>\w+) \((?P<reason>.*)\)$"
)
_PROBLEM = re.compile(r"\]: (?:warning|error|fatal|panic): ")
_MESSAGE_ID = re.compile(r"message-id=<(?P<id>[^>]*)>")
# smtp_tls_loglevel = 1: one summary per TLS session, e.g. "Verified TLS connection established to mx.a.test[...]:25"
_TLS = re.compile(
    r"(?P<trust>Anonymous|Untrusted|Trusted|Verified) TLS connection established to "
    r"(?P<host>[^\[\s]+)\[(?P<address>[^\]]+)\]:(?P<port>\d+)"
)


@dataclass(frozen=True)
class Attempt:
    """One recipient's delivery attempt as the maillog tells it: the status record and every other line the
    delivering process logged for it (TLS session summaries, certificate verification failures, ...)."""

    queue_id: str
    recipient: str
    relay: str  # "mx.a.test[127.0.25.2]:25", or "none"
    dsn: str
    status: str  # sent, deferred, bounced
    reason: str  # the text in parentheses after status=
    program: str  # "postfix/smtp", "postfix/qmgr", ...
    lines: tuple[str, ...]
    message_id: str = ""  # the submitted message's Message-ID (set by Postfix.deliver)

    @property
    def relay_host(self) -> str:
        """The MX host name the status record names (``none`` when nothing was reached)."""
        return self.relay.partition("[")[0]

    @property
    def tls(self) -> dict[str, str]:
        """The TLS sessions of this attempt, by MX host name: ``Anonymous``, ``Untrusted``, ``Trusted`` or
        ``Verified`` (Postfix's words: only ``Verified`` means the certificate matched the policy)."""
        sessions: dict[str, str] = {}
        for line in self.lines:
            match = _TLS.search(line)
            if match:
                sessions[match["host"]] = match["trust"]
        return sessions

    def text(self) -> str:
        return "\n".join(self.lines)


@dataclass
class Maillog:
    """The instance's maillog, parsed: the queue ID of every message-id, the attempts of every queue ID."""

    lines: list[str] = field(default_factory=list)
    queue_ids: dict[str, str] = field(default_factory=dict)  # message-id -> queue ID
    attempts: dict[str, list[Attempt]] = field(default_factory=dict)  # queue ID -> attempts, in order

    @classmethod
    def parse(cls, text: str) -> Maillog:
        log = cls(lines=text.splitlines())
        pending: dict[tuple[str, str], list[str]] = {}  # the lines a process logged since its last status record
        for line in log.lines:
            match = _LINE.search(line)
            if match is None:
                continue
            key = (match["program"], match["pid"])
            text_ = match["text"]
            own = pending.setdefault(key, [])
            own.append(text_)
            qid = _QUEUE_ID.match(text_)
            if qid is None:
                continue
            message_id = _MESSAGE_ID.match(qid["rest"])
            if message_id is not None:
                log.queue_ids[message_id["id"]] = qid["qid"]
            status = _STATUS.match(qid["rest"])
            if status is not None:
                attempt = Attempt(
                    queue_id=qid["qid"],
                    recipient=status["to"],
                    relay=status["relay"],
                    dsn=status["dsn"],
                    status=status["status"],
                    reason=status["reason"],
                    program=match["program"],
                    lines=tuple(own),
                )
                log.attempts.setdefault(qid["qid"], []).append(attempt)
                pending[key] = []
        return log


# -- the instance --------------------------------------------------------------------------------------------------

_MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       y       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

# The files a chrooted smtp(8) reads: the resolver's, the services and hosts databases, the time zone.
_CHROOT_FILES = {
    "etc/nsswitch.conf": "hosts: files dns\nservices: files\n",
    "etc/host.conf": "multi on\n",
    "etc/hosts": "127.0.0.1 localhost\n",
    "etc/services": "smtp 25/tcp mail\n",
}

# (name, owner, group, mode) of the queue directory's subdirectories, as postfix-files has them.
_QUEUE_DIRECTORIES = [
    *((name, "postfix", None, 0o700) for name in ["active", "bounce", "corrupt", "defer", "deferred", "flush"]),
    *((name, "postfix", None, 0o700) for name in ["hold", "incoming", "private", "saved", "trace"]),
    ("maildrop", "postfix", "postdrop", 0o730),
    ("public", "postfix", "postdrop", 0o710),
    ("pid", "root", None, 0o755),
    ("etc", "root", None, 0o755),
]


def main_cf(directory: Path, *, ca_file: str, policy_map: str, extra: Mapping[str, str] | None = None) -> str:
    settings = {
        "compatibility_level": "3.6",
        "queue_directory": str(directory / "queue"),
        "data_directory": str(directory / "data"),
        "mail_owner": "postfix",
        "setgid_group": "postdrop",
        "maillog_file": str(directory / "maillog"),
        "maillog_file_prefixes": str(directory),
        "inet_interfaces": "loopback-only",
        "inet_protocols": "ipv4",
        "mydestination": "",
        "myhostname": "sender.test",
        "mydomain": "sender.test",
        "myorigin": "sender.test",
        "mynetworks": "127.0.0.0/8",
        "relayhost": "",
        "alias_maps": "",
        "alias_database": "",
        "local_transport": "error:5.1.1 no local delivery in this test instance",
        "biff": "no",
        "smtp_tls_CAfile": ca_file,
        "smtp_tls_security_level": "may",
        "smtp_tls_policy_maps": policy_map,
        "smtp_tls_loglevel": "1",
        "smtp_dns_support_level": "dnssec",
        "smtp_host_lookup": "dns",
        "disable_dns_lookups": "no",
        # Postfix probes DNSSEC support by asking for the root zone's NS records; the world has no root zone.
        "dnssec_probe": "",
        "smtp_address_preference": "ipv4",
        # One TCP connection per attempt: every attempt negotiates TLS and logs it.
        "smtp_connection_cache_on_demand": "no",
        "minimal_backoff_time": "1s",
        "maximal_backoff_time": "1s",
        "queue_run_delay": "1s",
        "smtp_connect_timeout": "5s",
        "smtp_helo_timeout": "10s",
        "smtp_starttls_timeout": "10s",
        "smtp_mail_timeout": "10s",
        "smtp_rcpt_timeout": "10s",
        "smtp_data_init_timeout": "10s",
        "smtp_data_xfer_timeout": "10s",
        "smtp_data_done_timeout": "10s",
        "smtp_quit_timeout": "5s",
        "default_destination_concurrency_limit": "5",
        "delay_warning_time": "0",
    }
    settings.update(extra or {})
    return "".join(f"{name} = {value}\n" for name, value in settings.items())


class Postfix:
    """A running Postfix instance of the test's own (see the module docstring); made by :func:`postfix_instance`."""

    def __init__(self, tools: Tools, directory: Path) -> None:
        self.tools = tools
        self.directory = directory
        self.config_dir = directory / "etc"
        self.queue_dir = directory / "queue"
        self.data_dir = directory / "data"
        self.maillog_path = directory / "maillog"
        self.master_pid: int | None = None
        self._ids = itertools.count(1)

    # -- lifecycle -------------------------------------------------------------------------------------------

    def configure(self, *, ca_file: str, policy_map: str, nameserver: str, extra: Mapping[str, str] | None) -> None:
        os.chmod(self.directory, 0o755)  # root-owned, not group/other writable: Postfix checks its queue's owner
        for path in [self.config_dir, self.queue_dir]:
            path.mkdir(mode=0o755)
        self.data_dir.mkdir(mode=0o700)
        shutil.chown(self.data_dir, "postfix")
        for name, owner, group, mode in _QUEUE_DIRECTORIES:
            path = self.queue_dir / name
            path.mkdir()
            os.chmod(path, mode)  # not mkdir(mode=...): the umask would take bits away
            shutil.chown(path, owner, group)
        for name, content in _CHROOT_FILES.items():
            (self.queue_dir / name).write_text(content)
        (self.queue_dir / "etc/resolv.conf").write_text(
            f"nameserver {nameserver}\noptions trust-ad timeout:2 attempts:2\n"
        )
        with suppress(OSError):
            shutil.copyfile("/etc/localtime", self.queue_dir / "etc/localtime")
        files = {
            "main.cf": main_cf(self.directory, ca_file=ca_file, policy_map=policy_map, extra=extra),
            "master.cf": _MASTER_CF,
        }
        for name, content in files.items():
            path = self.config_dir / name
            path.write_text(content)
            os.utime(path, (0, time.time() - _OLD))

    @property
    def _env(self) -> dict[str, str]:
        return {**os.environ, "MAIL_CONFIG": str(self.config_dir)}

    async def _run(self, *argv: str, stdin: bytes | None = None, timeout: float = 20.0) -> str:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self._env,
        )
        stdout, stderr = await communicate(process, stdin, timeout)
        if process.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)} exited with {process.returncode}: {stderr.decode(errors='replace').strip()}"
                f"\n--- maillog ---\n{self.maillog_tail()}"
            )
        return stdout.decode(errors="replace")

    async def start(self) -> None:
        # -w: the foreground process exits once the background master has initialised (0 only if it did)
        await self._run(self.tools.master, "-c", str(self.config_dir), "-w", timeout=30)
        pid_file = self.queue_dir / "pid/master.pid"
        self.master_pid = int(pid_file.read_text().split()[0])

    def _processes(self) -> list[int]:
        """This instance's live processes: its master's process group (the master is a session leader), zombies
        left out (the master is no child of ours: whoever adopted it reaps it, maybe seconds later)."""
        if self.master_pid is None:
            return []
        pids = []
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            state, _, group = stat.rpartition(")")[2].split()[:3]
            if state != "Z" and int(group) == self.master_pid:
                pids.append(int(entry.name))
        return pids

    async def stop(self, *, timeout: float = 10.0) -> None:
        """SIGTERM to this instance's master (it stops its children), a bounded wait until none of its processes
        is left, then SIGKILL to its process group: this instance's processes and nothing else."""
        pid = self.master_pid
        if pid is None:
            return
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        for _ in range(int(timeout / 0.02)):  # polled: not our children
            if not self._processes():
                break
            await asyncio.sleep(0.02)
        else:
            with suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            for _ in range(250):
                if not self._processes():
                    break
                await asyncio.sleep(0.02)
        self.master_pid = None

    # -- the queue -------------------------------------------------------------------------------------------

    async def submit(self, recipient: str, *, sender: str = SENDER, subject: str | None = None) -> str:
        """``sendmail -C CONFIG -f SENDER RECIPIENT`` with a fresh message; returns its Message-ID."""
        message_id = f"mtasts-{next(self._ids)}-{os.getpid()}-{time.monotonic_ns()}@sender.test"
        message = (
            f"From: <{sender}>\r\nTo: <{recipient}>\r\nSubject: {subject or 'to ' + recipient}\r\n"
            f"Message-ID: <{message_id}>\r\n\r\nA test message for {recipient}.\r\n"
        ).encode()
        await self._run(
            self.tools.command("sendmail"),
            "-C",
            str(self.config_dir),
            "-f",
            sender,
            "-i",
            "--",
            recipient,
            stdin=message,
        )
        return message_id

    async def flush(self) -> None:
        """``postqueue -f``: attempt every queued message now."""
        await self._run(self.tools.command("postqueue"), "-c", str(self.config_dir), "-f")

    async def delete(self, queue_id: str) -> None:
        """``postsuper -d QUEUE_ID``: drop one message (from whichever queue holds it)."""
        await self._run(self.tools.command("postsuper"), "-c", str(self.config_dir), "-d", queue_id)

    def maillog(self) -> Maillog:
        try:
            text = self.maillog_path.read_text(errors="replace")
        except FileNotFoundError:
            text = ""
        return Maillog.parse(text)

    def problems(self) -> list[str]:
        """The maillog's ``warning:``, ``error:``, ``fatal:`` and ``panic:`` lines (a socketmap failure, a chroot
        file missing, a setting Postfix rejects all show up here)."""
        return [line for line in self.maillog().lines if _PROBLEM.search(line)]

    def maillog_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.maillog_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no maillog)"

    async def deliver(
        self, *recipients: str, timeout: float = 30.0, flush_every: float = 2.0, keep_deferred: bool = False
    ) -> dict[str, Attempt]:
        """Submit one message per recipient and wait for each one's first delivery outcome in the maillog.

        A bounded loop: the maillog is read every 50 ms; every ``flush_every`` seconds without all outcomes,
        ``postqueue -f`` (at most ``timeout / flush_every`` times); after ``timeout`` seconds an AssertionError
        with the maillog's tail. Deferred messages are then deleted (``postsuper -d``) unless ``keep_deferred``:
        a module-wide instance should not retry one test's mail during the next one.
        """
        message_ids = dict(zip(await asyncio.gather(*(self.submit(r) for r in recipients)), recipients, strict=True))
        deadline = time.monotonic() + timeout
        next_flush = time.monotonic() + flush_every
        while True:
            log = self.maillog()
            outcomes: dict[str, Attempt] = {}
            for message_id, recipient in message_ids.items():
                queue_id = log.queue_ids.get(message_id)
                attempts = log.attempts.get(queue_id, []) if queue_id is not None else []
                if attempts:
                    outcomes[recipient] = dataclasses.replace(attempts[0], message_id=message_id)
            if len(outcomes) == len(recipients):
                break
            now = time.monotonic()
            if now >= deadline:
                missing = sorted(set(recipients) - set(outcomes))
                raise AssertionError(
                    f"no delivery outcome within {timeout}s for {missing}\n--- maillog ---\n{self.maillog_tail()}"
                )
            if now >= next_flush:
                await self.flush()
                next_flush = now + flush_every
            await asyncio.sleep(0.05)
        if not keep_deferred:
            for attempt in outcomes.values():
                if attempt.status == "deferred":
                    with suppress(RuntimeError):  # already gone: nothing to delete
                        await self.delete(attempt.queue_id)
        return outcomes


@asynccontextmanager
async def postfix_instance(
    world: World,
    *,
    policy_map: str,
    settings: Mapping[str, str] | None = None,
) -> AsyncIterator[Postfix]:
    """A started Postfix of the test's own: trusting ``world``'s CA, asking ``world``'s DNS server (which must
    listen on port 53: resolv.conf has no port) and ``policy_map`` (``smtp_tls_policy_maps``); ``settings``
    are more main.cf lines. Stopped, and its directory removed, on exit."""
    tools = find_postfix()
    if os.geteuid() != 0:
        pytest.fail("a Postfix instance needs root: its master runs as root and its queue belongs to postfix")
    if world.dns_port != 53:
        raise ValueError(f"Postfix's resolver asks port 53 only; the world's DNS server is on {world.dns_port}")
    directory = Path(tempfile.mkdtemp(prefix="mtasts-postfix-"))
    postfix = Postfix(tools, directory)
    try:
        postfix.configure(ca_file=world.ca_pem_path, policy_map=policy_map, nameserver=world.dns_host, extra=settings)
        await postfix.start()
        yield postfix
    finally:
        try:
            await postfix.stop()
        finally:
            shutil.rmtree(directory, ignore_errors=True)


# Where the world's DNS server may listen on port 53 (resolv.conf names an address, never a port): the first free
# one. 127.0.0.53 is systemd-resolved's stub address; on a machine running it the next ones are tried.
DNS_ADDRESSES = ("127.0.0.53", "127.0.53.53", "127.0.53.54", "127.0.53.55")


def world_for_postfix() -> AbstractAsyncContextManager[World]:
    """A :class:`World` whose DNS server listens on port 53 of the first free address of :data:`DNS_ADDRESSES`."""
    return world_on_port_53(DNS_ADDRESSES)
