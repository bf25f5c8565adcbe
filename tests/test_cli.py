"""The command line: `mtasts demo` (static stage) and usage errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mtasts.cli import main


def test_demo_prints_verdicts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "mode: enforce" in out
    assert "a.b.example.net" in out and "validation-failure" in out


def test_usage_error_exits_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mtasts", "no-such-command"], capture_output=True, timeout=60, check=False
    )
    assert result.returncode == 2
