"""What each store operation does in SQL: one statement set per database, one interface.

:class:`~charging_api.storage.sql.SqlStore` picks its statement set once, in ``__init__``,
from its database's dialect, and never asks which database it runs on again. Each method here
returns a *unit of work* (see :mod:`~charging_api.storage.engines`): a plain function over a
synchronous SQLAlchemy ``Connection`` that returns domain values; the store decides where it
runs (``write``, ``lookup`` or ``read``).

:class:`SqlStatements` is the portable implementation, in SQLAlchemy Core with statements
built once and bound parameters. A dialect supplies its ``INSERT ... ON CONFLICT`` and may
replace any unit of work with a faster one of its own
(:class:`~charging_api.storage.sqlite.SqliteStatements` runs its hot paths on the driver);
:class:`~charging_api.storage.postgresql.PostgresStatements` adds the schema lock that several
starting processes need. Rows become domain values by column name (:mod:`.rows`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    Connection,
    Insert,
    Table,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from charging_api.domain.models import (
    Availability,
    ChargePoint,
    ChargePointInfo,
    ClosedBy,
    ConfigurationEntry,
    ConnectorAvailability,
    ConnectorState,
    DeviceJob,
    DeviceStatus,
    IdTag,
    IdTagStatus,
    OperationRecord,
    StoredMeterSample,
    Transaction,
    TransactionQuery,
    id_tag_key,
)
from charging_api.storage import rows, schema
from charging_api.storage.engines import Work
from charging_api.storage.tables import (
    charge_points,
    configuration_keys,
    connector_availability,
    connectors,
    device_statuses,
    documents,
    id_tags,
    meter_samples,
    operations,
    transactions,
)

_tx = transactions.c
_GET_CHARGE_POINT = select(charge_points).where(charge_points.c.id == bindparam("b_id"))
_COUNT_CHARGE_POINTS = select(func.count()).select_from(charge_points)
_CHARGE_POINTS = select(charge_points).order_by(charge_points.c.id)
_DELETE_CONNECTORS = delete(connectors).where(connectors.c.charge_point_id == bindparam("b_id"))
_DELETE_CHARGE_POINT = delete(charge_points).where(charge_points.c.id == bindparam("b_id"))
_ALL_ID_TAGS = select(id_tags).order_by(id_tags.c.tag)
_DELETE_ID_TAG = delete(id_tags).where(id_tags.c.tag_key == bindparam("b_key"))
_CONNECTOR_STATES = (
    select(connectors)
    .where(connectors.c.charge_point_id == bindparam("b_cp"))
    .order_by(connectors.c.connector_id)
)
_GET_ID_TAG = select(id_tags).where(id_tags.c.tag_key == bindparam("b_key"))
_ID_TAGS_OF = (
    select(id_tags).where(id_tags.c.user_id == bindparam("b_user")).order_by(id_tags.c.tag)
)
_CREATE_TRANSACTION = insert(transactions).returning(*transactions.c)
_FIND_TRANSACTION_START = (
    select(transactions)
    .where(
        _tx.charge_point_id == bindparam("b_cp"),
        _tx.connector_id == bindparam("b_connector"),
        _tx.started_at == bindparam("b_at", type_=_tx.started_at.type),
        _tx.id_tag == bindparam("b_tag"),
        _tx.meter_start_wh == bindparam("b_meter"),
    )
    .order_by(_tx.id)
    .limit(1)
)
_GET_TRANSACTION = select(transactions).where(_tx.id == bindparam("b_id"))
_STOP_TRANSACTION = (
    update(transactions)
    .where(_tx.id == bindparam("b_id"), _tx.stopped_at.is_(None))
    .values(
        meter_stop_wh=bindparam("b_meter"),
        stopped_at=bindparam("b_at", type_=_tx.stopped_at.type),
        stop_reason=bindparam("b_reason"),
        closed_by=bindparam("b_closed_by"),
        app_stop_reason=bindparam("b_app_reason"),
    )
    .returning(*transactions.c)
)
#: Only a transaction the server closed itself is corrected by its charge point's stop.
_CORRECT_STOP = (
    update(transactions)
    .where(
        _tx.id == bindparam("b_id"),
        _tx.stopped_at.is_not(None),
        _tx.closed_by != ClosedBy.CHARGE_POINT.value,
    )
    .values(
        meter_stop_wh=bindparam("b_meter"),
        stopped_at=bindparam("b_at", type_=_tx.stopped_at.type),
        stop_reason=bindparam("b_reason"),
    )
    .returning(*transactions.c)
)
_GET_DOCUMENT = select(documents.c.body).where(
    documents.c.kind == bindparam("b_kind"), documents.c.key == bindparam("b_key")
)
_DELETE_DOCUMENT = delete(documents).where(
    documents.c.kind == bindparam("b_kind"), documents.c.key == bindparam("b_key")
)
_DOCUMENTS = (
    select(documents.c.key, documents.c.body)
    .where(documents.c.kind == bindparam("b_kind"))
    .order_by(documents.c.key)
)
_ACTIVE_TRANSACTIONS = select(transactions).where(_tx.stopped_at.is_(None)).order_by(_tx.id)
_TRANSACTIONS = select(transactions).order_by(_tx.started_at.desc(), _tx.id.desc())
_INSERT_METER_SAMPLES = insert(meter_samples)
_METER_SAMPLES_OF = (
    select(meter_samples)
    .where(meter_samples.c.transaction_id == bindparam("b_tx"))
    .order_by(meter_samples.c.timestamp, meter_samples.c.id)
)


class SqlStatements:
    """The units of work behind ``SqlStore``, in portable SQLAlchemy Core.

    Subclasses (one per dialect) give :meth:`_insert`, the dialect's INSERT that has
    ``ON CONFLICT``; the upserts are built from it once, here.
    """

    dialect: ClassVar[str]

    def __init__(self) -> None:
        self._upsert_boot = self._upsert(
            charge_points,
            ["id"],
            ["vendor", "model", "serial_number", "firmware_version", "last_boot_at"],
        )
        # Keyed by tag_key: another spelling of a registered tag updates that tag, which
        # keeps the spelling it was registered with.
        self._upsert_id_tag = self._upsert(
            id_tags, ["tag_key"], ["user_id", "status", "expiry", "parent_id_tag"]
        )
        self._upsert_status = self._upsert(
            connectors, ["charge_point_id", "connector_id"], ["status", "error_code", "updated_at"]
        )
        self._upsert_availability = self._upsert(
            connector_availability,
            ["charge_point_id", "connector_id"],
            ["wanted", "scheduled", "updated_at"],
        )
        config_keys = ["charge_point_id", "key"]
        self._upsert_reported = self._upsert(
            configuration_keys, config_keys, ["value", "readonly", "reported_at"]
        )
        self._upsert_wanted = self._upsert(configuration_keys, config_keys, ["wanted"])
        self._upsert_applied = self._upsert(
            configuration_keys, config_keys, ["applied_status", "applied_at"]
        )
        self._upsert_document = self._upsert(documents, ["kind", "key"], ["body", "updated_at"])
        register = self._insert(charge_points)
        self._register_charge_point = register.on_conflict_do_update(
            index_elements=["id"],
            set_={
                "password_hash": register.excluded.password_hash,
                # The first registration time is kept.
                "registered_at": func.coalesce(
                    charge_points.c.registered_at, register.excluded.registered_at
                ),
            },
        )

    def _insert(self, table: Table) -> sqlite.Insert | postgresql.Insert:
        raise NotImplementedError

    def _upsert(self, table: Table, keys: list[str], columns: list[str]) -> Insert:
        """INSERT, or UPDATE ``columns`` of the row with the same ``keys``; run with rows."""
        stmt = self._insert(table)
        set_ = {c: stmt.excluded[c] for c in columns}
        return stmt.on_conflict_do_update(index_elements=keys, set_=set_)

    # schema

    def create_schema(self) -> Work[None]:
        """At start: create an empty database at head; refuse one that is not at head
        (:func:`.schema.ensure_current`)."""

        def run(conn: Connection) -> None:
            self._lock_schema(conn)
            schema.ensure_current(conn)

        return run

    def upgrade_schema(self) -> Work[tuple[schema.SchemaState, schema.SchemaState]]:
        """``charging-api db upgrade``: (before, after), see :func:`.schema.upgrade`."""

        def run(conn: Connection) -> tuple[schema.SchemaState, schema.SchemaState]:
            self._lock_schema(conn)
            return schema.upgrade(conn)

        return run

    def schema_state(self) -> Work[schema.SchemaState]:
        return schema.state

    def _lock_schema(self, conn: Connection) -> None:
        """Serialise schema changes between processes (SQLite's write lock already does)."""

    def probe(self) -> Work[None]:
        """A write that changes nothing a reader could see: proves the database takes writes
        (the page is written, synced, committed)."""
        return _PROBE

    # charge points

    def get_charge_point(self, charge_point_id: str) -> Work[ChargePoint | None]:
        def run(conn: Connection) -> ChargePoint | None:
            row = conn.execute(_GET_CHARGE_POINT, {"b_id": charge_point_id}).first()
            return None if row is None else rows.charge_point(row._mapping)

        return run

    def register_charge_point(
        self, charge_point_id: str, password_hash: str | None, at: datetime
    ) -> Work[None]:
        row = {"id": charge_point_id, "password_hash": password_hash, "registered_at": at}
        return _execute(self._register_charge_point, row)

    def record_boot(self, charge_point_id: str, info: ChargePointInfo, at: datetime) -> Work[None]:
        row = {
            "id": charge_point_id,
            "vendor": info.vendor,
            "model": info.model,
            "serial_number": info.serial_number,
            "firmware_version": info.firmware_version,
            "last_boot_at": at,
        }
        return _execute(self._upsert_boot, row)

    def count_charge_points(self) -> Work[int]:
        def run(conn: Connection) -> int:
            count: int = conn.execute(_COUNT_CHARGE_POINTS).scalar_one()
            return count

        return run

    def list_charge_points(self) -> Work[list[ChargePoint]]:
        def run(conn: Connection) -> list[ChargePoint]:
            return [rows.charge_point(r._mapping) for r in conn.execute(_CHARGE_POINTS)]

        return run

    def delete_charge_point(self, charge_point_id: str) -> Work[bool]:
        def run(conn: Connection) -> bool:
            conn.execute(_DELETE_CONNECTORS, {"b_id": charge_point_id})
            deleted = conn.execute(_DELETE_CHARGE_POINT, {"b_id": charge_point_id})
            return bool(deleted.rowcount)

        return run

    # connectors

    def put_connector_states(self, states: Sequence[ConnectorState]) -> Work[None]:
        return _execute(self._upsert_status, [rows.status_row(s) for s in states])

    def connector_states(self, charge_point_id: str) -> Work[list[ConnectorState]]:
        def run(conn: Connection) -> list[ConnectorState]:
            found = conn.execute(_CONNECTOR_STATES, {"b_cp": charge_point_id})
            return [rows.connector_state(r._mapping) for r in found]

        return run

    # id tags

    def get_id_tag(self, tag: str) -> Work[IdTag | None]:
        def run(conn: Connection) -> IdTag | None:
            row = conn.execute(_GET_ID_TAG, {"b_key": id_tag_key(tag)}).first()
            return None if row is None else rows.id_tag(row._mapping)

        return run

    def put_id_tag(self, tag: IdTag) -> Work[None]:
        return _execute(self._upsert_id_tag, rows.id_tag_row(tag))

    def id_tags_of(self, user_id: str) -> Work[list[IdTag]]:
        def run(conn: Connection) -> list[IdTag]:
            found = conn.execute(_ID_TAGS_OF, {"b_user": user_id})
            return [rows.id_tag(r._mapping) for r in found]

        return run

    def all_id_tags(self) -> Work[list[IdTag]]:
        def run(conn: Connection) -> list[IdTag]:
            return [rows.id_tag(r._mapping) for r in conn.execute(_ALL_ID_TAGS)]

        return run

    def delete_id_tag(self, tag: str) -> Work[bool]:
        def run(conn: Connection) -> bool:
            return bool(conn.execute(_DELETE_ID_TAG, {"b_key": id_tag_key(tag)}).rowcount)

        return run

    # transactions

    def start_transaction(
        self,
        charge_point_id: str,
        connector_id: int,
        id_tag: str,
        user_id: str | None,
        meter_start_wh: int,
        started_at: datetime,
        id_tag_status: IdTagStatus,
    ) -> Work[tuple[Transaction, bool]]:
        """The replay check and the insert, for one write transaction."""
        same_start = {
            "b_cp": charge_point_id,
            "b_connector": connector_id,
            "b_at": started_at,
            "b_tag": id_tag,
            "b_meter": meter_start_wh,
        }
        values = {
            "charge_point_id": charge_point_id,
            "connector_id": connector_id,
            "id_tag": id_tag,
            "user_id": user_id,
            "id_tag_status": str(id_tag_status),
            "meter_start_wh": meter_start_wh,
            "started_at": started_at,
        }

        def run(conn: Connection) -> tuple[Transaction, bool]:
            row = conn.execute(_FIND_TRANSACTION_START, same_start).first()
            if row is not None:
                return rows.transaction(row._mapping), False
            return rows.transaction(conn.execute(_CREATE_TRANSACTION, values).one()._mapping), True

        return run

    def get_transaction(self, transaction_id: int) -> Work[Transaction | None]:
        def run(conn: Connection) -> Transaction | None:
            row = conn.execute(_GET_TRANSACTION, {"b_id": transaction_id}).first()
            return None if row is None else rows.transaction(row._mapping)

        return run

    def stop_transaction(
        self,
        transaction_id: int,
        meter_stop_wh: int,
        stopped_at: datetime,
        reason: str | None,
        closed_by: ClosedBy,
        app_stop_reason: str | None,
    ) -> Work[Transaction | None]:
        """Close it if open; either way, what is stored (None if unknown)."""
        params = {
            "b_id": transaction_id,
            "b_meter": meter_stop_wh,
            "b_at": stopped_at,
            "b_reason": reason,
            "b_closed_by": closed_by.value,
            "b_app_reason": app_stop_reason,
        }
        return _update_or_get(_STOP_TRANSACTION, params)

    def correct_stop(
        self, transaction_id: int, meter_stop_wh: int, stopped_at: datetime, reason: str | None
    ) -> Work[Transaction | None]:
        """The charge point's figures over ours, for a transaction the server closed; either
        way, what is stored (None if unknown)."""
        params = {
            "b_id": transaction_id,
            "b_meter": meter_stop_wh,
            "b_at": stopped_at,
            "b_reason": reason,
        }
        return _update_or_get(_CORRECT_STOP, params)

    def active_transactions(self) -> Work[list[Transaction]]:
        return _transactions(_ACTIVE_TRANSACTIONS)

    def transactions_of(self, user_id: str | None, limit: int) -> Work[list[Transaction]]:
        stmt = _TRANSACTIONS.limit(limit)
        if user_id is not None:
            stmt = stmt.where(_tx.user_id == user_id)
        return _transactions(stmt)

    def find_transactions(self, query: TransactionQuery) -> Work[list[Transaction]]:
        stmt = _TRANSACTIONS
        if query.user_id is not None:
            stmt = stmt.where(_tx.user_id == query.user_id)
        if query.charge_point_id is not None:
            stmt = stmt.where(_tx.charge_point_id == query.charge_point_id)
        if query.started_from is not None:
            stmt = stmt.where(_tx.started_at >= query.started_from)
        if query.started_before is not None:
            stmt = stmt.where(_tx.started_at < query.started_before)
        if query.active is not None:
            stmt = stmt.where(
                _tx.stopped_at.is_(None) if query.active else _tx.stopped_at.isnot(None)
            )
        return _transactions(stmt.limit(query.limit).offset(query.offset))

    # meter samples

    # documents (session features)

    def put_document(self, kind: str, key: str, body: str | None, at: datetime) -> Work[None]:
        """Upsert (or, with ``body`` None, delete) one document."""
        if body is None:
            return _execute(_DELETE_DOCUMENT, {"b_kind": kind, "b_key": key})
        return _execute(
            self._upsert_document, {"kind": kind, "key": key, "body": body, "updated_at": at}
        )

    def put_documents(
        self, kind: str, bodies: Sequence[tuple[str, str | None]], at: datetime
    ) -> Work[None]:
        """Upsert (or, with a body None, delete) several documents of one kind, in one unit."""
        upserts = [
            {"kind": kind, "key": key, "body": body, "updated_at": at}
            for key, body in bodies
            if body is not None
        ]
        deletes = [{"b_kind": kind, "b_key": key} for key, body in bodies if body is None]
        upsert = self._upsert_document

        def run(conn: Connection) -> None:
            if upserts:
                conn.execute(upsert, upserts)
            if deletes:
                conn.execute(_DELETE_DOCUMENT, deletes)

        return run

    def get_document(self, kind: str, key: str) -> Work[str | None]:
        def run(conn: Connection) -> str | None:
            found = conn.execute(_GET_DOCUMENT, {"b_kind": kind, "b_key": key}).scalar()
            return None if found is None else str(found)

        return run

    def documents(self, kind: str) -> Work[list[tuple[str, str]]]:
        def run(conn: Connection) -> list[tuple[str, str]]:
            return [(r.key, r.body) for r in conn.execute(_DOCUMENTS, {"b_kind": kind})]

        return run

    def insert_meter_samples(self, samples: Sequence[StoredMeterSample]) -> Work[None]:
        """One executemany INSERT (rows are made where the unit of work runs)."""

        def run(conn: Connection) -> None:
            conn.execute(_INSERT_METER_SAMPLES, [rows.meter_row(s) for s in samples])

        return run

    def meter_samples_of(self, transaction_id: int) -> Work[list[StoredMeterSample]]:
        def run(conn: Connection) -> list[StoredMeterSample]:
            found = conn.execute(_METER_SAMPLES_OF, {"b_tx": transaction_id})
            return [rows.stored_meter_sample(r._mapping) for r in found]

        return run

    # operator side

    def add_operation(self, record: OperationRecord) -> Work[OperationRecord]:
        values = {
            "charge_point_id": record.charge_point_id,
            "action": record.action,
            "requested_by": record.requested_by,
            "requested_at": record.requested_at,
            "duration_ms": record.duration_ms,
            "request": rows.json_text(record.request),
            "response": None if record.response is None else rows.json_text(record.response),
            "error_code": record.error_code,
        }

        def run(conn: Connection) -> OperationRecord:
            return rows.operation(conn.execute(_ADD_OPERATION, values).one()._mapping)

        return run

    def operations(
        self, charge_point_id: str | None, limit: int, before_id: int | None
    ) -> Work[list[OperationRecord]]:
        stmt = select(operations).order_by(operations.c.id.desc()).limit(limit)
        if charge_point_id is not None:
            stmt = stmt.where(operations.c.charge_point_id == charge_point_id)
        if before_id is not None:
            stmt = stmt.where(operations.c.id < before_id)

        def run(conn: Connection) -> list[OperationRecord]:
            return [rows.operation(r._mapping) for r in conn.execute(stmt)]

        return run

    def put_availability(self, av: ConnectorAvailability) -> Work[None]:
        row = {
            "charge_point_id": av.charge_point_id,
            "connector_id": av.connector_id,
            "wanted": av.wanted.value,
            "scheduled": av.scheduled,
            "updated_at": av.updated_at,
        }
        return _execute(self._upsert_availability, row)

    def availabilities(self, charge_point_id: str) -> Work[list[ConnectorAvailability]]:
        stmt = (
            select(connector_availability)
            .where(connector_availability.c.charge_point_id == charge_point_id)
            .order_by(connector_availability.c.connector_id)
        )

        def run(conn: Connection) -> list[ConnectorAvailability]:
            return [
                ConnectorAvailability(
                    **{
                        **r._mapping,
                        "wanted": Availability(r.wanted),
                        "scheduled": bool(r.scheduled),
                    }
                )
                for r in conn.execute(stmt)
            ]

        return run

    def put_reported_configuration(
        self, charge_point_id: str, entries: Sequence[ConfigurationEntry]
    ) -> Work[None]:
        params = [
            {
                "charge_point_id": charge_point_id,
                "key": e.key,
                "value": e.value,
                "readonly": e.readonly,
                "reported_at": e.reported_at,
            }
            for e in entries
        ]
        return _execute(self._upsert_reported, params)

    def put_wanted_configuration(
        self, charge_point_id: str, key: str, wanted: str | None
    ) -> Work[None]:
        row = {"charge_point_id": charge_point_id, "key": key, "wanted": wanted}
        return _execute(self._upsert_wanted, row)

    def put_configuration_result(
        self, charge_point_id: str, key: str, status: str, at: datetime
    ) -> Work[None]:
        row = {"charge_point_id": charge_point_id, "key": key, "applied_status": status,
               "applied_at": at}  # fmt: skip
        return _execute(self._upsert_applied, row)

    def configuration(self, charge_point_id: str) -> Work[list[ConfigurationEntry]]:
        stmt = (
            select(configuration_keys)
            .where(configuration_keys.c.charge_point_id == charge_point_id)
            .order_by(configuration_keys.c.key)
        )

        def run(conn: Connection) -> list[ConfigurationEntry]:
            return [
                ConfigurationEntry(**{**r._mapping, "readonly": bool(r.readonly)})
                for r in conn.execute(stmt)
            ]

        return run

    def add_device_status(self, status: DeviceStatus) -> Work[DeviceStatus]:
        values = {
            "charge_point_id": status.charge_point_id,
            "job": status.job.value,
            "status": status.status,
            "at": status.at,
        }

        def run(conn: Connection) -> DeviceStatus:
            row = conn.execute(_ADD_DEVICE_STATUS, values).one()._mapping
            return DeviceStatus(**{**row, "job": DeviceJob(row["job"])})

        return run

    def device_statuses(
        self, charge_point_id: str, job: DeviceJob, limit: int
    ) -> Work[list[DeviceStatus]]:
        stmt = (
            select(device_statuses)
            .where(
                device_statuses.c.charge_point_id == charge_point_id,
                device_statuses.c.job == job.value,
            )
            .order_by(device_statuses.c.id.desc())
            .limit(limit)
        )

        def run(conn: Connection) -> list[DeviceStatus]:
            return [
                DeviceStatus(**{**r._mapping, "job": DeviceJob(r.job)}) for r in conn.execute(stmt)
            ]

        return run


_ADD_OPERATION = insert(operations).returning(*operations.c)
_ADD_DEVICE_STATUS = insert(device_statuses).returning(*device_statuses.c)


def _probe(conn: Connection) -> None:
    conn.execute(_TOUCH_SCHEMA_VERSION)


_PROBE: Work[None] = _probe
_TOUCH_SCHEMA_VERSION = update(schema.alembic_version).values(
    version_num=schema.alembic_version.c.version_num
)


def _execute(stmt: Any, params: Any) -> Work[None]:
    def run(conn: Connection) -> None:
        conn.execute(stmt, params)

    return run


def _update_or_get(stmt: Any, params: dict[str, Any]) -> Work[Transaction | None]:
    """Run an UPDATE ... RETURNING of one transaction; when it matched nothing, read the row."""

    def run(conn: Connection) -> Transaction | None:
        row = conn.execute(stmt, params).first()
        if row is None:  # the update did not apply (or unknown): what is stored
            row = conn.execute(_GET_TRANSACTION, {"b_id": params["b_id"]}).first()
        return None if row is None else rows.transaction(row._mapping)

    return run


def _transactions(stmt: Any) -> Work[list[Transaction]]:
    def run(conn: Connection) -> list[Transaction]:
        return [rows.transaction(r._mapping) for r in conn.execute(stmt)]

    return run
