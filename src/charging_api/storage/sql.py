"""The SQL implementation of the core's ``Store`` port (SQLite by default, PostgreSQL too).

Every method that returns has committed, so what we answer a charge point is never ahead
of the disk. Meter samples and connector statuses are the exception: they arrive in bulk and
losing the last fraction of a second of them in a crash is acceptable, so they are buffered and
written in batches by a background task that this store owns.

The store is written once for every database: what each operation does in SQL is the
statement set chosen in ``__init__`` from the database's dialect (:mod:`.statements`, with
:mod:`.sqlite` and :mod:`.postgresql`), and where it runs is the
:mod:`~charging_api.storage.engines` database's business (on SQLite, writes and key lookups
run on the event loop, range reads on reader threads).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DataError, IntegrityError

from charging_api.domain.models import (
    ChargePoint,
    ChargePointInfo,
    ClosedBy,
    ConnectorState,
    IdTag,
    IdTagStatus,
    StoredMeterSample,
    Transaction,
)
from charging_api.storage.engines import Database, open_database
from charging_api.storage.postgresql import PostgresStatements
from charging_api.storage.sqlite import SqliteStatements
from charging_api.storage.statements import SqlStatements

log = logging.getLogger(__name__)

_REFUSED = (DataError, IntegrityError)  # the rows are at fault, not the connection
#: One statement set per dialect.
_STATEMENTS: dict[str, type[SqlStatements]] = {
    kind.dialect: kind for kind in (SqliteStatements, PostgresStatements)
}


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
        self._sql: SqlStatements = _STATEMENTS[self._db.dialect]()
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

    # lifecycle

    async def start(self) -> None:
        """Create the schema if needed and start the meter sample flusher."""
        await self._db.write(self._sql.create_schema())
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
        return await self._db.lookup(self._sql.get_charge_point(charge_point_id))

    async def add_charge_point(self, charge_point_id: str, password_hash: str | None) -> None:
        """Register (or re-key) a charge point; the first registration time is kept."""
        at = datetime.now(UTC)
        await self._db.write(self._sql.register_charge_point(charge_point_id, password_hash, at))

    async def record_boot(self, charge_point_id: str, info: ChargePointInfo, at: datetime) -> None:
        """Upsert what BootNotification said; password and registration stay as they are."""
        await self._db.write(self._sql.record_boot(charge_point_id, info, at))

    async def count_charge_points(self) -> int:
        return await self._db.read(self._sql.count_charge_points())

    # connectors

    async def set_connector_status(self, state: ConnectorState) -> None:
        """Batched like meter samples (latest per connector wins); readers see it at once."""
        if state.updated_at is not None and state.updated_at.tzinfo is None:
            raise ValueError(f"naive status timestamp {state.updated_at!r}")
        self._statuses[(state.charge_point_id, state.connector_id)] = state

    async def connector_states(self, charge_point_id: str) -> list[ConnectorState]:
        stored = await self._db.read(self._sql.connector_states(charge_point_id))
        found = {state.connector_id: state for state in stored}
        for (cp_id, connector_id), state in list(self._statuses.items()):
            if cp_id == charge_point_id:
                found[connector_id] = state
        return [found[k] for k in sorted(found)]

    async def _write_statuses(self) -> None:
        """One upsert batch for the buffered statuses; on failure they stay buffered
        (unless a newer status for the same connector arrived meanwhile)."""
        pending, self._statuses = self._statuses, {}
        try:
            await self._db.write(self._sql.put_connector_states(list(pending.values())))
        except BaseException:
            for key, state in pending.items():
                self._statuses.setdefault(key, state)
            raise

    # id tags

    async def get_id_tag(self, tag: str) -> IdTag | None:
        return await self._db.lookup(self._sql.get_id_tag(tag))

    async def put_id_tag(self, tag: IdTag) -> None:
        await self._db.write(self._sql.put_id_tag(tag))

    async def id_tags_of(self, user_id: str) -> list[IdTag]:
        return await self._db.read(self._sql.id_tags_of(user_id))

    # documents (session features)

    async def put_document(self, kind: str, key: str, body: dict[str, Any] | None) -> None:
        text = None if body is None else orjson.dumps(body).decode()
        await self._db.write(self._sql.put_document(kind, key, text, datetime.now(UTC)))

    async def get_document(self, kind: str, key: str) -> dict[str, Any] | None:
        text = await self._db.read(self._sql.get_document(kind, key))
        return None if text is None else _object(orjson.loads(text))

    async def documents(self, kind: str) -> dict[str, dict[str, Any]]:
        found = await self._db.read(self._sql.documents(kind))
        return {key: _object(orjson.loads(text)) for key, text in found}

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
        return await self._db.write(
            self._sql.start_transaction(
                charge_point_id,
                connector_id,
                id_tag,
                user_id,
                meter_start_wh,
                started_at,
                id_tag_status,
            )
        )

    async def get_transaction(self, transaction_id: int) -> Transaction | None:
        return await self._db.lookup(self._sql.get_transaction(transaction_id))

    async def stop_transaction(
        self,
        transaction_id: int,
        meter_stop_wh: int,
        stopped_at: datetime,
        reason: str | None,
        closed_by: ClosedBy = ClosedBy.CHARGE_POINT,
        app_stop_reason: str | None = None,
    ) -> Transaction | None:
        """Close it once: a repeated (replayed) stop gets the first stop back, unchanged."""
        return await self._db.write(
            self._sql.stop_transaction(
                transaction_id, meter_stop_wh, stopped_at, reason, closed_by, app_stop_reason
            )
        )

    async def correct_stop(
        self, transaction_id: int, meter_stop_wh: int, stopped_at: datetime, reason: str | None
    ) -> Transaction | None:
        """See ``Store.correct_stop``: one UPDATE, committed."""
        return await self._db.write(
            self._sql.correct_stop(transaction_id, meter_stop_wh, stopped_at, reason)
        )

    async def active_transactions(self) -> list[Transaction]:
        return await self._db.read(self._sql.active_transactions())

    async def transactions_of(self, user_id: str | None, limit: int) -> list[Transaction]:
        return await self._db.read(self._sql.transactions_of(user_id, limit))

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
        return await self._db.read(self._sql.meter_samples_of(transaction_id))

    # internals

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
            await self._db.write(self._sql.insert_meter_samples(list(pending)))
            pending.clear()
            return
        except _REFUSED:
            log.warning("%d meter samples refused; retrying one by one", len(pending))
        while pending:
            try:
                await self._db.write(self._sql.insert_meter_samples([pending[0]]))
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


def _object(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError("a stored document is not a JSON object")
    return value
