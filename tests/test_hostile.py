"""Hostile policy hosts, hostile DNS and downgrade attempts (RFC 8461 §10): each ends in its documented failure
(result types: docs/decisions.md) within the configured limits and bounded memory, and a cached policy keeps
applying (§3.3 MUST, §10.2).

Every policy-host case runs twice at once: ``warm.example`` has an enforce policy cached under id 1 and switches
to id 2 served by the hostile host (→ ``cached``, the old policy, the result type, the cache still at id 1);
``cold.example`` has nothing cached (→ ``fetch-error`` with the same result type).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import gzip
import os
import ssl
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import dns.message
import pytest

from mtasts import DomainError, LookupStatus, PolicyResolver, parse_policy
from mtasts.resolver import PolicyLookup
from mtasts.socketmap import SocketmapServer, parse_key
from mtasts.stores import MemoryStore, SQLiteStore, StoredPolicy
from mtasts.testing import FAILURE_KINDS, HOSTILE_KINDS, DomainConfig, RawServer, ResponseRecord, World

from .conftest import FakeClock

ENFORCE = "version: STSv1\nmode: enforce\nmx: mx.example.com\nmx: *.example.net\nmax_age: 86400\n"
ENFORCE2 = "version: STSv1\nmode: enforce\nmx: mx2.example.com\nmax_age: 86400\n"
NONE = "version: STSv1\nmode: none\nmax_age: 86400\n"
FETCH_ERROR, INVALID, WEBPKI = "sts-policy-fetch-error", "sts-policy-invalid", "sts-webpki-invalid"

TIMEOUT = 2.0  # fetch_timeout: the total deadline of one fetch
IDLE = 0.5  # fetch_idle_timeout
SLACK = 1.0  # scheduling slack on a busy 2-core machine
QUICK = IDLE + SLACK  # a failure that needs no timer at all must come well within this
MB = 1_000_000
RAW_HOST = "127.0.0.7"  # another loopback address, for servers that misbehave below HTTP

T = TypeVar("T")


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with World() as w:
        yield w


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make(world: World, clock: FakeClock, **kwargs: Any) -> PolicyResolver:
    kwargs.setdefault("fetch_timeout", TIMEOUT)
    kwargs.setdefault("fetch_idle_timeout", IDLE)
    return world.policy_resolver(clock=clock, **kwargs)


def rss() -> int:
    """Resident set size of this process (client and world share it); 0 where there is no /proc."""
    gc.collect()
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def url(world: World, domain: str) -> str:
    return f"https://mta-sts.{domain}:{world.https_port}/.well-known/mta-sts.txt"


async def timed(work: Awaitable[T]) -> tuple[T, float]:
    """The result of ``work`` and the seconds it took."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    result = await work
    return result, loop.time() - start


@dataclass
class Run:
    warm: PolicyLookup
    cold: PolicyLookup
    warm_seconds: float
    cold_seconds: float
    rss_growth: int


async def run_hostile(
    world: World,
    clock: FakeClock,
    misbehaviour: Mapping[str, Any],
    *,
    result_type: str,
    bound: float,
    **kwargs: Any,
) -> Run:
    """Warm (enforce cached under id 1, then id 2 served with ``misbehaviour``) and cold (nothing cached, id 2
    served so), looked up concurrently: both end in ``result_type`` within ``bound`` seconds, warm keeps id 1."""
    warm = world.publish("warm.example", ENFORCE, id="1")
    cold = world.publish("cold.example", ENFORCE, id="2")
    misbehave(cold, "cold.example", misbehaviour)
    async with make(world, clock, **kwargs) as resolver:
        assert (await resolver.lookup("warm.example")).status is LookupStatus.FETCHED
        warm.id = "2"
        misbehave(warm, "warm.example", misbehaviour)
        clock.advance(301)  # the TXT id is due for a check
        before = rss()
        (w, w_seconds), (c, c_seconds) = await asyncio.gather(
            timed(resolver.lookup("warm.example")), timed(resolver.lookup("cold.example"))
        )
        growth = rss() - before
        entry = resolver.cache_entry("warm.example")
        assert entry is not None and entry.policy_id == "1"  # the new id is not stored (C7)
        assert resolver.cache_entry("cold.example") is None
    assert (w.status, w.result_type, w.policy, w.policy_id) == (
        LookupStatus.CACHED,
        result_type,
        parse_policy(ENFORCE),
        "1",
    ), w.error
    assert (c.status, c.result_type, c.policy) == (LookupStatus.FETCH_ERROR, result_type, None), c.error
    assert w_seconds < bound and c_seconds < bound, (w_seconds, c_seconds, bound)
    assert not world.errors
    return Run(w, c, w_seconds, c_seconds, growth)


