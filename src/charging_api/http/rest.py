"""The operator REST API (``/api/...`` beside ``/health`` and ``/api/stats``), an ASGI app.

Built with Litestar: routing, request validation and the OpenAPI 3.1 document (served at
``/api/openapi.json``, a docs page at ``/api/docs``) all come from the typed handlers and the
pydantic models below; nothing here parses a path or writes a schema by hand. See
docs/architecture.md ("Decisions") for why Litestar, and how it shares the app port with ``/ws``.

Every route needs an admin: ``Authorization: Bearer`` with an admin JWT or the stats API key
(:func:`charging_api.http.routes.check_admin`, the same rule as ``/api/stats``). Failures have
the shape of ``/api/stats``' failures, ``{"success": false, "error": {"code", "message"}}``, with
the status codes of docs/operators.md ("REST API").
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from importlib.resources import files
from typing import Annotated, Any, Literal, Protocol, TypeVar, cast
from zoneinfo import available_timezones

from litestar import Litestar, MediaType, Request, Response, delete, get, patch, post, put, route
from litestar.config.cors import CORSConfig
from litestar.di import NamedDependency, Provide
from litestar.exceptions import HTTPException, NotFoundException, ValidationException
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, OpenAPIMediaType, Operation, Schema, SecurityScheme
from litestar.openapi.spec import OpenAPIResponse as SpecResponse
from litestar.openapi.spec.enums import OpenAPIType
from litestar.params import FromPath, JSONBody, PathParameter, QueryParameter
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from charging_api.domain import access
from charging_api.domain.models import (
    ChargePoint,
    ConfigurationEntry,
    ConnectorState,
    DeviceJob,
    DeviceStatus,
    IdTag,
    IdTagStatus,
    OperationRecord,
    Principal,
    Reservation,
    Role,
    StoredChargingProfile,
    Transaction,
    TransactionQuery,
    same_id_tag,
)
from charging_api.domain.operations import OPERATIONS
from charging_api.domain.ports import Store
from charging_api.domain.profiles import ChargingProfiles
from charging_api.domain.reservations import ReservationBook
from charging_api.domain.sessions import SessionService, history_csv
from charging_api.domain.webhooks import WebhookService
from charging_api.errors import (
    AuthenticationFailed,
    ChargePointBusy,
    ChargePointError,
    ChargePointNotFound,
    ChargePointOffline,
    ChargePointRejected,
    ChargePointTimeout,
    ChargingApiError,
    ConnectorBusy,
    ConnectorNotFound,
    ConnectorReserved,
    ConnectorUnavailable,
    Forbidden,
    InvalidPayload,
    NoIdTag,
    NotAuthenticated,
    ReservationNotFound,
    TransactionNotActive,
    TransactionNotFound,
    TransactionRunning,
    UnknownOperation,
    ValidationFailed,
)
from charging_api.http.routes import HttpReply, check_admin
from charging_api.timefmt import format_utc

__all__ = ["RestConfig", "RestDependencies", "build_rest_app"]

#: HTTP status of each error code the routes can raise (anything else is a 500).
STATUS: dict[type[ChargingApiError], int] = {
    NotAuthenticated: 401,
    AuthenticationFailed: 401,
    Forbidden: 403,
    ChargePointNotFound: 404,
    TransactionNotFound: 404,
    ConnectorNotFound: 404,
    ChargePointOffline: 409,
    ChargePointBusy: 409,
    ConnectorBusy: 409,
    TransactionNotActive: 409,
    ValidationFailed: 422,
    ChargePointRejected: 409,
    ChargePointError: 502,
    ChargePointTimeout: 504,
    InvalidPayload: 422,
    UnknownOperation: 404,
    TransactionRunning: 409,
    ConnectorUnavailable: 409,
    ConnectorReserved: 409,
    ReservationNotFound: 404,
    NoIdTag: 404,
}

#: The action route's names: kebab-case of the OCPP 1.6 operation names (``reset``,
#: ``unlock-connector``, ...) -> the PascalCase name ``OperatorService.execute`` takes.
ACTIONS: dict[str, str] = {
    re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower(): name for name in OPERATIONS
}

#: The same names as a type, for the route's validation and its OpenAPI enum (a test holds
#: it equal to :data:`ACTIONS`).
ActionName = Literal[
    "cancel-reservation",
    "change-availability",
    "change-configuration",
    "clear-cache",
    "clear-charging-profile",
    "data-transfer",
    "get-composite-schedule",
    "get-configuration",
    "get-diagnostics",
    "get-local-list-version",
    "remote-start-transaction",
    "remote-stop-transaction",
    "reserve-now",
    "reset",
    "send-local-list",
    "set-charging-profile",
    "trigger-message",
    "unlock-connector",
    "update-firmware",
]


def status_of(error: ChargingApiError) -> int:
    """The HTTP status for a core error: by its class, then its code (rule refusals are 409)."""
    for kind in type(error).__mro__:
        if kind in STATUS:
            return STATUS[kind]
    return {"INVALID_PAYLOAD": 422, "NOT_FOUND": 404}.get(error.code, 409)


class IdTagConflict(ChargingApiError):
    """An id tag is already registered (in this or another case)."""

    code = "ID_TAG_EXISTS"


class IdTagNotFound(ChargingApiError):
    code = "ID_TAG_NOT_FOUND"


class TariffNotFound(ChargingApiError):
    code = "TARIFF_NOT_FOUND"


class WebhookNotFound(ChargingApiError):
    code = "WEBHOOK_NOT_FOUND"


class WebhookEventNotFound(ChargingApiError):
    code = "WEBHOOK_EVENT_NOT_FOUND"


STATUS[IdTagNotFound] = 404
STATUS[IdTagConflict] = 409
STATUS[TariffNotFound] = 404
STATUS[WebhookNotFound] = 404
STATUS[WebhookEventNotFound] = 404


# ------------------------------------------------------------------------------ wire models

_Id = Annotated[StrictStr, Field(min_length=1, max_length=128)]
_Tag = Annotated[StrictStr, Field(min_length=1, max_length=20)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)  # unknown fields: ignored, as on /ws


class ConnectorOut(_Model):
    connectorId: int
    status: str
    errorCode: str
    updatedAt: str | None


class ChargePointOut(_Model):
    chargePointId: str
    online: bool
    vendor: str
    model: str
    serialNumber: str | None
    firmwareVersion: str | None
    registeredAt: str | None
    lastSeen: str | None = Field(description="The newest connector status time we hold")
    hasPassword: bool
    connectors: list[ConnectorOut]


class ChargePointIn(_Model):
    chargePointId: _Id
    # Constraints on the field, not inside ``Annotated[...] | None``: Litestar's schema keeps
    # them only there (tests/e2e/test_rest_openapi.py found the difference).
    password: StrictStr | None = Field(
        default=None,
        min_length=8,
        max_length=40,
        description="The Basic-auth password the charge point will send",
    )


_PARENT_DOC = (
    "OCPP parentIdTag: the group this card belongs to (a reservation for the parent may be "
    "used by any of its children); sent to charge points in IdTagInfo."
)


class IdTagOut(_Model):
    idTag: str
    userId: str | None
    status: IdTagStatus
    expiry: str | None
    parentIdTag: str | None = Field(default=None, description=_PARENT_DOC)


class IdTagIn(_Model):
    idTag: _Tag
    userId: StrictStr | None = Field(default=None, min_length=1, max_length=128)
    status: IdTagStatus = IdTagStatus.ACCEPTED
    expiry: datetime | None = None
    parentIdTag: StrictStr | None = Field(
        default=None,
        min_length=1,
        max_length=20,
        description=f"{_PARENT_DOC} Not the tag itself.",
    )


class IdTagChange(_Model):
    """Only the fields given change; ``userId``/``expiry``/``parentIdTag`` of ``null`` clear
    them."""

    userId: StrictStr | None = Field(default=None, min_length=1, max_length=128)
    status: IdTagStatus | None = None
    expiry: datetime | None = None
    parentIdTag: StrictStr | None = Field(
        default=None,
        min_length=1,
        max_length=20,
        description=f"{_PARENT_DOC} Not the tag itself; null clears it.",
    )


class TransactionOut(_Model):
    transactionId: int
    chargePointId: str
    connectorId: int
    idTag: str
    userId: str | None
    status: Literal["Active", "Stopped"]
    meterStartWh: int
    meterStopWh: int | None
    startedAt: str
    stoppedAt: str | None
    stopReason: str | None
    appStopReason: str | None
    closedBy: str | None


class TransactionPage(_Model):
    items: list[TransactionOut]
    limit: int
    offset: int


class MeterSampleOut(_Model):
    timestamp: str
    connectorId: int
    energyImportKWh: float | None
    powerKw: float | None
    voltage: float | None
    current: float | None
    stateOfCharge: float | None


class TransactionDetail(TransactionOut):
    meterSamples: list[MeterSampleOut]


class CloseIn(_Model):
    # gt=-1 rather than ge=0: Litestar's schema drops a minimum of 0 on a nullable field.
    meterStopWh: StrictInt | None = Field(default=None, gt=-1, le=2**63 - 1)


class ErrorBody(_Model):
    code: str
    message: str
    details: dict[str, Any] | None = None


class ConfigurationOut(_Model):
    key: str
    value: str | None = Field(description="As the last GetConfiguration reported it")
    readonly: bool
    reportedAt: str | None
    wanted: str | None = Field(description="Applied after every BootNotification")
    appliedStatus: str | None = Field(description="The last ChangeConfiguration answer for it")
    appliedAt: str | None


class WantedValue(_Model):
    """``null``: the key is no longer wanted."""

    value: StrictStr | None = Field(max_length=500)


class DeviceStatusOut(_Model):
    job: DeviceJob
    status: str
    at: str


class OperationOut(_Model):
    id: int
    chargePointId: str
    action: str
    requestedBy: str
    requestedAt: str
    durationMs: int
    request: dict[str, Any]
    response: dict[str, Any] | None
    errorCode: str | None


class Failure(_Model):
    success: Literal[False] = False
    error: ErrorBody


class ReservationOut(_Model):
    reservationId: int
    chargePointId: str
    connectorId: int
    idTag: str
    userId: str | None
    status: str
    expiryDate: str
    transactionId: int | None = None


class ReservationIn(_Model):
    """An admin reserves a connector for any registered, Accepted id tag."""

    chargePointId: _Id
    connectorId: StrictInt = Field(ge=1, le=255)
    idTag: _Tag
    expiryMinutes: StrictInt | None = Field(
        default=None, ge=1, le=7 * 24 * 60, description="Capped at the server's maximum"
    )


class CancelledReservation(_Model):
    reservation: ReservationOut
    chargePointStatus: str = Field(
        description="The CancelReservation answer, or why the charge point was not asked"
    )


class ChargingProfileOut(_Model):
    chargePointId: str
    connectorId: int
    chargingProfileId: int
    purpose: str
    stackLevel: int
    transactionId: int | None
    setAt: str
    setBy: str
    profile: dict[str, Any] = Field(description="csChargingProfiles as sent")


#: Amounts: decimal numbers as strings (exact), as the tariff's stored form writes them.
DECIMAL = r"^[0-9]{1,12}(\.[0-9]{1,6})?$"
HOUR_MINUTE = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"
PERCENT = r"^(100(\.0{1,6})?|[0-9]{1,2}(\.[0-9]{1,6})?)$"


def _matching(regex: str, **kwargs: Any) -> Any:
    """A string field matching ``regex``, the pattern also in the OpenAPI schema (Litestar's
    schema keeps a pydantic ``pattern`` only from ``StringConstraints``, and not on a
    nullable field)."""
    return Field(pattern=regex, json_schema_extra={"pattern": regex}, **kwargs)


#: The IANA zones this machine knows (an enum, so the schema admits only zones that work).
TimeZoneName = StrEnum(  # type: ignore[misc]
    "TimeZoneName", {zone: zone for zone in sorted(available_timezones())}
)
Weekday = Literal["MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY", "SATURDAY", "SUNDAY"]


class PriceComponentModel(_Model):
    type: Literal["ENERGY", "TIME", "PARKING_TIME", "FLAT"]
    price: StrictStr = _matching(
        DECIMAL, description="Before VAT: per kWh, per hour, or once (FLAT)"
    )


class RestrictionsModel(_Model):
    startTime: StrictStr | None = _matching(HOUR_MINUTE, default=None)
    endTime: StrictStr | None = _matching(HOUR_MINUTE, default=None)
    daysOfWeek: list[Weekday] | None = None


class TariffElementModel(_Model):
    priceComponents: list[PriceComponentModel] = Field(min_length=1, max_length=4)
    restrictions: RestrictionsModel | None = None


class TariffIn(_Model):
    """A tariff (docs/sessions.md): for each component type the first element whose
    restrictions hold applies."""

    currency: StrictStr = _matching(r"^[A-Za-z]{3}$", description="ISO 4217, e.g. EUR")
    vatPercent: StrictStr = _matching(PERCENT, default="0")
    timezone: TimeZoneName = Field(default=TimeZoneName("UTC"), description="IANA time zone")
    elements: list[TariffElementModel] = Field(min_length=1, max_length=50)
    minPrice: StrictStr | None = _matching(DECIMAL, default=None)
    maxPrice: StrictStr | None = _matching(DECIMAL, default=None)


class TariffOut(TariffIn):
    id: str


class TariffsOut(_Model):
    tariffs: list[TariffOut]
    assignments: dict[str, str] = Field(
        description="scope (default, chargePoint:<id>, group:<name>, user:<id>) -> tariff id"
    )


class TariffAssignmentIn(_Model):
    """Which tariff new sessions get: the user's, else their group's (the token's ``groups``
    claim), else the charge point's, else the default."""

    scope: StrictStr = _matching(
        r"^(default|(chargePoint|group|user):.{1,128})$",
        description="default, chargePoint:<chargePointId>, group:<group> or user:<userId>",
    )
    tariffId: StrictStr | None = Field(
        default=None, min_length=1, max_length=64, description="null: unassign"
    )


