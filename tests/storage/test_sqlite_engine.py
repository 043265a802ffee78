"""SQLite specifics: durability by the WAL syncer, background checkpoints, the meter fast path."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, make_url
from sqlalchemy.exc import OperationalError

from charging_api.domain.models import IdTag, IdTagStatus
from charging_api.storage import SqlStore
from charging_api.storage.engines import DatabaseLocked, SqliteDatabase

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


async def test_a_write_returns_only_after_an_fsync_and_commits_together_share_one(
    tmp_path: Path,
) -> None:
    """Durability: no write returns before an fsync of the WAL that began after its commit.
    Group commit: writes that arrive while an fsync runs share the next one. A failing write
    is rolled back alone and fails at once."""
    url = f"sqlite:///{tmp_path / 'group.db'}"
    store = SqlStore(url)
    await store.start()
    db = store._db
    assert isinstance(db, SqliteDatabase) and db._syncer is not None
    syncer = db._syncer
    real_fsync = syncer._fsync
    entered, release = threading.Event(), threading.Event()

    def held_fsync() -> None:
        entered.set()
        assert release.wait(10)
        real_fsync()

    syncer._fsync = held_fsync  # type: ignore[method-assign]
    syncs_before = db.syncs

    def start(i: int) -> asyncio.Future[Any]:
        return asyncio.ensure_future(
            store.start_transaction(
                "CP1", 1, f"TAG{i}", "u1", i, T0 + timedelta(seconds=i), IdTagStatus.ACCEPTED
            )
        )

    writes = [start(i) for i in range(20)]
    with pytest.raises(OperationalError, match="no_such_table"):
        await db.write(lambda c: c.exec_driver_sql("INSERT INTO no_such_table VALUES (1)"))
    assert await asyncio.to_thread(entered.wait, 10)
    assert not any(w.done() for w in writes)  # committed, but not yet on disk
    release.set()
    started = await asyncio.gather(*writes)
    assert len({tx.id for tx, _ in started}) == 20
    assert db.syncs - syncs_before in (1, 2)  # 20 commits, one or two fsyncs
    await store.close()

    reopened = SqlStore(url)
    await reopened.start()
    try:
        stored = await reopened.active_transactions()
        assert sorted(tx.id_tag for tx in stored) == sorted(f"TAG{i}" for i in range(20))
    finally:
        await reopened.close()


async def test_a_lone_failing_write_leaves_nothing_behind(tmp_path: Path) -> None:
    store = SqlStore(f"sqlite:///{tmp_path / 'lone.db'}")
    await store.start()
    try:

        def half_done(conn: Connection) -> None:
            conn.exec_driver_sql(
                "INSERT INTO id_tags (tag, tag_key, user_id, status)"
                " VALUES ('T1', 't1', 'u1', 'Accepted')"
            )
            raise RuntimeError("second half failed")

        with pytest.raises(RuntimeError, match="second half"):
            await store._db.write(half_done)
        assert await store.get_id_tag("T1") is None
    finally:
        await store.close()


async def test_the_wal_is_checkpointed_beside_the_writer(tmp_path: Path) -> None:
    """Commits never checkpoint (wal_autocheckpoint=0); a background thread does."""
    store = SqlStore(f"sqlite:///{tmp_path / 'wal.db'}")
    quick = SqliteDatabase(make_url(f"sqlite:///{tmp_path / 'wal.db'}"), checkpoint_interval=0.01)
    await store._db.dispose()
    store._db = quick
    await store.start()
    try:
        setting = await quick.write(lambda c: c.exec_driver_sql("PRAGMA wal_autocheckpoint"))
        assert setting.scalar() == 0
        await store.put_id_tag(IdTag("T1", "u1"))
        before = quick.checkpoints
        for _ in range(1000):  # bounded; a checkpoint is due every 10 ms
            if quick.checkpoints >= before + 2:
                break
            await asyncio.sleep(0.01)
        assert quick.checkpoints >= before + 2
        assert await store.get_id_tag("T1") == IdTag("T1", "u1")
    finally:
        await store.close()


async def test_an_aiosqlite_url_from_older_settings_still_opens(tmp_path: Path) -> None:
    """DATABASE_URL=sqlite+aiosqlite://... (the old default) is read as sqlite://."""
    store = SqlStore(f"sqlite+aiosqlite:///{tmp_path / 'old.db'}")
    await store.start()
    try:
        await store.put_id_tag(IdTag("T1", "u1"))
        assert await store.get_id_tag("T1") == IdTag("T1", "u1")
    finally:
        await store.close()


