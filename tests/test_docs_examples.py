"""The complete examples in the docs run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"


def python_blocks(name: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / name).read_text(encoding="utf-8"), re.DOTALL)


def test_delivery_example_runs_as_written() -> None:
    example = python_blocks("delivery.md")[0]
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", example], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "delivered mx1.example.com" in result.stdout


def test_custom_mta_example_compiles() -> None:
    for block in python_blocks("delivery.md")[1:]:
        compile(block, "delivery.md", "exec")
