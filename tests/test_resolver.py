"""PolicyResolver against the real loopback world (issue 3): discovery, strict fetch, the cache rules."""

from __future__ import annotations

import asyncio
import gzip
import logging
from typing import Any

import pytest

from mtasts import NOT_CACHED, LookupStatus, Mode, PolicyResolver, parse_policy
from mtasts.resolver import FetchFailure
from mtasts.testing import World

from .conftest import FakeClock

ENFORCE = "version: STSv1\nmode: enforce\nmx: mx.example.com\nmx: *.example.net\nmax_age: 86400\n"
ENFORCE2 = "version: STSv1\nmode: enforce\nmx: mx2.example.com\nmax_age: 86400\n"
TESTING = "version: STSv1\nmode: testing\nmx: mx.example.com\nmax_age: 86400\n"
NONE = "version: STSv1\nmode: none\nmax_age: 86400\n"
GOOD_URL = "https://mta-sts.good.example:{port}/.well-known/mta-sts.txt"  # serves a valid policy


def make(world: World, clock: FakeClock, **kwargs: Any) -> PolicyResolver:
    kwargs.setdefault("fetch_timeout", 5.0)
    return world.policy_resolver(clock=clock, **kwargs)


# -- discovery (RFC 8461 §3.1, §3.4) ---------------------------------------------------------------------------


async def test_fetches_and_returns_the_policy(world: World, clock: FakeClock) -> None:
    world.publish("example.com", ENFORCE, id="1")
    async with make(world, clock) as resolver:
        lookup = await resolver.lookup("example.com")
        assert lookup.status is LookupStatus.FETCHED
        assert lookup.policy == parse_policy(ENFORCE)
        assert lookup.policy_id == "1"
        assert lookup.fetched_at == clock.now
        assert lookup.expires_at == clock.now + 86400
        assert not lookup.from_cache and lookup.result_type is None
        assert await resolver.get_policy("example.com") == parse_policy(ENFORCE)
    assert world.queries("_mta-sts.example.com", "TXT") == 1
    assert world.requests("mta-sts.example.com") == 1


async def test_queries_only_the_a_label_name_and_no_parent(world: World, clock: FakeClock) -> None:
    world.publish("xn--bcher-kva.example", ENFORCE, id="1")
    world.publish("example.com", ENFORCE, id="1")
    async with make(world, clock) as resolver:
        assert await resolver.get_policy("Bücher.EXAMPLE.") == parse_policy(ENFORCE)
        assert await resolver.get_policy("mail.example.com") is None  # §3.4: never the parent zone
    txt_names = sorted(name for name, rdtype in world.dns_queries if rdtype == "TXT")
    assert txt_names == ["_mta-sts.mail.example.com", "_mta-sts.xn--bcher-kva.example"]
    assert world.request_log[0].host == "mta-sts.xn--bcher-kva.example"


@pytest.mark.parametrize("literal", ["[192.0.2.1]", "[IPv6:2001:db8::1]", "192.0.2.1"])
async def test_address_literals_have_no_policy_and_cause_no_io(world: World, clock: FakeClock, literal: str) -> None:
    async with make(world, clock) as resolver:
        assert await resolver.get_policy(literal) is None
        assert (await resolver.lookup(literal)).status is LookupStatus.NOT_APPLICABLE
    assert not world.dns_queries and not world.http_requests


async def test_cname_is_followed(world: World, clock: FakeClock) -> None:
    world.publish("user.example", ENFORCE, id="1", txt_cname="_mta-sts.provider.example")
    world.add_record("_mta-sts.provider.example", "TXT", "v=STSv1; id=prov1;")
    async with make(world, clock) as resolver:
        lookup = await resolver.lookup("user.example")
    assert lookup.policy_id == "prov1" and lookup.policy == parse_policy(ENFORCE)


async def test_multi_string_txt_is_joined(world: World, clock: FakeClock) -> None:
    world.publish("example.com", ENFORCE, txt=[["v=STSv1; id=", "abc"]])
    async with make(world, clock) as resolver:
        assert (await resolver.lookup("example.com")).policy_id == "abc"


