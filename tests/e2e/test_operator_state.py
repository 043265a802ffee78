"""Reservations, power limits and local lists end to end: the real server on loopback, app
clients over WebSocket, and two kinds of charge point: the project's simulator (it honours
reservations and lowers its power under a profile) and a charge point written with the PyPI
``ocpp`` library (its schema validation on, both ways). Reservations across a restart of a
real ``charging-api serve`` process."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import websockets
from ocpp.routing import on
from ocpp.v16 import call, call_result
from ocpp.v16.enums import Action
from websockets.typing import Subprotocol

from charging_api.domain.models import IdTag, IdTagStatus, Principal, Role, ocpp_datetime
from charging_api.simulator import SimulatedChargePoint, run_charge_point
from tests.conftest import AppClient, RunningServer, app_client, make_settings, running_server
from tests.peers.py_charge_point import LibraryChargePoint, now_text
from tests.reliability.helpers import app_at
from tests.serverproc import ServerProcess

WAIT = 10.0


class OperatedChargePoint(LibraryChargePoint):
    """The library charge point, also answering the operations this file sends (Accepted)
    and recording each request (as the library parsed and validated it)."""

    def __init__(self, cp_id: str, connection: Any) -> None:
        super().__init__(cp_id, connection)
        self.asked: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()

    async def next(self, action: str) -> dict[str, Any]:
        got, payload = await asyncio.wait_for(self.asked.get(), WAIT)
        assert got == action, (got, payload)
        return payload

    @on(Action.reserve_now)  # type: ignore[untyped-decorator]
    async def on_reserve_now(self, **payload: Any) -> Any:
        self.asked.put_nowait(("ReserveNow", payload))
        return call_result.ReserveNow(status="Accepted")

    @on(Action.cancel_reservation)  # type: ignore[untyped-decorator]
    async def on_cancel_reservation(self, **payload: Any) -> Any:
        self.asked.put_nowait(("CancelReservation", payload))
        return call_result.CancelReservation(status="Accepted")

    @on(Action.send_local_list)  # type: ignore[untyped-decorator]
    async def on_send_local_list(self, **payload: Any) -> Any:
        self.asked.put_nowait(("SendLocalList", payload))
        return call_result.SendLocalList(status="Accepted")

    @on(Action.set_charging_profile)  # type: ignore[untyped-decorator]
    async def on_set_charging_profile(self, **payload: Any) -> Any:
        self.asked.put_nowait(("SetChargingProfile", payload))
        return call_result.SetChargingProfile(status="Accepted")

    @on(Action.clear_charging_profile)  # type: ignore[untyped-decorator]
    async def on_clear_charging_profile(self, **payload: Any) -> Any:
        self.asked.put_nowait(("ClearChargingProfile", payload))
        return call_result.ClearChargingProfile(status="Accepted")


@contextlib.asynccontextmanager
async def operated_charge_point(ocpp_url: str, cp_id: str) -> AsyncIterator[OperatedChargePoint]:
    async with websockets.connect(
        f"{ocpp_url}/{cp_id}", subprotocols=[Subprotocol("ocpp1.6")]
    ) as ws:
        cp = OperatedChargePoint(cp_id, ws)
        reader = asyncio.create_task(cp.start())
        try:
            await cp.boot()
            await cp.status(1, "Available")
            yield cp
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
                await reader


@contextlib.asynccontextmanager
async def simulated(server: RunningServer, cp_id: str) -> AsyncIterator[SimulatedChargePoint]:
    """The project's simulator connected and booted; stopped and reaped after."""
    stop = asyncio.Event()
    connected: asyncio.Future[SimulatedChargePoint] = asyncio.get_running_loop().create_future()

    def on_connect(cp: SimulatedChargePoint) -> None:
        if not connected.done():
            connected.set_result(cp)

    runner = asyncio.create_task(
        run_charge_point(
            server.ocpp_url,
            cp_id,
            meter_interval=0.3,
            reconnect=False,
            stop=stop,
            on_connect=on_connect,
        )
    )
    try:
        cp = await asyncio.wait_for(asyncio.shield(connected), WAIT)
        await asyncio.wait_for(cp.booted.wait(), WAIT)
        yield cp
    finally:
        stop.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(runner, WAIT)
        if not runner.done():
            runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner


async def reserve(app: AppClient, cp_id: str, **extra: Any) -> dict[str, Any]:
    reply = await app.request(
        "reserve_request", {"chargePointId": cp_id, "connectorId": 1, **extra}
    )
    assert reply["type"] == "reserve_response"
    return reply


