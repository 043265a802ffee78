"""OCPP-J framing and schema validation without I/O: exact frames in, exact CALLERRORs out."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from charging_api.ocpp import framing, schemas
from charging_api.ocpp.framing import Call, CallError, CallResult, FrameError


def error_frame(exc: FrameError) -> list[Any]:
    decoded: list[Any] = orjson.loads(exc.to_frame())
    return decoded


def parse_error(text: str | bytes) -> FrameError:
    with pytest.raises(FrameError) as caught:
        framing.parse(text)
    return caught.value


# ----------------------------------------------------------------------------- parse: good


def test_parse_call() -> None:
    """A well-formed CALL becomes a Call with its id, action and payload."""
    frame = framing.parse('[2,"19223201","BootNotification",{"chargePointVendor":"V"}]')
    assert frame == Call("19223201", "BootNotification", {"chargePointVendor": "V"})


def test_parse_call_from_bytes() -> None:
    """A CALL arriving as bytes (a binary frame) parses like text."""
    assert framing.parse(b'[2,"a","Heartbeat",{}]') == Call("a", "Heartbeat", {})


def test_parse_call_result() -> None:
    """A CALLRESULT becomes a CallResult."""
    assert framing.parse('[3,"x-1",{"status":"Accepted"}]') == CallResult(
        "x-1", {"status": "Accepted"}
    )


def test_parse_call_error_with_and_without_details() -> None:
    """A CALLERROR becomes a CallError; missing details read as {}."""
    assert framing.parse('[4,"x-1","NotSupported","no",{"a":1}]') == CallError(
        "x-1", "NotSupported", "no", {"a": 1}
    )
    assert framing.parse('[4,"x-2","GenericError",""]') == CallError("x-2", "GenericError", "", {})


def test_thirty_six_character_id_is_accepted() -> None:
    """A message id of exactly 36 characters (a UUID) is valid."""
    unique_id = "0" * 36
    assert framing.parse(f'[2,"{unique_id}","Heartbeat",{{}}]') == Call(unique_id, "Heartbeat", {})


# ----------------------------------------------------------------------------- parse: bad


def test_not_json_is_formation_violation_with_unknown_id() -> None:
    """Text that is not JSON answers [4,"-1","FormationViolation",...]."""
    exc = parse_error("{not json")
    assert exc.answer is True
    assert error_frame(exc) == [4, "-1", "FormationViolation", "Message is not valid JSON", {}]


def test_invalid_utf8_is_formation_violation() -> None:
    """Bytes that are not UTF-8 answer FormationViolation with id "-1"."""
    exc = parse_error(b'[2,"a","Heartbeat",{"x":"\xff"}]')
    assert error_frame(exc)[:3] == [4, "-1", "FormationViolation"]


@pytest.mark.parametrize("text", ['{"a":1}', "[]", '"text"', "42", "null"])
def test_not_an_array_is_formation_violation(text: str) -> None:
    """A JSON value that is not a non-empty array answers FormationViolation, id "-1"."""
    exc = parse_error(text)
    assert error_frame(exc) == [
        4,
        "-1",
        "FormationViolation",
        "Message must be a non-empty JSON array",
        {},
    ]


@pytest.mark.parametrize(
    "text",
    [
        '[2,5,"Heartbeat",{}]',
        '[2,null,"Heartbeat",{}]',
        '[2,"","Heartbeat",{}]',
        "[2]",
        '[2,"' + "x" * 37 + '","Heartbeat",{}]',
    ],
)
def test_unreadable_message_id_answers_minus_one(text: str) -> None:
    """A CALL whose id is not a string of 1..36 characters is answered with id "-1"."""
    exc = parse_error(text)
    assert exc.answer is True
    assert error_frame(exc) == [
        4,
        "-1",
        "FormationViolation",
        "Message id must be a string of 1 to 36 characters",
        {},
    ]


@pytest.mark.parametrize(
    ("text", "description"),
    [
        ('[2,"a","Heartbeat"]', "CALL must be [2, id, action, payload]"),
        ('[2,"a","Heartbeat",{},{}]', "CALL must be [2, id, action, payload]"),
        ('[2,"a",7,{}]', "CALL must be [2, id, action, payload]"),
        ('[2,"a","Heartbeat",[]]', "CALL payload must be an object"),
        ('[2,"a","Heartbeat","{}"]', "CALL payload must be an object"),
    ],
)
def test_wrong_call_shape_is_formation_violation_with_its_id(text: str, description: str) -> None:
    """A CALL of the wrong shape answers FormationViolation carrying the CALL's id."""
    assert error_frame(parse_error(text)) == [4, "a", "FormationViolation", description, {}]


