"""Lazy package exports: a package names what its heavier modules define, and imports each on first use.

``__getattr__, __dir__ = lazy_exports(__name__, {"PolicyResolver": "resolver", ...})`` in a package's
``__init__`` (PEP 562): ``import mtasts`` then loads only the sans-I/O core, and ``mtasts.PolicyResolver`` imports
:mod:`mtasts.resolver` (asyncio, dnspython) when it is first read. The value is then kept in the package, so the
next read is an ordinary attribute. Type checkers see the names through the package's ``TYPE_CHECKING`` imports.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module ``__getattr__`` and ``__dir__`` of ``package`` for ``exports`` (name → its module, relative)."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(f".{module}", package), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
