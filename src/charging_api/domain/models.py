"""Value types of the core. Plain frozen dataclasses: cheap to build on the hot path."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum


class Role(StrEnum):
    USER = "user"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking: built from a verified token by the app door. ``groups`` (the token's
    ``groups`` claim) choose a group's tariff for the sessions this principal starts."""

    user_id: str
    role: Role = Role.USER
    id_tags: frozenset[str] = frozenset()
    expires_at: datetime | None = None
    groups: frozenset[str] = frozenset()

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


def id_tag_key(tag: str) -> str:
    """The form under which id tags are compared and looked up.

    OCPP 1.6 types ``idTag`` as CiString20: case-insensitive. Every comparison of two tags
    (Authorize, StartTransaction against a pending remote start, an app's start, a token's
    ``idTag`` claim) and every storage lookup goes through this one function, so ``"tag-a"``
    and ``"TAG-A"`` are the same card everywhere. Unicode case folding (``str.casefold``)
    rather than ``lower()``: it is the caseless match Unicode defines, and the stores compute
    it here, in Python, never with SQL ``lower()`` (SQLite folds only ASCII, PostgreSQL
    follows the database's collation), so all backends agree. The tag itself is kept and
    shown as it was registered.
    """
    return tag.casefold()


def ocpp_datetime(at: datetime) -> str:
    """An aware datetime as OCPP's dateTime in payloads the core builds (UTC, ``Z``,
    milliseconds), e.g. ReserveNow's ``expiryDate``."""
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def same_id_tag(a: str, b: str) -> bool:
    """Whether two id tags name the same card (see :func:`id_tag_key`)."""
    return a == b or id_tag_key(a) == id_tag_key(b)


@dataclass(frozen=True, slots=True)
class IdTag:
    """An RFID card or app token id, and the user it belongs to (if any).

    ``tag`` is spelled as registered; it is compared case-insensitively (:func:`id_tag_key`).
    ``parent_id_tag`` is OCPP's ``parentIdTag`` (a group of cards): a reservation made for
    the parent may be used by any of its children; it goes to charge points in Authorize's
    and the local list's ``IdTagInfo``.
    """

    tag: str
    user_id: str | None
    status: IdTagStatus = IdTagStatus.ACCEPTED
    expiry: datetime | None = None
    parent_id_tag: str | None = None


@dataclass(frozen=True, slots=True)
class IdTagVerdict:
    """What the central system answers a charge point about an id tag (OCPP IdTagInfo)."""

    status: IdTagStatus
    expiry: datetime | None = None
    parent_id_tag: str | None = None


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


#: Our own connector status for a charge point whose connection is gone (not an OCPP status).
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

    @property
    def has_values(self) -> bool:
        """False when nothing was measured: such a sample is never stored nor pushed."""
        return (
            self.energy_import_kwh is not None  # the usual case decides at once
            or self.power_kw is not None
            or self.voltage is not None
            or self.current is not None
            or self.state_of_charge is not None
            or bool(self.phases)
        )


@dataclass(frozen=True, slots=True)
class StoredMeterSample:
    """A meter sample with where it came from, as written to storage."""

    charge_point_id: str
    connector_id: int
    transaction_id: int | None
    sample: MeterSample


@dataclass(frozen=True, slots=True)
class TransactionQuery:
    """A page of the transaction history, newest first (operators' search).

    Every filter is optional; ``started_from`` is inclusive and ``started_before`` exclusive
    (aware datetimes); ``active`` True means open transactions only, False closed ones only.
    """

    user_id: str | None = None
    charge_point_id: str | None = None
    started_from: datetime | None = None
    started_before: datetime | None = None
    active: bool | None = None
    limit: int = 50
    offset: int = 0


# ---------------------------------------------------------------------- operator side


@dataclass(frozen=True, slots=True)
class OperationRecord:
    """One CSMS -> charge point operation, as the operations log keeps it.

    ``response`` is the charge point's answer (None when it failed); ``error_code`` is the
    wire code of the failure (``CHARGE_POINT_TIMEOUT``, ``TRANSACTION_RUNNING`` ...), None on
    success. ``id`` is 0 until stored.
    """

    id: int
    charge_point_id: str
    action: str
    requested_by: str
    requested_at: datetime
    duration_ms: int
    request: dict[str, object]
    response: dict[str, object] | None = None
    error_code: str | None = None


class Availability(StrEnum):
    """OCPP 1.6 AvailabilityType: what an operator wants a connector to be."""

    OPERATIVE = "Operative"
    INOPERATIVE = "Inoperative"


@dataclass(frozen=True, slots=True)
class ConnectorAvailability:
    """The availability an operator asked for on one connector (0: the whole charge point).

    ``scheduled`` is True while the charge point answered ``Scheduled``: the change waits
    for the running transaction to end, and the server sends it again then.
    """

    charge_point_id: str
    connector_id: int
    wanted: Availability
    scheduled: bool
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class ConfigurationEntry:
    """One configuration key of a charge point: as reported by its last GetConfiguration
    (``value``, ``readonly``, ``reported_at``) and as an operator wants it (``wanted``, applied
    after every BootNotification; ``applied_status`` is the last ChangeConfiguration answer)."""

    charge_point_id: str
    key: str
    value: str | None = None
    readonly: bool = False
    reported_at: datetime | None = None
    wanted: str | None = None
    applied_status: str | None = None
    applied_at: datetime | None = None


class DeviceJob(StrEnum):
    """The two long-running jobs of a charge point whose progress it reports."""

    FIRMWARE = "firmware"
    DIAGNOSTICS = "diagnostics"


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    """One FirmwareStatusNotification / DiagnosticsStatusNotification (``status`` as sent);
    ``id`` is 0 until stored."""

    id: int
    charge_point_id: str
    job: DeviceJob
    status: str
    at: datetime


class ReservationStatus(StrEnum):
    """Where a reservation is in its life: only ``ACTIVE`` holds the connector."""

    ACTIVE = "Active"
    USED = "Used"  # a StartTransaction consumed it
    EXPIRED = "Expired"
    CANCELLED = "Cancelled"


@dataclass(frozen=True, slots=True)
class Reservation:
    """A connector held for one id tag (or any child of its parent) until ``expiry``.

    ``id`` is the OCPP ``reservationId`` (allocated by the store). ``user_id`` is the holder
    who gets ``reservation_update`` pushes; ``made_by`` who asked (the holder or an admin).
    """

    id: int
    charge_point_id: str
    connector_id: int
    id_tag: str
    user_id: str | None
    expiry: datetime
    created_at: datetime
    made_by: str
    parent_id_tag: str | None = None
    status: ReservationStatus = ReservationStatus.ACTIVE
    transaction_id: int | None = None
    ended_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.status is ReservationStatus.ACTIVE


@dataclass(frozen=True, slots=True)
class LocalListState:
    """What the server last installed in one charge point's local authorization list:
    its version and the entries (id tag key -> the ``AuthorizationData`` sent)."""

    charge_point_id: str
    version: int
    entries: dict[str, dict[str, object]]
    synced_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class StoredChargingProfile:
    """A charging profile the server set on a charge point (``csChargingProfiles`` as sent).

    ``transaction_id`` is set for a TxProfile: it is cleared when that session ends.
    """

    charge_point_id: str
    connector_id: int
    profile_id: int
    purpose: str
    stack_level: int
    profile: dict[str, object]
    set_at: datetime
    set_by: str
    transaction_id: int | None = None