class WebhookIn(_Model):
    id: StrictStr = Field(min_length=1, max_length=64)
    url: StrictStr = _matching(r"^https?://", max_length=2000)
    secret: StrictStr = Field(min_length=16, max_length=256, description="Signs every delivery")
    events: list[StrictStr] = Field(
        default_factory=lambda: ["*"], max_length=50, description="Event kinds, or *"
    )


class WebhookOut(_Model):
    id: str
    url: str
    events: list[str]


class WebhookDeliveryOut(_Model):
    eventId: str
    endpoint: str
    sessionKey: str
    attempt: int
    status: int | None = Field(description="The endpoint's HTTP status (null: not reached)")
    error: str | None
    delivered: bool
    at: str
    body: str


class Redelivery(_Model):
    eventId: str
    queued: bool


class ReceiptOut(_Model):
    receipt: dict[str, Any] = Field(description="The session's receipt (docs/sessions.md)")
    cdr: dict[str, Any] = Field(description="The same as an OCPI 2.2.1 CDR object")


class SessionRow(_Model):
    transactionId: int
    chargePointId: str
    connectorId: int
    userId: str | None
    startedAt: str
    stoppedAt: str | None
    energyKWh: float | None
    cost: str | None
    currency: str | None
    stopReason: str | None
    limitReached: str | None


