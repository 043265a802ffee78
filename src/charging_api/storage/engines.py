"""How a store operation reaches the database: one unit of work, no needless hop.

A store operation is written once, as a plain function over a synchronous SQLAlchemy
``Connection`` (a *unit of work*), and handed to a :class:`Database`, which runs it:

* SQLite (:class:`SqliteDatabase`), with the standard library's driver: writes and key lookups
  on the event loop's thread (each a few dozen microseconds), their durability from a thread
  that fsyncs the WAL for many commits at once, range reads on reader threads. Trade-off: no
  async SQLite driver, whose thread hand-off per cursor call (several per statement) and the GIL
  traffic it causes would cost more than the work; in exchange a write from another process
  holds the loop for as long as it holds SQLite's lock (bounded by ``busy_timeout``).
* PostgreSQL (:class:`PostgresDatabase`): through the asyncpg driver on the event loop; the unit
  of work runs in SQLAlchemy's greenlet bridge (``AsyncConnection.run_sync``), so it awaits the
  network without a thread.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import sqlite3
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar

from sqlalchemy import URL, Connection, Engine, create_engine, event
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, StatementError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import StaticPool

log = logging.getLogger(__name__)
T = TypeVar("T")
#: A store operation: runs inside one transaction (writes) or on one connection (reads), and
#: returns plain values (rows fetched, never a live cursor).
Work = Callable[[Connection], T]

_SQLITE_PRAGMAS = (
    "journal_mode=WAL",  # readers don't block the writer
    "synchronous=NORMAL",  # commits don't fsync: SqliteDatabase's syncer does, for many
    "foreign_keys=ON",
    # No checkpoint inside a commit: the checkpointer thread does them (see SqliteDatabase).
    "wal_autocheckpoint=0",
    "journal_size_limit=67108864",  # a WAL file grown under load is cut back to 64 MiB
)
#: Seconds a write waits for another process's write lock (a CLI command, a backup) before it
#: fails; ``?timeout=`` in the database URL sets it. The event loop never blocks on it.
LOCK_TIMEOUT = 5.0
#: The longest pause between two attempts to take a lock another process holds.
_LOCK_POLL_MAX = 0.05
#: Seconds between background WAL checkpoints.
CHECKPOINT_INTERVAL = 1.0
#: Reader threads: enough for the app's queries to overlap a write; reads are short.
SQLITE_READERS = 4


class Database(Protocol):
    """Runs units of work; ``dialect`` is ``"sqlite"`` or ``"postgresql"``; ``name`` says
    which database for people (a file path, or a URL without its password)."""

    dialect: str
    name: str

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
        return PostgresDatabase(url, engine_kwargs)
    raise ValueError(f"unsupported database {backend!r}")


class DatabaseLocked(Exception):
    """Another process held the database's write lock for longer than the lock timeout.

    Nothing was written; the same write may succeed later. The doors answer it as an internal
    error (OCPP ``InternalError``, app ``INTERNAL_ERROR``) and the charge point retries.
    """


#: SQLite result codes (primary, or extended where the extended one says more) -> failure kind.
_SQLITE_KINDS = {
    sqlite3.SQLITE_READONLY | (4 << 8): "missing",  # SQLITE_READONLY_DBMOVED: file deleted/moved
    sqlite3.SQLITE_READONLY: "read_only",
    sqlite3.SQLITE_PERM: "read_only",
    sqlite3.SQLITE_FULL: "disk_full",
    sqlite3.SQLITE_IOERR: "io_error",
    sqlite3.SQLITE_CANTOPEN: "cannot_open",
    sqlite3.SQLITE_CORRUPT: "corrupt",
    sqlite3.SQLITE_NOTADB: "corrupt",
}
_OS_KINDS = {
    errno.ENOENT: "missing",
    errno.ENOTDIR: "missing",  # a file where a directory of the path should be
    errno.EEXIST: "missing",  # (the same, found by mkdir)
    errno.EROFS: "read_only",
    errno.EACCES: "read_only",
    errno.EPERM: "read_only",
    errno.ENOSPC: "disk_full",
    errno.EDQUOT: "disk_full",
}


def failure_kind(exc: BaseException) -> str | None:
    """What kind of storage failure ``exc`` is (``locked``, ``read_only``, ``missing``,
    ``disk_full``, ``io_error``, ``cannot_open``, ``corrupt``, ``unavailable``, ``error``), or
    None when it is not one: the rows were refused (a constraint, bad data) or the caller's
    input or code was at fault. Library exceptions are read here, where they are imported."""
    if isinstance(exc, DatabaseLocked) or is_busy(exc):
        return "locked"
    if isinstance(exc, (IntegrityError, DataError, sqlite3.IntegrityError, sqlite3.DataError)):
        return None
    if isinstance(exc, StatementError) and not isinstance(exc, DBAPIError):
        return None  # a value SQLAlchemy could not bind (the caller's input)
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    if isinstance(orig, sqlite3.Error):
        code = getattr(orig, "sqlite_errorcode", None)
        if code is not None:
            return _SQLITE_KINDS.get(code) or _SQLITE_KINDS.get(code & 0xFF, "error")
        return "error"
    if isinstance(orig, (ConnectionError, TimeoutError)):
        return "unavailable"
    if isinstance(orig, OSError):
        return _OS_KINDS.get(orig.errno or 0, "unavailable" if orig.errno is None else "io_error")
    if isinstance(exc, DBAPIError):  # a server database: connection lost, refused, shut down
        return "unavailable" if exc.connection_invalidated else "error"
    return None


def _sqlite_connect_hook(busy_timeout_ms: int, lock_timeout_ms: int) -> Callable[[Any, Any], None]:
    """Sets up each new connection: our pragmas, and how long SQLite itself may block the
    connection's thread waiting for a lock (0 for connections used on the event loop).

    Where the database could not switch to WAL (some network file systems), readers and the
    writer block each other and a COMMIT must wait for readers to finish: there every
    connection lets SQLite wait, up to ``lock_timeout_ms``, as before WAL.
    """

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # The driver's own implicit BEGIN/COMMIT is off: transactions are exactly the ones we
        # open (SQLAlchemy's documented recipe for pysqlite).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # The wait first: the pragmas themselves may meet a lock.
        cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        wal = True
        for pragma in _SQLITE_PRAGMAS:
            found = cursor.execute(f"PRAGMA {pragma}").fetchone()
            if pragma.startswith("journal_mode"):
                wal = found is not None and str(found[0]).lower() == "wal"
        if not wal:
            cursor.execute(f"PRAGMA busy_timeout={lock_timeout_ms}")
        cursor.close()

    return on_connect


def is_busy(exc: BaseException) -> bool:
    """Is ``exc`` (the driver's, or SQLAlchemy's wrapping it) SQLite's "database is locked"?"""
    orig = getattr(exc, "orig", exc)
    code = getattr(orig, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return isinstance(orig, sqlite3.OperationalError) and "locked" in str(orig)


def driver_connection(conn: Connection) -> Any:
    """The DB-API connection under ``conn`` (a ``sqlite3.Connection`` on SQLite), for units of
    work on the hot path that skip SQLAlchemy's statement execution (see ``SqlStore``)."""
    return conn.connection.driver_connection


class SqliteDatabase:
    """SQLite: writes and key lookups on the event loop's thread, durability from a syncer
    thread, range reads on :data:`SQLITE_READERS` reader threads.

    *Why writes run on the loop.* A write is tens to a few hundred microseconds of work
    (SQLAlchemy and SQLite). On a writer thread it would also need the GIL back after every
    SQLite call (which releases it), each time waiting for the busy event loop to let go, and
    writes would queue behind each other. Run where the caller already holds the GIL, it takes
    its own CPU time and nothing else.

    *Durability without blocking the loop.* The WAL runs with ``synchronous=NORMAL``: a commit
    writes its frames to the WAL file without an fsync. ``write`` then waits, without blocking
    the loop, until the syncer thread has fsynced the WAL file *after* that commit; only then
    does it return, so "returned" still means "survives power loss" (what ``synchronous=FULL``
    gave). The syncer covers every commit made before its fsync started: writes that come
    together share one fsync (group commit), and the fsync itself releases the GIL throughout.
    SQLite still syncs the WAL before each checkpoint and the database file after it.

    *Checkpoints* (copying the WAL back into the database file) would otherwise run inside
    whichever commit crosses SQLite's threshold: a checkpointer thread runs a PASSIVE
    checkpoint every ``checkpoint_interval`` instead.

    *Another process's write lock* (a CLI command, a backup) must not freeze the loop, so the
    loop's connections never let SQLite wait for a lock (``busy_timeout=0``). A write that
    finds the lock taken waits for it in the loop's own way: it retries ``BEGIN IMMEDIATE``
    with pauses that await (1 ms doubling to 50 ms), in arrival order behind any write already
    waiting, for at most ``lock_timeout`` seconds, then raises :class:`DatabaseLocked`. A key
    lookup that finds the database busy is handed to a reader thread instead. The trade-off:
    a write may take the lock up to 50 ms after it was freed; polling is how SQLite's own
    busy handler waits too, and here the loop keeps serving everyone else meanwhile. Reader
    threads block only themselves, for at most ``lock_timeout``. (Without WAL, which some
    network file systems cannot do, a COMMIT waits for readers, so there SQLite waits on
    every connection, the loop's included, as it did before WAL.)

    An in-memory database has no file to sync: everything runs on the loop, on one connection.
    """

    dialect = "sqlite"

    def __init__(
        self,
        url: URL,
        engine_kwargs: dict[str, Any] | None = None,
        checkpoint_interval: float = CHECKPOINT_INTERVAL,
    ) -> None:
        url = url.set(drivername="sqlite+pysqlite")
        # pysqlite's own URL option (seconds), read here as the bound of our lock waits.
        self.lock_timeout = float(url.query.get("timeout", LOCK_TIMEOUT))  # type: ignore[arg-type]
        kwargs: dict[str, Any] = dict(engine_kwargs or {})
        connect_args = {"check_same_thread": False, **kwargs.pop("connect_args", {})}
        self._in_memory = url.database in (None, "", ":memory:")
        self.path = None if self._in_memory else Path(url.database or "")
        self.name = str(self.path) if self.path is not None else ":memory:"
        if self._in_memory:  # one connection, or every thread would see its own database
            self._writer = create_engine(
                url, poolclass=StaticPool, connect_args=connect_args, **kwargs
            )
            self._reader = self._writer
        else:
            # The loop's connections: write()'s and lookup()'s.
            self._writer = create_engine(
                url, pool_size=2, max_overflow=0, connect_args=connect_args, **kwargs
            )
            # One connection per reader thread, plus the checkpointer's.
            self._reader = create_engine(
                url,
                pool_size=SQLITE_READERS + 1,
                max_overflow=0,
                connect_args=connect_args,
                **kwargs,
            )
        # The loop's connections never let SQLite wait (see above); reader threads may.
        wait_ms = int(self.lock_timeout * 1000)
        event.listen(self._writer, "connect", _sqlite_connect_hook(0, wait_ms))
        if self._reader is not self._writer:
            event.listen(self._reader, "connect", _sqlite_connect_hook(wait_ms, wait_ms))
        self._lock_queue = asyncio.Lock()  # writes waiting for another process's lock
        self._read_threads = (
            None
            if self._in_memory
            else ThreadPoolExecutor(SQLITE_READERS, thread_name_prefix="sqlite-read")
        )
        self._write_conn: Connection | None = None  # on the loop's thread
        self._inline: Connection | None = None  # lookup()'s, on the loop's thread
        self._syncer = _WalSyncer(url.database or "") if not self._in_memory else None
        self.checkpoints = 0  # completed background checkpoints (for tests and curiosity)
        self._stopping = threading.Event()
        # Started with the first write (the schema's): the file may not exist before.
        self._checkpointer: threading.Thread | None = None
        if not self._in_memory:
            self._checkpointer = threading.Thread(
                target=self._checkpoint_loop,
                args=(checkpoint_interval,),
                name="sqlite-checkpoint",
                daemon=True,
            )

    @property
    def syncs(self) -> int:
        """fsyncs of the WAL done so far (for tests and curiosity)."""
        return self._syncer.syncs if self._syncer is not None else 0

    async def read(self, work: Work[T]) -> T:
        if self._read_threads is None:
            return await self.lookup(work)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._read_threads, _run_read, self._reader, work)

    async def lookup(self, work: Work[T]) -> T:
        """On the event loop's own thread, on a connection kept for it.

        A key lookup in SQLite's page cache is far cheaper than a hop to a reader thread and
        back (plus, on a busy machine, the wait for that thread to be scheduled). WAL readers
        never wait for the writer. Range reads (histories, samples) go to the reader threads,
        where their longer work does not hold the loop.
        """
        if self._inline is None:
            self._inline = self._writer.connect()
        try:
            return work(self._inline)
        except Exception as exc:
            if not is_busy(exc) or self._read_threads is None:
                raise
        finally:
            self._inline.rollback()  # end the implicit read (keeps no snapshot open)
        # Busy (rare for a WAL reader: another process is recovering or resetting the WAL).
        return await self.read(work)

    async def write(self, work: Work[T]) -> T:
        """``work`` in its own transaction, committed, and then the WAL fsynced."""
        if self._write_conn is None:
            if self.path is not None:  # the first write (the schema's) may make the file
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._write_conn = self._writer.connect()
        conn = self._write_conn
        raw = driver_connection(conn)
        # The transaction is opened and closed on the driver (SQLAlchemy's begin(), its event
        # and its commit cost more than the one-row writes they wrapped). IMMEDIATE takes the
        # write lock at BEGIN, so a read-then-write unit cannot fail half-way on a lock.
        if self._lock_queue.locked() or not _try_begin(raw):
            await self._wait_and_begin(raw)
        # From here to COMMIT nothing awaits: no other write can use the connection.
        try:
            result = work(conn)
            raw.execute("COMMIT")
        except BaseException:
            if raw.in_transaction:
                raw.execute("ROLLBACK")
            raise
        finally:
            if conn.in_transaction():  # SQLAlchemy autobegan (a no-op on this driver): reset
                conn.rollback()
        if self._syncer is not None:
            await self._syncer.synced()
            if self._checkpointer is not None and self._checkpointer.ident is None:
                self._checkpointer.start()
        return result

    async def _wait_and_begin(self, raw: Any) -> None:
        """Take the write lock another process holds, without blocking the loop: retry in
        arrival order, pausing between attempts, for at most ``lock_timeout``."""
        loop = asyncio.get_running_loop()
        if not self._lock_queue.locked():
            log.debug(
                "database %s is locked by another process: writes wait (at most %g s each)",
                self.name,
                self.lock_timeout,
            )
        async with self._lock_queue:
            deadline = loop.time() + self.lock_timeout
            pause = 0.001
            while not _try_begin(raw):
                left = deadline - loop.time()
                if left <= 0:
                    raise DatabaseLocked(
                        f"database {self.name} is locked by another process"
                        f" (waited {self.lock_timeout:g} s)"
                    )
                await asyncio.sleep(min(pause, left))
                pause = min(pause * 2, _LOCK_POLL_MAX)

    async def dispose(self) -> None:
        for conn in (self._inline, self._write_conn):
            if conn is not None:
                conn.close()
        self._inline = self._write_conn = None

        def shut() -> None:
            self._stopping.set()
            if self._checkpointer is not None and self._checkpointer.ident is not None:
                self._checkpointer.join()
            if self._syncer is not None:
                self._syncer.close()
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


