"""``charging-api db upgrade`` / ``db current`` and the server's refusal of an older schema, as
an operator meets them: the real console script in subprocesses, on a SQLite file and on a
PostgreSQL database of its own (created and dropped by the test)."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest

from charging_api.storage import schema
from tests.e2e.test_cli import assert_one_line_exit_2, run_cli
from tests.external import missing
from tests.serverproc import ServerProcess
from tests.storage.conftest import PG_DSN, PG_URL
from tests.storage.legacy import V1_POSTGRES, V1_SQLITE

#: The v1 transactions after the upgrade: the stopped one marked as its charge point's.
UPGRADED_ROWS = [(1, 900, "Local", "ChargePoint"), (2, None, None, None)]
_ROWS = "SELECT id, meter_stop_wh, stop_reason, closed_by FROM transactions ORDER BY id"


@dataclass
class Database:
    url: str  # DATABASE_URL
    rows: Callable[[str], Awaitable[list[tuple[Any, ...]]]]  # the result of a query


async def _pg_admin() -> Any:
    try:
        return await asyncpg.connect(PG_DSN)
    except (OSError, asyncpg.PostgresError) as exc:
        missing(
            f"PostgreSQL at {PG_DSN} ({exc})",
            "run PostgreSQL on 127.0.0.1:5432 that user postgres reaches without a password "
            "(.ci/run starts one)",
        )


@pytest.fixture(params=["sqlite", "postgresql"])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """An empty database of the parametrised kind, its own (a PostgreSQL one is dropped)."""
    if request.param == "sqlite":
        path = tmp_path / "charging.db"

        async def sqlite_rows(query: str) -> list[tuple[Any, ...]]:
            with sqlite3.connect(path) as conn:
                return list(conn.execute(query))

        yield Database(f"sqlite:///{path}", sqlite_rows)
        return
    admin = await _pg_admin()
    name = f"dbcmd_{uuid.uuid4().hex}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = PG_DSN.rsplit("/", 1)[0] + f"/{name}"

    async def pg_rows(query: str) -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(dsn)
        try:
            return [tuple(r) for r in await conn.fetch(query)]
        finally:
            await conn.close()

    try:
        yield Database(PG_URL.rsplit("/", 1)[0] + f"/{name}", pg_rows)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def _write_v1(database: Database) -> None:
    """The database as the first release left it (schema_version 1, two transactions)."""
    if database.url.startswith("sqlite"):
        with sqlite3.connect(database.url.removeprefix("sqlite:///")) as conn:
            conn.executescript(V1_SQLITE)
        return
    conn = await asyncpg.connect(database.url.replace("+asyncpg", ""))
    try:
        for statement in V1_POSTGRES:
            await conn.execute(statement)
    finally:
        await conn.close()


async def test_serve_refuses_an_older_schema_until_db_upgrade_ran(
    database: Database, tmp_path: Path
) -> None:
    """A v1 database: ``serve`` exits 2 with one line naming both revisions and the command,
    having changed nothing; ``db current`` says so too; ``db upgrade`` brings it to head with
    its transactions; a second ``db upgrade`` changes nothing; ``serve`` then starts and
    finds the open transaction."""
    await _write_v1(database)
    head = schema.head()

    refused = run_cli(tmp_path, "serve", DATABASE_URL=database.url, WS_API_PORT="0", OCPP_PORT="0")
    line = assert_one_line_exit_2(refused, "0001", head, "run: charging-api db upgrade")
    assert line == (
        f"charging-api: the database schema is at revision 0001 (schema v1, before Alembic), "
        f"this version needs {head}; run: charging-api db upgrade"
    )
    assert await database.rows("SELECT version FROM schema_version") == [(1,)]

    current = run_cli(tmp_path, "db", "current", DATABASE_URL=database.url)
    assert current.returncode == 1, current.stderr
    assert current.stdout.strip() == (
        f"0001 (schema v1, before Alembic); head is {head}: run charging-api db upgrade"
    )

    upgraded = run_cli(tmp_path, "db", "upgrade", DATABASE_URL=database.url)
    assert upgraded.returncode == 0, upgraded.stderr
    assert upgraded.stdout.strip() == (
        f"database schema upgraded: 0001 (schema v1, before Alembic) -> {head} (head)"
    )
    assert await database.rows(_ROWS) == UPGRADED_ROWS

    again = run_cli(tmp_path, "db", "upgrade", DATABASE_URL=database.url)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == f"database schema already at head ({head}); nothing to do"
    assert await database.rows(_ROWS) == UPGRADED_ROWS
    assert await database.rows("SELECT version_num FROM alembic_version") == [(head,)]

    async with ServerProcess(tmp_path, {"DATABASE_URL": database.url}) as proc:
        _, health = await proc.get_json("/health")
        assert health["storage"] == "ok"
        assert any("loaded 1 active transactions" in line for line in proc.log_lines), proc.log()


async def test_serve_creates_an_empty_database_at_head(database: Database, tmp_path: Path) -> None:
    """First run: ``serve`` on an empty database creates it (no separate step), and
    ``db current`` then reports the head; ``db upgrade`` on it is a no-op."""
    async with ServerProcess(tmp_path, {"DATABASE_URL": database.url}) as proc:
        _, health = await proc.get_json("/health")
        assert health["status"] == "healthy" and health["storage"] == "ok"
    current = run_cli(tmp_path, "db", "current", DATABASE_URL=database.url)
    assert (current.returncode, current.stdout.strip()) == (0, f"{schema.head()} (head)")
    again = run_cli(tmp_path, "db", "upgrade", DATABASE_URL=database.url)
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stderr


async def test_db_upgrade_creates_an_empty_database(database: Database, tmp_path: Path) -> None:
    """``db upgrade`` first (what the compose file's migrate service does): the database is
    created at head and a server starts on it."""
    done = run_cli(tmp_path, "db", "upgrade", DATABASE_URL=database.url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        f"database schema upgraded: none (empty database) -> {schema.head()} (head)"
    )
    assert await database.rows("SELECT count(*) FROM transactions") == [(0,)]


def test_a_schema_of_a_newer_release_stops_serve_with_one_line(tmp_path: Path) -> None:
    """A revision this version does not ship: one line saying a newer release migrated it."""
    path = tmp_path / "newer.db"
    assert run_cli(tmp_path, "db", "upgrade", DATABASE_URL=f"sqlite:///{path}").returncode == 0
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'f00d'")
    done = run_cli(
        tmp_path, "serve", DATABASE_URL=f"sqlite:///{path}", WS_API_PORT="0", OCPP_PORT="0"
    )
    assert_one_line_exit_2(done, "f00d", "newer release")
