"""Rows <-> domain values, by column name (the names in ``tables.py``), for every dialect.

A row becomes a domain value through its column names, never its column positions, so a
column added to a table (and the field of the same name added to the value type) needs no
change here: a column without a field of that name fails loudly, at the first read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from charging_api.domain.models import (
    ChargePoint,
    ChargePointInfo,
    ClosedBy,
    ConnectorState,
    IdTag,
    IdTagStatus,
    MeterSample,
    OperationRecord,
    StoredMeterSample,
    Transaction,
    id_tag_key,
)

#: The meter readings of a sample: one column each, named as the MeterSample field.
METER_FIELDS = ("energy_import_kwh", "power_kw", "voltage", "current", "state_of_charge")

Values = Mapping[Any, Any]  # a RowMapping, or a dict made from a driver row


def transaction(values: Values) -> Transaction:
    closed_by = values["closed_by"]
    return Transaction(
        **{
            **values,
            "id_tag_status": IdTagStatus(values["id_tag_status"]),
            "closed_by": None if closed_by is None else ClosedBy(closed_by),
        }
    )


def id_tag(values: Values) -> IdTag:
    """``tag_key`` (derived from ``tag``) is not part of the value."""
    status = IdTagStatus(values["status"])
    return IdTag(values["tag"], values["user_id"], status, values["expiry"])


def connector_state(values: Values) -> ConnectorState:
    return ConnectorState(**values)


def charge_point(values: Values) -> ChargePoint:
    info = ChargePointInfo(
        values["vendor"], values["model"], values["serial_number"], values["firmware_version"]
    )
    return ChargePoint(values["id"], info, values["password_hash"], values["registered_at"])


def stored_meter_sample(values: Values) -> StoredMeterSample:
    sample = MeterSample(
        timestamp=values["timestamp"],
        phases=orjson.loads(values["phases"]),
        **{f: values[f] for f in METER_FIELDS},
    )
    return StoredMeterSample(
        values["charge_point_id"], values["connector_id"], values["transaction_id"], sample
    )


def meter_row(s: StoredMeterSample) -> dict[str, Any]:
    m = s.sample
    return {
        "transaction_id": s.transaction_id,
        "charge_point_id": s.charge_point_id,
        "connector_id": s.connector_id,
        "timestamp": m.timestamp,
        **{f: getattr(m, f) for f in METER_FIELDS},
        "phases": phases_text(m.phases),
    }


def phases_text(phases: dict[str, dict[str, float]]) -> str:
    return orjson.dumps(phases).decode() if phases else "{}"


def status_row(state: ConnectorState) -> dict[str, Any]:
    return {
        "charge_point_id": state.charge_point_id,
        "connector_id": state.connector_id,
        "status": state.status,
        "error_code": state.error_code,
        "updated_at": state.updated_at,
    }


def id_tag_row(tag: IdTag) -> dict[str, Any]:
    return {"tag": tag.tag, "user_id": tag.user_id, "status": str(tag.status),
            "expiry": tag.expiry, "tag_key": id_tag_key(tag.tag)}  # fmt: skip


def json_text(value: object) -> str:
    return orjson.dumps(value).decode()


def operation(values: Values) -> OperationRecord:
    response = values["response"]
    return OperationRecord(
        **{
            **values,
            "request": orjson.loads(values["request"]),
            "response": None if response is None else orjson.loads(response),
        }
    )
