"""RedisStore: one Redis shared by a fleet of sending MTAs (needs the ``redis`` extra: ``mtasts[redis]``).

Deployments: one server (``redis://``, ``rediss://``, ``unix://``), Redis Sentinel
(``redis+sentinel://host:port[,host:port...]/service_name[/db]``: the master is asked of the sentinels, a
failover is followed) and Redis Cluster (``redis+cluster://host:port[,host:port...]``: keys spread over the
masters by hash slot). Or pass a redis-py asyncio client in (``client=``; a ``RedisCluster`` one means cluster
mode).

Key layout: one string key per Policy Domain, ``{namespace}:policy:{domain}`` (``mtasts:policy:example.com``).
In cluster mode the domain is a hash tag, ``mtasts:policy:{example.com}``, so every key of one domain (its
policy, its TLS-RPT counters, the fleet's lease) lives on one slot; the plain layout is unchanged, so values
stored by earlier versions stay readable. Its value is one JSON object holding every :class:`StoredPolicy`
field plus ``"v"``, the format version (:data:`FORMAT_VERSION`)::

    {"v": 1, "domain": "example.com", "policy_id": "20240101", "policy_text": "version: STSv1\\r\\n...",
     "fetched_at": 1800000000.0, "checked_at": ..., "expires_at": ..., "failed_id": null, "failure": null,
     "failure_detail": null, "retry_after": null}

TTL rule: each key lives as long as its row matters — ``keep_until - clock()`` (the policy's expiry or the end
of the back-off, whichever is later) plus ``ttl_margin`` — so domains nobody mails any more age out of Redis by
themselves. A row already past that is deleted instead of written. Value and TTL are set together
(``SET key value PX ms``).

Atomicity: a :meth:`RedisStore.write` batch (its deletes first, then its puts) runs as one ``MULTI``/``EXEC``
transaction: other clients see all of it or none of it. In cluster mode a batch spans slots, so only each
domain's key is atomic. :meth:`RedisStore.scan` walks the namespace with ``SCAN`` (on every master in cluster
mode) and reads values in batches with ``MGET`` (not a snapshot: rows written meanwhile may or may not show).

Connections: at most ``max_connections`` calls of this store run at once (one connection each, per server);
more wait in line, for ``pool_timeout`` at most. A call that waited that long raises
:class:`PoolTimeoutError` — a :class:`~mtasts.errors.LocalError` and a :class:`~mtasts.stores.DamagedRowError`,
so the resolver answers that one lookup "try again later" and does not mark the store down: our own pool
limit is not a Redis outage.

Failures: values that cannot be read (not JSON, the wrong shape, another format version, fields failing
:func:`~mtasts.stores.validate_row`, a domain that does not match the key, a key of another Redis type) are
skipped — ``get`` returns None — with one WARNING per store. Redis errors
(:class:`redis.exceptions.ConnectionError`, :class:`redis.exceptions.TimeoutError`, other
:class:`redis.exceptions.RedisError`) propagate unchanged; the resolver logs them and serves from memory. Every
call but a write batch takes at most ``socket_timeout`` once it has its connection (connects, a retry, asking
the sentinels included; past that it raises :class:`redis.exceptions.TimeoutError`); a broken pooled connection
is retried once at once (so a restarted server, or a new master, is picked up by the next call) and a dead
server fails fast; a write that timed out may or may not have been applied (all of it or none). During a
Sentinel failover calls fail fast (the old master refuses, the sentinels name no master yet) until the new
master is known. :meth:`RedisStore.aclose` never raises; using the store after it raises RuntimeError.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

try:
    import redis.asyncio
    from redis.asyncio.cluster import ClusterNode, RedisCluster
    from redis.asyncio.connection import parse_url
    from redis.asyncio.retry import Retry
    from redis.asyncio.sentinel import MasterNotFoundError, Sentinel
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import ResponseError
    from redis.exceptions import TimeoutError as RedisTimeoutError
except ImportError as error:  # pragma: no cover - depends on the installed extras
    raise ImportError("RedisStore needs redis-py: pip install 'mtasts[redis]'") from error

from ..errors import LocalError
from ._base import _TEXT_FIELDS, _TIME_FIELDS, DamagedRowError, SessionCount, StoredPolicy, validate_row
from .fleet import RedisFleet

__all__ = ["CLUSTER_SCHEME", "FORMAT_VERSION", "SENTINEL_SCHEME", "PoolTimeoutError", "RedisStore"]

log = logging.getLogger("mtasts.stores")

#: The ``"v"`` field of every value this version writes; values with another version are skipped.
FORMAT_VERSION = 1
#: URL schemes of the two high-availability deployments (the plain ones are redis-py's own).
SENTINEL_SCHEME = "redis+sentinel"
CLUSTER_SCHEME = "redis+cluster"
_FIELDS = _TEXT_FIELDS + _TIME_FIELDS  # every StoredPolicy field but the domain
_SCAN_COUNT = 1000
_TLSRPT_TTL = 8 * 86400  # TLS-RPT counters and report states: a report is due within a day or two
_SENTINEL_PORT = 26379
_REDIS_PORT = 6379
_SENTINEL_OPTIONS = frozenset({"sentinel_username", "sentinel_password"})
# What redis-py's own pools raise when they are full: MaxConnectionsError (a ConnectionError) in redis-py >= 6,
# "Too many connections" before; BlockingConnectionPool after its wait.
_POOL_FULL_MESSAGES = frozenset({"Too many connections", "No connection available."})


class PoolTimeoutError(DamagedRowError, LocalError):
    """No connection of the store's own pool came free within ``pool_timeout``: this call failed on *our* side.

    Redis may be fine. Being a :class:`~mtasts.stores.DamagedRowError`, a ``get`` raising it is answered "try
    again later" for that one lookup without marking the store down; being a :class:`~mtasts.errors.LocalError`,
    it is never mistaken for a failure of the domain.
    """


class _Sentinel(Sentinel):
    """redis-py's Sentinel with a master discovery that concurrent connects cannot corrupt.

    redis-py's own swaps the sentinel that answered to the front of ``self.sentinels`` by index after an await;
    when several connections are made at once (a failover under load) another discovery reorders the list
    meanwhile, and the swap duplicates one sentinel and drops another — until the list may name only a dead one.
    Here each discovery walks a snapshot, and the move to the front happens without an await in between, so
    every sentinel stays in the list exactly once.
    """

    async def discover_master(self, service_name: str) -> tuple[str, int]:
        failures: list[str] = []
        for sentinel in tuple(self.sentinels):
            try:
                state = await sentinel.sentinel_master(service_name)
            except (RedisConnectionError, RedisTimeoutError, ResponseError) as error:  # down, hung, or not told
                failures.append(f"{error}")
                continue
            if isinstance(state, dict) and self.check_master_state(state, service_name):
                if self.sentinels[0] is not sentinel:  # ask the one that answered first next time
                    self.sentinels.remove(sentinel)
                    self.sentinels.insert(0, sentinel)
                return str(state["ip"]), int(state["port"])
            failures.append("no usable master (down, or failing over)")
        raise MasterNotFoundError(f"no master found for {service_name!r}: {'; '.join(failures)}")


@dataclass(frozen=True, slots=True)
class _Target:
    """Where a ``redis+sentinel://`` or ``redis+cluster://`` URL points."""

    mode: Literal["sentinel", "cluster"]
    hosts: tuple[tuple[str, int], ...]
    service: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None


