"""The command line: `mtasts demo` (static stage) and usage errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mtasts.cli import main


def test_demo_prints_verdicts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--static"]) == 0
    out = capsys.readouterr().out
    assert "mode: enforce" in out
    assert "a.b.example.net" in out and "validation-failure" in out


def test_usage_error_exits_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mtasts", "no-such-command"], capture_output=True, timeout=60, check=False
    )
    assert result.returncode == 2


def test_live_demo_runs_against_the_loopback_world(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    for expected in [
        "enforce mx=*.enforce.example",
        "refuse this MX (validation-failure)",
        "deliver, report validation-failure",
        "fetch-error: sts-webpki-invalid",
        "fetch-error: sts-policy-fetch-error",
        "no-policy",
    ]:
        assert expected in out
