"""Alembic environment: migrations run on the connection the caller hands over.

``charging_api.storage.schema`` runs Alembic's commands programmatically with the store's own
connection in ``config.attributes["connection"]`` (Alembic's recipe for sharing a connection),
already inside the transaction the store opened: on SQLite the store's write connection, on
PostgreSQL a connection of the asyncpg engine inside ``run_sync``. There is no ``alembic.ini``
and no offline (``--sql``) mode: the revisions read and rewrite data, not only DDL.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from charging_api.storage.tables import metadata


def run() -> None:
    connection = context.config.attributes.get("connection")
    if context.is_offline_mode() or not isinstance(connection, Connection):
        raise RuntimeError(
            "charging-api migrations run through `charging-api db upgrade` (they need a "
            "connection), not through the alembic command line"
        )
    context.configure(connection=connection, target_metadata=metadata)
    with context.begin_transaction():
        context.run_migrations()


run()
