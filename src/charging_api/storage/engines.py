"""How a store operation reaches the database: one unit of work, one hop.

A store operation is written once, as a plain function over a synchronous SQLAlchemy
``Connection`` (a *unit of work*), and handed to a :class:`Database`, which runs it:

* SQLite (:class:`SqliteDatabase`): on a thread, with the standard library's driver. Every
  unit of work is *one* hand-off to a thread and back (key lookups: none, see ``lookup``). The async driver we used before
  (aiosqlite) made a hand-off per cursor call (execute, fetch, close, commit ...), about five
  per statement; under the command benchmark those hops and the GIL traffic they cause were
  most of the server's CPU. Writes go to a single writer thread (SQLite has one writer;
  queueing them here instead of in SQLite's busy handler keeps them in order and never sees
  "database is locked"); reads go to a small pool of reader threads, which WAL lets run beside
  the writer.
* PostgreSQL (:class:`AsyncDatabase`): through the asyncpg driver on the event loop; the unit
  of work runs in SQLAlchemy's greenlet bridge (``AsyncConnection.run_sync``), so it awaits the
  network without a thread.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, Protocol, TypeVar

from sqlalchemy import URL, Connection, Engine, create_engine, event
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import StaticPool

log = logging.getLogger(__name__)
T = TypeVar("T")
#: A store operation: runs inside one transaction (writes) or on one connection (reads), and
#: returns plain values (rows fetched, never a live cursor).
Work = Callable[[Connection], T]

_SQLITE_PRAGMAS = (
    "journal_mode=WAL",  # readers don't block the writer
    "synchronous=FULL",  # a commit that returned survives power loss
    "foreign_keys=ON",
    "busy_timeout=5000",  # another process's write: wait for it instead of failing
    # No checkpoint inside a commit: the checkpointer thread does them (see SqliteDatabase).
    "wal_autocheckpoint=0",
    "journal_size_limit=67108864",  # a WAL file grown under load is cut back to 64 MiB
)
#: Seconds between background WAL checkpoints.
CHECKPOINT_INTERVAL = 1.0
#: Reader threads: enough for the app's queries to overlap a write; reads are short.
SQLITE_READERS = 4


class Database(Protocol):
    """Runs units of work; ``dialect`` is ``"sqlite"`` or ``"postgresql"``."""

    dialect: str

    async def read(self, work: Work[T]) -> T: ...

    async def lookup(self, work: Work[T]) -> T:
        """A read of a row or two by key: may run on the caller's thread (see SQLite)."""
        ...

    async def write(self, work: Work[T]) -> T:
        """``work`` inside one transaction, committed before this returns."""
        ...

    async def dispose(self) -> None: ...


def open_database(url: URL, engine_kwargs: dict[str, Any] | None = None) -> Database:
    backend = url.get_backend_name()
    if backend == "sqlite":
        return SqliteDatabase(url, engine_kwargs)
    if backend == "postgresql":
        return AsyncDatabase(url, engine_kwargs)
    raise ValueError(f"unsupported database {backend!r}")


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # The driver's own implicit BEGIN/COMMIT is off: transactions are exactly the ones we
    # open (SQLAlchemy's documented recipe for pysqlite).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    for pragma in _SQLITE_PRAGMAS:
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def _begin_immediate(conn: Connection) -> None:
    # Take the write lock at BEGIN, not at the first write: a read-then-write unit of work
    # then cannot fail half-way on a lock another process took in between.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