async def test_meter_rows_written_by_the_driver_read_back_through_the_table_types(
    tmp_path: Path,
) -> None:
    """SQLite's meter batch bypasses SQLAlchemy's binding; what it stores must read back the
    same (zone converted to UTC, microseconds kept or zero) and sort by time."""
    from datetime import timezone

    from charging_api.domain.models import MeterSample, StoredMeterSample

    store = SqlStore(f"sqlite:///{tmp_path / 'rows.db'}", meter_flush_interval=60)
    await store.start()
    try:
        plus2 = timezone(timedelta(hours=2))
        times = [
            datetime(2024, 5, 1, 14, 0, 0, 250, tzinfo=plus2),  # 12:00:00.000250Z
            T0,  # 12:00:00Z, no microseconds
            datetime(2024, 5, 1, 11, 59, 59, 999999, tzinfo=UTC),
        ]
        phases = {"L1": {"voltage": 230.5}}
        store.add_meter_samples(
            [
                StoredMeterSample("CP1", 1, 9, MeterSample(at, power_kw=7.4, phases=phases))
                for at in times
            ]
        )
        await store.flush()
        got = await store.meter_samples_of(9)
        assert [s.sample.timestamp for s in got] == sorted(t.astimezone(UTC) for t in times)
        assert all(s.sample.timestamp.tzinfo == UTC for s in got)
        assert all(s.sample.power_kw == 7.4 and s.sample.phases == phases for s in got)
    finally:
        await store.close()


async def test_an_in_memory_database_works_on_one_connection() -> None:
    """sqlite:// (no file): no syncer, no threads' private databases; reads see writes."""
    from charging_api.domain.models import MeterSample, StoredMeterSample

    store = SqlStore("sqlite://", meter_flush_interval=60)
    await store.start()
    try:
        await store.put_id_tag(IdTag("T1", "u1"))
        tx, _ = await store.start_transaction("CP1", 1, "T1", "u1", 0, T0, IdTagStatus.ACCEPTED)
        store.add_meter_samples([StoredMeterSample("CP1", 1, tx.id, MeterSample(T0))])
        await store.flush()
        assert await store.get_id_tag("T1") == IdTag("T1", "u1")
        assert [t.id for t in await store.active_transactions()] == [tx.id]
        assert len(await store.meter_samples_of(tx.id)) == 1
    finally:
        await store.close()


async def test_without_wal_the_database_file_is_what_gets_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where SQLite cannot use WAL (some network file systems), writes still return once
    synced: the syncer falls back to the database file; commits may wait for readers."""
    from charging_api.storage import engines

    no_wal = tuple(
        "journal_mode=DELETE" if p.startswith("journal_mode") else p
        for p in engines._SQLITE_PRAGMAS
    )
    monkeypatch.setattr(engines, "_SQLITE_PRAGMAS", no_wal)
    store = SqlStore(f"sqlite:///{tmp_path / 'nowal.db'}")
    await store.start()
    try:
        db = store._db
        assert isinstance(db, SqliteDatabase)
        mode = await db.lookup(lambda c: c.exec_driver_sql("PRAGMA journal_mode").scalar())
        assert mode == "delete" and not (tmp_path / "nowal.db-wal").exists()
        # Without WAL a COMMIT waits for readers: SQLite may wait there, even on the loop.
        wait = await db.write(lambda c: c.exec_driver_sql("PRAGMA busy_timeout").scalar())
        assert wait == 5000
        before = db.syncs
        await store.put_id_tag(IdTag("T1", "u1"))
        assert db.syncs > before
        assert await store.get_id_tag("T1") == IdTag("T1", "u1")
    finally:
        await store.close()


async def test_sqlite_is_configured_for_durability(tmp_path: Path) -> None:
    """SQLite runs in WAL mode, foreign keys on. synchronous=NORMAL: a commit does not fsync,
    the store's WAL syncer does before the write returns (tested above). Reader threads wait
    for a lock up to the lock timeout; the loop's connections never let SQLite wait."""
    store = SqlStore(f"sqlite:///{tmp_path / 'new' / 'dir' / 'x.db'}")
    await store.start()
    try:
        db = store._db
        assert isinstance(db, SqliteDatabase)
        settings = ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")

        def pragmas(c: Connection) -> list[Any]:
            return [c.exec_driver_sql(f"PRAGMA {p}").scalar() for p in settings]

        assert await db.read(pragmas) == ["wal", 1, 1, 5000]  # a reader thread
        assert await db.write(pragmas) == ["wal", 1, 1, 0]  # the loop's writer
        assert await db.lookup(pragmas) == ["wal", 1, 1, 0]  # the loop's key lookups
    finally:
        await store.close()


