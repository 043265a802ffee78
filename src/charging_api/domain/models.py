"""Value types of the core. Plain frozen dataclasses: cheap to build on the hot path."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class Role(StrEnum):
    USER = "user"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking: built from a verified token by the app door."""

    user_id: str
    role: Role = Role.USER
    id_tags: frozenset[str] = frozenset()
    expires_at: datetime | None = None

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN


class IdTagStatus(StrEnum):
    """OCPP 1.6 AuthorizationStatus."""

    ACCEPTED = "Accepted"
    BLOCKED = "Blocked"
    EXPIRED = "Expired"
    INVALID = "Invalid"
    CONCURRENT_TX = "ConcurrentTx"


@dataclass(frozen=True, slots=True)
class IdTag:
    """An RFID card or app token id, and the user it belongs to (if any)."""

    tag: str
    user_id: str | None
    status: IdTagStatus = IdTagStatus.ACCEPTED
    expiry: datetime | None = None


@dataclass(frozen=True, slots=True)
class IdTagVerdict:
    """What the central system answers a charge point about an id tag (OCPP IdTagInfo)."""

    status: IdTagStatus
    expiry: datetime | None = None


@dataclass(frozen=True, slots=True)
class ChargePointInfo:
    """What a charge point told us in BootNotification."""

    vendor: str = ""
    model: str = ""
    serial_number: str | None = None
    firmware_version: str | None = None


@dataclass(frozen=True, slots=True)
class ChargePoint:
    id: str
    info: ChargePointInfo = ChargePointInfo()
    password_hash: str | None = None
    registered_at: datetime | None = None


#: The connector statuses of OCPP 1.6 plus our own ``Offline`` (the charge point's socket is gone).
CONNECTOR_STATUSES = frozenset(
    {
        "Available",
        "Preparing",
        "Charging",
        "SuspendedEVSE",
        "SuspendedEV",
        "Finishing",
        "Reserved",
        "Unavailable",
        "Faulted",
        "Offline",
    }
)
OFFLINE = "Offline"


@dataclass(frozen=True, slots=True)
class ConnectorState:
    charge_point_id: str
    connector_id: int
    status: str
    error_code: str = "NoError"
    updated_at: datetime | None = None


class ClosedBy(StrEnum):
    """Who closed a transaction first (the ``closedBy`` of the app protocol).

    Only ``CHARGE_POINT`` is the charge point's own StopTransaction; the others are the server
    closing a session the charge point forgot (see docs/reliability.md, "Ghost sessions"). A
    StopTransaction arriving after the server closed it still corrects meter, time and reason.
    """

    CHARGE_POINT = "ChargePoint"
    SUPERSEDED = "Superseded"  # a new StartTransaction on the same connector
    CONNECTOR_AVAILABLE = "ConnectorAvailable"  # Available, and no StopTransaction in the grace
    ADMIN = "Admin"  # closed by hand (app message or CLI)


@dataclass(frozen=True, slots=True)
class Transaction:
    """One charging session, as stored. ``id`` is the OCPP transactionId.

    ``stop_reason`` is the charge point's reason (or ours when the server closed it, see
    :class:`ClosedBy`); ``app_stop_reason`` is what the app said in its stop request.
    """

    id: int
    charge_point_id: str
    connector_id: int
    id_tag: str
    user_id: str | None
    meter_start_wh: int
    started_at: datetime
    id_tag_status: IdTagStatus = IdTagStatus.ACCEPTED
    meter_stop_wh: int | None = None
    stopped_at: datetime | None = None
    stop_reason: str | None = None
    closed_by: ClosedBy | None = None
    app_stop_reason: str | None = None

    @property
    def active(self) -> bool:
        return self.stopped_at is None


@dataclass(frozen=True, slots=True)
class MeterSample:
    """One moment of one connector, in the seed's units (kWh, kW, V, A, %).

    A field is None when the charge point did not measure it. ``phases`` keeps per-phase
    readings (``{"L1": {"voltage": 230.1, ...}}``) that the headline fields summarise.
    """

    timestamp: datetime
    energy_import_kwh: float | None = None
    power_kw: float | None = None
    voltage: float | None = None
    current: float | None = None
    state_of_charge: float | None = None
    phases: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StoredMeterSample:
    """A meter sample with where it came from, as written to storage."""

    charge_point_id: str
    connector_id: int
    transaction_id: int | None
    sample: MeterSample