async def test_simulator_reservation_start_power_limit_and_clear(tmp_path: Path) -> None:
    """On the simulator: Alice reserves, Bob's start is CONNECTOR_RESERVED, Alice's start
    uses the reservation; her kW limit lowers the simulator's power; the session's end
    clears the profile."""
    cp_id = "SIM-RES"
    async with (
        running_server(make_settings(tmp_path)) as server,
        simulated(server, cp_id),
        app_client(server, server.token("alice", id_tag="TAG-A")) as alice,
        app_client(server, server.token("bob", id_tag="TAG-B")) as bob,
    ):
        made = await reserve(alice, cp_id, expiryMinutes=10)
        assert made["data"]["success"] is True, made
        reservation_id = made["data"]["reservation"]["reservationId"]
        pushed = await alice.push("reservation_update")
        assert (pushed["data"]["reservationId"], pushed["data"]["status"]) == (
            reservation_id,
            "Active",
        )
        refused = await bob.request(
            "start_charging_request", {"chargePointId": cp_id, "connectorId": 1}
        )
        assert refused["data"]["success"] is False
        assert refused["error"]["code"] == "CONNECTOR_RESERVED"

        started = await alice.request(
            "start_charging_request", {"chargePointId": cp_id, "connectorId": 1}
        )
        assert started["data"]["success"] is True, started
        assert started["data"]["reservationId"] == reservation_id
        tx = started["data"]["transactionId"]
        used = await alice.push("reservation_update", where=lambda m: m["data"]["status"] == "Used")
        assert used["data"]["transactionId"] == tx

        before = await alice.push(
            "meter_values_update",
            where=lambda m: (m["data"]["meterValue"].get("powerKw") or 0) > 5,
        )
        assert before["data"]["transactionId"] == tx
        limited = await alice.request(
            "set_power_limit_request", {"transactionId": tx, "limit": 3.68, "unit": "kW"}
        )
        assert limited["data"]["success"] is True, limited
        assert (limited["data"]["phases"], limited["data"]["electricalSource"]) == (
            1,
            "meterValues",
        )
        assert 15.8 <= limited["data"]["limitA"] <= 16.2  # 3680 W at the measured voltage
        after = await alice.push(
            "meter_values_update",
            where=lambda m: (m["data"]["meterValue"].get("powerKw") or 99) <= 3.75,
        )
        assert after["data"]["transactionId"] == tx
        assert len(await server.app.store.charging_profiles(cp_id)) == 1

        stop = await alice.request(
            "stop_charging_request", {"chargePointId": cp_id, "transactionId": tx}
        )
        assert stop["data"]["success"] is True, stop
        await alice.push("transaction_update", where=lambda m: m["data"]["status"] == "Stopped")
        await server.app.profiles.close()  # the clearing started by the stop has finished
        assert await server.app.store.charging_profiles(cp_id) == []


async def test_library_charge_point_reservation_limit_and_local_list(tmp_path: Path) -> None:
    """Against the ocpp library (schemas checked both ways): ReserveNow carries our
    reservationId and its StartTransaction uses it; the power limit is a valid TxProfile,
    cleared at the end; the local list goes Full, then Differential with a blocked tag."""
    cp_id = "LIB-OPS"
    async with (
        running_server(make_settings(tmp_path)) as server,
        operated_charge_point(server.ocpp_url, cp_id) as cp,
        app_client(server, server.token("alice", id_tag="TAG-A")) as alice,
        app_client(server, server.token("ops", role="admin")) as admin,
    ):
        made = await reserve(alice, cp_id)
        assert made["data"]["success"] is True, made
        reservation_id = made["data"]["reservation"]["reservationId"]
        asked = await cp.next("ReserveNow")
        assert (asked["reservation_id"], asked["id_tag"], asked["connector_id"]) == (
            reservation_id,
            "TAG-A",
            1,
        )
        started = await cp.call(
            call.StartTransaction(
                connector_id=1,
                id_tag="TAG-A",
                meter_start=0,
                timestamp=now_text(),
                reservation_id=reservation_id,
            ),
            suppress=False,
        )
        tx = started.transaction_id
        used = await alice.push("reservation_update", where=lambda m: m["data"]["status"] == "Used")
        assert used["data"]["transactionId"] == tx

        limited = await alice.request(
            "set_power_limit_request", {"transactionId": tx, "limit": 10, "unit": "A"}
        )
        assert limited["data"]["success"] is True, limited
        profile = (await cp.next("SetChargingProfile"))["cs_charging_profiles"]
        assert profile["transaction_id"] == tx
        assert profile["charging_profile_purpose"] == "TxProfile"
        assert profile["charging_schedule"]["charging_schedule_period"][0]["limit"] == 10

        synced = await admin.request("sync_local_list_request", {"chargePointId": cp_id})
        assert synced["data"]["results"][0]["updateType"] == "Full", synced
        full = await cp.next("SendLocalList")
        assert (full["list_version"], full["update_type"]) == (1, "Full")
        await server.app.store.put_id_tag(IdTag("TAG-A", "alice", IdTagStatus.BLOCKED))
        synced = await admin.request("sync_local_list_request", {"chargePointId": "*"})
        assert synced["data"]["results"] == [
            {
                "chargePointId": cp_id,
                "updateType": "Differential",
                "status": "Accepted",
                "listVersion": 2,
                "entries": 1,
            }
        ]
        diff = await cp.next("SendLocalList")
        assert diff["local_authorization_list"] == [
            {"id_tag": "TAG-A", "id_tag_info": {"status": "Blocked"}}
        ]
        refused = await alice.request("sync_local_list_request", {"chargePointId": cp_id})
        assert refused["error"]["code"] == "FORBIDDEN"

        await cp.stop_tx(tx, 500)
        cleared = await cp.next("ClearChargingProfile")
        assert cleared == {"id": limited["data"]["chargingProfileId"]}


