"""Shared test configuration: hypothesis profiles (bounded, no deadlines on slow CI machines)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from mtasts import PolicyResolver
from mtasts.stores import MemoryStore
from mtasts.testing import World

from ._smtp import MailWorld, mail_world

settings.register_profile("default", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=20_000, deadline=None, suppress_health_check=list(HealthCheck))
settings.load_profile(os.environ.get("MTASTS_HYPOTHESIS_PROFILE", "default"))


class FakeClock:
    """An injected clock: tests advance time by hand, never by sleeping.

    Calling it reads the wall clock; :meth:`monotonic` is its monotonic companion (``PolicyResolver(clock=clock,
    monotonic=clock.monotonic)``). :meth:`advance` is time passing (both move); :meth:`step` is the wall clock
    being set (an NTP step, ``date -s``): only the wall clock moves.
    """

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start
        self.elapsed = 0.0

    def __call__(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.elapsed

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.elapsed += max(seconds, 0.0)

    def step(self, seconds: float) -> None:
        self.now += seconds


if os.environ.get("MTASTS_TEST_LOOP", "asyncio") == "uvloop":
    # Every async test on uvloop (docs/testing.md); without the variable, pytest-asyncio's own loop. (The hook
    # may not return "no opinion", so it exists only when asked for.)

    def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Callable[[], Any]]:
        import uvloop

        return {"uvloop": uvloop.new_event_loop}


def world_flags(world: World) -> list[str]:
    """The command line's world options (``--nameserver``, ``--cafile``, ``--policy-port``) for ``world``."""
    return [
        "--nameserver",
        f"{world.dns_host}:{world.dns_port}",
        "--cafile",
        world.ca_pem_path,
        "--policy-port",
        str(world.https_port),
    ]


# -- shared fixtures: the loopback world (DNS + HTTPS), its MX servers, an injected clock --------------------------


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with World() as w:
        yield w


@pytest.fixture
async def mail(world: World) -> AsyncIterator[MailWorld]:
    async with mail_world(world) as m:
        yield m


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def resolver(world: World, clock: FakeClock) -> AsyncIterator[PolicyResolver]:
    """A resolver on the world with a memory store and the test's ``clock`` (advance it to age the cache);
    modules needing other settings define their own."""
    async with world.policy_resolver(clock=clock, store=MemoryStore(), fetch_timeout=5.0) as r:
        yield r