def misbehave(config: DomainConfig, domain: str, misbehaviour: Mapping[str, Any]) -> None:
    """Set each field; a callable value is called with the domain name (a URL naming the domain itself)."""
    for name, value in misbehaviour.items():
        setattr(config, name, value(domain) if callable(value) else value)


async def hostile_response(world: World, domain: str) -> ResponseRecord:
    """How the hostile response for ``domain`` (warm's second, cold's first) ended, seen from the server.

    The server learns that the client went away a moment after the client returns: wait for the record.
    """
    count = 2 if domain == "warm.example" else 1
    for _ in range(200):
        records = [r for r in world.response_log if r.host == f"mta-sts.{domain}"]
        if len(records) >= count:
            return records[count - 1]
        await asyncio.sleep(0.01)
    raise AssertionError(f"no response record for {domain}")


# -- redirects (§3.3 "MUST NOT follow redirects") ---------------------------------------------------------------


@pytest.mark.parametrize("target", ["good content", "itself", "a loop A->B->A"])
@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirects_are_never_followed(world: World, clock: FakeClock, status: int, target: str) -> None:
    world.publish("good.example", ENFORCE2)
    for domain in ("warm.example", "cold.example"):  # B of each loop: redirects back to A
        world.publish(f"b-{domain}", ENFORCE2, status=status, redirect_to=url(world, domain))
    location = {
        "good content": lambda domain: url(world, "good.example"),
        "itself": lambda domain: url(world, domain),
        "a loop A->B->A": lambda domain: url(world, f"b-{domain}"),
    }[target]
    run = await run_hostile(
        world, clock, {"redirect_to": location, "status": status}, result_type=FETCH_ERROR, bound=QUICK
    )
    assert f"HTTP {status}" in (run.cold.error or "") and "not followed" in (run.cold.error or "")
    for host in ("good.example", "b-warm.example", "b-cold.example"):
        assert world.requests(f"mta-sts.{host}") == 0  # a redirect target is never requested
    assert world.requests("mta-sts.warm.example") == 2  # the first fetch, then the redirect: once each
    assert world.requests("mta-sts.cold.example") == 1


# -- bodies: size, content codings, pace (§3.3: 64 KiB, a total deadline) ------------------------------------


async def test_a_10_mb_body_is_cut_at_the_cap(world: World, clock: FakeClock) -> None:
    body = b"x" * (10 * MB)
    run = await run_hostile(world, clock, {"body": body}, result_type=INVALID, bound=QUICK)
    assert "larger than 65536 bytes" in (run.cold.error or "")
    for domain in ("warm.example", "cold.example"):
        record = await hostile_response(world, domain)
        assert (record.size, record.complete) == (10 * MB, False)  # the client closed long before the end
        assert record.sent < 10 * MB
    assert run.rss_growth < 5 * MB, run.rss_growth  # 20 MB served: the reads stopped at 64 KiB + 1 each


