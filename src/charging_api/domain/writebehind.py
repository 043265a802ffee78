"""Documents written behind their changes: batched, a short delay after the first change.

:class:`WriteBehind` keeps the newest body of each document of one kind that is not written
yet and writes them all ``delay`` seconds after the first change, in one transaction
(``Store.put_documents``); a body changed again before that is written once. Readers see the
unwritten bodies first (:meth:`WriteBehind.get`, :meth:`WriteBehind.overlay`), so the delay is
invisible to them within this process.

Trade-off: what a crash within ``delay`` of a change loses is lost from storage; the caller
decides what may be written this way (``SessionService``: only what it can compute again,
docs/sessions.md, "Durability"). A batch that cannot be written (storage down) is kept, newer
bodies winning, and written by the next :meth:`WriteBehind.write` or :meth:`kick`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from charging_api.domain.ports import Store

log = logging.getLogger(__name__)


class WriteBehind:
    """The unwritten documents of one kind and the one task that writes them."""

    def __init__(self, store: Store, kind: str, delay: float) -> None:
        self._store = store
        self.kind = kind
        self.delay = delay  # seconds from the first unwritten change to its batch
        self._unwritten: dict[str, dict[str, Any]] = {}
        self._writing: dict[str, dict[str, Any]] = {}  # the batch on its way to storage
        self._lock = asyncio.Lock()  # one batch at a time: commits in the order of changes
        self._writer: asyncio.Task[None] | None = None  # the one in its delay, if any
        self._tasks: set[asyncio.Task[None]] = set()  # every writer until it is done

    @property
    def unwritten(self) -> int:
        return len(self._unwritten) + len(self._writing)

    def get(self, key: str) -> dict[str, Any] | None:
        """A copy of the newest unwritten body of ``key``; None when storage has the newest."""
        found = self._unwritten.get(key) or self._writing.get(key)
        return None if found is None else dict(found)

    def overlay(self, stored: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """``stored`` (every document of the kind, as read) with the unwritten bodies on top."""
        stored.update(self._writing)
        stored.update(self._unwritten)
        return stored

    def put(self, key: str, body: dict[str, Any]) -> None:
        """Write ``body`` behind: within ``delay``, with the other changes of that moment."""
        self._unwritten[key] = body
        self.kick()

    def kick(self) -> None:
        """Start the writer if something waits and none runs (a failed batch: the next try)."""
        if self._unwritten and self._writer is None:
            task = self._writer = asyncio.create_task(self._write_later())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _write_later(self) -> None:
        try:
            await asyncio.sleep(self.delay)
        finally:
            self._writer = None  # from here on a change needs a writer of its own
        await self.write()

    async def write(self, *, strict: bool = False) -> None:
        """Write every unwritten body now, one transaction per batch. A batch that fails is
        kept and logged; ``strict`` raises its error too (for a caller whose reply promises
        the write)."""
        async with self._lock:
            while self._unwritten:
                self._writing, self._unwritten = self._unwritten, {}
                try:
                    await self._store.put_documents(self.kind, self._writing)
                except Exception as exc:
                    log.warning(
                        "writing %d %s document(s) failed (kept for the next try): %s",
                        len(self._writing),
                        self.kind,
                        exc,
                    )
                    self._unwritten = {**self._writing, **self._unwritten}
                    if strict:
                        raise
                    return
                finally:
                    self._writing = {}

    async def flush(self) -> None:
        """Write what waits without waiting out the delay, and let a running batch finish
        (tests, shutdown)."""
        if self._writer is not None:
            self._writer.cancel()  # in its delay: written below instead
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.write()
