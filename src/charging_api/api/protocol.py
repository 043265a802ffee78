"""The app protocol without I/O: text in -> :class:`Request` or a ProtocolViolation;
replies, errors and pushes -> bytes out (UTF-8 JSON, sent as text frames).

Envelope: ``{id, type, timestamp, data, error}``. A reply carries its request's ``id``; a
successful reply has no ``error`` key (the seed's JavaScript client rejects any truthy error).
Pushes carry ``seq``, the recipient user's sequence number, for ``resume``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from itertools import count
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError

from charging_api.api.messages import REQUESTS
from charging_api.domain.charging import StartOutcome, StopOutcome, UserState
from charging_api.domain.events import (
    ConnectorStatusChanged,
    DataTransferReceived,
    DeviceStatusChanged,
    MeterValuesReceived,
    ReservationChanged,
    SessionNotice,
    SessionUpdated,
    TransactionStarted,
    TransactionStopped,
)
from charging_api.domain.models import (
    ConfigurationEntry,
    ConnectorAvailability,
    ConnectorState,
    DeviceStatus,
    MeterSample,
    OperationRecord,
    Principal,
    Reservation,
    StoredChargingProfile,
    Transaction,
)
from charging_api.errors import (
    ChargingApiError,
    InvalidMessage,
    ProtocolViolation,
    UnknownMessageType,
    ValidationFailed,
)
from charging_api.timefmt import format_utc

MessageId = str | int

_error_ids = count(1)


@dataclass(frozen=True, slots=True)
class Request:
    id: MessageId
    type: str
    data: BaseModel
    response_type: str
    #: The envelope's ``timestamp`` as the client sent it (None when absent or not a short
    #: string); part of what makes a start "the same request" (see ``api/handlers.py``).
    timestamp: str | None = None


class BadRequest(Exception):
    """A ProtocolViolation together with the id of the request it answers."""

    def __init__(self, request_id: MessageId | None, error: ProtocolViolation) -> None:
        super().__init__(error.message)
        self.request_id = request_id
        self.error = error


def decode(text: str | bytes) -> Request:
    """Parse and validate one client frame; raises :class:`BadRequest`."""
    try:
        message = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise BadRequest(None, InvalidMessage("Message is not valid JSON")) from None
    if not isinstance(message, dict):
        raise BadRequest(None, InvalidMessage("Message must be a JSON object"))
    request_id = request_id_of(message)
    if request_id is None:
        raise BadRequest(None, InvalidMessage("Field id must be a non-empty string or a number"))
    kind = message.get("type")
    if not isinstance(kind, str):
        raise BadRequest(request_id, InvalidMessage("Field type must be a string"))
    spec = REQUESTS.get(kind)
    if spec is None:
        raise BadRequest(
            request_id,
            UnknownMessageType(f"Unknown message type: {kind[:64]}", {"type": kind[:64]}),
        )
    model, response_type = spec
    raw_data = message.get("data")
    if raw_data is None:
        raw_data = {}
    if not isinstance(raw_data, dict):
        raise BadRequest(request_id, ValidationFailed("Field data must be an object"))
    try:
        data = model.model_validate(raw_data)
    except ValidationError as exc:
        problems = [
            {"field": ".".join(str(p) for p in err["loc"]) or "data", "problem": err["msg"]}
            for err in exc.errors(include_url=False, include_input=False)
        ]
        first = problems[0]
        raise BadRequest(
            request_id,
            ValidationFailed(
                f"Invalid {kind}: {first['field']}: {first['problem']}", {"fields": problems}
            ),
        ) from None
    stamp = message.get("timestamp")
    timestamp = stamp if isinstance(stamp, str) and len(stamp) <= 64 else None
    return Request(request_id, kind, data, response_type, timestamp)


def request_id_of(message: dict[str, Any]) -> MessageId | None:
    """The message's ``id`` if it is one we can echo: a short string or an integer."""
    raw_id = message.get("id")
    if isinstance(raw_id, str) and 0 < len(raw_id) <= 128:
        return raw_id
    if isinstance(raw_id, int) and not isinstance(raw_id, bool):
        return raw_id
    return None


