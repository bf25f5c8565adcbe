"""Optional extras explain themselves (issue 13): a part whose extra is missing says which one to install, and the
demo needs nothing beyond the ``testing`` extra."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_without(modules: list[str], code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a child where ``modules`` cannot be imported (as if their packages were not installed)."""
    block = "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in modules)
    return subprocess.run([sys.executable, "-c", block + code], capture_output=True, text=True, timeout=120,
                          check=False, cwd=ROOT)  # fmt: skip


def test_delivery_without_the_smtp_extra_names_it() -> None:
    result = run_without(["aiosmtplib"], "import mtasts.delivery")
    assert result.returncode == 1
    assert "ImportError: mtasts.delivery needs aiosmtplib: pip install 'mtasts[smtp]'" in result.stderr


def test_redis_store_without_the_redis_extra_names_it() -> None:
    result = run_without(["redis", "redis.asyncio"], "from mtasts.stores import RedisStore")
    assert "mtasts[redis]" in result.stderr


# What the test extra adds beyond `testing`: the demo must run without any of it.
TEST_ONLY = ["aiosmtplib", "aiosmtpd", "redis", "hypothesis", "jsonschema", "pytest", "mypy", "ruff"]


def test_the_live_demo_needs_only_the_testing_extra() -> None:
    result = run_without(TEST_ONLY, "from mtasts.cli import main; sys.exit(main(['demo']))")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "enforce" in result.stdout


def test_run_demo_installs_only_the_testing_extra() -> None:
    script = (ROOT / "run").read_text()
    demo = re.search(r"^demo\)\n(.*?);;", script, re.M | re.S)
    assert demo is not None
    assert re.search(r"^\s*bootstrap testing\b(?!,)", demo.group(1), re.M), demo.group(1)
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^testing = \["trustme>=[0-9.]+"\]$', pyproject, re.M)


def test_a_benchmark_run_never_rewrites_the_docs_picture() -> None:
    from benchmarks.run import plot_path

    assert plot_path(None, None) == ROOT / "benchmarks" / "results" / "load.png"  # untracked (.gitignore)
    assert plot_path(None, "/tmp/quick.json") == Path("/tmp/quick-load.png")
    assert plot_path("docs/benchmarks-load.png", "/tmp/quick.json") == Path("docs/benchmarks-load.png")  # on purpose
    ignored = subprocess.run(["git", "check-ignore", "-q", "benchmarks/results/load.png"], cwd=ROOT, check=False)
    assert ignored.returncode == 0
