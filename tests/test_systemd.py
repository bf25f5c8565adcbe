"""mtasts.socketmap.systemd: sd_notify(3) datagrams on a real AF_UNIX socket, $WATCHDOG_USEC, $LISTEN_FDS."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mtasts.errors import MTASTSError
from mtasts.socketmap.systemd import Notifier, listen_fds, watchdog_interval


@pytest.fixture
def notify_socket() -> Iterator[tuple[str, socket.socket]]:
    """An AF_UNIX datagram socket bound to a path (short: sun_path holds 108 bytes), as systemd's is."""
    with tempfile.TemporaryDirectory(prefix="mtasts-") as directory:
        path = os.path.join(directory, "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path)
            sock.settimeout(2.0)
            yield path, sock


def test_notifier_sends_one_datagram_per_message(notify_socket: tuple[str, socket.socket]) -> None:
    path, sock = notify_socket
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    try:
        assert notifier.ready("listening on 127.0.0.1:8461")
        assert sock.recv(4096) == f"READY=1\nSTATUS=listening on 127.0.0.1:8461\nMAINPID={os.getpid()}".encode()
        assert notifier.watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1"
        assert notifier.reloading()
        reloading, monotonic = sock.recv(4096).decode().split("\n")
        assert reloading == "RELOADING=1"
        assert monotonic.startswith("MONOTONIC_USEC=") and int(monotonic.split("=")[1]) > 0
        assert notifier.stopping()
        assert sock.recv(4096) == b"STOPPING=1"
    finally:
        notifier.close()


def test_an_abstract_notify_socket() -> None:
    """``@name``: the abstract namespace (a leading NUL byte on the wire, no file)."""
    name = f"mtasts-test-{os.getpid()}-{os.urandom(4).hex()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2.0)
        notifier = Notifier(f"@{name}")
        try:
            assert notifier.stopping()
            assert sock.recv(4096) == b"STOPPING=1"
        finally:
            notifier.close()


def test_no_notify_socket_sends_nothing(caplog: pytest.LogCaptureFixture) -> None:
    assert not Notifier.from_environ({}).enabled
    assert not Notifier.from_environ({"NOTIFY_SOCKET": ""}).ready("x")
    with caplog.at_level(logging.WARNING, logger="mtasts"):
        notifier = Notifier("vsock:2:1234")  # a kind of address this module does not speak
    assert not notifier.enabled and "neither a path" in caplog.text


def test_a_failing_notify_socket_is_logged_once_and_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier(str(tmp_path / "absent"))
    with caplog.at_level(logging.WARNING, logger="mtasts"):
        assert not notifier.ready("x")
        assert not notifier.watchdog()
    assert caplog.text.count("cannot notify systemd") == 1
    notifier.close()


@pytest.mark.parametrize(
    ("environ", "interval"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "200000"}, 0.1),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # another process's watchdog
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
)
def test_watchdog_interval(environ: dict[str, str], interval: float | None) -> None:
    assert watchdog_interval(environ, 4242) == interval


def test_listen_fds_are_for_listen_pid_only() -> None:
    assert listen_fds({}, 4242) == []
    assert listen_fds({"LISTEN_PID": "1", "LISTEN_FDS": "1"}, 4242) == []  # inherited: not ours
    assert listen_fds({"LISTEN_PID": "4242", "LISTEN_FDS": "0"}, 4242) == []
    with pytest.raises(MTASTSError, match="LISTEN_FDS"):
        listen_fds({"LISTEN_PID": "4242", "LISTEN_FDS": "two"}, 4242)


_CHILD = """
import json, os, socket, sys
from mtasts.socketmap.systemd import activated_socket, listen_fds
os.environ["LISTEN_PID"] = str(os.getpid())
try:
    passed = listen_fds(os.environ, os.getpid())
    print(json.dumps([[p.fd, p.name, os.get_inheritable(p.fd)] for p in passed]))
    sock = activated_socket(os.environ, os.getpid())
except Exception as exc:
    print(type(exc).__name__, exc)
else:
    print(sock.family == socket.AF_INET, sock.getsockname()[1])
"""


def _run_child(listening: socket.socket, environ: dict[str, str]) -> list[str]:
    """The child sees ``listening`` as descriptor 3 (dup2'd before exec), as systemd passes it."""
    script = f"import os\nos.dup2({listening.fileno()}, 3)\n" + _CHILD
    result = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, **environ},
        pass_fds=(listening.fileno(),),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return result.stdout.splitlines()


def test_activated_socket_in_a_child_process() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listening:
        port = listening.getsockname()[1]
        lines = _run_child(listening, {"LISTEN_FDS": "1", "LISTEN_FDNAMES": "socketmap"})
        assert lines == ['[[3, "socketmap", false]]', f"True {port}"]
        lines = _run_child(listening, {"LISTEN_FDS": "1", "LISTEN_FDNAMES": "a:b"})  # names do not match
        assert lines[0] == '[[3, "unknown", false]]'
        lines = _run_child(listening, {"LISTEN_FDS": "2"})  # descriptor 4 is not open
        assert lines[-1].startswith("MTASTSError LISTEN_FDS=2: descriptor 4 is not open")


def test_activated_socket_must_be_listening() -> None:
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        lines = _run_child(bound, {"LISTEN_FDS": "1"})
        assert lines[-1].startswith("MTASTSError descriptor 3 (unknown) from systemd is not listening")