def wire_time(now: float) -> str:
    """Epoch seconds as the wire's timestamp text (``2024-01-15T10:30:00.000Z``)."""
    return datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def encode_reply(request_id: MessageId, kind: str, data: dict[str, Any], now: float) -> bytes:
    """A successful reply stamped ``now`` (epoch seconds)."""
    return orjson.dumps({"id": request_id, "type": kind, "timestamp": wire_time(now), "data": data})


def encode_error(request_id: MessageId | None, error: ChargingApiError, now: float) -> bytes:
    """The seed's ``error`` message; it answers ``request_id`` when there is one."""
    rid: MessageId = request_id if request_id is not None else f"error-{next(_error_ids)}"
    return orjson.dumps(
        {"id": rid, "type": "error", "timestamp": wire_time(now), "error": error.to_wire()}
    )


def encode_failure(
    request_id: MessageId,
    kind: str,
    error: ChargingApiError,
    now: float,
    extra: dict[str, Any] | None = None,
) -> bytes:
    """A business failure: the ``*_response`` with success false, a message and the error."""
    data: dict[str, Any] = {"success": False, "message": error.message}
    if extra:
        data.update(extra)
    return orjson.dumps(
        {
            "id": request_id,
            "type": kind,
            "timestamp": wire_time(now),
            "data": data,
            "error": error.to_wire(),
        }
    )


def push_parts(kind: str, data_json: bytes, timestamp: str) -> tuple[bytes, bytes, bytes]:
    """The parts of a push that every recipient shares: the frame for ``seq`` is
    ``head + seq + mid + seq + tail`` (the seq appears twice: in ``id`` and in ``seq``).

    An event goes to up to hundreds of streams (its owner and every admin watching); building
    the constant bytes once and splicing each recipient's seq in by concatenation costs a
    fraction of formatting the whole frame per recipient.
    """
    return (
        b'{"id":"evt-',
        b'","type":"%s","timestamp":"%s","seq":' % (kind.encode(), timestamp.encode()),
        b',"data":' + data_json + b"}",
    )


def encode_push(kind: str, data_json: bytes, seq: int, timestamp: str) -> bytes:
    """A push frame; ``data_json`` is serialised once per event and shared by recipients."""
    head, mid, tail = push_parts(kind, data_json, timestamp)
    number = b"%d" % seq
    return head + number + mid + number + tail


def encode_connection_push(kind: str, data: dict[str, Any], now: float) -> bytes:
    """A push about the connection itself (``session_expiring``, ``server_shutdown``): seq 0,
    not numbered in the user's stream, never replayed by ``resume``."""
    return encode_push(kind, orjson.dumps(data), 0, wire_time(now))


#: ``format_utc`` of meter sample times, remembered: charge points that sample on the clock
#: send the same instant, and equal datetimes (the same instant) always give the same text.
_sample_time = lru_cache(maxsize=4096)(format_utc)


def sample_to_wire(sample: MeterSample) -> dict[str, Any]:
    """The seed's ``meterValue`` object, plus ``phases`` when the charge point sent any."""
    wire: dict[str, Any] = {
        "energyImportKWh": sample.energy_import_kwh,
        "powerKw": sample.power_kw,
        "voltage": sample.voltage,
        "current": sample.current,
        "timestamp": _sample_time(sample.timestamp),
        "stateOfCharge": sample.state_of_charge,
    }
    if sample.phases:
        wire["phases"] = sample.phases
    return wire


def status_update(event: ConnectorStatusChanged) -> dict[str, Any]:
    data: dict[str, Any] = {
        "chargePointId": event.charge_point_id,
        "connectorId": event.connector_id,
        "status": event.status,
    }
    if event.transaction_id is not None:
        data["transactionId"] = event.transaction_id
    if event.error_code and event.error_code != "NoError":
        data["errorCode"] = event.error_code
    if event.info:
        data["info"] = event.info
    if event.vendor_error_code:
        data["vendorErrorCode"] = event.vendor_error_code
    return data


def meter_update(event: MeterValuesReceived) -> dict[str, Any]:
    data = {
        "chargePointId": event.charge_point_id,
        "connectorId": event.connector_id,
        "transactionId": event.transaction_id,
        "meterValue": sample_to_wire(event.sample),
    }
    if event.session is not None:
        data["session"] = event.session
    return data


