"""SQLite's statement set: the portable one, with its hot paths run on the driver.

Starting and stopping a transaction, the key lookups every start makes (id tag,
transaction) and the meter batch INSERT skip SQLAlchemy's statement execution: on the command
path its parameter processing and result set-up cost several times the SQLite work itself,
and a meter batch's per-row processing ran under the GIL the event loop needs. They run plain
SQL on the ``sqlite3`` connection instead, with columns listed, bound and read back by name
from ``tables.py`` (:class:`DriverTable`), exactly as SQLAlchemy's column types would bind
and read them on SQLite, so rows written either way compare and read back the same.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Column, Connection, Table
from sqlalchemy.dialects import sqlite

from charging_api.domain.models import (
    ClosedBy,
    IdTag,
    IdTagStatus,
    StoredMeterSample,
    Transaction,
    id_tag_key,
)
from charging_api.storage import rows
from charging_api.storage.engines import Work, driver_connection
from charging_api.storage.statements import SqlStatements
from charging_api.storage.tables import (
    DERIVED,
    UtcDateTime,
    id_tags,
    meter_samples,
    transactions,
)

_DIALECT = sqlite.dialect()
T = TypeVar("T")


def bind_time(at: datetime) -> str:
    """A datetime as SQLAlchemy binds our UtcDateTime on SQLite: UTC without zone, in its
    DATETIME text format (``YYYY-MM-DD HH:MM:SS.ffffff``); naive input refused like there."""
    if at.tzinfo is None:
        raise ValueError(f"naive datetime {at!r}: the store only takes aware datetimes")
    return at.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def read_time(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _binder(column: Column[Any]) -> Callable[[Any], Any] | None:
    if isinstance(column.type, UtcDateTime):
        return bind_time
    process: Callable[[Any], Any] | None = column.type.dialect_impl(_DIALECT).bind_processor(
        _DIALECT
    )
    return process


def _reader(column: Column[Any]) -> Callable[[Any], Any] | None:
    if isinstance(column.type, UtcDateTime):
        return read_time
    process: Callable[[Any], Any] | None = column.type.dialect_impl(_DIALECT).result_processor(
        _DIALECT, None
    )
    return process


class DriverTable:
    """A table as driver SQL lists, binds and reads it: by column name, from ``tables.py``.

    ``columns`` is the select list of every column; :meth:`maker` turns a row fetched with it
    into a domain value, each column converted as its type reads it on SQLite. :meth:`insert`
    makes an INSERT of some columns that also writes the (scalar) defaults ``tables.py``
    declares for the others, as SQLAlchemy would.
    """

    def __init__(self, table: Table) -> None:
        self.table = table
        self.names = tuple(c.name for c in table.columns)
        self._derived = frozenset(c.name for c in table.columns if c.info.get(DERIVED))
        self.columns = ", ".join(f'"{n}"' for n in self.names)
        self._readers = tuple((c.name, r) for c in table.columns if (r := _reader(c)) is not None)

    def maker(self, kind: type[T], **convert: Callable[[Any], Any]) -> Callable[[Sequence[Any]], T]:
        """A function from a row (fetched with :attr:`columns`) to the dataclass ``kind``,
        each field given the column of the same name (every column but a derived one must
        be a field and every field a column);
        ``convert`` overrides a column type's conversion. Built once: on the hot path, one
        C-level reordering and the conversions of the columns that need one."""
        fields = [f.name for f in dataclasses.fields(kind)]  # type: ignore[arg-type]
        if set(fields) != set(self.names) - self._derived:
            raise ValueError(
                f"{self.table.name} columns {sorted(self.names)} are not the fields of"
                f" {kind.__name__} {sorted(fields)}"
            )
        readers = dict(self._readers) | convert
        pick = operator.itemgetter(*(self.names.index(f) for f in fields))
        conversions = tuple((i, readers[f]) for i, f in enumerate(fields) if f in readers)

        def make(row: Sequence[Any]) -> T:
            values = list(pick(row))
            for i, convert_ in conversions:
                value = values[i]
                if value is not None:
                    values[i] = convert_(value)
            return kind(*values)

        return make

    def insert(self, names: Sequence[str], returning: bool = False) -> DriverInsert:
        return DriverInsert(self, names, returning)


class DriverInsert:
    """``INSERT INTO table (names..., columns with defaults...) VALUES (?, ...)``: run it with
    values for ``names``, in that order and bound (see :func:`bind_time`), followed by
    :attr:`defaults`, the bound (scalar) defaults ``tables.py`` declares for the others."""

    def __init__(self, table: DriverTable, names: Sequence[str], returning: bool) -> None:
        columns = table.table.columns
        unknown = set(names) - set(columns.keys())
        if unknown:
            raise ValueError(f"{table.table.name} has no column {sorted(unknown)}")
        defaults = [
            c
            for c in columns
            if c.name not in names and c.default is not None and c.default.is_scalar
        ]
        self.defaults = tuple(_bind(c, c.default.arg) for c in defaults)  # type: ignore[union-attr]
        listed = [*names, *(c.name for c in defaults)]
        self.sql = "INSERT INTO {} ({}) VALUES ({})".format(
            table.table.name,
            ", ".join(f'"{n}"' for n in listed),
            ", ".join("?" * len(listed)),
        )
        if returning:
            self.sql += f" RETURNING {table.columns}"


def _bind(column: Column[Any], value: Any) -> Any:
    bind = _binder(column)
    return value if bind is None or value is None else bind(value)


_TX = DriverTable(transactions)
_ID_TAG = DriverTable(id_tags)
_transaction = _TX.maker(Transaction, id_tag_status=IdTagStatus, closed_by=ClosedBy)
_id_tag = _ID_TAG.maker(IdTag, status=IdTagStatus)
_FIND_START = (
    f"SELECT {_TX.columns} FROM transactions WHERE charge_point_id = ? AND connector_id = ?"
    " AND started_at = ? AND id_tag = ? AND meter_start_wh = ? ORDER BY id LIMIT 1"
)
_CREATE_TRANSACTION = _TX.insert(
    (
        "charge_point_id",
        "connector_id",
        "id_tag",
        "user_id",
        "id_tag_status",
        "meter_start_wh",
        "started_at",
    ),
    returning=True,
)
_STOP_TRANSACTION = (
    "UPDATE transactions SET meter_stop_wh = ?, stopped_at = ?, stop_reason = ?, closed_by = ?,"
    f" app_stop_reason = ? WHERE id = ? AND stopped_at IS NULL RETURNING {_TX.columns}"
)
_GET_TRANSACTION = f"SELECT {_TX.columns} FROM transactions WHERE id = ?"
_GET_ID_TAG = f"SELECT {_ID_TAG.columns} FROM id_tags WHERE tag_key = ?"
#: The meter batch's columns, in the order :func:`_sample_row` makes its tuples.
_SAMPLE_COLUMNS = (
    "transaction_id",
    "charge_point_id",
    "connector_id",
    "timestamp",
    *rows.METER_FIELDS,
    "phases",
)
_INSERT_SAMPLES = DriverTable(meter_samples).insert(_SAMPLE_COLUMNS)
_UPSERT_DOCUMENT = (
    'INSERT INTO documents (kind, "key", body, updated_at) VALUES (?, ?, ?, ?)'
    ' ON CONFLICT (kind, "key") DO UPDATE SET body = excluded.body,'
    " updated_at = excluded.updated_at"
)
_DELETE_DOCUMENT = 'DELETE FROM documents WHERE kind = ? AND "key" = ?'


class SqliteStatements(SqlStatements):
    dialect = "sqlite"

    def _insert(self, table: Table) -> sqlite.Insert:
        return sqlite.insert(table)

    def get_id_tag(self, tag: str) -> Work[IdTag | None]:
        return _first(_GET_ID_TAG, (id_tag_key(tag),), _id_tag)

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
        at = bind_time(started_at)
        same_start = (charge_point_id, connector_id, at, id_tag, meter_start_wh)
        new = (charge_point_id, connector_id, id_tag, user_id, str(id_tag_status),
               meter_start_wh, at, *_CREATE_TRANSACTION.defaults)  # fmt: skip

        def run(conn: Connection) -> tuple[Transaction, bool]:
            raw = driver_connection(conn)
            found = raw.execute(_FIND_START, same_start).fetchall()
            if found:
                return _transaction(found[0]), False
            created = raw.execute(_CREATE_TRANSACTION.sql, new).fetchall()[0]
            return _transaction(created), True

        return run

    def get_transaction(self, transaction_id: int) -> Work[Transaction | None]:
        return _first(_GET_TRANSACTION, (transaction_id,), _transaction)

    def stop_transaction(
        self,
        transaction_id: int,
        meter_stop_wh: int,
        stopped_at: datetime,
        reason: str | None,
        closed_by: ClosedBy,
        app_stop_reason: str | None,
    ) -> Work[Transaction | None]:
        stop = (
            meter_stop_wh,
            bind_time(stopped_at),
            reason,
            closed_by.value,
            app_stop_reason,
            transaction_id,
        )

        def run(conn: Connection) -> Transaction | None:
            raw = driver_connection(conn)
            found = raw.execute(_STOP_TRANSACTION, stop).fetchall()
            if not found:  # already stopped (or unknown): what is stored
                found = raw.execute(_GET_TRANSACTION, (transaction_id,)).fetchall()
            return _transaction(found[0]) if found else None

        return run

    def put_documents(
        self, kind: str, bodies: Sequence[tuple[str, str | None]], at: datetime
    ) -> Work[None]:
        """On the driver (the session records' batch: SQLAlchemy's executemany of an upsert
        cost more than the rows)."""
        when = bind_time(at)
        upserts = [(kind, key, body, when) for key, body in bodies if body is not None]
        deletes = [(kind, key) for key, body in bodies if body is None]

        def run(conn: Connection) -> None:
            raw = driver_connection(conn)
            if upserts:
                raw.executemany(_UPSERT_DOCUMENT, upserts)
            if deletes:
                raw.executemany(_DELETE_DOCUMENT, deletes)

        return run

    def insert_meter_samples(self, samples: Sequence[StoredMeterSample]) -> Work[None]:
        defaults = _INSERT_SAMPLES.defaults

        def run(conn: Connection) -> None:
            made = [_sample_row(s) + defaults for s in samples]
            # Through SQLAlchemy's exec_driver_sql (one executemany, no per-row processing):
            # its exceptions are the ones the store tells apart (a refused row or not).
            conn.exec_driver_sql(_INSERT_SAMPLES.sql, made)

        return run


def _first(sql: str, params: tuple[Any, ...], make: Callable[[Sequence[Any]], T]) -> Work[T | None]:
    def run(conn: Connection) -> T | None:
        row = driver_connection(conn).execute(sql, params).fetchone()
        return None if row is None else make(row)

    return run


def _sample_row(s: StoredMeterSample) -> tuple[Any, ...]:
    """A meter_samples row in :data:`_SAMPLE_COLUMNS` order, bound as SQLAlchemy would."""
    m = s.sample
    return (
        s.transaction_id,
        s.charge_point_id,
        s.connector_id,
        bind_time(m.timestamp),
        m.energy_import_kwh,
        m.power_kw,
        m.voltage,
        m.current,
        m.state_of_charge,
        rows.phases_text(m.phases),
    )
