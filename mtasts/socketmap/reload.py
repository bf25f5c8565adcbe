"""What a reload (SIGHUP) may change, sans I/O: :func:`plan_reload` splits a new configuration in two.

Live (applied at once, connections and cache kept): the overrides, ``log_level``, and the server's limits —
``request_timeout``, ``idle_timeout``, ``first_request_timeout``, ``max_pipeline``, ``max_request`` (for new
connections), ``max_connections`` — ``shutdown_grace`` and ``metrics_listen`` (the daemon moves its metrics
listener). Everything else — where it listens, the store,
the cache, the resolver's timeouts and limits, the world options, DANE, TLS-RPT, the event loop, the user —
is built once at start: a change to it is reported as needing a restart and not applied.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Final

from .config import ServerConfig

__all__ = ["LIVE_FIELDS", "ReloadPlan", "plan_reload"]

#: ServerConfig fields a reload applies.
LIVE_FIELDS: Final = (
    "overrides",
    "log_level",
    "request_timeout",
    "idle_timeout",
    "first_request_timeout",
    "max_pipeline",
    "max_request",
    "max_connections",
    "shutdown_grace",
    "metrics_listen",
)
# TOML key names for the fields that are not keys of the same name.
_TOML_NAMES: Final = {"host": "listen", "port": "listen", "unix_path": "unix"}


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    """``config``: what is in force after the reload (the new live settings, the running ones for the rest);
    ``changed``: live settings that changed; ``restart``: TOML keys that changed but need a restart."""

    config: ServerConfig
    changed: tuple[str, ...]
    restart: tuple[str, ...]


def plan_reload(current: ServerConfig, new: ServerConfig) -> ReloadPlan:
    """Which settings of ``new`` a running server takes over from ``current`` (see the module docs)."""
    live = {name: getattr(new, name) for name in LIVE_FIELDS}
    changed = tuple(name for name in LIVE_FIELDS if getattr(current, name) != live[name])
    restart: list[str] = []
    for field in dataclasses.fields(ServerConfig):
        name = field.name
        if name not in LIVE_FIELDS and getattr(current, name) != getattr(new, name):
            key = _TOML_NAMES.get(name, name)
            if key not in restart:
                restart.append(key)
    return ReloadPlan(dataclasses.replace(current, **live), changed, tuple(restart))