def session_event(event: SessionNotice) -> dict[str, Any]:
    return {
        "event": event.kind,
        "chargePointId": event.charge_point_id,
        "connectorId": event.connector_id,
        "transactionId": event.transaction_id,
        "timestamp": format_utc(event.timestamp),
        **event.data,
    }


def session_update(event: SessionUpdated) -> dict[str, Any]:
    return {
        "chargePointId": event.charge_point_id,
        "connectorId": event.connector_id,
        "transactionId": event.transaction_id,
        "session": event.session,
    }


def transaction_update(event: TransactionStarted | TransactionStopped) -> dict[str, Any]:
    data: dict[str, Any] = {
        "chargePointId": event.charge_point_id,
        "connectorId": event.connector_id,
        "transactionId": event.transaction_id,
        "timestamp": format_utc(event.timestamp),
    }
    if isinstance(event, TransactionStarted):
        data.update(status="Started", meterStartWh=event.meter_start_wh)
    else:
        data.update(
            status="Stopped",
            meterStopWh=event.meter_stop_wh,
            energyKWh=event.energy_kwh,
            reason=event.reason,
            appReason=event.app_reason,
            closedBy=event.closed_by.value,
        )
    return data


def reservation_update(event: ReservationChanged) -> dict[str, Any]:
    data: dict[str, Any] = {
        "reservationId": event.reservation_id,
        "chargePointId": event.charge_point_id,
        "connectorId": event.connector_id,
        "idTag": event.id_tag,
        "status": event.status,
        "expiryDate": format_utc(event.expiry),
        "timestamp": format_utc(event.timestamp),
    }
    if event.transaction_id is not None:
        data["transactionId"] = event.transaction_id
    return data


def reservation_to_wire(r: Reservation) -> dict[str, Any]:
    data: dict[str, Any] = {
        "reservationId": r.id,
        "chargePointId": r.charge_point_id,
        "connectorId": r.connector_id,
        "idTag": r.id_tag,
        "userId": r.user_id,
        "status": r.status.value,
        "expiryDate": format_utc(r.expiry),
    }
    if r.transaction_id is not None:
        data["transactionId"] = r.transaction_id
    return data


def profile_to_wire(p: StoredChargingProfile) -> dict[str, Any]:
    return {
        "chargePointId": p.charge_point_id,
        "connectorId": p.connector_id,
        "chargingProfileId": p.profile_id,
        "purpose": p.purpose,
        "stackLevel": p.stack_level,
        "transactionId": p.transaction_id,
        "setBy": p.set_by,
        "setAt": format_utc(p.set_at),
        "csChargingProfiles": p.profile,
    }


def transaction_to_wire(tx: Transaction) -> dict[str, Any]:
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


def connector_to_wire(connector: ConnectorState) -> dict[str, Any]:
    return {
        "chargePointId": connector.charge_point_id,
        "connectorId": connector.connector_id,
        "status": connector.status,
        "errorCode": connector.error_code,
        "updatedAt": format_utc(connector.updated_at) if connector.updated_at else None,
    }


def start_reply(outcome: StartOutcome) -> dict[str, Any]:
    data: dict[str, Any] = {
        "success": True,
        "transactionId": outcome.transaction_id,
        "connectorId": outcome.connector_id,
        "status": outcome.status,
        "message": outcome.message,
    }
    if outcome.reservation_id is not None:
        data["reservationId"] = outcome.reservation_id
    return data


def stop_reply(outcome: StopOutcome) -> dict[str, Any]:
    return {
        "success": True,
        "transactionId": outcome.transaction_id,
        "status": outcome.status,
        "message": outcome.message,
    }


def close_reply(closed: Transaction) -> dict[str, Any]:
    return {
        "success": True,
        "transactionId": closed.id,
        "message": f"Transaction {closed.id} closed",
        "transaction": transaction_to_wire(closed),
    }


def resume_reply(replayed: int, current_seq: int) -> dict[str, Any]:
    return {"success": True, "replayed": replayed, "currentSeq": current_seq}


def watching_reply(watching: list[str] | str) -> dict[str, Any]:
    """``subscribe_response`` / ``unsubscribe_response`` data: what is watched now."""
    return {"success": True, "chargePointIds": watching}


def transactions_reply(transactions: list[Transaction]) -> dict[str, Any]:
    return {"transactions": [transaction_to_wire(tx) for tx in transactions]}


