"""SQLiteStore: the embedded default — one file, WAL mode, shared safely by several processes.

The standard library's ``sqlite3`` runs on one dedicated thread (never on the event loop). The schema is
versioned with ``PRAGMA user_version``; a file from a newer mtasts is refused rather than misread. Rows that do
not parse are skipped (and logged once); the resolver then simply refetches those domains.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import MTASTSError
from ._base import SessionCount, StoredPolicy

__all__ = ["SCHEMA_VERSION", "SQLiteStore", "default_path"]

log = logging.getLogger("mtasts.stores")

SCHEMA_VERSION = 2  # 1: policies; 2: + tlsrpt_counts, tlsrpt_reports (created on open: an upgrade is additive)
_COLUMNS = (
    "domain, policy_id, policy_text, fetched_at, checked_at, expires_at, failed_id, failure, failure_detail, "
    "retry_after"
)
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS policies (
    domain TEXT PRIMARY KEY NOT NULL,
    policy_id TEXT, policy_text TEXT, fetched_at REAL, checked_at REAL, expires_at REAL,
    failed_id TEXT, failure TEXT, failure_detail TEXT, retry_after REAL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tlsrpt_counts (
    day INTEGER NOT NULL, domain TEXT NOT NULL, key TEXT NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (day, domain, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tlsrpt_reports (
    day INTEGER NOT NULL, domain TEXT NOT NULL, state TEXT NOT NULL, PRIMARY KEY (day, domain)
) WITHOUT ROWID;
PRAGMA user_version = {SCHEMA_VERSION};
"""
_SCAN_BATCH = 5000


