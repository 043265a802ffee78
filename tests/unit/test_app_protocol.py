"""api/protocol.py without sockets: what a frame decodes to, the exact bytes that go out."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from charging_api.api import messages as m
from charging_api.api import protocol
from charging_api.domain.events import (
    ConnectorStatusChanged,
    MeterValuesReceived,
    TransactionStarted,
    TransactionStopped,
)
from charging_api.domain.models import MeterSample, Transaction
from charging_api.errors import Forbidden, NotAuthenticated, RateLimited

WHEN = datetime(2024, 1, 15, 10, 30, tzinfo=UTC)
STAMP = re.compile(rb'"timestamp":"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"')


def frame(**envelope: Any) -> bytes:
    return orjson.dumps(envelope)


def decode_error(text: str | bytes) -> protocol.BadRequest:
    with pytest.raises(protocol.BadRequest) as caught:
        protocol.decode(text)
    return caught.value


def fixed_time(raw: bytes) -> bytes:
    """The frame with its (current-time) timestamp replaced, after checking its format."""
    assert STAMP.search(raw), raw
    return STAMP.sub(b'"timestamp":"T"', raw)


# ------------------------------------------------------------------------------ decode


@pytest.mark.parametrize(
    ("kind", "data", "model", "response"),
    [
        ("auth_request", {"token": "t", "userId": "u"}, m.AuthRequest, "auth_response"),
        (
            "start_charging_request",
            {"chargePointId": "CP", "connectorId": 1, "idTag": "T"},
            m.StartChargingRequest,
            "start_charging_response",
        ),
        (
            "stop_charging_request",
            {"transactionId": 7},
            m.StopChargingRequest,
            "stop_charging_response",
        ),
        ("heartbeat", None, m.HeartbeatRequest, "heartbeat"),
        ("resume", {"lastSeq": 0}, m.ResumeRequest, "resume_response"),
        ("get_state", {}, m.GetStateRequest, "state"),
        ("subscribe", {"chargePointIds": "*"}, m.SubscribeRequest, "subscribe_response"),
        ("unsubscribe", {"chargePointIds": ["CP"]}, m.UnsubscribeRequest, "unsubscribe_response"),
        ("get_transactions", {"limit": 5}, m.GetTransactionsRequest, "transactions"),
        ("get_meter_values", {"transactionId": 3}, m.GetMeterValuesRequest, "meter_values"),
        (
            "reserve_request",
            {"chargePointId": "CP", "connectorId": 1, "expiryMinutes": 15},
            m.ReserveRequest,
            "reserve_response",
        ),
        (
            "cancel_reservation_request",
            {"reservationId": 4},
            m.CancelReservationRequest,
            "cancel_reservation_response",
        ),
        (
            "set_power_limit_request",
            {"transactionId": 3, "limit": 7, "unit": "kW"},
            m.SetPowerLimitRequest,
            "set_power_limit_response",
        ),
        (
            "sync_local_list_request",
            {"chargePointId": "*"},
            m.SyncLocalListRequest,
            "sync_local_list_response",
        ),
    ],
)
def test_every_request_type_decodes_to_its_model(
    kind: str, data: dict[str, Any] | None, model: type, response: str
) -> None:
    """Each request type yields its data model and the type its reply will have."""
    request = protocol.decode(frame(id="m-1", type=kind, data=data))
    assert request.id == "m-1"
    assert request.type == kind
    assert isinstance(request.data, model)
    assert request.response_type == response


def test_numeric_ids_text_frames_and_binary_frames_decode_alike() -> None:
    """An integer id stays an integer; bytes and str frames decode the same."""
    text = '{"id": 18446744073709551615, "type": "heartbeat"}'
    assert protocol.decode(text).id == 2**64 - 1
    assert protocol.decode(text.encode()) == protocol.decode(text)


def test_unknown_data_fields_are_ignored() -> None:
    """Clients written for the seed may send extra fields."""
    request = protocol.decode(
        frame(id=1, type="stop_charging_request", data={"transactionId": 5, "extra": [1, 2]})
    )
    assert request.data == m.StopChargingRequest(transactionId=5)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "Message is not valid JSON"),
        (b"\xff\xfe", "Message is not valid JSON"),
        (b"[" * 5000, "Message is not valid JSON"),
        (b'["heartbeat"]', "Message must be a JSON object"),
        (b'"heartbeat"', "Message must be a JSON object"),
        (b'{"type": "heartbeat"}', "Field id must be a non-empty string or a number"),
        (b'{"id": "", "type": "heartbeat"}', "Field id must be a non-empty string or a number"),
        (b'{"id": true, "type": "heartbeat"}', "Field id must be a non-empty string or a number"),
        (b'{"id": 1.5, "type": "heartbeat"}', "Field id must be a non-empty string or a number"),
        (
            b'{"id": {"a": 1}, "type": "heartbeat"}',
            "Field id must be a non-empty string or a number",
        ),
        (
            b'{"id": "' + b"x" * 129 + b'", "type": "heartbeat"}',
            "Field id must be a non-empty string or a number",
        ),
    ],
)
def test_frames_without_a_usable_id_are_invalid_and_answer_no_id(raw: bytes, message: str) -> None:
    """Not JSON, not an object, or no usable id: INVALID_MESSAGE with no request id."""
    bad = decode_error(raw)
    assert bad.request_id is None
    assert bad.error.code == "INVALID_MESSAGE"
    assert bad.error.message == message


def test_an_id_of_128_characters_is_still_an_id() -> None:
    """The id limit is 128 characters inclusive."""
    assert protocol.decode(frame(id="x" * 128, type="heartbeat")).id == "x" * 128


@pytest.mark.parametrize(
    ("envelope", "code", "message"),
    [
        ({"type": 7}, "INVALID_MESSAGE", "Field type must be a string"),
        ({"type": None}, "INVALID_MESSAGE", "Field type must be a string"),
        ({"type": "teleport"}, "UNKNOWN_MESSAGE_TYPE", "Unknown message type: teleport"),
        ({"type": "heartbeat", "data": [1]}, "VALIDATION_ERROR", "Field data must be an object"),
        ({"type": "heartbeat", "data": "x"}, "VALIDATION_ERROR", "Field data must be an object"),
    ],
)
def test_envelope_problems_answer_with_the_request_id(
    envelope: dict[str, Any], code: str, message: str
) -> None:
    """Once the id is readable every problem carries it."""
    bad = decode_error(frame(id="r-9", **envelope))
    assert bad.request_id == "r-9"
    assert bad.error.code == code
    assert bad.error.message == message


def test_an_unknown_type_is_echoed_at_most_64_characters() -> None:
    """A huge type name is cut in the message and the details."""
    bad = decode_error(frame(id=1, type="t" * 10_000))
    assert bad.error.message == "Unknown message type: " + "t" * 64
    assert bad.error.details == {"type": "t" * 64}


@pytest.mark.parametrize(
    ("kind", "data", "field"),
    [
        ("start_charging_request", {"chargePointId": "CP", "connectorId": "1"}, "connectorId"),
        ("start_charging_request", {"chargePointId": "CP", "connectorId": 0}, "connectorId"),
        ("start_charging_request", {"chargePointId": "CP", "connectorId": True}, "connectorId"),
        ("start_charging_request", {"chargePointId": "", "connectorId": 1}, "chargePointId"),
        ("start_charging_request", {"chargePointId": "C" * 129, "connectorId": 1}, "chargePointId"),
        (
            "start_charging_request",
            {"chargePointId": "CP", "connectorId": 1, "idTag": "T" * 21},
            "idTag",
        ),
        ("start_charging_request", {"connectorId": 1}, "chargePointId"),
        ("stop_charging_request", {"transactionId": 1.0}, "transactionId"),
        ("stop_charging_request", {"transactionId": "1"}, "transactionId"),
        ("stop_charging_request", {"transactionId": 2**31}, "transactionId"),
        ("get_meter_values", {"transactionId": -(2**31) - 1}, "transactionId"),
        ("auth_request", {}, "token"),
        ("auth_request", {"token": 1}, "token"),
        ("auth_request", {"token": "t" * 8193}, "token"),
        ("resume", {"lastSeq": -1}, "lastSeq"),
        ("subscribe", {"chargePointIds": "all"}, "chargePointIds"),
        ("get_transactions", {"limit": 501}, "limit"),
        ("reserve_request", {"chargePointId": "CP", "connectorId": 0}, "connectorId"),
        (
            "reserve_request",
            {"chargePointId": "CP", "connectorId": 1, "expiryMinutes": 0},
            "expiryMinutes",
        ),
        ("cancel_reservation_request", {"reservationId": "4"}, "reservationId"),
        ("set_power_limit_request", {"transactionId": 3, "limit": 7, "unit": "W"}, "unit"),
        ("set_power_limit_request", {"transactionId": 3, "limit": 0, "unit": "A"}, "limit"),
        ("set_power_limit_request", {"transactionId": 3, "limit": "7", "unit": "A"}, "limit"),
        ("sync_local_list_request", {"chargePointId": "CP", "full": "yes"}, "full"),
    ],
)
def test_fields_are_validated_strictly(kind: str, data: dict[str, Any], field: str) -> None:
    """A wrong type, range or length is VALIDATION_ERROR naming the field; nothing is coerced."""
    bad = decode_error(frame(id="v-1", type=kind, data=data))
    assert bad.request_id == "v-1"
    assert bad.error.code == "VALIDATION_ERROR"
    assert bad.error.message.startswith(f"Invalid {kind}: {field}")
    fields = bad.error.details["fields"]
    assert fields[0]["field"].startswith(field)
    assert all(set(problem) == {"field", "problem"} for problem in fields)


# ------------------------------------------------------------------------------ encode

#: 2024-01-15T10:30:00.250Z as epoch seconds: encoders stamp the ``now`` they are given.
NOW = 1705314600.25


def test_a_reply_has_the_request_id_and_no_error_key() -> None:
    """Success: {id, type, timestamp, data}, in that order, and no ``error``; stamped ``now``."""
    raw = protocol.encode_reply("m-1", "heartbeat", {}, NOW)
    assert raw == (
        b'{"id":"m-1","type":"heartbeat","timestamp":"2024-01-15T10:30:00.250Z","data":{}}'
    )
    numeric = protocol.encode_reply(2**64 - 1, "state", {"seq": 3}, NOW)
    assert fixed_time(numeric) == (
        b'{"id":18446744073709551615,"type":"state","timestamp":"T","data":{"seq":3}}'
    )


def test_an_error_answers_its_request_or_gets_its_own_id() -> None:
    """``error`` carries the request id, or ``error-N`` when there was none."""
    raw = protocol.encode_error("x-1", NotAuthenticated(), NOW)
    assert fixed_time(raw) == (
        b'{"id":"x-1","type":"error","timestamp":"T","error":{"code":"NOT_AUTHENTICATED",'
        b'"message":"Client not authenticated","details":{"requiredAction":'
        b'"Send auth_request with valid JWT token"}}}'
    )
    first = orjson.loads(protocol.encode_error(None, RateLimited("slow down"), NOW))
    second = orjson.loads(protocol.encode_error(None, RateLimited("slow down"), NOW))
    assert re.fullmatch(r"error-\d+", first["id"])
    assert first["id"] != second["id"]
    assert first["error"] == {"code": "RATE_LIMITED", "message": "slow down"}


def test_a_failure_is_the_response_type_with_success_false_and_the_error() -> None:
    """Business failures keep the ``*_response`` type, add success/message and the error."""
    raw = protocol.encode_failure(
        "s-1",
        "stop_charging_response",
        Forbidden("Not yours", {"transactionId": 4}),
        NOW,
        {"transactionId": 4},
    )
    assert fixed_time(raw) == (
        b'{"id":"s-1","type":"stop_charging_response","timestamp":"T","data":'
        b'{"success":false,"message":"Not yours","transactionId":4},'
        b'"error":{"code":"FORBIDDEN","message":"Not yours","details":{"transactionId":4}}}'
    )


def test_a_push_frame_is_exact() -> None:
    """Pushes: evt-<seq> id, the type, the given timestamp, seq, then the shared data bytes."""
    raw = protocol.encode_push("meter_values_update", b'{"a":1}', 42, "2024-01-15T10:30:00.000Z")
    assert raw == (
        b'{"id":"evt-42","type":"meter_values_update","timestamp":"2024-01-15T10:30:00.000Z",'
        b'"seq":42,"data":{"a":1}}'
    )
    assert orjson.loads(raw)["data"] == {"a": 1}


def test_status_updates_name_transaction_and_error_only_when_there_are_some() -> None:
    """transactionId and errorCode appear only when set (NoError is left out)."""
    plain = ConnectorStatusChanged("CP", 1, "Available", "NoError", WHEN, None, None)
    assert protocol.status_update(plain) == {
        "chargePointId": "CP",
        "connectorId": 1,
        "status": "Available",
    }
    faulted = ConnectorStatusChanged("CP", 2, "Faulted", "GroundFailure", WHEN, 9, "alice")
    assert protocol.status_update(faulted) == {
        "chargePointId": "CP",
        "connectorId": 2,
        "status": "Faulted",
        "transactionId": 9,
        "errorCode": "GroundFailure",
    }


def test_status_updates_pass_on_the_charge_points_info_and_vendor_error_code() -> None:
    """info and vendorErrorCode appear as the charge point sent them, only when it did."""
    event = ConnectorStatusChanged(
        "CP", 1, "SuspendedEVSE", "OtherError", WHEN, 9, "alice", "Load shedding", "LS-7"
    )
    assert protocol.status_update(event) == {
        "chargePointId": "CP", "connectorId": 1, "status": "SuspendedEVSE", "transactionId": 9,
        "errorCode": "OtherError", "info": "Load shedding", "vendorErrorCode": "LS-7",
    }  # fmt: skip


def test_meter_updates_carry_the_seeds_meter_value() -> None:
    """kWh, kW, V, A, the sample's time and SoC; phases only when the charge point sent some."""
    sample = MeterSample(WHEN, 15.234, 7.5, 230.1, 32.6, 75.0)
    event = MeterValuesReceived("CP", 1, 9, "alice", sample)
    assert protocol.meter_update(event) == {
        "chargePointId": "CP",
        "connectorId": 1,
        "transactionId": 9,
        "meterValue": {
            "energyImportKWh": 15.234,
            "powerKw": 7.5,
            "voltage": 230.1,
            "current": 32.6,
            "timestamp": "2024-01-15T10:30:00.000Z",
            "stateOfCharge": 75.0,
        },
    }
    phased = MeterSample(WHEN, phases={"L1": {"voltage": 230.0}})
    assert protocol.sample_to_wire(phased)["phases"] == {"L1": {"voltage": 230.0}}
    assert "phases" not in protocol.sample_to_wire(MeterSample(WHEN))


