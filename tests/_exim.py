"""An Exim instance of the test's own, delivering real mail under docs/exim.md's configuration (Debian's
``exim4-daemon-light``, unpacked by ``./run tests`` into a cache directory).

``async with exim_instance(world, config) as exim`` writes the configuration and a private spool and log in a
temporary directory; ``await exim.deliver(rcpt, ...)`` submits one message per recipient and makes one delivery
attempt of each, returning what the mainlog says about it.

What the instance is, and why:

- Debian's exim4 and postfix packages conflict (installing one removes the other), and the suite needs both: the
  binary comes from ``apt-get download exim4-daemon-light`` unpacked with ``dpkg-deb -x`` into
  :data:`EXIM_CACHE` (``./run`` does it, after installing the libraries it needs); nothing of it is installed.
- Every ``exim4`` command runs in a mount namespace of its own (``unshare --mount``) where bind mounts put the
  instance's files at the paths Debian's build has compiled in — ``/var/spool`` (the spool ``exim4/``),
  ``/var/log`` (``exim4/mainlog``), ``/etc/passwd`` and ``/etc/group`` (with the ``Debian-exim`` user the binary
  runs as, if the machine has none) and ``/etc/resolv.conf`` (the world's DNS server): the configuration the
  test loads is docs/exim.md's block exactly, with the placeholders filled in, and nothing of the machine's own
  files is read for these or changed.
- No daemon, no listener: a message enters with ``exim -C CONF -odq`` (queued only) and is delivered with ``exim
  -C CONF -M ID``, both as root (Exim keeps root with ``-C`` only for a caller that is root, and regains it for a
  delivery only by re-executing itself, which would drop it: reception and delivery are two commands, as the Exim
  specification's ``-C`` section says). ``-M`` returns once the attempt is over and logged.
- MX hosts are reached on port 25 (what the configuration's transports use): the MX servers listen there on
  their own 127.0.26.x addresses, the world's DNS server on port 53 of :data:`DNS_ADDRESSES` (resolv.conf has no
  port) — apart from the Postfix tests' 127.0.25.x and 127.0.0.53, so both can run at once.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import os
import pwd
import re
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest

from mtasts.testing import World

from ._dns53 import world_on_port_53
from ._process import communicate
from ._smtp import MailWorld

SENDER = "sender@sender.test"
EXIM_USER = "Debian-exim"  # EXIM_USER of Debian's build (exim4 -bV would fail without it)

#: Where ``./run tests`` unpacks ``exim4-daemon-light`` (``MTASTS_EXIM_CACHE`` overrides it); the binary is
#: ``usr/sbin/exim4`` below it. A file ``UNAVAILABLE`` there says why the package could not be had.
EXIM_CACHE = Path(os.environ.get("MTASTS_EXIM_CACHE", "/var/cache/mtasts-tests/exim4"))

# Where the world's DNS server may listen on port 53: the first free one (not the Postfix tests' addresses).
DNS_ADDRESSES = ("127.0.1.53", "127.0.1.54", "127.0.1.55", "127.0.1.56")

_SUBMIT_TIMEOUT = 20.0
_DELIVERY_TIMEOUT = 60.0  # one attempt: the readsocket timeout (35 s) is its longest wait


def _skip(reason: str) -> None:
    print(f"SKIP: {reason}")  # shown with -s, and in the log of a CI run
    pytest.skip(reason)


def find_exim() -> Path:
    """The unpacked ``exim4`` binary, or a skip with the reason printed when the package could not be had."""
    binary = EXIM_CACHE / "usr/sbin/exim4"
    if not os.access(binary, os.X_OK):
        why = ""
        with suppress(OSError):
            why = (EXIM_CACHE / "UNAVAILABLE").read_text(errors="replace").strip()
        _skip(
            f"Exim is not unpacked in {EXIM_CACHE}: "
            + (why or "./run tests fetches exim4-daemon-light there (apt-get download, dpkg-deb -x)")
        )
    if shutil.which("unshare") is None:
        _skip("util-linux's unshare is missing: an Exim instance needs a mount namespace of its own")
    return binary


# -- the mainlog ---------------------------------------------------------------------------------------------------

# "2026-12-01 16:15:32 1xYQVw-0005jO-1J <rest>" (4.96 ids: 6-6-2 base 62; 4.97+: 6-11-4)
_LINE = re.compile(r"^\S+ \S+ (?:\[\d+\] )?(?P<id>[0-9A-Za-z]{6}-[0-9A-Za-z]{6,11}-[0-9A-Za-z]{2,4}) (?P<rest>.*)$")
_RECEIVED = re.compile(r"^<= .* id=(?P<message_id>\S+)")
# "=> rcpt@d R=router T=transport H=mx.d [127.0.26.2] X=TLS1.3:...:256 CV=yes DN=... C=..."; "== rcpt@d R=... defer
# (-37) H=...: reason"; "** rcpt@d R=... T=...: reason"
_OUTCOME = re.compile(r"^(?P<flag>=>|==|\*\*) (?P<rcpt>\S+)(?: <[^>]*>)? (?P<rest>.*)$")
_FIELD = re.compile(r"(?:^| )(?P<name>R|T|X|CV)=(?P<value>\S+)")
_HOST = re.compile(r"(?:^| )H=(?P<host>\S+) \[(?P<address>[^\]]+)\]")
_STATUS = {"=>": "delivered", "==": "deferred", "**": "failed"}


@dataclass(frozen=True)
class Delivery:
    """One recipient's delivery attempt as the mainlog tells it (the first outcome line for it)."""

    exim_id: str
    message_id: str
    recipient: str
    status: str  # delivered, deferred, failed
    router: str | None
    transport: str | None
    host: str | None  # the MX host of a delivery, or of the failure the line names
    address: str | None
    tls: str | None  # X=: the TLS version and cipher of a delivery
    verified: str | None  # CV=: "yes" when the certificate was verified ("no", "dane")
    text: str  # the outcome line after the recipient
    lines: tuple[str, ...]  # every mainlog line of the message

    def log(self) -> str:
        return "\n".join(self.lines)


