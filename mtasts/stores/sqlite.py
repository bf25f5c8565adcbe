"""SQLiteStore: the embedded default — one file, WAL mode, shared safely by several processes.

The standard library's ``sqlite3`` runs on one dedicated thread (never on the event loop). The schema is
versioned with ``PRAGMA user_version``; a file from a newer mtasts is refused rather than misread. Rows that fail
:func:`~mtasts.stores.validate_row` are skipped (and logged once); the resolver then simply refetches those
domains.

Local faults must not lose the cached policies (a lost enforce policy is a downgrade window, RFC 8461 §10):

* **Read-only.** When the file, its directory or the filesystem is not writable, the store opens the file
  read-only (``mode=ro``; ``immutable=1`` when the WAL's ``-shm`` cannot be created) and restores everything;
  writes raise (a write outage for the resolver), and each write tries the read-write open again first, so
  fixing the permissions is picked up by itself.
* **Damaged file.** :meth:`SQLiteStore.scan` salvages what it can read around damaged pages (see
  :meth:`SQLiteStore._read_batch`), logs one summary, and — if writable — rebuilds the file from the salvaged
  rows, keeping the damaged one aside as ``<name>.damaged-<UTC time>``. A ``get`` whose row sits on a damaged
  page raises :class:`~mtasts.stores.DamagedRowError` ("unknown, try again later"), not an outage.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import errno
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..errors import MTASTSError
from ._base import DamagedRowError, SessionCount, StoredPolicy, validate_row

__all__ = ["SCHEMA_VERSION", "SQLiteStore", "SalvageReport", "default_path"]

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
_INSERT = f"INSERT OR REPLACE INTO policies ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_SCAN_AFTER = f"SELECT {_COLUMNS} FROM policies WHERE domain > ? ORDER BY domain LIMIT ?"
_SCAN_FROM = f"SELECT {_COLUMNS} FROM policies WHERE domain >= ? ORDER BY domain LIMIT ?"
_PROBE = "SELECT domain FROM policies WHERE domain >= ? ORDER BY domain LIMIT 1"
_SCAN_BATCH = 5000

# sqlite3 primary result codes (https://sqlite.org/rescode.html)
_SQLITE_PERM, _SQLITE_READONLY, _SQLITE_CORRUPT, _SQLITE_CANTOPEN, _SQLITE_NOTADB = 3, 8, 11, 14, 26
_UNWRITABLE_CODES = (_SQLITE_PERM, _SQLITE_READONLY, _SQLITE_CANTOPEN)
_UNWRITABLE_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS)

# Salvage bounds: a badly damaged file must end the scan quickly, never loop.
_MAX_REGIONS = 64  # damaged regions skipped per scan; then the scan ends
_MAX_PROBES = 2048  # galloping probes per region (7 per character position of the key before the damage)
_MAX_BISECTIONS = 64  # then bisection probes (the downward read finds the exact boundary)
_GROW = 8  # characters added to the probe width when bisection has resolved the current one
_MAX_WALK = 100_000  # rows read downwards per region
_MAX_SALVAGE_ROWS = 10_000_000  # rows read in salvage mode per scan
_MAX_KEY = 254  # probe strings: a 253-character name plus one position
_BASE = 127  # probe digits: chr(1)..chr(127) (ASCII without NUL; SQLite compares TEXT with memcmp)


def default_path() -> Path:
    """``$XDG_DATA_HOME/mtasts/policies.sqlite3`` (default ``~/.local/share/mtasts/policies.sqlite3``)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "mtasts" / "policies.sqlite3"


def _row(values: tuple[Any, ...]) -> StoredPolicy:
    """A StoredPolicy from a row; ValueError (from :func:`validate_row`) for foreign or corrupt data."""
    return validate_row(StoredPolicy(*values))