@contextlib.contextmanager
def write_lock_held(path: Path) -> Iterator[sqlite3.Connection]:
    """Another connection (as a CLI command would) holding the database's write lock."""
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        other.execute("BEGIN IMMEDIATE")
        yield other
    finally:
        if other.in_transaction:
            other.execute("ROLLBACK")
        other.close()


async def test_a_held_write_lock_blocks_neither_the_loop_nor_reads_and_the_write_lands(
    tmp_path: Path,
) -> None:
    """While another connection holds the write lock, a write waits without blocking the event
    loop (other coroutines run, key lookups and range reads answer) and lands once released."""
    path = tmp_path / "locked.db"
    store = SqlStore(f"sqlite:///{path}")
    await store.start()
    try:
        await store.put_id_tag(IdTag("OLD", "u1"))
        with write_lock_held(path) as other:
            write = asyncio.ensure_future(store.put_id_tag(IdTag("NEW", "u1")))
            ticks = 0
            while ticks < 20:  # the loop turns while the write waits
                await asyncio.sleep(0)
                ticks += 1
            assert not write.done()
            assert await store.get_id_tag("OLD") == IdTag("OLD", "u1")  # lookup, on the loop
            assert [t.tag for t in await store.id_tags_of("u1")] == ["OLD"]  # reader thread
            assert not write.done() and store.failure() is None
            other.execute("ROLLBACK")
            await asyncio.wait_for(write, 10)
        assert await store.get_id_tag("NEW") == IdTag("NEW", "u1")
    finally:
        await store.close()


async def test_a_write_gives_up_after_the_lock_timeout_and_health_follows(
    tmp_path: Path,
) -> None:
    """Past the lock timeout (?timeout= in the URL) a write fails with DatabaseLocked, the store
    reports itself failing ("locked"), and the next write after the release clears it."""
    path = tmp_path / "locked.db"
    store = SqlStore(f"sqlite:///{path}?timeout=0.1")
    await store.start()
    try:
        with write_lock_held(path):
            with pytest.raises(DatabaseLocked, match="locked by another process"):
                await store.put_id_tag(IdTag("T1", "u1"))
            assert store.failure() == "locked"
        await store.put_id_tag(IdTag("T1", "u1"))
        assert store.failure() is None
        assert await store.get_id_tag("T1") == IdTag("T1", "u1")
    finally:
        await store.close()


async def test_waiting_writes_keep_their_order(tmp_path: Path) -> None:
    """Writes that queue behind another process's lock commit in the order they were made."""
    path = tmp_path / "order.db"
    store = SqlStore(f"sqlite:///{path}")
    await store.start()
    try:
        with write_lock_held(path) as other:
            writes = [
                asyncio.ensure_future(store.put_id_tag(IdTag("T", f"u{i}"))) for i in range(5)
            ]
            for _ in range(10):
                await asyncio.sleep(0)
            other.execute("ROLLBACK")
            await asyncio.wait_for(asyncio.gather(*writes), 10)
        tag = await store.get_id_tag("T")
        assert tag is not None and tag.user_id == "u4"  # the last one made is the last written
    finally:
        await store.close()


async def test_a_batch_waiting_for_the_lock_stays_visible_to_readers(tmp_path: Path) -> None:
    """Statuses and samples taken out of the buffer for a batch write that waits for another
    process's lock are still what readers see; once written, each is there once."""
    from charging_api.domain.models import ConnectorState, MeterSample, StoredMeterSample

    path = tmp_path / "batch.db"
    store = SqlStore(f"sqlite:///{path}", meter_flush_interval=60)
    await store.start()
    try:
        await store.set_connector_status(ConnectorState("CP1", 1, "Preparing", updated_at=T0))
        store.add_meter_samples([StoredMeterSample("CP1", 1, 7, MeterSample(T0, power_kw=1.0))])
        with write_lock_held(path) as other:
            flush = asyncio.ensure_future(store.flush())
            for _ in range(10):
                await asyncio.sleep(0)
            assert not flush.done()  # the batch is out of the buffer, waiting for the lock
            assert [s.status for s in await store.connector_states("CP1")] == ["Preparing"]
            samples = asyncio.ensure_future(store.meter_samples_of(7))
            other.execute("ROLLBACK")
            await asyncio.wait_for(flush, 10)
            assert [s.sample.power_kw for s in await asyncio.wait_for(samples, 10)] == [1.0]
        assert [s.status for s in await store.connector_states("CP1")] == ["Preparing"]
        assert [s.sample.power_kw for s in await store.meter_samples_of(7)] == [1.0]
    finally:
        await store.close()
