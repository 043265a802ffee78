"""The SQL implementation of the core's ``Store`` port (SQLite by default, PostgreSQL too).

Every method that returns has committed, so what we answer a charge point is never ahead
of the disk. Meter samples and connector statuses are the exception: they arrive in bulk and
losing the last fraction of a second of them in a crash is acceptable, so they are buffered and
written in batches by a background task that this store owns.

Each method is one unit of work handed to the :mod:`~charging_api.storage.engines` database
(on SQLite, writes and key lookups run on the event loop, range reads on reader threads).
Statements are built once, with bound parameters, so a call does not rebuild and re-hash a
SQLAlchemy expression; SQLAlchemy's compiled cache does the rest. The hottest SQLite
statements skip SQLAlchemy's execution altogether (the ``_SQLITE_*`` strings).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import (
    Connection,
    Insert,
    Row,
    Table,
    bindparam,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DataError, IntegrityError

from charging_api.domain.models import (
    ChargePoint,
    ChargePointInfo,
    ConnectorState,
    IdTag,
    IdTagStatus,
    MeterSample,
    StoredMeterSample,
    Transaction,
)
from charging_api.storage.engines import Database, Work, driver_connection, open_database
from charging_api.storage.tables import (
    SCHEMA_VERSION,
    charge_points,
    connectors,
    id_tags,
    metadata,
    meter_samples,
    schema_version,
    transactions,
)

log = logging.getLogger(__name__)

#: PostgreSQL advisory lock serialising schema creation between processes.
_SCHEMA_LOCK_KEY = 0x43484152
_METER_FIELDS = (
    "energy_import_kwh",
    "power_kw",
    "voltage",
    "current",
    "state_of_charge",
)
_REFUSED = (DataError, IntegrityError)  # the rows are at fault, not the connection
_SAMPLE_COLUMNS = (
    "transaction_id",
    "charge_point_id",
    "connector_id",
    "timestamp",
    *_METER_FIELDS,
    "phases",
)
#: SQLite's meter INSERT, run by the driver's executemany on ready-made tuples: SQLAlchemy's
#: per-row parameter processing was most of a batch's cost, under the GIL the event loop needs.
_SQLITE_INSERT_SAMPLES = "INSERT INTO meter_samples ({}) VALUES ({})".format(
    ", ".join(f'"{c}"' for c in _SAMPLE_COLUMNS), ", ".join("?" * len(_SAMPLE_COLUMNS))
)

# Statements that do not depend on the dialect, built once.
_tx = transactions.c
_GET_CHARGE_POINT = select(charge_points).where(charge_points.c.id == bindparam("b_id"))
_COUNT_CHARGE_POINTS = select(func.count()).select_from(charge_points)
_CONNECTOR_STATES = (
    select(connectors)
    .where(connectors.c.charge_point_id == bindparam("b_cp"))
    .order_by(connectors.c.connector_id)
)
_GET_ID_TAG = select(id_tags).where(id_tags.c.tag == bindparam("b_tag"))
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
_SET_TRANSACTION_USER = (
    update(transactions).where(_tx.id == bindparam("b_id")).values(user_id=bindparam("b_user"))
)
_STOP_TRANSACTION = (
    update(transactions)
    .where(_tx.id == bindparam("b_id"), _tx.stopped_at.is_(None))
    .values(
        meter_stop_wh=bindparam("b_meter"),
        stopped_at=bindparam("b_at", type_=_tx.stopped_at.type),
        stop_reason=bindparam("b_reason"),
    )
    .returning(*transactions.c)
)
# SQLite's start, stop and hot key lookups, run on the driver: on the command path SQLAlchemy's
# execution (parameter processing, result set-up) cost several times the SQLite work itself.
# Values are bound as SQLAlchemy would bind them on SQLite (see _sqlite_time), so rows written
# either way compare and read back the same.
_TX_COLUMNS = ", ".join(f'"{f}"' for f in Transaction.__dataclass_fields__)
_SQLITE_FIND_START = (
    f"SELECT {_TX_COLUMNS} FROM transactions WHERE charge_point_id = ? AND connector_id = ?"
    " AND started_at = ? AND id_tag = ? AND meter_start_wh = ? ORDER BY id LIMIT 1"
)
_SQLITE_CREATE_TRANSACTION = (
    "INSERT INTO transactions (charge_point_id, connector_id, id_tag, user_id, id_tag_status,"
    f" meter_start_wh, started_at) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING {_TX_COLUMNS}"
)
_SQLITE_STOP_TRANSACTION = (
    "UPDATE transactions SET meter_stop_wh = ?, stopped_at = ?, stop_reason = ?"
    f" WHERE id = ? AND stopped_at IS NULL RETURNING {_TX_COLUMNS}"
)
_SQLITE_GET_TRANSACTION = f"SELECT {_TX_COLUMNS} FROM transactions WHERE id = ?"
_SQLITE_GET_ID_TAG = "SELECT tag, user_id, status, expiry FROM id_tags WHERE tag = ?"
_ACTIVE_TRANSACTIONS = select(transactions).where(_tx.stopped_at.is_(None)).order_by(_tx.id)
_INSERT_METER_SAMPLES = insert(meter_samples)
_METER_SAMPLES_OF = (
    select(meter_samples)
    .where(meter_samples.c.transaction_id == bindparam("b_tx"))
    .order_by(meter_samples.c.timestamp, meter_samples.c.id)
)


class SqlStore:
    """``Store`` over SQLAlchemy Core.

    ``engine_kwargs`` go to the engine (e.g. ``connect_args``). At most
    ``max_buffered_samples`` meter samples wait in memory; beyond that the oldest are
    dropped, so a dead database cannot exhaust memory.
    """

    def __init__(
        self,
        database_url: str,
        *,
        meter_batch_size: int = 500,
        meter_flush_interval: float = 0.2,
        max_buffered_samples: int = 100_000,
        engine_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self._url = make_url(database_url)
        self._db: Database = open_database(self._url, engine_kwargs)
        self._dialect = self._db.dialect
        self._batch_size = meter_batch_size
        self._flush_interval = meter_flush_interval
        self._max_buffered = max_buffered_samples
        self._buffer: deque[StoredMeterSample] = deque(maxlen=max_buffered_samples)
        # Latest connector status per connector, written with the next batch: a status is
        # not a promise to a charge point, and one commit (an fsync) per StatusNotification
        # was the command path's bottleneck.
        self._statuses: dict[tuple[str, int], ConnectorState] = {}
        self._wake = asyncio.Event()
        self._write_lock = asyncio.Lock()  # one batch write at a time, in buffer order
        self._flusher: asyncio.Task[None] | None = None
        self._closing = False
        # The dialect's INSERT ... ON CONFLICT statements, built once.
        self._upsert_boot = self._upsert(
            charge_points,
            ["id"],
            ["vendor", "model", "serial_number", "firmware_version", "last_boot_at"],
        )
        self._upsert_id_tag = self._upsert(id_tags, ["tag"], ["user_id", "status", "expiry"])
        self._upsert_status = self._upsert(
            connectors, ["charge_point_id", "connector_id"], ["status", "error_code", "updated_at"]
        )
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

    # lifecycle

    async def start(self) -> None:
        """Create the schema if needed and start the meter sample flusher."""
        db = self._url.database
        if self._dialect == "sqlite" and db:  # (":memory:" -> mkdir ".", harmless)
            Path(db).parent.mkdir(parents=True, exist_ok=True)
        dialect = self._dialect

        def create_schema(conn: Connection) -> None:
            if dialect == "postgresql":  # several processes may start at once
                conn.execute(select(func.pg_advisory_xact_lock(_SCHEMA_LOCK_KEY)))
            metadata.create_all(conn)
            found = conn.execute(select(func.max(schema_version.c.version))).scalar()
            if found is None:
                conn.execute(insert(schema_version), {"version": SCHEMA_VERSION})
            elif found > SCHEMA_VERSION:
                raise RuntimeError(f"database schema v{found} is newer than this code")
            # Migrations from older versions go here.

        await self._db.write(create_schema)
        self._closing = False
        self._flusher = asyncio.create_task(self._flush_loop(), name="meter flusher")

    async def close(self) -> None:
        """Stop the flusher, write what is still buffered, release connections."""
        self._closing = True
        self._wake.set()
        if self._flusher is not None:
            # It exits at its next wake-up: never cancelled halfway through a write,
            # which could lose or duplicate a batch.
            task, self._flusher = self._flusher, None
            await task
        try:
            await self.flush()
        finally:
            await self._db.dispose()

    async def flush(self) -> None:
        """Write every buffered status and meter sample now; on failure raise, keeping them."""
        async with self._write_lock:
            if self._statuses:
                await self._write_statuses()
            if not self._buffer:
                return
            pending = deque(self._buffer)
            self._buffer.clear()
            try:
                await self._write_samples(pending)
            except BaseException:
                rest = [*pending, *self._buffer]
                self._buffer.clear()
                self._enqueue(rest)
                raise

    # charge points

    async def get_charge_point(self, charge_point_id: str) -> ChargePoint | None:
        r = await self._first(_GET_CHARGE_POINT, {"b_id": charge_point_id})
        if r is None:
            return None
        info = ChargePointInfo(r.vendor, r.model, r.serial_number, r.firmware_version)
        return ChargePoint(r.id, info, r.password_hash, r.registered_at)

    async def add_charge_point(self, charge_point_id: str, password_hash: str | None) -> None:
        """Register (or re-key) a charge point; the first registration time is kept."""
        row = {
            "id": charge_point_id,
            "password_hash": password_hash,
            "registered_at": datetime.now(UTC),
        }
        await self._execute(self._register_charge_point, row)

    async def record_boot(self, charge_point_id: str, info: ChargePointInfo, at: datetime) -> None:
        """Upsert what BootNotification said; password and registration stay as they are."""
        row = {
            "id": charge_point_id,
            "vendor": info.vendor,
            "model": info.model,
            "serial_number": info.serial_number,
            "firmware_version": info.firmware_version,
            "last_boot_at": at,
        }
        await self._execute(self._upsert_boot, row)

    async def count_charge_points(self) -> int:
        count: int = await self._db.read(lambda c: c.execute(_COUNT_CHARGE_POINTS).scalar_one())
        return count

    # connectors

    async def set_connector_status(self, state: ConnectorState) -> None:
        """Batched like meter samples (latest per connector wins); readers see it at once."""
        if state.updated_at is not None and state.updated_at.tzinfo is None:
            raise ValueError(f"naive status timestamp {state.updated_at!r}")
        self._statuses[(state.charge_point_id, state.connector_id)] = state

    async def connector_states(self, charge_point_id: str) -> list[ConnectorState]:
        found = {
            r.connector_id: ConnectorState(**r._mapping)
            for r in await self._all(_CONNECTOR_STATES, {"b_cp": charge_point_id})
        }
        for (cp_id, connector_id), state in list(self._statuses.items()):
            if cp_id == charge_point_id:
                found[connector_id] = state
        return [found[k] for k in sorted(found)]

    async def _write_statuses(self) -> None:
        """One upsert batch for the buffered statuses; on failure they stay buffered
        (unless a newer status for the same connector arrived meanwhile)."""
        pending, self._statuses = self._statuses, {}
        rows = [
            {
                "charge_point_id": st.charge_point_id,
                "connector_id": st.connector_id,
                "status": st.status,
                "error_code": st.error_code,
                "updated_at": st.updated_at,
            }
            for st in pending.values()
        ]
        try:
            await self._execute(self._upsert_status, rows)
        except BaseException:
            for key, state in pending.items():
                self._statuses.setdefault(key, state)
            raise

    # id tags

    async def get_id_tag(self, tag: str) -> IdTag | None:
        if self._dialect == "sqlite":  # every start reads one (see _SQLITE_GET_ID_TAG)
            found = await self._sqlite_lookup(_SQLITE_GET_ID_TAG, (tag,))
            if found is None:
                return None
            tag_, user_id, status, expiry = found
            return IdTag(tag_, user_id, IdTagStatus(status), _sqlite_utc(expiry))
        row = await self._first(_GET_ID_TAG, {"b_tag": tag})
        return None if row is None else _id_tag(row)

    async def put_id_tag(self, tag: IdTag) -> None:
        row = {"tag": tag.tag, "user_id": tag.user_id, "status": str(tag.status),
               "expiry": tag.expiry}  # fmt: skip
        await self._execute(self._upsert_id_tag, row)

    async def id_tags_of(self, user_id: str) -> list[IdTag]:
        return [_id_tag(r) for r in await self._all(_ID_TAGS_OF, {"b_user": user_id})]

    # transactions

    async def start_transaction(
        self,
        charge_point_id: str,
        connector_id: int,
        id_tag: str,
        user_id: str | None,
        meter_start_wh: int,
        started_at: datetime,
        id_tag_status: IdTagStatus,
    ) -> tuple[Transaction, bool]:
        """The replay check and the insert in one write transaction (one commit); the
        database's autoincrement id is the OCPP transactionId."""
        if self._dialect == "sqlite":
            at = _sqlite_time(started_at)
            same_start = (charge_point_id, connector_id, at, id_tag, meter_start_wh)
            new = (charge_point_id, connector_id, id_tag, user_id, str(id_tag_status),
                   meter_start_wh, at)  # fmt: skip

            def start_sqlite(conn: Connection) -> tuple[tuple[Any, ...], bool]:
                raw = driver_connection(conn)
                found = raw.execute(_SQLITE_FIND_START, same_start).fetchall()
                if found:
                    return found[0], False
                return raw.execute(_SQLITE_CREATE_TRANSACTION, new).fetchall()[0], True

            found_or_new, created = await self._db.write(start_sqlite)
            return _sqlite_transaction(found_or_new), created
        same_start_params = {
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

        def start(conn: Connection) -> tuple[Row[Any], bool]:
            row = conn.execute(_FIND_TRANSACTION_START, same_start_params).first()
            if row is not None:
                return row, False
            return conn.execute(_CREATE_TRANSACTION, values).one(), True

        row, created = await self._db.write(start)
        return _transaction(row), created

    async def get_transaction(self, transaction_id: int) -> Transaction | None:
        if self._dialect == "sqlite":
            found = await self._sqlite_lookup(_SQLITE_GET_TRANSACTION, (transaction_id,))
            return None if found is None else _sqlite_transaction(found)
        row = await self._first(_GET_TRANSACTION, {"b_id": transaction_id})
        return None if row is None else _transaction(row)

    async def set_transaction_user(self, transaction_id: int, user_id: str) -> None:
        await self._execute(_SET_TRANSACTION_USER, {"b_id": transaction_id, "b_user": user_id})

    async def stop_transaction(
        self,
        transaction_id: int,
        meter_stop_wh: int,
        stopped_at: datetime,
        reason: str | None,
    ) -> Transaction | None:
        """Close it once: a repeated (replayed) stop gets the first stop back, unchanged."""
        if self._dialect == "sqlite":
            stop_values = (meter_stop_wh, _sqlite_time(stopped_at), reason, transaction_id)

            def stop_sqlite(conn: Connection) -> tuple[Any, ...] | None:
                raw = driver_connection(conn)
                rows = raw.execute(_SQLITE_STOP_TRANSACTION, stop_values).fetchall()
                if not rows:  # already stopped (or unknown): what is stored
                    rows = raw.execute(_SQLITE_GET_TRANSACTION, (transaction_id,)).fetchall()
                return rows[0] if rows else None

            stopped = await self._db.write(stop_sqlite)
            return None if stopped is None else _sqlite_transaction(stopped)
        params = {
            "b_id": transaction_id,
            "b_meter": meter_stop_wh,
            "b_at": stopped_at,
            "b_reason": reason,
        }

        def stop(conn: Connection) -> Row[Any] | None:
            row = conn.execute(_STOP_TRANSACTION, params).first()
            if row is None:
                row = conn.execute(_GET_TRANSACTION, {"b_id": transaction_id}).first()
            return row

        row = await self._db.write(stop)
        return None if row is None else _transaction(row)

    async def active_transactions(self) -> list[Transaction]:
        return [_transaction(r) for r in await self._all(_ACTIVE_TRANSACTIONS)]

    async def transactions_of(self, user_id: str | None, limit: int) -> list[Transaction]:
        stmt = select(transactions).order_by(_tx.started_at.desc(), _tx.id.desc()).limit(limit)
        if user_id is not None:
            stmt = stmt.where(_tx.user_id == user_id)
        return [_transaction(r) for r in await self._all(stmt)]

    # meter samples

    def add_meter_samples(self, samples: Sequence[StoredMeterSample]) -> None:
        """Buffer for the flusher. Bad input (naive timestamp, unserialisable phases) raises
        here, where the caller sees it, instead of poisoning a batch later. Rows are made once
        per batch by the flusher, not here on the hot path."""
        for s in samples:
            if s.sample.timestamp.tzinfo is None:
                raise ValueError(f"naive meter sample timestamp {s.sample.timestamp!r}")
            if s.sample.phases:
                orjson.dumps(s.sample.phases)
        self._enqueue(samples)
        if len(self._buffer) >= self._batch_size:
            self._wake.set()

    async def meter_samples_of(self, transaction_id: int) -> list[StoredMeterSample]:
        return [
            StoredMeterSample(
                r.charge_point_id,
                r.connector_id,
                r.transaction_id,
                MeterSample(
                    timestamp=r.timestamp,
                    phases=orjson.loads(r.phases),
                    **{f: r._mapping[f] for f in _METER_FIELDS},
                ),
            )
            for r in await self._all(_METER_SAMPLES_OF, {"b_tx": transaction_id})
        ]

    # internals

    def _insert(self, table: Table) -> sqlite.Insert | postgresql.Insert:
        """The dialect's INSERT: the one that has ON CONFLICT."""
        return (sqlite.insert if self._dialect == "sqlite" else postgresql.insert)(table)

    def _upsert(self, table: Table, keys: list[str], columns: list[str]) -> Insert:
        """INSERT, or UPDATE ``columns`` of the row with the same ``keys``; run with rows."""
        stmt = self._insert(table)
        set_ = {c: stmt.excluded[c] for c in columns}
        return stmt.on_conflict_do_update(index_elements=keys, set_=set_)

    async def _execute(self, stmt: Any, params: Any = None) -> None:
        await self._db.write(lambda c: c.execute(stmt, params))

    async def _first(self, stmt: Any, params: dict[str, Any] | None = None) -> Row[Any] | None:
        """The first row of a key lookup (see ``Database.lookup``)."""
        row: Row[Any] | None = await self._db.lookup(lambda c: c.execute(stmt, params).first())
        return row

    async def _sqlite_lookup(self, sql: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
        """The first row of a key lookup run on the driver (SQLite only)."""
        found: tuple[Any, ...] | None = await self._db.lookup(
            lambda c: driver_connection(c).execute(sql, params).fetchone()
        )
        return found

    async def _all(self, stmt: Any, params: dict[str, Any] | None = None) -> Sequence[Row[Any]]:
        rows: Sequence[Row[Any]] = await self._db.read(lambda c: c.execute(stmt, params).all())
        return rows

    def _enqueue(self, rows: Collection[StoredMeterSample]) -> None:
        overflow = len(self._buffer) + len(rows) - self._max_buffered
        if overflow > 0:
            log.warning("meter sample buffer full: dropping %d oldest samples", overflow)
        self._buffer.extend(rows)  # the deque's maxlen drops from the old end

    async def _write_samples(self, pending: deque[StoredMeterSample]) -> None:
        """One executemany INSERT; samples leave ``pending`` once committed (or refused).

        If the database refuses the batch for its data, one bad row must not hold the rest
        hostage forever: retry row by row and drop only the rows it refuses.
        """
        try:
            await self._db.write(self._insert_samples(list(pending)))
            pending.clear()
            return
        except _REFUSED:
            log.warning("%d meter samples refused; retrying one by one", len(pending))
        while pending:
            try:
                await self._db.write(self._insert_samples([pending[0]]))
            except _REFUSED:
                log.exception("dropping a meter sample the database refuses: %r", pending[0])
            pending.popleft()

    def _insert_samples(self, samples: list[StoredMeterSample]) -> Work[None]:
        """The unit of work that inserts ``samples`` (rows are made where it runs)."""
        if self._dialect == "sqlite":

            def insert_sqlite(conn: Connection) -> None:
                conn.exec_driver_sql(_SQLITE_INSERT_SAMPLES, [_sqlite_row(s) for s in samples])

            return insert_sqlite

        def insert_rows(conn: Connection) -> None:
            conn.execute(_INSERT_METER_SAMPLES, [_meter_row(s) for s in samples])

        return insert_rows

    async def _flush_loop(self) -> None:
        """Flush every ``meter_flush_interval``, or as soon as a full batch waits."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._flush_interval)
            self._wake.clear()
            if self._closing:
                return  # close() does the final flush
            try:
                await self.flush()
            except Exception:  # keep flushing: the database may come back
                log.exception("writing %d meter samples failed", len(self._buffer))
                # Don't spin against a dead database.
                await asyncio.sleep(self._flush_interval)


def _transaction(r: Row[Any]) -> Transaction:
    return Transaction(**{**r._mapping, "id_tag_status": IdTagStatus(r.id_tag_status)})


def _id_tag(r: Row[Any]) -> IdTag:
    return IdTag(r.tag, r.user_id, IdTagStatus(r.status), r.expiry)


def _meter_row(s: StoredMeterSample) -> dict[str, Any]:
    m = s.sample
    return {
        "transaction_id": s.transaction_id,
        "charge_point_id": s.charge_point_id,
        "connector_id": s.connector_id,
        "timestamp": m.timestamp,
        **{f: getattr(m, f) for f in _METER_FIELDS},
        "phases": orjson.dumps(m.phases).decode(),
    }


def _sqlite_time(at: datetime) -> str:
    """A datetime as SQLAlchemy binds our UtcDateTime on SQLite: UTC without zone, in its
    DATETIME text format (``YYYY-MM-DD HH:MM:SS.ffffff``); naive input refused like there."""
    if at.tzinfo is None:
        raise ValueError(f"naive datetime {at!r}: the store only takes aware datetimes")
    return at.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def _sqlite_utc(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text).replace(tzinfo=UTC)


def _sqlite_transaction(row: tuple[Any, ...]) -> Transaction:
    """A transactions row read on the driver (columns in Transaction's field order)."""
    tx_id, cp, connector, tag, user, meter_start, started, status, meter_stop, stopped, why = row
    started_at = _sqlite_utc(started)
    assert started_at is not None
    return Transaction(
        tx_id, cp, connector, tag, user, meter_start, started_at, IdTagStatus(status),
        meter_stop, _sqlite_utc(stopped), why,
    )  # fmt: skip


def _sqlite_row(s: StoredMeterSample) -> tuple[Any, ...]:
    """A meter_samples row bound as SQLAlchemy would on SQLite (see ``_sqlite_time``)."""
    m = s.sample
    return (
        s.transaction_id,
        s.charge_point_id,
        s.connector_id,
        _sqlite_time(m.timestamp),
        m.energy_import_kwh,
        m.power_kw,
        m.voltage,
        m.current,
        m.state_of_charge,
        orjson.dumps(m.phases).decode() if m.phases else "{}",
    )