def bomb(coding: str, size: int) -> bytes:
    """``size`` zero bytes compressed as ``gzip`` or ``deflate`` (zlib), built in 1 MB steps."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31 if coding == "gzip" else 15)
    step = bytes(MB)
    parts = [compressor.compress(step) for _ in range(size // MB)]
    parts.append(compressor.flush())
    return b"".join(parts)


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
async def test_compression_bombs_stop_at_the_decoded_cap(world: World, clock: FakeClock, coding: str) -> None:
    body = bomb(coding, 256 * MB)
    assert len(body) < 512 * 1024  # a quarter of a GB decoded, a few hundred KB on the wire
    misbehaviour = {"body": body, "content_encoding": coding, "precompressed": True}
    run = await run_hostile(world, clock, misbehaviour, result_type=INVALID, bound=QUICK)
    assert "larger than 65536 bytes" in (run.cold.error or "")
    assert run.rss_growth < 5 * MB, run.rss_growth


@pytest.mark.parametrize(
    ("coding", "body"),
    [
        ("gzip, gzip", gzip.compress(gzip.compress(ENFORCE2.encode()))),  # nested codings are not decoded
        ("br", ENFORCE2.encode()),
        ("gzip", b"\x1f\x8b\x08\x00 this is not a deflate stream"),
    ],
)
async def test_unsupported_or_corrupt_content_coding(world: World, clock: FakeClock, coding: str, body: bytes) -> None:
    misbehaviour = {"body": body, "content_encoding": coding, "precompressed": True}
    await run_hostile(world, clock, misbehaviour, result_type=FETCH_ERROR, bound=QUICK)


async def test_a_truncated_gzip_body_is_refused(world: World, clock: FakeClock) -> None:
    # The first half of a policy, flushed so that it decodes completely: a valid policy with max_age 8.
    prefix = "version: STSv1\nmode: enforce\nmx: mx.example.com\nmax_age: 8"
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    cut = compressor.compress(prefix.encode()) + compressor.flush(zlib.Z_SYNC_FLUSH)  # ... "6400\n" never comes
    assert parse_policy(zlib.decompressobj(31).decompress(cut)).max_age == 8
    misbehaviour = {"body": cut, "content_encoding": "gzip", "precompressed": True}
    await run_hostile(world, clock, misbehaviour, result_type=FETCH_ERROR, bound=QUICK)


async def test_a_dribbled_body_meets_the_total_deadline(world: World, clock: FakeClock) -> None:
    """One byte every 0.5 s never trips the 1 s idle timeout: only the total deadline can stop it (§3.3)."""
    misbehaviour = {"body_chunk_delay": 0.5}
    run = await run_hostile(
        world, clock, misbehaviour, result_type=FETCH_ERROR, bound=TIMEOUT + SLACK, fetch_idle_timeout=1.0
    )
    for lookup, seconds in [(run.warm, run.warm_seconds), (run.cold, run.cold_seconds)]:
        assert seconds >= TIMEOUT - 0.1
        assert f"no complete response within {TIMEOUT:g} s" in (lookup.error or "")
    for domain in ("warm.example", "cold.example"):
        record = await hostile_response(world, domain)
        assert not record.complete and 1 <= record.sent <= 6  # ~4 bytes in 2 s


async def test_endless_headers_fast_hit_the_header_count_limit(world: World, clock: FakeClock) -> None:
    """aiohttp allows 128 header lines of at most 8190 bytes: a flood of header lines ends at once."""
    run = await run_hostile(world, clock, {"endless_headers": 0}, result_type=FETCH_ERROR, bound=QUICK)
    assert "Too many headers" in (run.cold.error or "")
    for domain in ("warm.example", "cold.example"):
        record = await hostile_response(world, domain)
        assert not record.complete and record.sent < 64 * 1024  # the client hung up after ~7 KB
    assert run.rss_growth < 5 * MB


async def test_endless_headers_slow_meet_the_total_deadline(world: World, clock: FakeClock) -> None:
    """One header line every 0.1 s: never idle, never 128 lines within the deadline — the deadline ends it."""
    run = await run_hostile(world, clock, {"endless_headers": 0.1}, result_type=FETCH_ERROR, bound=TIMEOUT + SLACK)
    assert run.cold_seconds >= TIMEOUT - 0.1
    assert f"no complete response within {TIMEOUT:g} s" in (run.cold.error or "")


@pytest.mark.parametrize(
    ("misbehaviour", "detail"),
    [
        ({"close_mid_body": True}, "ClientPayloadError"),  # FIN without close_notify, Content-Length unmet
        ({"reset_mid_body": True}, ""),  # TCP RST mid-body
    ],
    ids=["close", "reset"],
)
async def test_cut_mid_body(world: World, clock: FakeClock, misbehaviour: dict[str, Any], detail: str) -> None:
    run = await run_hostile(world, clock, misbehaviour, result_type=FETCH_ERROR, bound=QUICK)
    assert detail in (run.cold.error or "")


# -- below HTTP: TLS that never completes, plaintext, closed and reset connections -------------------------------


@pytest.fixture
async def raw_host(world: World) -> str:
    """RAW_HOST, if this machine routes it to loopback (Linux does: all of 127.0.0.0/8)."""
    try:
        async with RawServer(RAW_HOST, world.https_port):
            pass
    except OSError as exc:
        pytest.skip(f"cannot listen on {RAW_HOST}: {exc}")
    return RAW_HOST


async def test_a_tls_handshake_that_never_completes(world: World, clock: FakeClock, raw_host: str) -> None:
    async with RawServer(raw_host, world.https_port, behaviour="silent") as raw:
        run = await run_hostile(
            world, clock, {"policy_host_addresses": [raw_host]}, result_type=FETCH_ERROR, bound=IDLE + SLACK
        )
        await asyncio.sleep(0.05)
    assert run.warm_seconds >= IDLE - 0.05 and run.cold_seconds >= IDLE - 0.05  # the idle timeout, not sooner
    assert "stopped answering" in (run.cold.error or "")
    assert len(raw.connections) == 2
    for connection in raw.connections:
        assert connection.received > 0  # a ClientHello arrived, and nothing was ever sent back
        assert connection.closed_by == "client"
        assert connection.closed_at is not None and connection.closed_at - connection.opened_at < IDLE + SLACK
    assert world.requests("mta-sts.warm.example") == 1 and world.requests("mta-sts.cold.example") == 0


@pytest.mark.parametrize("behaviour", ["close", "reset", "plaintext"])
async def test_no_tls_at_all(world: World, clock: FakeClock, raw_host: str, behaviour: str) -> None:
    async with RawServer(raw_host, world.https_port, behaviour=behaviour) as raw:
        await run_hostile(world, clock, {"policy_host_addresses": [raw_host]}, result_type=FETCH_ERROR, bound=QUICK)
    assert len(raw.connections) == 2


async def test_a_certificate_for_another_name_with_a_valid_policy(world: World, clock: FakeClock) -> None:
    """A downgrade attempt: a valid ``mode: none`` policy behind a certificate for another name is never used."""
    run = await run_hostile(world, clock, {"cert": "wrong-name", "policy": NONE}, result_type=WEBPKI, bound=QUICK)
    assert "mta-sts.cold.example" in world.sni_names
    assert world.requests("mta-sts.cold.example") == 0 and world.requests("mta-sts.warm.example") == 1
    assert "certificate" in (run.cold.error or "").lower()


# -- HTTP/1.0: the body ends with the connection (RFC 9112 §6.3 rule 8) -----------------------------------------
# A close-delimited body cannot be told from one cut short by an injected FIN or RST (asyncio reports a close
# without TLS close_notify like a clean one), so mtasts refuses every body without Content-Length or chunked
# coding (docs/decisions.md) — even a complete, valid one.


async def test_http10_without_content_length_is_refused_even_when_complete(world: World, clock: FakeClock) -> None:
    run = await run_hostile(world, clock, {"http10": True}, result_type=FETCH_ERROR, bound=QUICK)
    assert "Content-Length" in (run.cold.error or "")


async def test_http10_over_size_is_refused(world: World, clock: FakeClock) -> None:
    body = ENFORCE2.encode() + b"x: " + b"y" * 70_000 + b"\n"
    await run_hostile(world, clock, {"http10": True, "body": body}, result_type=FETCH_ERROR, bound=QUICK)


def truncated_to_valid_half() -> str:
    """A policy whose first half (what ``close_mid_body`` sends) is itself valid, with ``max_age: 8``."""
    half = "version: STSv1\nmode: enforce\nmx: mx.example.com\nmax_age: 8"
    rest = "6400\nx: "
    policy = half + rest + "y" * (len(half) - len(rest) - 1) + "\n"
    assert policy[: len(policy) // 2] == half and parse_policy(half).max_age == 8
    assert parse_policy(policy).max_age == 86400
    return policy


@pytest.mark.parametrize("cut", ["close_mid_body", "reset_mid_body"])
async def test_http10_truncated_without_close_notify_is_refused(world: World, clock: FakeClock, cut: str) -> None:
    """An on-path attacker who injects a FIN or RST can cut ``max_age: 86400`` to ``max_age: 8``."""
    misbehaviour = {"http10": True, "policy": truncated_to_valid_half(), cut: True}
    await run_hostile(world, clock, misbehaviour, result_type=FETCH_ERROR, bound=QUICK)


# -- hostile DNS (§3.1, §10.2) ------------------------------------------------------------------------------------


def txt_queries(world: World, name: str) -> Counter[str]:
    """TXT queries for ``name`` by transport."""
    return Counter(q.transport for q in world.dns_log if q.name == name and q.rdtype == "TXT")


async def test_truncated_udp_answer_is_retried_over_tcp(world: World, clock: FakeClock) -> None:
    unrelated = [f"unrelated-{i} {'z' * 60}" for i in range(30)]  # ~2 KB: far over 512 bytes
    world.publish("big.example", ENFORCE, id="7", txt=["v=STSv1; id=7;", *unrelated])
    async with make(world, clock) as resolver:
        lookup = await resolver.lookup("big.example")
    assert (lookup.status, lookup.policy_id) == (LookupStatus.FETCHED, "7")
    assert txt_queries(world, "_mta-sts.big.example") == {"udp": 1, "tcp": 1}


@pytest.mark.parametrize(
    ("strings", "status", "policy_id"),
    [
        (["v=STSv1; id=1", *["x"] * 5000], LookupStatus.NO_POLICY, None),  # joined: a 5001-character id
        (["v=STSv1;", " id=2;", *[" "] * 5000], LookupStatus.FETCHED, "2"),  # joined: trailing WSP is fine
        (["v=STSv1; id=3; x=", *["a" * 255] * 250], LookupStatus.FETCHED, "3"),  # ~64 KB: one long extension
        (["v=STSv1; id=3; x=", *["a" * 255] * 249, "a a"], LookupStatus.NO_POLICY, None),  # ... invalid at the end
    ],
    ids=["5000-strings-invalid", "5000-strings-valid", "64k-valid", "64k-invalid"],
)
async def test_huge_txt_records(
    world: World, clock: FakeClock, strings: list[str], status: LookupStatus, policy_id: str | None
) -> None:
    world.publish("huge.example", ENFORCE, id="unused", txt=[strings])
    async with make(world, clock) as resolver:
        lookup, seconds = await timed(resolver.lookup("huge.example"))
    assert (lookup.status, lookup.policy_id) == (status, policy_id), lookup.error
    assert seconds < QUICK
    assert txt_queries(world, "_mta-sts.huge.example") == {"udp": 1, "tcp": 1}
    assert not world.errors


async def test_a_txt_rrset_too_big_even_for_tcp(world: World, clock: FakeClock) -> None:
    """Over 64 KiB: the world answers TC even over TCP, with nothing in it — no policy, no fetch, no crash."""
    world.publish("toobig.example", ENFORCE, txt=["v=STSv1; id=3; x=" + "a" * 40_000, "y" * 40_000])
    async with make(world, clock) as resolver:
        lookup, seconds = await timed(resolver.lookup("toobig.example"))
    assert lookup.policy is None and lookup.status in (LookupStatus.NO_POLICY, LookupStatus.DNS_ERROR)
    assert seconds < QUICK and world.requests("mta-sts.toobig.example") == 0


@pytest.mark.parametrize("shape", ["loop A->B->A", "loop in the answer", "chain of 13"])
async def test_cname_loops_and_long_chains(world: World, clock: FakeClock, shape: str) -> None:
    """Loops and over-long chains end as a DNS error — never a hang; a cached policy stays (§3.1 note)."""
    warm = world.publish("warm.example", ENFORCE, id="1")
    cold = world.publish("cold.example", ENFORCE, id="2")
    for i in range(13):
        world.add_record(f"_mta-sts.link{i}.example", "CNAME", f"_mta-sts.link{i + 1}.example")
    world.add_record("_mta-sts.link13.example", "TXT", "v=STSv1; id=2;")
    for domain in ("warm.example", "cold.example"):  # B of each loop: a CNAME back to A
        world.publish(f"b-{domain}", ENFORCE, txt_cname=f"_mta-sts.{domain}")
    shapes: dict[str, dict[str, Any]] = {
        "loop A->B->A": {"txt_cname": lambda domain: f"_mta-sts.b-{domain}"},
        "loop in the answer": {"txt_failure": "cname-loop"},  # a hostile server: the loop inside one answer
        "chain of 13": {"txt_cname": "_mta-sts.link0.example"},  # the world follows 8 links at most
    }
    misbehaviour = shapes[shape]
    misbehave(cold, "cold.example", misbehaviour)
    async with make(world, clock) as resolver:
        await resolver.lookup("warm.example")
        misbehave(warm, "warm.example", misbehaviour)
        clock.advance(301)
        (w, w_seconds), (c, c_seconds) = await asyncio.gather(
            timed(resolver.lookup("warm.example")), timed(resolver.lookup("cold.example"))
        )
    assert (w.status, w.policy, w.policy_id) == (LookupStatus.CACHED, parse_policy(ENFORCE), "1")
    assert (c.status, c.policy) == (LookupStatus.DNS_ERROR, None), c.error
    assert w_seconds < QUICK and c_seconds < QUICK
    assert world.queries("_mta-sts.cold.example", "TXT") == 1  # one query, one answer: no retry storm
    assert world.requests("mta-sts.warm.example") == 1 and world.requests("mta-sts.cold.example") == 0


@pytest.mark.parametrize("kind", ["wrong-id", "wrong-question"])
async def test_mismatched_answers_are_never_records(world: World, clock: FakeClock, kind: str) -> None:
    """The true record (a new id 2) under the wrong message id or question: dropped, so the lookup times out."""
    lifetime = 0.5
    warm = world.publish("warm.example", ENFORCE, id="1")
    world.publish("cold.example", ENFORCE, id="2", txt_failure=kind)
    async with make(world, clock, dns_resolver=world.resolver(lifetime=lifetime)) as resolver:
        await resolver.lookup("warm.example")
        warm.id, warm.txt_failure = "2", kind
        clock.advance(301)
        (w, w_seconds), (c, c_seconds) = await asyncio.gather(
            timed(resolver.lookup("warm.example")), timed(resolver.lookup("cold.example"))
        )
    assert (w.status, w.policy_id, w.policy) == (LookupStatus.CACHED, "1", parse_policy(ENFORCE))
    assert (c.status, c.policy) == (LookupStatus.DNS_ERROR, None)
    assert "timeout" in (c.error or "").lower()
    assert w_seconds < lifetime + SLACK and c_seconds < lifetime + SLACK
    assert world.queries("_mta-sts.cold.example", "TXT") >= 1
    assert world.requests("mta-sts.warm.example") == 1 and world.requests("mta-sts.cold.example") == 0


async def test_servfail_storm(world: World, clock: FakeClock) -> None:
    """1,000 concurrent lookups of 100 SERVFAILing domains: one query per domain, remembered for dns_error_ttl."""
    domains = [f"d{i}.example" for i in range(100)]
    for domain in domains:
        world.publish(domain, ENFORCE, txt_failure="servfail")
    cached = domains[:10]
    async with make(world, clock, dns_error_ttl=30) as resolver:
        for domain in cached:  # fetched long ago: the TXT id is due for a check
            resolver.cache_policy(domain, parse_policy(ENFORCE), "1", fetched_at=clock.now - 1000)

        async def wave() -> list[PolicyLookup]:
            return list(await asyncio.gather(*(resolver.lookup(domains[i % 100]) for i in range(1000))))

        lookups, seconds = await timed(wave())
        assert seconds < 10
        for lookup in lookups:
            if lookup.domain in cached:
                assert (lookup.status, lookup.policy) == (LookupStatus.CACHED, parse_policy(ENFORCE))
            else:
                assert (lookup.status, lookup.policy) == (LookupStatus.DNS_ERROR, None)
        first = {domain: world.queries(f"_mta-sts.{domain}", "TXT") for domain in domains}
        assert all(1 <= count <= 2 for count in first.values()), first
        await wave()  # remembered: no query at all
        assert {domain: world.queries(f"_mta-sts.{domain}", "TXT") for domain in domains} == first
        clock.advance(31)  # past dns_error_ttl, within txt_check_interval
        again = await wave()
        assert all(lk.status is LookupStatus.CACHED for lk in again if lk.domain in cached)
        for domain in domains:  # cached ones were marked checked: fresh for txt_check_interval
            added = world.queries(f"_mta-sts.{domain}", "TXT") - first[domain]
            assert added == 0 if domain in cached else 1 <= added <= 2, (domain, added)
    assert not world.http_requests and not world.errors


@pytest.mark.parametrize("spoof", ["nxdomain", "nodata"])
async def test_spoofed_txt_removal_keeps_the_policy_until_max_age(world: World, clock: FakeClock, spoof: str) -> None:
    short = ENFORCE.replace("86400", "1000")
    domain = world.publish("example.com", short, id="1")
    async with make(world, clock) as resolver:
        start = clock.now
        await resolver.lookup("example.com")
        domain.txt_failure = spoof
        for at in (301, 602, 903, 999):
            clock.now = start + at
            lookup = await resolver.lookup("example.com")
            assert (lookup.status, lookup.policy) == (LookupStatus.CACHED, parse_policy(short)), at
        clock.now = start + 1000  # max_age reached: the policy is dropped, never used as a fallback (§3.3)
        lookup = await resolver.lookup("example.com")
        assert (lookup.status, lookup.policy) == (LookupStatus.NO_POLICY, None)
        assert resolver.cache_entry("example.com") is None
    assert world.requests("mta-sts.example.com") == 1


async def test_a_new_id_that_fails_backs_off(world: World, clock: FakeClock) -> None:
    domain = world.publish("example.com", ENFORCE, id="1")
    async with make(world, clock, txt_check_interval=60, failure_backoff=300) as resolver:
        start = clock.now
        await resolver.lookup("example.com")
        domain.id, domain.status = "2", 500
        clock.now = start + 61
        first = await resolver.lookup("example.com")
        assert (first.status, first.result_type, first.policy_id) == (LookupStatus.CACHED, FETCH_ERROR, "1")
        assert world.requests("mta-sts.example.com") == 2
        for at in (122, 183, 244, 305):  # TXT checked each time, no new fetch of id 2 within the back-off
            clock.now = start + at
            lookup = await resolver.lookup("example.com")
            assert (lookup.status, lookup.result_type, lookup.policy) == (
                LookupStatus.CACHED,
                FETCH_ERROR,
                parse_policy(ENFORCE),
            )
        assert (await resolver.recheck("example.com")).policy_id == "1"  # a forced re-check backs off too
        assert world.requests("mta-sts.example.com") == 2
        assert world.queries("_mta-sts.example.com", "TXT") == 7
        clock.now = start + 366  # the back-off (61 + 300) is over: id 2 is tried again
        await resolver.lookup("example.com")
        assert world.requests("mta-sts.example.com") == 3


# -- downgrade attempts ------------------------------------------------------------------------------------------


async def test_mode_none_at_the_same_id_is_never_fetched(world: World, clock: FakeClock) -> None:
    domain = world.publish("example.com", ENFORCE, id="1")
    async with make(world, clock) as resolver:
        await resolver.lookup("example.com")
        domain.policy = NONE  # the id stays 1: §3 says nothing changed, so nothing is fetched
        for _ in range(5):
            clock.advance(301)
            lookup = await resolver.lookup("example.com")
            assert (lookup.status, lookup.policy) == (LookupStatus.CACHED, parse_policy(ENFORCE))
        assert world.requests("mta-sts.example.com") == 1
        assert world.queries("_mta-sts.example.com", "TXT") == 6


INJECTED = [
    "a/b.example",
    "a@b.example",
    "example.com\n",
    "a\nb.example",
    "a..example",
    "x" * 64 + ".example",
    ("b" * 49 + ".") * 6 + "example",  # 307 characters
    "\u2603.example",
    "a%2Fb.example",
    "a\x00b.example",
    "example.com/.well-known/mta-sts.txt",
    "example.com\r\nHost: evil.example",
    "../../etc/passwd",
    "",
]


class SpyStore(MemoryStore):
    """A MemoryStore that remembers every key it was asked about."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    async def get(self, domain: str) -> StoredPolicy | None:
        self.seen.append(domain)
        return await super().get(domain)

    async def write(self, puts: Sequence[StoredPolicy], deletes: Sequence[str]) -> None:
        self.seen.extend([row.domain for row in puts] + list(deletes))
        await super().write(puts, deletes)


