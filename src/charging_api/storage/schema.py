"""The database schema's version: Alembic revisions shipped in the package, run in-process.

The revisions live in ``charging_api/storage/migrations/versions`` and are run programmatically
on the store's own connection (no ``alembic.ini``; ``charging-api db upgrade`` is the command).
They run as one *unit of work* (:mod:`.engines`): on SQLite inside the store's
``BEGIN IMMEDIATE`` transaction, on PostgreSQL inside ``AsyncConnection.run_sync`` on the
asyncpg engine, so one upgrade is one transaction on both: it applies whole or not at all.

Three kinds of database meet this module:

* **empty** (none of our tables): created at the head revision from the table definitions
  (:data:`charging_api.storage.tables.metadata`) and stamped, which is what ``serve`` does on
  a first run. Trade-off: two descriptions of the schema (the tables and the revision chain)
  must agree; ``tests/storage/test_alembic.py`` runs the chain from nothing and compares it
  with the tables, on SQLite and PostgreSQL.
* **versioned** (``alembic_version``): at head, behind (refused by :func:`ensure_current`
  with :class:`SchemaBehind`), or at a revision this code does not know (a newer release
  migrated it: :class:`SchemaUnknown`).
* **legacy** (``schema_version``, written by releases before Alembic): schema v2, v3 and v4
  are exactly revisions ``0002``, ``0003`` and ``0004``, so they are stamped there and upgraded
  from there; v1 is upgraded from the start (the baseline creates only what is missing).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, Connection, Integer, MetaData, String, Table, func, inspect, select

from charging_api.storage.tables import metadata

#: The command an operator runs to bring a database to this version's head.
UPGRADE_COMMAND = "charging-api db upgrade"
#: Alembic's version table, read and touched directly (the store's write probe touches it).
alembic_version = Table(
    "alembic_version",
    MetaData(),
    Column("version_num", String(32), primary_key=True),
)
#: The version record of the releases before Alembic (dropped by revision 0006).
_legacy_version = Table("schema_version", MetaData(), Column("version", Integer))
#: The newest ``schema_version`` a release before Alembic wrote.
_LAST_LEGACY = 4


class _QuietContext(logging.Filter):
    """Alembic announces its dialect on every check (each start of the store); only the
    revisions it runs are news."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("Context impl", "Will assume"))


logging.getLogger("alembic.runtime.migration").addFilter(_QuietContext())


class SchemaNotCurrent(Exception):
    """The database's schema is not the one this version runs on; the message is one line
    naming what to do."""


class SchemaBehind(SchemaNotCurrent):
    """An existing schema older than this version's head: ``charging-api db upgrade``."""


class SchemaUnknown(SchemaNotCurrent):
    """The database is at a revision this version does not have (a newer release)."""


class MigrationRefused(RuntimeError):
    """A revision cannot apply to the data as it is (the message says what to change);
    nothing was changed."""


@dataclass(frozen=True, slots=True)
class SchemaState:
    """Where a database stands. ``revision`` is None for an empty database; ``legacy`` is the
    ``schema_version`` of a database from before Alembic (its revision is the equivalent)."""

    revision: str | None
    head: str
    legacy: int | None = None

    @property
    def empty(self) -> bool:
        return self.revision is None

    @property
    def at_head(self) -> bool:
        return self.revision == self.head and self.legacy is None

    @property
    def known(self) -> bool:
        return self.revision is None or self.revision in _revisions()

    def describe(self) -> str:
        """The revision for people: ``0006``, ``0003 (schema v3, before Alembic)``, ``none``."""
        if self.revision is None:
            return "none (empty database)"
        if self.legacy is not None:
            return f"{self.revision} (schema v{self.legacy}, before Alembic)"
        return self.revision


@functools.cache
def _script() -> ScriptDirectory:
    """The shipped revisions (read once per process)."""
    return ScriptDirectory.from_config(_config())


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", "charging_api.storage:migrations")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@functools.cache
def _revisions() -> frozenset[str]:
    return frozenset(r.revision for r in _script().walk_revisions())


def head() -> str:
    """This version's head revision."""
    found = _script().get_current_head()
    assert found is not None, "the package ships no revision"
    return found


def state(conn: Connection) -> SchemaState:
    """Where the database on ``conn`` stands (reads only)."""
    tables = set(inspect(conn).get_table_names())
    if alembic_version.name in tables:
        heads = MigrationContext.configure(conn).get_current_heads()
        if heads:
            return SchemaState(heads[0], head())
    if _legacy_version.name in tables:
        version = conn.execute(select(func.max(_legacy_version.c.version))).scalar()
        return _legacy(_LAST_LEGACY if version is None else int(version))
    if tables & set(metadata.tables):
        # Our tables without a version record: what the releases before Alembic took for their
        # newest version (they created what was missing and recorded that version).
        return _legacy(_LAST_LEGACY)
    return SchemaState(None, head())


def _legacy(version: int) -> SchemaState:
    return SchemaState(f"{version:04d}", head(), legacy=version)


def ensure_current(conn: Connection) -> None:
    """What the server does at start: an empty database is created at head; a database at
    head is left alone; anything else raises (one line naming the command to run)."""
    found = state(conn)
    if found.empty:
        _create_at_head(conn)
    elif not found.known or (found.legacy is not None and found.legacy > _LAST_LEGACY):
        raise SchemaUnknown(
            f"the database schema is at revision {found.describe()}, which this version "
            f"(head {found.head}) does not know: it was migrated by a newer release; run that "
            "release, or restore a backup taken before its migration"
        )
    elif not found.at_head:
        raise SchemaBehind(
            f"the database schema is at revision {found.describe()}, this version needs "
            f"{found.head}; run: {UPGRADE_COMMAND}"
        )


def upgrade(conn: Connection) -> tuple[SchemaState, SchemaState]:
    """``charging-api db upgrade``: bring the database to head; returns (before, after).

    An empty database is created at head, as by :func:`ensure_current`; a legacy one is
    stamped at its equivalent revision first. At head already: nothing is written.
    """
    before = state(conn)
    if before.empty:
        _create_at_head(conn)
    elif not before.known or (before.legacy is not None and before.legacy > _LAST_LEGACY):
        ensure_current(conn)  # raises SchemaUnknown
    elif not before.at_head:
        if before.legacy is not None and before.legacy > 1:
            _stamp(conn, before.revision or "base")
        run_migrations(conn, "head")
    return before, state(conn)


def run_migrations(conn: Connection, target: str) -> None:
    """Run the revision chain from where ``alembic_version`` says (nothing: from the start)
    to ``target``, in the transaction ``conn`` is in."""
    if not conn.in_transaction():
        # Alembic takes a transaction already open as the caller's (and commits nothing);
        # on SQLite the store opened it on the driver, which SQLAlchemy does not see.
        conn.begin()
    # Alembic's documented way to share a connection with its commands: env.py reads it
    # from ``config.attributes``.
    command.upgrade(_config(conn), target)


def _stamp(conn: Connection, revision: str) -> None:
    MigrationContext.configure(conn).stamp(_script(), revision)


def _create_at_head(conn: Connection) -> None:
    metadata.create_all(conn)
    _stamp(conn, head())
