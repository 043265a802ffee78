"""What the core needs from the outside world, as Protocols.

Adapters (``ocpp.gateway``, ``bus.*``, ``storage.*``) implement these; the core is tested
with in-memory fakes of the same shape.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

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
    MeterSample,
    OperationRecord,
    Reservation,
    StoredChargingProfile,
    StoredMeterSample,
    Transaction,
    TransactionQuery,
)


class ChargerGateway(Protocol):
    """Sends CALLs to connected charge points.

    Errors: ``ChargePointOffline`` (no session), ``ChargePointTimeout`` (no CALLRESULT in time),
    ``ChargePointError`` (a CALLERROR came back, or an answer that breaks its schema),
    ``ChargePointBusy`` (too many CALLs queued), ``InvalidPayload`` (the request breaks its
    schema: nothing was sent).
    """

    def is_online(self, charge_point_id: str) -> bool: ...

    async def call(
        self, charge_point_id: str, action: str, payload: dict[str, Any]
    ) -> dict[str, Any]:
        """Any OCPP 1.6 CALL (``action`` as the spec names it, e.g. ``"Reset"``), validated
        both ways against the spec's schemas, through the charge point's one-CALL queue with
        the call time-out; returns the CALLRESULT payload."""
        ...

    def online_count(self) -> int: ...

    async def remote_start(self, charge_point_id: str, connector_id: int, id_tag: str) -> str:
        """RemoteStartTransaction; returns the charge point's status (Accepted/Rejected)."""
        ...

    async def remote_stop(self, charge_point_id: str, transaction_id: int) -> str:
        """RemoteStopTransaction; returns the charge point's status (Accepted/Rejected)."""
        ...


EventHandler = Callable[[DomainEvent], Awaitable[None] | None]


class EventBus(Protocol):
    """Carries domain events from the core to every subscriber (in this process or, for a
    cross-process bus, in every process)."""

    async def publish(self, event: DomainEvent) -> None: ...

    def subscribe(self, handler: EventHandler) -> Callable[[], None]:
        """Call ``handler`` for each event from now on; returns the function that unsubscribes."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class Store(Protocol):
    """Persistent state. Writes that return are durable (committed), except
    :meth:`add_meter_samples` and :meth:`set_connector_status`, which may batch (readers see
    them at once); :meth:`flush` makes those durable too."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def flush(self) -> None: ...

    # charge points
    async def get_charge_point(self, charge_point_id: str) -> ChargePoint | None: ...

    async def add_charge_point(self, charge_point_id: str, password_hash: str | None) -> None: ...

    async def record_boot(self, charge_point_id: str, info: ChargePointInfo, at: datetime) -> None:
        """Create the charge point if unknown, and remember what it reported."""
        ...

    async def count_charge_points(self) -> int: ...

    async def list_charge_points(self) -> list[ChargePoint]:
        """Every registered or booted charge point, by id."""
        ...

    async def delete_charge_point(self, charge_point_id: str) -> bool:
        """Forget a charge point and its connectors (its transactions stay, as history);
        False if it was unknown."""
        ...

    # connectors
    async def set_connector_status(self, state: ConnectorState) -> None: ...

    async def connector_states(self, charge_point_id: str) -> list[ConnectorState]: ...

    # id tags
    async def get_id_tag(self, tag: str) -> IdTag | None: ...

    async def put_id_tag(self, tag: IdTag) -> None: ...

    async def id_tags_of(self, user_id: str) -> list[IdTag]: ...

    async def all_id_tags(self) -> list[IdTag]:
        """Every registered id tag, by tag."""
        ...

    async def delete_id_tag(self, tag: str) -> bool:
        """Forget the tag (in any case); False if it was unknown."""
        ...

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
        """Record a StartTransaction durably: ``(the transaction, True if it is new)``.

        The new transaction's id is the OCPP transactionId. A replay (same charge point,
        connector, id tag, meter start and instant) gets the transaction it created the
        first time, and False."""
        ...

    async def get_transaction(self, transaction_id: int) -> Transaction | None: ...

    async def stop_transaction(
        self,
        transaction_id: int,
        meter_stop_wh: int,
        stopped_at: datetime,
        reason: str | None,
        closed_by: ClosedBy = ClosedBy.CHARGE_POINT,
        app_stop_reason: str | None = None,
    ) -> Transaction | None:
        """Close and commit, once: returns the transaction as stored afterwards (a transaction
        already closed comes back unchanged), or None if it is unknown."""
        ...

    async def correct_stop(
        self, transaction_id: int, meter_stop_wh: int, stopped_at: datetime, reason: str | None
    ) -> Transaction | None:
        """The charge point's own StopTransaction for a transaction the server closed itself
        (``closed_by`` other than ``CHARGE_POINT``): its meter, time and reason replace ours;
        ``closed_by`` and ``app_stop_reason`` stay. Commits; returns the transaction as stored,
        or None if unknown. Open transactions, or ones the charge point closed, are unchanged."""
        ...

    async def active_transactions(self) -> list[Transaction]: ...

    async def transactions_of(self, user_id: str | None, limit: int) -> list[Transaction]:
        """Newest first; ``None`` means everyone's (admin)."""
        ...

    async def find_transactions(self, query: TransactionQuery) -> list[Transaction]:
        """One page of :class:`TransactionQuery`, newest first (then by id, descending)."""
        ...

    # documents: small JSON objects of the session features (tariffs, their assignments,
    # session records), by kind and key
    async def put_document(self, kind: str, key: str, body: dict[str, Any] | None) -> None:
        """Store (None: delete) one document; commits."""
        ...

    async def put_documents(self, kind: str, bodies: Mapping[str, dict[str, Any] | None]) -> None:
        """Store (None: delete) several documents of one kind in one transaction; commits."""
        ...

    async def get_document(self, kind: str, key: str) -> dict[str, Any] | None: ...

    async def documents(self, kind: str) -> dict[str, dict[str, Any]]:
        """Every document of ``kind``, by key."""
        ...

    # meter samples
    def add_meter_samples(self, samples: Sequence[StoredMeterSample]) -> None:
        """Queue samples for the next batch write; never blocks the caller."""
        ...

    async def meter_samples_of(self, transaction_id: int) -> list[StoredMeterSample]: ...

    # operator side (each write commits)
    async def add_operation(self, record: OperationRecord) -> OperationRecord:
        """Append to the operations log; returns the record with its id (increasing)."""
        ...

    async def operations(
        self, charge_point_id: str | None, limit: int, before_id: int | None
    ) -> list[OperationRecord]:
        """Newest first; ``before_id`` pages back (records with a smaller id only)."""
        ...

    async def put_availability(self, availability: ConnectorAvailability) -> None:
        """Replace the wanted availability of that connector."""
        ...

    async def availabilities(self, charge_point_id: str) -> list[ConnectorAvailability]:
        """By connector id."""
        ...

    async def put_reported_configuration(
        self, charge_point_id: str, entries: Sequence[ConfigurationEntry]
    ) -> None:
        """Record what GetConfiguration reported (value, readonly, reported_at) for these
        keys; wanted values and results of the keys stay."""
        ...

    async def put_wanted_configuration(
        self, charge_point_id: str, key: str, wanted: str | None
    ) -> None:
        """Declare (or, with None, drop) the value an operator wants for ``key``."""
        ...

    async def put_configuration_result(
        self, charge_point_id: str, key: str, status: str, at: datetime
    ) -> None:
        """The charge point's answer to the last ChangeConfiguration of ``key``."""
        ...

    async def configuration(self, charge_point_id: str) -> list[ConfigurationEntry]:
        """Every known key of the charge point, by key."""
        ...

    async def add_device_status(self, status: DeviceStatus) -> DeviceStatus:
        """Append a firmware/diagnostics status; returns it with its id."""
        ...

    async def device_statuses(
        self, charge_point_id: str, job: DeviceJob, limit: int
    ) -> list[DeviceStatus]:
        """Newest first."""
        ...