@pytest.mark.parametrize("name", INJECTED, ids=lambda n: repr(n)[:30])
async def test_injected_domain_names_are_rejected_before_any_io(
    world: World, clock: FakeClock, tmp_path: Path, name: str
) -> None:
    assert len(INJECTED[6]) >= 300
    spy, sqlite = SpyStore(), SQLiteStore(tmp_path / "policies.sqlite3")
    for store in (spy, sqlite):
        async with make(world, clock, store=store) as resolver:
            for call in (resolver.get_policy, resolver.lookup, resolver.recheck, resolver.refresh):
                with pytest.raises(DomainError):
                    await call(name)
            with pytest.raises(DomainError):
                resolver.cached_policy(name)
            with pytest.raises(DomainError):
                resolver.cache_policy(name, parse_policy(ENFORCE), "1")
            server = SocketmapServer(resolver)
            for key in (name, f"[{name}]", f"{name}:25"):
                assert await server.answer(b"postfix " + key.encode("utf-8", "surrogateescape")) == b"NOTFOUND "
            try:
                parsed = parse_key(name)
            except DomainError:
                parsed = None
            if parsed is not None:
                with pytest.raises(DomainError):
                    resolver.cached_policy(parsed)
    assert not world.dns_queries and not world.http_requests and not world.sni_names
    assert spy.seen == [] and spy.rows == {}
    reopened = SQLiteStore(tmp_path / "policies.sqlite3")
    try:
        assert [row async for row in reopened.scan()] == []
    finally:
        await reopened.aclose()