@pytest.mark.parametrize(
    ("records", "expected_id"),
    [
        (["v=spf1 -all", "v=STSv1; id=1"], "1"),
        (["v=STSv1; id=1", "v=STSv1; id=2"], None),
        # (two identical records cannot travel in DNS: an RRset holds each rdata once; see test_txt.py)
        (["v=STSv10; id=1"], None),
        (["v=STSv1; id=bad-id"], None),
    ],
)
async def test_multi_record_rule(world: World, clock: FakeClock, records: list[str], expected_id: str | None) -> None:
    world.publish("example.com", ENFORCE, txt=list(records))
    async with make(world, clock) as resolver:
        lookup = await resolver.lookup("example.com")
    assert lookup.policy_id == expected_id
    if expected_id is None:
        assert lookup.status is LookupStatus.NO_POLICY and lookup.policy is None
        assert world.requests("mta-sts.example.com") == 0


async def test_invalid_domain_is_a_typed_error(world: World, clock: FakeClock) -> None:
    from mtasts import DomainError

    async with make(world, clock) as resolver:
        for bad in ["exa mple.com", "a/b.example", "", "x" * 300]:
            with pytest.raises(DomainError):
                await resolver.get_policy(bad)
    assert not world.dns_queries


# -- the fetch (§3.2, §3.3, §7.1) -----------------------------------------------------------------------------


async def test_request_url_sni_host_and_no_cache_validators(world: World, clock: FakeClock) -> None:
    world.publish("example.com", ENFORCE)
    async with make(world, clock) as resolver:
        await resolver.get_policy("example.com")
    [request] = world.request_log
    assert (request.method, request.path, request.host) == ("GET", "/.well-known/mta-sts.txt", "mta-sts.example.com")
    headers = {k.lower() for k in request.headers}
    assert not headers & {"if-none-match", "if-modified-since", "if-match", "if-range"}
    assert "mta-sts.example.com" in world.sni_names
    assert world.queries("mta-sts.example.com", "A") == 1


@pytest.mark.parametrize(
    ("content_type", "ok"),
    [
        ("text/plain", True),
        ("text/plain; charset=utf-8", True),
        ("text/plain;charset=UTF-8", True),
        ("TEXT/PLAIN", True),
        ("text/plain; charset=iso-8859-1", True),
        ("text/html", False),
        ("application/octet-stream", False),
        (None, False),
    ],
)
async def test_content_type(world: World, clock: FakeClock, content_type: str | None, ok: bool) -> None:
    world.publish("example.com", ENFORCE, content_type=content_type)
    async with make(world, clock) as resolver:
        lookup = await resolver.lookup("example.com")
    if ok:
        assert lookup.status is LookupStatus.FETCHED
    else:
        assert (lookup.status, lookup.result_type) == (LookupStatus.FETCH_ERROR, "sts-policy-invalid")


async def test_body_limit_is_inclusive_and_configurable(world: World, clock: FakeClock) -> None:
    policy = ENFORCE.encode()
    world.publish("exact.example", body=policy + b"x: " + b"y" * (65536 - len(policy) - 4) + b"\n")
    world.publish("over.example", body=policy + b"x: " + b"y" * (65536 - len(policy) - 3) + b"\n")
    world.publish("small.example", ENFORCE)
    async with make(world, clock) as resolver:
        assert (await resolver.lookup("exact.example")).status is LookupStatus.FETCHED
        over = await resolver.lookup("over.example")
        assert (over.status, over.result_type) == (LookupStatus.FETCH_ERROR, "sts-policy-invalid")
    async with make(world, clock, max_policy_size=len(ENFORCE) - 1) as resolver:
        assert (await resolver.lookup("small.example")).result_type == "sts-policy-invalid"


