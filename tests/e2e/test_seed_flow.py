"""The seed's whole flow over real sockets: an ``ocpp``-library charge point, app clients."""

from __future__ import annotations

import asyncio

from tests.conftest import RunningServer, app_client
from tests.peers.py_charge_point import connected_charge_point

CP = "CP_1760882403313_FAAEB99A"


async def test_auth_start_status_meter_stop_as_in_the_seed(server: RunningServer) -> None:
    """A user authenticates, starts, sees status and converted meter values, stops."""
    async with connected_charge_point(server.ocpp_url, CP) as cp, app_client(server) as app:
        await cp.status(1, "Available")
        auth = await app.request(
            "auth_request",
            {"token": server.token("user-123", id_tag="USER_123"), "userId": "user-123"},
        )
        assert auth["id"] == "m-1"
        assert auth["type"] == "auth_response"
        assert "error" not in auth
        assert auth["data"]["success"] is True
        assert auth["data"]["userId"] == "user-123"
        assert auth["data"]["sessionId"].startswith("ws_session_")
        assert auth["data"]["expiresAt"].endswith("Z")

        start = asyncio.create_task(
            app.request("start_charging_request", {"chargePointId": CP, "connectorId": 1})
        )
        asked = await asyncio.wait_for(cp.remote_starts.get(), 10)
        assert asked == {"id_tag": "USER_123", "connector_id": 1}
        await cp.status(1, "Preparing")
        auth_reply = await cp.authorize("USER_123")
        assert auth_reply.id_tag_info["status"] == "Accepted"
        started = await cp.start_tx(1, "USER_123", meter_start=15000)
        assert started.id_tag_info["status"] == "Accepted"
        response = await start
        assert response["type"] == "start_charging_response"
        assert "error" not in response
        assert response["data"] == {
            "success": True,
            "transactionId": started.transaction_id,
            "connectorId": 1,
            "status": "Accepted",
            "message": "Charging started successfully",
        }
        preparing = await app.push("charging_status_update")
        assert preparing["data"] == {"chargePointId": CP, "connectorId": 1, "status": "Preparing"}

        await cp.status(1, "Charging")
        charging = await app.push("charging_status_update")
        assert charging["data"] == {
            "chargePointId": CP,
            "connectorId": 1,
            "status": "Charging",
            "transactionId": started.transaction_id,
        }
        await cp.meter(
            1,
            started.transaction_id,
            [
                {"value": "15234", "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
                {"value": "7.5", "measurand": "Power.Active.Import", "unit": "kW"},
                {"value": "230.1", "measurand": "Voltage", "unit": "V"},
                {"value": "32.6", "measurand": "Current.Import", "unit": "A"},
                {"value": "75", "measurand": "SoC", "unit": "Percent", "location": "EV"},
            ],
            timestamp="2099-01-15T10:31:00.000Z",
        )
        meter = await app.push("meter_values_update")
        # The seed's fields, plus our live snapshot (docs/sessions.md): session kWh, not the register.
        assert meter["data"].pop("session")["energyKWh"] == 0.234
        assert meter["data"] == {
            "chargePointId": CP,
            "connectorId": 1,
            "transactionId": started.transaction_id,
            "meterValue": {
                "energyImportKWh": 15.234,
                "powerKw": 7.5,
                "voltage": 230.1,
                "current": 32.6,
                "timestamp": "2099-01-15T10:31:00.000Z",
                "stateOfCharge": 75,
            },
        }
        assert meter["seq"] > charging["seq"] > preparing["seq"]

        stop = await app.request(
            "stop_charging_request",
            {"chargePointId": CP, "transactionId": started.transaction_id, "reason": "UserStop"},
        )
        assert stop["data"] == {
            "success": True,
            "transactionId": started.transaction_id,
            "status": "Accepted",
            "message": "Charging stopped successfully",
        }
        assert (await cp.remote_stops.get()) == {"transaction_id": started.transaction_id}
        await cp.status(1, "Finishing")
        await cp.stop_tx(started.transaction_id, 22000, reason="Remote")
        await cp.status(1, "Available")
        finishing = await app.push("charging_status_update")
        assert finishing["data"]["status"] == "Finishing"
        ended = await app.push("transaction_update")
        assert ended["data"]["status"] == "Stopped"
        assert ended["data"]["energyKWh"] == 7.0
        available = await app.push("charging_status_update")
        assert available["data"]["status"] == "Available"

        beat = await app.request("heartbeat")
        assert beat["type"] == "heartbeat" and beat["id"] == f"m-{app._next}"
        assert "error" not in beat


async def test_requests_before_auth_get_the_seed_error(server: RunningServer) -> None:
    """Anything but auth and heartbeat before auth answers NOT_AUTHENTICATED with its id."""
    async with app_client(server) as app:
        reply = await app.request(
            "start_charging_request", {"chargePointId": CP, "connectorId": 1}, message_id="x-1"
        )
        assert reply["id"] == "x-1"
        assert reply["type"] == "error"
        assert reply["error"] == {
            "code": "NOT_AUTHENTICATED",
            "message": "Client not authenticated",
            "details": {"requiredAction": "Send auth_request with valid JWT token"},
        }
        beat = await app.request("heartbeat")
        assert beat["type"] == "heartbeat"


async def test_second_user_sees_none_of_the_first_users_meter_values(server: RunningServer) -> None:
    """Meter values of one user's session never reach another user."""
    async with (
        connected_charge_point(server.ocpp_url, "CP-A") as cp,
        app_client(server, server.token("alice", id_tag="TAG-A")) as alice,
        app_client(server, server.token("bob", id_tag="TAG-B")) as bob,
    ):
        start = asyncio.create_task(
            alice.request("start_charging_request", {"chargePointId": "CP-A", "connectorId": 1})
        )
        await cp.remote_starts.get()
        tx = await cp.start_tx(1, "TAG-A", 0)
        assert (await start)["data"]["transactionId"] == tx.transaction_id
        await cp.meter(1, tx.transaction_id, [{"value": "1000"}])
        seen = await alice.push("meter_values_update")
        assert seen["data"]["meterValue"]["energyImportKWh"] == 1.0
        # Bob's stream is empty: a heartbeat round trip proves everything before it arrived.
        await bob.request("heartbeat")
        assert bob.pushes.empty()
        assert bob.unsolicited.empty()


async def test_garbage_gets_defined_errors_and_the_connection_lives(server: RunningServer) -> None:
    """Not JSON, unknown type, wrong field types: an error each, the socket stays up."""
    async with app_client(server, server.token("u1", id_tag="T1")) as app:
        await app.ws.send("{not json")
        raw = await asyncio.wait_for(app.unsolicited.get(), 5)
        assert raw["type"] == "error" and raw["error"]["code"] == "INVALID_MESSAGE"
        unknown = await app.request("teleport_request", {})
        assert unknown["error"]["code"] == "UNKNOWN_MESSAGE_TYPE"
        wrong = await app.request(
            "start_charging_request", {"chargePointId": CP, "connectorId": "1"}
        )
        assert wrong["type"] == "error"
        assert wrong["error"]["code"] == "VALIDATION_ERROR"
        assert "connectorId" in wrong["error"]["message"]
        ok = await app.request("heartbeat")
        assert ok["type"] == "heartbeat"