@pytest.mark.parametrize(
    ("text", "description"),
    [
        ('[5,"a","Heartbeat",{}]', "Unknown message type id 5"),
        ('[0,"a"]', "Unknown message type id 0"),
        ('["2","a","Heartbeat",{}]', "Message type id must be an integer"),
        ('[2.0,"a","Heartbeat",{}]', "Message type id must be an integer"),
        ('[true,"a","Heartbeat",{}]', "Message type id must be an integer"),
    ],
)
def test_unknown_message_type_id_is_formation_violation(text: str, description: str) -> None:
    """A message type id other than the integers 2, 3, 4 answers FormationViolation."""
    exc = parse_error(text)
    assert exc.answer is True
    assert error_frame(exc) == [4, "a", "FormationViolation", description, {}]


@pytest.mark.parametrize(
    "text",
    [
        '[3,"a"]',
        '[3,"a",[]]',
        '[3,"a",{},{}]',
        "[3,5,{}]",
        "[3]",
        '[4,"a"]',
        '[4,"a",5,""]',
        '[4,null,"GenericError",""]',
        '[4,"a","GenericError","",{},1]',
    ],
)
def test_malformed_replies_are_never_answered(text: str) -> None:
    """A malformed CALLRESULT or CALLERROR raises FrameError with answer=False."""
    assert parse_error(text).answer is False


def test_error_description_is_cut_to_255_characters() -> None:
    """encode_error never sends a description over 255 characters."""
    decoded = orjson.loads(framing.encode_error("a", "GenericError", "x" * 1000))
    assert decoded == [4, "a", "GenericError", "x" * 255, {}]


# ----------------------------------------------------------------------------- encode


def test_encode_frames_exactly() -> None:
    """CALL, CALLRESULT and CALLERROR are encoded as the compact OCPP-J arrays."""
    assert framing.encode_call("1", "RemoteStopTransaction", {"transactionId": 5}) == (
        b'[2,"1","RemoteStopTransaction",{"transactionId":5}]'
    )
    assert framing.encode_result("1", {}) == b'[3,"1",{}]'
    assert framing.encode_error("1", "NotImplemented", "Unknown action X") == (
        b'[4,"1","NotImplemented","Unknown action X",{}]'
    )
    assert framing.encode_error("1", "GenericError", "d", {"k": "v"}) == (
        b'[4,"1","GenericError","d",{"k":"v"}]'
    )


def test_encode_then_parse_round_trips() -> None:
    """What we encode parses back to the same frame."""
    payload = {"connectorId": 1, "idTag": "T"}
    assert framing.parse(framing.encode_call("u", "RemoteStartTransaction", payload)) == Call(
        "u", "RemoteStartTransaction", payload
    )
    assert framing.parse(framing.encode_result("u", payload)) == CallResult("u", payload)
    assert framing.parse(framing.encode_error("u", "InternalError", "x")) == CallError(
        "u", "InternalError", "x", {}
    )


# ----------------------------------------------------------------------------- schemas


def validation_error(name: str, payload: dict[str, Any]) -> list[Any]:
    with pytest.raises(FrameError) as caught:
        schemas.validate(name, payload, "m-1")
    return error_frame(caught.value)


