"""The SQL implementation of the core's ``Store`` port (SQLite by default, PostgreSQL too).

Every method that returns has committed, so what we answer a charge point is never ahead
of the disk. Meter samples are the exception: they arrive in bulk and losing the last
fraction of a second of them in a crash is acceptable, so they are buffered and written in
batches by a background task that this store owns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Collection, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Executable, Row, Table, event, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

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
_SQLITE_PRAGMAS = (
    "journal_mode=WAL",  # readers don't block the writer
    "synchronous=FULL",  # a commit that returned survives power loss
    "foreign_keys=ON",
    "busy_timeout=5000",  # wait for another connection's write instead of failing
)
_METER_FIELDS = (
    "energy_import_kwh",
    "power_kw",
    "voltage",
    "current",
    "state_of_charge",
)
_REFUSED = (DataError, IntegrityError)  # the rows are at fault, not the connection
_MeterRow = dict[str, Any]


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    for pragma in _SQLITE_PRAGMAS:
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


class SqlStore:
    """``Store`` over SQLAlchemy Core and an async engine.

    ``engine_kwargs`` go to ``create_async_engine`` (e.g. ``connect_args``). At most
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
        # A file database cannot go away under us; a server can (pre-ping costs a round trip).
        kwargs = {
            "pool_pre_ping": self._url.get_backend_name() != "sqlite",
            **(engine_kwargs or {}),
        }
        self._engine = create_async_engine(self._url, **kwargs)
        self._dialect = self._engine.dialect.name
        if self._dialect == "sqlite":
            event.listen(self._engine.sync_engine, "connect", _sqlite_pragmas)
        elif self._dialect != "postgresql":
            raise ValueError(f"unsupported database {self._dialect!r}")
        self._batch_size = meter_batch_size
        self._flush_interval = meter_flush_interval
        self._max_buffered = max_buffered_samples
        self._buffer: deque[_MeterRow] = deque(maxlen=max_buffered_samples)
        # Latest connector status per connector, written with the next batch: a status is
        # not a promise to a charge point, and one commit (an fsync) per StatusNotification
        # was the command path's bottleneck.
        self._statuses: dict[tuple[str, int], ConnectorState] = {}
        self._wake = asyncio.Event()
        # Every write transaction of this process goes through here, one at a time: SQLite
        # allows one writer, and letting pool connections race for its lock meant busy-handler
        # sleeps (up to 100 ms each) and, under a reconnect storm, "database is locked".
        self._db_write = asyncio.Lock()
        self._write_lock = asyncio.Lock()  # one sample write at a time, in buffer order
        self._flusher: asyncio.Task[None] | None = None
        self._closing = False

    # lifecycle

    async def start(self) -> None:
        """Create the schema if needed and start the meter sample flusher."""
        db = self._url.database
        if self._dialect == "sqlite" and db:  # (":memory:" -> mkdir ".", harmless)
            Path(db).parent.mkdir(parents=True, exist_ok=True)
        async with self._begin() as conn:
            if self._dialect == "postgresql":  # several processes may start at once
                await conn.execute(select(func.pg_advisory_xact_lock(_SCHEMA_LOCK_KEY)))
            await conn.run_sync(metadata.create_all)
            version = select(func.max(schema_version.c.version))
            found = (await conn.execute(version)).scalar()
            if found is None:
                await conn.execute(insert(schema_version), {"version": SCHEMA_VERSION})
            elif found > SCHEMA_VERSION:
                raise RuntimeError(f"database schema v{found} is newer than this code")
            # Migrations from older versions go here.
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
            await self._engine.dispose()

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
        r = await self._first(select(charge_points).where(charge_points.c.id == charge_point_id))
        if r is None:
            return None
        info = ChargePointInfo(r.vendor, r.model, r.serial_number, r.firmware_version)
        return ChargePoint(r.id, info, r.password_hash, r.registered_at)

    async def add_charge_point(self, charge_point_id: str, password_hash: str | None) -> None:
        """Register (or re-key) a charge point; the first registration time is kept."""
        stmt = self._insert(charge_points).values(
            id=charge_point_id,
            password_hash=password_hash,
            registered_at=datetime.now(UTC),
        )
        new = stmt.excluded
        registered_at = func.coalesce(charge_points.c.registered_at, new.registered_at)
        set_ = {"password_hash": new.password_hash, "registered_at": registered_at}
        await self._execute(stmt.on_conflict_do_update(index_elements=["id"], set_=set_))

    async def record_boot(self, charge_point_id: str, info: ChargePointInfo, at: datetime) -> None:
        """Upsert what BootNotification said; password and registration stay as they are."""
        await self._upsert(
            charge_points,
            ["id"],
            id=charge_point_id,
            vendor=info.vendor,
            model=info.model,
            serial_number=info.serial_number,
            firmware_version=info.firmware_version,
            last_boot_at=at,
        )

    async def count_charge_points(self) -> int:
        async with self._engine.connect() as conn:
            count = select(func.count()).select_from(charge_points)
            return (await conn.execute(count)).scalar_one()

    # connectors

    async def set_connector_status(self, state: ConnectorState) -> None:
        """Batched like meter samples (latest per connector wins); readers see it at once."""
        if state.updated_at is not None and state.updated_at.tzinfo is None:
            raise ValueError(f"naive status timestamp {state.updated_at!r}")
        self._statuses[(state.charge_point_id, state.connector_id)] = state

    async def connector_states(self, charge_point_id: str) -> list[ConnectorState]:
        c = connectors.c
        stmt = select(connectors).where(c.charge_point_id == charge_point_id)
        found = {
            r.connector_id: ConnectorState(**r._mapping)
            for r in await self._all(stmt.order_by(c.connector_id))
        }
        for (cp_id, connector_id), state in list(self._statuses.items()):
            if cp_id == charge_point_id:
                found[connector_id] = state
        return [found[k] for k in sorted(found)]

    async def _write_statuses(self) -> None:
        """One upsert batch for the buffered statuses; on failure they stay buffered
        (unless a newer status for the same connector arrived meanwhile)."""
        pending, self._statuses = self._statuses, {}
        stmt = self._insert(connectors)
        stmt = stmt.on_conflict_do_update(
            index_elements=["charge_point_id", "connector_id"],
            set_={k: stmt.excluded[k] for k in ("status", "error_code", "updated_at")},
        )
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
            async with self._begin() as conn:
                await conn.execute(stmt, rows)
        except BaseException:
            for key, state in pending.items():
                self._statuses.setdefault(key, state)
            raise

    # id tags

    async def get_id_tag(self, tag: str) -> IdTag | None:
        row = await self._first(select(id_tags).where(id_tags.c.tag == tag))
        return None if row is None else _id_tag(row)

    async def put_id_tag(self, tag: IdTag) -> None:
        await self._upsert(
            id_tags, ["tag"], tag=tag.tag, user_id=tag.user_id, status=str(tag.status),
            expiry=tag.expiry,
        )  # fmt: skip

    async def id_tags_of(self, user_id: str) -> list[IdTag]:
        stmt = select(id_tags).where(id_tags.c.user_id == user_id)
        return [_id_tag(r) for r in await self._all(stmt.order_by(id_tags.c.tag))]

    # transactions

    async def create_transaction(
        self,
        charge_point_id: str,
        connector_id: int,
        id_tag: str,
        user_id: str | None,
        meter_start_wh: int,
        started_at: datetime,
        id_tag_status: IdTagStatus,
    ) -> Transaction:
        """Insert and commit; the database's autoincrement id is the OCPP transactionId."""
        stmt = insert(transactions).returning(*transactions.c)
        values = {
            "charge_point_id": charge_point_id,
            "connector_id": connector_id,
            "id_tag": id_tag,
            "user_id": user_id,
            "id_tag_status": str(id_tag_status),
            "meter_start_wh": meter_start_wh,
            "started_at": started_at,
        }
        async with self._begin() as conn:
            return _transaction((await conn.execute(stmt, values)).one())

    async def find_transaction_start(
        self,
        charge_point_id: str,
        connector_id: int,
        id_tag: str,
        meter_start_wh: int,
        started_at: datetime,
    ) -> Transaction | None:
        c = transactions.c
        stmt = select(transactions).where(
            c.charge_point_id == charge_point_id,
            c.connector_id == connector_id,
            c.started_at == started_at,
            c.id_tag == id_tag,
            c.meter_start_wh == meter_start_wh,
        )
        row = await self._first(stmt.order_by(c.id).limit(1))
        return None if row is None else _transaction(row)

    async def get_transaction(self, transaction_id: int) -> Transaction | None:
        row = await self._first(select(transactions).where(transactions.c.id == transaction_id))
        return None if row is None else _transaction(row)

    async def set_transaction_user(self, transaction_id: int, user_id: str) -> None:
        stmt = update(transactions).where(transactions.c.id == transaction_id)
        await self._execute(stmt.values(user_id=user_id))

    async def stop_transaction(
        self,
        transaction_id: int,
        meter_stop_wh: int,
        stopped_at: datetime,
        reason: str | None,
    ) -> Transaction | None:
        """Close it once: a repeated (replayed) stop gets the first stop back, unchanged."""
        c = transactions.c
        stmt = (
            update(transactions)
            .where(c.id == transaction_id, c.stopped_at.is_(None))
            .values(meter_stop_wh=meter_stop_wh, stopped_at=stopped_at, stop_reason=reason)
            .returning(*transactions.c)
        )
        async with self._begin() as conn:
            row = (await conn.execute(stmt)).first()
            if row is None:
                stored = select(transactions).where(c.id == transaction_id)
                row = (await conn.execute(stored)).first()
        return None if row is None else _transaction(row)

    async def active_transactions(self) -> list[Transaction]:
        c = transactions.c
        stmt = select(transactions).where(c.stopped_at.is_(None)).order_by(c.id)
        return [_transaction(r) for r in await self._all(stmt)]

    async def transactions_of(self, user_id: str | None, limit: int) -> list[Transaction]:
        c = transactions.c
        stmt = select(transactions).order_by(c.started_at.desc(), c.id.desc()).limit(limit)
        if user_id is not None:
            stmt = stmt.where(c.user_id == user_id)
        return [_transaction(r) for r in await self._all(stmt)]

    # meter samples

    def add_meter_samples(self, samples: Sequence[StoredMeterSample]) -> None:
        """Buffer for the flusher. Bad input (naive timestamp, unserialisable phases) raises
        here, where the caller sees it, instead of poisoning a batch later."""
        self._enqueue([_meter_row(s) for s in samples])
        if len(self._buffer) >= self._batch_size:
            self._wake.set()

    async def meter_samples_of(self, transaction_id: int) -> list[StoredMeterSample]:
        c = meter_samples.c
        stmt = select(meter_samples).where(c.transaction_id == transaction_id)
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
            for r in await self._all(stmt.order_by(c.timestamp, c.id))
        ]

    # internals

    def _insert(self, table: Table) -> sqlite.Insert | postgresql.Insert:
        """The dialect's INSERT: the one that has ON CONFLICT."""
        return (sqlite.insert if self._dialect == "sqlite" else postgresql.insert)(table)

    async def _upsert(self, table: Table, keys: list[str], **values: Any) -> None:
        """INSERT, or UPDATE every given non-key column of the existing row."""
        stmt = self._insert(table).values(values)
        set_ = {k: stmt.excluded[k] for k in values if k not in keys}
        await self._execute(stmt.on_conflict_do_update(index_elements=keys, set_=set_))

    @contextlib.asynccontextmanager
    async def _begin(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction, serialised with this process's other writes."""
        async with self._db_write, self._engine.begin() as conn:
            yield conn

    async def _execute(self, stmt: Executable) -> None:
        async with self._begin() as conn:
            await conn.execute(stmt)

    async def _first(self, stmt: Executable) -> Row[Any] | None:
        async with self._engine.connect() as conn:
            return (await conn.execute(stmt)).first()

    async def _all(self, stmt: Executable) -> Sequence[Row[Any]]:
        async with self._engine.connect() as conn:
            return (await conn.execute(stmt)).all()

    def _enqueue(self, rows: Collection[_MeterRow]) -> None:
        overflow = len(self._buffer) + len(rows) - self._max_buffered
        if overflow > 0:
            log.warning("meter sample buffer full: dropping %d oldest samples", overflow)
        self._buffer.extend(rows)  # the deque's maxlen drops from the old end

    async def _write_samples(self, pending: deque[_MeterRow]) -> None:
        """One executemany INSERT; rows leave ``pending`` once committed (or refused).

        If the database refuses the batch for its data, one bad row must not hold the rest
        hostage forever: retry row by row and drop only the rows it refuses.
        """
        try:
            async with self._begin() as conn:
                await conn.execute(insert(meter_samples), list(pending))
            pending.clear()
            return
        except _REFUSED:
            log.warning("%d meter samples refused; retrying one by one", len(pending))
        while pending:
            try:
                async with self._begin() as conn:
                    await conn.execute(insert(meter_samples), [pending[0]])
            except _REFUSED:
                log.exception("dropping a meter sample the database refuses: %r", pending[0])
            pending.popleft()

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


def _meter_row(s: StoredMeterSample) -> _MeterRow:
    m = s.sample
    if m.timestamp.tzinfo is None:
        raise ValueError(f"naive meter sample timestamp {m.timestamp!r}")
    return {
        "transaction_id": s.transaction_id,
        "charge_point_id": s.charge_point_id,
        "connector_id": s.connector_id,
        "timestamp": m.timestamp,
        **{f: getattr(m, f) for f in _METER_FIELDS},
        "phases": orjson.dumps(m.phases).decode(),
    }
