"""OCPP 1.6 payload validation with the OCA JSON schemas the ``ocpp`` library ships,
compiled once with fastjsonschema (a few µs per message instead of re-walking the schema).

Schema rule -> OCPP 1.6-J error code, as the spec's error table defines them:
``required`` -> ProtocolError (payload incomplete); ``type``/``maxLength`` ->
TypeConstraintViolation; ``enum``/``format``/``minimum``/... -> PropertyConstraintViolation;
``minItems``/``maxItems`` -> OccurenceConstraintViolation; ``additionalProperties`` and anything
else -> FormationViolation.

OCPP 1.6 defines ``integer`` as 32 bit, which the OCA schemas do not say: every integer gets
``minimum``/``maximum`` of a signed 32-bit value at compile time (and ``connectorId`` a minimum
of 0), so a hostile ``connectorId: 18446744073709551615`` is a PropertyConstraintViolation,
not a database overflow.

MeterValues, the message that arrives thousands of times a second, first goes through a
hand-written check built from the same schema (:func:`_meter_values_check`): plain set lookups,
a few µs less than the generated code, which compares a measurand with each of 22 enum values in
turn. It only ever *accepts*: anything it does not recognise as valid (a float connectorId, an
unknown key, a bad enum value ...) goes on to the compiled validator, which accepts or answers
the exact CALLERROR as before.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Callable
from functools import cache
from typing import Any

import fastjsonschema
import orjson

from charging_api.ocpp.framing import FrameError
from charging_api.ocpp.meter import parse_ocpp_datetime

_RULE_CODES = {
    "required": "ProtocolError",
    "type": "TypeConstraintViolation",
    "maxLength": "TypeConstraintViolation",
    "minLength": "TypeConstraintViolation",
    "enum": "PropertyConstraintViolation",
    "format": "PropertyConstraintViolation",
    "minimum": "PropertyConstraintViolation",
    "maximum": "PropertyConstraintViolation",
    "multipleOf": "PropertyConstraintViolation",
    "minItems": "OccurenceConstraintViolation",
    "maxItems": "OccurenceConstraintViolation",
}

Validator = Callable[[Any], Any]

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1

#: Every action OCPP 1.6 defines (for NotImplemented vs NotSupported).
ALL_ACTIONS = frozenset(
    entry.name.removesuffix(".json")
    for entry in importlib.resources.files("ocpp.v16").joinpath("schemas").iterdir()
    if entry.name.endswith(".json") and not entry.name.endswith("Response.json")
)


def _bound_integers(node: Any, name: str | None = None) -> None:
    """Give every ``integer`` of a schema the 32-bit range OCPP 1.6 defines (in place)."""
    if isinstance(node, dict):
        if node.get("type") == "integer":
            node.setdefault("minimum", 0 if name == "connectorId" else INT32_MIN)
            node.setdefault("maximum", INT32_MAX)
        for key, value in node.items():
            if key == "properties" and isinstance(value, dict):
                for prop, sub in value.items():
                    _bound_integers(sub, prop)
            else:
                _bound_integers(value)
    elif isinstance(node, list):
        for item in node:
            _bound_integers(item)


def _schema(name: str) -> dict[str, Any]:
    raw = importlib.resources.files("ocpp.v16").joinpath("schemas", f"{name}.json").read_bytes()
    schema: dict[str, Any] = orjson.loads(raw)
    schema.pop("$schema", None)
    _bound_integers(schema)
    return schema


@cache
def validator(name: str) -> Validator:
    """The compiled validator for schema ``name`` (``MeterValues``,
    ``RemoteStartTransactionResponse``, ...)."""
    schema = _schema(name)
    compiled: Validator = fastjsonschema.compile(
        schema, use_formats=True, formats={"date-time": _lenient_date_time}
    )
    return compiled


def _lenient_date_time(text: str) -> bool:
    """Accept what :func:`parse_ocpp_datetime` can read: real chargers send timestamps without
    a zone (taken as UTC) or with a space for ``T``; refusing them would refuse their
    StartTransaction for ever. What we send is always strict RFC 3339 UTC."""
    try:
        parse_ocpp_datetime(text)
    except ValueError:
        return False
    return True


def _meter_values_check() -> Callable[[Any], bool]:
    """True only for a MeterValues payload the schema accepts; False means "not sure".

    The keys, enums and bounds are read from the schema, so the check cannot drift from it.
    """
    schema = _schema("MeterValues")
    props = schema["properties"]
    meter_value = props["meterValue"]["items"]
    sampled = meter_value["properties"]["sampledValue"]["items"]
    payload_keys = frozenset(props)
    payload_required = frozenset(schema["required"])
    meter_value_keys = frozenset(meter_value["properties"])
    sampled_keys = frozenset(sampled["properties"])
    enums = {
        key: frozenset(spec["enum"])
        for key, spec in sampled["properties"].items()
        if spec.get("type") == "string" and "enum" in spec
    }
    assert meter_value_keys == frozenset(meter_value["required"]) == {"timestamp", "sampledValue"}
    assert frozenset(sampled["required"]) == {"value"} and {*enums, "value"} == sampled_keys
    connector_max = props["connectorId"]["maximum"]
    tx_min, tx_max = props["transactionId"]["minimum"], props["transactionId"]["maximum"]

    def check(payload: Any) -> bool:
        if type(payload) is not dict or not payload_required <= payload.keys() <= payload_keys:
            return False
        connector = payload["connectorId"]
        if type(connector) is not int or not 0 <= connector <= connector_max:
            return False
        if "transactionId" in payload:
            tx = payload["transactionId"]
            if type(tx) is not int or not tx_min <= tx <= tx_max:
                return False
        values = payload["meterValue"]
        if type(values) is not list or not values:
            return False
        for value in values:
            if type(value) is not dict or value.keys() != meter_value_keys:
                return False
            items, timestamp = value["sampledValue"], value["timestamp"]
            if type(items) is not list or not items or type(timestamp) is not str:
                return False
            if not _lenient_date_time(timestamp):
                return False
            for item in items:
                if type(item) is not dict or type(item.get("value")) is not str:
                    return False
                for key, member in item.items():
                    allowed = enums.get(key)
                    if allowed is None:
                        if key != "value":
                            return False  # not a SampledValue key
                    elif type(member) is not str or member not in allowed:
                        return False
        return True

    return check


#: Schema name -> a check that accepts only valid payloads, tried before the compiled validator.
_FAST_ACCEPT: dict[str, Callable[[Any], bool]] = {"MeterValues": _meter_values_check()}


def validate(name: str, payload: dict[str, Any], unique_id: str) -> None:
    """Raise the FrameError to answer with when ``payload`` breaks schema ``name``."""
    fast = _FAST_ACCEPT.get(name)
    if fast is not None and fast(payload):
        return
    try:
        validator(name)(payload)
    except fastjsonschema.JsonSchemaValueException as exc:
        code = _RULE_CODES.get(str(exc.rule), "FormationViolation")
        raise FrameError(code, f"{name}: {exc.message}"[:255], unique_id) from None