class MonthOut(_Model):
    month: str
    sessions: int
    energyKWh: float
    cost: dict[str, str] = Field(description="currency -> total")


class SessionHistory(_Model):
    total: int
    offset: int
    sessions: list[SessionRow]
    months: list[MonthOut]


@dataclass
class CsvOrJson(Operation):
    """The history route's operation: its 200 is JSON, or CSV with ``format=csv``."""

    def __post_init__(self) -> None:
        ok = (self.responses or {}).get("200")
        if isinstance(ok, SpecResponse) and ok.content is not None:
            ok.content["text/csv"] = OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING))


# ------------------------------------------------------------------------------ wiring


class RunsOperations(Protocol):
    """What the routes need of :class:`~charging_api.domain.operations.OperatorService`."""

    async def execute(
        self,
        principal: Principal,
        charge_point_id: str,
        action: str,
        payload: dict[str, Any],
        *,
        force: bool = False,
    ) -> dict[str, Any]: ...

    async def operations_log(
        self,
        principal: Principal,
        *,
        charge_point_id: str | None = None,
        limit: int = 100,
        before_id: int | None = None,
    ) -> list[OperationRecord]: ...

    async def configuration_of(
        self, principal: Principal, charge_point_id: str
    ) -> list[ConfigurationEntry]: ...

    async def want_configuration(
        self, principal: Principal, charge_point_id: str, key: str, value: str | None
    ) -> None: ...

    async def device_statuses_of(
        self, principal: Principal, charge_point_id: str, job: DeviceJob, limit: int = 50
    ) -> list[DeviceStatus]: ...


class ClosesTransactions(Protocol):
    """What the routes need of :class:`~charging_api.domain.charging.ChargingService`."""

    async def close_transaction(
        self, principal: Principal, transaction_id: int, meter_stop_wh: int | None = None
    ) -> Transaction: ...


@dataclass(frozen=True, slots=True)
class RestConfig:
    version: str
    allowed_origins: tuple[str, ...]
    stats_key: str | None = None


@dataclass(frozen=True, slots=True)
class RestDependencies:
    store: Store
    service: ClosesTransactions
    is_online: Callable[[str], bool]
    verify_bearer: Callable[[str], Principal]
    #: The AsyncAPI document of the app WebSocket (built by the app door from its models).
    asyncapi: Mapping[str, Any]
    #: ``/health`` and ``/api/stats`` (:class:`~charging_api.http.routes.HttpRoutes`): also
    #: served here, for the later requests of a keep-alive connection the REST API owns.
    operator: RunsOperations | None = None
    #: Operator state and sessions (issues 11 and 13); a route whose service is None is a 404.
    reservations: ReservationBook | None = None
    profiles: ChargingProfiles | None = None
    sessions: SessionService | None = None
    webhooks: WebhookService | None = None
    plain_routes: Callable[[str, str, Mapping[str, str]], Awaitable[HttpReply | None]] | None = None


