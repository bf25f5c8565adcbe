"""The sans-I/O core imports nothing from asyncio, aiohttp or socket (issue 2 acceptance; h11's discipline)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ._purity import absolute_imports

PACKAGE = Path(__file__).resolve().parent.parent / "mtasts"
CORE_MODULES = [
    "_abnf",
    "_lazy",
    "_rfc3339",
    "dane",
    "domain",
    "errors",
    "matching",
    "policy",
    "results",
    "tls_errors",
    "txt",
    "verdict",
]
FORBIDDEN = {"asyncio", "aiohttp", "socket", "ssl", "dns", "aiosmtplib", "select", "selectors", "time"}


# The pure layers of the later modules (each beside the shell module that does its I/O): their source imports no
# I/O library either (they may import the shell's types, so only the source is checked here).
PURE_LAYERS = [
    "decision",
    "socketmap/overrides",
    "socketmap/tally",
    "socketmap/exim_answers",
    "socketmap/reload",
    "control/protocol",
    "http_api/answers",
    "http_api/openapi",
    "tlsrpt/schedule",
    "tlsrpt/retry",
]


@pytest.mark.parametrize("module", CORE_MODULES + PURE_LAYERS)
def test_core_module_source_imports_no_io(module: str) -> None:
    imported = absolute_imports(PACKAGE / f"{module}.py")
    assert not imported & FORBIDDEN, f"mtasts.{module} imports {imported & FORBIDDEN}"


def test_importing_the_core_loads_no_io_module() -> None:
    """At run time too: `import mtasts` and using the core pulls in no network or event-loop module."""
    code = (
        "import sys\n"
        "import mtasts\n"
        "p = mtasts.parse_policy('version: STSv1\\nmode: enforce\\nmx: a.example\\nmax_age: 1\\n')\n"
        "mtasts.evaluate(p, 'a.example'); mtasts.select_txt_record(['v=STSv1; id=1'])\n"
        "mtasts.classify_tls_error(ValueError()); mtasts.normalize_domain('bücher.example')\n"
        "print(' '.join(sorted(m for m in ('asyncio', 'aiohttp', 'socket', 'ssl', 'dns') if m in sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert result.stdout.strip() == ""