class SqliteDatabase:
    """SQLite on threads: one writer with group commit, :data:`SQLITE_READERS` readers.

    *Group commit*: with ``synchronous=FULL`` every commit is an fsync, and one writer means
    commits queue behind each other. The writer thread therefore takes every unit of work
    waiting when it gets to run, runs each inside a SAVEPOINT (so one that fails is rolled back
    alone and gets its own error) and commits them all with one fsync. A unit of work's caller
    is answered only after that commit, so "returned" still means "on disk". Under no load a
    batch is one unit and nothing changes; under load fsyncs no longer grow with the write rate.

    *Checkpoints* (copying the WAL back into the database file, with its own fsync) would
    otherwise run inside whichever commit crosses SQLite's threshold, every second or so under
    load: that commit took up to 65 ms and every write queued behind it. A checkpointer thread
    runs a PASSIVE checkpoint every ``checkpoint_interval`` instead, beside the writer.
    """

    dialect = "sqlite"

    def __init__(
        self,
        url: URL,
        engine_kwargs: dict[str, Any] | None = None,
        checkpoint_interval: float = CHECKPOINT_INTERVAL,
    ) -> None:
        url = url.set(drivername="sqlite+pysqlite")
        kwargs: dict[str, Any] = dict(engine_kwargs or {})
        connect_args = {"check_same_thread": False, **kwargs.pop("connect_args", {})}
        in_memory = url.database in (None, "", ":memory:")
        if in_memory:  # one connection, or every thread would see its own empty database
            self._writer = create_engine(
                url, poolclass=StaticPool, connect_args=connect_args, **kwargs
            )
            self._reader = self._writer
        else:
            self._writer = create_engine(
                url, pool_size=1, max_overflow=0, connect_args=connect_args, **kwargs
            )
            # One connection per reader thread, plus lookup()'s and the checkpointer's.
            self._reader = create_engine(
                url,
                pool_size=SQLITE_READERS + 2,
                max_overflow=0,
                connect_args=connect_args,
                **kwargs,
            )
        for engine in {self._writer, self._reader}:
            event.listen(engine, "connect", _on_sqlite_connect)
        event.listen(self._writer, "begin", _begin_immediate)
        self._writes: queue.SimpleQueue[_Write[Any] | None] = queue.SimpleQueue()
        self._write_thread = threading.Thread(
            target=self._write_loop, name="sqlite-write", daemon=True
        )
        self._write_thread.start()
        # In memory, reads share the one connection, so they go through the writer's queue.
        self._read_threads = (
            None
            if in_memory
            else ThreadPoolExecutor(SQLITE_READERS, thread_name_prefix="sqlite-read")
        )
        self._inline: Connection | None = None  # for lookup(), on the event loop's thread
        self.checkpoints = 0  # completed background checkpoints (for tests and curiosity)
        self._stopping = threading.Event()
        # Started with the first write (the schema's): the file may not exist before.
        self._checkpointer: threading.Thread | None = None
        if not in_memory:
            self._checkpointer = threading.Thread(
                target=self._checkpoint_loop,
                args=(checkpoint_interval,),
                name="sqlite-checkpoint",
                daemon=True,
            )

    async def read(self, work: Work[T]) -> T:
        if self._read_threads is None:
            return await self.write(work)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._read_threads, _run_read, self._reader, work)

    async def lookup(self, work: Work[T]) -> T:
        """On the event loop's own thread, on a connection kept for it.

        A key lookup in SQLite's page cache takes ~20 µs here; the hop to a reader thread and
        back costs ~150 µs of wall time and, on a busy two-core box, a wait for the thread to
        be scheduled: the hop, not the read, was the start command's latency. WAL readers never
        wait for the writer, so this does not block on writes. Range reads (histories,
        samples) still go to the reader threads.
        """
        if self._read_threads is None:
            return await self.write(work)
        if self._inline is None:
            self._inline = self._reader.connect()
        try:
            return work(self._inline)
        finally:
            self._inline.rollback()  # end the implicit read (keeps no snapshot open)

    async def write(self, work: Work[T]) -> T:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._writes.put(_Write(work, future))
        result = await future
        if self._checkpointer is not None and self._checkpointer.ident is None:
            self._checkpointer.start()
        return result

    async def dispose(self) -> None:
        if self._inline is not None:
            self._inline.close()
            self._inline = None

        def shut() -> None:
            self._stopping.set()
            if self._checkpointer is not None and self._checkpointer.ident is not None:
                self._checkpointer.join()
            self._writes.put(None)
            self._write_thread.join()
            if self._read_threads is not None:
                self._read_threads.shutdown(wait=True)
            self._writer.dispose()
            self._reader.dispose()

        await asyncio.to_thread(shut)

    def _checkpoint_loop(self, interval: float) -> None:
        """PASSIVE checkpoints: never wait for a lock, never hold up the writer."""
        with self._reader.connect() as conn:
            while not self._stopping.wait(interval):
                try:
                    conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").close()
                    self.checkpoints += 1
                except Exception:  # a busy or failing disk: the next round tries again
                    log.warning("WAL checkpoint failed", exc_info=True)
                finally:
                    conn.rollback()

    def _write_loop(self) -> None:
        """The writer thread: batches of units of work, one commit per batch."""
        while True:
            first = self._writes.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while not stop:
                try:
                    item = self._writes.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                else:
                    batch.append(item)
            self._run_batch(batch)
            if stop:
                return

    def _run_batch(self, batch: list[_Write[Any]]) -> None:
        try:
            with self._writer.connect() as conn:
                transaction = conn.begin()
                if len(batch) == 1:
                    kept = batch[0].run(conn)
                else:
                    kept = False
                    for write in batch:
                        savepoint = conn.begin_nested()
                        if write.run(conn):
                            savepoint.commit()
                            kept = True
                        else:
                            savepoint.rollback()
                if kept:
                    transaction.commit()
                else:
                    transaction.rollback()
        except BaseException as exc:  # BEGIN or COMMIT failed: nothing of the batch is kept
            for write in batch:
                write.fail(exc)
        for write in batch:
            write.answer()


class _Write(Generic[T]):
    """A unit of work in the writer's queue and what became of it."""

    __slots__ = ("_error", "_future", "_result", "_work")

    def __init__(self, work: Work[T], future: asyncio.Future[T]) -> None:
        self._work = work
        self._future = future
        self._result: T | None = None
        self._error: BaseException | None = None

    def run(self, conn: Connection) -> bool:
        """Run the work; False (error kept for the caller) if it raised."""
        try:
            self._result = self._work(conn)
        except Exception as exc:
            self._error = exc
            return False
        return True

    def fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc

    def answer(self) -> None:
        """Hand the outcome to the waiting coroutine (called on the writer thread)."""
        loop = self._future.get_loop()
        if self._error is not None:
            loop.call_soon_threadsafe(_set_exception, self._future, self._error)
        else:
            loop.call_soon_threadsafe(_set_result, self._future, self._result)


def _set_result(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():  # the caller may have been cancelled meanwhile
        future.set_result(result)


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


def _run_read(engine: Engine, work: Work[T]) -> T:
    with engine.connect() as conn:
        return work(conn)


class AsyncDatabase:
    """A server database through an async driver: units of work run on the event loop."""

    dialect = "postgresql"

    def __init__(self, url: URL, engine_kwargs: dict[str, Any] | None = None) -> None:
        # A server can go away under us; a pre-ping costs a round trip but finds dead
        # connections before a write does.
        kwargs = {"pool_pre_ping": True, **(engine_kwargs or {})}
        self._engine = create_async_engine(url, **kwargs)

    async def read(self, work: Work[T]) -> T:
        async with self._engine.connect() as conn:
            return await conn.run_sync(work)

    async def lookup(self, work: Work[T]) -> T:
        return await self.read(work)

    async def write(self, work: Work[T]) -> T:
        async with self._engine.begin() as conn:
            return await conn.run_sync(work)

    async def dispose(self) -> None:
        await self._engine.dispose()
