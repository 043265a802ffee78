"""Operations log, availability, configuration keys, device statuses, documents.

The tables releases at schema v4 added without a version step, each created only where
missing: a v4 database may hold some of them. And the indexes of the v1 tables, where a
database lacks one (the releases before Alembic never added an index to an existing table),
so every upgraded database has the indexes a new one has.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from charging_api.storage.migrations.tables import TIMESTAMP, create_missing

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


#: (index, table, columns) of the tables revision 0001 describes.
V1_INDEXES = [
    ("ix_id_tags_user_id", "id_tags", ["user_id"]),
    ("ix_transactions_start", "transactions", ["charge_point_id", "connector_id", "started_at"]),
    ("ix_transactions_user_started", "transactions", ["user_id", "started_at"]),
    ("ix_transactions_started", "transactions", ["started_at"]),
    ("ix_meter_samples_tx_time", "meter_samples", ["transaction_id", "timestamp"]),
]


def upgrade() -> None:
    for name, table, columns in V1_INDEXES:
        op.create_index(name, table, columns, if_not_exists=True)
    create_missing(
        "operations",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("charge_point_id", sa.String, nullable=False),
        sa.Column("action", sa.String, nullable=False),
        sa.Column("requested_by", sa.String, nullable=False),
        sa.Column("requested_at", TIMESTAMP, nullable=False),
        sa.Column("duration_ms", sa.Integer, nullable=False),
        sa.Column("request", sa.Text, nullable=False),
        sa.Column("response", sa.Text),
        sa.Column("error_code", sa.String),
        sa.Index("ix_operations_cp", "charge_point_id", "id"),
        sqlite_autoincrement=True,
    )
    create_missing(
        "connector_availability",
        sa.Column("charge_point_id", sa.String, primary_key=True),
        sa.Column("connector_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("wanted", sa.String, nullable=False),
        sa.Column("scheduled", sa.Boolean, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
    )
    create_missing(
        "configuration_keys",
        sa.Column("charge_point_id", sa.String, primary_key=True),
        sa.Column("key", sa.String, primary_key=True),
        sa.Column("value", sa.Text),
        sa.Column("readonly", sa.Boolean, nullable=False),
        sa.Column("reported_at", TIMESTAMP),
        sa.Column("wanted", sa.Text),
        sa.Column("applied_status", sa.String),
        sa.Column("applied_at", TIMESTAMP),
    )
    create_missing(
        "device_statuses",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("charge_point_id", sa.String, nullable=False),
        sa.Column("job", sa.String, nullable=False),
        sa.Column("status", sa.String, nullable=False),
        sa.Column("at", TIMESTAMP, nullable=False),
        sa.Index("ix_device_statuses_cp_job", "charge_point_id", "job", "id"),
        sqlite_autoincrement=True,
    )
    create_missing(
        "documents",
        sa.Column("kind", sa.String, primary_key=True),
        sa.Column("key", sa.String, primary_key=True),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
    )