class OpsStateStore(Protocol):
    """Persistent operator state: reservations, local lists, charging profiles the server set.

    Every write returns once committed."""

    async def add_reservation(self, reservation: Reservation) -> Reservation:
        """Store a new reservation; returns it with its allocated ``id`` (the OCPP
        reservationId, never handed out twice)."""
        ...

    async def update_reservation(self, reservation: Reservation) -> None: ...

    async def put_reservation(self, reservation: Reservation) -> None:
        """Insert or replace the reservation with this ``id`` (one an operator numbered
        himself, in ReserveNow); ids allocated later by :meth:`add_reservation` stay above it."""
        ...

    async def get_reservation(self, reservation_id: int) -> Reservation | None: ...

    async def active_reservations(self) -> list[Reservation]:
        """Reservations still holding a connector, oldest first."""
        ...

    async def all_id_tags(self) -> list[IdTag]:
        """Every registered id tag, ordered by tag."""
        ...

    async def charge_point_ids(self) -> list[str]: ...

    async def get_local_list(self, charge_point_id: str) -> LocalListState | None: ...

    async def put_local_list(self, state: LocalListState) -> None: ...

    async def put_charging_profile(self, profile: StoredChargingProfile) -> None:
        """Insert or replace (same charge point and profile id)."""
        ...

    async def charging_profiles(
        self, charge_point_id: str | None = None
    ) -> list[StoredChargingProfile]: ...

    async def delete_charging_profile(self, charge_point_id: str, profile_id: int) -> None: ...


class Clock(Protocol):
    """The core's only source of time, so tests can move it by hand."""

    def now(self) -> datetime:
        """Timezone-aware UTC now (wall clock: what is stored and shown)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps: every time-out and grace period is measured on
        it. :meth:`ChargingService.run_timers` sleeps on the event loop for the difference, so
        a real clock must share the loop's time base (``time.monotonic``)."""
        ...


class SessionFigures(Protocol):
    def to_json(self) -> dict[str, Any]: ...


class SessionHooks(Protocol):
    """What the meter hot path tells the session features (``domain/sessions.py``)."""

    async def on_samples(
        self, transaction_id: int, samples: Sequence[MeterSample]
    ) -> SessionFigures | None: ...

    def on_stop_samples(self, transaction_id: int, samples: Sequence[MeterSample]) -> None:
        """A StopTransaction's ``transactionData`` of an open transaction, before its stop
        is published (the receipt counts them)."""
        ...