def _parse(exim_id: str, message_id: str, lines: list[str]) -> dict[str, Delivery]:
    outcomes: dict[str, Delivery] = {}
    for line in lines:
        match = _OUTCOME.match(line)
        if match is None or match["rcpt"] in outcomes:
            continue
        fields = {m["name"]: m["value"] for m in _FIELD.finditer(match["rest"])}
        host = _HOST.search(match["rest"])
        outcomes[match["rcpt"]] = Delivery(
            exim_id=exim_id,
            message_id=message_id,
            recipient=match["rcpt"],
            status=_STATUS[match["flag"]],
            router=fields.get("R"),
            transport=fields.get("T"),
            host=host["host"] if host else None,
            address=host["address"] if host else None,
            tls=fields.get("X"),
            verified=fields.get("CV"),
            text=match["rest"],
            lines=tuple(lines),
        )
    return outcomes


# -- the instance --------------------------------------------------------------------------------------------------


def _free_id(used: set[int]) -> int:
    return next(n for n in range(999, 100, -1) if n not in used)


def _accounts(directory: Path) -> tuple[int, int]:
    """passwd and group files for the namespace: the machine's, plus ``Debian-exim`` when it has none. Returns
    that user's uid and gid."""
    passwd = Path("/etc/passwd").read_text()
    group = Path("/etc/group").read_text()
    try:
        user = pwd.getpwnam(EXIM_USER)
    except KeyError:
        uid = _free_id({int(line.split(":")[2]) for line in passwd.splitlines() if line.count(":") >= 3})
        gid = _free_id({int(line.split(":")[2]) for line in group.splitlines() if line.count(":") >= 3})
        passwd += f"{EXIM_USER}:x:{uid}:{gid}:Exim (mtasts tests):/nonexistent:/usr/sbin/nologin\n"
        group += f"{EXIM_USER}:x:{gid}:\n"
    else:
        uid, gid = user.pw_uid, user.pw_gid
    (directory / "etc/passwd").write_text(passwd)
    (directory / "etc/group").write_text(group)
    return uid, gid


