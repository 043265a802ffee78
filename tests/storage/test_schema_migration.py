"""A database written by an older version: refused by ``SqlStore.start``, brought to head by
``SqlStore.upgrade_schema`` (``charging-api db upgrade``) with its data intact, on SQLite and
PostgreSQL; and the revision chain builds exactly the schema the tables describe."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection
from tests.external import missing
from tests.storage.conftest import PG_DSN, PG_URL
from tests.storage.legacy import V1_POSTGRES, V1_SQLITE

from charging_api.domain.models import ClosedBy
from charging_api.storage import SqlStore, schema
from charging_api.storage.tables import metadata


async def _pg_connect() -> Any:
    try:
        return await asyncpg.connect(PG_DSN)
    except (OSError, asyncpg.PostgresError) as exc:
        missing(
            f"PostgreSQL at {PG_DSN} ({exc})",
            "run PostgreSQL with a `test` database on 127.0.0.1:5432 (.ci/run starts one)",
        )


@pytest.fixture
async def pg_schema() -> AsyncIterator[tuple[Any, str]]:
    """An asyncpg connection with its search_path on a fresh schema, dropped afterwards."""
    conn = await _pg_connect()
    name = f"migrate_{uuid.uuid4().hex}"
    try:
        await conn.execute(f'CREATE SCHEMA "{name}"')
        await conn.execute(f'SET search_path TO "{name}"')
        yield conn, name
    finally:
        await conn.execute(f'DROP SCHEMA "{name}" CASCADE')
        await conn.close()


def _pg_store(name: str) -> SqlStore:
    return SqlStore(
        PG_URL, engine_kwargs={"connect_args": {"server_settings": {"search_path": name}}}
    )


async def _assert_v1_data_kept(store: SqlStore) -> None:
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


async def test_a_v1_sqlite_file_is_refused_then_upgraded_keeping_its_transactions(
    tmp_path: Path,
) -> None:
    """start() on a v1 file refuses (naming the command) and changes nothing; the upgrade adds
    the later columns, marks old stops as the charge point's, and a second upgrade is a
    no-op."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as old:
        old.executescript(V1_SQLITE)
    refused = SqlStore(f"sqlite:///{path}")
    with pytest.raises(schema.SchemaBehind) as caught:
        await refused.start()
    assert str(caught.value) == (
        "the database schema is at revision 0001 (schema v1, before Alembic), this version "
        f"needs {schema.head()}; run: charging-api db upgrade"
    )
    with sqlite3.connect(path) as unchanged:
        assert [v for (v,) in unchanged.execute("SELECT version FROM schema_version")] == [1]
    upgrader = SqlStore(f"sqlite:///{path}")
    before, after = await upgrader.upgrade_schema()
    again = await upgrader.upgrade_schema()
    await upgrader.close()
    assert (before.legacy, after.at_head, again[0].at_head) == (1, True, True)
    store = SqlStore(f"sqlite:///{path}")
    await store.start()
    try:
        await _assert_v1_data_kept(store)
    finally:
        await store.close()
    with sqlite3.connect(path) as upgraded:
        assert [v for (v,) in upgraded.execute("SELECT version_num FROM alembic_version")] == [
            schema.head()
        ]


async def test_a_v1_postgresql_schema_is_refused_then_upgraded_in_place(
    pg_schema: tuple[Any, str],
) -> None:
    """The same on PostgreSQL: refused, upgraded, old stops marked, the version recorded."""
    conn, name = pg_schema
    for statement in V1_POSTGRES:
        await conn.execute(statement)
    refused = _pg_store(name)
    with pytest.raises(schema.SchemaBehind, match="run: charging-api db upgrade"):
        await refused.start()
    upgrader = _pg_store(name)
    before, after = await upgrader.upgrade_schema()
    await upgrader.close()
    assert (before.legacy, after.at_head) == (1, True)
    store = _pg_store(name)
    await store.start()
    try:
        await _assert_v1_data_kept(store)
    finally:
        await store.close()
    assert [
        r["version_num"] for r in await conn.fetch("SELECT version_num FROM alembic_version")
    ] == [schema.head()]


def _differences(conn: Connection) -> list[Any]:
    """What autogenerate would change to make the database match ``tables.py``."""
    return list(compare_metadata(MigrationContext.configure(conn), metadata))


def _chain_then_compare(conn: Connection) -> list[Any]:
    schema.run_migrations(conn, "head")
    return _differences(conn)


async def test_the_revision_chain_builds_what_the_tables_describe_on_sqlite(
    tmp_path: Path,
) -> None:
    """From nothing, the revisions give the schema ``create_all`` gives a new database, so
    an upgraded database and a new one are the same."""
    store = SqlStore(f"sqlite:///{tmp_path / 'chain.db'}")
    try:
        assert await store._db.write(_chain_then_compare) == []
        assert (await store.schema_state()).at_head
    finally:
        await store.close()


async def test_the_revision_chain_builds_what_the_tables_describe_on_postgresql(
    pg_schema: tuple[Any, str],
) -> None:
    """The same on PostgreSQL, and an upgraded v1 database differs from neither."""
    _, name = pg_schema
    store = _pg_store(name)
    try:
        assert await store._db.write(_chain_then_compare) == []
    finally:
        await store.close()


async def test_an_upgraded_v1_database_matches_the_tables(tmp_path: Path) -> None:
    """An old database brought to head has the same tables, columns and indexes as a new one."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as old:
        old.executescript(V1_SQLITE)
    store = SqlStore(f"sqlite:///{path}")
    try:
        await store.upgrade_schema()
        assert await store._db.write(_differences) == []
    finally:
        await store.close()


async def test_a_database_migrated_by_a_newer_release_is_refused(tmp_path: Path) -> None:
    """A revision this version does not ship: refused at start, and by the upgrade."""
    url = f"sqlite:///{tmp_path / 'newer.db'}"
    store = SqlStore(url)
    await store.start()
    await store._db.write(
        lambda c: c.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
    )
    await store.close()
    for attempt in (SqlStore(url).start, SqlStore(url).upgrade_schema):
        with pytest.raises(schema.SchemaUnknown, match=r"9999.*newer release"):
            await attempt()
