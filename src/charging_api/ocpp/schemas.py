"""OCPP 1.6 payload validation with the OCA JSON schemas the ``ocpp`` library ships,
compiled once with fastjsonschema (a few µs per message instead of re-walking the schema).

Schema rule -> OCPP 1.6-J error code, as the spec's error table defines them:
``required`` -> ProtocolError (payload incomplete); ``type``/``maxLength`` ->
TypeConstraintViolation; ``enum``/``format``/``minimum``/... -> PropertyConstraintViolation;
``minItems``/``maxItems`` -> OccurenceConstraintViolation; ``additionalProperties`` and anything
else -> FormationViolation.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Callable
from functools import cache
from typing import Any

import fastjsonschema
import orjson

from charging_api.ocpp.framing import FrameError

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

#: Every action OCPP 1.6 defines (for NotImplemented vs NotSupported).
ALL_ACTIONS = frozenset(
    entry.name.removesuffix(".json")
    for entry in importlib.resources.files("ocpp.v16").joinpath("schemas").iterdir()
    if entry.name.endswith(".json") and not entry.name.endswith("Response.json")
)


@cache
def validator(name: str) -> Validator:
    """The compiled validator for schema ``name`` (e.g. ``MeterValues``, ``RemoteStartTransactionResponse``)."""
    raw = importlib.resources.files("ocpp.v16").joinpath("schemas", f"{name}.json").read_bytes()
    schema = orjson.loads(raw)
    schema.pop("$schema", None)
    compiled: Validator = fastjsonschema.compile(schema, use_formats=True)
    return compiled


def validate(name: str, payload: dict[str, Any], unique_id: str) -> None:
    """Raise the FrameError to answer with when ``payload`` breaks schema ``name``."""
    try:
        validator(name)(payload)
    except fastjsonschema.JsonSchemaValueException as exc:
        code = _RULE_CODES.get(str(exc.rule), "FormationViolation")
        raise FrameError(code, f"{name}: {exc.message}"[:255], unique_id) from None
