"""Debian's sendmail 8.17 as a client of our socketmap: ``FEATURE(`sts')`` (docs/sendmail.md).

Debian's sendmail packages conflict with postfix (which the suite needs), so sendmail is never installed: ``./run``
(``need_sendmail``) fetches ``sendmail-bin`` and ``sendmail-cf`` with ``apt-get download`` and unpacks them with
``dpkg-deb -x`` under ``$MTASTS_SENDMAIL_DIR`` (default ``/var/cache/mtasts-tests/sendmail``). :func:`find_sendmail`
runs that step itself when the tree is missing, and skips (printing the reason) only when it fails. The
instances' directories go under ``$MTASTS_SENDMAIL_DIR/run``, which must not be below a world-writable directory
(sendmail refuses a ``local:`` socket map there).

Every sendmail run (:meth:`Sendmail.run`) is a process of its own in new mount and UTS namespaces
(``unshare --mount --uts``): its host name is ``sender.test``, and ``/etc/hosts`` and ``/etc/resolv.conf`` are
bind-mounted from the instance's directory — the resolver library then asks the world's DNS server on port 53
without the machine's files being touched. (Sendmail resolves its own host name at start and sleeps 60 s when
it cannot; the private ``/etc/hosts`` answers it.)

A configuration is built from a ``.mc`` with the unpacked cf tree and ``m4`` (:func:`build_cf`), as
``sendmailconfig`` does on a Debian system from ``/etc/mail/sendmail.mc``.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from ._process import communicate

REPO = Path(__file__).resolve().parent.parent
SENDMAIL_DIR = Path(os.environ.get("MTASTS_SENDMAIL_DIR", "/var/cache/mtasts-tests/sendmail"))
SENDER = "sender@sender.test"
HOSTNAME = "sender.test"


@dataclass(frozen=True)
class Tools:
    """Where the unpacked sendmail is."""

    root: Path  # the packages' files, unpacked

    @property
    def binary(self) -> Path:
        return self.root / "usr/libexec/sendmail/sendmail"

    @property
    def cf_dir(self) -> Path:
        return self.root / "usr/share/sendmail/cf"


def _skip(reason: str) -> None:
    print(f"SKIP: {reason}")  # shown with -s, and in the log of a CI run
    pytest.skip(reason)


def find_sendmail() -> Tools:
    """The unpacked sendmail; fetched with ``./run fetch-sendmail`` when missing; a skip when that fails."""
    tools = Tools(SENDMAIL_DIR / "root")
    if os.geteuid() != 0:
        pytest.fail("the sendmail tests need root: unshare --mount (a private /etc/resolv.conf) and apt-get")

    def ready() -> bool:
        return os.access(tools.binary, os.X_OK) and (tools.cf_dir / "feature/sts.m4").is_file() and bool(m4())

    if not ready():
        result = subprocess.run(
            ["bash", str(REPO / "run"), "fetch-sendmail"], capture_output=True, text=True, timeout=300, check=False
        )
        if result.returncode != 0 or not ready():
            _skip(f"Debian's sendmail could not be fetched (./run fetch-sendmail): {result.stderr.strip()[-500:]}")
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        pytest.fail("unshare and mount (util-linux) are needed to give sendmail a private /etc/resolv.conf")
    return tools


def m4() -> str | None:
    return shutil.which("m4")


def build_cf(tools: Tools, mc: str) -> str:
    """``m4 cf/m4/cf.m4 FILE.mc``: the sendmail.cf of ``mc`` (what ``make -C /etc/mail`` does on Debian)."""
    m4_path = m4()
    assert m4_path is not None
    result = subprocess.run(
        [m4_path, f"-D_CF_DIR_={tools.cf_dir}/", str(tools.cf_dir / "m4/cf.m4"), "-"],
        input=mc,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0 and not result.stderr, result.stderr
    return result.stdout


def instance_mc(directory: Path, *, mx_port: int, body: str) -> str:
    """A ``.mc`` for the tests' instance: its own queue, status and pid files, host name, MX port and timeouts,
    then ``body`` (the documented ``FEATURE(`sts')`` lines, the trust store), then the mailers."""
    d = str(directory)
    return f"""\
divert(-1)
divert(0)dnl
OSTYPE(`linux')dnl
define(`confDOMAIN_NAME', `{HOSTNAME}')dnl
define(`confDONT_PROBE_INTERFACES', `True')dnl
define(`QUEUE_DIR', `{d}/queue')dnl
define(`STATUS_FILE', `{d}/statistics')dnl
define(`confPID_FILE', `{d}/sendmail.pid')dnl
define(`ALIAS_FILE', `{d}/aliases')dnl
dnl aiosmtpd offers AUTH after STARTTLS and refuses MAIL FROM's AUTH= parameter: send it only after AUTH
define(`confAUTH_OPTIONS', `A')dnl
dnl every MX host on the tests' port (Postfix cannot; sendmail's mailer arguments can)
define(`SMTP_MAILER_ARGS', `TCP $h {mx_port}')dnl
define(`ESMTP_MAILER_ARGS', `TCP $h {mx_port}')dnl
define(`confTO_ICONNECT', `5s')dnl
define(`confTO_CONNECT', `5s')dnl
define(`confTO_INITIAL', `10s')dnl
define(`confTO_HELO', `10s')dnl
define(`confTO_STARTTLS', `10s')dnl
define(`confTO_MAIL', `10s')dnl
define(`confTO_RCPT', `10s')dnl
define(`confTO_DATAINIT', `10s')dnl
define(`confTO_DATABLOCK', `10s')dnl
define(`confTO_DATAFINAL', `10s')dnl
define(`confTO_QUIT', `5s')dnl
{body.rstrip()}
MAILER(`local')dnl
MAILER(`smtp')dnl
"""


@dataclass(frozen=True)
class Outcome:
    """One submission with ``sendmail -odi -v``: what the transcript and the queue say."""

    recipient: str
    status: str  # "sent" or "deferred" (the message is still in the queue)
    reason: str  # the queue file's M line for a deferred message ("" when sent)
    transcript: str  # sendmail -v's output: the SMTP dialogue, "Connecting to ...", "Sent (...)"

    @property
    def hosts(self) -> list[str]:
        """The MX hosts sendmail connected to, in order."""
        return re.findall(r"Connecting to (\S+?)\.? port \d+ via", self.transcript)


class Sendmail:
    """A sendmail configuration of the test's own (see the module docstring): ``run``, ``bt``, ``deliver``."""

    def __init__(self, tools: Tools, directory: Path, *, nameserver: str = "127.0.0.1") -> None:
        self.tools = tools
        self.directory = directory
        self.cf = directory / "sendmail.cf"
        self._ids = itertools.count(1)
        (directory / "hosts").write_text(f"127.0.0.1 localhost\n127.0.3.1 {HOSTNAME} sender\n")
        (directory / "resolv.conf").write_text(f"nameserver {nameserver}\noptions timeout:2 attempts:2\n")
        (directory / "aliases").write_text("")
        (directory / "queue").mkdir(mode=0o700, exist_ok=True)

    def configure(self, mc: str) -> str:
        """Build ``mc`` into this instance's sendmail.cf; returns the .cf text."""
        (self.directory / "sendmail.mc").write_text(mc)
        text = build_cf(self.tools, mc)
        self.cf.write_text(text)
        return text

    async def run(
        self, *args: str, stdin: bytes = b"", timeout: float = 30.0, cf: Path | None = None
    ) -> tuple[int, str]:
        """``sendmail -C CF ARGS...`` in its namespaces: (exit status, stdout and stderr together)."""
        script = (
            'hostname "$1" && mount --bind "$2" /etc/hosts && mount --bind "$3" /etc/resolv.conf && '
            'shift 3 && exec "$@"'
        )
        argv = [
            "unshare",
            "--mount",
            "--uts",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
            HOSTNAME,
            str(self.directory / "hosts"),
            str(self.directory / "resolv.conf"),
            str(self.tools.binary),
            "-C",
            str(cf or self.cf),
            *args,
        ]
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        out, _ = await communicate(process, stdin, timeout)
        assert process.returncode is not None
        return process.returncode, out.decode(errors="replace")

    async def bt(self, lines: Iterable[str], *, timeout: float = 30.0) -> str:
        """``sendmail -bt`` (address test mode) fed ``lines``: its output."""
        _, out = await self.run("-bt", stdin="".join(f"{line}\n" for line in lines).encode(), timeout=timeout)
        return out

    async def map_lookups(self, keys: Iterable[str], *, map_name: str = "sts") -> dict[str, str]:
        """``/map sts KEY`` for each key: the value, ``"no match (68)"`` (not found) or ``"no match (75)"``
        (temporary failure), as ``-bt`` prints them."""
        keys = list(keys)
        out = await self.bt(f"/map {map_name} {key}" for key in keys)
        pattern = rf"map_lookup: {map_name} \((.*?)\) (?:returns (.*) \(0\)|(no match \(\d+\)))$"
        found = {key: value or miss for key, value, miss in re.findall(pattern, out, re.MULTILINE)}
        assert len(found) == len(keys), out
        return found

    async def deliver(self, recipient: str, *, timeout: float = 60.0) -> Outcome:
        """Submit one message to ``recipient`` and deliver it at once (``-odi``, in the foreground), with its
        own queue directory: afterwards the queue holds the message only if it was deferred."""
        queue = self.directory / f"queue-{next(self._ids)}"
        queue.mkdir(mode=0o700)
        message = (
            f"From: <{SENDER}>\r\nTo: <{recipient}>\r\nSubject: to {recipient}\r\n"
            f"Message-ID: <mtasts-{queue.name}-{os.getpid()}@{HOSTNAME}>\r\n\r\nA test message.\r\n"
        ).encode()
        _, transcript = await self.run(
            "-odi", "-v", "-f", SENDER, f"-OQueueDirectory={queue}", "--", recipient, stdin=message, timeout=timeout
        )
        reasons = [
            line[1:]
            for path in sorted(queue.glob("qf*"))
            for line in path.read_text(errors="replace").splitlines()
            if line.startswith("M")
        ]
        status = "deferred" if any(queue.glob("qf*")) else "sent"
        return Outcome(recipient, status, "\n".join(reasons), transcript)


def sendmail_instance(tools: Tools, *, nameserver: str = "127.0.0.1") -> tuple[Sendmail, Path]:
    """A :class:`Sendmail` in a fresh directory (the caller removes it) under ``$MTASTS_SENDMAIL_DIR/run``, not
    under /tmp: sendmail refuses a ``local:`` socket map below a world-writable directory ("unsafe")."""
    base = SENDMAIL_DIR / "run"
    base.mkdir(mode=0o755, parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix="instance-", dir=base))
    os.chmod(directory, 0o755)
    return Sendmail(tools, directory, nameserver=nameserver), directory


def substitute(text: str, replacements: Mapping[str, str]) -> str:
    """``text`` with each key replaced; every key must occur (so the docs and the tests cannot drift apart)."""
    for old, new in replacements.items():
        assert old in text, f"{old!r} not in {text!r}"
        text = text.replace(old, new)
    return text
