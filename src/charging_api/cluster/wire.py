"""What crosses Redis between an api node and a gateway: principals, errors, results.

Every value is JSON. Results of the routed service calls are the core's frozen dataclasses
(``StartOutcome``, ``Transaction``, ``Reservation`` ...): :func:`encode` walks their fields
(datetimes as ISO 8601, enums as their value, frozensets as sorted lists, nested dataclasses
as objects) and :func:`decode` rebuilds them from the field types, so a new field of a model
needs no change here. Trade-off: only the field types the models use today are understood
(``int``, ``float``, ``str``, ``bool``, ``datetime``, ``Decimal``, ``StrEnum``s, ``frozenset[str]``, nested
dataclasses, each optionally ``| None``); anything else is a ``TypeError`` a test meets first.

Errors travel as the app protocol's ``{code, message, details}`` and come back as the same
:class:`~charging_api.errors.ChargingApiError` subclass (``errors.all_error_codes``); an
unknown code (a newer node) becomes ``InternalError`` with the code in its details.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import types
import typing
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

from charging_api.domain.models import Principal, Role
from charging_api.errors import ChargingApiError, InternalError, all_error_codes

T = TypeVar("T")


def encode(value: Any) -> Any:
    """A dataclass (or a plain JSON value) as JSON-ready data."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, frozenset | set):
        return sorted(value)
    if isinstance(value, list | tuple):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): encode(v) for k, v in value.items()}
    return value


def decode(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuild a dataclass :func:`encode` produced."""
    hints = _hints(typing.cast(type, cls))
    kwargs = {
        f.name: _decode_value(hints[f.name], data[f.name])
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if f.name in data
    }
    return cls(**kwargs)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _decode_value(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(options) != 1:
            raise TypeError(f"cannot decode a value of {hint}")
        return _decode_value(options[0], value)
    if origin is frozenset:
        return frozenset(value)
    if origin in (list, dict):
        return value  # JSON payloads (dict[str, Any]) and lists of plain values
    if hint is datetime:
        return datetime.fromisoformat(value)
    if hint is Decimal:
        return Decimal(value)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return hint(value)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return decode(hint, value)
    if hint in (int, float, str, bool) or hint is Any:
        return value
    raise TypeError(f"cannot decode a value of {hint}")


def principal_to_wire(principal: Principal) -> dict[str, Any]:
    return {
        "userId": principal.user_id,
        "role": principal.role.value,
        "idTags": sorted(principal.id_tags),
        "expiresAt": None if principal.expires_at is None else principal.expires_at.isoformat(),
    }


def principal_from_wire(data: dict[str, Any]) -> Principal:
    expires = data.get("expiresAt")
    return Principal(
        str(data["userId"]),
        Role(data.get("role", Role.USER.value)),
        frozenset(str(t) for t in data.get("idTags") or ()),
        None if expires is None else datetime.fromisoformat(expires),
    )


def error_to_wire(error: ChargingApiError) -> dict[str, Any]:
    return {"code": error.code, "message": error.message, "details": error.details}


def error_from_wire(data: dict[str, Any]) -> ChargingApiError:
    """The same subclass the gateway raised, with its message and details."""
    code = str(data.get("code", "INTERNAL_ERROR"))
    message = str(data.get("message", ""))
    details = dict(data.get("details") or {})
    cls = all_error_codes().get(code)
    if cls is None:
        return InternalError(message or "Unknown error from a gateway", {"code": code, **details})
    # Some subclasses take other constructor arguments (NotAuthenticated): build the instance
    # through the root's constructor so code, message and details are exactly the sender's.
    error = cls.__new__(cls)
    ChargingApiError.__init__(error, message, details)
    return error