def test_transaction_updates_for_start_and_stop() -> None:
    """Started carries meterStartWh; Stopped carries meterStopWh, energyKWh, the charge
    point's reason, the app's reason and who closed it."""
    started = TransactionStarted("CP", 1, 9, "alice", "TAG", 1500, WHEN)
    assert protocol.transaction_update(started) == {
        "chargePointId": "CP",
        "connectorId": 1,
        "transactionId": 9,
        "timestamp": "2024-01-15T10:30:00.000Z",
        "status": "Started",
        "meterStartWh": 1500,
    }
    stopped = TransactionStopped("CP", 1, 9, "alice", 8500, 7.0, "Remote", WHEN,
                                 app_reason="UserStop")  # fmt: skip
    assert protocol.transaction_update(stopped) == {
        "chargePointId": "CP",
        "connectorId": 1,
        "transactionId": 9,
        "timestamp": "2024-01-15T10:30:00.000Z",
        "status": "Stopped",
        "meterStopWh": 8500,
        "energyKWh": 7.0,
        "reason": "Remote",
        "appReason": "UserStop",
        "closedBy": "ChargePoint",
    }


def test_a_transaction_on_the_wire() -> None:
    """Active and stopped transactions as get_state/get_transactions list them."""
    active = Transaction(9, "CP", 1, "TAG", "alice", 1500, WHEN)
    assert protocol.transaction_to_wire(active) == {
        "transactionId": 9,
        "chargePointId": "CP",
        "connectorId": 1,
        "idTag": "TAG",
        "userId": "alice",
        "status": "Active",
        "meterStartWh": 1500,
        "startedAt": "2024-01-15T10:30:00.000Z",
        "stoppedAt": None,
        "meterStopWh": None,
        "stopReason": None,
        "appStopReason": None,
        "closedBy": None,
    }
    done = Transaction(
        9,
        "CP",
        1,
        "TAG",
        "alice",
        1500,
        WHEN,
        meter_stop_wh=8500,
        stopped_at=WHEN,
        stop_reason="Local",
    )
    wire = protocol.transaction_to_wire(done)
    assert (wire["status"], wire["meterStopWh"], wire["stoppedAt"], wire["stopReason"]) == (
        "Stopped",
        8500,
        "2024-01-15T10:30:00.000Z",
        "Local",
    )