async def test_gzip_body_is_decoded_and_the_cap_counts_decoded_bytes(world: World, clock: FakeClock) -> None:
    world.publish("gz.example", ENFORCE, content_encoding="gzip")
    bomb = ENFORCE.encode() + b"x: " + b"a" * 10_000_000 + b"\n"
    assert len(gzip.compress(bomb)) < 65536  # small on the wire, 10 MB decoded
    world.publish("bomb.example", body=bomb, content_encoding="gzip")
    async with make(world, clock) as resolver:
        assert (await resolver.lookup("gz.example")).policy == parse_policy(ENFORCE)
        bombed = await resolver.lookup("bomb.example")
    assert (bombed.status, bombed.result_type) == (LookupStatus.FETCH_ERROR, "sts-policy-invalid")


@pytest.mark.parametrize(
    ("config", "result_type"),
    [
        ({"status": 404}, "sts-policy-fetch-error"),
        ({"status": 500}, "sts-policy-fetch-error"),
        ({"status": 201}, "sts-policy-fetch-error"),
        ({"status": 204}, "sts-policy-fetch-error"),
        ({"status": 304}, "sts-policy-fetch-error"),
        ({"redirect_to": GOOD_URL}, "sts-policy-fetch-error"),
        ({"redirect_to": GOOD_URL, "status": 302}, "sts-policy-fetch-error"),
        ({"redirect_to": GOOD_URL, "status": 307}, "sts-policy-fetch-error"),
        ({"redirect_to": GOOD_URL, "status": 308}, "sts-policy-fetch-error"),
        ({"content_type": "text/html"}, "sts-policy-invalid"),
        ({"body": b"x" * 65537}, "sts-policy-invalid"),
        ({"cert": "expired"}, "sts-webpki-invalid"),
        ({"cert": "wrong-name"}, "sts-webpki-invalid"),
        ({"cert": "untrusted"}, "sts-webpki-invalid"),
        ({"cert": "cn-only"}, "sts-webpki-invalid"),
        ({"cert": "not-yet-valid"}, "sts-webpki-invalid"),
        ({"policy": "version: STSv1\nmode: enforce\nmax_age: 1\n"}, "sts-policy-invalid"),
        ({"policy_host_addresses": []}, "sts-policy-fetch-error"),
        ({"policy_host_failure": "servfail"}, "sts-policy-fetch-error"),
        ({"close_mid_body": True}, "sts-policy-fetch-error"),
        ({"delay": 10.0}, "sts-policy-fetch-error"),  # headers never come within the deadline
        ({"body_chunk_delay": 0.1}, "sts-policy-fetch-error"),  # a dribbled body past the deadline
    ],
    ids=lambda v: str(v)[:60] if isinstance(v, dict) else v,
)
async def test_hostile_policy_hosts(world: World, clock: FakeClock, config: dict[str, Any], result_type: str) -> None:
    """Each misbehaviour ends in its documented result type; a cached policy is never weakened (hostile table)."""
    world.publish("good.example", ENFORCE2)
    domain = world.publish("example.com", ENFORCE, id="1")
    async with make(world, clock, fetch_timeout=1.5) as resolver:
        assert (await resolver.lookup("example.com")).status is LookupStatus.FETCHED
        # the domain now "publishes" a new id whose fetch misbehaves
        domain.id = "2"
        for name, value in config.items():
            setattr(domain, name, value.format(port=world.https_port) if isinstance(value, str) else value)
        clock.advance(301)
        lookup = await resolver.lookup("example.com")
        assert (lookup.status, lookup.result_type) == (LookupStatus.CACHED, result_type)
        assert lookup.policy == parse_policy(ENFORCE) and lookup.policy_id == "1"
        entry = resolver.cache_entry("example.com")
        assert entry is not None and entry.policy_id == "1"  # the new id is not stored (C7)
        # without a cached policy the same failure means "no policy", with the result type said
    assert world.requests("mta-sts.good.example") == 0  # a redirect target is never requested
    world.reset_counters()
    async with make(world, clock, fetch_timeout=1.5) as fresh:
        lookup = await fresh.lookup("example.com")
        assert (lookup.status, lookup.result_type, lookup.policy) == (LookupStatus.FETCH_ERROR, result_type, None)
    assert world.requests("mta-sts.good.example") == 0  # a redirect target is never requested