def test_valid_payloads_pass() -> None:
    """Payloads as the OCA schemas define them raise nothing."""
    schemas.validate("Heartbeat", {}, "m-1")
    schemas.validate(
        "StartTransaction",
        {"connectorId": 1, "idTag": "T", "meterStart": 0, "timestamp": "2024-01-15T10:30:00.000Z"},
        "m-1",
    )
    schemas.validate("RemoteStartTransactionResponse", {"status": "Accepted"}, "m-1")


def test_missing_required_is_protocol_error() -> None:
    """A required property missing answers ProtocolError with the CALL's id."""
    frame = validation_error("Authorize", {})
    assert frame[:3] == [4, "m-1", "ProtocolError"]
    assert "idTag" in frame[3]


def test_wrong_type_is_type_constraint_violation() -> None:
    """A property of the wrong JSON type answers TypeConstraintViolation."""
    frame = validation_error(
        "StatusNotification", {"connectorId": "1", "errorCode": "NoError", "status": "Available"}
    )
    assert frame[:3] == [4, "m-1", "TypeConstraintViolation"]
    assert "connectorId" in frame[3]


def test_too_long_string_is_type_constraint_violation() -> None:
    """A string over the schema's maxLength (idTag: 20) answers TypeConstraintViolation."""
    assert validation_error("Authorize", {"idTag": "x" * 21})[:3] == [
        4,
        "m-1",
        "TypeConstraintViolation",
    ]


def test_value_outside_enum_is_property_constraint_violation() -> None:
    """A value outside the schema's enum answers PropertyConstraintViolation."""
    frame = validation_error(
        "StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Sleeping"}
    )
    assert frame[:3] == [4, "m-1", "PropertyConstraintViolation"]


def test_bad_date_time_is_property_constraint_violation() -> None:
    """A timestamp that is not RFC 3339 answers PropertyConstraintViolation."""
    frame = validation_error(
        "StartTransaction",
        {"connectorId": 1, "idTag": "T", "meterStart": 0, "timestamp": "yesterday"},
    )
    assert frame[:3] == [4, "m-1", "PropertyConstraintViolation"]


def test_integer_beyond_32_bits_is_property_constraint_violation() -> None:
    """An integer outside OCPP's 32-bit range answers PropertyConstraintViolation."""
    frame = validation_error(
        "StatusNotification",
        {"connectorId": 18446744073709551615, "errorCode": "NoError", "status": "Available"},
    )
    assert frame[:3] == [4, "m-1", "PropertyConstraintViolation"]
    frame = validation_error(
        "StopTransaction",
        {"transactionId": 2**31, "meterStop": 0, "timestamp": "2024-01-15T10:30:00Z"},
    )
    assert frame[:3] == [4, "m-1", "PropertyConstraintViolation"]


def test_negative_connector_is_property_constraint_violation() -> None:
    """A negative connectorId answers PropertyConstraintViolation."""
    frame = validation_error(
        "StatusNotification", {"connectorId": -1, "errorCode": "NoError", "status": "Available"}
    )
    assert frame[:3] == [4, "m-1", "PropertyConstraintViolation"]


def test_too_few_items_is_occurence_constraint_violation() -> None:
    """An array under the schema's minItems answers OccurenceConstraintViolation."""
    frame = validation_error("MeterValues", {"connectorId": 1, "meterValue": []})
    assert frame[:3] == [4, "m-1", "OccurenceConstraintViolation"]


def test_unknown_property_is_formation_violation() -> None:
    """A property the schema does not allow answers FormationViolation."""
    frame = validation_error("Heartbeat", {"extra": 1})
    assert frame[:3] == [4, "m-1", "FormationViolation"]


def test_every_action_has_request_and_response_validators() -> None:
    """Each 1.6 action's request and response schemas compile (for NotSupported vs
    NotImplemented and for validating replies)."""
    assert {"BootNotification", "RemoteStartTransaction", "DataTransfer"} <= schemas.ALL_ACTIONS
    assert "BootNotificationResponse" not in schemas.ALL_ACTIONS
    for action in schemas.ALL_ACTIONS:
        assert callable(schemas.validator(action))
        assert callable(schemas.validator(f"{action}Response"))