async def test_a_reservation_survives_a_server_restart(tmp_path: Path) -> None:
    """After a restart of the server process the reservation still refuses other tags, and
    its holder can still cancel it (CancelReservation reaches the charge point)."""
    cp_id = "LIB-RESTART"
    async with ServerProcess(tmp_path) as proc:
        async with (
            operated_charge_point(proc.ocpp_url, cp_id) as cp,
            app_at(proc.app_url, proc.token("alice", id_tag="TAG-A")) as alice,
        ):
            made = await reserve(alice, cp_id)
            reservation_id = made["data"]["reservation"]["reservationId"]
            await cp.next("ReserveNow")
        await proc.restart()
        async with (
            operated_charge_point(proc.ocpp_url, cp_id) as cp,
            app_at(proc.app_url, proc.token("alice", id_tag="TAG-A")) as alice,
            app_at(proc.app_url, proc.token("bob", id_tag="TAG-B")) as bob,
        ):
            refused = await bob.request(
                "start_charging_request", {"chargePointId": cp_id, "connectorId": 1}
            )
            assert refused["error"]["code"] == "CONNECTOR_RESERVED", refused
            cancelled = await alice.request(
                "cancel_reservation_request", {"reservationId": reservation_id}
            )
            assert cancelled["data"]["success"] is True, cancelled
            assert cancelled["data"]["chargePointStatus"] == "Accepted"
            assert (await cp.next("CancelReservation")) == {"reservation_id": reservation_id}


async def test_admin_operations_on_the_simulator_keep_the_books(tmp_path: Path) -> None:
    """Through OperatorService against the simulator: a ChargePointMaxProfile is stored and
    listed and shows in GetCompositeSchedule; an admin's ReserveNow holds the connector for
    its tag (another user's app start is refused), and CancelReservation frees it."""
    cp_id = "SIM-ADMIN"
    admin = Principal("ops", Role.ADMIN)
    async with (
        running_server(make_settings(tmp_path)) as server,
        simulated(server, cp_id),
        app_client(server, server.token("bob", id_tag="TAG-B")) as bob,
    ):
        operator = server.app.operator
        profile = {
            "chargingProfileId": 9,
            "stackLevel": 0,
            "chargingProfilePurpose": "ChargePointMaxProfile",
            "chargingProfileKind": "Absolute",
            "chargingSchedule": {
                "startSchedule": ocpp_datetime(datetime.now(UTC) - timedelta(minutes=1)),
                "chargingRateUnit": "A",
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 12.0}],
            },
        }
        answer = await operator.execute(
            admin, cp_id, "SetChargingProfile", {"connectorId": 0, "csChargingProfiles": profile}
        )
        assert answer == {"status": "Accepted"}
        listed = await server.app.profiles.profiles(admin, cp_id)
        assert [(p.profile_id, p.purpose) for p in listed] == [(9, "ChargePointMaxProfile")]
        schedule = await operator.execute(
            admin, cp_id, "GetCompositeSchedule", {"connectorId": 1, "duration": 600}
        )
        assert schedule["status"] == "Accepted", schedule
        periods = schedule["chargingSchedule"]["chargingSchedulePeriod"]
        assert periods[0]["limit"] <= 12.0

        await server.app.store.put_id_tag(IdTag("TAG-A", "alice"))
        expiry = ocpp_datetime(datetime.now(UTC) + timedelta(minutes=5))
        reserve_now = {
            "connectorId": 1,
            "expiryDate": expiry,
            "idTag": "TAG-A",
            "reservationId": 41,
        }
        assert await operator.execute(admin, cp_id, "ReserveNow", reserve_now) == {
            "status": "Accepted"
        }
        refused = await bob.request(
            "start_charging_request", {"chargePointId": cp_id, "connectorId": 1}
        )
        assert refused["error"]["code"] == "CONNECTOR_RESERVED", refused
        await operator.execute(admin, cp_id, "CancelReservation", {"reservationId": 41})
        started = await bob.request(
            "start_charging_request", {"chargePointId": cp_id, "connectorId": 1}
        )
        assert started["data"]["success"] is True, started
