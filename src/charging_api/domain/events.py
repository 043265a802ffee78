"""Domain events: what happened, and to whose session.

Each event names the user who owns the session it concerns (``user_id``, None when nobody
does), so the app door can route it without a lookup, and a bus between processes only has
to carry these fields. They are frozen; the codec in :mod:`charging_api.bus.codec` turns them
into bytes and back for buses that cross processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from charging_api.domain.models import ClosedBy, DeviceJob, MeterSample


@dataclass(frozen=True, slots=True)
class ConnectorStatusChanged:
    """A StatusNotification (or our own ``Offline``) for one connector; 0 is the charge point.

    ``info`` and ``vendor_error_code`` are the charge point's free-text details, passed on
    as sent. ``owner_only`` marks the copy of a charge-point-wide status (connector 0) made
    for the owner of one session on that charge point: it goes to ``user_id`` alone, since
    subscribers to the charge point already got the original.
    """

    charge_point_id: str
    connector_id: int
    status: str
    error_code: str
    timestamp: datetime
    transaction_id: int | None
    user_id: str | None
    info: str | None = None
    vendor_error_code: str | None = None
    owner_only: bool = False


@dataclass(frozen=True, slots=True)
class MeterValuesReceived:
    charge_point_id: str
    connector_id: int
    transaction_id: int | None
    user_id: str | None
    sample: MeterSample
    #: The session's live figures after this sample (``SessionService``), when it has one.
    session: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class TransactionStarted:
    charge_point_id: str
    connector_id: int
    transaction_id: int
    user_id: str | None
    id_tag: str
    meter_start_wh: int
    timestamp: datetime
    #: The groups of the app user whose remote start this is (the token's ``groups``); empty
    #: for a session the charge point began by itself.
    groups: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class TransactionStopped:
    charge_point_id: str
    connector_id: int
    transaction_id: int
    user_id: str | None
    meter_stop_wh: int
    energy_kwh: float
    reason: str | None
    timestamp: datetime
    closed_by: ClosedBy = ClosedBy.CHARGE_POINT
    app_reason: str | None = None  # what the app said when it asked to stop


@dataclass(frozen=True, slots=True)
class ReservationChanged:
    """A reservation was made, used, cancelled or expired (``status``, see
    :class:`~charging_api.domain.models.ReservationStatus`); ``user_id`` is its holder."""

    charge_point_id: str
    connector_id: int
    reservation_id: int
    user_id: str | None
    id_tag: str
    status: str
    expiry: datetime
    timestamp: datetime
    transaction_id: int | None = None


@dataclass(frozen=True, slots=True)
class ChargePointConnectionChanged:
    charge_point_id: str
    online: bool
    timestamp: datetime


@dataclass(frozen=True, slots=True)
class ChargePointBooted:
    """A BootNotification was accepted (the operator's wanted configuration follows)."""

    charge_point_id: str
    timestamp: datetime
    user_id: None = None


@dataclass(frozen=True, slots=True)
class DeviceStatusChanged:
    """A FirmwareStatusNotification or DiagnosticsStatusNotification."""

    charge_point_id: str
    job: DeviceJob
    status: str
    timestamp: datetime
    user_id: None = None


@dataclass(frozen=True, slots=True)
class DataTransferReceived:
    """A DataTransfer from a charge point whose vendor id is on the allowlist (for admins)."""

    charge_point_id: str
    vendor_id: str
    message_id: str | None
    data: Any
    timestamp: datetime
    user_id: None = None


@dataclass(frozen=True, slots=True)
class SessionNotice:
    """Something the owner of a session should hear about (``session_event`` push):
    ``kind`` is started, suspended_ev, suspended_evse, resumed, fault, offline, online,
    not_started, limit_reached or ended (``data.receipt``)."""

    charge_point_id: str
    connector_id: int
    transaction_id: int | None
    user_id: str | None
    kind: str
    timestamp: datetime
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class SessionUpdated:
    """A session's live figures (``session_update`` push, at most every few seconds)."""

    charge_point_id: str
    connector_id: int
    transaction_id: int
    user_id: str | None
    session: dict[str, Any]


DomainEvent = (
    ConnectorStatusChanged
    | MeterValuesReceived
    | TransactionStarted
    | TransactionStopped
    | ChargePointConnectionChanged
    | ReservationChanged
    | ChargePointBooted
    | DeviceStatusChanged
    | DataTransferReceived
    | SessionNotice
    | SessionUpdated
)