def _code(error: BaseException) -> int | None:
    code = getattr(error, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def _is_corrupt(error: BaseException) -> bool:
    """The storage itself is damaged (a bad page), as opposed to locked, unreadable or unwritable."""
    if not isinstance(error, sqlite3.DatabaseError):
        return False
    return _code(error) in (_SQLITE_CORRUPT, _SQLITE_NOTADB) or "malformed" in str(error)


def _is_unwritable(error: BaseException) -> bool:
    """The file, its directory or the filesystem cannot be written (worth a read-only open)."""
    if isinstance(error, sqlite3.Error):
        return _code(error) in _UNWRITABLE_CODES
    return isinstance(error, OSError) and error.errno in _UNWRITABLE_ERRNOS


# -- probe strings: fixed-width numbers in base 127 (digit d is chr(d + 1)), so "key + delta" and midpoints
#    between keys are integer arithmetic. A number's string drops trailing chr(1) (digit 0), so a key shorter
#    than the width is exactly representable and the mapping preserves order.


def _key_number(key: str, width: int) -> int:
    """The number of ``key`` (cut to ``width``); a character above ASCII rounds the rest up (UTF-8 sorts it
    after every ASCII character)."""
    number = 0
    for position in range(width):
        if position >= len(key):
            return number * int(_BASE ** (width - position))
        code = ord(key[position])
        if code > _BASE:
            rest = int(_BASE ** (width - position))
            return number * rest + rest - 1
        number = number * _BASE + max(code - 1, 0)
    return number


def _number_key(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, digit = divmod(number, _BASE)
        digits.append(chr(digit + 1))
    return "".join(reversed(digits)).rstrip("\x01")


@dataclasses.dataclass(frozen=True, slots=True)
class SalvageReport:
    """What a scan of a damaged file could read (:attr:`SQLiteStore.salvage`).

    ``regions`` are the unreadable stretches of the policies table, each as (last readable key before, first
    readable key after); None is the start or the end of the table. Rows inside a region are lost.
    """

    rows: int  # valid rows the scan handed out
    regions: tuple[tuple[str | None, str | None], ...]
    complete: bool  # False: a bound or an unskippable region ended the scan early
    rebuilt: bool = False  # the file was rebuilt from the salvaged rows
    damaged_copy: Path | None = None  # where the damaged file was kept


@dataclasses.dataclass(slots=True)
class _Scan:
    """A scan's position: the next batch starts after (or, just past a damaged region, at) ``after``."""

    after: str = ""
    inclusive: bool = False
    done: bool = False
    salvaging: bool = False  # damage was met: read row by row and skip damaged regions
    size: int = _SCAN_BATCH  # rows per salvaging batch
    complete: bool = True
    rows: int = 0  # valid rows handed out
    salvaged_reads: int = 0
    regions: list[tuple[str | None, str | None]] = dataclasses.field(default_factory=list)
    identity: tuple[int, int] | None = None  # the damaged file's (st_dev, st_ino)


class SQLiteStore:
    """A :class:`~mtasts.stores.PolicyStore` in an SQLite file (default: :func:`default_path`).

    :attr:`read_only` is True while the file is open read-only (see the module docs); :attr:`damaged` while the
    file in use is known to hold damaged pages; :attr:`salvage` describes the last scan that met damage.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, timeout: float = 5.0) -> None:
        self.path = Path(path) if path is not None else default_path()
        self._timeout = timeout
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="mtasts-sqlite")
        self._connection: sqlite3.Connection | None = None
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the file the connection has open
        self._skipped = 0
        self._closed = False
        self.read_only = False
        self.damaged = False
        self.salvage: SalvageReport | None = None

    # -- the worker thread: connecting ------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self._connection is not None:
            if self._identity is None or self._identity == self._file_identity():
                return self._connection
            log.info("%s was replaced (rebuilt by another process?): reconnecting", self.path)
            self._reset()
        try:
            connection = self._open_writable()
        except (sqlite3.Error, OSError) as error:
            if not _is_unwritable(error) or not os.path.isfile(self.path):
                raise
            try:
                connection = self._open_read_only()
            except (sqlite3.Error, OSError) as read_only_error:
                log.debug("%s: the read-only open failed too: %s", self.path, read_only_error)
                raise error from None
            if not self.read_only:
                log.warning(
                    "%s is not writable (%s): opened read-only — cached policies are served, new ones are not "
                    "saved until it is writable again", self.path, error,
                )  # fmt: skip
            self.read_only = True
        else:
            if self.read_only:
                log.info("%s is writable again", self.path)
            self.read_only = False
        self._connection = connection
        self._identity = self._file_identity()
        return connection

    def _file_identity(self) -> tuple[int, int] | None:
        """Which file the path names now (a rebuild by another process replaces it); None for ``:memory:``."""
        if str(self.path) == ":memory:":
            return None
        try:
            stat = os.stat(self.path)
        except OSError:
            return self._identity  # gone or unreadable: keep the connection (as before this check existed)
        return stat.st_dev, stat.st_ino

    def _open_writable(self) -> sqlite3.Connection:
        if str(self.path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, timeout=self._timeout, isolation_level=None)
        try:
            self._check_version(connection)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.executescript(_SCHEMA)
        except BaseException:
            connection.close()
            raise
        return connection

    def _open_read_only(self) -> sqlite3.Connection:
        """``mode=ro``; then ``immutable=1`` when even that cannot read (a WAL file in a read-only directory
        without its ``-shm``: SQLite cannot create the shared-memory index, so it must not look for one)."""
        uri = f"file:{quote(os.fspath(self.path.absolute()), safe='/')}?mode=ro"
        try:
            return self._open_uri(uri)
        except sqlite3.Error as error:
            if not _is_unwritable(error):
                raise
        return self._open_uri(uri + "&immutable=1")

    def _open_uri(self, uri: str) -> sqlite3.Connection:
        connection = sqlite3.connect(uri, uri=True, timeout=self._timeout, isolation_level=None)
        try:
            self._check_version(connection)
        except BaseException:
            connection.close()
            raise
        return connection

    def _check_version(self, connection: sqlite3.Connection) -> None:
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise MTASTSError(f"{self.path}: schema version {version} is newer than this mtasts ({SCHEMA_VERSION})")

    def _reset(self) -> None:
        """Drop the connection after an error, so the next call reconnects."""
        if self._connection is not None:
            try:
                self._connection.close()
            finally:
                self._connection = None
                self._identity = None

    # -- the worker thread: reading and writing ---------------------------------------------------------------

    def _get(self, domain: str) -> StoredPolicy | None:
        connection = self._connect()
        try:
            rows = connection.execute(f"SELECT {_COLUMNS} FROM policies WHERE domain = ?", (domain,)).fetchall()
        except sqlite3.Error as error:
            if not _is_corrupt(error):
                self._reset()
                raise
            self.damaged = True
            backwards = self._get_backwards(connection, domain)
            if backwards is None:  # this row is unknown, the store is not down (DamagedRowError's contract)
                raise DamagedRowError(f"{self.path}: the row of {domain[:100]!r} is damaged: {error}") from error
            rows = backwards
        parsed = self._parsed(rows)
        return parsed[0] if parsed else None

    @staticmethod
    def _get_backwards(connection: sqlite3.Connection, domain: str) -> list[tuple[Any, ...]] | None:
        """The row of ``domain`` read by a backward seek, or None: a b-tree separator row is readable that way
        although a forward seek for it descends into the damaged page on its left."""
        sql = f"SELECT {_COLUMNS} FROM policies WHERE domain <= ? ORDER BY domain DESC LIMIT 1"
        try:
            rows = connection.execute(sql, (domain,)).fetchall()
        except sqlite3.DatabaseError:
            return None
        return rows if rows and rows[0][0] == domain else None

    def _write(self, puts: Sequence[StoredPolicy], deletes: Sequence[str]) -> None:
        delete = ("DELETE FROM policies WHERE domain = ?", [(domain,) for domain in deletes])
        self._execute([delete, (_INSERT, [_values(row) for row in puts])], many=True)

    def _parsed(self, rows: list[tuple[Any, ...]]) -> list[StoredPolicy]:
        """The valid rows; the others counted and (the first one) logged."""
        parsed = []
        for values in rows:
            try:
                parsed.append(_row(values))
            except ValueError as error:
                self._skipped += 1
                if self._skipped == 1:
                    log.warning("%s: skipping rows that cannot be read (foreign or corrupt data; first: %.100r: %s)",
                                self.path, values[0], error)  # fmt: skip
        return parsed

    def _scan_batch(self, scan: _Scan) -> list[StoredPolicy]:
        connection = self._connect()
        try:
            rows = self._parsed(self._read_batch(connection, scan))
        except sqlite3.Error:  # not damage (that is salvaged): locked, I/O... an outage, as before
            self._reset()
            raise
        scan.rows += len(rows)
        return rows

    def _read_batch(self, connection: sqlite3.Connection, scan: _Scan) -> list[tuple[Any, ...]]:
        """The next raw rows of a scan, advancing ``scan``.

        Undamaged: one ``LIMIT`` query per batch, as fast as it gets. Once a batch meets a damaged page, the scan
        salvages: a batch is read row by row, which keeps every row before the damage but the last one (the
        sqlite3 module steps one row ahead, and that step fails); one-row batches then read up to the damage
        itself, and :meth:`_skip_damage` finds the first readable key above it, where the scan goes on. Keys must
        keep increasing; :data:`_MAX_REGIONS` and :data:`_MAX_SALVAGE_ROWS` bound the work on a badly damaged file.
        """
        if not scan.salvaging:
            try:
                rows = connection.execute(_SCAN_AFTER, (scan.after, _SCAN_BATCH)).fetchall()
            except sqlite3.Error as error:
                if not _is_corrupt(error):
                    raise
                scan.salvaging, scan.identity = True, self._identity
                self.damaged = True
            else:
                last = rows[-1][0] if len(rows) == _SCAN_BATCH else None
                if isinstance(last, str):
                    scan.after = last
                else:  # the end (or a non-text key: those sort after all text and are not valid rows)
                    scan.done = True
                return rows
        rows = []
        damaged = end = False
        try:
            cursor = connection.execute(_SCAN_FROM if scan.inclusive else _SCAN_AFTER, (scan.after, scan.size))
            previous = None if scan.inclusive else scan.after
            for values in cursor:
                key = values[0]
                if not isinstance(key, str):
                    end = True  # non-text keys sort after all text, and are not valid rows
                    break
                if previous is not None and key <= previous:
                    damaged = True  # out of order: the b-tree is lying
                    break
                rows.append(values)
                previous = key
        except sqlite3.Error as error:
            if not _is_corrupt(error):
                raise
            damaged = True
        if rows:
            scan.after, scan.inclusive = rows[-1][0], False
        scan.salvaged_reads += len(rows)
        if scan.salvaged_reads >= _MAX_SALVAGE_ROWS:
            scan.done, scan.complete = True, False
        elif not damaged:
            scan.done = end or len(rows) < scan.size
            scan.size = _SCAN_BATCH
        elif scan.size > 1:
            scan.size = 1  # read up to the damage one row at a time
        elif len(scan.regions) >= _MAX_REGIONS:
            scan.done, scan.complete = True, False
        else:  # the row after ``scan.after`` is unreadable
            below, found, exhausted = self._skip_damage(connection, scan.after)
            below.reverse()
            scan.regions.append((scan.after or None, below[0][0] if below else found))
            scan.salvaged_reads += len(below)
            rows.extend(below)
            scan.size = _SCAN_BATCH
            scan.complete = scan.complete and not exhausted
            if found is None:
                scan.done = True
            else:
                scan.after, scan.inclusive = found, True
        return rows

    def _skip_damage(
        self, connection: sqlite3.Connection, after: str
    ) -> tuple[list[tuple[Any, ...]], str | None, bool]:
        """Past the damage that follows ``after``: the rows just above it (read downwards), the key to go on from
        (itself readable; None: the end), and whether a bound ran out (some readable rows may have been missed).

        Probes ``domain >= p LIMIT 1`` seek through the b-tree, so a probe fails when its path crosses a damaged
        page. Probe strings p above ``after`` are numbers (see :func:`_key_number`): galloping (the step
        doubling) until a probe succeeds, then bisecting between the last failing and the first succeeding
        probe a bounded number of times, widening the probes once the current width is resolved (so a short
        ``after``, such as the start of the table, still narrows down into long keys). The key found is readable
        but may lie past the first readable row, so the rows below it are read downwards until the damage stops
        that read (:meth:`_walk_down`): that finds the boundary without resolving every character by bisection,
        and it reads the b-tree's separator rows, which a forward seek for them cannot reach (it descends into
        the damaged child page on their left).
        """
        probes = 0

        def probe(number: int) -> tuple[bool, str | None]:
            nonlocal probes
            probes += 1
            try:
                rows = connection.execute(_PROBE, (_number_key(number, width),)).fetchall()
            except sqlite3.DatabaseError as error:
                if _is_corrupt(error):
                    return False, None
                raise
            key = rows[0][0] if rows else None
            return True, key if isinstance(key, str) else None  # no text keys left: nothing valid is left

        width = min(len(after) + 1, _MAX_KEY)
        low = _key_number(after, width)  # "fails": the damage follows it
        top = int(_BASE**width) - 1
        high: int | None = None
        key: str | None = None
        step = 1
        while low < top and probes < _MAX_PROBES:
            candidate = min(low + step, top)
            ok, key = probe(candidate)
            if ok:
                high = candidate
                break
            low, step = candidate, step * 2
        if high is None and low < top:
            return [], None, True  # the budget ran out: the region cannot be skipped
        bisections = 0
        while high is not None and bisections < _MAX_BISECTIONS:
            if high - low <= 1:  # resolved at this width: go on with finer probes (the keys may be longer)
                if width >= _MAX_KEY:
                    break
                grow = min(_GROW, _MAX_KEY - width)
                low, high, width = low * int(_BASE**grow), high * int(_BASE**grow), width + grow
            bisections += 1
            middle = (low + high) // 2
            ok, found = probe(middle)
            if ok:
                high, key = middle, found if found is not None else key  # (None would contradict ``key``)
            else:
                low = middle
        rows, exhausted = self._walk_down(connection, after, key)
        return rows, key, exhausted

    def _walk_down(
        self, connection: sqlite3.Connection, after: str, key: str | None
    ) -> tuple[list[tuple[Any, ...]], bool]:
        """The rows in (``after``, ``key``) read downwards from ``key`` (from the end of the table if None) until
        damage stops the read, in descending order; and whether :data:`_MAX_WALK` ran out first."""
        below = f"SELECT {_COLUMNS} FROM policies WHERE domain > ? AND domain < ? ORDER BY domain DESC LIMIT ?"
        last = f"SELECT {_COLUMNS} FROM policies WHERE domain > ? ORDER BY domain DESC LIMIT ?"
        rows: list[tuple[Any, ...]] = []
        smallest, size = key, _SCAN_BATCH
        while len(rows) < _MAX_WALK:
            got, damaged = 0, False
            try:
                if smallest is None:
                    cursor = connection.execute(last, (after, size))
                else:
                    cursor = connection.execute(below, (after, smallest, size))
                for values in cursor:
                    got += 1
                    found = values[0]
                    if not isinstance(found, str):
                        continue  # (non-text keys sort after all text: they come first from the end)
                    if smallest is not None and found >= smallest:
                        damaged = True  # out of order: the b-tree is lying
                        break
                    rows.append(values)
                    smallest = found
            except sqlite3.DatabaseError as error:
                if not _is_corrupt(error):
                    raise
                damaged = True
            if not damaged:
                if got < size:
                    return rows, False  # read down to ``after`` itself
                size = _SCAN_BATCH
            elif size > 1:
                size = 1  # the row just above the damage (the sqlite3 module's read-ahead lost it)
            else:
                return rows, False
        return rows, True

    def _close(self) -> None:
        self._reset()

    def _execute(self, statements: Sequence[tuple[str, Sequence[Any]]], many: bool = False) -> None:
        """Run statements in one immediate transaction (on a read-only file this raises: a write outage)."""
        if self.read_only:
            self._reset()  # try the read-write open again first: the permissions may have been fixed meanwhile
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

    # -- the worker thread: after a scan met damage -----------------------------------------------------------

    def _salvaged(self, scan: _Scan) -> None:
        """Log the salvage, and rebuild the file from what can be read (if writable)."""
        regions = ", ".join(f"{start or '(start)'} .. {end or '(end)'}" for start, end in scan.regions[:10])
        more = f" and {len(scan.regions) - 10} more" if len(scan.regions) > 10 else ""
        log.warning(
            "%s is damaged: salvaged %d rows; unreadable regions between the keys %s%s — the rows there are lost "
            "(and refetched)%s", self.path, scan.rows, regions or "(none found)", more,
            "" if scan.complete else "; the scan ended early (too much damage)",
        )  # fmt: skip
        report = SalvageReport(scan.rows, tuple(scan.regions), scan.complete)
        if scan.regions and not self.read_only and scan.identity is not None:
            copy = self._rebuild(scan.identity)
            if copy is not None:
                report = dataclasses.replace(report, rebuilt=True, damaged_copy=copy)
        self.salvage = report

    def _rebuild(self, damaged: tuple[int, int]) -> Path | None:
        """Write every readable row into a new file next to the damaged one and move it into place, keeping the
        damaged file as ``<name>.damaged-<UTC time>`` for the operator. Returns that name, or None (logged).

        Other processes sharing the file keep their connection to the damaged one until their next call, which
        sees the path name another file and reconnects (:meth:`_connect`).
        """
        temporary = self.path.with_name(f"{self.path.name}.rebuild-{os.getpid()}")
        aside = self._aside_name()
        linked = moved = False
        try:
            connection = self._connect()
            connection.execute("BEGIN IMMEDIATE")  # no other writer while we copy (their writes would be lost)
            if self._identity != damaged or self._file_identity() != damaged:
                log.info("%s was replaced meanwhile (rebuilt by another process?): not rebuilt here", self.path)
                self._reset()
                return None
            copied = self._copy_into(connection, temporary)
            _fsync(temporary)
            try:
                os.link(self.path, aside)  # the damaged file stays in place until the new one replaces it
                linked = True
            except OSError:
                pass
            with contextlib.suppress(sqlite3.Error):
                connection.execute("ROLLBACK")
            self._reset()
            if not linked:
                os.rename(self.path, aside)
                moved = True
            for suffix in ("-wal", "-shm"):  # the damaged file's: they must not be applied to the new one
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{self.path}{suffix}")
            os.replace(temporary, self.path)
            linked = moved = False
            _fsync(self.path.parent)
        except (OSError, sqlite3.Error) as error:
            log.warning("%s: could not rebuild the damaged file (%s: %s); the salvaged rows are served",
                        self.path, type(error).__name__, error)  # fmt: skip
            self._reset()
            with contextlib.suppress(OSError):
                if moved:
                    os.rename(aside, self.path)  # put it back
                elif linked:
                    os.unlink(aside)  # the damaged file is still in place
            for suffix in ("", "-journal", "-wal", "-shm"):
                with contextlib.suppress(OSError):
                    os.unlink(f"{temporary}{suffix}")
            return None
        self.damaged = False
        log.warning("%s rebuilt with %d rows; the damaged file is kept as %s", self.path, copied, aside)
        try:
            self._connect()
        except (sqlite3.Error, OSError) as error:  # the next call tries again (and reports an outage)
            log.warning("%s: reconnecting after the rebuild failed: %s", self.path, error)
        return aside

    def _aside_name(self) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        aside = self.path.with_name(f"{self.path.name}.damaged-{stamp}")
        number = 1
        while aside.exists():
            aside = self.path.with_name(f"{self.path.name}.damaged-{stamp}-{number}")
            number += 1
        return aside

    def _copy_into(self, connection: sqlite3.Connection, temporary: Path) -> int:
        """Every readable valid row (policies salvaged as a scan does; the TLS-RPT tables up to any damage)."""
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        new = sqlite3.connect(temporary, isolation_level=None)
        copied = 0
        try:
            new.executescript(_SCHEMA)
            new.execute("BEGIN")
            scan = _Scan()
            while not scan.done:
                valid = []
                for values in self._read_batch(connection, scan):
                    with contextlib.suppress(ValueError):
                        valid.append(_row(values))
                new.executemany(_INSERT, [_values(row) for row in valid])
                copied += len(valid)
            for table, columns in (
                ("tlsrpt_counts", "day, domain, key, count"),
                ("tlsrpt_reports", "day, domain, state"),
            ):
                rows = []
                try:
                    for values in connection.execute(f"SELECT {columns} FROM {table}"):
                        rows.append(values)
                except sqlite3.Error as error:
                    log.warning(
                        "%s: %s: kept %d rows, the rest cannot be read (%s)", self.path, table, len(rows), error
                    )
                marks = ", ".join("?" * len(columns.split(", ")))
                new.executemany(f"INSERT OR REPLACE INTO {table} ({columns}) VALUES ({marks})", rows)
            new.execute("COMMIT")
            new.execute("PRAGMA journal_mode=WAL")
        finally:
            new.close()
        return copied

    # -- the async interface ----------------------------------------------------------------------------------

    async def _run(self, function: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    async def get(self, domain: str) -> StoredPolicy | None:
        result: StoredPolicy | None = await self._run(self._get, domain)
        return result

    async def write(self, puts: Sequence[StoredPolicy], deletes: Sequence[str]) -> None:
        await self._run(self._write, list(puts), list(deletes))

    async def scan(self) -> AsyncIterator[StoredPolicy]:
        scan = _Scan()
        while not scan.done:
            rows: list[StoredPolicy] = await self._run(self._scan_batch, scan)
            for row in rows:
                yield row
        if scan.salvaging:
            await self._run(self._salvaged, scan)

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


def _values(row: StoredPolicy) -> tuple[Any, ...]:
    return (row.domain, row.policy_id, row.policy_text, row.fetched_at, row.checked_at, row.expires_at,
            row.failed_id, row.failure, row.failure_detail, row.retry_after)  # fmt: skip


def _fsync(path: Path) -> None:
    """Flush a file (or a directory: the rename in it) to disk, so a crash cannot leave a half-written store."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
