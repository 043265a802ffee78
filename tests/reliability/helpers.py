"""Shared pieces of the fault-injection tests: raw database reads, timestamps, app clients on
any URL (through a proxy), and the usual "user starts a charge" sequence."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import websockets

from tests.conftest import AppClient
from tests.peers.py_charge_point import LibraryChargePoint


def ocpp_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def ago(seconds: float) -> str:
    """An OCPP timestamp ``seconds`` in the past."""
    return ocpp_time(datetime.now(UTC) - timedelta(seconds=seconds))


def db_path(database_url: str) -> str:
    prefix = "sqlite:///"
    assert database_url.startswith(prefix), database_url
    return database_url[len(prefix) :]


def db_rows(database_url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Read what is on disk, with plain sqlite3 (not our store): what a crash would leave."""
    connection = sqlite3.connect(f"file:{db_path(database_url)}?mode=ro", uri=True, timeout=5)
    try:
        return connection.execute(sql, params).fetchall()
    finally:
        connection.close()


def transactions_in_db(database_url: str) -> list[tuple[Any, ...]]:
    """(id, charge_point_id, connector_id, user_id, meter_start_wh, meter_stop_wh, stopped?)"""
    return db_rows(
        database_url,
        "SELECT id, charge_point_id, connector_id, user_id, meter_start_wh, meter_stop_wh, "
        "stopped_at IS NOT NULL FROM transactions ORDER BY id",
    )


def energy_samples_in_db(database_url: str, transaction_id: int) -> list[float]:
    """The stored energy readings of a transaction, in time order."""
    rows = db_rows(
        database_url,
        "SELECT energy_import_kwh FROM meter_samples WHERE transaction_id = ? "
        "ORDER BY timestamp, id",
        (transaction_id,),
    )
    return [row[0] for row in rows]


@contextlib.asynccontextmanager
async def app_at(url: str, token: str | None = None, **kwargs: Any) -> AsyncIterator[AppClient]:
    """An authenticated app client on any URL (the server's, or a proxy's in front of it)."""
    ws = await websockets.connect(url, **kwargs)
    client = AppClient(ws)
    try:
        if token is not None:
            reply = await client.request("auth_request", {"token": token})
            assert reply["data"]["success"] is True, reply
        yield client
    finally:
        await client.close()


async def start_charge(
    app: AppClient,
    cp: LibraryChargePoint,
    cp_id: str,
    connector: int,
    tag: str,
    meter_start: int = 0,
    message_id: str | None = None,
) -> int:
    """The user asks, the charge point is asked and starts: the new transaction id."""
    request = asyncio.create_task(
        app.request(
            "start_charging_request",
            {"chargePointId": cp_id, "connectorId": connector},
            message_id=message_id,
        )
    )
    asked = await asyncio.wait_for(cp.remote_starts.get(), 10)
    assert asked == {"id_tag": tag, "connector_id": connector}
    started = await cp.start_tx(connector, tag, meter_start)
    reply = await request
    assert reply["data"]["success"] is True, reply
    assert reply["data"]["transactionId"] == started.transaction_id
    return int(started.transaction_id)


def energy(wh: int) -> list[dict[str, str]]:
    """One sampled value: the energy register in Wh."""
    return [{"value": str(wh), "measurand": "Energy.Active.Import.Register", "unit": "Wh"}]


async def drain_pushes(app: AppClient) -> list[dict[str, Any]]:
    """Every push that arrived before a heartbeat round trip (the reply is queued behind them)."""
    await app.request("heartbeat")
    pushes: list[dict[str, Any]] = []
    while not app.pushes.empty():
        pushes.append(app.pushes.get_nowait())
    return pushes


def summary(push: dict[str, Any]) -> tuple[Any, ...]:
    """(type, status or energy) of a push: enough to compare sequences of pushes."""
    data = push["data"]
    if push["type"] == "meter_values_update":
        return (push["type"], data["meterValue"]["energyImportKWh"])
    return (push["type"], data.get("status"))


async def meter_batch(
    cp: LibraryChargePoint, connector: int, transaction_id: int, first_wh: int, count: int
) -> int:
    """One MeterValues with ``count`` fresh samples (``count`` live pushes); the next Wh."""
    from ocpp.v16 import call

    stamp = ocpp_time(datetime.now(UTC))
    values = [{"timestamp": stamp, "sampled_value": energy(first_wh + i)} for i in range(count)]
    await cp.call(
        call.MeterValues(connector_id=connector, transaction_id=transaction_id, meter_value=values),
        suppress=False,
    )
    return first_wh + count
