"""The cache decision table (mtasts/decision.py), with no world: every row of docs/resolver.md's "Cache states"
table, and every row of the module's own tables, as data (in the manner of h11's state tests)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from mtasts.decision import (
    Decision,
    FetchOutcome,
    Limits,
    LookupStatus,
    MemoryState,
    Next,
    Remember,
    TxtOutcome,
    after_fetch,
    after_txt,
    backed_off,
    caches,
    memory_state,
    refresh_after,
)

LIMITS = Limits(negative_ttl=300.0, dns_error_ttl=30.0, failure_backoff=300.0)
NOW = 1_000_000.0


def walk(
    state: MemoryState,
    txt: TxtOutcome | None = None,
    *,
    record_id: str | None = None,
    cached_id: str | None = None,
    fetch: FetchOutcome | None = None,
    failure: tuple[str, float] | None = None,
    refresh: bool = False,
) -> list[str]:
    """What a lookup does, step by step, given what memory holds and how its I/O ends (the resolver's order)."""
    if state in (MemoryState.FRESH, MemoryState.NEGATIVE):
        return ["memory"]
    steps = ["txt"]
    live = cached_id if state is MemoryState.CHECK_DUE else None  # an expired policy counts as none
    assert txt is not None
    decision = after_txt(txt, record_id, live, refresh=refresh, limits=LIMITS)
    if decision.next is Next.FETCH:
        assert decision.fetch_id is not None
        if failure is not None and backed_off(*failure, decision.fetch_id, NOW):
            fetch = FetchOutcome.BACKED_OFF
        else:
            steps.append(f"fetch {decision.fetch_id}")
        assert fetch is not None
        decision = after_fetch(fetch, cached=live is not None)
    assert decision.status is not None
    steps.append(decision.status.value + (" (cached policy)" if decision.use_cached else ""))
    return steps


# docs/resolver.md, "Cache states": | state of d | a lookup does |
CACHE_STATES = [
    pytest.param(  # fresh (checked < txt_check_interval ago, age < max_age) | nothing: memory answers
        memory_state(NOW, expires_at=NOW + 100, fresh_until=NOW + 50, negative_until=None),
        {}, ["memory"], id="fresh",
    ),
    pytest.param(  # live, TXT check due | one TXT query; same id -> cached
        memory_state(NOW, expires_at=NOW + 100, fresh_until=NOW - 1, negative_until=None),
        {"txt": TxtOutcome.RECORD, "record_id": "1", "cached_id": "1"}, ["txt", "cached (cached policy)"],
        id="live-same-id",
    ),
    pytest.param(  # live, TXT check due | new id -> fetch
        memory_state(NOW, expires_at=NOW + 100, fresh_until=NOW - 1, negative_until=None),
        {"txt": TxtOutcome.RECORD, "record_id": "2", "cached_id": "1", "fetch": FetchOutcome.FETCHED},
        ["txt", "fetch 2", "fetched"], id="live-new-id",
    ),
    pytest.param(  # live, new id failed within failure_backoff | TXT query, no fetch: cached
        memory_state(NOW, expires_at=NOW + 100, fresh_until=NOW - 1, negative_until=None),
        {"txt": TxtOutcome.RECORD, "record_id": "2", "cached_id": "1", "failure": ("2", NOW + 10)},
        ["txt", "cached (cached policy)"], id="live-new-id-backed-off",
    ),
    pytest.param(  # expired (age >= max_age) | dropped; TXT query and fetch as if never seen
        memory_state(NOW, expires_at=NOW, fresh_until=NOW - 1, negative_until=None),
        {"txt": TxtOutcome.RECORD, "record_id": "1", "cached_id": "1", "fetch": FetchOutcome.FETCHED},
        ["txt", "fetch 1", "fetched"], id="expired",
    ),
    pytest.param(  # negatively cached | nothing: no-policy / dns-error / fetch-error from memory
        memory_state(NOW, expires_at=None, fresh_until=None, negative_until=NOW + 1),
        {}, ["memory"], id="negative",
    ),
    pytest.param(  # unknown | TXT query, then fetch
        memory_state(NOW, expires_at=None, fresh_until=None, negative_until=None),
        {"txt": TxtOutcome.RECORD, "record_id": "1", "fetch": FetchOutcome.FETCHED}, ["txt", "fetch 1", "fetched"],
        id="unknown",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("state", "io", "steps"), CACHE_STATES)
def test_every_row_of_the_cache_state_table(state: MemoryState, io: dict[str, object], steps: list[str]) -> None:
    assert walk(state, **io) == steps  # type: ignore[arg-type]


def test_memory_states() -> None:
    def state(**times: float | None) -> MemoryState:
        values = {"expires_at": None, "fresh_until": None, "negative_until": None} | times
        return memory_state(NOW, **values)

    assert state(expires_at=NOW + 1, fresh_until=NOW + 1) is MemoryState.FRESH
    assert state(expires_at=NOW + 1, fresh_until=NOW) is MemoryState.CHECK_DUE  # a whole-second edge: due
    assert state(expires_at=NOW, fresh_until=NOW) is MemoryState.EXPIRED  # never used, not even as a fallback
    assert state(negative_until=NOW + 1) is MemoryState.NEGATIVE
    assert state(negative_until=NOW) is MemoryState.UNKNOWN  # a negative answer lives its TTL, no longer
    assert state(expires_at=NOW, negative_until=NOW + 1) is MemoryState.NEGATIVE
    assert state() is MemoryState.UNKNOWN


# The module's table after the TXT query: (TXT outcome, record id, cached id, refresh, store unread) -> decision.
AFTER_TXT = [
    (TxtOutcome.RECORD, "1", "1", False, False, Decision(Next.ANSWER, LookupStatus.CACHED, use_cached=True,
                                                         mark_checked=True)),
    (TxtOutcome.RECORD, "2", "1", False, False, Decision(Next.FETCH, fetch_id="2")),
    (TxtOutcome.RECORD, "1", None, False, False, Decision(Next.FETCH, fetch_id="1")),
    (TxtOutcome.NO_RECORD, None, "1", False, False, Decision(Next.ANSWER, LookupStatus.CACHED, use_cached=True,
                                                             mark_checked=True)),
    (TxtOutcome.NO_RECORD, None, None, False, False, Decision(Next.ANSWER, LookupStatus.NO_POLICY,
                                                              remember=Remember.NO_POLICY)),
    (TxtOutcome.DNS_ERROR, None, "1", False, False, Decision(Next.ANSWER, LookupStatus.CACHED, use_cached=True,
                                                             mark_checked=True)),
    (TxtOutcome.DNS_ERROR, None, None, False, False, Decision(Next.ANSWER, LookupStatus.DNS_ERROR,
                                                              remember=Remember.DNS_ERROR)),
    (TxtOutcome.LOCAL_ERROR, None, "1", False, False, Decision(Next.ANSWER, LookupStatus.CACHED, use_cached=True)),
    (TxtOutcome.LOCAL_ERROR, None, None, False, False, Decision(Next.ANSWER, LookupStatus.LOCAL_ERROR, defer=True)),
    # a proactive refresh fetches a live policy again whatever the TXT query said (a local failure aside)
    (TxtOutcome.RECORD, "1", "1", True, False, Decision(Next.FETCH, fetch_id="1")),
    (TxtOutcome.RECORD, "2", "1", True, False, Decision(Next.FETCH, fetch_id="2")),
    (TxtOutcome.NO_RECORD, None, "1", True, False, Decision(Next.FETCH, fetch_id="1", mark_checked=True)),
    (TxtOutcome.DNS_ERROR, None, "1", True, False, Decision(Next.FETCH, fetch_id="1", mark_checked=True)),
    (TxtOutcome.LOCAL_ERROR, None, "1", True, False, Decision(Next.ANSWER, LookupStatus.CACHED, use_cached=True)),
    # the store could not be read on a memory miss: never "no policy"
    (TxtOutcome.NO_RECORD, None, None, False, True, Decision(Next.ANSWER, LookupStatus.LOCAL_ERROR, defer=True,
                                                             store_unread=True)),
    (TxtOutcome.DNS_ERROR, None, None, False, True, Decision(Next.ANSWER, LookupStatus.LOCAL_ERROR, defer=True,
                                                             store_unread=True)),
    (TxtOutcome.RECORD, "1", None, False, True, Decision(Next.FETCH, fetch_id="1")),  # a fetch is authoritative
]  # fmt: skip


@pytest.mark.parametrize(("txt", "record_id", "cached_id", "refresh", "unread", "expected"), AFTER_TXT)
def test_after_txt(
    txt: TxtOutcome, record_id: str | None, cached_id: str | None, refresh: bool, unread: bool, expected: Decision
) -> None:
    assert after_txt(txt, record_id, cached_id, refresh=refresh, store_unread=unread, limits=LIMITS) == expected


def test_dns_error_defer_mode() -> None:
    deferring = Limits(defer_dns_errors=True)
    assert after_txt(TxtOutcome.DNS_ERROR, None, None, limits=deferring) == Decision(
        Next.ANSWER, LookupStatus.DNS_ERROR, remember=Remember.DNS_ERROR, defer=True
    )
    assert after_txt(TxtOutcome.DNS_ERROR, None, "1", limits=deferring).use_cached  # a cached policy always wins
    assert not after_txt(TxtOutcome.NO_RECORD, None, None, limits=deferring).defer  # "none published" is an answer


# The module's table after the fetch: (outcome, live policy cached) -> decision.
AFTER_FETCH = [
    (FetchOutcome.FETCHED, True, Decision(Next.ANSWER, LookupStatus.FETCHED)),
    (FetchOutcome.FETCHED, False, Decision(Next.ANSWER, LookupStatus.FETCHED)),
    (FetchOutcome.FAILED, True, Decision(Next.ANSWER, LookupStatus.CACHED, use_cached=True, mark_checked=True,
                                         back_off=True, report=True)),  # §3.3 MUST: the cached policy applies
    (FetchOutcome.FAILED, False, Decision(Next.ANSWER, LookupStatus.FETCH_ERROR, remember=Remember.FETCH_ERROR,
                                          back_off=True, report=True)),
    (FetchOutcome.BACKED_OFF, True, Decision(Next.ANSWER, LookupStatus.CACHED, use_cached=True, mark_checked=True)),
    (FetchOutcome.BACKED_OFF, False, Decision(Next.ANSWER, LookupStatus.FETCH_ERROR, remember=Remember.FETCH_ERROR)),
    (FetchOutcome.LOCAL_ERROR, True, Decision(Next.ANSWER, LookupStatus.CACHED, use_cached=True)),
    (FetchOutcome.LOCAL_ERROR, False, Decision(Next.ANSWER, LookupStatus.LOCAL_ERROR, defer=True)),
]  # fmt: skip


@pytest.mark.parametrize(("fetch", "cached", "expected"), AFTER_FETCH)
def test_after_fetch(fetch: FetchOutcome, cached: bool, expected: Decision) -> None:
    assert after_fetch(fetch, cached=cached) == expected


def test_a_failed_fetch_with_the_store_unread_is_a_local_error_but_still_backed_off_and_reported() -> None:
    assert after_fetch(FetchOutcome.FAILED, cached=False, store_unread=True) == Decision(
        Next.ANSWER, LookupStatus.LOCAL_ERROR, defer=True, back_off=True, report=True, store_unread=True
    )
    assert after_fetch(FetchOutcome.FETCHED, cached=False, store_unread=True).status is LookupStatus.FETCHED


def test_back_off_is_per_id_and_ends() -> None:
    assert backed_off("2", NOW + 1, "2", NOW)
    assert not backed_off("2", NOW, "2", NOW)  # over at retry_after
    assert not backed_off("2", NOW + 1, "3", NOW)  # a newer id is tried at once
    assert not backed_off(None, None, "2", NOW)


def test_ttls_and_the_one_refresh_formula() -> None:
    assert [LIMITS.ttl(r) for r in Remember] == [300.0, 30.0, 30.0]
    assert Limits(dns_error_ttl=600, failure_backoff=300).ttl(Remember.FETCH_ERROR) == 300
    assert refresh_after(86_400 * 7, 86_400) == 86_400  # a day (§10.2 suggests daily)
    assert refresh_after(3600, 86_400) == 2700  # three quarters of a short max_age
    assert not caches(0) and caches(1)  # max_age 0 applies once, never cached (C5)


def test_the_decision_module_is_pure() -> None:
    """It imports nothing from asyncio, aiohttp, dnspython or the stores (issue 14)."""
    source = Path(__file__).resolve().parent.parent / "mtasts" / "decision.py"
    imported = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(("." * node.level) + (node.module or ""))
    assert imported <= {"__future__", "enum", "dataclasses"}, imported