def _parse_hosts(netloc: str, default_port: int) -> tuple[tuple[str, int], ...]:
    hosts: list[tuple[str, int]] = []
    for item in netloc.split(","):
        if item.startswith("["):  # [IPv6]:port
            host, bracket, rest = item[1:].partition("]")
            if not bracket or (rest and not rest.startswith(":")):
                raise ValueError(f"bad host {item!r}")
            port_text = rest[1:]
        else:
            host, _, port_text = item.partition(":")
        if not host:
            raise ValueError(f"bad host {item!r}")
        if port_text and not (port_text.isascii() and port_text.isdigit() and 0 < int(port_text) < 65536):
            raise ValueError(f"bad port in {item!r}")
        hosts.append((host, int(port_text) if port_text else default_port))
    return tuple(hosts)


def _parse_ha_url(url: str) -> _Target | None:
    """The target of a Sentinel or Cluster URL; None for another scheme; ValueError for a malformed one."""
    scheme, _, rest = url.partition("://")
    if scheme.lower() not in (SENTINEL_SCHEME, CLUSTER_SCHEME) or not rest:
        return None
    parts = urlsplit(url)
    userinfo, at, netloc = parts.netloc.rpartition("@")
    username = password = None
    if at:
        name, colon, secret = userinfo.partition(":")
        username, password = (unquote(name) or None), (unquote(secret) if colon else None)
    options = dict(parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query)))
    path = [unquote(piece) for piece in parts.path.split("/")[1:]]
    if scheme.lower() == CLUSTER_SCHEME:
        if options:
            raise ValueError(f"{CLUSTER_SCHEME}:// takes no options, not {sorted(options)}")
        if path not in ([], [""], ["0"]):
            raise ValueError(f"{CLUSTER_SCHEME}://HOST:PORT[,HOST:PORT...][/]: a cluster has only database 0")
        return _Target("cluster", _parse_hosts(netloc, _REDIS_PORT), username=username, password=password)
    unknown = set(options) - _SENTINEL_OPTIONS
    if unknown:
        raise ValueError(f"unknown {SENTINEL_SCHEME}:// options {sorted(unknown)} (known: {sorted(_SENTINEL_OPTIONS)})")
    if path and path[-1] == "":
        path.pop()  # a trailing slash
    if len(path) not in (1, 2) or not path[0] or (len(path) == 2 and not (path[1].isascii() and path[1].isdigit())):
        raise ValueError(f"{SENTINEL_SCHEME}://HOST:PORT[,HOST:PORT...]/SERVICE_NAME[/DB], not {url!r}")
    return _Target(
        "sentinel", _parse_hosts(netloc, _SENTINEL_PORT), service=path[0], db=int(path[1]) if len(path) == 2 else 0,
        username=username, password=password, sentinel_username=options.get("sentinel_username") or None,
        sentinel_password=options.get("sentinel_password") or None,
    )  # fmt: skip