_S = TypeVar("_S")

#: Tariff ids have 1 to 64 characters (the core's rule).
TariffIdPath = Annotated[str, PathParameter(min_length=1, max_length=64)]

#: OCPP transaction ids are 32-bit JSON integers (as on /ws): anything else is a 422, never a
#: database overflow (the schemathesis run found a 500 for a huge id).
TransactionIdPath = Annotated[int, PathParameter(ge=-(2**31), le=2**31 - 1)]

#: The console page served at ``/``.
CONSOLE = files("charging_api.http").joinpath("console.html").read_bytes()

#: The ``principal`` dependency of every route: the admin making the request.
Admin = NamedDependency[Principal]

#: The principal of a request made with the stats API key.
API_KEY_PRINCIPAL = Principal("api-key", Role.ADMIN)


def _connector(state: ConnectorState) -> ConnectorOut:
    return ConnectorOut(
        connectorId=state.connector_id,
        status=state.status,
        errorCode=state.error_code,
        updatedAt=format_utc(state.updated_at) if state.updated_at else None,
    )


def _tag(tag: IdTag) -> IdTagOut:
    expiry = format_utc(tag.expiry) if tag.expiry else None
    return IdTagOut(
        idTag=tag.tag,
        userId=tag.user_id,
        status=tag.status,
        expiry=expiry,
        parentIdTag=tag.parent_id_tag,
    )


def _check_parent(tag: str, parent: str | None) -> None:
    if parent is not None and same_id_tag(tag, parent):
        raise ValidationFailed(
            f"Id tag {tag} cannot be its own parentIdTag", {"field": "parentIdTag"}
        )


def _transaction_fields(tx: Transaction) -> dict[str, Any]:
    return {
        "transactionId": tx.id,
        "chargePointId": tx.charge_point_id,
        "connectorId": tx.connector_id,
        "idTag": tx.id_tag,
        "userId": tx.user_id,
        "status": "Active" if tx.active else "Stopped",
        "meterStartWh": tx.meter_start_wh,
        "meterStopWh": tx.meter_stop_wh,
        "startedAt": format_utc(tx.started_at),
        "stoppedAt": format_utc(tx.stopped_at) if tx.stopped_at else None,
        "stopReason": tx.stop_reason,
        "appStopReason": tx.app_stop_reason,
        "closedBy": tx.closed_by.value if tx.closed_by is not None else None,
    }


def _reservation(r: Reservation) -> ReservationOut:
    return ReservationOut(
        reservationId=r.id,
        chargePointId=r.charge_point_id,
        connectorId=r.connector_id,
        idTag=r.id_tag,
        userId=r.user_id,
        status=r.status.value,
        expiryDate=format_utc(r.expiry),
        transactionId=r.transaction_id,
    )


def _profile(p: StoredChargingProfile) -> ChargingProfileOut:
    return ChargingProfileOut(
        chargePointId=p.charge_point_id,
        connectorId=p.connector_id,
        chargingProfileId=p.profile_id,
        purpose=p.purpose,
        stackLevel=p.stack_level,
        transactionId=p.transaction_id,
        setAt=format_utc(p.set_at),
        setBy=p.set_by,
        profile=dict(p.profile),
    )


def _need(service: _S | None, what: str) -> _S:
    if service is None:
        raise UnknownOperation(f"{what} are not available on this server")
    return service


def _failure(
    status: int, code: str, message: str, details: dict[str, Any] | None = None
) -> Response[dict[str, Any]]:
    error: dict[str, Any] = {"code": code, "message": message}
    if details:
        error["details"] = details
    body = {"success": False, "error": error}
    return Response(body, status_code=status, headers={"Cache-Control": "no-store"})


def _core_error(_: Request[Any, Any, Any], exc: ChargingApiError) -> Response[dict[str, Any]]:
    return _failure(status_of(exc), exc.code, exc.message, exc.details)


def _invalid(_: Request[Any, Any, Any], exc: ValidationException) -> Response[dict[str, Any]]:
    fields = exc.extra if isinstance(exc.extra, list) else []
    return _failure(
        422, "VALIDATION_ERROR", str(exc.detail), {"fields": fields} if fields else None
    )


def _http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    codes = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}
    return _failure(exc.status_code, codes.get(exc.status_code, "HTTP_ERROR"), str(exc.detail))


def _errors(*statuses: int) -> dict[int, ResponseSpec]:
    """The failure responses a route documents (each with the :class:`Failure` body)."""
    texts = {
        401: "No or a bad credential",
        403: "Not an admin",
        404: "Not found",
        409: "Conflict with the current state",
        422: "Invalid input",
        502: "CALLERROR from the charge point",
        504: "No answer in time",
    }
    return {
        status: ResponseSpec(Failure, description=texts[status])
        for status in (401, 403, 422, *statuses)
    }


