"""Schema v4: id_tags.parent_id_tag; reservations, local lists, charging profiles.

``parent_id_tag`` is OCPP's parentIdTag, empty for every tag registered before.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from charging_api.storage.migrations.tables import TIMESTAMP, create_missing

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE id_tags ADD COLUMN parent_id_tag VARCHAR")
    create_missing(
        "reservations",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("charge_point_id", sa.String, nullable=False),
        sa.Column("connector_id", sa.Integer, nullable=False),
        sa.Column("id_tag", sa.String, nullable=False),
        sa.Column("user_id", sa.String),
        sa.Column("expiry", TIMESTAMP, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("made_by", sa.String, nullable=False),
        sa.Column("parent_id_tag", sa.String),
        sa.Column("status", sa.String, nullable=False),
        sa.Column("transaction_id", sa.Integer),
        sa.Column("ended_at", TIMESTAMP),
        sa.Index("ix_reservations_status", "status"),
        sqlite_autoincrement=True,
    )
    create_missing(
        "local_lists",
        sa.Column("charge_point_id", sa.String, primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("entries", sa.Text, nullable=False),
        sa.Column("synced_at", TIMESTAMP),
    )
    create_missing(
        "charging_profiles",
        sa.Column("charge_point_id", sa.String, primary_key=True),
        sa.Column("profile_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("connector_id", sa.Integer, nullable=False),
        sa.Column("purpose", sa.String, nullable=False),
        sa.Column("stack_level", sa.Integer, nullable=False),
        sa.Column("profile", sa.Text, nullable=False),
        sa.Column("set_at", TIMESTAMP, nullable=False),
        sa.Column("set_by", sa.String, nullable=False),
        sa.Column("transaction_id", sa.Integer),
    )