def _encode(row: StoredPolicy) -> str:
    return json.dumps({"v": FORMAT_VERSION, **dataclasses.asdict(row)}, separators=(",", ":"), allow_nan=False)


def _decode(raw: bytes | str) -> StoredPolicy | None:
    """A StoredPolicy from a value, or None when the value holds something else (foreign or corrupt data).

    The JSON shape and format version are checked here; the fields themselves by the shared
    :func:`~mtasts.stores.validate_row` rule (types, finite times in range, consistency).
    """
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, nested too deep
        return None
    if not isinstance(data, dict):
        return None
    version, domain = data.get("v"), data.get("domain")
    if type(version) is not int or version != FORMAT_VERSION or not isinstance(domain, str):
        return None
    try:
        return validate_row(StoredPolicy(domain, **{name: data.get(name) for name in _FIELDS}))
    except ValueError:
        return None


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _glob_escape(text: str) -> str:
    """``text`` as a literal in a Redis glob pattern."""
    return "".join("\\" + char if char in "\\*?[]" else char for char in text)


def _pool_full(error: RedisConnectionError) -> bool:
    return type(error).__name__ == "MaxConnectionsError" or str(error) in _POOL_FULL_MESSAGES


class RedisStore:
    """A :class:`~mtasts.stores.PolicyStore` in Redis, shared by every MTA that points at it.

    The client is created on first use from ``url`` — ``redis://``, ``rediss://``, ``unix://`` (redis-py's
    URLs), ``redis+sentinel://[USER:PASSWORD@]HOST[:PORT][,HOST[:PORT]...]/SERVICE_NAME[/DB]`` (sentinels,
    port 26379 by default; ``?sentinel_password=...&sentinel_username=...`` when the sentinels want their own)
    or ``redis+cluster://[USER:PASSWORD@]HOST[:PORT][,HOST[:PORT]...]`` (any masters of the cluster); a bad URL
    raises ValueError here — with ``socket_timeout`` on connects and commands. A ``client`` passed in is used
    as it is and stays the caller's: :meth:`aclose` does not close it (a ``RedisCluster`` means cluster mode).

    ``max_connections`` calls run at once at most (per server: a pool of that many connections); others queue
    for up to ``pool_timeout`` (default: ``socket_timeout``) and then raise :class:`PoolTimeoutError`.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        namespace: str = "mtasts",
        ttl_margin: float = 86400.0,
        clock: Callable[[], float] = time.time,
        client: redis.asyncio.Redis | RedisCluster | None = None,
        socket_timeout: float = 2.0,
        max_connections: int = 64,
        pool_timeout: float | None = None,
        fleet_single_flight: bool = True,
        fleet_lease_ttl: float = 3.0,
        fleet_max_wait: float = 30.0,
    ) -> None:
        if not namespace:
            raise ValueError("namespace must not be empty")
        if not ttl_margin >= 0.0:
            raise ValueError(f"ttl_margin must be >= 0, not {ttl_margin!r}")
        if not socket_timeout > 0.0:
            raise ValueError(f"socket_timeout must be > 0, not {socket_timeout!r}")
        if isinstance(max_connections, bool) or not isinstance(max_connections, int) or max_connections < 1:
            raise ValueError(f"max_connections must be an int >= 1, not {max_connections!r}")
        if pool_timeout is None:
            pool_timeout = socket_timeout
        if not pool_timeout > 0.0:
            raise ValueError(f"pool_timeout must be > 0, not {pool_timeout!r}")
        self._target: _Target | None = None
        if client is None:
            self._target = _parse_ha_url(url)
            if self._target is None:
                parse_url(url)  # fail at construction on a malformed URL, not at the first outage-handled call
        self.cluster = isinstance(client, RedisCluster) or (self._target is not None and self._target.mode == "cluster")
        if self.cluster and ("{" in namespace or "}" in namespace):
            raise ValueError("in cluster mode the namespace must not contain { or } (the domain is the hash tag)")
        self.namespace = namespace
        self._url = url
        self._prefix = f"{namespace}:policy:"
        self._ttl_margin = ttl_margin
        self._clock = clock
        self._socket_timeout = socket_timeout
        self.max_connections = max_connections
        self.pool_timeout = pool_timeout
        self._slots = asyncio.Semaphore(max_connections)
        self._redis: redis.asyncio.Redis | RedisCluster | None = client
        self._sentinel: _Sentinel | None = None
        self._owns_client = client is None
        self._closed = False
        self._skipped = 0
        self.pool_timeouts = 0  # calls that raised PoolTimeoutError
        #: One lookup per cold domain across the processes sharing this Redis (mtasts.stores.fleet), or None.
        #: Its commands queue for the same connection slots as the store's own (a busy fleet never starves reads).
        self.fleet: RedisFleet | None = (
            RedisFleet(
                self._client,
                namespace,
                ttl=fleet_lease_ttl,
                max_wait=fleet_max_wait,
                timeout=socket_timeout + pool_timeout,
                guard=self._call,
            )
            if fleet_single_flight
            else None
        )

    # -- the client -------------------------------------------------------------------------------------------

    def _client(self) -> redis.asyncio.Redis | RedisCluster:
        if self._closed:
            raise RuntimeError("RedisStore is closed")
        if self._redis is None:
            self._redis = self._connect()
        return self._redis

    def _connect(self) -> redis.asyncio.Redis | RedisCluster:
        timeouts: dict[str, Any] = {
            "socket_timeout": self._socket_timeout,
            "socket_connect_timeout": self._socket_timeout,
            "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        }
        target = self._target
        if target is None:
            pool = redis.asyncio.BlockingConnectionPool.from_url(
                self._url, max_connections=self.max_connections, timeout=self.pool_timeout, **timeouts
            )
            return redis.asyncio.Redis.from_pool(pool)
        auth: dict[str, Any] = {"username": target.username, "password": target.password}
        if target.mode == "cluster":
            nodes = [ClusterNode(host, port) for host, port in target.hosts]
            return RedisCluster(startup_nodes=nodes, max_connections=self.max_connections, **auth, **timeouts)
        # The sentinels are asked one after the other when a connection is made: a share of socket_timeout each,
        # so that one hung sentinel still leaves time to ask the next and to reach the master.
        share = self._socket_timeout / (len(target.hosts) + 1)
        sentinel_kwargs = {
            **timeouts, "socket_timeout": share, "socket_connect_timeout": share,
            "username": target.sentinel_username, "password": target.sentinel_password,
        }  # fmt: skip
        self._sentinel = _Sentinel(  # type: ignore[no-untyped-call]  # (redis-py leaves it unannotated)
            list(target.hosts), sentinel_kwargs=sentinel_kwargs, **timeouts
        )
        client: redis.asyncio.Redis = self._sentinel.master_for(
            target.service or "", db=target.db, max_connections=self.max_connections, **auth
        )
        return client

    @contextlib.asynccontextmanager
    async def _call(self, *, bounded: bool = True) -> AsyncIterator[None]:
        """One call: wait for one of the ``max_connections`` slots (``pool_timeout`` at most), then run it
        within ``socket_timeout`` (unless not ``bounded``: a write batch, bounded by its socket timeouts)."""
        slots = self._slots
        if slots.locked():
            try:
                async with asyncio.timeout(self.pool_timeout):
                    await slots.acquire()
            except TimeoutError:
                raise self._pool_timeout() from None
        else:
            await slots.acquire()
        try:
            if bounded:
                async with asyncio.timeout(self._socket_timeout):
                    yield
            else:
                yield
        except TimeoutError:  # (builtin: our deadline; redis-py's own raise redis.exceptions.TimeoutError)
            raise RedisTimeoutError(
                f"redis call took longer than socket_timeout ({self._socket_timeout:g} s)"
            ) from None
        except RedisConnectionError as error:
            if _pool_full(error):  # redis-py's pool, shared with other users of a client passed in
                raise self._pool_timeout() from error
            raise
        finally:
            slots.release()

    def _pool_timeout(self) -> PoolTimeoutError:
        self.pool_timeouts += 1
        return PoolTimeoutError(
            f"redis store: no free connection within {self.pool_timeout:g} s (max_connections={self.max_connections})"
        )

    # -- keys ---------------------------------------------------------------------------------------------------

    def _tag(self, domain: str) -> str:
        """The domain as it appears in keys: a hash tag in cluster mode, so one domain's keys share a slot."""
        return f"{{{domain}}}" if self.cluster else domain

    def _untag(self, text: str) -> str:
        if not self.cluster:
            return text
        if len(text) > 2 and text[0] == "{" and text[-1] == "}":
            return text[1:-1]
        raise ValueError(f"not a hash tag: {text!r}")

    def domain_key(self, kind: str, domain: str) -> str:
        """The key of ``domain`` for ``kind`` (``policy``, ``lease``, ...): ``{namespace}:{kind}:{domain}``, with
        the domain as hash tag (``{example.com}``) in cluster mode."""
        return f"{self.namespace}:{kind}:{self._tag(domain)}"

    def _key(self, domain: str) -> str:
        return self._prefix + self._tag(domain)

    def _checked(self, row: StoredPolicy | None) -> StoredPolicy | None:
        if row is None:
            self._skipped += 1
            if self._skipped == 1:
                log.warning("redis %s*: skipping values that cannot be read (foreign or corrupt data)", self._prefix)
        return row

    async def _key_batches(self, pattern: str) -> AsyncIterator[list[str]]:
        """The keys matching ``pattern``, batch by batch (on every master in cluster mode); may repeat a key."""
        client = self._client()
        if isinstance(client, RedisCluster):
            async with self._call():
                await client.initialize()
                nodes = client.get_primaries()
            for node in nodes:
                cursor = 0
                while True:
                    async with self._call():
                        cursors: Any
                        cursors, found = await client.scan(cursor, match=pattern, count=_SCAN_COUNT, target_nodes=node)
                    yield [_text(name) for name in found]
                    cursor = cursors.get(node.name, 0)  # (a cluster's SCAN answers {node name: cursor})
                    if cursor == 0:
                        break
            return
        cursor = 0
        while True:
            async with self._call():
                cursor, found = await client.scan(cursor, match=pattern, count=_SCAN_COUNT)
            yield [_text(name) for name in found]
            if cursor == 0:
                return

    # -- PolicyStore --------------------------------------------------------------------------------------------

    async def get(self, domain: str) -> StoredPolicy | None:
        client = self._client()
        try:
            async with self._call():
                raw = await client.get(self._key(domain))
        except ResponseError as error:
            if str(error).startswith("WRONGTYPE"):  # a hash, list... under our key
                return self._checked(None)
            raise
        if raw is None:
            return None
        row = _decode(raw)
        return self._checked(row if row is not None and row.domain == domain else None)

    async def write(self, puts: Sequence[StoredPolicy], deletes: Sequence[str]) -> None:
        if not puts and not deletes:
            return
        client = self._client()
        now = self._clock()
        async with self._call(bounded=False), client.pipeline(transaction=not self.cluster) as pipe:
            if deletes:
                if self.cluster:  # keys of several slots: one DEL each
                    for domain in deletes:
                        pipe.delete(self._key(domain))
                else:
                    pipe.delete(*(self._key(domain) for domain in deletes))
            for row in puts:
                ttl = row.keep_until - now + self._ttl_margin
                if ttl > 0.0:
                    pipe.set(self._key(row.domain), _encode(row), px=max(1, math.ceil(ttl * 1000.0)))
                else:
                    pipe.delete(self._key(row.domain))
            await pipe.execute()

    async def scan(self) -> AsyncIterator[StoredPolicy]:
        client = self._client()
        seen: set[str] = set()  # SCAN may return a key twice
        async for found in self._key_batches(_glob_escape(self._prefix) + "*"):
            keys = [name for name in found if name not in seen]
            seen.update(keys)
            if not keys:
                continue
            async with self._call():
                if isinstance(client, RedisCluster):
                    values = await client.mget_nonatomic(keys)
                else:
                    values = await client.mget(keys)
            missing = [key for key, value in zip(keys, values, strict=True) if value is None]
            foreign: set[str] = set()
            if missing:  # expired since SCAN (fine), or a key of another type (foreign)
                async with self._call(), client.pipeline(transaction=False) as pipe:
                    for key in missing:
                        pipe.type(key)
                    types = await pipe.execute()
                foreign = {key for key, kind in zip(missing, types, strict=True) if _text(kind) != "none"}
            for key, value in zip(keys, values, strict=True):
                if value is None:
                    if key in foreign:
                        self._checked(None)
                    continue
                row = _decode(value)
                row = self._checked(row if row is not None and key == self._key(row.domain) else None)
                if row is not None:
                    yield row

    # -- TLS-RPT (ReportStore): one hash of counters per (day, domain), HINCRBY for atomic increments ---------

    def _counts_key(self, day: int, domain: str) -> str:
        return f"{self.namespace}:tlsrpt:{day}:{self._tag(domain)}"

    def _state_key(self, day: int, domain: str) -> str:
        return f"{self.namespace}:tlsrpt-state:{day}:{self._tag(domain)}"

    async def add_session_counts(self, counts: Sequence[SessionCount]) -> None:
        if not counts:
            return
        client = self._client()
        async with self._call(bounded=False), client.pipeline(transaction=not self.cluster) as pipe:
            for day, domain, key, count in counts:
                pipe.hincrby(self._counts_key(day, domain), key, count)
                pipe.expire(self._counts_key(day, domain), _TLSRPT_TTL)  # reports are due within 2 days
            await pipe.execute()

    async def session_counts(self, day: int | None = None) -> list[SessionCount]:
        client = self._client()
        prefix = f"{self.namespace}:tlsrpt:"
        pattern = _glob_escape(prefix) + (f"{day}:*" if day is not None else "*")
        result: list[SessionCount] = []
        seen: set[str] = set()
        async for found in self._key_batches(pattern):
            for name in found:
                if name in seen:
                    continue
                seen.add(name)
                try:
                    day_text, tagged = name[len(prefix) :].split(":", 1)
                    domain = self._untag(tagged)
                    async with self._call():
                        fields = await client.hgetall(name)
                    result.extend((int(day_text), domain, _text(k), int(v)) for k, v in fields.items())
                except (ValueError, ResponseError):
                    self._checked(None)
        return result

    async def delete_session_counts(self, day: int, policy_domain: str) -> None:
        client = self._client()
        async with self._call():
            await client.delete(self._counts_key(day, policy_domain))

    async def get_report_state(self, day: int, policy_domain: str) -> str | None:
        client = self._client()
        async with self._call():
            raw = await client.get(self._state_key(day, policy_domain))
        return None if raw is None else _text(raw)

    async def put_report_state(self, day: int, policy_domain: str, state: str | None) -> None:
        client = self._client()
        async with self._call():
            if state is None:
                await client.delete(self._state_key(day, policy_domain))
            else:
                await client.set(self._state_key(day, policy_domain), state, ex=_TLSRPT_TTL)

    async def aclose(self) -> None:
        self._closed = True
        client, self._redis = self._redis, None
        sentinel, self._sentinel = self._sentinel, None
        closing: list[Any] = []
        if client is not None and self._owns_client:
            closing.append(client)
        if sentinel is not None:
            closing.extend(sentinel.sentinels)
        for each in closing:
            try:
                await each.aclose()
            except Exception as error:  # closing must not fail the caller's shutdown
                log.debug("redis store: error while closing a connection pool: %r", error)

    @property
    def skipped_rows(self) -> int:
        return self._skipped
