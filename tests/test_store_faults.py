"""Local store faults must never weaken a policy (docs/stores.md, "When the store fails"): rows that fail the one
validation rule, a read-only file or directory, a damaged file — on real SQLite files, no mocks.

Read-only is made real in a child process: a mount namespace with the directory (or file) bind-mounted
read-only (tests run as root, so permissions alone would not stop a write); where that is not permitted, the
child runs as user nobody with the permissions taken away; the tests skip (saying why) only if neither works.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import glob
import json
import logging
import math
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import mtasts
from mtasts import LookupStatus, parse_policy
from mtasts.stores import DamagedRowError, SQLiteStore, StoredPolicy, validate_row
from mtasts.testing import World

from ._redis import RedisServer, redis_server
from .conftest import FakeClock

NOW = 1_800_000_000.0
POLICY = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.mx.example.net\r\nmax_age: 604800\r\n"
ENFORCE = "version: STSv1\nmode: enforce\nmx: mx.example.com\nmax_age: 86400\n"
TIME_COLUMNS = ("fetched_at", "checked_at", "expires_at", "retry_after")


def policy_row(i: int) -> StoredPolicy:
    """A realistic row: a cached enforce policy, and for every seventh domain a failed refresh with its back-off."""
    row = StoredPolicy(f"d{i:04d}.example", f"2025{i:04d}", POLICY, NOW - i, NOW - i / 2, NOW - i + 604_800.0)
    if i % 7 == 0:
        row = dataclasses.replace(row, failed_id="20260101", failure="sts-policy-fetch-error",
                                  failure_detail="HTTP 503 from mta-sts.example", retry_after=NOW + 600.0)  # fmt: skip
    return row


async def write_rows(path: Path, rows: list[StoredPolicy]) -> None:
    store = SQLiteStore(path)
    await store.write(rows, [])
    await store.aclose()


def raw_insert(path: Path, values: list[tuple[Any, ...]]) -> None:
    """Rows put in behind the store's back (another program, an older version, a damaged disk)."""
    with contextlib.closing(sqlite3.connect(path)) as raw, raw:
        raw.executemany("INSERT INTO policies VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", values)


def values_of(row: StoredPolicy) -> tuple[Any, ...]:
    return dataclasses.astuple(row)


# -- 1. the validation rule ------------------------------------------------------------------------------------


GOOD = StoredPolicy("example.com", "20240101", POLICY, NOW, NOW + 5, NOW + 86_400, "2", "sts-webpki-invalid", "x",
                    NOW + 60)  # fmt: skip


@pytest.mark.parametrize(
    "row",
    [
        GOOD,
        StoredPolicy("failure-only.example", failed_id="9", failure="sts-policy-fetch-error", retry_after=NOW),
        StoredPolicy("checked-only.example", checked_at=0.0),
        StoredPolicy("a" * 253, "1", POLICY, 0.0, None, 0.0),  # longest name; expires == fetched is fine
        StoredPolicy("late.example", "1", POLICY, NOW, NOW, 2.0**32 - 1),
    ],
)
def test_validate_row_passes_good_rows_unchanged(row: StoredPolicy) -> None:
    assert validate_row(row) is row


def test_validate_row_converts_ints_to_floats() -> None:
    row = validate_row(StoredPolicy("example.com", "1", POLICY, 100, 150, 86_500, "2", None, None, 400))
    assert row == StoredPolicy("example.com", "1", POLICY, 100.0, 150.0, 86_500.0, "2", None, None, 400.0)
    assert all(type(getattr(row, name)) is float for name in TIME_COLUMNS)


