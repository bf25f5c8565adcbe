"""The layering checks' one AST walk: which top-level packages a module's source imports (absolute imports only,
function-level ones included)."""

from __future__ import annotations

import ast
from pathlib import Path

__all__ = ["absolute_imports"]


def absolute_imports(path: Path) -> set[str]:
    """The top-level names of every absolute import in the source at ``path`` (``dns.resolver`` → ``dns``)."""
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
    return imported
