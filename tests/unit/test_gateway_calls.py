"""The gateway's generic CALL: schema checks both ways, without a socket (the session's send
is a recorder)."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from charging_api.errors import ChargePointError, ChargePointTimeout, InvalidPayload
from charging_api.ocpp import framing
from charging_api.ocpp.gateway import OcppGateway, OcppSession


class Wire:
    def __init__(self) -> None:
        self.sent: asyncio.Queue[list[object]] = asyncio.Queue()

    async def send(self, frame: bytes) -> None:
        self.sent.put_nowait(orjson.loads(frame))


def connected(timeout: float = 5.0) -> tuple[OcppGateway, OcppSession, Wire]:
    gateway = OcppGateway(call_timeout=timeout)
    wire = Wire()
    session = OcppSession("CP1", wire.send)
    gateway.register(session)
    return gateway, session, wire


@pytest.mark.parametrize(
    ("action", "payload", "rule"),
    [
        ("Reset", {"type": "Sideways"}, "PropertyConstraintViolation"),
        ("Reset", {}, "ProtocolError"),
        ("UnlockConnector", {"connectorId": "1"}, "TypeConstraintViolation"),
        ("ChangeConfiguration", {"key": "K" * 51, "value": "1"}, "TypeConstraintViolation"),
        ("ClearCache", {"extra": 1}, "FormationViolation"),
        ("RemoteStopTransaction", {"transactionId": 2**31}, "PropertyConstraintViolation"),
        ("Rebootify", {}, "NotImplemented"),
    ],
)
async def test_a_request_breaking_its_schema_is_refused_before_sending(
    action: str, payload: dict[str, object], rule: str
) -> None:
    """INVALID_PAYLOAD names the schema error and the OCPP error; no frame leaves."""
    gateway, _, wire = connected()
    with pytest.raises(InvalidPayload) as refused:
        await gateway.call("CP1", action, payload)
    assert refused.value.details["ocppErrorCode"] == rule
    assert refused.value.details["schemaError"].startswith(action) or action == "Rebootify"
    assert wire.sent.empty()


async def test_a_valid_request_goes_out_and_its_answer_is_checked() -> None:
    """A valid CALL is sent as is; a valid answer comes back; an answer that breaks the
    response schema is CHARGE_POINT_ERROR."""
    gateway, session, wire = connected()
    call = asyncio.create_task(gateway.call("CP1", "Reset", {"type": "Soft"}))
    frame = await wire.sent.get()
    assert frame[2:] == ["Reset", {"type": "Soft"}]
    session.on_reply(framing.CallResult(str(frame[1]), {"status": "Accepted"}))
    assert await call == {"status": "Accepted"}

    bad = asyncio.create_task(gateway.call("CP1", "Reset", {"type": "Hard"}))
    frame = await wire.sent.get()
    session.on_reply(framing.CallResult(str(frame[1]), {"status": "Maybe"}))
    with pytest.raises(ChargePointError):
        await bad


async def test_the_call_timeout_bounds_the_wait() -> None:
    """No answer within the call time-out: CHARGE_POINT_TIMEOUT naming the action."""
    gateway, _, wire = connected(timeout=0.05)
    with pytest.raises(ChargePointTimeout) as late:
        await gateway.call("CP1", "ClearCache", {})
    assert late.value.details["action"] == "ClearCache"
    assert (await wire.sent.get())[2] == "ClearCache"