class Exim:
    """An Exim of the test's own (see the module docstring); made by :func:`exim_instance`."""

    def __init__(self, binary: Path, directory: Path) -> None:
        self.binary = binary
        self.directory = directory
        self.config_path = directory / "exim.conf"
        self.ca_path = directory / "ca.pem"
        self.mainlog_path = directory / "log/exim4/mainlog"
        self.paniclog_path = directory / "log/exim4/paniclog"
        self._ids = itertools.count(1)

    def configure(self, config: str, *, nameserver: str, ca_file: str) -> None:
        """Write ``config`` (the whole runtime configuration), the namespace's files and the wrapper that runs
        ``exim4`` inside the namespace. ``ca_file`` is copied where the Exim user can read it."""
        os.chmod(self.directory, 0o755)  # the Exim user reads the CA file and the configuration below it
        for sub in ["etc", "spool/exim4", "log/exim4"]:
            (self.directory / sub).mkdir(parents=True)
        uid, gid = _accounts(self.directory)
        for sub in ["spool/exim4", "log/exim4"]:
            os.chown(self.directory / sub, uid, gid)
        (self.directory / "etc/resolv.conf").write_text(f"nameserver {nameserver}\noptions timeout:2 attempts:2\n")
        shutil.copyfile(ca_file, self.ca_path)
        self.ca_path.chmod(0o644)
        self.config_path.write_text(config)
        self.config_path.chmod(0o644)  # Exim refuses a configuration others may write
        wrapper = self.directory / "run-exim"
        binds = {
            "etc/resolv.conf": "/etc/resolv.conf",
            "etc/passwd": "/etc/passwd",
            "etc/group": "/etc/group",
            "spool": "/var/spool",
            "log": "/var/log",
        }
        mounts = "".join(f"mount --bind '{self.directory / source}' '{target}'\n" for source, target in binds.items())
        wrapper.write_text(
            f"#!/bin/sh\n# exim4 in this instance's mount namespace\nset -e\n{mounts}exec '{self.binary}' \"$@\"\n"
        )
        wrapper.chmod(0o755)

    def argv(self, *args: str) -> list[str]:
        """The command line running ``exim4 -C CONF ARGS...`` in a mount namespace of its own."""
        wrapper = str(self.directory / "run-exim")
        return ["unshare", "--mount", "--propagation", "private", wrapper, "-C", str(self.config_path), *args]

    async def run(self, *args: str, stdin: bytes | None = None, timeout: float = _SUBMIT_TIMEOUT) -> str:
        process = await asyncio.create_subprocess_exec(
            *self.argv(*args),
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await communicate(process, stdin, timeout)
        if process.returncode != 0:
            raise RuntimeError(
                f"exim {' '.join(args)} exited with {process.returncode}: {stderr.decode(errors='replace').strip()}"
                f"\n--- mainlog ---\n{self.mainlog_tail()}\n--- paniclog ---\n{self.paniclog()}"
            )
        return stdout.decode(errors="replace")

    # -- the log -----------------------------------------------------------------------------------------------

    def _log_lines(self) -> Iterator[tuple[str, str]]:
        """(exim id, rest) of every mainlog line that names a message."""
        try:
            text = self.mainlog_path.read_text(errors="replace")
        except FileNotFoundError:
            return
        for line in text.splitlines():
            match = _LINE.match(line)
            if match is not None:
                yield match["id"], match["rest"]

    def mainlog_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.mainlog_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no mainlog)"

    def paniclog(self) -> str:
        """The panic log (empty in a sane instance: configuration errors, a socket that cannot be written, ...)."""
        try:
            return self.paniclog_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- mail ------------------------------------------------------------------------------------------------

    async def submit(self, recipient: str, *, sender: str = SENDER) -> tuple[str, str]:
        """Queue one fresh message for ``recipient`` (``exim -odq``); returns (its Exim id, its Message-ID)."""
        message_id = f"mtasts-{next(self._ids)}-{os.getpid()}-{time.monotonic_ns()}@sender.test"
        message = (
            f"From: <{sender}>\nTo: <{recipient}>\nSubject: to {recipient}\nMessage-ID: <{message_id}>\n\n"
            f"A test message for {recipient}.\n"
        ).encode()
        await self.run("-odq", "-f", sender, "--", recipient, stdin=message)
        for exim_id, rest in self._log_lines():
            received = _RECEIVED.match(rest)
            if received is not None and received["message_id"] == message_id:
                return exim_id, message_id
        raise AssertionError(f"{message_id} was queued but not logged\n--- mainlog ---\n{self.mainlog_tail()}")

    async def deliver(self, *recipients: str, keep_deferred: bool = False) -> dict[str, Delivery]:
        """Submit one message per recipient, make one delivery attempt of each (``exim -M``, which returns when
        the attempt is over), and return each recipient's outcome from the mainlog. Deferred messages are removed
        from the queue afterwards (``exim -Mrm``) unless ``keep_deferred``."""
        queued = await asyncio.gather(*(self.submit(r) for r in recipients))
        await asyncio.gather(*(self.run("-M", exim_id, timeout=_DELIVERY_TIMEOUT) for exim_id, _ in queued))
        lines: dict[str, list[str]] = {}
        for exim_id, rest in self._log_lines():
            lines.setdefault(exim_id, []).append(rest)
        outcomes: dict[str, Delivery] = {}
        for recipient, (exim_id, message_id) in zip(recipients, queued, strict=True):
            found = _parse(exim_id, message_id, lines.get(exim_id, [])).get(recipient)
            if found is None:
                raise AssertionError(f"no outcome for {recipient} ({exim_id})\n--- mainlog ---\n{self.mainlog_tail()}")
            outcomes[recipient] = found
        if not keep_deferred:
            for outcome in outcomes.values():
                if outcome.status == "deferred":
                    await self.run("-Mrm", outcome.exim_id)
        return outcomes