def meter_values_reply(transaction_id: int, samples: list[MeterSample]) -> dict[str, Any]:
    return {
        "transactionId": transaction_id,
        "meterValues": [sample_to_wire(sample) for sample in samples],
    }


def state_reply(seq: int, state: UserState) -> dict[str, Any]:
    return {
        "seq": seq,
        "transactions": [transaction_to_wire(tx) for tx in state.transactions],
        "connectors": [connector_to_wire(c) for c in state.connectors],
    }


def auth_reply(
    principal: Principal, session_id: str, expires_at: float, seq: int, epoch: str
) -> dict[str, Any]:
    """``auth_response`` data; ``expires_at`` in epoch seconds."""
    return {
        "success": True,
        "userId": principal.user_id,
        "sessionId": session_id,
        "expiresAt": wire_time(expires_at),
        "message": "Authentication successful",
        "role": principal.role.value,
        "seq": seq,
        "epoch": epoch,
    }


def session_expiring(session_id: str, expires_at: float, now: float) -> bytes:
    """The ``session_expiring`` push for one connection."""
    return encode_connection_push(
        "session_expiring",
        {
            "sessionId": session_id,
            "expiresAt": wire_time(expires_at),
            "message": "Send auth_request with a fresh token to keep this session",
        },
        now,
    )


def server_shutdown(now: float) -> bytes:
    return encode_connection_push(
        "server_shutdown", {"message": "Server is shutting down; reconnect and resume"}, now
    )


def operation_reply(charge_point_id: str, action: str, response: dict[str, Any]) -> dict[str, Any]:
    """``operation_response`` data: the charge point's answer payload as it sent it."""
    return {
        "success": True,
        "chargePointId": charge_point_id,
        "action": action,
        "response": response,
    }


def data_transfer_push(event: DataTransferReceived) -> dict[str, Any]:
    data: dict[str, Any] = {"chargePointId": event.charge_point_id, "vendorId": event.vendor_id}
    if event.message_id is not None:
        data["messageId"] = event.message_id
    if event.data is not None:
        data["data"] = event.data
    return data


def device_status_push(event: DeviceStatusChanged) -> dict[str, Any]:
    return {
        "chargePointId": event.charge_point_id,
        "job": event.job.value,
        "status": event.status,
        "timestamp": format_utc(event.timestamp),
    }


def _time(at: datetime | None) -> str | None:
    return None if at is None else format_utc(at)


def operation_to_wire(record: OperationRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "chargePointId": record.charge_point_id,
        "action": record.action,
        "requestedBy": record.requested_by,
        "requestedAt": format_utc(record.requested_at),
        "durationMs": record.duration_ms,
        "request": record.request,
        "response": record.response,
        "errorCode": record.error_code,
    }


def operations_reply(records: list[OperationRecord]) -> dict[str, Any]:
    return {"operations": [operation_to_wire(r) for r in records]}


def want_configuration_reply(charge_point_id: str, key: str, value: str | None) -> dict[str, Any]:
    return {"success": True, "chargePointId": charge_point_id, "key": key, "value": value}


def charge_point_details_reply(
    charge_point_id: str,
    configuration: list[ConfigurationEntry],
    availability: list[ConnectorAvailability],
    firmware: list[DeviceStatus],
    diagnostics: list[DeviceStatus],
) -> dict[str, Any]:
    """``charge_point_details`` data: stored configuration, wanted availability and the
    firmware/diagnostics histories (newest first)."""
    return {
        "chargePointId": charge_point_id,
        "configuration": [
            {
                "key": e.key,
                "value": e.value,
                "readonly": e.readonly,
                "reportedAt": _time(e.reported_at),
                "wanted": e.wanted,
                "appliedStatus": e.applied_status,
                "appliedAt": _time(e.applied_at),
            }
            for e in configuration
        ],
        "availability": [
            {
                "connectorId": a.connector_id,
                "wanted": a.wanted.value,
                "scheduled": a.scheduled,
                "updatedAt": format_utc(a.updated_at),
            }
            for a in availability
        ],
        "firmware": [{"status": s.status, "timestamp": format_utc(s.at)} for s in firmware],
        "diagnostics": [{"status": s.status, "timestamp": format_utc(s.at)} for s in diagnostics],
    }