# -- the world's hostile behaviours, seen with plain clients (what the cases above rely on) -------------------


async def raw_get(world: World, domain: str, size: int = -1) -> bytes:
    """One GET over TLS with asyncio streams; ``size`` bytes of the raw response, or all of it (-1)."""
    reader, writer = await asyncio.open_connection(
        world.host, world.https_port, ssl=world.client_ssl_context(), server_hostname=f"mta-sts.{domain}"
    )
    try:
        writer.write(f"GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: mta-sts.{domain}\r\n\r\n".encode())
        return await (reader.read() if size < 0 else reader.readexactly(size))
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


async def test_world_http10_and_endless_headers(world: World) -> None:
    world.publish("old.example", ENFORCE, http10=True)
    world.publish("endless.example", ENFORCE, endless_headers=0)
    response = await raw_get(world, "old.example")  # read to a clean end: close_notify, then EOF
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 OK\r\n") and b"content-length" not in head.lower()
    assert body == ENFORCE.encode()
    flood = await raw_get(world, "endless.example", 20_000)
    assert flood.startswith(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Endless-0: ")
    assert b"\r\n\r\n" not in flood
    await hostile_response(world, "endless.example")  # recorded once the client has gone
    assert [(r.host, r.size, r.complete) for r in world.response_log] == [
        ("mta-sts.old.example", len(ENFORCE), True),
        ("mta-sts.endless.example", None, False),
    ]
    world.reset_counters()
    assert world.response_log == []


async def raw_dns(world: World, query: dns.message.Message) -> dns.message.Message:
    """One query over TCP, the answer parsed without any check that it matches (dnspython's would refuse it)."""
    reader, writer = await asyncio.open_connection(world.host, world.dns_port)
    try:
        wire = query.to_wire()
        writer.write(len(wire).to_bytes(2, "big") + wire)
        size = int.from_bytes(await reader.readexactly(2), "big")
        return dns.message.from_wire(await reader.readexactly(size))
    finally:
        writer.close()
        await writer.wait_closed()


async def test_world_hostile_dns_kinds(world: World) -> None:
    world.publish("spoof.example", ENFORCE, id="2")
    query = dns.message.make_query("_mta-sts.spoof.example", "TXT")
    for kind in sorted(HOSTILE_KINDS):
        world.domain("spoof.example").txt_failure = kind
        response = await raw_dns(world, query)
        if kind == "wrong-id":
            assert response.id != query.id and response.answer[0][0].strings == (b"v=STSv1; id=2;",)
        elif kind == "wrong-question":
            assert response.id == query.id and response.question[0].name.to_text() == "spoofed.invalid."
            assert response.answer[0][0].strings == (b"v=STSv1; id=2;",)
        else:
            names = [(rrset.name.to_text(), rrset[0].target.to_text()) for rrset in response.answer]
            assert names == [
                ("_mta-sts.spoof.example.", "loop._mta-sts.spoof.example."),
                ("loop._mta-sts.spoof.example.", "_mta-sts.spoof.example."),
            ]
    assert not HOSTILE_KINDS & FAILURE_KINDS
    world.set_failure("_mta-sts.spoof.example", "wrong-question")  # set_failure takes them too
    with pytest.raises(ValueError, match="wrong-id"):
        world.domain("spoof.example").txt_failure = "wrong-answer"


async def test_world_raw_server_behaviours(world: World) -> None:
    with pytest.raises(ValueError, match="silent"):
        RawServer(behaviour="noisy")
    with pytest.raises(ValueError, match="endless_headers"):
        world.publish("bad.example", endless_headers=-1)
    async with RawServer(behaviour="plaintext") as raw:
        reader, writer = await asyncio.open_connection(world.host, raw.port)
        writer.write(b"\x16\x03\x01 not really a ClientHello")
        assert (await reader.read()).startswith(b"HTTP/1.1 400 Bad Request\r\n")
        writer.close()
        await writer.wait_closed()
    assert [(c.closed_by, c.received) for c in raw.connections] == [("server", 28)]
    async with RawServer(behaviour="silent") as raw:
        reader, writer = await asyncio.open_connection(world.host, raw.port)
        writer.write(b"hello")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(1), 0.2)
        writer.close()
        await writer.wait_closed()
        while raw.connections[0].closed_at is None:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    assert [(c.closed_by, c.received) for c in raw.connections] == [("client", 5)]
