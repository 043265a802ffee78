"""The app protocol without I/O: text in -> :class:`Request` or a ProtocolViolation;
replies, errors and pushes -> bytes out (UTF-8 JSON, sent as text frames).

Envelope: ``{id, type, timestamp, data, error}``. A reply carries its request's ``id``; a
successful reply has no ``error`` key (the seed's JavaScript client rejects any truthy error).
Pushes carry ``seq``, the recipient user's sequence number, for ``resume``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from itertools import count
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError

from charging_api.api.messages import REQUESTS
from charging_api.domain.events import (
    ConnectorStatusChanged,
    MeterValuesReceived,
    TransactionStarted,
    TransactionStopped,
)
from charging_api.domain.models import MeterSample, Transaction
from charging_api.errors import (
    ChargingApiError,
    InvalidMessage,
    ProtocolViolation,
    UnknownMessageType,
    ValidationFailed,
)
from charging_api.timefmt import format_utc, utc_now_text

MessageId = str | int

_error_ids = count(1)


@dataclass(frozen=True, slots=True)
class Request:
    id: MessageId
    type: str
    data: BaseModel
    response_type: str


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
    return Request(request_id, kind, data, response_type)


def request_id_of(message: dict[str, Any]) -> MessageId | None:
    """The message's ``id`` if it is one we can echo: a short string or an integer."""
    raw_id = message.get("id")
    if isinstance(raw_id, str) and 0 < len(raw_id) <= 128:
        return raw_id
    if isinstance(raw_id, int) and not isinstance(raw_id, bool):
        return raw_id
    return None


def encode_reply(request_id: MessageId, kind: str, data: dict[str, Any]) -> bytes:
    return orjson.dumps({"id": request_id, "type": kind, "timestamp": utc_now_text(), "data": data})


def encode_error(request_id: MessageId | None, error: ChargingApiError) -> bytes:
    """The seed's ``error`` message; it answers ``request_id`` when there is one."""
    rid: MessageId = request_id if request_id is not None else f"error-{next(_error_ids)}"
    return orjson.dumps(
        {"id": rid, "type": "error", "timestamp": utc_now_text(), "error": error.to_wire()}
    )


def encode_failure(
    request_id: MessageId, kind: str, error: ChargingApiError, extra: dict[str, Any] | None = None
) -> bytes:
    """A business failure: the ``*_response`` with success false, a message and the error."""
    data: dict[str, Any] = {"success": False, "message": error.message}
    if extra:
        data.update(extra)
    return orjson.dumps(
        {
            "id": request_id,
            "type": kind,
            "timestamp": utc_now_text(),
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


def encode_connection_push(kind: str, data: dict[str, Any]) -> bytes:
    """A push about the connection itself (``session_expiring``, ``server_shutdown``): seq 0,
    not numbered in the user's stream, never replayed by ``resume``."""
    return encode_push(kind, orjson.dumps(data), 0, utc_now_text())


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
    return data


def meter_update(event: MeterValuesReceived) -> dict[str, Any]:
    return {
        "chargePointId": event.charge_point_id,
        "connectorId": event.connector_id,
        "transactionId": event.transaction_id,
        "meterValue": sample_to_wire(event.sample),
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
