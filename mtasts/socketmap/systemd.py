"""The two small systemd protocols a service needs, written out (no libsystemd): notification and activation.

**Notification** (sd_notify(3)): a ``Type=notify`` service sends datagrams of ``VARIABLE=value`` lines to the
AF_UNIX SOCK_DGRAM socket named by ``$NOTIFY_SOCKET`` — a path, or an abstract name written with a leading
``@`` (sent with a leading NUL byte). :class:`Notifier` sends ``READY=1``, ``RELOADING=1``, ``STOPPING=1``,
``WATCHDOG=1``; without ``$NOTIFY_SOCKET`` it does nothing. :func:`watchdog_interval` reads ``$WATCHDOG_USEC``
(and ``$WATCHDOG_PID``, when set: only that process pings): ping every half of it.

**Socket activation** (sd_listen_fds(3)): systemd passes ``$LISTEN_FDS`` listening sockets as descriptors 3, 4,
…, for the process ``$LISTEN_PID`` (another process that merely inherited the environment must ignore them);
``$LISTEN_FDNAMES`` names them, colon-separated (optional). :func:`listen_fds` reads them;
:func:`activated_socket` gives the one socket the socketmap serves.

Every function takes the environment as an argument (the daemon passes ``os.environ``); nothing here changes it.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from ..errors import MTASTSError

__all__ = [
    "LISTEN_FDS_START",
    "ListenFd",
    "Notifier",
    "activated_socket",
    "listen_fds",
    "watchdog_interval",
]

log = logging.getLogger("mtasts.socketmap")

#: The first passed descriptor (SD_LISTEN_FDS_START).
LISTEN_FDS_START: Final = 3
_SEND_TIMEOUT: Final = 1.0  # seconds a notification may wait for room in systemd's queue (never, in practice)


class Notifier:
    """Sends sd_notify(3) messages to ``address`` (``$NOTIFY_SOCKET``); with None, :meth:`send` does nothing.

    One datagram per :meth:`send`, its assignments joined by newlines. A failure is logged at WARNING (once
    until a send succeeds again) and otherwise ignored: systemd's bookkeeping must never stop the service.
    """

    def __init__(self, address: str | None) -> None:
        if address is not None and not address.startswith(("/", "@")):
            log.warning("NOTIFY_SOCKET=%r is neither a path nor an abstract name (@...): not notifying", address)
            address = None
        self.address = address
        self._socket: socket.socket | None = None
        self._failing = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Notifier:
        return cls(environ.get("NOTIFY_SOCKET") or None)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *assignments: str) -> bool:
        """Send ``READY=1``, ``STATUS=...`` (one datagram); True when it was sent (False: not enabled, or failed)."""
        if self.address is None:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._socket.settimeout(_SEND_TIMEOUT)
            self._socket.sendto("\n".join(assignments).encode(), target)
        except OSError as exc:
            if not self._failing:
                log.warning("cannot notify systemd at %s: %s", self.address, exc.strerror or exc)
            self._failing = True
            return False
        self._failing = False
        return True

    def ready(self, status: str) -> bool:
        """``READY=1`` with a ``STATUS=`` line and our ``MAINPID=``."""
        return self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def reloading(self) -> bool:
        """``RELOADING=1`` with ``MONOTONIC_USEC=`` (systemd >= 253 wants it; older ones ignore it); READY=1 ends it."""
        return self.send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between two ``WATCHDOG=1`` pings — half of ``$WATCHDOG_USEC`` — or None: no watchdog for ``pid``
    (unset, not a positive number, or ``$WATCHDOG_PID`` names another process)."""
    usec = environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    watched = environ.get("WATCHDOG_PID")
    if watched and watched.strip() != str(pid):
        return None
    try:
        value = int(usec)
    except ValueError:
        log.warning("WATCHDOG_USEC=%r is not a number of microseconds: no watchdog pings", usec)
        return None
    if value <= 0:
        return None
    return value / 2_000_000


@dataclass(frozen=True, slots=True)
class ListenFd:
    """One descriptor systemd passed: its number and its name (``FileDescriptorName=``, else ``"unknown"``)."""

    fd: int
    name: str


def listen_fds(environ: Mapping[str, str], pid: int) -> list[ListenFd]:
    """The descriptors passed to ``pid`` (``$LISTEN_PID``/``$LISTEN_FDS``/``$LISTEN_FDNAMES``), each made
    close-on-exec; empty when none were, or they were meant for another process. MTASTSError for a malformed
    ``$LISTEN_FDS``."""
    listen_pid, count = environ.get("LISTEN_PID"), environ.get("LISTEN_FDS")
    if not listen_pid or not count:
        return []
    if listen_pid.strip() != str(pid):
        return []  # inherited from a parent that was activated: not ours
    try:
        number = int(count)
    except ValueError:
        raise MTASTSError(f"LISTEN_FDS={count!r} is not a number of descriptors") from None
    if number < 0:
        raise MTASTSError(f"LISTEN_FDS={count!r} is not a number of descriptors")
    names = environ.get("LISTEN_FDNAMES", "").split(":") if environ.get("LISTEN_FDNAMES") else []
    if len(names) != number:
        names = ["unknown"] * number
    passed = []
    for index in range(number):
        fd = LISTEN_FDS_START + index
        try:
            os.set_inheritable(fd, False)
        except OSError as exc:
            raise MTASTSError(f"LISTEN_FDS={number}: descriptor {fd} is not open ({exc.strerror})") from None
        passed.append(ListenFd(fd, names[index] or "unknown"))
    return passed


def activated_socket(environ: Mapping[str, str], pid: int) -> socket.socket | None:
    """The listening socket systemd passed (socket activation), or None; MTASTSError unless it is exactly one
    listening stream socket (TCP or Unix)."""
    passed = listen_fds(environ, pid)
    if not passed:
        return None
    if len(passed) > 1:
        raise MTASTSError(
            f"systemd passed {len(passed)} sockets ({', '.join(p.name for p in passed)}): the socketmap serves one "
            "(one ListenStream= in the .socket unit)"
        )
    [fd] = passed
    try:
        sock = socket.socket(fileno=fd.fd)
    except OSError as exc:
        raise MTASTSError(f"descriptor {fd.fd} ({fd.name}) from systemd is not a socket: {exc.strerror}") from None
    if sock.family not in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX) or sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise MTASTSError(f"descriptor {fd.fd} ({fd.name}) from systemd is not a TCP or Unix stream socket")
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.detach()
        raise MTASTSError(f"descriptor {fd.fd} ({fd.name}) from systemd is not listening (ListenStream=, Accept=no)")
    return sock
