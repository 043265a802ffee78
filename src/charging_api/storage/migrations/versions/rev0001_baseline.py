"""Baseline: the tables of schema v1 (the first release).

Each is created only where missing (a v1 database is upgraded from here).

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa

from charging_api.storage.migrations.tables import BIG_ID, TIMESTAMP, create_missing

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_missing(
        "charge_points",
        sa.Column("id", sa.String, primary_key=True),
        sa.Column("vendor", sa.String, nullable=False),
        sa.Column("model", sa.String, nullable=False),
        sa.Column("serial_number", sa.String),
        sa.Column("firmware_version", sa.String),
        sa.Column("password_hash", sa.String),
        sa.Column("registered_at", TIMESTAMP),
        sa.Column("last_boot_at", TIMESTAMP),
    )
    create_missing(
        "connectors",
        sa.Column("charge_point_id", sa.String, primary_key=True),
        sa.Column("connector_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("status", sa.String, nullable=False),
        sa.Column("error_code", sa.String, nullable=False),
        sa.Column("updated_at", TIMESTAMP),
    )
    create_missing(
        "id_tags",
        sa.Column("tag", sa.String, primary_key=True),
        sa.Column("user_id", sa.String),
        sa.Column("status", sa.String, nullable=False),
        sa.Column("expiry", TIMESTAMP),
        sa.Index("ix_id_tags_user_id", "user_id"),
    )
    create_missing(
        "transactions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("charge_point_id", sa.String, nullable=False),
        sa.Column("connector_id", sa.Integer, nullable=False),
        sa.Column("id_tag", sa.String, nullable=False),
        sa.Column("user_id", sa.String),
        sa.Column("id_tag_status", sa.String, nullable=False),
        sa.Column("meter_start_wh", sa.BigInteger, nullable=False),
        sa.Column("started_at", TIMESTAMP, nullable=False),
        sa.Column("meter_stop_wh", sa.BigInteger),
        sa.Column("stopped_at", TIMESTAMP),
        sa.Column("stop_reason", sa.String),
        sa.Index("ix_transactions_start", "charge_point_id", "connector_id", "started_at"),
        sa.Index("ix_transactions_user_started", "user_id", "started_at"),
        sa.Index("ix_transactions_started", "started_at"),
        sqlite_autoincrement=True,
    )
    create_missing(
        "meter_samples",
        sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("transaction_id", sa.Integer),
        sa.Column("charge_point_id", sa.String, nullable=False),
        sa.Column("connector_id", sa.Integer, nullable=False),
        sa.Column("timestamp", TIMESTAMP, nullable=False),
        sa.Column("energy_import_kwh", sa.Double),
        sa.Column("power_kw", sa.Double),
        sa.Column("voltage", sa.Double),
        sa.Column("current", sa.Double),
        sa.Column("state_of_charge", sa.Double),
        sa.Column("phases", sa.Text, nullable=False),
        sa.Index("ix_meter_samples_tx_time", "transaction_id", "timestamp"),
    )
