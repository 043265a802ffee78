"""PostgreSQL's statement set: the portable one, with its own upsert and a schema lock."""

from __future__ import annotations

from sqlalchemy import Connection, Table, func, select
from sqlalchemy.dialects import postgresql

from charging_api.storage.engines import Work
from charging_api.storage.statements import SqlStatements, ensure_schema

#: Advisory lock key serialising schema creation between processes that start together.
SCHEMA_LOCK_KEY = 0x43484152


class PostgresStatements(SqlStatements):
    dialect = "postgresql"

    def _insert(self, table: Table) -> postgresql.Insert:
        return postgresql.insert(table)

    def create_schema(self) -> Work[None]:
        """As everywhere, under a transaction-scoped advisory lock: several processes (API
        nodes, a CLI command) may start at once, and ``CREATE TABLE`` races otherwise."""

        def run(conn: Connection) -> None:
            conn.execute(select(func.pg_advisory_xact_lock(SCHEMA_LOCK_KEY)))
            ensure_schema(conn)

        return run
