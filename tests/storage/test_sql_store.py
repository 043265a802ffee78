"""What only ``SqlStore`` promises, on SQLite and PostgreSQL: batched meter writes, rows the
database refuses, a bounded buffer, the recorded schema version.

"Written" here means in the table, read with SQL: ``meter_samples_of`` may answer from the
buffer too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from sqlalchemy import func, select, text

from charging_api.domain.models import MeterSample, StoredMeterSample
from charging_api.storage import SqlStore
from charging_api.storage.tables import meter_samples, schema_version

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


async def test_schema_version_is_recorded_once(open_sql_store: OpenSqlStore) -> None:
    """start() records schema version 1, and a restart does not add another row."""
    await (await open_sql_store()).close()
    store = await open_sql_store()
    versions = await store._db.read(
        lambda c: c.execute(select(schema_version.c.version)).scalars().all()
    )
    count = await store._db.read(
        lambda c: c.execute(select(func.count()).select_from(meter_samples)).scalar_one()
    )
    assert versions == [1] and count == 0
