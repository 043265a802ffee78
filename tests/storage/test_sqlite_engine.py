"""SQLite specifics: durability by the WAL syncer, background checkpoints, the meter fast path."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, make_url
from sqlalchemy.exc import OperationalError

from charging_api.domain.models import IdTag, IdTagStatus
from charging_api.storage import SqlStore
from charging_api.storage.engines import SqliteDatabase

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
                "INSERT INTO id_tags (tag, user_id, status) VALUES ('T1', 'u1', 'Accepted')"
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
    synced: the syncer falls back to the database file."""
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
        before = db.syncs
        await store.put_id_tag(IdTag("T1", "u1"))
        assert db.syncs > before
        assert await store.get_id_tag("T1") == IdTag("T1", "u1")
    finally:
        await store.close()


async def test_sqlite_is_configured_for_durability(tmp_path: Path) -> None:
    """SQLite runs in WAL mode, foreign keys on, with a busy timeout. synchronous=NORMAL: a
    commit does not fsync, the store's WAL syncer does before the write returns (tested above)."""
    store = SqlStore(f"sqlite:///{tmp_path / 'new' / 'dir' / 'x.db'}")
    await store.start()
    try:
        for run in (store._db.read, store._db.write):  # every connection, readers and writer
            pragmas = await run(
                lambda c: [
                    c.exec_driver_sql(f"PRAGMA {p}").scalar()
                    for p in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
                ]
            )
            assert pragmas == ["wal", 1, 1, 5000]
    finally:
        await store.close()
