"""Local faults never weaken a policy (issue 12): trouble on this side ends in "try again later" or the cached
policy, never in "no policy".

Each test injects a real fault: a lowered ``RLIMIT_NOFILE`` in a child process whose descriptor table is then
filled (EMFILE on the DNS or HTTPS socket), queues held full by a silent policy host, a store that cannot be
reached, a wall clock stepped back (the injected clock), damaged store rows in a real SQLite file.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from mtasts import NOT_CACHED, LookupDeferredError, LookupStatus, MTASTSError, PolicyResolver
from mtasts.socketmap import SocketmapServer
from mtasts.stores import RedisStore
from mtasts.testing import World

from .conftest import FakeClock

ROOT = Path(__file__).resolve().parent.parent
ENFORCE = "version: STSv1\nmode: enforce\nmx: mx.example.net\nmax_age: 86400\n"
TEMP_LOCAL = "TEMP MTA-STS lookup failed on this host (local error)"
OK_ENFORCE = "OK secure match=mx.example.net servername=hostname"


# -- 1. descriptor exhaustion ----------------------------------------------------------------------------------


async def test_descriptor_exhaustion_is_a_local_error_never_no_policy(world: World) -> None:
    """EMFILE on the TXT query's socket or on the policy host's connection: TEMP, no back-off, no report."""
    for name in ("cached.example", "cold.example", "fetch.example"):
        world.publish(name, ENFORCE)
        world.server_ssl_context(f"mta-sts.{name}")  # certificates issued now, not while the child is starved
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests._fd_child", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    arguments = {"dns_port": world.dns_port, "https_port": world.https_port, "cafile": world.ca_pem_path}
    out, err = await asyncio.wait_for(process.communicate(json.dumps(arguments).encode()), 60)
    assert process.returncode == 0, err.decode()[-3000:]
    report = json.loads(out)
    assert report["warm"]["status"] == "fetched"
    assert report["filled"] > 0
    # no descriptor for the TXT query: "try again later", not NOTFOUND
    assert report["cold"] == {"status": "local-error", "defer": True, "policy": False,
                              "error": report["cold"]["error"]}  # fmt: skip
    assert "local resource" in report["cold"]["error"]
    assert report["socketmap_cold"] == TEMP_LOCAL
    assert report["get_policy"] == "local-error"
    # a cached policy still applies when its re-check cannot be made
    assert (report["cached"]["status"], report["cached"]["policy"]) == ("cached", True)
    # the address query worked, the HTTPS connection got EMFILE: local too, and not reported to the domain
    assert (report["fetch_emfile"]["status"], report["fetch_emfile"]["defer"]) == ("local-error", True)
    assert report["failures_reported"] == 0
    # nothing was remembered or backed off: the next lookups fetch at once
    assert report["cold_after"]["status"] == "fetched"
    assert report["fetch_after"]["status"] == "fetched"
    assert report["socketmap_after"] == OK_ENFORCE


# -- full queues -------------------------------------------------------------------------------------------------


async def test_a_full_fetch_queue_past_its_wait_is_a_local_error(world: World, clock: FakeClock) -> None:
    world.publish("slow.example", ENFORCE, delay=5)
    world.publish("waiting.example", ENFORCE)
    async with world.policy_resolver(clock=clock, max_concurrent_fetches=1, queue_timeout=0.2) as resolver:
        slow = asyncio.create_task(resolver.lookup("slow.example"))
        await asyncio.sleep(0.1)  # the slow fetch holds the only slot
        waiting = await resolver.lookup("waiting.example")
        assert (waiting.status, waiting.defer, waiting.policy) == (LookupStatus.LOCAL_ERROR, True, None)
        assert "no free policy fetch slot within 0.2 s" in (waiting.error or "")
        assert resolver.cached_policy("waiting.example") is NOT_CACHED  # not remembered as "no policy"
        slow.cancel()


async def test_a_full_dns_queue_past_its_wait_is_a_local_error(world: World, clock: FakeClock) -> None:
    world.publish("hung.example", ENFORCE, txt_failure="timeout")
    world.publish("next.example", ENFORCE)
    async with world.policy_resolver(clock=clock, max_concurrent_dns=1, queue_timeout=0.2) as resolver:
        hung = asyncio.create_task(resolver.lookup("hung.example"))
        await asyncio.sleep(0.1)  # the unanswered TXT query holds the only DNS slot
        waiting = await resolver.lookup("next.example")
        assert (waiting.status, waiting.defer) == (LookupStatus.LOCAL_ERROR, True)
        assert "DNS query slot" in (waiting.error or "")
        hung.cancel()


# -- a store that cannot be read on a miss --------------------------------------------------------------------


async def test_an_unreachable_store_on_a_miss_never_means_no_policy(world: World, clock: FakeClock) -> None:
    """The store may hold an enforce policy memory does not: with the store down, "no policy" is unknowable."""
    world.publish("enforce.example", ENFORCE)
    store = RedisStore("redis://127.0.0.1:1/0", socket_timeout=0.5)  # nothing listens on port 1: refused
    async with world.policy_resolver(clock=clock, store=store) as resolver:
        absent = await resolver.lookup("absent.example")  # NXDOMAIN, but the store might hold a policy
        assert (absent.status, absent.defer) == (LookupStatus.LOCAL_ERROR, True)
        assert "store" in (absent.error or "")
        with pytest.raises(LookupDeferredError):
            await resolver.get_policy("absent.example")
        # a fetched policy is authoritative whatever the store holds: served
        fetched = await resolver.lookup("enforce.example")
        assert fetched.status is LookupStatus.FETCHED
        async with SocketmapServer(resolver) as server:
            assert await server.answer(b"postfix absent.example") == TEMP_LOCAL.encode()
            assert (await server.answer(b"postfix enforce.example")).decode() == OK_ENFORCE


# -- dns_error = "defer" ------------------------------------------------------------------------------------------


async def test_dns_error_policy_no_policy_by_default_defer_on_request(world: World, clock: FakeClock) -> None:
    world.publish("broken.example", ENFORCE, txt_failure="servfail")
    async with world.policy_resolver(clock=clock) as resolver:
        lookup = await resolver.lookup("broken.example")
        assert (lookup.status, lookup.defer) == (LookupStatus.DNS_ERROR, False)  # RFC 8461 §3.3/§5
        assert await resolver.get_policy("broken.example") is None
        assert resolver.cached_policy("broken.example") is None
    async with world.policy_resolver(clock=clock, dns_error="defer") as resolver:
        lookup = await resolver.lookup("broken.example")
        assert (lookup.status, lookup.defer) == (LookupStatus.DNS_ERROR, True)
        queries = world.queries("_mta-sts.broken.example", "TXT")
        with pytest.raises(LookupDeferredError) as raised:
            await resolver.get_policy("broken.example")
        assert raised.value.status == LookupStatus.DNS_ERROR
        assert resolver.cached_policy("broken.example") is NOT_CACHED  # remembered, but never as "no policy"
        assert world.queries("_mta-sts.broken.example", "TXT") == queries  # the memo still spares DNS
        async with SocketmapServer(resolver) as server:
            assert (await server.answer(b"postfix broken.example")).startswith(b"TEMP ")
        clock.advance(31)  # dns_error_ttl: asked again
        world.domain("broken.example").txt_failure = None
        assert (await resolver.lookup("broken.example")).status is LookupStatus.FETCHED
    with pytest.raises(MTASTSError, match="dns_error"):
        PolicyResolver(dns_error="sometimes")


# -- 2-3. the wall clock steps back ---------------------------------------------------------------------------


async def test_a_policy_never_outlives_max_age_across_a_backward_clock_step(world: World, clock: FakeClock) -> None:
    world.publish("enforce.example", ENFORCE)
    async with world.policy_resolver(clock=clock, monotonic=clock.monotonic) as resolver:
        assert (await resolver.lookup("enforce.example")).status is LookupStatus.FETCHED
        clock.advance(86_000)  # 400 s of max_age left
        assert (await resolver.lookup("enforce.example")).status is LookupStatus.CACHED
        world.unpublish("enforce.example")  # DNS and the policy host gone
        clock.step(-86_400)  # the wall clock steps back a day
        assert resolver.cached_policy("enforce.example") is not NOT_CACHED  # still live: 400 s in real time
        assert (await resolver.lookup("enforce.example")).policy is not None
        clock.advance(401)  # max_age has run out in real elapsed time
        late = await resolver.lookup("enforce.example")
        assert (late.status, late.policy) == (LookupStatus.NO_POLICY, None)
        assert resolver.cached_policy("enforce.example") is None


async def test_negative_answers_never_outlive_their_ttl_across_a_backward_clock_step(
    world: World, clock: FakeClock
) -> None:
    world.publish("enforce.example", ENFORCE, txt_failure="servfail")
    async with world.policy_resolver(clock=clock, monotonic=clock.monotonic) as resolver:
        assert (await resolver.lookup("enforce.example")).status is LookupStatus.DNS_ERROR  # kept 30 s
        clock.step(-86_400)
        world.domain("enforce.example").txt_failure = None  # DNS works again
        clock.advance(31)
        assert resolver.cached_policy("enforce.example") is NOT_CACHED  # 31 s in real time: forgotten
        assert (await resolver.lookup("enforce.example")).status is LookupStatus.FETCHED


async def test_a_fetch_back_off_never_outlives_its_time_across_a_backward_clock_step(
    world: World, clock: FakeClock
) -> None:
    world.publish("enforce.example", None)  # HTTP 404: the fetch fails, backed off for 300 s
    async with world.policy_resolver(clock=clock, monotonic=clock.monotonic) as resolver:
        assert (await resolver.lookup("enforce.example")).status is LookupStatus.FETCH_ERROR
        world.publish("enforce.example", ENFORCE)
        clock.step(-86_400)
        clock.advance(301)
        assert (await resolver.lookup("enforce.example")).status is LookupStatus.FETCHED
        assert world.requests("mta-sts.enforce.example") == 2


async def test_forward_jumps_still_expire_entries(world: World, clock: FakeClock) -> None:
    world.publish("enforce.example", ENFORCE)
    async with world.policy_resolver(clock=clock, monotonic=clock.monotonic) as resolver:
        await resolver.lookup("enforce.example")
        world.unpublish("enforce.example")
        clock.advance(86_401)
        assert (await resolver.lookup("enforce.example")).policy is None


async def test_times_shown_after_a_step_are_wall_clock_times(world: World, clock: FakeClock) -> None:
    world.publish("enforce.example", ENFORCE)
    async with world.policy_resolver(clock=clock, monotonic=clock.monotonic) as resolver:
        fetched = await resolver.lookup("enforce.example")
        assert fetched.fetched_at == clock.now
        clock.step(-1000)
        cached = await resolver.lookup("enforce.example")  # fetched no real time ago: "now" on the stepped clock
        assert cached.fetched_at is not None and abs(cached.fetched_at - clock.now) < 1.5
        entry = resolver.cache_entry("enforce.example")
        assert entry is not None and abs(entry.expires_at - (clock.now + 86_400)) < 1.5
