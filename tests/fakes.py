"""In-memory adapters for testing the core alone: a Store, a ChargerGateway, a manual Clock.

They implement the core's Protocols (domain/ports.py), so the core runs without sockets or
SQL and each test states exactly what the outside world does.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from charging_api.domain.events import DomainEvent
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
    id_tag_key,
)
from charging_api.domain.ports import EventHandler
from charging_api.errors import ChargePointOffline


class ManualClock:
    """Time that moves only when the test says so: wall and monotonic time move together."""

    def __init__(self, start: datetime | None = None) -> None:
        self.moment = start or datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
        self.ticks = 1000.0

    def now(self) -> datetime:
        return self.moment

    def monotonic(self) -> float:
        return self.ticks

    def advance(self, seconds: float) -> None:
        self.moment += timedelta(seconds=seconds)
        self.ticks += seconds


class MemoryStore:
    """The ``Store`` port in memory, by the rules ``tests/storage/test_store_contract.py``
    holds every store to (it runs there as a third backend): aware datetimes only, returned
    in UTC; replayed starts and stops answered from what is stored; the same orderings."""

    def __init__(self) -> None:
        self.charge_points: dict[str, ChargePoint] = {}
        self.connectors: dict[tuple[str, int], ConnectorState] = {}
        self.id_tags: dict[str, IdTag] = {}  # by id_tag_key: case-insensitive, as in SQL
        self.transactions: dict[int, Transaction] = {}
        self.samples: list[StoredMeterSample] = []
        self.docs: dict[tuple[str, str], dict[str, Any]] = {}
        self._ids = itertools.count(1)
        self.reservations: dict[int, Reservation] = {}
        self._reservation_ids = itertools.count(1)
        self.local_lists: dict[str, LocalListState] = {}
        self.profiles: dict[tuple[str, int], StoredChargingProfile] = {}
        self.operations_log: list[OperationRecord] = []
        self.availability: dict[tuple[str, int], ConnectorAvailability] = {}
        self.config: dict[tuple[str, str], ConfigurationEntry] = {}
        self.device_log: list[DeviceStatus] = []

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def flush(self) -> None: ...

    async def put_document(self, kind: str, key: str, body: dict[str, Any] | None) -> None:
        if body is None:
            self.docs.pop((kind, key), None)
        else:
            self.docs[(kind, key)] = copy.deepcopy(body)

    async def put_documents(self, kind: str, bodies: Mapping[str, dict[str, Any] | None]) -> None:
        for key, body in bodies.items():
            await self.put_document(kind, key, body)

    async def get_document(self, kind: str, key: str) -> dict[str, Any] | None:
        found = self.docs.get((kind, key))
        return None if found is None else copy.deepcopy(found)

    async def documents(self, kind: str) -> dict[str, dict[str, Any]]:
        return {k: copy.deepcopy(v) for (c, k), v in sorted(self.docs.items()) if c == kind}

    async def get_charge_point(self, charge_point_id: str) -> ChargePoint | None:
        return self.charge_points.get(charge_point_id)

    async def add_charge_point(self, charge_point_id: str, password_hash: str | None) -> None:
        old = self.charge_points.get(charge_point_id)
        self.charge_points[charge_point_id] = ChargePoint(
            charge_point_id,
            old.info if old else ChargePointInfo(),
            password_hash,
            (old.registered_at if old else None) or datetime.now(UTC),
        )

    async def record_boot(self, charge_point_id: str, info: ChargePointInfo, at: datetime) -> None:
        _utc(at)
        old = self.charge_points.get(charge_point_id)
        self.charge_points[charge_point_id] = ChargePoint(
            charge_point_id,
            info,
            old.password_hash if old else None,
            old.registered_at if old else None,
        )

    async def count_charge_points(self) -> int:
        return len(self.charge_points)

    async def list_charge_points(self) -> list[ChargePoint]:
        return [self.charge_points[k] for k in sorted(self.charge_points)]

    async def delete_charge_point(self, charge_point_id: str) -> bool:
        for key in [k for k in self.connectors if k[0] == charge_point_id]:
            del self.connectors[key]
        return self.charge_points.pop(charge_point_id, None) is not None

    async def set_connector_status(self, state: ConnectorState) -> None:
        if state.updated_at is not None:
            state = replace(state, updated_at=_utc(state.updated_at))
        self.connectors[(state.charge_point_id, state.connector_id)] = state

    async def connector_states(self, charge_point_id: str) -> list[ConnectorState]:
        return [s for (cp, _), s in sorted(self.connectors.items()) if cp == charge_point_id]

    async def get_id_tag(self, tag: str) -> IdTag | None:
        return self.id_tags.get(id_tag_key(tag))

    async def put_id_tag(self, tag: IdTag) -> None:
        if tag.expiry is not None:
            tag = replace(tag, expiry=_utc(tag.expiry))
        key = id_tag_key(tag.tag)
        old = self.id_tags.get(key)
        if old is not None:  # the same card in any case: it keeps its first spelling
            tag = replace(tag, tag=old.tag)
        self.id_tags[key] = tag

    async def id_tags_of(self, user_id: str) -> list[IdTag]:
        return sorted((t for t in self.id_tags.values() if t.user_id == user_id), key=_tag)

    async def all_id_tags(self) -> list[IdTag]:
        return sorted(self.id_tags.values(), key=_tag)

    async def delete_id_tag(self, tag: str) -> bool:
        return self.id_tags.pop(id_tag_key(tag), None) is not None

    async def find_transactions(self, query: TransactionQuery) -> list[Transaction]:
        found = [
            tx
            for tx in self.transactions.values()
            if (query.user_id is None or tx.user_id == query.user_id)
            and (query.charge_point_id is None or tx.charge_point_id == query.charge_point_id)
            and (query.started_from is None or tx.started_at >= query.started_from)
            and (query.started_before is None or tx.started_at < query.started_before)
            and (query.active is None or tx.active == query.active)
        ]
        return sorted(found, key=_newest_first)[query.offset : query.offset + query.limit]

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
        started_at = _utc(started_at)
        start = (charge_point_id, connector_id, id_tag, meter_start_wh, started_at)
        for tx in self.transactions.values():
            if (tx.charge_point_id, tx.connector_id, tx.id_tag, tx.meter_start_wh,
                    tx.started_at) == start:  # fmt: skip
                return tx, False
        tx = Transaction(
            next(self._ids),
            charge_point_id,
            connector_id,
            id_tag,
            user_id,
            meter_start_wh,
            started_at,
            id_tag_status,
        )
        self.transactions[tx.id] = tx
        return tx, True

    async def get_transaction(self, transaction_id: int) -> Transaction | None:
        return self.transactions.get(transaction_id)

    async def stop_transaction(
        self,
        transaction_id: int,
        meter_stop_wh: int,
        stopped_at: datetime,
        reason: str | None,
        closed_by: ClosedBy = ClosedBy.CHARGE_POINT,
        app_stop_reason: str | None = None,
    ) -> Transaction | None:
        stopped_at = _utc(stopped_at)
        tx = self.transactions.get(transaction_id)
        if tx is None or not tx.active:
            return tx
        closed = replace(
            tx,
            meter_stop_wh=meter_stop_wh,
            stopped_at=stopped_at,
            stop_reason=reason,
            closed_by=closed_by,
            app_stop_reason=app_stop_reason,
        )
        self.transactions[transaction_id] = closed
        return closed

    async def correct_stop(
        self, transaction_id: int, meter_stop_wh: int, stopped_at: datetime, reason: str | None
    ) -> Transaction | None:
        stopped_at = _utc(stopped_at)
        tx = self.transactions.get(transaction_id)
        if tx is None or tx.active or tx.closed_by is ClosedBy.CHARGE_POINT:
            return tx
        corrected = replace(
            tx, meter_stop_wh=meter_stop_wh, stopped_at=stopped_at, stop_reason=reason
        )
        self.transactions[transaction_id] = corrected
        return corrected

    async def active_transactions(self) -> list[Transaction]:
        return sorted((tx for tx in self.transactions.values() if tx.active), key=_id)

    async def transactions_of(self, user_id: str | None, limit: int) -> list[Transaction]:
        txs = [t for t in self.transactions.values() if user_id is None or t.user_id == user_id]
        return sorted(txs, key=_newest_first)[:limit]

    def add_meter_samples(self, samples: Sequence[StoredMeterSample]) -> None:
        for s in samples:
            _utc(s.sample.timestamp)
        self.samples.extend(
            replace(s, sample=replace(s.sample, timestamp=_utc(s.sample.timestamp)))
            for s in samples
        )

    async def meter_samples_of(self, transaction_id: int) -> list[StoredMeterSample]:
        found = [s for s in self.samples if s.transaction_id == transaction_id]
        return sorted(found, key=_sample_time)  # stable: equal times stay in arrival order

    # operator state (the OpsStateStore port)

    async def add_reservation(self, reservation: Reservation) -> Reservation:
        _utc(reservation.expiry)
        stored = replace(reservation, id=next(self._reservation_ids))
        self.reservations[stored.id] = stored
        return stored

    async def put_reservation(self, reservation: Reservation) -> None:
        _utc(reservation.expiry)
        self.reservations[reservation.id] = reservation
        above = max(self.reservations) + 1
        if next(self._reservation_ids) < above:
            self._reservation_ids = itertools.count(above)

    async def update_reservation(self, reservation: Reservation) -> None:
        if reservation.id in self.reservations:
            self.reservations[reservation.id] = reservation

    async def get_reservation(self, reservation_id: int) -> Reservation | None:
        return self.reservations.get(reservation_id)

    async def active_reservations(self) -> list[Reservation]:
        return [r for _, r in sorted(self.reservations.items()) if r.active]

    async def charge_point_ids(self) -> list[str]:
        return sorted(self.charge_points)

    async def get_local_list(self, charge_point_id: str) -> LocalListState | None:
        return self.local_lists.get(charge_point_id)

    async def put_local_list(self, state: LocalListState) -> None:
        self.local_lists[state.charge_point_id] = state

    async def put_charging_profile(self, profile: StoredChargingProfile) -> None:
        self.profiles[(profile.charge_point_id, profile.profile_id)] = profile

    async def charging_profiles(
        self, charge_point_id: str | None = None
    ) -> list[StoredChargingProfile]:
        return [
            p
            for _, p in sorted(self.profiles.items())
            if charge_point_id in (None, p.charge_point_id)
        ]

    async def delete_charging_profile(self, charge_point_id: str, profile_id: int) -> None:
        self.profiles.pop((charge_point_id, profile_id), None)

    async def add_operation(self, record: OperationRecord) -> OperationRecord:
        stored = replace(
            record, id=len(self.operations_log) + 1, requested_at=_utc(record.requested_at)
        )
        self.operations_log.append(stored)
        return stored

    async def operations(
        self, charge_point_id: str | None, limit: int, before_id: int | None
    ) -> list[OperationRecord]:
        found = [
            r
            for r in reversed(self.operations_log)
            if (charge_point_id is None or r.charge_point_id == charge_point_id)
            and (before_id is None or r.id < before_id)
        ]
        return found[:limit]

    async def put_availability(self, availability: ConnectorAvailability) -> None:
        availability = replace(availability, updated_at=_utc(availability.updated_at))
        self.availability[(availability.charge_point_id, availability.connector_id)] = availability

    async def availabilities(self, charge_point_id: str) -> list[ConnectorAvailability]:
        return [a for (cp, _), a in sorted(self.availability.items()) if cp == charge_point_id]

    def _entry(self, charge_point_id: str, key: str) -> ConfigurationEntry:
        return self.config.get((charge_point_id, key)) or ConfigurationEntry(charge_point_id, key)

    async def put_reported_configuration(
        self, charge_point_id: str, entries: Sequence[ConfigurationEntry]
    ) -> None:
        for e in entries:
            at = None if e.reported_at is None else _utc(e.reported_at)
            self.config[(charge_point_id, e.key)] = replace(
                self._entry(charge_point_id, e.key), value=e.value, readonly=e.readonly,
                reported_at=at,
            )  # fmt: skip

    async def put_wanted_configuration(
        self, charge_point_id: str, key: str, wanted: str | None
    ) -> None:
        self.config[(charge_point_id, key)] = replace(
            self._entry(charge_point_id, key), wanted=wanted
        )

    async def put_configuration_result(
        self, charge_point_id: str, key: str, status: str, at: datetime
    ) -> None:
        self.config[(charge_point_id, key)] = replace(
            self._entry(charge_point_id, key), applied_status=status, applied_at=_utc(at)
        )

    async def configuration(self, charge_point_id: str) -> list[ConfigurationEntry]:
        return [e for (cp, _), e in sorted(self.config.items()) if cp == charge_point_id]

    async def add_device_status(self, status: DeviceStatus) -> DeviceStatus:
        stored = replace(status, id=len(self.device_log) + 1, at=_utc(status.at))
        self.device_log.append(stored)
        return stored

    async def device_statuses(
        self, charge_point_id: str, job: DeviceJob, limit: int
    ) -> list[DeviceStatus]:
        found = [
            s for s in reversed(self.device_log) if s.charge_point_id == charge_point_id
            and s.job is job
        ]  # fmt: skip
        return found[:limit]


def _utc(at: datetime) -> datetime:
    """As the SQL store takes datetimes: aware only (naive is refused), kept in UTC."""
    if at.tzinfo is None:
        raise ValueError(f"naive datetime {at!r}: the store only takes aware datetimes")
    return at.astimezone(UTC)


def _tag(tag: IdTag) -> str:
    return tag.tag


def _id(tx: Transaction) -> int:
    return tx.id


def _newest_first(tx: Transaction) -> tuple[float, int]:
    return (-tx.started_at.timestamp(), -tx.id)


def _sample_time(s: StoredMeterSample) -> datetime:
    return s.sample.timestamp


class FakeGateway:
    """Charge points as the test says they are; each CALL is recorded and answered from a queue."""

    def __init__(self) -> None:
        self.online: set[str] = set()
        self.calls: asyncio.Queue[tuple[str, str, dict[str, object]]] = asyncio.Queue()
        self.answers: dict[str, str] = {
            "RemoteStartTransaction": "Accepted",
            "RemoteStopTransaction": "Accepted",
        }
        self.replies: dict[str, dict[str, Any] | Exception] = {}

    def is_online(self, charge_point_id: str) -> bool:
        return charge_point_id in self.online

    def online_count(self) -> int:
        return len(self.online)

    async def _call(self, cp: str, action: str, payload: dict[str, object]) -> str:
        if cp not in self.online:
            raise ChargePointOffline(f"{cp} offline")
        self.calls.put_nowait((cp, action, payload))
        return self.answers[action]

    async def call(
        self, charge_point_id: str, action: str, payload: dict[str, Any]
    ) -> dict[str, Any]:
        """Any operation: answered from ``replies`` (a payload, or an error to raise);
        ``{"status": "Accepted"}`` when the test set nothing."""
        if charge_point_id not in self.online:
            raise ChargePointOffline(f"{charge_point_id} offline")
        self.calls.put_nowait((charge_point_id, action, payload))
        reply = self.replies.get(action, {"status": "Accepted"})
        if isinstance(reply, Exception):
            raise reply
        return dict(reply)

    async def remote_start(self, charge_point_id: str, connector_id: int, id_tag: str) -> str:
        return await self._call(
            charge_point_id,
            "RemoteStartTransaction",
            {"connectorId": connector_id, "idTag": id_tag},
        )

    async def remote_stop(self, charge_point_id: str, transaction_id: int) -> str:
        return await self._call(
            charge_point_id, "RemoteStopTransaction", {"transactionId": transaction_id}
        )


class RecordingBus:
    def __init__(self) -> None:
        self.events: list[DomainEvent] = []

    async def start(self) -> None: ...
    async def close(self) -> None: ...

    async def publish(self, event: DomainEvent) -> None:
        self.events.append(event)

    def subscribe(self, handler: EventHandler) -> Callable[[], None]:
        raise NotImplementedError
