"""Persistent policy stores behind the resolver's in-memory cache (RFC 8461 §3.3, §10).

* :class:`MemoryStore` — a dict (tests; resolvers sharing a process).
* :class:`SQLiteStore` — the embedded default: one file, WAL, several processes.
* :class:`RedisStore` — for fleets (extra ``redis``); imported on first use.

See docs/stores.md for choosing one, the schema and the failure behaviour.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from ._base import DamagedRowError, PolicyStore, ReportStore, SessionCount, StoredPolicy, validate_row
from .memory import MemoryStore
from .sqlite import SalvageReport, SQLiteStore, default_path

if TYPE_CHECKING:
    from .redis import RedisStore

__all__ = [
    "DamagedRowError",
    "MemoryStore",
    "PolicyStore",
    "RedisStore",
    "ReportStore",
    "SQLiteStore",
    "SalvageReport",
    "SessionCount",
    "StoredPolicy",
    "default_path",
    "open_store",
    "validate_row",
]


def __getattr__(name: str) -> Any:
    if name == "RedisStore":
        return import_module(".redis", __name__).RedisStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def check_store_spec(spec: object) -> str:
    """``spec`` if :func:`open_store` understands it, else :class:`~mtasts.errors.UsageError` (nothing is opened)."""
    from ..errors import UsageError  # noqa: PLC0415 - keep the package import light

    if isinstance(spec, str) and (
        spec in ("memory", "sqlite")
        or (spec.startswith("sqlite:") and len(spec) > len("sqlite:"))
        or spec.startswith(("redis://", "rediss://", "unix://", "redis+sentinel://", "redis+cluster://"))
    ):
        return spec
    raise UsageError(
        f"unknown store {spec!r}: memory, sqlite, sqlite:PATH, redis://HOST:PORT/DB,"
        " redis+sentinel://HOST:PORT[,HOST:PORT...]/SERVICE[/DB] or redis+cluster://HOST:PORT[,HOST:PORT...]"
    )


def open_store(spec: str) -> PolicyStore:
    """A store from a command-line spec: ``memory``, ``sqlite`` (the default file), ``sqlite:PATH``,
    ``redis://...`` / ``rediss://...`` / ``unix://...``, ``redis+sentinel://...``, ``redis+cluster://...``
    (see :class:`RedisStore`)."""
    check_store_spec(spec)
    if spec == "memory":
        return MemoryStore()
    if spec == "sqlite":
        return SQLiteStore()
    if spec.startswith("sqlite:"):
        return SQLiteStore(spec.removeprefix("sqlite:"))
    store: PolicyStore = import_module(".redis", __name__).RedisStore(spec)
    return store