async def test_slow_headers_and_dribbled_body_hit_the_total_deadline(world: World, clock: FakeClock) -> None:
    world.publish("slow.example", ENFORCE, delay=5.0)
    world.publish("dribble.example", ENFORCE, body_chunk_delay=0.05)  # ~90 bytes * 0.05 s = 4.5 s
    async with make(world, clock, fetch_timeout=0.5) as resolver:
        loop = asyncio.get_running_loop()
        start = loop.time()
        slow, dribble = await asyncio.gather(resolver.lookup("slow.example"), resolver.lookup("dribble.example"))
        assert loop.time() - start < 2.5
    assert (slow.status, slow.result_type) == (LookupStatus.FETCH_ERROR, "sts-policy-fetch-error")
    assert (dribble.status, dribble.result_type) == (LookupStatus.FETCH_ERROR, "sts-policy-fetch-error")


async def test_wildcard_certificate_is_accepted(world: World, clock: FakeClock) -> None:
    world.publish("example.com", ENFORCE, cert="wildcard")
    async with make(world, clock) as resolver:
        assert (await resolver.lookup("example.com")).status is LookupStatus.FETCHED


# -- the cache (§3, §3.3, §5.1, §10) ------------------------------------------------------------------------------


async def test_same_id_and_not_expired_means_no_fetch(world: World, clock: FakeClock) -> None:
    world.publish("example.com", ENFORCE, id="1")
    async with make(world, clock) as resolver:
        await resolver.get_policy("example.com")
        clock.advance(10)
        assert resolver.cached_policy("example.com") == parse_policy(ENFORCE)  # from memory
        await resolver.get_policy("example.com")
        assert world.queries("_mta-sts.example.com", "TXT") == 1
        clock.advance(400)  # past txt_check_interval: the TXT id is checked again
        lookup = await resolver.lookup("example.com")
        assert lookup.status is LookupStatus.CACHED and lookup.from_cache
    assert world.queries("_mta-sts.example.com", "TXT") == 2
    assert world.requests("mta-sts.example.com") == 1


async def test_new_id_fetches_and_replaces(world: World, clock: FakeClock) -> None:
    domain = world.publish("example.com", ENFORCE, id="b")
    async with make(world, clock) as resolver:
        await resolver.get_policy("example.com")
        domain.id, domain.policy = "a", ENFORCE2  # a lexically smaller id is still a change (§3.1)
        clock.advance(400)
        lookup = await resolver.lookup("example.com")
        assert (lookup.status, lookup.policy_id) == (LookupStatus.FETCHED, "a")
        assert lookup.policy == parse_policy(ENFORCE2) and lookup.fetched_at == clock.now
        assert await resolver.get_policy("example.com") == parse_policy(ENFORCE2)


async def test_mode_none_replaces_enforce(world: World, clock: FakeClock) -> None:
    domain = world.publish("example.com", ENFORCE, id="1")
    async with make(world, clock) as resolver:
        await resolver.get_policy("example.com")
        domain.id, domain.policy = "2", NONE
        clock.advance(400)
        policy = await resolver.get_policy("example.com")
        assert policy is not None and policy.mode is Mode.NONE
        clock.advance(400)
        policy = await resolver.get_policy("example.com")
        assert policy is not None and policy.mode is Mode.NONE


async def test_max_age_zero_applies_once_and_is_not_cached(world: World, clock: FakeClock) -> None:
    domain = world.publish("example.com", ENFORCE, id="1")
    zero = ENFORCE.replace("86400", "0")
    async with make(world, clock) as resolver:
        await resolver.get_policy("example.com")
        domain.id, domain.policy = "2", zero
        clock.advance(400)
        assert await resolver.get_policy("example.com") == parse_policy(zero)
        assert resolver.cache_entry("example.com") is None  # and the old policy is gone too
        assert resolver.cached_policy("example.com") is NOT_CACHED
        domain.status = 500  # nothing cached to fall back on
        assert await resolver.get_policy("example.com") is None
    assert world.requests("mta-sts.example.com") == 3