@pytest.mark.parametrize("column", TIME_COLUMNS)
@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (math.inf, "not finite"),
        (-math.inf, "not finite"),
        (math.nan, "not finite"),
        (-1.0, "out of range"),
        (-1, "out of range"),
        (2.0**32, "out of range"),
        (2**32, "out of range"),
        (1e300, "out of range"),
        (10**400, "out of range"),  # float() of it would raise OverflowError
        (True, "not a number"),
        ("1800000000", "not a number"),
        ("Infinity", "not a number"),
    ],
)
def test_validate_row_rejects_bad_times(column: str, value: Any, reason: str) -> None:
    with pytest.raises(ValueError, match=f"{column} is {reason}"):
        validate_row(dataclasses.replace(GOOD, **{column: value}))


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"domain": ""}, "domain"),
        ({"domain": "a" * 254}, "domain"),
        ({"domain": 42}, "domain"),
        ({"domain": None}, "domain"),
        ({"policy_id": 42}, "policy_id is not a string"),
        ({"policy_text": b"version: STSv1"}, "policy_text is not a string"),
        ({"failed_id": 1.5}, "failed_id is not a string"),
        ({"failure": ["x"]}, "failure is not a string"),
        ({"failure_detail": 7}, "failure_detail is not a string"),
        ({"policy_id": None}, "without its policy_id"),
        ({"fetched_at": None}, "without its policy_id, fetched_at"),
        ({"expires_at": None}, "expires_at"),
        ({"expires_at": NOW - 1}, "expires_at is before fetched_at"),
        ({"retry_after": None}, "failed_id without retry_after"),
    ],
)
def test_validate_row_rejects_missing_or_inconsistent_pieces(changes: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        validate_row(dataclasses.replace(GOOD, **changes))


#: What a time column may hold in a damaged or foreign file: text SQLite keeps as text, and REAL values.
BAD_TIMES: list[tuple[str, Any]] = [
    ("inf-text", "Infinity"),
    ("minus-inf-text", "-Infinity"),
    ("nan-text", "NaN"),
    ("inf-param", math.inf),
    ("huge", 1e300),
]


async def test_sqlite_skips_rows_with_bad_times(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "policies.sqlite3"
    good = [policy_row(i) for i in range(0, 30, 3)]
    await write_rows(path, good)
    bad: list[str] = []
    values = []
    for label, value in BAD_TIMES:
        for column in TIME_COLUMNS:
            domain = f"{label}-{column.replace('_', '-')}.example"
            bad.append(domain)
            values.append(values_of(dataclasses.replace(GOOD, domain=domain, **{column: value})))
    raw_insert(path, values)
    with contextlib.closing(sqlite3.connect(path)) as raw:  # the file really holds what the test means
        kinds = dict(raw.execute("SELECT domain, typeof(checked_at) FROM policies").fetchall())
    assert kinds["inf-text-checked-at.example"] == "text" and kinds["inf-param-checked-at.example"] == "real"

    store = SQLiteStore(path)
    with caplog.at_level(logging.WARNING, logger="mtasts"):
        for domain in bad:
            assert await store.get(domain) is None, domain
        assert [row async for row in store.scan()] == sorted(good, key=lambda row: row.domain)
        for row in good:
            assert await store.get(row.domain) == row
    assert store.skipped_rows == 2 * len(bad)
    assert sum("cannot be read" in record.getMessage() for record in caplog.records) == 1  # logged once
    await store.aclose()


async def test_resolver_starts_and_serves_around_non_finite_rows(world: World, tmp_path: Path) -> None:
    """Such a row once ended start-up with OverflowError; now it is skipped and its domain fetched again."""
    clock = FakeClock()
    path = tmp_path / "policies.sqlite3"
    cached = parse_policy(ENFORCE)
    await write_rows(path, [StoredPolicy("good.example", "1", cached.to_text(), clock.now, clock.now,
                                         clock.now + 86_400)])  # fmt: skip
    raw_insert(path, [values_of(StoredPolicy("bad.example", "1", cached.to_text(), clock.now, clock.now,
                                             clock.now + 86_400))])  # fmt: skip
    with contextlib.closing(sqlite3.connect(path)) as raw, raw:
        raw.execute("UPDATE policies SET checked_at = 'Infinity', fetched_at = ? WHERE domain = 'bad.example'",
                    (math.inf,))  # fmt: skip
    good = world.publish("good.example", ENFORCE, id="1")
    good.txt_failure, good.policy_host_failure = "nxdomain", "servfail"  # an attacker blocks it: the cache must hold
    world.publish("bad.example", ENFORCE, id="1")
    async with world.policy_resolver(clock=clock, store=SQLiteStore(path), fetch_timeout=5) as resolver:
        lookup = await resolver.lookup("good.example")
        assert (lookup.status, lookup.policy) == (LookupStatus.CACHED, cached)
        lookup = await resolver.lookup("bad.example")
        assert (lookup.status, lookup.policy) == (LookupStatus.FETCHED, cached)


async def test_redis_store_uses_the_same_rule() -> None:
    import redis.asyncio

    from mtasts.stores import RedisStore
    from mtasts.stores.redis import FORMAT_VERSION

    server: RedisServer
    async with redis_server() as server:
        raw = redis.asyncio.Redis.from_url(server.url)
        store = RedisStore(server.url)
        try:
            await store.write([GOOD], [])
            base = {"v": FORMAT_VERSION, **dataclasses.asdict(GOOD)}
            foreign = {
                "huge.example": {**base, "domain": "huge.example", "expires_at": 1e300},
                "negative.example": {**base, "domain": "negative.example", "checked_at": -5},
                "backwards.example": {**base, "domain": "backwards.example", "expires_at": NOW - 1},
                "no-backoff.example": {**base, "domain": "no-backoff.example", "retry_after": None},
            }
            for domain, value in foreign.items():
                await raw.set(f"mtasts:policy:{domain}", json.dumps(value))
            for domain in foreign:
                assert await store.get(domain) is None, domain
            assert [row async for row in store.scan()] == [GOOD]
        finally:
            await store.aclose()
            await raw.aclose()


# -- 3. read-only files and directories, for real ---------------------------------------------------------------


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory user nobody can reach (pytest's tmp_path is 0700), for the fallback that needs one."""
    top = Path(tempfile.mkdtemp(prefix="mtasts-faults-"))
    top.chmod(0o755)
    directory = top / "store"
    directory.mkdir()
    yield directory
    for path in (directory, *directory.iterdir()):
        with contextlib.suppress(OSError):
            path.chmod(0o755 if path.is_dir() else 0o644)
    shutil.rmtree(top, ignore_errors=True)


_CHILD_PRELUDE = '''
import asyncio, glob, json, logging, os, sqlite3, subprocess, sys
print("CHILD-STARTED", flush=True)
from mtasts.stores import DamagedRowError, SQLiteStore, StoredPolicy

records = []


class Keep(logging.Handler):
    def emit(self, record):
        records.append(record)


logging.getLogger("mtasts").addHandler(Keep())
logging.getLogger("mtasts").setLevel(logging.DEBUG)
target, fix, spec = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])


def make_writable():
    """What an operator does: remount read-write, or give the write permission back."""
    if fix == "mount":
        subprocess.run(["mount", "-o", "remount,bind,rw", target], check=True)
    else:  # (SQLite created the -wal and -shm with the file's permissions)
        for path in [target, *(glob.glob(target + "-*") if os.path.isfile(target) else [])]:
            os.chmod(path, int(fix, 8))


def warnings(text):
    return [r.getMessage() for r in records if r.levelno == logging.WARNING and text in r.getMessage()]


NEW = StoredPolicy("new.example", "1", spec["policy"], 1.0, 1.0, 2.0)
'''


def run_read_only(target: Path, body: str, spec: dict[str, Any], *, writable_mode: int) -> str:
    """Run ``body`` (after the prelude) in a child that sees ``target`` — a directory or a file — read-only; the
    child prints CHILD-OK when its assertions hold. Returns its output; skips if read-only cannot be made real."""
    script = target.parent / "child.py"
    script.write_text(_CHILD_PRELUDE + body + "\nprint('CHILD-OK')\n")
    script.chmod(0o644)
    command = [sys.executable, str(script), str(target)]
    source = str(Path(mtasts.__file__).resolve().parent.parent)  # the child tests the same code as this process
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")]))}
    mount = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    attempts = []
    result = subprocess.run(["unshare", "-m", "sh", "-c", mount, str(target), *command, "mount", json.dumps(spec)],
                            check=False, capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    if "CHILD-STARTED" not in result.stdout:
        attempts.append(f"unshare -m: {result.stderr.strip()[-200:]}")
        # nobody owns the store (so the child can give the write permission back) and, for a file, its directory
        owned = [target, *(map(Path, glob.glob(f"{target}/*")) if target.is_dir() else [target.parent])]
        for path in owned:
            os.chown(path, 65534, 65534)
        target.chmod(0o555 if target.is_dir() else 0o444)
        nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        result = subprocess.run([*nobody, *command, f"{writable_mode:o}", json.dumps(spec)],
                                check=False, capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
        if "CHILD-STARTED" not in result.stdout:
            attempts.append(f"setpriv as nobody: {result.stderr.strip()[-200:]}")
            pytest.skip("cannot make a directory read-only for real: " + "; ".join(attempts))
    assert result.returncode == 0 and "CHILD-OK" in result.stdout, result.stdout + result.stderr
    return result.stdout


def assert_clean_wal_file(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert not Path(f"{path}-wal").exists() and not Path(f"{path}-shm").exists()  # closed cleanly


_READ_ONLY_BODY = """
async def main():
    store = SQLiteStore(spec["path"])
    rows = [row async for row in store.scan()]
    assert [row.domain for row in rows] == spec["domains"], len(rows)
    for domain in spec["domains"]:
        assert (await store.get(domain)).domain == domain
    assert store.read_only
    assert len(warnings("read-only")) == 1, records
    try:
        await store.write([NEW], [])
    except sqlite3.Error:
        pass
    else:
        raise AssertionError("a write to a read-only store succeeded")
    assert await store.get(spec["domains"][0]) is not None  # read-only again, without a second warning
    assert store.read_only and len(warnings("read-only")) == 1
    if spec["missing"]:  # a file that does not exist and cannot be created: the error propagates as before
        missing = SQLiteStore(spec["missing"])
        try:
            await missing.get("x.example")
        except (sqlite3.Error, OSError):
            pass
        else:
            raise AssertionError("a store was created in a read-only directory")
        finally:
            await missing.aclose()
    make_writable()  # the next write tries the read-write open again, and recovers
    await store.write([NEW], [])
    assert not store.read_only and await store.get("new.example") == NEW
    await store.aclose()


asyncio.run(main())
"""


async def test_read_only_directory_restores_everything(shared_dir: Path) -> None:
    path = shared_dir / "policies.sqlite3"
    rows = [policy_row(i) for i in range(50)]
    await write_rows(path, rows)
    assert_clean_wal_file(path)  # so SQLite cannot create the -shm it needs: the immutable=1 case
    spec = {"path": str(path), "domains": [row.domain for row in rows], "policy": POLICY,
            "missing": str(shared_dir / "missing.sqlite3")}  # fmt: skip
    run_read_only(shared_dir, _READ_ONLY_BODY, spec, writable_mode=0o755)


async def test_read_only_file_restores_everything(shared_dir: Path) -> None:
    path = shared_dir / "policies.sqlite3"
    rows = [policy_row(i) for i in range(50)]
    await write_rows(path, rows)
    assert_clean_wal_file(path)
    spec = {"path": str(path), "domains": [row.domain for row in rows], "policy": POLICY, "missing": None}
    run_read_only(path, _READ_ONLY_BODY, spec, writable_mode=0o644)


# -- 4. a damaged file -----------------------------------------------------------------------------------------


ROWS = 3000


def page_size(data: bytes) -> int:
    size = int.from_bytes(data[16:18], "big")  # the database header (https://sqlite.org/fileformat.html)
    return 65536 if size == 1 else size


def plain_scan_fails(path: Path) -> bool:
    with contextlib.closing(sqlite3.connect(path)) as raw:
        try:
            raw.execute("SELECT * FROM policies ORDER BY domain").fetchall()
        except sqlite3.DatabaseError:
            return True
    return False


def damage_one_page(path: Path, seed: int = 8461) -> int:
    """Overwrite one leaf page of the policies table, well inside the file, with random bytes (seeded).
    Returns the page number; a plain full scan of the table fails afterwards (checked)."""
    data = path.read_bytes()
    size = page_size(data)
    pages = len(data) // size
    rng = random.Random(seed)
    candidates = list(range(max(pages // 4, 5), 3 * pages // 4))
    rng.shuffle(candidates)
    for page in candidates:
        offset = (page - 1) * size
        if data[offset] != 0x0A:  # a leaf page of an index b-tree: a WITHOUT ROWID table's rows
            continue
        path.write_bytes(data[:offset] + rng.randbytes(size) + data[offset + size :])
        if plain_scan_fails(path):
            return page
        path.write_bytes(data)
    raise AssertionError("no page whose damage breaks a plain scan")


def unreadable_domains(path: Path, domains: list[str]) -> list[str]:
    """The domains whose row a plain lookup cannot read."""
    bad = []
    with contextlib.closing(sqlite3.connect(path)) as raw:
        for domain in domains:
            try:
                raw.execute("SELECT * FROM policies WHERE domain = ?", (domain,)).fetchall()
            except sqlite3.DatabaseError:
                bad.append(domain)
    return bad


@pytest.fixture
async def damaged(tmp_path: Path) -> AsyncIterator[tuple[Path, dict[str, StoredPolicy]]]:
    path = tmp_path / "policies.sqlite3"
    rows = {row.domain: row for row in map(policy_row, range(ROWS))}
    await write_rows(path, list(rows.values()))
    with contextlib.closing(sqlite3.connect(path)) as raw, raw:
        raw.execute("INSERT INTO tlsrpt_counts VALUES (20000, 'd0001.example', '{}', 7)")
    damage_one_page(path)
    yield path, rows


def assert_salvaged(salvaged: list[StoredPolicy], rows: dict[str, StoredPolicy]) -> None:
    assert len(salvaged) >= 0.9 * len(rows), len(salvaged)
    assert all(rows[row.domain] == row for row in salvaged)  # only genuine, valid rows
    keys = [row.domain for row in salvaged]
    assert keys == sorted(set(keys))


async def test_damaged_file_is_salvaged_and_rebuilt(
    damaged: tuple[Path, dict[str, StoredPolicy]], caplog: pytest.LogCaptureFixture
) -> None:
    path, rows = damaged
    store = SQLiteStore(path)
    with caplog.at_level(logging.WARNING, logger="mtasts"):
        salvaged = [row async for row in store.scan()]
    assert_salvaged(salvaged, rows)
    assert len(salvaged) < len(rows)  # (the damaged page held rows)
    [summary] = [record.getMessage() for record in caplog.records if "is damaged: salvaged" in record.getMessage()]
    assert f"salvaged {len(salvaged)} rows" in summary and "lost" in summary
    report = store.salvage
    assert report is not None and report.rows == len(salvaged) and report.complete and report.rebuilt
    assert len(report.regions) == 1
    [(before, after)] = report.regions
    assert before is not None and after is not None
    assert {row.domain for row in salvaged} == {d for d in rows if d <= before or d >= after}  # all outside it
    assert not store.damaged and not store.read_only
    assert store.skipped_rows == 0
    # the store goes on working on the rebuilt file
    await store.write([dataclasses.replace(salvaged[0], checked_at=NOW + 1)], [])
    assert (await store.get(salvaged[0].domain)).checked_at == NOW + 1  # type: ignore[union-attr]
    await store.aclose()

    [kept] = glob.glob(f"{path}.damaged-*")
    assert time.strftime("%Y%m%d", time.gmtime()) in kept and plain_scan_fails(Path(kept))  # kept as found
    assert glob.glob(f"{path}-*") == []  # the damaged file's -wal and -shm are gone, the new one's closed
    caplog.clear()
    again = SQLiteStore(path)
    with caplog.at_level(logging.WARNING, logger="mtasts"):
        rescanned = [row async for row in again.scan()]
    assert [row.domain for row in rescanned] == [row.domain for row in salvaged]
    assert again.salvage is None and not again.damaged
    assert [record for record in caplog.records if record.levelno >= logging.WARNING] == []
    assert await again.session_counts() == [(20000, "d0001.example", "{}", 7)]  # TLS-RPT counters copied too
    await again.aclose()
    with contextlib.closing(sqlite3.connect(path)) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_another_store_on_the_file_follows_the_rebuild(damaged: tuple[Path, dict[str, StoredPolicy]]) -> None:
    """Several processes share the file: one rebuilds it, the others' next calls reach the new file."""
    path, rows = damaged
    other = SQLiteStore(path)
    good = next(iter(rows))
    assert await other.get(good) == rows[good]  # connected to the damaged file
    store = SQLiteStore(path)
    salvaged = [row async for row in store.scan()]
    assert store.salvage is not None and store.salvage.rebuilt
    late = StoredPolicy("late.example", "1", POLICY, NOW, NOW, NOW + 60)
    await other.write([late], [])  # into the rebuilt file, not the one kept aside
    fresh = SQLiteStore(path)
    assert await fresh.get("late.example") == late
    assert len([row async for row in fresh.scan()]) == len(salvaged) + 1
    for opened in (other, store, fresh):
        await opened.aclose()


async def test_get_of_a_damaged_row_raises_damaged_row_error(damaged: tuple[Path, dict[str, StoredPolicy]]) -> None:
    path, rows = damaged
    bad = unreadable_domains(path, list(rows))
    assert 0 < len(bad) < 0.1 * len(rows)
    store = SQLiteStore(path)
    for domain in bad[:: max(1, len(bad) // 5)]:
        with pytest.raises(DamagedRowError):
            await store.get(domain)
    assert store.damaged
    good = next(domain for domain in rows if domain not in bad)
    assert await store.get(good) == rows[good]  # the store is not down
    assert await store.get("absent.example") is None
    await store.aclose()


_DAMAGED_READ_ONLY_BODY = """
async def main():
    before = sorted(os.listdir(os.path.dirname(spec["path"])))
    store = SQLiteStore(spec["path"])
    salvaged = [row async for row in store.scan()]
    assert store.read_only and store.damaged
    assert spec["minimum"] <= len(salvaged) < spec["rows"], len(salvaged)
    assert store.salvage is not None and not store.salvage.rebuilt and store.salvage.rows == len(salvaged)
    assert len(warnings("is damaged: salvaged")) == 1
    assert sorted(os.listdir(os.path.dirname(spec["path"]))) == before  # nothing rebuilt, nothing moved aside
    for domain in spec["bad"]:
        try:
            await store.get(domain)
        except DamagedRowError:
            pass
        else:
            raise AssertionError(domain)
    assert (await store.get(spec["good"])).domain == spec["good"]
    await store.aclose()


asyncio.run(main())
"""


async def test_damaged_read_only_file_is_salvaged_without_a_rebuild(
    damaged: tuple[Path, dict[str, StoredPolicy]], shared_dir: Path
) -> None:
    source, rows = damaged
    path = shared_dir / "policies.sqlite3"
    shutil.copy(source, path)
    bad = unreadable_domains(path, list(rows))
    good = next(domain for domain in rows if domain not in bad)
    spec = {"path": str(path), "rows": len(rows), "minimum": int(0.9 * len(rows)), "bad": bad[:5], "good": good,
            "policy": POLICY}  # fmt: skip
    run_read_only(shared_dir, _DAMAGED_READ_ONLY_BODY, spec, writable_mode=0o755)
    assert glob.glob(f"{path}.damaged-*") == []


async def test_a_badly_damaged_file_ends_quickly_with_what_can_be_read(tmp_path: Path) -> None:
    path = tmp_path / "policies.sqlite3"
    rows = {row.domain: row for row in map(policy_row, range(ROWS))}
    await write_rows(path, list(rows.values()))
    data = bytearray(path.read_bytes())
    size = page_size(bytes(data))
    rng = random.Random(1035)
    for page in rng.sample(range(5, len(data) // size), len(data) // size // 5):  # a fifth of the pages
        data[(page - 1) * size : page * size] = rng.randbytes(size)
    path.write_bytes(bytes(data))
    store = SQLiteStore(path)
    begin = time.perf_counter()
    salvaged = [row async for row in store.scan()]
    assert time.perf_counter() - begin < 10.0
    assert 0 < len(salvaged) < len(rows)
    assert all(rows[row.domain] == row for row in salvaged)
    assert store.salvage is not None and len(store.salvage.regions) > 1
    await store.aclose()


# -- the resolver over a damaged, read-only file (issue 12, sections 5 and 6 together) --------------------------

_RESOLVER_BODY = """
import dns.asyncresolver

from mtasts import LookupStatus, PolicyResolver


async def main():
    dns_resolver = dns.asyncresolver.Resolver(configure=False)  # the world's DNS: SERVFAIL for every domain here
    dns_resolver.nameservers, dns_resolver.port, dns_resolver.lifetime = ["127.0.0.1"], spec["dns_port"], 2.0
    store = SQLiteStore(spec["path"])
    resolver = PolicyResolver(dns_resolver=dns_resolver, store=store, clock=lambda: spec["now"],
                              cache_size=spec["cache_size"])
    async with resolver:
        assert store.read_only and store.damaged and not store.salvage.rebuilt
        link = resolver._store
        for domain in spec["kept"]:  # restored (or read through, once evicted from memory): served, DNS failing
            lookup = await resolver.lookup(domain)
            assert (lookup.status, lookup.policy is not None) == (LookupStatus.CACHED, True), (domain, lookup)
        for domain in spec["lost"]:  # on the damaged page: unknown, so "try again later" -- never "no policy"
            lookup = await resolver.lookup(domain)
            assert (lookup.status, lookup.defer) == (LookupStatus.LOCAL_ERROR, True), (domain, lookup)
        assert link.readable, "a damaged row must not mark the store down"
        assert link.damaged >= len(spec["lost"])
        evicted = spec["kept"][0]  # restored first, evicted by the later ones: a read-through after the damage
        assert (await resolver.lookup(evicted)).status is LookupStatus.CACHED
    assert warnings("policy store write failed"), "writes to the read-only file are a write outage"


asyncio.run(main())
"""


async def test_resolver_over_a_damaged_read_only_store_serves_what_it_can_and_defers_the_rest(
    damaged: tuple[Path, dict[str, StoredPolicy]], shared_dir: Path, world: World
) -> None:
    source, rows = damaged
    path = shared_dir / "policies.sqlite3"
    shutil.copy(source, path)
    probe = SQLiteStore(source)  # what a salvage reads (on the fixture's own copy, which it rebuilds)
    salvaged = {row.domain async for row in probe.scan()}
    await probe.aclose()
    lost = [domain for domain in rows if domain not in salvaged]
    kept = [domain for domain in rows if domain in salvaged]
    assert lost and len(kept) >= 0.9 * len(rows)
    spec = {"path": str(path), "now": NOW + 1000.0, "cache_size": len(rows) // 2, "policy": POLICY,
            "kept": [kept[0], *kept[:: len(kept) // 50]], "lost": lost, "dns_port": world.dns_port}  # fmt: skip
    for domain in {*spec["kept"], *lost}:
        world.set_failure(f"_mta-sts.{domain}", "servfail")  # DNS fails for all of them
    # in a thread: the world's DNS server answers on this event loop meanwhile
    await asyncio.to_thread(run_read_only, shared_dir, _RESOLVER_BODY, spec, writable_mode=0o755)
