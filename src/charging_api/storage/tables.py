"""Table definitions (SQLAlchemy Core) for :class:`charging_api.storage.sql.SqlStore`.

Core rather than ORM: the hot paths (meter samples, status updates) are plain INSERTs and
UPSERTs, and skipping the unit of work keeps them cheap.

There are deliberately no foreign keys between tables: a charge point may report a status or a
meter value for a transaction we never saw (firmware bugs, replays after a data loss), and a
constraint failure in a batched meter write would poison the whole batch.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Double,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.types import TypeDecorator

#: A change to these tables comes with an Alembic revision in ``storage/migrations/versions``
#: (see :mod:`charging_api.storage.schema` and CONTRIBUTING.md).

#: ``Column.info`` key of a column computed from others by the store: written with every row,
#: never read back into a domain value (the domain type has no field of that name).
DERIVED = "derived"


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on every backend.

    SQLite has no time zone type and returns naive values; PostgreSQL returns them in the
    session's zone. Normalising here means the rest of the code never sees a naive datetime,
    and storing UTC in SQLite keeps text order equal to time order. Naive input is refused:
    guessing its zone would silently shift times.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the store only takes aware datetimes")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# SQLite only aliases ROWID (and so auto-increments) for a column typed exactly INTEGER.
_BigId = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData()

charge_points = Table(
    "charge_points",
    metadata,
    Column("id", String, primary_key=True),
    Column("vendor", String, nullable=False, default=""),
    Column("model", String, nullable=False, default=""),
    Column("serial_number", String),
    Column("firmware_version", String),
    Column("password_hash", String),
    Column("registered_at", UtcDateTime),
    Column("last_boot_at", UtcDateTime),
)

connectors = Table(
    "connectors",
    metadata,
    Column("charge_point_id", String, primary_key=True),
    Column("connector_id", Integer, primary_key=True, autoincrement=False),
    Column("status", String, nullable=False),
    Column("error_code", String, nullable=False, default="NoError"),
    Column("updated_at", UtcDateTime),
)

id_tags = Table(
    "id_tags",
    metadata,
    Column("tag", String, primary_key=True),  # as registered: the spelling is kept
    Column("user_id", String, index=True),
    Column("status", String, nullable=False),
    Column("expiry", UtcDateTime),
    # ``id_tag_key(tag)``: what every lookup compares, so tags are case-insensitive (OCPP's
    # CiString20) alike on every database. Computed in Python, not with SQL ``lower()``:
    # SQLite folds only ASCII and PostgreSQL folds by the database's collation. Unique, so
    # two spellings of one tag cannot both be registered.
    Column("tag_key", String, nullable=False, info={DERIVED: True}),
    Column("parent_id_tag", String),  # OCPP parentIdTag (v4)
    Index("ux_id_tags_tag_key", "tag_key", unique=True),
)

transactions = Table(
    "transactions",
    metadata,
    # The OCPP transactionId (an int32 on the wire). AUTOINCREMENT on SQLite so an id is never
    # handed out twice, even after the newest row is deleted.
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("charge_point_id", String, nullable=False),
    Column("connector_id", Integer, nullable=False),
    Column("id_tag", String, nullable=False),
    Column("user_id", String),
    Column("id_tag_status", String, nullable=False),
    Column("meter_start_wh", BigInteger, nullable=False),
    Column("started_at", UtcDateTime, nullable=False),
    Column("meter_stop_wh", BigInteger),
    Column("stopped_at", UtcDateTime),
    Column("stop_reason", String),
    Column("closed_by", String),  # NULL while open
    Column("app_stop_reason", String),
    # start_transaction's replay check (a replayed StartTransaction) looks up by these.
    Index("ix_transactions_start", "charge_point_id", "connector_id", "started_at"),
    Index("ix_transactions_user_started", "user_id", "started_at"),
    Index("ix_transactions_started", "started_at"),
    sqlite_autoincrement=True,
)

meter_samples = Table(
    "meter_samples",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("transaction_id", Integer),
    Column("charge_point_id", String, nullable=False),
    Column("connector_id", Integer, nullable=False),
    Column("timestamp", UtcDateTime, nullable=False),
    Column("energy_import_kwh", Double),
    Column("power_kw", Double),
    Column("voltage", Double),
    Column("current", Double),
    Column("state_of_charge", Double),
    Column("phases", Text, nullable=False, default="{}"),
    Index("ix_meter_samples_tx_time", "transaction_id", "timestamp"),
)

reservations = Table(
    "reservations",
    metadata,
    # The OCPP reservationId; AUTOINCREMENT on SQLite so an id is never handed out twice.
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("charge_point_id", String, nullable=False),
    Column("connector_id", Integer, nullable=False),
    Column("id_tag", String, nullable=False),
    Column("user_id", String),
    Column("expiry", UtcDateTime, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("made_by", String, nullable=False),
    Column("parent_id_tag", String),
    Column("status", String, nullable=False),
    Column("transaction_id", Integer),
    Column("ended_at", UtcDateTime),
    Index("ix_reservations_status", "status"),
    sqlite_autoincrement=True,
)

local_lists = Table(
    "local_lists",
    metadata,
    Column("charge_point_id", String, primary_key=True),
    Column("version", Integer, nullable=False),
    Column("entries", Text, nullable=False, default="{}"),  # JSON: tag key -> AuthorizationData
    Column("synced_at", UtcDateTime),
)

charging_profiles = Table(
    "charging_profiles",
    metadata,
    Column("charge_point_id", String, primary_key=True),
    Column("profile_id", Integer, primary_key=True, autoincrement=False),
    Column("connector_id", Integer, nullable=False),
    Column("purpose", String, nullable=False),
    Column("stack_level", Integer, nullable=False),
    Column("profile", Text, nullable=False),  # JSON: csChargingProfiles as sent
    Column("set_at", UtcDateTime, nullable=False),
    Column("set_by", String, nullable=False),
    Column("transaction_id", Integer),
)

# The operator side (revision 0005 created these on existing databases).

operations = Table(
    "operations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("charge_point_id", String, nullable=False),
    Column("action", String, nullable=False),
    Column("requested_by", String, nullable=False),
    Column("requested_at", UtcDateTime, nullable=False),
    Column("duration_ms", Integer, nullable=False),
    Column("request", Text, nullable=False),  # JSON
    Column("response", Text),  # JSON; NULL when the operation failed
    Column("error_code", String),
    Index("ix_operations_cp", "charge_point_id", "id"),
    sqlite_autoincrement=True,
)

connector_availability = Table(
    "connector_availability",
    metadata,
    Column("charge_point_id", String, primary_key=True),
    Column("connector_id", Integer, primary_key=True, autoincrement=False),
    Column("wanted", String, nullable=False),
    Column("scheduled", Boolean, nullable=False, default=False),
    Column("updated_at", UtcDateTime, nullable=False),
)

configuration_keys = Table(
    "configuration_keys",
    metadata,
    Column("charge_point_id", String, primary_key=True),
    Column("key", String, primary_key=True),
    Column("value", Text),
    Column("readonly", Boolean, nullable=False, default=False),
    Column("reported_at", UtcDateTime),
    Column("wanted", Text),
    Column("applied_status", String),
    Column("applied_at", UtcDateTime),
)

device_statuses = Table(
    "device_statuses",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("charge_point_id", String, nullable=False),
    Column("job", String, nullable=False),
    Column("status", String, nullable=False),
    Column("at", UtcDateTime, nullable=False),
    Index("ix_device_statuses_cp_job", "charge_point_id", "job", "id"),
    sqlite_autoincrement=True,
)
#: Small JSON documents of the session features (issue 13), by kind and key: tariffs
#: (``tariff``/id), tariff assignments (``tariff_assignment``/``chargePoint:ID``,
#: ``user:ID``, ``group:ID``) and session records (``session``/transaction id: limits, the
#: tariff snapshot frozen at the start, the receipt).
documents = Table(
    "documents",
    metadata,
    Column("kind", String, primary_key=True),
    Column("key", String, primary_key=True),
    Column("body", Text, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
)