async def test_cached_policy_applies_until_max_age_then_is_dropped(world: World, clock: FakeClock) -> None:
    short = ENFORCE.replace("86400", "1000")
    domain = world.publish("example.com", short, id="1")
    async with make(world, clock) as resolver:
        await resolver.get_policy("example.com")
        domain.txt_failure, domain.status = "nxdomain", 500
        clock.advance(999)
        assert await resolver.get_policy("example.com") == parse_policy(short)
        clock.advance(2)  # T + 1001: expired, and nothing can be fetched
        assert await resolver.get_policy("example.com") is None
        assert resolver.cache_entry("example.com") is None


async def test_expired_policy_is_refetched_even_with_the_same_id(world: World, clock: FakeClock) -> None:
    short = ENFORCE.replace("86400", "1000")
    world.publish("example.com", short, id="1")
    async with make(world, clock) as resolver:
        await resolver.get_policy("example.com")
        clock.advance(1000)
        lookup = await resolver.lookup("example.com")
        assert (lookup.status, lookup.fetched_at) == (LookupStatus.FETCHED, clock.now)
    assert world.requests("mta-sts.example.com") == 2


@pytest.mark.parametrize("failure", ["nxdomain", "nodata", "servfail", "timeout", "refused"])
async def test_txt_absent_keeps_the_cached_policy(world: World, clock: FakeClock, failure: str) -> None:
    domain = world.publish("example.com", ENFORCE, id="1")
    async with make(world, clock, dns_resolver=world.resolver(lifetime=0.5)) as resolver:
        await resolver.get_policy("example.com")
        domain.txt_failure = failure
        clock.advance(400)
        lookup = await resolver.lookup("example.com")
        assert (lookup.status, lookup.policy) == (LookupStatus.CACHED, parse_policy(ENFORCE))


@pytest.mark.parametrize(
    ("failure", "status"),
    [
        ("nxdomain", LookupStatus.NO_POLICY),
        ("nodata", LookupStatus.NO_POLICY),
        ("servfail", LookupStatus.DNS_ERROR),
        ("timeout", LookupStatus.DNS_ERROR),
    ],
)
async def test_txt_absent_without_cache(world: World, clock: FakeClock, failure: str, status: LookupStatus) -> None:
    world.publish("example.com", ENFORCE, txt_failure=failure)
    async with make(world, clock, dns_resolver=world.resolver(lifetime=0.5)) as resolver:
        lookup = await resolver.lookup("example.com")
        assert (lookup.status, lookup.policy) == (status, None)
        assert await resolver.get_policy("example.com") is None
    assert world.requests("mta-sts.example.com") == 0


async def test_failure_backoff_is_per_version_id(world: World, clock: FakeClock) -> None:
    domain = world.publish("example.com", ENFORCE, id="1", status=500)
    async with make(world, clock) as resolver:
        assert (await resolver.lookup("example.com")).status is LookupStatus.FETCH_ERROR
        clock.advance(60)
        assert (await resolver.lookup("example.com")).result_type == "sts-policy-fetch-error"
        assert world.requests("mta-sts.example.com") == 1  # same id within 5 minutes: no request
        queries = world.queries("_mta-sts.example.com", "TXT")
        clock.advance(10)
        await resolver.lookup("example.com")  # the failure is remembered for dns_error_ttl: not even a TXT query
        assert world.queries("_mta-sts.example.com", "TXT") == queries
        domain.id = "2"  # a new id is fetched at once when asked (§5.1 recheck) — the limit is per version id
        await resolver.recheck("example.com")
        assert world.requests("mta-sts.example.com") == 2
        domain.id, domain.status = "1", 200
        clock.advance(231)  # t0 + 301 s: id 1 may be tried again
        assert (await resolver.lookup("example.com")).status is LookupStatus.FETCHED
        assert world.requests("mta-sts.example.com") == 3


async def test_failure_backoff_is_configurable(world: World, clock: FakeClock) -> None:
    world.publish("example.com", ENFORCE, id="1", status=500)
    async with make(world, clock, failure_backoff=10) as resolver:
        await resolver.lookup("example.com")
        clock.advance(11)
        await resolver.lookup("example.com")
    assert world.requests("mta-sts.example.com") == 2