def fill_in(config: str, values: Mapping[str, str]) -> str:
    """docs/exim.md's block with its ``@@NAME@@`` placeholders replaced (every one must be given)."""
    for name, value in values.items():
        config = config.replace(f"@@{name}@@", value)
    left = sorted(set(re.findall(r"@@[A-Z_]+@@", config)))
    if left:
        raise ValueError(f"placeholders left in the Exim configuration: {', '.join(left)}")
    return config


@asynccontextmanager
async def exim_instance(world: World, config: str, *, mtasts_host: str, mtasts_port: int) -> AsyncIterator[Exim]:
    """An Exim of the test's own running ``config`` — docs/exim.md's block: its placeholders are filled in here,
    ``@@CAFILE@@`` with a copy of ``world``'s CA — and asking ``world``'s DNS server (which must listen on port
    53: resolv.conf has no port). Its directory is removed on exit."""
    binary = find_exim()
    if os.geteuid() != 0:
        pytest.fail("an Exim instance needs root: a mount namespace, and exim -C keeps its privilege only for root")
    if world.dns_port != 53:
        raise ValueError(f"Exim's resolver asks port 53 only; the world's DNS server is on {world.dns_port}")
    directory = Path(tempfile.mkdtemp(prefix="mtasts-exim-"))
    try:
        exim = Exim(binary, directory)
        values = {"MTASTS_HOST": mtasts_host, "MTASTS_PORT": str(mtasts_port), "CAFILE": str(exim.ca_path)}
        exim.configure(fill_in(config, values), nameserver=world.dns_host, ca_file=world.ca_pem_path)
        await exim.run("-bV")  # the configuration loads (a syntax error fails here, with Exim's message)
        yield exim
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def world_for_exim() -> AbstractAsyncContextManager[World]:
    """A :class:`World` whose DNS server listens on port 53 of the first free address of :data:`DNS_ADDRESSES`."""
    return world_on_port_53(DNS_ADDRESSES)


_mx_addresses = (f"127.0.26.{n}" for n in range(2, 255))


async def add_mx(mail: MailWorld, host: str, cert: str | None) -> str:
    """An MX server for ``host`` on port 25 of the next free 127.0.26.x address (one in use by another run of
    these tests is passed over); returns its address."""
    for address in _mx_addresses:
        try:
            return await mail.add_mx(host, cert, ip=address)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            mail.world.remove_records(host, "A")  # add_mx published the address before it tried to listen
    raise RuntimeError("no free 127.0.26.x address left for an MX server")
