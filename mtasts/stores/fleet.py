"""One lookup per domain across a fleet of processes sharing a Redis store: short leases in Redis.

Single-flight inside one process is the resolver's (``PolicyResolver._single_flight``); across processes a cold
domain met by K MTAs at the same moment would cost K TXT queries and K fetches. With a :class:`RedisFleet`:

1. the first process takes the domain's lease — ``SET <ns>:lease:{domain} <token> NX PX <ttl>``, atomic — and
   keeps it alive (``PEXPIRE`` every ``ttl / 3`` while it works, compare-and-set on the token);
2. the others wait, bounded, polling the lease and the shared outcome every ``poll`` seconds;
3. the holder shares what it found before it lets the lease go: a policy or a fetch failure's back-off as the
   domain's store row (written through at once), a "no policy" or DNS-error answer as a short-lived negative
   key ``<ns>:negative:{domain}`` with its own TTL;
4. a waiter that sees the outcome adopts it without its own DNS query or fetch; one that sees the lease vanish
   without an outcome (the holder died: SIGKILL, a lost connection — the lease expires within ``ttl``) or that
   waited ``max_wait`` looks the domain up itself.

Redis trouble never blocks a lookup beyond ``timeout`` per command: any failure of the fleet protocol raises
:class:`FleetUnavailable`, and the resolver then looks up alone, as without a fleet. Keys carry the domain as
a Redis Cluster hash tag (``{domain}``), so a domain's lease and negative answer live on one slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["FleetUnavailable", "Lease", "RedisFleet", "SharedNegative"]

# Compare-and-delete / compare-and-extend on the lease token (a lease is only ever touched by its holder).
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"
_EXTEND = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
)


class FleetUnavailable(Exception):
    """The fleet protocol could not be followed (Redis down, slow, refusing): look up alone."""


@dataclass(frozen=True, slots=True)
class Lease:
    """A lease held on one domain (``token`` identifies the holder)."""

    domain: str
    token: str


@dataclass(frozen=True, slots=True)
class SharedNegative:
    """A negative answer another process found: its lookup status (``no-policy``, ``dns-error``,
    ``fetch-error``), why, its RFC 8460 result type, whether it defers, and for how many more seconds it holds."""

    status: str
    error: str | None
    ttl: float
    result_type: str | None = None
    defer: bool = False


class RedisFleet:
    """The lease protocol over a redis-py asyncio client (``client()`` returns it, created lazily).

    ``ttl``: a lease lives this long without a renewal (so a dead holder is noticed this fast); ``poll``: how
    often a waiter looks; ``max_wait``: the longest a waiter waits for a live holder before looking up alone;
    ``timeout``: the bound on each Redis command of the protocol; ``guard()``: an async context entered around
    each command (the store's connection queue).
    """

    def __init__(
        self,
        client: Callable[[], Any],
        namespace: str = "mtasts",
        *,
        ttl: float = 3.0,
        poll: float = 0.05,
        max_wait: float = 30.0,
        timeout: float = 2.0,
        guard: Callable[[], contextlib.AbstractAsyncContextManager[None]] | None = None,
    ) -> None:
        for name, value in (("ttl", ttl), ("poll", poll), ("max_wait", max_wait), ("timeout", timeout)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, not {value!r}")
        self._client = client
        self._guard = guard or contextlib.nullcontext
        self._namespace = namespace
        self.ttl, self.poll, self.max_wait, self.timeout = ttl, poll, max_wait, timeout

    def _lease_key(self, domain: str) -> str:
        return f"{self._namespace}:lease:{{{domain}}}"  # the domain as hash tag: one Redis Cluster slot

    def _negative_key(self, domain: str) -> str:
        return f"{self._namespace}:negative:{{{domain}}}"

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """One Redis command, bounded by :attr:`timeout`; every failure becomes :class:`FleetUnavailable`."""
        try:
            async with asyncio.timeout(self.timeout), self._guard():
                return await getattr(self._client(), method)(*args, **kwargs)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # redis-py's errors, OSError, timeouts, a closed store: all "not now"
            raise FleetUnavailable(f"{type(exc).__name__}: {exc}") from None

    async def acquire(self, domain: str) -> Lease | None:
        """The domain's lease, or None when another process holds it."""
        token = secrets.token_hex(8)
        taken = await self._call("set", self._lease_key(domain), token, nx=True, px=int(self.ttl * 1000))
        return Lease(domain, token) if taken else None

    async def extend(self, lease: Lease) -> bool:
        """Keep ``lease`` alive for another :attr:`ttl`; False if it was lost (expired and taken by another)."""
        result = await self._call("eval", _EXTEND, 1, self._lease_key(lease.domain), lease.token, int(self.ttl * 1000))
        return bool(result)

    async def release(self, lease: Lease) -> None:
        """Let ``lease`` go (only if still ours)."""
        await self._call("eval", _RELEASE, 1, self._lease_key(lease.domain), lease.token)

    async def held(self, domain: str) -> bool:
        """Whether some process holds the domain's lease now."""
        return bool(await self._call("exists", self._lease_key(domain)))

    async def put_negative(self, negative: SharedNegative, domain: str) -> None:
        """Share a negative answer for ``negative.ttl`` seconds."""
        if negative.ttl <= 0:
            return
        ttl = negative.ttl
        value = json.dumps(
            {"status": negative.status, "error": negative.error, "result_type": negative.result_type,
             "defer": negative.defer}
        )  # fmt: skip
        await self._call("set", self._negative_key(domain), value, px=max(1, int(ttl * 1000)))

    async def negative(self, domain: str) -> SharedNegative | None:
        """The negative answer another process shared, if it still holds."""
        key = self._negative_key(domain)
        raw, remaining = await self._call_pipeline(key)
        if raw is None or not isinstance(remaining, int) or remaining <= 0:
            return None
        try:
            data = json.loads(raw)
            status, error, result_type, defer = data["status"], data["error"], data["result_type"], data["defer"]
        except (ValueError, TypeError, KeyError):
            return None  # foreign or damaged: as if nothing was shared
        texts_ok = all(v is None or isinstance(v, str) for v in (error, result_type))
        if not isinstance(status, str) or not texts_ok or not isinstance(defer, bool):
            return None
        return SharedNegative(status, error, remaining / 1000, result_type, defer)

    async def _call_pipeline(self, key: str) -> tuple[Any, Any]:
        try:
            async with (
                asyncio.timeout(self.timeout),
                self._guard(),
                self._client().pipeline(transaction=False) as pipe,
            ):
                pipe.get(key)
                pipe.pttl(key)
                raw, remaining = await pipe.execute()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise FleetUnavailable(f"{type(exc).__name__}: {exc}") from None
        return raw, remaining

    async def keep_alive(self, lease: Lease) -> None:
        """Renew ``lease`` every ``ttl / 3`` until cancelled (run as a task beside the holder's lookup)."""
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                if not await self.extend(lease):
                    return
            except FleetUnavailable:
                return  # the waiters will time the lease out and look up themselves
