"""What only ``SqlStore`` promises, on SQLite and PostgreSQL: batched meter writes, rows the
database refuses, a bounded buffer, the schema's revision and its upgrades (see also test_schema_migration.py).

"Written" here means in the table, read with SQL: ``meter_samples_of`` may answer from the
buffer too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from sqlalchemy import Connection, func, inspect, select, text

from charging_api.domain.models import IdTag, MeterSample, StoredMeterSample
from charging_api.storage import SqlStore, schema
from charging_api.storage.schema import alembic_version
from charging_api.storage.tables import meter_samples

OpenSqlStore = Callable[..., Awaitable[SqlStore]]  # the conftest fixture
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def sample(tx: int | None, at: datetime, **fields: Any) -> StoredMeterSample:
    return StoredMeterSample("CP1", 1, tx, MeterSample(timestamp=at, **fields))


async def written_times(store: SqlStore, transaction_id: int) -> list[datetime]:
    """Timestamps of the samples of ``transaction_id`` in the table, in time order."""
    column = meter_samples.c.timestamp
    stmt = (
        select(column)
        .where(meter_samples.c.transaction_id == transaction_id)
        .order_by(column, meter_samples.c.id)
    )
    found: list[datetime] = await store._db.read(lambda c: list(c.execute(stmt).scalars()))
    return found


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_full_batch_is_written_without_waiting_for_the_interval(
    open_sql_store: OpenSqlStore,
) -> None:
    """Reaching meter_batch_size wakes the flusher at once, long before the interval."""
    store = await open_sql_store(meter_flush_interval=60, meter_batch_size=3)
    store.add_meter_samples([sample(7, T0 + timedelta(seconds=i)) for i in range(3)])

    async def written() -> bool:
        return len(await written_times(store, 7)) == 3

    await eventually(written)


async def test_flusher_writes_after_the_interval(open_sql_store: OpenSqlStore) -> None:
    """A partial batch is written by the background flusher after meter_flush_interval."""
    store = await open_sql_store(meter_flush_interval=0.05, meter_batch_size=1000)
    store.add_meter_samples([sample(7, T0)])

    async def written() -> bool:
        return len(await written_times(store, 7)) == 1

    await eventually(written)


async def test_flush_writes_what_is_buffered(open_sql_store: OpenSqlStore) -> None:
    """Nothing reaches the table before a flush (or the flusher); flush() writes it all."""
    store = await open_sql_store(meter_flush_interval=60, meter_batch_size=1000)
    store.add_meter_samples([sample(7, T0 + timedelta(seconds=1)), sample(7, T0)])
    assert await written_times(store, 7) == []
    await store.flush()
    assert await written_times(store, 7) == [T0, T0 + timedelta(seconds=1)]


async def test_failed_batch_is_logged_kept_and_retried(
    open_sql_store: OpenSqlStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A failing batch write is logged and reported (failure()), the flusher survives, and
    the samples are written later, which clears the report."""
    store = await open_sql_store(meter_flush_interval=0.02, meter_batch_size=1000)
    await store._db.write(
        lambda c: c.execute(text("ALTER TABLE meter_samples RENAME TO meter_samples_away"))
    )
    caplog.set_level(logging.ERROR, logger="charging_api.storage.sql")
    store.add_meter_samples([sample(7, T0), sample(7, T0 + timedelta(seconds=1))])

    async def failure_logged() -> bool:
        return any("meter samples failed" in r.getMessage() for r in caplog.records)

    await eventually(failure_logged)
    assert store.failure() == "error"  # what /health reports while writes fail
    await store._db.write(
        lambda c: c.execute(text("ALTER TABLE meter_samples_away RENAME TO meter_samples"))
    )

    async def written() -> bool:
        return len(await written_times(store, 7)) == 2

    await eventually(written)

    async def recovered() -> bool:  # (the rows are visible a moment before the write returns)
        return store.failure() is None

    await eventually(recovered)


async def test_refused_sample_is_dropped_and_the_rest_written(
    open_sql_store: OpenSqlStore, caplog: pytest.LogCaptureFixture
) -> None:
    """One sample the database refuses (a NOT NULL violation) does not block its batch forever."""
    store = await open_sql_store(meter_flush_interval=60, meter_batch_size=1000)
    bad = StoredMeterSample(cast(str, None), 1, 7, MeterSample(T0 + timedelta(seconds=1)))
    store.add_meter_samples([sample(7, T0), bad, sample(7, T0 + timedelta(seconds=2))])
    with caplog.at_level(logging.ERROR, logger="charging_api.storage.sql"):
        await store.flush()
    assert await written_times(store, 7) == [T0, T0 + timedelta(seconds=2)]
    assert any("refuses" in r.getMessage() for r in caplog.records)
    assert store.failure() is None  # the row was at fault, not the database


async def test_meter_buffer_is_bounded(
    open_sql_store: OpenSqlStore, caplog: pytest.LogCaptureFixture
) -> None:
    """Beyond max_buffered_samples the oldest samples are dropped with a warning."""
    store = await open_sql_store(
        meter_flush_interval=60, meter_batch_size=1000, max_buffered_samples=5
    )
    with caplog.at_level(logging.WARNING, logger="charging_api.storage.sql"):
        store.add_meter_samples([sample(7, T0 + timedelta(seconds=i)) for i in range(8)])
    assert any("dropping 3 oldest" in r.getMessage() for r in caplog.records)
    await store.flush()
    assert await written_times(store, 7) == [T0 + timedelta(seconds=i) for i in range(3, 8)]


