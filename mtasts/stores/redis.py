"""RedisStore: one Redis shared by a fleet of sending MTAs (needs the ``redis`` extra: ``mtasts[redis]``).

Key layout: one string key per Policy Domain, ``{namespace}:policy:{domain}`` (``mtasts:policy:example.com``).
Its value is one JSON object holding every :class:`StoredPolicy` field plus ``"v"``, the format version
(:data:`FORMAT_VERSION`)::

    {"v": 1, "domain": "example.com", "policy_id": "20240101", "policy_text": "version: STSv1\\r\\n...",
     "fetched_at": 1800000000.0, "checked_at": ..., "expires_at": ..., "failed_id": null, "failure": null,
     "failure_detail": null, "retry_after": null}

TTL rule: each key lives as long as its row matters — ``keep_until - clock()`` (the policy's expiry or the end
of the back-off, whichever is later) plus ``ttl_margin`` — so domains nobody mails any more age out of Redis by
themselves. A row already past that is deleted instead of written. Value and TTL are set together
(``SET key value PX ms``).

Atomicity: a :meth:`RedisStore.write` batch (its deletes first, then its puts) runs as one ``MULTI``/``EXEC``
transaction: other clients see all of it or none of it. :meth:`RedisStore.scan` walks the namespace with
``SCAN`` and reads values in batches with ``MGET`` (not a snapshot: rows written meanwhile may or may not show).

Failures: values that cannot be read (not JSON, the wrong shape, another format version, fields failing
:func:`~mtasts.stores.validate_row`, a domain that does not match the key, a key of another Redis type) are
skipped — ``get`` returns None — with one WARNING per store. Redis errors
(:class:`redis.exceptions.ConnectionError`, :class:`redis.exceptions.TimeoutError`, other
:class:`redis.exceptions.RedisError`) propagate unchanged; the resolver logs them and serves from memory. Socket
timeouts bound every call, a broken pooled connection is retried once at once (so a restarted server is picked
up by the next call) and a dead server fails fast; a write that timed out may or may not have been applied
(all of it or none). :meth:`RedisStore.aclose` never raises; using the store after it raises RuntimeError.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence

try:
    import redis.asyncio
    from redis.asyncio.connection import parse_url
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import ResponseError
except ImportError as error:  # pragma: no cover - depends on the installed extras
    raise ImportError("RedisStore needs redis-py: pip install 'mtasts[redis]'") from error

from ._base import _TEXT_FIELDS, _TIME_FIELDS, SessionCount, StoredPolicy, validate_row

__all__ = ["FORMAT_VERSION", "RedisStore"]

log = logging.getLogger("mtasts.stores")

#: The ``"v"`` field of every value this version writes; values with another version are skipped.
FORMAT_VERSION = 1
_FIELDS = _TEXT_FIELDS + _TIME_FIELDS  # every StoredPolicy field but the domain
_SCAN_COUNT = 1000
_TLSRPT_TTL = 8 * 86400  # TLS-RPT counters and report states: a report is due within a day or two


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


class RedisStore:
    """A :class:`~mtasts.stores.PolicyStore` in Redis, shared by every MTA that points at it.

    The client is created on first use from ``url`` (``redis://``, ``rediss://`` or ``unix://``; a bad URL
    raises ValueError here) with ``socket_timeout`` on connects and commands. A ``client`` passed in is used
    as it is and stays the caller's: :meth:`aclose` does not close it.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        namespace: str = "mtasts",
        ttl_margin: float = 86400.0,
        clock: Callable[[], float] = time.time,
        client: redis.asyncio.Redis | None = None,
        socket_timeout: float = 2.0,
    ) -> None:
        if not namespace:
            raise ValueError("namespace must not be empty")
        if not ttl_margin >= 0.0:
            raise ValueError(f"ttl_margin must be >= 0, not {ttl_margin!r}")
        if not socket_timeout > 0.0:
            raise ValueError(f"socket_timeout must be > 0, not {socket_timeout!r}")
        if client is None:
            parse_url(url)  # fail at construction on a malformed URL, not at the first outage-handled call
        self.namespace = namespace
        self._url = url
        self._prefix = f"{namespace}:policy:"
        self._ttl_margin = ttl_margin
        self._clock = clock
        self._socket_timeout = socket_timeout
        self._redis = client
        self._owns_client = client is None
        self._closed = False
        self._skipped = 0

    def _client(self) -> redis.asyncio.Redis:
        if self._closed:
            raise RuntimeError("RedisStore is closed")
        if self._redis is None:
            self._redis = redis.asyncio.Redis.from_url(
                self._url,
                socket_timeout=self._socket_timeout,
                socket_connect_timeout=self._socket_timeout,
                retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            )
        return self._redis

    def _key(self, domain: str) -> str:
        return self._prefix + domain

    def _checked(self, row: StoredPolicy | None) -> StoredPolicy | None:
        if row is None:
            self._skipped += 1
            if self._skipped == 1:
                log.warning("redis %s*: skipping values that cannot be read (foreign or corrupt data)", self._prefix)
        return row

    async def get(self, domain: str) -> StoredPolicy | None:
        try:
            raw = await self._client().get(self._key(domain))
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
        now = self._clock()
        async with self._client().pipeline(transaction=True) as pipe:
            if deletes:
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
        pattern = _glob_escape(self._prefix) + "*"
        seen: set[str] = set()  # SCAN may return a key twice
        cursor = 0
        while True:
            cursor, found = await client.scan(cursor, match=pattern, count=_SCAN_COUNT)
            keys = [name for name in map(_text, found) if name not in seen]
            seen.update(keys)
            if keys:
                values = await client.mget(keys)
                missing = [key for key, value in zip(keys, values, strict=True) if value is None]
                foreign: set[str] = set()
                if missing:  # expired since SCAN (fine), or a key of another type (foreign)
                    async with client.pipeline(transaction=False) as pipe:
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
            if cursor == 0:
                return

    # -- TLS-RPT (ReportStore): one hash of counters per (day, domain), HINCRBY for atomic increments ---------

    def _counts_key(self, day: int, domain: str) -> str:
        return f"{self.namespace}:tlsrpt:{day}:{domain}"

    def _state_key(self, day: int, domain: str) -> str:
        return f"{self.namespace}:tlsrpt-state:{day}:{domain}"

    async def add_session_counts(self, counts: Sequence[SessionCount]) -> None:
        if not counts:
            return
        async with self._client().pipeline(transaction=True) as pipe:
            for day, domain, key, count in counts:
                pipe.hincrby(self._counts_key(day, domain), key, count)
                pipe.expire(self._counts_key(day, domain), _TLSRPT_TTL)  # reports are due within 2 days
            await pipe.execute()

    async def session_counts(self, day: int | None = None) -> list[SessionCount]:
        client = self._client()
        pattern = _glob_escape(f"{self.namespace}:tlsrpt:") + (f"{day}:*" if day is not None else "*")
        result: list[SessionCount] = []
        async for raw_key in client.scan_iter(match=pattern, count=_SCAN_COUNT):
            name = _text(raw_key)
            try:
                day_text, domain = name[len(self.namespace) + len(":tlsrpt:") :].split(":", 1)
                fields = await client.hgetall(name)
                result.extend((int(day_text), domain, _text(k), int(v)) for k, v in fields.items())
            except (ValueError, ResponseError):
                self._checked(None)
        return result

    async def delete_session_counts(self, day: int, policy_domain: str) -> None:
        await self._client().delete(self._counts_key(day, policy_domain))

    async def get_report_state(self, day: int, policy_domain: str) -> str | None:
        raw = await self._client().get(self._state_key(day, policy_domain))
        return None if raw is None else _text(raw)

    async def put_report_state(self, day: int, policy_domain: str, state: str | None) -> None:
        if state is None:
            await self._client().delete(self._state_key(day, policy_domain))
        else:
            await self._client().set(self._state_key(day, policy_domain), state, ex=_TLSRPT_TTL)

    async def aclose(self) -> None:
        self._closed = True
        client, self._redis = self._redis, None
        if client is not None and self._owns_client:
            try:
                await client.aclose()
            except Exception as error:  # closing must not fail the caller's shutdown
                log.debug("redis store: error while closing the connection pool: %r", error)

    @property
    def skipped_rows(self) -> int:
        return self._skipped
