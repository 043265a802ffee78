"""A database written by an older version is upgraded in place by ``SqlStore.start``
(SQLite and PostgreSQL)."""

from __future__ import annotations

import sqlite3
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest
from tests.storage.conftest import PG_DSN, PG_URL

from charging_api.domain.models import ClosedBy
from charging_api.storage import SqlStore
from charging_api.storage.tables import SCHEMA_VERSION

#: The transactions table and version record as schema v1 created them.
V1_SCHEMA = """
CREATE TABLE schema_version (version INTEGER NOT NULL, PRIMARY KEY (version));
INSERT INTO schema_version (version) VALUES (1);
CREATE TABLE transactions (
    id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    charge_point_id VARCHAR NOT NULL,
    connector_id INTEGER NOT NULL,
    id_tag VARCHAR NOT NULL,
    user_id VARCHAR,
    id_tag_status VARCHAR NOT NULL,
    meter_start_wh BIGINT NOT NULL,
    started_at DATETIME NOT NULL,
    meter_stop_wh BIGINT,
    stopped_at DATETIME,
    stop_reason VARCHAR
);
INSERT INTO transactions VALUES
    (1, 'CP1', 1, 'TAG', 'alice', 'Accepted', 100, '2025-01-01 10:00:00.000000',
     900, '2025-01-01 11:00:00.000000', 'Local'),
    (2, 'CP1', 2, 'TAG', 'alice', 'Accepted', 200, '2025-01-01 12:00:00.000000',
     NULL, NULL, NULL);
"""


async def test_a_v1_sqlite_file_is_upgraded_and_keeps_its_transactions(tmp_path: Path) -> None:
    """start() on a v1 file adds the v2 columns, marks old stops as the charge point's,
    records the version, and the open transaction can be closed with the new fields."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as old:
        old.executescript(V1_SCHEMA)
    store = SqlStore(f"sqlite:///{path}")
    await store.start()
    try:
        stopped = await store.get_transaction(1)
        assert stopped is not None
        assert (stopped.meter_stop_wh, stopped.stop_reason, stopped.closed_by) == (
            900,
            "Local",
            ClosedBy.CHARGE_POINT,
        )
        open_tx = await store.get_transaction(2)
        assert open_tx is not None and open_tx.active and open_tx.closed_by is None
        closed = await store.stop_transaction(
            2, 250, datetime(2025, 1, 1, 13, tzinfo=UTC), "Other", ClosedBy.ADMIN, "UserStop"
        )
        assert closed is not None
        assert (closed.closed_by, closed.app_stop_reason) == (ClosedBy.ADMIN, "UserStop")
    finally:
        await store.close()
    with sqlite3.connect(path) as upgraded:
        versions = [v for (v,) in upgraded.execute("SELECT version FROM schema_version")]
    assert versions == [SCHEMA_VERSION]
    again = SqlStore(f"sqlite:///{path}")  # a second start migrates nothing twice
    await again.start()
    await again.close()


#: The same v1 tables as PostgreSQL had them.
V1_POSTGRES = [
    "CREATE TABLE schema_version (version INTEGER PRIMARY KEY)",
    "INSERT INTO schema_version (version) VALUES (1)",
    """CREATE TABLE transactions (
        id SERIAL PRIMARY KEY,
        charge_point_id VARCHAR NOT NULL,
        connector_id INTEGER NOT NULL,
        id_tag VARCHAR NOT NULL,
        user_id VARCHAR,
        id_tag_status VARCHAR NOT NULL,
        meter_start_wh BIGINT NOT NULL,
        started_at TIMESTAMPTZ NOT NULL,
        meter_stop_wh BIGINT,
        stopped_at TIMESTAMPTZ,
        stop_reason VARCHAR
    )""",
    """INSERT INTO transactions (charge_point_id, connector_id, id_tag, user_id, id_tag_status,
        meter_start_wh, started_at, meter_stop_wh, stopped_at, stop_reason) VALUES
        ('CP1', 1, 'TAG', 'alice', 'Accepted', 100, '2025-01-01 10:00:00+00',
         900, '2025-01-01 11:00:00+00', 'Local'),
        ('CP1', 2, 'TAG', 'alice', 'Accepted', 200, '2025-01-01 12:00:00+00', NULL, NULL, NULL)""",
]


async def test_a_v1_postgresql_schema_is_upgraded_in_place() -> None:
    """The same migration on PostgreSQL: columns added, old stops marked, version recorded."""
    schema = f"migrate_{uuid.uuid4().hex}"
    try:
        conn = await asyncpg.connect(PG_DSN)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL at {PG_DSN} is required for this test: {exc}")
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        await conn.execute(f'SET search_path TO "{schema}"')
        for statement in V1_POSTGRES:
            await conn.execute(statement)
        store = SqlStore(
            PG_URL,
            engine_kwargs={"connect_args": {"server_settings": {"search_path": schema}}},
        )
        await store.start()
        try:
            stopped = await store.get_transaction(1)
            assert stopped is not None and stopped.closed_by is ClosedBy.CHARGE_POINT
            open_tx = await store.get_transaction(2)
            assert open_tx is not None and open_tx.active and open_tx.closed_by is None
        finally:
            await store.close()
        versions = sorted(
            r["version"] for r in await conn.fetch("SELECT version FROM schema_version")
        )
        assert versions == [SCHEMA_VERSION]
    finally:
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await conn.close()