def default_path() -> Path:
    """``$XDG_DATA_HOME/mtasts/policies.sqlite3`` (default ``~/.local/share/mtasts/policies.sqlite3``)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "mtasts" / "policies.sqlite3"


def _row(values: tuple[Any, ...]) -> StoredPolicy | None:
    """A StoredPolicy from a row, or None when the row holds something else (foreign or corrupt data)."""
    try:
        domain, policy_id, text, fetched, checked, expires, failed_id, failure, detail, retry = values
        for value in (domain, policy_id, text, failed_id, failure, detail):
            if value is not None and not isinstance(value, str):
                return None
        times = [None if t is None else float(t) for t in (fetched, checked, expires, retry)]
        if not domain:
            return None
        return StoredPolicy(domain, policy_id, text, times[0], times[1], times[2], failed_id, failure, detail, times[3])
    except (ValueError, TypeError):
        return None


class SQLiteStore:
    """A :class:`~mtasts.stores.PolicyStore` in an SQLite file (default: :func:`default_path`)."""

    def __init__(self, path: str | os.PathLike[str] | None = None, *, timeout: float = 5.0) -> None:
        self.path = Path(path) if path is not None else default_path()
        self._timeout = timeout
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="mtasts-sqlite")
        self._connection: sqlite3.Connection | None = None
        self._skipped = 0
        self._closed = False

    # -- the worker thread ------------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            if str(self.path) != ":memory:":
                self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(self.path, timeout=self._timeout, isolation_level=None)
            try:
                version = connection.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise MTASTSError(
                        f"{self.path}: schema version {version} is newer than this mtasts ({SCHEMA_VERSION})"
                    )
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA synchronous=NORMAL")
                connection.executescript(_SCHEMA)
            except BaseException:
                connection.close()
                raise
            self._connection = connection
        return self._connection

    def _reset(self) -> None:
        """Drop the connection after an error, so the next call reconnects."""
        if self._connection is not None:
            try:
                self._connection.close()
            finally:
                self._connection = None

    def _get(self, domain: str) -> StoredPolicy | None:
        rows = self._query(f"SELECT {_COLUMNS} FROM policies WHERE domain = ?", (domain,))
        return self._checked(_row(rows[0])) if rows else None

    def _write(self, puts: Sequence[StoredPolicy], deletes: Sequence[str]) -> None:
        self._execute(
            [
                ("DELETE FROM policies WHERE domain = ?", [(d,) for d in deletes]),
                (
                    f"INSERT OR REPLACE INTO policies ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (r.domain, r.policy_id, r.policy_text, r.fetched_at, r.checked_at, r.expires_at,
                         r.failed_id, r.failure, r.failure_detail, r.retry_after)
                        for r in puts
                    ],
                ),
            ],
            many=True,
        )  # fmt: skip

    def _scan_batch(self, after: str | None) -> tuple[list[StoredPolicy], str | None]:
        query = f"SELECT {_COLUMNS} FROM policies WHERE domain > ? ORDER BY domain LIMIT ?"
        rows = self._query(query, (after or "", _SCAN_BATCH))
        parsed = [self._checked(_row(values)) for values in rows]
        last = rows[-1][0] if len(rows) == _SCAN_BATCH else None
        return [row for row in parsed if row is not None], (str(last) if last is not None else None)

    def _checked(self, row: StoredPolicy | None) -> StoredPolicy | None:
        if row is None:
            self._skipped += 1
            if self._skipped == 1:
                log.warning("%s: skipping rows that cannot be read (foreign or corrupt data)", self.path)
        return row

    def _close(self) -> None:
        self._reset()

    def _execute(self, statements: Sequence[tuple[str, Sequence[Any]]], many: bool = False) -> None:
        """Run statements in one immediate transaction."""
        connection = self._connect()
        try:
            connection.execute("BEGIN IMMEDIATE")
            for sql, parameters in statements:
                if many:
                    connection.executemany(sql, parameters)
                else:
                    connection.execute(sql, parameters)
            connection.execute("COMMIT")
        except sqlite3.Error:
            with contextlib.suppress(sqlite3.Error):
                connection.execute("ROLLBACK")
            self._reset()
            raise

    def _query(self, sql: str, parameters: Sequence[Any]) -> list[tuple[Any, ...]]:
        try:
            return self._connect().execute(sql, parameters).fetchall()
        except sqlite3.Error:
            self._reset()
            raise

    def _add_counts(self, counts: Sequence[SessionCount]) -> None:
        self._execute(
            [(
                "INSERT INTO tlsrpt_counts (day, domain, key, count) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (day, domain, key) DO UPDATE SET count = count + excluded.count",
                list(counts),
            )],
            many=True,
        )  # fmt: skip

    def _counts(self, day: int | None) -> list[SessionCount]:
        sql = "SELECT day, domain, key, count FROM tlsrpt_counts"
        rows = self._query(sql + " WHERE day = ?", (day,)) if day is not None else self._query(sql, ())
        return [
            (int(d), str(domain), str(key), int(n))
            for d, domain, key, n in rows
            if isinstance(d, int) and isinstance(domain, str) and isinstance(key, str) and isinstance(n, int)
        ]

    # -- the async interface ----------------------------------------------------------------------------------

    async def _run(self, function: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    async def get(self, domain: str) -> StoredPolicy | None:
        result: StoredPolicy | None = await self._run(self._get, domain)
        return result

    async def write(self, puts: Sequence[StoredPolicy], deletes: Sequence[str]) -> None:
        await self._run(self._write, list(puts), list(deletes))

    async def scan(self) -> AsyncIterator[StoredPolicy]:
        after: str | None = None
        while True:
            rows, after = await self._run(self._scan_batch, after)
            for row in rows:
                yield row
            if after is None:
                return

    async def add_session_counts(self, counts: Sequence[SessionCount]) -> None:
        if counts:
            await self._run(self._add_counts, list(counts))

    async def session_counts(self, day: int | None = None) -> list[SessionCount]:
        result: list[SessionCount] = await self._run(self._counts, day)
        return result

    async def delete_session_counts(self, day: int, policy_domain: str) -> None:
        await self._run(
            self._execute, [("DELETE FROM tlsrpt_counts WHERE day = ? AND domain = ?", (day, policy_domain))]
        )

    async def get_report_state(self, day: int, policy_domain: str) -> str | None:
        rows = await self._run(self._query, "SELECT state FROM tlsrpt_reports WHERE day = ? AND domain = ?",
                               (day, policy_domain))  # fmt: skip
        return str(rows[0][0]) if rows and isinstance(rows[0][0], str) else None

    async def put_report_state(self, day: int, policy_domain: str, state: str | None) -> None:
        statement: tuple[str, tuple[Any, ...]]
        if state is None:
            statement = ("DELETE FROM tlsrpt_reports WHERE day = ? AND domain = ?", (day, policy_domain))
        else:
            statement = ("INSERT OR REPLACE INTO tlsrpt_reports (day, domain, state) VALUES (?, ?, ?)",
                         (day, policy_domain, state))  # fmt: skip
        await self._run(self._execute, [statement])

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._run(self._close)
        self._executor.shutdown(wait=True)

    @property
    def skipped_rows(self) -> int:
        return self._skipped
