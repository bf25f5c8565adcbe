"""No import cycle among the modules of ``mtasts``, counting the imports inside functions (issue 14).

A lazy import (``def f(): from .cli import x``) hides a cycle from Python but not from a reader: the two modules
still depend on each other. So this walks the source (the AST, nothing is imported) of every module under
``mtasts/`` and follows every ``import`` statement, at module level and inside functions and classes alike.

What counts as an edge ``a → b``:

- ``import mtasts.x.y`` and ``from mtasts.x import y`` / ``from .x import y``: the module ``mtasts.x.y`` when
  it is one, else ``mtasts.x`` (``y`` is then a name defined in it). ``from . import y`` is thus an import of
  the submodule ``y``, not of the package's ``__init__``; a package's ``__init__`` re-exporting its submodules
  is a cycle only if one of them imports the package back.
- Relative imports are resolved against the importing module (a package's ``__init__`` is its own package).
- Imports under ``if TYPE_CHECKING:`` are left out: they never run, and type checkers handle cycles.
- ``importlib.import_module(".redis", __name__)`` with a literal name counts like ``from . import redis``; a
  computed name (``import_module(f".{module}", __name__)``, the lazy attributes of ``mtasts`` and
  ``mtasts.tlsrpt``) is not seen.
"""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Iterable, Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "mtasts"


def _modules(package: Path) -> dict[str, Path]:
    """Module name → source file, for every module of the package in the directory ``package``."""
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = (package.name, *path.relative_to(package).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_module_call(node: ast.AST) -> str | None:
    """The literal module name of ``import_module("...")`` / ``importlib.import_module("...")``, else None."""
    if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)):
        return None
    function = node.func
    name = getattr(function, "id", None) or getattr(function, "attr", None)
    value = node.args[0].value
    return value if name == "import_module" and isinstance(value, str) else None


def _import_nodes(nodes: Iterable[ast.AST]) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement in ``nodes``, at any depth, except in the bodies of ``if TYPE_CHECKING:``; a call
    ``import_module(".x", __name__)`` with a literal name counts as ``from . import x``."""
    for node in nodes:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
            continue
        if (literal := _import_module_call(node)) is not None:
            level = len(literal) - len(literal.lstrip("."))
            module, _, name = literal[level:].rpartition(".")
            yield ast.ImportFrom(module=module or None, names=[ast.alias(name=name)], level=level)
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _import_nodes(node.orelse)
        else:
            yield from _import_nodes(ast.iter_child_nodes(node))


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module → the modules of the same package it imports, as the edges are counted above."""
    modules = _modules(package)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]  # what "." means in this module
        found: set[str] = set()
        for node in _import_nodes([ast.parse(path.read_text(encoding="utf-8"), str(path))]):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
                continue
            if node.level:
                parts = here.split(".")
                origin = ".".join([*parts[: len(parts) - node.level + 1], *([node.module] if node.module else [])])
            else:
                origin = node.module or ""
            for alias in node.names:
                submodule = f"{origin}.{alias.name}"
                found.add(submodule if submodule in modules else origin)
        graph[name] = {target for target in found if target in modules and target != name}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Cycles (``[a, b, ..., a]``) through every module that is on one: Tarjan's strongly connected components of
    more than one module, then a shortest cycle through each member not yet shown."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    cycles: list[list[str]] = []
    for component in components:
        covered: set[str] = set()
        for start in component:  # enough cycles to show every module of the component
            if start not in covered:
                cycle = _cycle_through(graph, start, set(component))
                covered.update(cycle)
                cycles.append(cycle)
    return cycles


def _cycle_through(graph: dict[str, set[str]], start: str, members: set[str]) -> list[str]:
    """A shortest cycle from ``start`` back to itself (breadth first, inside its component ``members``)."""
    paths = {start: [start]}
    queue = [start]
    for node in queue:
        for target in sorted(graph[node] & members):
            if target == start:
                return [*paths[node], start]
            if target not in paths:
                paths[target] = [*paths[node], target]
                queue.append(target)
    raise AssertionError(f"no cycle through {start}")  # pragma: no cover - Tarjan found one


def test_the_walker_counts_imports_as_described(tmp_path: Path) -> None:
    """Each rule of the module docstring, on a package written for the test."""
    files = {
        "__init__.py": "from .a import f\nfrom . import sub\n",
        "a.py": """
            from typing import TYPE_CHECKING
            import os
            if TYPE_CHECKING:
                from . import b
            else:
                from .c import value
            def f():
                from .sub.d import g  # a function-level relative import
                import pkg.sub
                return g
        """,
        "b.py": "from importlib import import_module\nX = import_module('.c', 'pkg')\n",
        "c.py": "value = 1\n",
        "sub/__init__.py": "from .. import c\nfrom ..a import f\n",
        "sub/d.py": "from . import e\nfrom .. import value\ng = 1\n",
        "sub/e.py": "",
    }
    for name, text in files.items():
        path = tmp_path / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    assert import_graph(tmp_path / "pkg") == {
        "pkg": {"pkg.a", "pkg.sub"},  # `from . import sub`: the submodule
        "pkg.a": {"pkg.c", "pkg.sub.d", "pkg.sub"},  # not pkg.b: only under TYPE_CHECKING
        "pkg.b": {"pkg.c"},  # import_module with a literal name
        "pkg.c": set(),
        "pkg.sub": {"pkg.c", "pkg.a"},  # relative to the package itself in an __init__
        "pkg.sub.d": {"pkg.sub.e", "pkg"},  # `from .. import value`: a name of pkg's __init__
        "pkg.sub.e": set(),
    }
    assert find_cycles(import_graph(tmp_path / "pkg")) == [
        ["pkg", "pkg.a", "pkg.sub.d", "pkg"],
        ["pkg.sub", "pkg.a", "pkg.sub"],
    ]


def test_the_cycle_finder() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}, "x": {"y"}, "y": {"x", "z"}, "z": {"y"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"], ["x", "y", "x"], ["z", "y", "z"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_mtasts_modules() -> None:
    graph = import_graph()
    assert {"mtasts.check", "mtasts.socketmap", "mtasts.tlsrpt.cli"} <= graph["mtasts.cli"]  # in functions
    cycles = find_cycles(graph)
    assert not cycles, "import cycles (a → b: a imports b, at module level or in a function):\n" + "\n".join(
        " → ".join(cycle) for cycle in cycles
    )
