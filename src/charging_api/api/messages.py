"""Every app message's ``data``, as typed models, keyed by ``type``.

Requests are validated strictly (a connectorId of ``"1"`` is a VALIDATION_ERROR, not a guess);
unknown fields are ignored so that clients written for the seed keep working.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
)

Ident = Annotated[StrictStr, Field(min_length=1, max_length=128)]
IdTagText = Annotated[StrictStr, Field(min_length=1, max_length=20)]  # OCPP 1.6 IdToken: 20 chars
#: OCPP 1.6 transaction ids are JSON integers that fit 32 bits; bigger ones cannot exist here
#: (and would overflow the database's INTEGER into an INTERNAL_ERROR).
TransactionId = Annotated[StrictInt, Field(ge=-(2**31), le=2**31 - 1)]


class _Data(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class AuthRequest(_Data):
    token: Annotated[StrictStr, Field(min_length=1, max_length=8192)]
    userId: Ident | None = None
    #: Ask for ``session_event`` and ``session_update`` pushes (docs/sessions.md); kept for
    #: the user's stream until an auth_request says false.
    sessionEvents: StrictBool | None = None


Positive = Annotated[StrictFloat | StrictInt, Field(gt=0)]


class LimitsData(_Data):
    """A session's limits: the first one reached stops the charge (docs/sessions.md)."""

    energyKWh: Annotated[Positive, Field(le=10_000)] | None = None
    soc: Annotated[Positive, Field(le=100)] | None = None
    cost: Annotated[Positive, Field(le=1_000_000)] | None = None
    durationMinutes: Annotated[Positive, Field(le=10_080)] | None = None


class StartChargingRequest(_Data):
    chargePointId: Ident
    connectorId: Annotated[StrictInt, Field(ge=1, le=255)]
    idTag: IdTagText | None = None
    userId: Ident | None = None
    limits: LimitsData | None = None


class SetLimitsRequest(_Data):
    transactionId: TransactionId
    limits: LimitsData


class GetReceiptRequest(_Data):
    transactionId: TransactionId


class GetHistoryRequest(_Data):
    userId: Ident | None = None  # admins: someone else's (absent: everyone's)
    chargePointId: Ident | None = None
    since: AwareDatetime | None = None
    until: AwareDatetime | None = None
    offset: Annotated[StrictInt, Field(ge=0)] = 0
    limit: Annotated[StrictInt, Field(ge=1, le=500)] = 50
    format: Literal["json", "csv"] = "json"


class TariffsRequest(_Data):
    """Admins: ``list``, ``put`` (``tariff``), ``delete`` (``tariffId``), ``assign``
    (``scope`` default | chargePoint:<id> | group:<name> | user:<id>, ``tariffId``; absent:
    unassign)."""

    action: Literal["list", "put", "delete", "assign"] = "list"
    tariff: dict[str, Any] | None = None
    tariffId: Ident | None = None
    scope: Ident | None = None


class StopChargingRequest(_Data):
    transactionId: TransactionId
    chargePointId: Ident | None = None
    userId: Ident | None = None
    reason: Annotated[StrictStr, Field(max_length=64)] | None = None


class HeartbeatRequest(_Data):
    pass


class ResumeRequest(_Data):
    lastSeq: Annotated[StrictInt, Field(ge=0)]
    epoch: Annotated[StrictStr, Field(max_length=64)] | None = None


class GetStateRequest(_Data):
    pass


class SubscribeRequest(_Data):
    chargePointIds: list[Ident] | Literal["*"]


class UnsubscribeRequest(_Data):
    chargePointIds: list[Ident] | Literal["*"] = "*"


class GetTransactionsRequest(_Data):
    limit: Annotated[StrictInt, Field(ge=1, le=500)] | None = None


class GetMeterValuesRequest(_Data):
    transactionId: TransactionId


class CloseTransactionRequest(_Data):
    """Admins: close a transaction the charge point forgot, without asking it."""

    transactionId: TransactionId
    meterStopWh: Annotated[StrictInt, Field(ge=0, le=2**63 - 1)] | None = None


class OperationRequest(_Data):
    """Admins: one OCPP 1.6 central-system operation (``action`` as OCPP names it, e.g.
    ``Reset``) with its request payload exactly as the spec names it; the payload itself is
    checked by the OCPP schema of the action (INVALID_PAYLOAD), not here."""

    chargePointId: Ident
    action: Annotated[StrictStr, Field(min_length=1, max_length=64)]
    payload: dict[str, Any] = Field(default_factory=dict)
    force: StrictBool = False