async def test_no_policy_is_negatively_cached(world: World, clock: FakeClock) -> None:
    async with make(world, clock, negative_ttl=120) as resolver:
        assert await resolver.get_policy("nothing.example") is None
        assert resolver.cached_policy("nothing.example") is None
        clock.advance(100)
        assert (await resolver.lookup("nothing.example")).status is LookupStatus.NO_POLICY
        assert world.queries("_mta-sts.nothing.example", "TXT") == 1
        clock.advance(30)
        assert await resolver.get_policy("nothing.example") is None
    assert world.queries("_mta-sts.nothing.example", "TXT") == 2


async def test_single_flight_for_a_cold_domain(world: World, clock: FakeClock) -> None:
    world.publish("example.com", ENFORCE, delay=0.2)
    async with make(world, clock) as resolver:
        policies = await asyncio.gather(*(resolver.get_policy("example.com") for _ in range(100)))
    assert all(p == parse_policy(ENFORCE) for p in policies)
    assert world.queries("_mta-sts.example.com", "TXT") == 1
    assert world.requests("mta-sts.example.com") == 1


async def test_a_cancelled_caller_does_not_cancel_the_shared_lookup(world: World, clock: FakeClock) -> None:
    world.publish("example.com", ENFORCE, delay=0.3)
    async with make(world, clock) as resolver:
        first = asyncio.create_task(resolver.get_policy("example.com"))
        second = asyncio.create_task(resolver.get_policy("example.com"))
        await asyncio.sleep(0.05)
        first.cancel()
        assert await second == parse_policy(ENFORCE)
    assert world.requests("mta-sts.example.com") == 1


async def test_recheck_queries_txt_now(world: World, clock: FakeClock) -> None:
    domain = world.publish("example.com", ENFORCE, id="1")
    async with make(world, clock) as resolver:
        await resolver.get_policy("example.com")
        domain.id, domain.policy = "2", ENFORCE2
        lookup = await resolver.recheck("example.com")  # no clock advance: forced
        assert (lookup.status, lookup.policy) == (LookupStatus.FETCHED, parse_policy(ENFORCE2))


# -- proactive refresh (§3.3, §10.2) ------------------------------------------------------------------------------


async def test_refresh_due_refetches_within_a_day_even_with_the_same_id(world: World, clock: FakeClock) -> None:
    world.publish("example.com", ENFORCE, id="1")
    async with make(world, clock) as resolver:
        await resolver.get_policy("example.com")
        clock.advance(3600)
        assert await resolver.refresh_due() == []
        clock.advance(86400 * 0.75 - 3600)  # three quarters of max_age (< a day)
        [lookup] = await resolver.refresh_due()
        assert (lookup.status, lookup.fetched_at) == (LookupStatus.FETCHED, clock.now)
        entry = resolver.cache_entry("example.com")
        assert entry is not None and entry.fetched_at == clock.now
    assert world.requests("mta-sts.example.com") == 2


async def test_refresh_failures_alert_unless_mode_none(
    world: World, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    enforce = world.publish("enforce.example", ENFORCE, id="1")
    none = world.publish("none.example", NONE, id="1")
    seen: list[FetchFailure] = []
    async with make(world, clock, on_refresh_failure=seen.append) as resolver:
        await resolver.get_policy("enforce.example")
        await resolver.get_policy("none.example")
        enforce.status = none.status = 503
        clock.advance(70_000)  # due (three quarters of max_age), not yet expired
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="mtasts"):
            lookups = await resolver.refresh_due()
        assert {lk.domain: lk.status for lk in lookups} == {
            "enforce.example": LookupStatus.CACHED,
            "none.example": LookupStatus.CACHED,
        }
    assert [f.domain for f in seen] == ["enforce.example"]
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "enforce.example" in warnings[0].getMessage()


