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
import time
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DataError, IntegrityError

from charging_api.domain.models import (
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
    LocalListState,
    OperationRecord,
    Reservation,
    StoredChargingProfile,
    StoredMeterSample,
    Transaction,
    TransactionQuery,
)
from charging_api.storage import opsstate
from charging_api.storage.engines import Database, Work, failure_kind, open_database
from charging_api.storage.postgresql import PostgresStatements
from charging_api.storage.schema import SchemaState
from charging_api.storage.sqlite import SqliteStatements
from charging_api.storage.statements import SqlStatements

log = logging.getLogger(__name__)
T = TypeVar("T")

_REFUSED = (DataError, IntegrityError)  # the rows are at fault, not the connection
#: One statement set per dialect.
_STATEMENTS: dict[str, type[SqlStatements]] = {
    kind.dialect: kind for kind in (SqliteStatements, PostgresStatements)
}


class StorageUnavailable(Exception):
    """The database cannot be used at start-up; the message is one line naming it."""


class SqlStore:
    """``Store`` over SQLAlchemy Core.

    ``engine_kwargs`` go to the engine (e.g. ``connect_args``). At most
    ``max_buffered_samples`` meter samples wait in memory; beyond that the oldest are
    dropped, so a dead database cannot exhaust memory. ``log_failures``: log when writes
    start failing and when they succeed again (a service does; a one-shot command reports
    its one failure itself).
    """

    def __init__(
        self,
        database_url: str,
        *,
        meter_batch_size: int = 500,
        meter_flush_interval: float = 0.2,
        max_buffered_samples: int = 100_000,
        engine_kwargs: dict[str, Any] | None = None,
        log_failures: bool = True,
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
        self._statuses_in_flight: dict[tuple[str, int], ConnectorState] = {}
        self._wake = asyncio.Event()
        self._write_lock = asyncio.Lock()  # one batch write at a time, in buffer order
        self._flusher: asyncio.Task[None] | None = None
        self._closing = False
        self._failure: str | None = None
        self._log_failures = log_failures
        #: Called with (batch kind ``meter`` or ``status``, seconds, whether it failed) for
        #: each batch write (None: not measured).
        self.on_batch: Callable[[str, float, bool], None] | None = None

    # lifecycle

    async def start(self) -> None:
        """Create the schema if the database is empty, check that the database takes writes,
        and start the meter sample flusher.

        Raises :class:`StorageUnavailable` (one line naming the database) when it cannot be
        used: missing and not creatable, read-only, locked past the lock timeout, unreachable;
        :class:`~.schema.SchemaBehind` (one line naming ``charging-api db upgrade``) when it
        holds an older schema, :class:`~.schema.SchemaUnknown` when a newer one.
        """
        try:
            await self._db.write(self._sql.create_schema())
            # An existing read-only file wrote nothing above: prove it takes a write.
            await self._db.write(self._sql.probe())
        except Exception as exc:
            await self._db.dispose()  # a store that did not start holds nothing open
            unavailable = self.unavailable(exc)
            if unavailable is None:
                raise
            raise unavailable from exc
        self._closing = False
        self._flusher = asyncio.create_task(self._flush_loop(), name="meter flusher")

    async def upgrade_schema(self) -> tuple[SchemaState, SchemaState]:
        """Bring the database to this version's head (``charging-api db upgrade``), without
        starting the store; returns where it stood before and after. Close the store after."""
        return await self._guarded(self._sql.upgrade_schema())

    async def schema_state(self) -> SchemaState:
        """Where the database's schema stands (``charging-api db current``); reads only."""
        return await self._guarded(self._sql.schema_state())

    async def _guarded(self, work: Work[T]) -> T:
        """``work`` as a write; a storage failure becomes :class:`StorageUnavailable`."""
        try:
            return await self._db.write(work)
        except Exception as exc:
            unavailable = self.unavailable(exc)
            if unavailable is None:
                raise
            raise unavailable from exc

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
            started = time.monotonic()
            try:
                await self._write_samples(pending)
            except BaseException:
                self._batch_done("meter", started, failed=True)
                rest = [*pending, *self._buffer]
                self._buffer.clear()
                self._enqueue(rest)
                raise
            self._batch_done("meter", started, failed=False)

    def _batch_done(self, kind: str, started: float, *, failed: bool) -> None:
        if self.on_batch is not None:
            self.on_batch(kind, time.monotonic() - started, failed)

    def unavailable(self, exc: BaseException) -> StorageUnavailable | None:
        """``exc`` as one line naming the database and what is wrong with it, if it is a
        storage failure (for a command that cannot go on: start-up, a CLI command)."""
        kind = failure_kind(exc)
        if kind is None:
            return None
        return StorageUnavailable(
            f"cannot use the database {self._db.name}: {kind.replace('_', ' ')}"
            f" ({_first_line(exc)})"
        )

    def failure(self) -> str | None:
        """While writes fail: the kind of the last failure (``locked``, ``read_only``,
        ``missing``, ``disk_full``, ...; see ``engines.failure_kind``). None once a write
        succeeds again. Rows the database refuses for their data are no storage failure."""
        return self._failure

    # charge points

    async def get_charge_point(self, charge_point_id: str) -> ChargePoint | None:
        return await self._db.lookup(self._sql.get_charge_point(charge_point_id))

    async def add_charge_point(self, charge_point_id: str, password_hash: str | None) -> None:
        """Register (or re-key) a charge point; the first registration time is kept."""
        at = datetime.now(UTC)
        await self._write(self._sql.register_charge_point(charge_point_id, password_hash, at))

    async def record_boot(self, charge_point_id: str, info: ChargePointInfo, at: datetime) -> None:
        """Upsert what BootNotification said; password and registration stay as they are."""
        await self._write(self._sql.record_boot(charge_point_id, info, at))

    async def count_charge_points(self) -> int:
        return await self._db.read(self._sql.count_charge_points())

    async def list_charge_points(self) -> list[ChargePoint]:
        return await self._db.read(self._sql.list_charge_points())

    async def delete_charge_point(self, charge_point_id: str) -> bool:
        """Buffered statuses of the charge point are dropped first (they would bring its
        connectors back with the next batch)."""
        for key in [k for k in self._statuses if k[0] == charge_point_id]:
            del self._statuses[key]
        return await self._db.write(self._sql.delete_charge_point(charge_point_id))

    # connectors

    async def set_connector_status(self, state: ConnectorState) -> None:
        """Batched like meter samples (latest per connector wins); readers see it at once."""
        if state.updated_at is not None and state.updated_at.tzinfo is None:
            raise ValueError(f"naive status timestamp {state.updated_at!r}")
        self._statuses[(state.charge_point_id, state.connector_id)] = state

    async def connector_states(self, charge_point_id: str) -> list[ConnectorState]:
        stored = await self._db.read(self._sql.connector_states(charge_point_id))
        found = {state.connector_id: state for state in stored}
        for buffered in (self._statuses_in_flight, self._statuses):  # newer wins
            for (cp_id, connector_id), state in list(buffered.items()):
                if cp_id == charge_point_id:
                    found[connector_id] = state
        return [found[k] for k in sorted(found)]

    async def _write_statuses(self) -> None:
        """One upsert batch for the buffered statuses; on failure they stay buffered
        (unless a newer status for the same connector arrived meanwhile)."""
        pending, self._statuses = self._statuses, {}
        self._statuses_in_flight = pending  # still what readers see, until committed
        started = time.monotonic()
        try:
            await self._write(self._sql.put_connector_states(list(pending.values())))
            self._batch_done("status", started, failed=False)
        except BaseException:
            self._batch_done("status", started, failed=True)
            for key, state in pending.items():
                self._statuses.setdefault(key, state)
            raise
        finally:
            self._statuses_in_flight = {}

    # id tags

    async def get_id_tag(self, tag: str) -> IdTag | None:
        return await self._db.lookup(self._sql.get_id_tag(tag))

    async def put_id_tag(self, tag: IdTag) -> None:
        await self._write(self._sql.put_id_tag(tag))

    async def id_tags_of(self, user_id: str) -> list[IdTag]:
        return await self._db.read(self._sql.id_tags_of(user_id))

    async def all_id_tags(self) -> list[IdTag]:
        return await self._db.read(self._sql.all_id_tags())

    async def delete_id_tag(self, tag: str) -> bool:
        return await self._db.write(self._sql.delete_id_tag(tag))

    # documents (session features)

    async def put_document(self, kind: str, key: str, body: dict[str, Any] | None) -> None:
        text = None if body is None else orjson.dumps(body).decode()
        await self._db.write(self._sql.put_document(kind, key, text, datetime.now(UTC)))

    async def put_documents(self, kind: str, bodies: Mapping[str, dict[str, Any] | None]) -> None:
        texts = [(k, None if b is None else orjson.dumps(b).decode()) for k, b in bodies.items()]
        if texts:
            await self._db.write(self._sql.put_documents(kind, texts, datetime.now(UTC)))

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
        return await self._write(
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
        return await self._write(
            self._sql.stop_transaction(
                transaction_id, meter_stop_wh, stopped_at, reason, closed_by, app_stop_reason
            )
        )

    async def correct_stop(
        self, transaction_id: int, meter_stop_wh: int, stopped_at: datetime, reason: str | None
    ) -> Transaction | None:
        """See ``Store.correct_stop``: one UPDATE, committed."""
        return await self._write(
            self._sql.correct_stop(transaction_id, meter_stop_wh, stopped_at, reason)
        )

    async def active_transactions(self) -> list[Transaction]:
        return await self._db.read(self._sql.active_transactions())

    async def transactions_of(self, user_id: str | None, limit: int) -> list[Transaction]:
        return await self._db.read(self._sql.transactions_of(user_id, limit))

    async def find_transactions(self, query: TransactionQuery) -> list[Transaction]:
        return await self._db.read(self._sql.find_transactions(query))

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

    # operator state (the OpsStateStore port)

    async def add_reservation(self, reservation: Reservation) -> Reservation:
        return await self._db.write(opsstate.add_reservation(reservation))

    async def put_reservation(self, reservation: Reservation) -> None:
        await self._db.write(opsstate.put_reservation(reservation))

    async def update_reservation(self, reservation: Reservation) -> None:
        await self._db.write(opsstate.update_reservation(reservation))

    async def get_reservation(self, reservation_id: int) -> Reservation | None:
        return await self._db.lookup(opsstate.get_reservation(reservation_id))

    async def active_reservations(self) -> list[Reservation]:
        return await self._db.read(opsstate.active_reservations())

    async def charge_point_ids(self) -> list[str]:
        return await self._db.read(opsstate.charge_point_ids())

    async def get_local_list(self, charge_point_id: str) -> LocalListState | None:
        return await self._db.lookup(opsstate.get_local_list(charge_point_id))

    async def put_local_list(self, state: LocalListState) -> None:
        await self._db.write(opsstate.put_local_list(state))

    async def put_charging_profile(self, profile: StoredChargingProfile) -> None:
        await self._db.write(opsstate.put_charging_profile(profile))

    async def charging_profiles(
        self, charge_point_id: str | None = None
    ) -> list[StoredChargingProfile]:
        return await self._db.read(opsstate.charging_profiles_of(charge_point_id))

    async def delete_charging_profile(self, charge_point_id: str, profile_id: int) -> None:
        await self._db.write(opsstate.delete_charging_profile(charge_point_id, profile_id))

    async def meter_samples_of(self, transaction_id: int) -> list[StoredMeterSample]:
        """The stored samples and those still waiting in the buffer, in timestamp order (a
        reader never flushes first). A batch write in progress is waited for: its samples
        are in neither place until it commits."""
        async with self._write_lock:  # no batch leaves the buffer until the read is done
            waiting = [_utc(s) for s in self._buffer if s.transaction_id == transaction_id]
            stored = await self._db.read(self._sql.meter_samples_of(transaction_id))
        if not waiting:
            return stored
        return sorted([*stored, *waiting], key=_sample_time)  # stable: ties in arrival order

    # operator side

    async def add_operation(self, record: OperationRecord) -> OperationRecord:
        return await self._db.write(self._sql.add_operation(record))

    async def operations(
        self, charge_point_id: str | None, limit: int, before_id: int | None
    ) -> list[OperationRecord]:
        return await self._db.read(self._sql.operations(charge_point_id, limit, before_id))

    async def put_availability(self, availability: ConnectorAvailability) -> None:
        await self._db.write(self._sql.put_availability(availability))

    async def availabilities(self, charge_point_id: str) -> list[ConnectorAvailability]:
        return await self._db.read(self._sql.availabilities(charge_point_id))

    async def put_reported_configuration(
        self, charge_point_id: str, entries: Sequence[ConfigurationEntry]
    ) -> None:
        await self._db.write(self._sql.put_reported_configuration(charge_point_id, entries))

    async def put_wanted_configuration(
        self, charge_point_id: str, key: str, wanted: str | None
    ) -> None:
        await self._db.write(self._sql.put_wanted_configuration(charge_point_id, key, wanted))

    async def put_configuration_result(
        self, charge_point_id: str, key: str, status: str, at: datetime
    ) -> None:
        await self._db.write(self._sql.put_configuration_result(charge_point_id, key, status, at))

    async def configuration(self, charge_point_id: str) -> list[ConfigurationEntry]:
        return await self._db.read(self._sql.configuration(charge_point_id))

    async def add_device_status(self, status: DeviceStatus) -> DeviceStatus:
        return await self._db.write(self._sql.add_device_status(status))

    async def device_statuses(
        self, charge_point_id: str, job: DeviceJob, limit: int
    ) -> list[DeviceStatus]:
        return await self._db.read(self._sql.device_statuses(charge_point_id, job, limit))

    # internals

    async def _write(self, work: Work[T]) -> T:
        """Every write goes through here, so :meth:`failure` follows their outcome."""
        try:
            result = await self._db.write(work)
        except Exception as exc:
            kind = failure_kind(exc)
            if kind is not None:
                if self._failure is None and self._log_failures:
                    log.error("storage failing (%s): writes to %s fail", kind, self._db.name)
                self._failure = kind
            raise
        if self._failure is not None:
            if self._log_failures:
                log.warning("storage recovered: writes to %s succeed again", self._db.name)
            self._failure = None
        return result

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
            await self._write(self._sql.insert_meter_samples(list(pending)))
            pending.clear()
            return
        except _REFUSED:
            log.warning("%d meter samples refused; retrying one by one", len(pending))
        while pending:
            try:
                await self._write(self._sql.insert_meter_samples([pending[0]]))
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
                if self._failure is not None:  # nothing else may write: find out when it's back
                    await self._write(self._sql.probe())
            except Exception:  # keep flushing: the database may come back
                if self._buffer or self._statuses:
                    log.exception("writing %d meter samples failed", len(self._buffer))
                # Don't spin against a dead database.
                await asyncio.sleep(self._flush_interval)


def _sample_time(s: StoredMeterSample) -> datetime:
    return s.sample.timestamp


def _utc(s: StoredMeterSample) -> StoredMeterSample:
    """A buffered sample as it will read back once written: its timestamp in UTC."""
    at = s.sample.timestamp
    if at.tzinfo is UTC:
        return s
    return replace(s, sample=replace(s.sample, timestamp=at.astimezone(UTC)))


def _first_line(exc: BaseException) -> str:
    """The driver's own words, without SQLAlchemy's SQL and background-link lines."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()
    return text[0][:200] if text else type(orig).__name__


def _object(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError("a stored document is not a JSON object")
    return value
