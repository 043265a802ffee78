"""PostgreSQL's statement set: the portable one, with its own upsert and a schema lock."""

from __future__ import annotations

from sqlalchemy import Connection, Table, func, select
from sqlalchemy.dialects import postgresql

from charging_api.storage.statements import SqlStatements

#: Advisory lock key serialising schema creation between processes that start together.
SCHEMA_LOCK_KEY = 0x43484152


class PostgresStatements(SqlStatements):
    dialect = "postgresql"

    def _insert(self, table: Table) -> postgresql.Insert:
        return postgresql.insert(table)

    def _lock_schema(self, conn: Connection) -> None:
        """A transaction-scoped advisory lock: several processes (nodes starting on an empty
        database, ``db upgrade``) may reach the schema at once, and ``CREATE TABLE`` races
        otherwise; the second one finds the first one's work done."""
        conn.execute(select(func.pg_advisory_xact_lock(SCHEMA_LOCK_KEY)))