async def test_background_refresh_runs_and_stops_on_close(world: World, clock: FakeClock) -> None:
    world.publish("example.com", ENFORCE, id="1")
    resolver = make(world, clock)
    await resolver.get_policy("example.com")
    clock.advance(86400)
    resolver.start_background_refresh(period=0.01)
    for _ in range(200):
        if world.requests("mta-sts.example.com") == 2:
            break
        await asyncio.sleep(0.01)
    assert world.requests("mta-sts.example.com") == 2
    await resolver.aclose()
    await resolver.aclose()  # idempotent


# -- limits -------------------------------------------------------------------------------------------------------


async def test_hung_hosts_do_not_starve_other_domains(world: World, clock: FakeClock) -> None:
    for i in range(3):
        world.publish(f"hung{i}.example", ENFORCE, delay=30)
    world.publish("fine.example", ENFORCE)
    async with make(world, clock, max_concurrent_fetches=4, fetch_timeout=30) as resolver:
        hung = [asyncio.create_task(resolver.get_policy(f"hung{i}.example")) for i in range(3)]
        await asyncio.sleep(0.1)
        assert await asyncio.wait_for(resolver.get_policy("fine.example"), 5) == parse_policy(ENFORCE)
        for task in hung:
            task.cancel()


async def test_bad_configuration_is_a_typed_error() -> None:
    from mtasts import MTASTSError

    for kwargs in [{"fetch_timeout": -1}, {"cache_size": 0}, {"max_policy_size": 0}, {"negative_ttl": float("nan")}]:
        with pytest.raises(MTASTSError):
            PolicyResolver(**kwargs)  # type: ignore[arg-type]


async def test_the_cache_is_bounded_and_shares_identical_policies(world: World, clock: FakeClock) -> None:
    for i in range(5):
        world.publish(f"d{i}.example", ENFORCE)
    async with make(world, clock, cache_size=3) as resolver:
        policies = [await resolver.get_policy(f"d{i}.example") for i in range(5)]
        assert resolver.cache_size == 3
        assert resolver.cache_entry("d0.example") is None  # least recently used, dropped
        assert resolver.cache_entry("d4.example") is not None
        entries = [resolver.cache_entry(f"d{i}.example") for i in range(2, 5)]
        assert len({id(e.policy) for e in entries if e is not None}) == 1  # one stored policy for all
    assert all(p == parse_policy(ENFORCE) for p in policies)


async def test_close_cancels_lookups_in_flight(world: World, clock: FakeClock) -> None:
    """Closing the resolver under a lookup is a local fault: "try again later", never "no policy" (issue 12)."""
    world.publish("slow.example", ENFORCE, delay=10)
    resolver = make(world, clock)
    waiting = asyncio.create_task(resolver.get_policy("slow.example"))
    looking = asyncio.create_task(resolver.lookup("slow.example"))
    await asyncio.sleep(0.1)
    await resolver.aclose()
    from mtasts import LookupDeferredError

    with pytest.raises(LookupDeferredError) as raised:
        await waiting
    assert raised.value.status == LookupStatus.LOCAL_ERROR
    closing = await looking
    assert (closing.status, closing.policy, closing.defer) == (LookupStatus.LOCAL_ERROR, None, True)
    after = await resolver.lookup("slow.example")
    assert (after.status, after.defer) == (LookupStatus.LOCAL_ERROR, True)
    assert "closed" in (after.error or "")


def test_not_cached_reads_as_its_name() -> None:
    assert repr(NOT_CACHED) == str(NOT_CACHED) == "NOT_CACHED"


async def test_answers_from_the_negative_cache_say_from_cache(world: World, clock: FakeClock) -> None:
    """Issue 13: a remembered "no policy" (or failure) costs no I/O, and says so."""
    world.publish("broken.example", ENFORCE, txt_failure="servfail")
    async with world.policy_resolver(clock=clock) as resolver:
        for domain, status in [("absent.example", LookupStatus.NO_POLICY), ("broken.example", LookupStatus.DNS_ERROR)]:
            first = await resolver.lookup(domain)
            again = await resolver.lookup(domain)
            assert (first.status, first.from_cache) == (status, False)
            assert (again.status, again.from_cache) == (status, True)
