"""The redis-server helper lives in mtasts.testing.redis (the benchmarks use it too)."""

from __future__ import annotations

from mtasts.testing.redis import RedisServer, redis_server

__all__ = ["RedisServer", "redis_server"]
