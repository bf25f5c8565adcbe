"""The in-memory cache structures (mtasts.cache): versions stored once, eviction order, expiry in seconds."""

from __future__ import annotations

import gc
import weakref

from mtasts import parse_policy
from mtasts.cache import ExpiringCache, PolicyCache

POLICY = "version: STSv1\nmode: enforce\nmx: mx.example.com\nmax_age: 1000\n"
OTHER = "version: STSv1\nmode: testing\nmx: mx.example.com\nmax_age: 1000\n"


def test_put_get_and_fresh_policy() -> None:
    cache = PolicyCache(10)
    entry = cache.put("a.example", parse_policy(POLICY), "id1", fetched_at=100.7, fresh_for=300)
    assert (entry.policy_id, entry.expires_at, entry.fresh_until, entry.fetched_at) == ("id1", 1100, 400, 100)
    assert cache.fresh_policy("a.example", 399.9) == parse_policy(POLICY)
    assert cache.fresh_policy("a.example", 400) is None  # TXT check due
    assert cache.fresh_policy("b.example", 0) is None
    cache.mark_checked("a.example", 900, 300)
    assert cache.get("a.example").fresh_until == 1100  # type: ignore[union-attr]  # never past expiry
    assert cache.get("a.example").is_expired(1100)  # type: ignore[union-attr]
    assert not cache.get("a.example").is_expired(1099.9)  # type: ignore[union-attr]


def test_equal_policies_are_stored_once_and_freed_with_the_last_entry() -> None:
    cache = PolicyCache(10)
    for i in range(5):
        cache.put(f"d{i}.example", parse_policy(POLICY), f"id{i}", fetched_at=0, fresh_for=10)
    cache.put("y.example", parse_policy(OTHER), "same", fetched_at=0, fresh_for=10)
    assert cache.distinct_policies == 2
    entries = [cache.get(f"d{i}.example") for i in range(5)]
    assert [e.policy_id for e in entries if e is not None] == [f"id{i}" for i in range(5)]
    assert len({id(e.policy) for e in entries if e is not None}) == 1
    ref = weakref.ref(entries[0].policy)  # type: ignore[union-attr]
    del entries
    for i in range(5):
        cache.pop(f"d{i}.example")
    gc.collect()
    assert ref() is None and cache.distinct_policies == 1
    cache.put("z.example", parse_policy(POLICY), "new", fetched_at=0, fresh_for=10)  # reuses the freed index
    assert len(cache.policies) == 2


def test_ids_round_trip_exactly() -> None:
    cache = PolicyCache(10)
    for policy_id in ["a", "Z", "0", "20160831085700Z", "A" * 32, "0000", "aB9"]:
        cache.put("a.example", parse_policy(POLICY), policy_id, fetched_at=0, fresh_for=1)
        assert cache.get("a.example").policy_id == policy_id  # type: ignore[union-attr]


def test_replacing_moves_to_the_back_and_eviction_drops_the_oldest_fetch() -> None:
    cache = PolicyCache(200)
    for i in range(200):
        cache.put(f"d{i}.example", parse_policy(POLICY), "1", fetched_at=i, fresh_for=10)
    cache.put("d0.example", parse_policy(OTHER), "2", fetched_at=500, fresh_for=10)  # refreshed: now the newest
    cache.put("new.example", parse_policy(POLICY), "1", fetched_at=501, fresh_for=10)
    assert len(cache) == 199  # a hundredth (2 entries) dropped to make room
    assert "d0.example" in cache and "d1.example" not in cache and "d2.example" not in cache
    assert "d3.example" in cache and "new.example" in cache
    assert [domain for domain, _ in cache.items()][-2:] == ["d0.example", "new.example"]


def test_times_are_whole_seconds_and_clamped() -> None:
    cache = PolicyCache(10)
    assert cache.put("a.example", parse_policy(POLICY), "1", fetched_at=-5, fresh_for=10).expires_at == 995
    assert cache.put("b.example", parse_policy(POLICY), "1", fetched_at=float("nan"), fresh_for=1).expires_at == 0
    far = cache.put("c.example", parse_policy(POLICY), "1", fetched_at=1e12, fresh_for=10)
    assert far.expires_at == 2**32 - 1


def test_expiring_cache() -> None:
    cache: ExpiringCache[str] = ExpiringCache(100)
    cache.put("a", "x", expires_at=10)
    assert cache.get("a", 9.9) == "x"
    assert cache.get("a", 10) is None and len(cache) == 0
    for i in range(150):
        cache.put(f"k{i}", "v", expires_at=100)
    assert len(cache) <= 100 and cache.get("k149", 0) == "v" and cache.get("k0", 0) is None
    cache.pop("k149")
    cache.pop("missing")
    assert cache.get("k149", 0) is None


def test_due_for_refresh() -> None:
    cache = PolicyCache(10)
    cache.put("a.example", parse_policy(POLICY), "1", fetched_at=0, fresh_for=10)  # max_age 1000: due at 750
    cache.put("b.example", parse_policy(POLICY), "1", fetched_at=100, fresh_for=10)  # due at 850
    assert cache.due_for_refresh(700, 86400) == ([], 750)
    assert cache.due_for_refresh(750, 86400) == (["a.example"], 850)
    assert cache.due_for_refresh(0, 600) == ([], 600)  # refresh_interval first when shorter
    assert cache.due_for_refresh(900, 600) == (["a.example", "b.example"], float("inf"))
