"""The resolver's side of a persistent store: write-behind batches, outages, restore.

* Writes are queued (the latest state per domain wins) and written by one task in batches, off the lookup path;
  :meth:`StoreLink.flush` writes what is pending now.
* Any exception from the store is an outage — of reads or of writes, each on its own (a read-only or damaged
  file can still be read): logged once (WARNING), then reads are skipped, or writes kept pending, until
  ``retry_after`` seconds have passed; then the store is tried again, and the recovery is logged (INFO).
  Memory keeps serving — enforcement never weakens because a store is down.
* A read that cannot be made (the store is down, failed now, or the row sits on damaged storage:
  :class:`~mtasts.stores.DamagedRowError`, which marks nothing down) raises :class:`StoreUnavailable`: the
  resolver then knows the store *might* hold a policy for the domain, and never answers "no policy" for it.
* Every row from any store passes :func:`~mtasts.stores.validate_row` (third-party stores too); a row that
  fails it is skipped and logged — never fatal, never an outage.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable

from ..errors import LocalError
from ._base import DamagedRowError, PolicyStore, StoredPolicy, validate_row

__all__ = ["StoreLink", "StoreUnavailable"]

log = logging.getLogger("mtasts.stores")


class StoreUnavailable(LocalError):
    """The store could not be read for this lookup: it is down, or the read failed (a local fault)."""


class StoreLink:
    """Wraps a :class:`PolicyStore` for the resolver (see the module docs)."""

    def __init__(
        self,
        store: PolicyStore,
        *,
        retry_after: float = 30.0,
        batch_delay: float = 0.05,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self._retry_after = retry_after
        self._batch_delay = batch_delay
        self._monotonic = monotonic  # outage timing only (not a cache decision)
        self._pending: dict[str, StoredPolicy | None] = {}  # domain -> row to put, or None to delete
        self._writing: list[dict[str, StoredPolicy | None]] = []  # the batches being written now, oldest first
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        # monotonic time until which reads / writes are not tried (None: not down)
        self._down_until: dict[str, float | None] = {"read": None, "write": None}
        self.outages = 0
        self.written = 0
        self.skipped = 0  # rows that failed validate_row
        self.damaged = 0  # reads that met damaged storage
        self.busy = 0  # reads refused by a limit on this host (a full connection queue): no outage

    # -- outage state -------------------------------------------------------------------------------------------

    def _up(self, kind: str) -> bool:
        until = self._down_until[kind]
        return until is None or self._monotonic() >= until

    @property
    def readable(self) -> bool:
        return self._up("read")

    @property
    def writable(self) -> bool:
        return self._up("write")

    @property
    def down(self) -> tuple[str, ...]:
        """``"read"``, ``"write"``: the operations in an outage — their last attempt failed, and none has
        succeeded since (a retry is due once ``retry_after`` has passed; reads are retried on the next lookup)."""
        return tuple(kind for kind, until in self._down_until.items() if until is not None)

    @property
    def pending(self) -> int:
        """Writes waiting for the store."""
        return len(self._pending)

    def _failed(self, kind: str, what: str, exc: BaseException) -> None:
        if self._down_until[kind] is None:
            self.outages += 1
            log.warning(
                "policy store %s failed (%s: %s): serving from memory, retrying %ss every %g s",
                what, type(exc).__name__, exc, kind, self._retry_after,
                extra={"event": "store-down", "operation": kind},
            )  # fmt: skip
        self._down_until[kind] = self._monotonic() + self._retry_after

    def _succeeded(self, kind: str) -> None:
        if self._down_until[kind] is not None:
            extra = {"event": "store-up", "operation": kind}
            if kind == "write":
                log.info("policy store writes work again; %d pending writes follow", len(self._pending), extra=extra)
            else:
                log.info("policy store reads work again", extra=extra)
            self._down_until[kind] = None

    # -- reads --------------------------------------------------------------------------------------------------

    async def get(self, domain: str) -> StoredPolicy | None:
        """The stored row, or None (none stored, or unreadable data: skipped).

        Raises :class:`StoreUnavailable` when the store could not be asked (down, or the read failed).
        """
        if self._deleting(domain):
            return None  # this process deleted the row (a purge, an expiry): never read the old one back
        if not self.readable:
            raise StoreUnavailable("the policy store is down")
        try:
            row = await self.store.get(domain)
        except LocalError as exc:  # our own limit (e.g. the connection pool's queue): this read only
            self.busy += 1
            if self.busy == 1 or self.busy % 1000 == 0:
                log.warning("policy store busy on this host: %s (%d such reads so far)", exc.message, self.busy)
            raise StoreUnavailable(f"the policy store could not be read now ({exc.message})") from None
        except DamagedRowError as exc:  # this row only: the store is not down
            self.damaged += 1
            if self.damaged == 1 or self.damaged % 1000 == 0:
                log.warning("policy store: %s (%d such reads so far): answered as unknown", exc, self.damaged)
            raise StoreUnavailable("the stored row is damaged") from None
        except Exception as exc:
            self._failed("read", "read", exc)
            raise StoreUnavailable(f"the policy store read failed ({type(exc).__name__})") from None
        self._succeeded("read")
        return None if row is None else self._valid(row)

    def _deleting(self, domain: str) -> bool:
        """True while this process's newest write for ``domain`` is a delete not yet stored (pending, or in the
        batch being written): reads then see the delete, not the row it removes (read your own deletes)."""
        pending = self._pending
        if domain in pending:
            return pending[domain] is None
        for batch in reversed(self._writing):
            if domain in batch:
                return batch[domain] is None
        return False

    def _valid(self, row: StoredPolicy) -> StoredPolicy | None:
        try:
            return validate_row(row)
        except Exception as exc:  # a foreign store may hand out anything
            self.skipped += 1
            if self.skipped == 1 or self.skipped % 1000 == 0:
                domain = row.domain[:100] if isinstance(getattr(row, "domain", None), str) else "?"
                log.warning("policy store: skipping an unreadable row for %r (%s; %d so far)", domain, exc,
                            self.skipped)  # fmt: skip
            return None

    async def scan(self) -> AsyncIterator[StoredPolicy]:
        """Every stored row; stops quietly (after logging) if the store fails."""
        if not self.readable:
            return
        try:
            async for row in self.store.scan():
                valid = self._valid(row)
                if valid is not None:
                    yield valid
        except Exception as exc:
            if isinstance(exc, LocalError):  # our own limit: no outage (the rows stay readable one by one)
                log.warning("policy store scan stopped on this host's limit: %s", exc)
            else:
                self._failed("read", "scan", exc)
            return
        self._succeeded("read")

    # -- writes -------------------------------------------------------------------------------------------------

    def put(self, row: StoredPolicy) -> None:
        self._pending[row.domain] = row
        self._kick()

    def delete(self, domain: str) -> None:
        self._pending[domain] = None
        self._kick()

    async def delete_now(self, domain: str) -> bool:
        """Delete ``domain``'s row at once (a purge), not in the next batch: True once written. If the store
        cannot be written, the delete stays pending (retried with the other writes) and False is returned;
        either way this process never reads the old row back (:meth:`get`)."""
        self._pending.pop(domain, None)  # (a put queued earlier is superseded by the delete)
        batch: dict[str, StoredPolicy | None] = {domain: None}
        if not self.writable:
            self.delete(domain)
            return False
        self._writing.append(batch)
        try:
            await self.store.write([], [domain])
        except Exception as exc:
            self._pending.setdefault(domain, None)  # unless something newer came meanwhile
            self._kick()
            if not isinstance(exc, LocalError):
                self._failed("write", "write", exc)
            return False
        finally:
            self._writing.remove(batch)
        self.written += 1
        self._succeeded("write")
        return True

    def _kick(self) -> None:
        self._wake.set()
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    async def flush(self) -> bool:
        """Write everything pending now; True when nothing is left pending."""
        if not self._pending:
            return True
        if not self.writable:
            return False
        batch, self._pending = self._pending, {}
        puts = [row for row in batch.values() if row is not None]
        deletes = [domain for domain, row in batch.items() if row is None]
        self._writing.append(batch)
        try:
            await self.store.write(puts, deletes)
        except Exception as exc:
            for domain, row in batch.items():  # keep them, unless something newer came meanwhile
                self._pending.setdefault(domain, row)
            if not isinstance(exc, LocalError):  # our own limit is no outage: the next write retries
                self._failed("write", "write", exc)
            return False
        finally:
            self._writing.remove(batch)
        self.written += len(batch)
        self._succeeded("write")
        return not self._pending

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(self._batch_delay)  # gather a batch
            if not await self.flush():
                delay = max(0.0, (self._down_until["write"] or 0.0) - self._monotonic())
                await asyncio.sleep(delay)
                self._wake.set()

    async def aclose(self, *, close_store: bool = True) -> None:
        """Stop the writer, make one last attempt to write what is pending, close the store."""
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
            self._writer = None
        self._down_until["write"] = None  # one last try, even during an outage
        if not await self.flush():
            log.warning("policy store: %d writes could not be saved at close", len(self._pending))
        if close_store:
            try:
                await self.store.aclose()
            except Exception as exc:
                log.warning("policy store close failed: %s: %s", type(exc).__name__, exc)