class _WalSyncer:
    """A thread that fsyncs the WAL file for whoever waits, many commits per fsync.

    ``synced()`` (on the loop, right after a commit) returns once an fsync that *started after
    the call* has finished. Commits are counted on the loop; the thread notes the count before
    each fsync and, after it, wakes every waiter at or below that count.
    """

    def __init__(self, database: str) -> None:
        self._wal = database + "-wal"
        self._database = database
        self._directory = os.path.dirname(os.path.abspath(database))
        self._fd: int | None = None
        self._inode: tuple[int, int] | None = None
        self._committed = 0  # commits that asked for a sync (loop thread only writes it)
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wanted = threading.Event()
        self._closing = False
        self.syncs = 0
        self._thread = threading.Thread(target=self._run, name="sqlite-wal-sync", daemon=True)
        self._thread.start()

    async def synced(self) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self._committed += 1
        future = self._loop.create_future()
        self._waiters.append((self._committed, future))
        self._wanted.set()
        await future

    def close(self) -> None:
        self._closing = True
        self._wanted.set()
        self._thread.join()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            if self._closing:
                return
            covered = self._committed  # every commit counted so far is already written
            error: OSError | None = None
            try:
                self._fsync()
                self.syncs += 1
            except OSError as exc:
                log.critical("fsync of %s failed: commits are not durable", self._wal)
                error = exc
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._wake, covered, error)

    def _fsync(self) -> None:
        """fsync the WAL; (re)open it if it is new (first write, or SQLite re-created it).

        Where SQLite could not use WAL (some network file systems) commits go to the database
        file itself, and that is what gets synced.
        """
        path = self._wal if os.path.exists(self._wal) else self._database
        found = os.stat(path)
        if self._fd is None or self._inode != (found.st_dev, found.st_ino):
            if self._fd is not None:
                os.close(self._fd)
            self._fd = os.open(path, os.O_RDONLY)
            self._inode = (found.st_dev, found.st_ino)
            directory = os.open(self._directory, os.O_RDONLY)
            try:  # the new file's directory entry must survive too
                os.fsync(directory)
            finally:
                os.close(directory)
        os.fsync(self._fd)

    def _wake(self, covered: int, error: OSError | None) -> None:
        waiters = self._waiters
        while waiters and waiters[0][0] <= covered:
            _, future = waiters.popleft()
            if future.done():  # the waiting write was cancelled
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)


def _try_begin(raw: Any) -> bool:
    """``BEGIN IMMEDIATE`` on the driver connection: False if another connection holds the
    write lock (SQLite does not wait: the loop's connections run with ``busy_timeout=0``)."""
    try:
        raw.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if is_busy(exc):
            return False
        raise
    return True


def _run_read(engine: Engine, work: Work[T]) -> T:
    with engine.connect() as conn:
        return work(conn)


class PostgresDatabase:
    """PostgreSQL through the asyncpg driver: units of work run on the event loop, awaiting
    the network in SQLAlchemy's greenlet bridge."""

    dialect = "postgresql"

    def __init__(self, url: URL, engine_kwargs: dict[str, Any] | None = None) -> None:
        # A server can go away under us; a pre-ping costs a round trip but finds dead
        # connections before a write does.
        kwargs = {"pool_pre_ping": True, **(engine_kwargs or {})}
        self.name = url.render_as_string(hide_password=True)
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
