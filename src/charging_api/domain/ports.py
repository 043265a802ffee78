"""What the core needs from the outside world, as Protocols.

Adapters (``ocpp.gateway``, ``bus.*``, ``storage.*``) implement these; the core is tested
with in-memory fakes of the same shape.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

from charging_api.domain.events import DomainEvent
from charging_api.domain.models import (
    ChargePoint,
    ChargePointInfo,
    ClosedBy,
    ConnectorState,
    IdTag,
    IdTagStatus,
    MeterSample,
    StoredMeterSample,
    Transaction,
)


class ChargerGateway(Protocol):
    """Sends CALLs to connected charge points.

    Errors: ``ChargePointOffline`` (no session), ``ChargePointTimeout`` (no CALLRESULT in time),
    ``ChargePointError`` (a CALLERROR came back).
    """

    def is_online(self, charge_point_id: str) -> bool: ...

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

    # connectors
    async def set_connector_status(self, state: ConnectorState) -> None: ...

    async def connector_states(self, charge_point_id: str) -> list[ConnectorState]: ...

    # id tags
    async def get_id_tag(self, tag: str) -> IdTag | None: ...

    async def put_id_tag(self, tag: IdTag) -> None: ...

    async def id_tags_of(self, user_id: str) -> list[IdTag]: ...

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

    # documents: small JSON objects of the session features (tariffs, their assignments,
    # session records), by kind and key
    async def put_document(self, kind: str, key: str, body: dict[str, Any] | None) -> None:
        """Store (None: delete) one document; commits."""
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
