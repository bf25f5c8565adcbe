"""The socketmap server's configuration: :class:`ServerConfig`, its TOML file, and the descriptor plan.

Every field of :class:`ServerConfig` is a TOML key (docs/postfix.md lists them); :func:`load_config` reads a
file, :func:`override` lays the command line's flags on top. :func:`plan_descriptors` shares the descriptor
limit between connections and lookups (:func:`~mtasts.socketmap.serve` applies it). No I/O but reading the file.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass
from typing import Any, Final

from .._checks import check_count, check_seconds
from ..errors import UsageError
from ..options import WorldOptions, format_host_port, parse_host_port
from ..resolver import DNS_ERROR_MODES
from .overrides import Override, check_overrides, parse_overrides

__all__ = [
    "DEFAULT_PORT",
    "DESCRIPTOR_RESERVE",
    "EVENT_LOOPS",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "METRICS_PORT",
    "TOML_KEYS",
    "DescriptorPlan",
    "ServerConfig",
    "load_config",
    "override",
    "parse_listen",
    "parse_metrics_listen",
    "plan_descriptors",
]

#: The TCP port of ``listen`` when none is given.
DEFAULT_PORT: Final = 8461

#: ``log_level`` values (``--log-level`` choices).
LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")

#: ``log_format`` values (``--log-format`` choices): lines of text, or one JSON object per line.
LOG_FORMATS: Final = ("text", "json")

#: The TCP port of ``metrics_listen`` when none is given.
METRICS_PORT: Final = 8463  # (8462 is serve-http's)

#: ``event_loop`` values (``--event-loop`` choices): the standard library's loop, or uvloop (the ``fast`` extra).
EVENT_LOOPS: Final = ("asyncio", "uvloop")


@dataclass
class ServerConfig:
    """Everything ``mtasts serve-socketmap`` needs; every field is a TOML key of the same name (docs/postfix.md),
    except ``host``/``port`` (TOML ``listen = "HOST:PORT"``) and ``unix_path`` (TOML ``unix``)."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    unix_path: str | None = None
    unix_mode: int | None = None  # permissions of the Unix socket, e.g. 0o660
    store: str = "sqlite"  # memory | sqlite | sqlite:PATH | redis://HOST:PORT/DB
    cache_size: int = 100_000
    fetch_timeout: float = 60.0  # RFC 8461 §3.3 suggests one minute
    fetch_idle_timeout: float = 15.0  # a policy host silent this long (connect, TLS, response, body) is given up
    request_timeout: float = 30.0
    max_request: int = 1024
    max_pipeline: int = 256
    idle_timeout: float = 600.0
    first_request_timeout: float = 5.0  # a new connection without a complete request after this is closed
    max_connections: int | None = None  # None: sized from the descriptor limit (plan_descriptors)
    max_concurrent_dns: int = 256
    max_concurrent_fetches: int = 512
    queue_timeout: float = 30.0  # a lookup waits this long for a DNS or fetch slot, then answers TEMP
    dns_error: str = "no-policy"  # no-policy (RFC 8461) | defer: a failed TXT query with nothing cached is TEMP
    shutdown_grace: float = 5.0
    refresh_period: float = 3600.0  # proactive refresh (§3.3, §10.2) runs this often; 0 turns it off
    log_level: str = "info"
    nameserver: str | None = None  # IP[:PORT], instead of the system's resolver
    cafile: str | None = None  # PEM trust store for policy hosts, instead of the system's
    policy_port: int = 443
    tlsrpt: bool = False  # Postfix >= 3.10's TLS-RPT attributes on every map name, not only QUERYwithTLSRPT
    dane: bool = True  # DANE first: enforce domains whose MX hosts have validated TLSA records get "OK dane-only"
    event_loop: str = "asyncio"  # asyncio | uvloop (the fast extra: ~5-10 % less CPU per cold lookup)
    # cache control (mtasts cache ... --control PATH, docs/operations.md): a Unix socket, and its permissions
    control_socket: str | None = None
    control_mode: int = 0o600  # whoever can open the socket can list, purge and warm: never others
    # normalised domain -> the operator's answer for it, instead of discovery (TOML [overrides."example.com"])
    overrides: dict[str, Override] = dataclasses.field(default_factory=dict)
    user: str | None = None  # run as this user after binding (the daemon must start as root): --user
    group: str | None = None  # and this group (default: the user's primary group): --group
    metrics_listen: str | None = None  # HOST:PORT for GET /metrics (Prometheus; the metrics extra) and /healthz
    log_format: str = "text"  # text | json (one object per line)

    def __post_init__(self) -> None:
        for name, expected in _FIELD_TYPES.items():
            value = getattr(self, name)
            if value is None and name in _OPTIONAL:
                continue
            if not _is_type(value, expected):
                raise UsageError(f"{name} must be {_TYPE_NAMES[expected]}, not {value!r}")
        for name in ("cache_size", "max_request", "max_pipeline", "max_concurrent_dns", "max_concurrent_fetches"):
            check_count(name, getattr(self, name))
        if self.max_connections is not None:
            check_count("max_connections", self.max_connections)
        for name in ("fetch_timeout", "fetch_idle_timeout", "request_timeout", "idle_timeout", "first_request_timeout"):
            check_seconds(name, getattr(self, name), positive=True)
        for name in ("shutdown_grace", "refresh_period", "queue_timeout"):
            check_seconds(name, getattr(self, name))
        if self.dns_error not in DNS_ERROR_MODES:
            raise UsageError(
                f"dns_error must be one of {', '.join(map(repr, DNS_ERROR_MODES))}, not {self.dns_error!r}"
            )
        if not 0 <= self.port < 65536:
            raise UsageError(f"port must be 0 to 65535, not {self.port}")
        if not 0 < self.policy_port < 65536:
            raise UsageError(f"policy_port must be 1 to 65535, not {self.policy_port}")
        if self.unix_mode is not None and not 0 <= self.unix_mode <= 0o7777:
            raise UsageError(f"unix_mode must be a permission mode such as 0o660, not {self.unix_mode!r}")
        if not 0 <= self.control_mode <= 0o777 or self.control_mode & 0o007:
            raise UsageError(
                f"control_mode must be a permission mode without access for others, such as 0o600 or 0o660, "
                f"not {oct(self.control_mode)}"
            )
        if self.control_socket is not None and not self.control_socket:
            raise UsageError("control_socket must be a path")
        if self.event_loop not in EVENT_LOOPS:
            raise UsageError(f"event_loop must be one of {', '.join(EVENT_LOOPS)}, not {self.event_loop!r}")
        if self.log_level.lower() not in LOG_LEVELS:
            raise UsageError(f"log_level must be one of {', '.join(LOG_LEVELS)}, not {self.log_level!r}")
        if self.log_format not in LOG_FORMATS:
            raise UsageError(f"log_format must be one of {', '.join(LOG_FORMATS)}, not {self.log_format!r}")
        if self.metrics_listen is not None:
            parse_metrics_listen(self.metrics_listen)
        from ..stores import check_store_spec  # noqa: PLC0415 - the stores load sqlite3 only when serving

        check_store_spec(self.store)
        self.overrides = check_overrides(self.overrides)
        if self.group is not None and self.user is None:
            raise UsageError("group needs user: --group only applies with --user")

    @property
    def listen(self) -> str:
        """``HOST:PORT`` (``[::1]:8461`` for IPv6) or ``unix:PATH``."""
        if self.unix_path is not None:
            return f"unix:{self.unix_path}"
        return format_host_port(self.host, self.port)

    @property
    def world(self) -> WorldOptions:
        """The world options: ``nameserver``, ``cafile``, ``policy_port`` (read when :func:`serve` starts)."""
        return WorldOptions(nameserver=self.nameserver, cafile=self.cafile, policy_port=self.policy_port)


