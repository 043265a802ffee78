"""The MeterValues fast check (ocpp/schemas.py) may only accept what the compiled schema accepts."""

from __future__ import annotations

import copy
import random
from typing import Any

import fastjsonschema
import pytest

from charging_api.ocpp import schemas
from charging_api.ocpp.framing import FrameError

fast_check = schemas._FAST_ACCEPT["MeterValues"]
compiled = schemas.validator("MeterValues")


def valid_payload() -> dict[str, Any]:
    return {
        "connectorId": 1,
        "transactionId": 7,
        "meterValue": [
            {
                "timestamp": "2024-01-15T10:31:00.000Z",
                "sampledValue": [
                    {
                        "value": "1200",
                        "context": "Sample.Periodic",
                        "measurand": "Energy.Active.Import.Register",
                        "unit": "Wh",
                    },
                    {"value": "7400", "measurand": "Power.Active.Import", "unit": "W"},
                    {"value": "230.1", "measurand": "Voltage", "unit": "V", "phase": "L1-N"},
                    {"value": "55", "measurand": "SoC", "unit": "Percent", "location": "EV"},
                    {"value": "1", "format": "Raw"},
                ],
            }
        ],
    }


def schema_accepts(payload: Any) -> bool:
    try:
        compiled(payload)
    except fastjsonschema.JsonSchemaValueException:
        return False
    return True


ODD_VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    1.0,
    1.5,
    2**31,
    -(2**31) - 1,
    2**31 - 1,
    "",
    "x",
    "Wh",
    "wh",
    "L1",
    "Outlet",
    "2024-01-15T10:31:00Z",
    "2024-01-15 10:31:00",
    "yesterday",
    [],
    [{}],
    {},
    {"a": 1},
]


def odd(rng: random.Random) -> Any:
    return copy.deepcopy(rng.choice(ODD_VALUES))


def mutate(node: Any, rng: random.Random) -> Any:
    """One random change somewhere in the tree: a value replaced, a key added or removed."""
    if isinstance(node, dict) and node and rng.random() < 0.7:
        key = rng.choice(list(node))
        roll = rng.random()
        if roll < 0.15:
            del node[key]
        elif roll < 0.25:
            node[rng.choice(["extra", "value", "unit", "phase", "timestamp"])] = odd(rng)
        elif roll < 0.5:
            node[key] = odd(rng)
        else:
            node[key] = mutate(node[key], rng)
        return node
    if isinstance(node, list) and node and rng.random() < 0.7:
        index = rng.randrange(len(node))
        if rng.random() < 0.1:
            del node[index]
        else:
            node[index] = mutate(node[index], rng)
        return node
    return odd(rng)


def test_the_fast_check_accepts_a_typical_payload() -> None:
    """The usual MeterValues is accepted without the compiled validator."""
    assert fast_check(valid_payload())
    assert schema_accepts(valid_payload())


def test_the_fast_check_never_accepts_what_the_schema_refuses() -> None:
    """Random damage to a valid payload: whenever the fast check says yes, the schema agrees
    (a "no" only means the compiled validator decides)."""
    rng = random.Random(5)
    accepted = refused = 0
    for _ in range(4000):
        payload = valid_payload()
        for _ in range(rng.randint(1, 3)):
            payload = mutate(payload, rng)
        if fast_check(copy.deepcopy(payload)):
            assert schema_accepts(payload), payload
            accepted += 1
        elif not schema_accepts(payload):
            refused += 1
    assert accepted > 100 and refused > 1000  # both sides were exercised


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (
            lambda p: p["meterValue"][0]["sampledValue"][0].update(unit="Joule"),
            "PropertyConstraintViolation",
        ),
        (lambda p: p.update(connectorId=-1), "PropertyConstraintViolation"),
        (lambda p: p["meterValue"][0].pop("timestamp"), "ProtocolError"),
        (
            lambda p: p["meterValue"][0]["sampledValue"][1].update(value=7400),
            "TypeConstraintViolation",
        ),
        (lambda p: p.update(meterValue=[]), "OccurenceConstraintViolation"),
    ],
)
def test_bad_payloads_still_get_their_callerror(change: Any, code: str) -> None:
    """What the fast check does not accept still answers the schema's CALLERROR."""
    payload = valid_payload()
    change(payload)
    with pytest.raises(FrameError) as caught:
        schemas.validate("MeterValues", payload, "m-1")
    assert caught.value.code == code