def build_rest_app(
    config: RestConfig,
    deps: RestDependencies,
    extra_handlers: list[Any] | None = None,
) -> Litestar:
    """The ASGI app. ``extra_handlers`` are more Litestar route handlers (the action route)
    that use the ``principal`` dependency."""
    store = deps.store

    async def principal(request: Request[Any, Any, Any]) -> Principal:
        denied = check_admin(
            request.headers.get("Authorization") or "", config.stats_key, deps.verify_bearer
        )
        if isinstance(denied, ChargingApiError):
            raise denied
        return denied or API_KEY_PRINCIPAL

    async def charge_point_out(cp: ChargePoint) -> ChargePointOut:
        states = await store.connector_states(cp.id)
        seen = [s.updated_at for s in states if s.updated_at is not None]
        return ChargePointOut(
            chargePointId=cp.id,
            online=deps.is_online(cp.id),
            vendor=cp.info.vendor,
            model=cp.info.model,
            serialNumber=cp.info.serial_number,
            firmwareVersion=cp.info.firmware_version,
            registeredAt=format_utc(cp.registered_at) if cp.registered_at else None,
            lastSeen=format_utc(max(seen)) if seen else None,
            hasPassword=cp.password_hash is not None,
            connectors=[_connector(s) for s in states],
        )

    @get(
        "/api/charge-points", summary="Every charge point, with its connectors", responses=_errors()
    )
    async def list_charge_points(principal: Admin) -> list[ChargePointOut]:
        return [await charge_point_out(cp) for cp in await store.list_charge_points()]

    @get(
        "/api/charge-points/{charge_point_id:str}",
        summary="One charge point",
        responses=_errors(404),
    )
    async def get_charge_point(principal: Admin, charge_point_id: FromPath[str]) -> ChargePointOut:
        cp = await store.get_charge_point(charge_point_id)
        if cp is None:
            raise ChargePointNotFound(f"Charge point {charge_point_id} not found")
        return await charge_point_out(cp)

    @post(
        "/api/charge-points",
        summary="Register a charge point (or set its password)",
        responses=_errors(),
    )
    async def register_charge_point(
        principal: Admin, data: JSONBody[ChargePointIn]
    ) -> ChargePointOut:
        hashed = access.hash_password(data.password) if data.password else None
        await store.add_charge_point(data.chargePointId, hashed)
        cp = await store.get_charge_point(data.chargePointId)
        assert cp is not None
        return await charge_point_out(cp)

    @delete(
        "/api/charge-points/{charge_point_id:str}",
        summary="Forget a charge point (its transactions stay)",
        responses=_errors(404),
    )
    async def delete_charge_point(principal: Admin, charge_point_id: FromPath[str]) -> None:
        if not await store.delete_charge_point(charge_point_id):
            raise ChargePointNotFound(f"Charge point {charge_point_id} not found")

    @get("/api/id-tags", summary="Every id tag", responses=_errors())
    async def list_id_tags(
        principal: Admin, user_id: Annotated[str | None, QueryParameter(name="userId")] = None
    ) -> list[IdTagOut]:
        tags = await (store.id_tags_of(user_id) if user_id else store.all_id_tags())
        return [_tag(t) for t in tags]

    @post(
        "/api/id-tags",
        summary="Register an id tag (409 if it exists in any case)",
        responses=_errors(409),
    )
    async def create_id_tag(principal: Admin, data: JSONBody[IdTagIn]) -> IdTagOut:
        known = await store.get_id_tag(data.idTag)
        if known is not None:
            raise IdTagConflict(
                f"Id tag {data.idTag} is already registered as {known.tag} "
                "(id tags are case-insensitive)"
            )
        _check_parent(data.idTag, data.parentIdTag)
        tag = IdTag(data.idTag, data.userId, data.status, data.expiry, data.parentIdTag)
        await store.put_id_tag(tag)
        return _tag(tag)

    async def known_tag(id_tag: str) -> IdTag:
        tag = await store.get_id_tag(id_tag)
        if tag is None:
            raise IdTagNotFound(f"Id tag {id_tag} not found")
        return tag

    @get("/api/id-tags/{id_tag:str}", summary="One id tag (any case)", responses=_errors(404))
    async def get_id_tag(principal: Admin, id_tag: FromPath[str]) -> IdTagOut:
        return _tag(await known_tag(id_tag))

    @patch(
        "/api/id-tags/{id_tag:str}",
        summary="Change status, expiry, owner or parent id tag",
        responses=_errors(404),
    )
    async def change_id_tag(
        principal: Admin, id_tag: FromPath[str], data: JSONBody[IdTagChange]
    ) -> IdTagOut:
        tag = await known_tag(id_tag)
        given = data.model_fields_set
        tag = replace(
            tag,
            user_id=data.userId if "userId" in given else tag.user_id,
            status=data.status if data.status is not None else tag.status,
            expiry=data.expiry if "expiry" in given else tag.expiry,
            parent_id_tag=data.parentIdTag if "parentIdTag" in given else tag.parent_id_tag,
        )
        _check_parent(tag.tag, tag.parent_id_tag)
        await store.put_id_tag(tag)
        return _tag(tag)

    @delete(
        "/api/id-tags/{id_tag:str}", summary="Forget an id tag (any case)", responses=_errors(404)
    )
    async def delete_id_tag(principal: Admin, id_tag: FromPath[str]) -> None:
        if not await store.delete_id_tag(id_tag):
            raise IdTagNotFound(f"Id tag {id_tag} not found")

    @get(
        "/api/transactions",
        summary="Transactions, newest first, filtered and paged",
        responses=_errors(),
    )
    async def list_transactions(
        principal: Admin,
        user_id: Annotated[str | None, QueryParameter(name="userId")] = None,
        charge_point_id: Annotated[str | None, QueryParameter(name="chargePointId")] = None,
        started_from: Annotated[datetime | None, QueryParameter(name="from")] = None,
        started_before: Annotated[datetime | None, QueryParameter(name="to")] = None,
        status: Annotated[
            Literal["Active", "Stopped"] | None, QueryParameter(name="status")
        ] = None,
        limit: Annotated[int, QueryParameter(name="limit", ge=1, le=500)] = 50,
        offset: Annotated[int, QueryParameter(name="offset", ge=0, le=2**31)] = 0,
    ) -> TransactionPage:
        for at in (started_from, started_before):
            if at is not None and at.tzinfo is None:
                raise ValidationFailed("from/to need a time zone (e.g. 2026-01-01T00:00:00Z)")
        query = TransactionQuery(
            user_id=user_id,
            charge_point_id=charge_point_id,
            started_from=started_from,
            started_before=started_before,
            active=None if status is None else status == "Active",
            limit=limit,
            offset=offset,
        )
        found = await store.find_transactions(query)
        items = [TransactionOut(**_transaction_fields(tx)) for tx in found]
        return TransactionPage(items=items, limit=limit, offset=offset)

    @get(
        "/api/transactions/{transaction_id:int}",
        summary="One transaction with its samples",
        responses=_errors(404),
    )
    async def get_transaction(
        principal: Admin, transaction_id: TransactionIdPath
    ) -> TransactionDetail:
        tx = await store.get_transaction(transaction_id)
        if tx is None:
            raise TransactionNotFound(f"Transaction {transaction_id} not found")
        samples = [
            MeterSampleOut(
                timestamp=format_utc(s.sample.timestamp),
                connectorId=s.connector_id,
                energyImportKWh=s.sample.energy_import_kwh,
                powerKw=s.sample.power_kw,
                voltage=s.sample.voltage,
                current=s.sample.current,
                stateOfCharge=s.sample.state_of_charge,
            )
            for s in await store.meter_samples_of(transaction_id)
        ]
        return TransactionDetail(**_transaction_fields(tx), meterSamples=samples)

    @post(
        "/api/transactions/{transaction_id:int}/close",
        status_code=200,
        summary="Close an open transaction by hand (the charge point is not asked)",
        responses=_errors(404, 409),
    )
    async def close_transaction(
        principal: Admin, transaction_id: TransactionIdPath, data: JSONBody[CloseIn]
    ) -> TransactionOut:
        tx = await deps.service.close_transaction(principal, transaction_id, data.meterStopWh)
        return TransactionOut(**_transaction_fields(tx))

    operator = deps.operator

    @post(
        "/api/charge-points/{charge_point_id:str}/{action:str}",
        status_code=200,
        summary="Send an OCPP 1.6 operation; the body is its request payload as the spec names it",
        description=(
            "200 with the charge point's response payload; 404 unknown charge point, 409 offline "
            "or refused by a rule (TRANSACTION_RUNNING: add ?force=true), 422 invalid payload "
            "(details.schemaError), 502 CALLERROR (details.ocppErrorCode), 504 timeout."
        ),
        responses=_errors(404, 409, 502, 504),
    )
    async def run_action(
        principal: Admin,
        charge_point_id: FromPath[str],
        action: FromPath[ActionName],
        data: JSONBody[dict[str, Any]],
        force: Annotated[bool, QueryParameter(name="force")] = False,
    ) -> dict[str, Any]:
        if operator is None:
            raise UnknownOperation("Operations are not available on this server")
        if await store.get_charge_point(charge_point_id) is None:
            raise ChargePointNotFound(f"Charge point {charge_point_id} not found")
        return await operator.execute(
            principal, charge_point_id, ACTIONS[action], data, force=force
        )

    def need_operator() -> RunsOperations:
        if operator is None:
            raise UnknownOperation("Operations are not available on this server")
        return operator

    async def known_charge_point(charge_point_id: str) -> None:
        if await store.get_charge_point(charge_point_id) is None:
            raise ChargePointNotFound(f"Charge point {charge_point_id} not found")

    @get(
        "/api/charge-points/{charge_point_id:str}/configuration",
        summary="Configuration: reported values (GetConfiguration) and wanted values",
        responses=_errors(404),
    )
    async def get_configuration(
        principal: Admin, charge_point_id: FromPath[str]
    ) -> list[ConfigurationOut]:
        await known_charge_point(charge_point_id)
        entries = await need_operator().configuration_of(principal, charge_point_id)

        def at(value: datetime | None) -> str | None:
            return format_utc(value) if value else None

        return [
            ConfigurationOut(
                key=e.key,
                value=e.value,
                readonly=e.readonly,
                reportedAt=at(e.reported_at),
                wanted=e.wanted,
                appliedStatus=e.applied_status,
                appliedAt=at(e.applied_at),
            )
            for e in entries
        ]

    @put(
        "/api/charge-points/{charge_point_id:str}/configuration/{key:str}",
        status_code=204,
        summary="Declare the value a key should have (sent after every BootNotification)",
        responses=_errors(404),
    )
    async def want_configuration(
        principal: Admin,
        charge_point_id: FromPath[str],
        key: FromPath[str],
        data: JSONBody[WantedValue],
    ) -> None:
        await known_charge_point(charge_point_id)
        if not 1 <= len(key) <= 50:
            raise ValidationFailed("a configuration key has 1 to 50 characters")
        await need_operator().want_configuration(principal, charge_point_id, key, data.value)

    @get(
        "/api/charge-points/{charge_point_id:str}/status-history/{job:str}",
        summary="Firmware or diagnostics status history, newest first (the first is current)",
        responses=_errors(404),
    )
    async def device_statuses(
        principal: Admin,
        charge_point_id: FromPath[str],
        job: FromPath[DeviceJob],
        limit: Annotated[int, QueryParameter(name="limit", ge=1, le=1000)] = 50,
    ) -> list[DeviceStatusOut]:
        await known_charge_point(charge_point_id)
        found = await need_operator().device_statuses_of(principal, charge_point_id, job, limit)
        return [DeviceStatusOut(job=d.job, status=d.status, at=format_utc(d.at)) for d in found]

    @get("/api/operations", summary="The operations log, newest first", responses=_errors())
    async def operations_log(
        principal: Admin,
        charge_point_id: Annotated[str | None, QueryParameter(name="chargePointId")] = None,
        limit: Annotated[int, QueryParameter(name="limit", ge=1, le=1000)] = 100,
        before_id: Annotated[int | None, QueryParameter(name="beforeId", ge=1, le=2**62)] = None,
    ) -> list[OperationOut]:
        if operator is None:
            return []
        records = await operator.operations_log(
            principal, charge_point_id=charge_point_id, limit=limit, before_id=before_id
        )
        return [
            OperationOut(
                id=r.id,
                chargePointId=r.charge_point_id,
                action=r.action,
                requestedBy=r.requested_by,
                requestedAt=format_utc(r.requested_at),
                durationMs=r.duration_ms,
                request=dict(r.request),
                response=dict(r.response) if r.response is not None else None,
                errorCode=r.error_code,
            )
            for r in records
        ]

    # -------------------------------------------------------------- reservations, profiles

    @get(
        "/api/reservations",
        summary="Active reservations (the server's book), oldest first",
        responses=_errors(),
    )
    async def list_reservations(
        principal: Admin,
        charge_point_id: Annotated[str | None, QueryParameter(name="chargePointId")] = None,
    ) -> list[ReservationOut]:
        book = deps.reservations
        held = [] if book is None else await book.listed(principal)
        return [
            _reservation(r)
            for r in held
            if charge_point_id is None or r.charge_point_id == charge_point_id
        ]

    @post(
        "/api/reservations",
        summary="Reserve a connector for a registered id tag (ReserveNow)",
        description=(
            "201 with the active reservation; 404 unknown charge point, 409 offline, reserved "
            "for another tag (CONNECTOR_RESERVED) or refused by the charge point "
            "(CHARGE_POINT_REJECTED, details.status), 422 unregistered tag (NO_ID_TAG)."
        ),
        responses=_errors(404, 409, 502, 504),
    )
    async def create_reservation(principal: Admin, data: JSONBody[ReservationIn]) -> ReservationOut:
        book = _need(deps.reservations, "Reservations")
        await known_charge_point(data.chargePointId)
        made = await book.reserve(
            principal, data.chargePointId, data.connectorId, data.idTag, data.expiryMinutes
        )
        return _reservation(made)

    @delete(
        "/api/reservations/{reservation_id:int}",
        status_code=200,
        summary="Cancel a reservation (CancelReservation; the server stops honouring it anyway)",
        responses=_errors(404),
    )
    async def cancel_reservation(
        principal: Admin, reservation_id: TransactionIdPath
    ) -> CancelledReservation:
        book = _need(deps.reservations, "Reservations")
        ended, cp_status = await book.cancel(principal, reservation_id)
        return CancelledReservation(reservation=_reservation(ended), chargePointStatus=cp_status)

    @get(
        "/api/charging-profiles",
        summary="Charging profiles the server set and the charge points accepted",
        responses=_errors(),
    )
    async def list_charging_profiles(
        principal: Admin,
        charge_point_id: Annotated[str | None, QueryParameter(name="chargePointId")] = None,
    ) -> list[ChargingProfileOut]:
        if deps.profiles is None:
            return []
        return [_profile(p) for p in await deps.profiles.profiles(principal, charge_point_id)]

    # -------------------------------------------------------------- tariffs

    def sessions() -> SessionService:
        return _need(deps.sessions, "Tariffs and sessions")

    async def tariff_list(principal: Principal) -> TariffsOut:
        found = await sessions().tariffs(principal)
        return TariffsOut(
            tariffs=[TariffOut(**t) for t in found["tariffs"]],
            assignments=found["assignments"],
        )

    async def known_tariff(principal: Principal, tariff_id: str) -> TariffOut:
        for tariff in (await tariff_list(principal)).tariffs:
            if tariff.id == tariff_id:
                return tariff
        raise TariffNotFound(f"Tariff {tariff_id} not found", {"tariffId": tariff_id})

    @get("/api/tariffs", summary="Every tariff and the assignments", responses=_errors())
    async def list_tariffs(principal: Admin) -> TariffsOut:
        return await tariff_list(principal)

    @get("/api/tariffs/{tariff_id:str}", summary="One tariff", responses=_errors(404))
    async def get_tariff(principal: Admin, tariff_id: TariffIdPath) -> TariffOut:
        return await known_tariff(principal, tariff_id)

    @put(
        "/api/tariffs/{tariff_id:str}",
        status_code=200,
        summary="Create or replace a tariff (running and finished sessions keep theirs)",
        responses=_errors(),
    )
    async def put_tariff(
        principal: Admin, tariff_id: TariffIdPath, data: JSONBody[TariffIn]
    ) -> TariffOut:
        body = {**data.model_dump(mode="json", exclude_none=True), "id": tariff_id}
        tariff = await sessions().put_tariff(principal, body)
        return TariffOut(**tariff.to_json())

    @delete("/api/tariffs/{tariff_id:str}", summary="Forget a tariff", responses=_errors(404))
    async def delete_tariff(principal: Admin, tariff_id: TariffIdPath) -> None:
        await known_tariff(principal, tariff_id)
        await sessions().delete_tariff(principal, tariff_id)

    @put(
        "/api/tariff-assignments",
        status_code=200,
        summary="Assign a tariff to a charge point, a user or the default (tariffId null: unassign)",
        responses=_errors(404),
    )
    async def assign_tariff(principal: Admin, data: JSONBody[TariffAssignmentIn]) -> TariffsOut:
        if data.tariffId is not None:
            await known_tariff(principal, data.tariffId)
        await sessions().assign_tariff(principal, data.scope, data.tariffId)
        return await tariff_list(principal)

    # -------------------------------------------------------------- webhooks

    def webhooks() -> WebhookService:
        return _need(deps.webhooks, "Webhooks")

    @get("/api/webhooks", summary="Webhook endpoints (without their secrets)", responses=_errors())
    async def list_webhooks(principal: Admin) -> list[WebhookOut]:
        return [WebhookOut(**e) for e in await webhooks().endpoints(principal)]

    @post(
        "/api/webhooks",
        summary="Register a webhook endpoint (the same id replaces it)",
        responses=_errors(),
    )
    async def create_webhook(principal: Admin, data: JSONBody[WebhookIn]) -> WebhookOut:
        return WebhookOut(**await webhooks().put_endpoint(principal, data.model_dump()))

    @delete(
        "/api/webhooks/{endpoint_id:str}",
        summary="Forget a webhook endpoint (its queued events are dropped)",
        responses=_errors(404),
    )
    async def delete_webhook(principal: Admin, endpoint_id: FromPath[str]) -> None:
        hooks = webhooks()
        if not any(e["id"] == endpoint_id for e in await hooks.endpoints(principal)):
            raise WebhookNotFound(f"Webhook {endpoint_id} not found", {"id": endpoint_id})
        await hooks.delete_endpoint(principal, endpoint_id)

    @get(
        "/api/webhooks/deliveries",
        summary="The delivery log: every attempt, newest first",
        responses=_errors(),
    )
    async def webhook_deliveries(
        principal: Admin,
        limit: Annotated[int, QueryParameter(name="limit", ge=1, le=1000)] = 100,
    ) -> list[WebhookDeliveryOut]:
        found = await webhooks().deliveries(principal, limit)
        return [WebhookDeliveryOut(**d) for d in found]

    @post(
        "/api/webhooks/events/{event_id:str}/redeliver",
        status_code=202,
        summary="Queue a logged event again (same event id and body)",
        responses=_errors(404),
    )
    async def redeliver(principal: Admin, event_id: FromPath[str]) -> Redelivery:
        hooks = webhooks()
        logged = await hooks.deliveries(principal, 2**31)
        if not any(d["eventId"] == event_id for d in logged):
            raise WebhookEventNotFound(f"No delivered event {event_id}", {"eventId": event_id})
        await hooks.redeliver(principal, event_id)
        return Redelivery(eventId=event_id, queued=True)

    # -------------------------------------------------------------- receipts, history

    @get(
        "/api/transactions/{transaction_id:int}/receipt",
        summary="A finished session's receipt and the same as an OCPI 2.2.1 CDR",
        responses=_errors(404, 409),
    )
    async def get_receipt(principal: Admin, transaction_id: TransactionIdPath) -> ReceiptOut:
        return ReceiptOut(**await sessions().get_receipt(principal, transaction_id))

    @get(
        "/api/sessions",
        summary="Session history, newest first, with monthly totals; format=csv answers CSV",
        responses=_errors(),
        operation_class=CsvOrJson,
    )
    async def session_history(
        principal: Admin,
        user_id: Annotated[str | None, QueryParameter(name="userId")] = None,
        charge_point_id: Annotated[str | None, QueryParameter(name="chargePointId")] = None,
        since: Annotated[datetime | None, QueryParameter(name="from")] = None,
        until: Annotated[datetime | None, QueryParameter(name="to")] = None,
        limit: Annotated[int, QueryParameter(name="limit", ge=1, le=500)] = 50,
        offset: Annotated[int, QueryParameter(name="offset", ge=0, le=2**31)] = 0,
        format: Annotated[Literal["json", "csv"], QueryParameter(name="format")] = "json",
    ) -> Response[SessionHistory]:
        for at in (since, until):
            if at is not None and at.tzinfo is None:
                raise ValidationFailed("from/to need a time zone (e.g. 2026-01-01T00:00:00Z)")
        found = await sessions().history(
            principal,
            user_id=user_id,
            charge_point_id=charge_point_id,
            since=since,
            until=until,
            offset=offset,
            limit=limit,
        )
        if format == "csv":
            text = history_csv(found["sessions"])
            reply = Response(
                text,
                media_type="text/csv; charset=utf-8",
                headers={"Content-Disposition": 'attachment; filename="sessions.csv"'},
            )
            return cast("Response[SessionHistory]", reply)
        return Response(SessionHistory(**found))

    @get("/", include_in_schema=False, media_type=MediaType.HTML)
    async def console() -> Response[bytes]:
        """The operator console (docs/operators.md, "Console"): one file, no build step."""
        return Response(CONSOLE, media_type=MediaType.HTML, headers={"Cache-Control": "no-cache"})

    @get(
        "/api/asyncapi.json",
        summary="AsyncAPI 3 document of the app WebSocket (/ws); public, like this document",
        include_in_schema=False,  # a document about the API, like /api/openapi.json itself
    )
    async def asyncapi() -> dict[str, Any]:
        return dict(deps.asyncapi)

    @route(
        ["/health", "/api/stats", "/metrics"], http_method=["GET", "HEAD"], include_in_schema=False
    )
    async def plain(request: Request[Any, Any, Any]) -> Response[bytes]:
        reply = None
        if deps.plain_routes is not None:
            reply = await deps.plain_routes(request.method, request.url.path, request.headers)
        if reply is None:
            raise NotFoundException()
        status, headers, body = reply
        kept = {k: v for k, v in headers if k.lower() not in ("content-length", "content-type")}
        media = dict(headers).get("Content-Type", "application/json")
        return Response(body, status_code=status, headers=kept, media_type=media)

    handlers: list[Any] = [
        plain,
        console,
        list_charge_points,
        get_charge_point,
        register_charge_point,
        delete_charge_point,
        list_id_tags,
        create_id_tag,
        get_id_tag,
        change_id_tag,
        delete_id_tag,
        list_transactions,
        get_transaction,
        close_transaction,
        asyncapi,
        run_action,
        operations_log,
        get_configuration,
        want_configuration,
        device_statuses,
        list_reservations,
        create_reservation,
        cancel_reservation,
        list_charging_profiles,
        list_tariffs,
        get_tariff,
        put_tariff,
        delete_tariff,
        assign_tariff,
        list_webhooks,
        create_webhook,
        delete_webhook,
        webhook_deliveries,
        redeliver,
        get_receipt,
        session_history,
        *(extra_handlers or []),
    ]
    cors = (
        CORSConfig(
            allow_origins=list(config.allowed_origins),
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type"],
            max_age=600,
        )
        if config.allowed_origins
        else None
    )
    openapi = OpenAPIConfig(
        title="charging-api operator REST API",
        version=config.version,
        path="/api",
        render_plugins=[SwaggerRenderPlugin(path="/docs")],
        components=Components(
            security_schemes={
                "bearer": SecurityScheme(
                    type="http",
                    scheme="bearer",
                    description="An admin JWT, or the STATS_API_KEY",
                )
            }
        ),
        security=[{"bearer": []}],
    )
    exception_handlers: Mapping[Any, Callable[..., Any]] = {
        ChargingApiError: _core_error,
        ValidationException: _invalid,
        NotFoundException: _http_error,
        HTTPException: _http_error,
    }
    return Litestar(
        route_handlers=handlers,
        dependencies={"principal": Provide(principal)},
        exception_handlers=dict(exception_handlers),
        cors_config=cors,
        openapi_config=openapi,
        logging_config=None,  # the process's logging is charging_api.logs' (never reconfigured)
        debug=False,
    )