_FIELD_TYPES: dict[str, type] = {
    "host": str,
    "port": int,
    "unix_path": str,
    "unix_mode": int,
    "store": str,
    "cache_size": int,
    "fetch_timeout": float,
    "fetch_idle_timeout": float,
    "request_timeout": float,
    "max_request": int,
    "max_pipeline": int,
    "idle_timeout": float,
    "first_request_timeout": float,
    "max_connections": int,
    "max_concurrent_dns": int,
    "max_concurrent_fetches": int,
    "queue_timeout": float,
    "dns_error": str,
    "shutdown_grace": float,
    "refresh_period": float,
    "log_level": str,
    "nameserver": str,
    "cafile": str,
    "policy_port": int,
    "tlsrpt": bool,
    "dane": bool,
    "event_loop": str,
    "control_socket": str,
    "control_mode": int,
    "overrides": dict,
    "user": str,
    "group": str,
    "metrics_listen": str,
    "log_format": str,
}
_OPTIONAL = frozenset(
    {"unix_path", "unix_mode", "nameserver", "cafile", "max_connections", "control_socket", "user", "group",
     "metrics_listen"}
)  # fmt: skip
_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", dict: "a table"}
#: TOML keys that are not field names.
_TOML_ALIASES = {"listen": None, "unix": "unix_path"}
TOML_KEYS: Final = frozenset((set(_FIELD_TYPES) - {"host", "port", "unix_path"}) | set(_TOML_ALIASES))


def _is_type(value: object, expected: type) -> bool:
    if isinstance(value, bool) or expected is bool:
        return isinstance(value, bool) and expected is bool
    if expected is float:
        return isinstance(value, int | float)
    return isinstance(value, expected)


def parse_listen(text: str) -> tuple[str, int]:
    """``127.0.0.1:8461``, ``[::1]:8461``, ``localhost:8461`` → (host, port); a missing port means 8461."""
    return parse_host_port(text, what="listen address", default_port=DEFAULT_PORT, port_zero=True)


def parse_metrics_listen(text: str) -> tuple[str, int]:
    """``metrics_listen``: ``127.0.0.1:8463``, ``[::1]:8463``, port 0 (the system picks) → (host, port); a missing
    port means 8463."""
    return parse_host_port(text, what="metrics address", default_port=METRICS_PORT, port_zero=True)


