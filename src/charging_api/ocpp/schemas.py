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


@cache
def validator(name: str) -> Validator:
    """The compiled validator for schema ``name`` (``MeterValues``,
    ``RemoteStartTransactionResponse``, ...)."""
    raw = importlib.resources.files("ocpp.v16").joinpath("schemas", f"{name}.json").read_bytes()
    schema = orjson.loads(raw)
    schema.pop("$schema", None)
    _bound_integers(schema)
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


def validate(name: str, payload: dict[str, Any], unique_id: str) -> None:
    """Raise the FrameError to answer with when ``payload`` breaks schema ``name``."""
    try:
        validator(name)(payload)
    except fastjsonschema.JsonSchemaValueException as exc:
        code = _RULE_CODES.get(str(exc.rule), "FormationViolation")
        raise FrameError(code, f"{name}: {exc.message}"[:255], unique_id) from None