class WantConfigurationRequest(_Data):
    """Admins: declare the value a configuration key should have on a charge point (sent
    after every BootNotification); ``value`` null withdraws it."""

    chargePointId: Ident
    key: Annotated[StrictStr, Field(min_length=1, max_length=50)]  # CiString50
    value: Annotated[StrictStr, Field(max_length=500)] | None  # CiString500


class GetChargePointDetailsRequest(_Data):
    """Admins: what the core keeps about one charge point's operations."""

    chargePointId: Ident


class GetOperationsRequest(_Data):
    """Admins: the operations log, newest first; ``beforeId`` pages back."""

    chargePointId: Ident | None = None
    limit: Annotated[StrictInt, Field(ge=1, le=500)] = 100
    beforeId: Annotated[StrictInt, Field(ge=1)] | None = None


class ReserveRequest(_Data):
    """Reserve a connector for one's own id tag (admins: any registered tag)."""

    chargePointId: Ident
    connectorId: Annotated[StrictInt, Field(ge=1, le=255)]
    idTag: IdTagText | None = None
    expiryMinutes: Annotated[StrictInt, Field(ge=1, le=7 * 24 * 60)] | None = None


class CancelReservationRequest(_Data):
    reservationId: TransactionId


class SetPowerLimitRequest(_Data):
    """Limit the power of one's own open session (a TxProfile)."""

    transactionId: TransactionId
    limit: Annotated[float, Field(gt=0, le=1000, allow_inf_nan=False, strict=True)]
    unit: Literal["kW", "A"]


class SyncLocalListRequest(_Data):
    """Admins: send one charge point (or ``"*"``: every connected one) its local list."""

    chargePointId: Ident
    full: StrictBool = False


class WebhooksRequest(_Data):
    """Admins: ``list``, ``put`` (``endpoint`` {id, url, secret, events}), ``delete``
    (``endpointId``), ``redeliver`` (``eventId``); the reply lists endpoints, pending events
    and the newest ``limit`` deliveries."""

    action: Literal["list", "put", "delete", "redeliver"] = "list"
    endpoint: dict[str, Any] | None = None
    endpointId: Ident | None = None
    eventId: Ident | None = None
    limit: Annotated[StrictInt, Field(ge=1, le=1000)] = 100


#: request type -> (data model, response type). Requests with no ``*_response`` twin answer
#: with the type given here.
REQUESTS: dict[str, tuple[type[_Data], str]] = {
    "auth_request": (AuthRequest, "auth_response"),
    "start_charging_request": (StartChargingRequest, "start_charging_response"),
    "stop_charging_request": (StopChargingRequest, "stop_charging_response"),
    "heartbeat": (HeartbeatRequest, "heartbeat"),
    "resume": (ResumeRequest, "resume_response"),
    "get_state": (GetStateRequest, "state"),
    "subscribe": (SubscribeRequest, "subscribe_response"),
    "unsubscribe": (UnsubscribeRequest, "unsubscribe_response"),
    "get_transactions": (GetTransactionsRequest, "transactions"),
    "get_meter_values": (GetMeterValuesRequest, "meter_values"),
    "close_transaction_request": (CloseTransactionRequest, "close_transaction_response"),
    "operation_request": (OperationRequest, "operation_response"),
    "want_configuration_request": (WantConfigurationRequest, "want_configuration_response"),
    "get_charge_point_details": (GetChargePointDetailsRequest, "charge_point_details"),
    "get_operations": (GetOperationsRequest, "operations"),
    "reserve_request": (ReserveRequest, "reserve_response"),
    "cancel_reservation_request": (CancelReservationRequest, "cancel_reservation_response"),
    "set_power_limit_request": (SetPowerLimitRequest, "set_power_limit_response"),
    "sync_local_list_request": (SyncLocalListRequest, "sync_local_list_response"),
    "set_limits_request": (SetLimitsRequest, "set_limits_response"),
    "get_receipt": (GetReceiptRequest, "receipt"),
    "get_history": (GetHistoryRequest, "history"),
    "tariffs_request": (TariffsRequest, "tariffs_response"),
    "webhooks_request": (WebhooksRequest, "webhooks_response"),
}

#: Pushes the server sends on its own.
PUSH_TYPES = frozenset(
    {
        "charging_status_update",
        "meter_values_update",
        "transaction_update",
        "data_transfer_received",
        "device_status_update",
        "session_expiring",
        "server_shutdown",
        "reservation_update",
        "session_event",
        "session_update",
    }
)