def load_config(path: str | os.PathLike[str]) -> ServerConfig:
    """Read a TOML configuration file (keys: docs/postfix.md). Unknown keys and wrong types are errors."""
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        raise UsageError(f"cannot read the configuration {os.fspath(path)}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{os.fspath(path)} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - TOML_KEYS)
    if unknown:
        raise UsageError(
            f"unknown key{'s' if len(unknown) > 1 else ''} in {os.fspath(path)}: {', '.join(unknown)} "
            f"(known: {', '.join(sorted(TOML_KEYS))})"
        )
    if "listen" in data and not isinstance(data["listen"], str):
        raise UsageError(f'listen must be a string such as "127.0.0.1:8461", not {data["listen"]!r}')
    if "overrides" in data:
        try:
            data["overrides"] = parse_overrides(data["overrides"])
        except UsageError as exc:
            raise UsageError(f"{os.fspath(path)}: {exc.message}") from None
    fields = _fields(data)
    if "listen" in data and "unix" in data:
        raise UsageError(f"{os.fspath(path)}: set either listen or unix, not both")
    return ServerConfig(**fields)


def override(config: ServerConfig, **keys: Any) -> ServerConfig:
    """``config`` with some TOML keys set again (a value of None: not set), as the command line's flags do.

    ``listen`` replaces the address and drops a Unix socket; ``unix`` replaces the Unix socket.
    """
    given = {key: value for key, value in keys.items() if value is not None}
    fields = _fields(given)
    if "listen" in given:
        fields.setdefault("unix_path", None)
    return dataclasses.replace(config, **fields) if fields else config


def _fields(keys: dict[str, Any]) -> dict[str, Any]:
    """ServerConfig fields from TOML keys: ``listen`` → host and port, ``unix`` → unix_path, the rest as named."""
    fields: dict[str, Any] = {}
    for key, value in keys.items():
        if key == "listen":
            fields["host"], fields["port"] = parse_listen(value)
        else:
            fields[_TOML_ALIASES.get(key) or key] = value
    return fields


# -- descriptors ---------------------------------------------------------------------------------------------------

#: Descriptors kept for everything but connections and lookups: listeners, epoll, the store's files, logs.
DESCRIPTOR_RESERVE: Final = 64
_MIN_CONNECTIONS: Final = 16
_MAX_CONNECTIONS: Final = 100_000
_MAX_ACCEPT_BATCH: Final = 32


@dataclass(frozen=True, slots=True)
class DescriptorPlan:
    """How :func:`serve` splits the descriptor limit ``nofile``: see :func:`plan_descriptors`."""

    nofile: int
    reserve: int  # listeners, epoll, store files, logs
    accept_batch: int  # connections asyncio accepts per loop iteration (SocketmapServer(accept_batch=...))
    max_concurrent_dns: int  # one socket per DNS query
    max_concurrent_fetches: int  # one socket per policy fetch
    max_connections: int

    @property
    def accepting(self) -> int:
        """Connections accepted but not yet counted, or closed to make room but not yet released: up to three
        accept batches (accepted, then set up, then counted and their victims closed, a loop iteration each)."""
        return 3 * self.accept_batch

    @property
    def total(self) -> int:
        """Descriptors the plan may use at once."""
        return (
            self.reserve + self.accepting + self.max_concurrent_dns + self.max_concurrent_fetches + self.max_connections
        )

    @property
    def fits(self) -> bool:
        """False when the plan may need more descriptors than ``nofile`` (a limit too small, or max_connections)."""
        return self.total <= self.nofile


def plan_descriptors(
    nofile: int, *, max_connections: int | None, max_concurrent_dns: int, max_concurrent_fetches: int
) -> DescriptorPlan:
    """Share ``nofile`` descriptors between connections and lookups so that neither can starve the other.

    After a fixed reserve and three accept batches, lookups (DNS queries + policy fetches) keep their limits unless
    they would take more than half of what remains: then both are scaled down in proportion (at least 1 each).
    ``max_connections`` defaults to the rest (16 to 100,000); an explicit value is kept even when it does not fit
    (:attr:`DescriptorPlan.fits`).
    """
    check_count("nofile", nofile)
    check_count("max_concurrent_dns", max_concurrent_dns)
    check_count("max_concurrent_fetches", max_concurrent_fetches)
    if max_connections is not None:
        check_count("max_connections", max_connections)
    reserve = DESCRIPTOR_RESERVE
    batch = max(4, min(_MAX_ACCEPT_BATCH, (nofile - reserve) // 32))
    remaining = max(0, nofile - reserve - 3 * batch)
    dns, fetches = max_concurrent_dns, max_concurrent_fetches
    budget = remaining // 2
    if dns + fetches > budget:
        dns, fetches = max(1, dns * budget // (dns + fetches)), max(1, fetches * budget // (dns + fetches))
    if max_connections is None:
        max_connections = max(_MIN_CONNECTIONS, min(_MAX_CONNECTIONS, remaining - dns - fetches))
    return DescriptorPlan(nofile, reserve, batch, dns, fetches, max_connections)