async def alembic_versions(store: SqlStore) -> list[str]:
    return await store._db.read(
        lambda c: list(c.execute(select(alembic_version.c.version_num)).scalars())
    )


async def test_a_new_database_is_created_at_head_once(open_sql_store: OpenSqlStore) -> None:
    """start() on an empty database creates it at the head revision; a restart changes
    nothing (one version row, no table emptied)."""
    await (await open_sql_store()).close()
    store = await open_sql_store()
    count = await store._db.read(
        lambda c: c.execute(select(func.count()).select_from(meter_samples)).scalar_one()
    )
    assert await alembic_versions(store) == [schema.head()] and count == 0
    assert (await store.schema_state()).at_head


def _as_legacy(version: int) -> Callable[[Connection], None]:
    """A unit of work that records ``version`` as the releases before Alembic did."""

    def run(conn: Connection) -> None:
        conn.exec_driver_sql("DROP TABLE alembic_version")
        conn.exec_driver_sql("CREATE TABLE schema_version (version INTEGER PRIMARY KEY)")
        conn.exec_driver_sql(f"INSERT INTO schema_version (version) VALUES ({version})")

    return run


def _back_to_v1(*tags: str) -> Callable[[Connection], None]:
    """A unit of work that turns a fresh schema into v1 (no ``tag_key``) holding ``tags``."""

    def run(conn: Connection) -> None:
        conn.exec_driver_sql("DROP INDEX ux_id_tags_tag_key")
        conn.exec_driver_sql("ALTER TABLE id_tags DROP COLUMN tag_key")
        conn.exec_driver_sql("ALTER TABLE transactions DROP COLUMN closed_by")
        conn.exec_driver_sql("ALTER TABLE transactions DROP COLUMN app_stop_reason")
        conn.exec_driver_sql("ALTER TABLE id_tags DROP COLUMN parent_id_tag")
        for tag in tags:
            conn.execute(
                text("INSERT INTO id_tags (tag, user_id, status) VALUES (:t, 'u1', 'Accepted')"),
                {"t": tag},
            )
        _as_legacy(1)(conn)

    return run


async def test_a_v1_database_is_refused_then_upgraded_to_case_insensitive_id_tags(
    open_sql_store: OpenSqlStore,
) -> None:
    """A v1 database is refused at start (naming `db upgrade`); upgraded, its id tags are
    keyed case-insensitively, spellings kept."""
    store = await open_sql_store()
    await store._db.write(_back_to_v1("Old-Tag", "other"))
    with pytest.raises(schema.SchemaBehind, match=r"run: charging-api db upgrade$"):
        await open_sql_store()
    before, after = await store.upgrade_schema()
    assert (before.legacy, after.revision, after.at_head) == (1, schema.head(), True)
    await store.close()
    store = await open_sql_store()
    assert await store.get_id_tag("OLD-TAG") == IdTag("Old-Tag", "u1")
    assert await store.get_id_tag("OTHER") == IdTag("other", "u1")
    await store.put_id_tag(IdTag("old-tag", "u2"))  # the same tag: updated, not a second row
    assert [t.tag for t in await store.id_tags_of("u2")] == ["Old-Tag"]
    assert await alembic_versions(store) == [schema.head()]


async def test_a_v3_database_gets_parent_id_tags_and_operator_tables(
    open_sql_store: OpenSqlStore,
) -> None:
    """Upgrading a v3 database adds parentIdTag to id tags and the operator-state tables,
    and retires the old version record."""
    store = await open_sql_store()

    def back_to_v3(conn: Connection) -> None:
        conn.exec_driver_sql("ALTER TABLE id_tags DROP COLUMN parent_id_tag")
        for table in ("reservations", "local_lists", "charging_profiles", "documents"):
            conn.exec_driver_sql(f"DROP TABLE {table}")
        conn.execute(
            text(
                "INSERT INTO id_tags (tag, user_id, status, tag_key) "
                "VALUES ('Kept', 'u1', 'Accepted', 'kept')"
            )
        )
        _as_legacy(3)(conn)

    await store._db.write(back_to_v3)
    before, _ = await store.upgrade_schema()
    assert before.describe() == "0003 (schema v3, before Alembic)"
    await store.close()
    store = await open_sql_store()
    assert await store.get_id_tag("kept") == IdTag("Kept", "u1")
    await store.put_id_tag(IdTag("Child", "u1", parent_id_tag="Kept"))
    assert (await store.get_id_tag("child")) == IdTag("Child", "u1", parent_id_tag="Kept")
    assert await store.active_reservations() == []
    assert await store.charging_profiles() == []
    tables = await store._db.read(lambda c: set(inspect(c).get_table_names()))
    assert "documents" in tables and "schema_version" not in tables


async def test_a_v1_database_with_one_tag_in_two_cases_is_refused_unchanged(
    tmp_path: Path,
) -> None:
    """v1 tags differing only in case: the upgrade names them and leaves the database at v1."""
    url = f"sqlite:///{tmp_path / 'v1.db'}"
    store = SqlStore(url)
    await store.start()
    await store._db.write(_back_to_v1("TAG-A", "tag-a"))
    await store.close()
    store = SqlStore(url)
    try:
        with pytest.raises(schema.MigrationRefused, match=r"TAG-A / tag-a"):
            await store.upgrade_schema()
        state = await store.schema_state()
        assert (state.legacy, state.at_head) == (1, False)
        columns = await store._db.read(
            lambda c: [r[1] for r in c.exec_driver_sql("PRAGMA table_info(id_tags)")]
        )
        assert "tag_key" not in columns
    finally:
        await store._db.dispose()
