"""Every OCPP 1.6 central-system operation end to end: an admin's ``operation_request`` over
the app WebSocket, through the real server, to the simulator (``charging_api.simulator``) and
back, with the rules the core keeps. Test names carry the OCA compliance-test-tool case
(OCPP 1.6, Central System under test) they model where one exists (see docs/operators.md)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from charging_api.domain.events import ChargePointConnectionChanged
from charging_api.domain.models import DeviceJob, IdTag, Principal, Role
from charging_api.simulator import SimTimings, SimulatedChargePoint, run_charge_point
from tests.conftest import AppClient, RunningServer, app_client, make_settings, running_server

FAST = SimTimings(firmware_step=0.01, diagnostics_step=0.01, reboot=0.05)
ADMIN = Principal("ops", Role.ADMIN)
WAIT = 15.0


@dataclass
class Sim:
    """One simulated charge point; ``boots`` yields each connection once it has booted."""

    cp_id: str
    boots: asyncio.Queue[SimulatedChargePoint] = field(default_factory=asyncio.Queue)
    current: SimulatedChargePoint | None = None

    async def next_boot(self) -> SimulatedChargePoint:
        cp = await asyncio.wait_for(self.boots.get(), WAIT)
        await asyncio.wait_for(cp.booted.wait(), WAIT)
        self.current = cp
        return cp


@contextlib.asynccontextmanager
async def simulator(server: RunningServer, cp_id: str = "SIM-OPS") -> AsyncIterator[Sim]:
    sim = Sim(cp_id)
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_charge_point(
            server.ocpp_url,
            cp_id,
            meter_interval=60,
            stop=stop,
            on_connect=sim.boots.put_nowait,
            timings=FAST,
        )
    )
    try:
        await sim.next_boot()
        yield sim
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT)


@contextlib.asynccontextmanager
async def admin(server: RunningServer) -> AsyncIterator[AppClient]:
    async with app_client(server, server.token("ops", role="admin")) as client:
        reply = await client.request("subscribe", {"chargePointIds": "*"})
        assert reply["data"]["success"] is True
        yield client


async def op(
    client: AppClient, cp: str, action: str, payload: dict[str, Any], force: bool = False
) -> dict[str, Any]:
    """Send an operation_request; the reply's data (success or failure)."""
    data: dict[str, Any] = {"chargePointId": cp, "action": action, "payload": payload}
    if force:
        data["force"] = True
    reply = await client.request("operation_request", data, timeout=WAIT)
    assert reply["type"] == "operation_response", reply
    result: dict[str, Any] = dict(reply["data"])
    if "error" in reply:
        result["error"] = reply["error"]  # a failed *_response carries it in the envelope
    return result


async def answer(client: AppClient, cp: str, action: str, payload: dict[str, Any]) -> Any:
    data = await op(client, cp, action, payload)
    assert data["success"] is True, data
    assert (data["chargePointId"], data["action"]) == (cp, action)
    return data["response"]


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


async def test_every_operation_reaches_the_simulator_and_is_logged(server: RunningServer) -> None:
    """All 19 operations: each answer comes back to the admin as the simulator sent it, and
    the operations log has one record per operation with its answer."""
    async with simulator(server) as sim, admin(server) as client:
        cp = sim.cp_id
        await server.app.store.put_id_tag(IdTag("LOCAL-1", "bob"))  # the server Authorizes it
        later = iso(datetime.now(UTC) + timedelta(hours=1))
        expected: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
            ("ClearCache", {}, {"status": "Accepted"}),
            ("UnlockConnector", {"connectorId": 1}, {"status": "Unlocked"}),
            ("GetLocalListVersion", {}, {"listVersion": 0}),
            (
                "SendLocalList",
                {
                    "listVersion": 1,
                    "updateType": "Full",
                    "localAuthorizationList": [
                        {"idTag": "LOCAL-1", "idTagInfo": {"status": "Accepted"}}
                    ],
                },
                {"status": "Accepted"},
            ),
            (
                "ReserveNow",
                {"connectorId": 1, "expiryDate": later, "idTag": "LOCAL-1", "reservationId": 7},
                {"status": "Accepted"},
            ),
            ("CancelReservation", {"reservationId": 7}, {"status": "Accepted"}),
            (
                "SetChargingProfile",
                {
                    "connectorId": 0,
                    "csChargingProfiles": {
                        "chargingProfileId": 1,
                        "stackLevel": 0,
                        "chargingProfilePurpose": "ChargePointMaxProfile",
                        "chargingProfileKind": "Absolute",
                        "chargingSchedule": {
                            "chargingRateUnit": "A",
                            "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 16.0}],
                        },
                    },
                },
                {"status": "Accepted"},
            ),
            ("ClearChargingProfile", {"id": 1}, {"status": "Accepted"}),
            ("TriggerMessage", {"requestedMessage": "Heartbeat"}, {"status": "Accepted"}),
            (
                "DataTransfer",
                {"vendorId": "charging-api", "messageId": "Echo", "data": "ping"},
                {"status": "Accepted", "data": "ping"},
            ),
            (
                "ChangeAvailability",
                {"connectorId": 1, "type": "Operative"},
                {"status": "Accepted"},
            ),
        ]
        for action, payload, reply in expected:
            assert await answer(client, cp, action, payload) == reply, action
        schedule = await answer(
            client, cp, "GetCompositeSchedule", {"connectorId": 1, "duration": 60}
        )
        assert schedule["status"] == "Accepted"
        config = await answer(client, cp, "GetConfiguration", {"key": ["HeartbeatInterval"]})
        assert [k["key"] for k in config["configurationKey"]] == ["HeartbeatInterval"]
        changed = await answer(
            client,
            cp,
            "ChangeConfiguration",
            {"key": "MeterValueSampleInterval", "value": "30"},
        )
        assert changed == {"status": "Accepted"}
        diagnostics = await answer(client, cp, "GetDiagnostics", {"location": "ftp://x.example/"})
        assert diagnostics["fileName"].startswith(cp)
        await client.push("device_status_update", WAIT, lambda m: m["data"]["status"] == "Uploaded")
        remote = await answer(
            client, cp, "RemoteStartTransaction", {"connectorId": 1, "idTag": "LOCAL-1"}
        )
        assert remote == {"status": "Accepted"}
        started = await client.push(
            "transaction_update", WAIT, lambda m: m["data"]["status"] == "Started"
        )
        tx_id = started["data"]["transactionId"]
        assert await answer(client, cp, "RemoteStopTransaction", {"transactionId": tx_id}) == {
            "status": "Accepted"
        }
        await client.push("transaction_update", WAIT, lambda m: m["data"]["status"] == "Stopped")
        assert await answer(
            client, cp, "UpdateFirmware", {"location": "https://fw.example/sim-2.0.0.bin",
                                           "retrieveDate": iso(datetime.now(UTC))}
        ) == {}  # fmt: skip
        await client.push(
            "device_status_update", WAIT, lambda m: m["data"]["status"] == "Installed"
        )
        await sim.next_boot()  # the firmware install reboots it
        assert await answer(client, cp, "Reset", {"type": "Soft"}) == {"status": "Accepted"}
        await sim.next_boot()

        log = await server.app.operator.operations_log(ADMIN, charge_point_id=cp, limit=100)
        mine = [r for r in log if r.requested_by == "ops"]
        assert len({r.action for r in mine}) == 19
        assert all(r.error_code is None and r.response is not None for r in mine)
        reset = next(r for r in mine if r.action == "Reset")
        assert reset.request == {"type": "Soft"} and reset.response == {"status": "Accepted"}
        firmware = await server.app.operator.device_statuses_of(ADMIN, cp, DeviceJob.FIRMWARE)
        assert [s.status for s in reversed(firmware)] == [
            "Downloading",
            "Downloaded",
            "Installing",
            "Installed",
        ]
        booted = await server.app.store.get_charge_point(cp)
        assert booted is not None and booted.info.firmware_version == "sim-2.0.0"


async def test_tc_013_tc_015_reset_refused_while_charging_unless_forced(
    server: RunningServer,
) -> None:
    """TC_013/TC_015 (Hard Reset without / with transaction): a Reset during a transaction is
    TRANSACTION_RUNNING and the charge point keeps charging; forced, it resets, the transaction
    ends (HardReset) and the charge point boots again."""
    async with simulator(server) as sim, admin(server) as client:
        cp = sim.cp_id
        async with app_client(server, server.token("alice", id_tag="TAG-A")) as alice:
            started = await alice.request(
                "start_charging_request", {"chargePointId": cp, "connectorId": 1}
            )
            assert started["data"]["success"] is True, started
            refused = await op(client, cp, "Reset", {"type": "Hard"})
            assert refused["success"] is False
            assert refused["error"]["code"] == "TRANSACTION_RUNNING"
            assert refused["error"]["details"]["transactionIds"] == [
                started["data"]["transactionId"]
            ]
            assert sim.current is not None and sim.current.booted.is_set()
            forced = await op(client, cp, "Reset", {"type": "Hard"}, force=True)
            assert forced["success"] is True and forced["response"] == {"status": "Accepted"}
            stopped = await alice.push(
                "transaction_update", WAIT, lambda m: m["data"]["status"] == "Stopped"
            )
            assert stopped["data"]["reason"] == "HardReset"
        await sim.next_boot()
        again = await op(client, cp, "Reset", {"type": "Hard"})
        assert again["success"] is True  # TC_013: no transaction, no refusal


async def test_inoperative_connector_refuses_app_start_with_connector_unavailable(
    server: RunningServer,
) -> None:
    """ChangeAvailability Inoperative: the charge point reports Unavailable, an app start is
    CONNECTOR_UNAVAILABLE (no RemoteStart), and Operative again lets the start through."""
    async with simulator(server) as sim, admin(server) as client:
        cp = sim.cp_id
        inoperative = {"connectorId": 1, "type": "Inoperative"}
        assert await answer(client, cp, "ChangeAvailability", inoperative) == {"status": "Accepted"}
        await client.push(
            "charging_status_update", WAIT, lambda m: m["data"]["status"] == "Unavailable"
        )
        async with app_client(server, server.token("alice", id_tag="TAG-A")) as alice:
            refused = await alice.request(
                "start_charging_request", {"chargePointId": cp, "connectorId": 1}
            )
            assert refused["data"]["success"] is False
            assert refused["error"]["code"] == "CONNECTOR_UNAVAILABLE"
            operative = {"connectorId": 1, "type": "Operative"}
            assert await answer(client, cp, "ChangeAvailability", operative) == {
                "status": "Accepted"
            }
            started = await alice.request(
                "start_charging_request", {"chargePointId": cp, "connectorId": 1}
            )
            assert started["data"]["success"] is True, started
        log = await server.app.operator.operations_log(ADMIN, charge_point_id=cp)
        assert "RemoteStartTransaction" not in {r.action for r in log}


async def test_scheduled_availability_applies_when_the_transaction_ends(
    server: RunningServer,
) -> None:
    """ChangeAvailability during a transaction is Scheduled; when the transaction ends the
    connector goes Unavailable and the stored availability is in effect (app starts refused)."""
    async with simulator(server) as sim, admin(server) as client:
        cp = sim.cp_id
        async with app_client(server, server.token("alice", id_tag="TAG-A")) as alice:
            started = await alice.request(
                "start_charging_request", {"chargePointId": cp, "connectorId": 1}
            )
            tx_id = started["data"]["transactionId"]
            scheduled = await answer(
                client, cp, "ChangeAvailability", {"connectorId": 1, "type": "Inoperative"}
            )
            assert scheduled == {"status": "Scheduled"}
            (pending,) = await server.app.operator.availability_of(ADMIN, cp)
            assert pending.scheduled
            stop = await alice.request(
                "stop_charging_request", {"chargePointId": cp, "transactionId": tx_id}
            )
            assert stop["data"]["success"] is True
            await client.push(
                "charging_status_update", WAIT, lambda m: m["data"]["status"] == "Unavailable"
            )
            await server.app.operator.drain()
            (done,) = await server.app.operator.availability_of(ADMIN, cp)
            assert not done.scheduled
            refused = await alice.request(
                "start_charging_request", {"chargePointId": cp, "connectorId": 1}
            )
            assert refused["error"]["code"] == "CONNECTOR_UNAVAILABLE"


async def test_tc_019_tc_021_configuration_is_stored_and_wanted_values_follow_a_boot(
    server: RunningServer,
) -> None:
    """TC_019 (retrieve configuration) answers are stored with readonly flags; TC_021
    (MeterValueSampleInterval=60) is kept with its result; a wanted value is sent again after
    the next BootNotification and the charge point then reports it."""
    async with simulator(server) as sim, admin(server) as client:
        cp = sim.cp_id
        await answer(client, cp, "GetConfiguration", {})
        stored = {e.key: e for e in await server.app.operator.configuration_of(ADMIN, cp)}
        assert stored["NumberOfConnectors"].readonly is True
        assert stored["HeartbeatInterval"].readonly is False
        changed = await answer(
            client, cp, "ChangeConfiguration", {"key": "MeterValueSampleInterval", "value": "60"}
        )
        assert changed == {"status": "Accepted"}
        entry = {e.key: e for e in await server.app.operator.configuration_of(ADMIN, cp)}[
            "MeterValueSampleInterval"
        ]
        assert (entry.value, entry.applied_status) == ("60", "Accepted")
        readonly = await answer(
            client, cp, "ChangeConfiguration", {"key": "NumberOfConnectors", "value": "3"}
        )
        assert readonly == {"status": "Rejected"}

        wanted = await client.request(
            "want_configuration_request",
            {"chargePointId": cp, "key": "MeterValueSampleInterval", "value": "15"},
        )
        assert wanted["data"] == {
            "success": True,
            "chargePointId": cp,
            "key": "MeterValueSampleInterval",
            "value": "15",
        }
        assert await answer(client, cp, "Reset", {"type": "Soft"}) == {"status": "Accepted"}
        await sim.next_boot()
        await server.app.operator.drain()
        check = await answer(client, cp, "GetConfiguration", {"key": ["MeterValueSampleInterval"]})
        assert check["configurationKey"][0]["value"] == "15"
        details = await client.request("get_charge_point_details", {"chargePointId": cp})
        assert details["type"] == "charge_point_details"
        by_key = {e["key"]: e for e in details["data"]["configuration"]}
        assert by_key["MeterValueSampleInterval"]["wanted"] == "15"
        assert by_key["MeterValueSampleInterval"]["appliedStatus"] == "Accepted"
        assert by_key["NumberOfConnectors"]["readonly"] is True
        log = await client.request("get_operations", {"chargePointId": cp, "limit": 3})
        newest = log["data"]["operations"]
        assert [o["action"] for o in newest] == ["GetConfiguration", "ChangeConfiguration", "Reset"]
        assert newest[1]["requestedBy"] == "system:boot"
        assert newest[1]["response"] == {"status": "Accepted"}
        older = await client.request(
            "get_operations", {"chargePointId": cp, "limit": 1, "beforeId": newest[2]["id"]}
        )
        assert [o["action"] for o in older["data"]["operations"]] == ["ChangeConfiguration"]
        assert older["data"]["operations"][0]["request"]["key"] == "NumberOfConnectors"


async def test_tc_017_tc_031_tc_061_unlock_and_clear_cache(server: RunningServer) -> None:
    """TC_017_1 Unlocked, TC_031 an unknown connector NotSupported, TC_061 ClearCache
    Accepted: each answer comes back to the admin as sent."""
    async with simulator(server) as sim, admin(server) as client:
        cp = sim.cp_id
        assert await answer(client, cp, "UnlockConnector", {"connectorId": 1}) == {
            "status": "Unlocked"
        }
        assert await answer(client, cp, "UnlockConnector", {"connectorId": 9}) == {
            "status": "NotSupported"
        }
        assert await answer(client, cp, "ClearCache", {}) == {"status": "Accepted"}


async def test_trigger_message_for_each_of_the_six_messages(server: RunningServer) -> None:
    """TC_054: TriggerMessage for each of the six messages is Accepted and the message
    follows (a BootNotification, statuses of both jobs, a Heartbeat, MeterValues, a status)."""
    async with simulator(server) as sim, admin(server) as client:
        cp = sim.cp_id
        for message in (
            "BootNotification",
            "DiagnosticsStatusNotification",
            "FirmwareStatusNotification",
            "Heartbeat",
            "MeterValues",
            "StatusNotification",
        ):
            payload: dict[str, Any] = {"requestedMessage": message}
            if message in ("MeterValues", "StatusNotification"):
                payload["connectorId"] = 1
            assert await answer(client, cp, "TriggerMessage", payload) == {"status": "Accepted"}
        jobs: set[str] = set()
        while jobs != {"diagnostics", "firmware"}:
            jobs.add((await client.push("device_status_update", WAIT))["data"]["job"])
        assert await answer(
            client, cp, "TriggerMessage", {"requestedMessage": "StatusNotification",
                                           "connectorId": 9}
        ) == {"status": "Rejected"}  # fmt: skip


async def test_bad_operations_are_refused_with_clear_errors(tmp_path: Path) -> None:
    """A payload breaking the OCPP schema is INVALID_PAYLOAD with the schema error and nothing
    is sent; an unknown action, a user token, an unknown or offline charge point each get
    their own code; all of it is in the operations log except the user's attempt."""
    async with running_server(make_settings(tmp_path)) as server:
        gone = asyncio.Event()

        def on_event(event: object) -> None:
            if isinstance(event, ChargePointConnectionChanged) and not event.online:
                gone.set()

        server.app.bus.subscribe(on_event)
        async with simulator(server) as sim, admin(server) as client:
            cp = sim.cp_id
            bad = await op(client, cp, "Reset", {"type": "Sideways"})
            assert bad["success"] is False and bad["error"]["code"] == "INVALID_PAYLOAD"
            assert "type" in bad["error"]["details"]["schemaError"]
            assert bad["error"]["details"]["ocppErrorCode"] == "PropertyConstraintViolation"
            unknown = await op(client, cp, "BootNotification", {})
            assert unknown["error"]["code"] == "UNKNOWN_OPERATION"
            missing = await op(client, "NO-SUCH-CP", "ClearCache", {})
            assert missing["error"]["code"] == "CHARGE_POINT_NOT_FOUND"
            async with app_client(server, server.token("alice", id_tag="TAG-A")) as alice:
                reply = await alice.request(
                    "operation_request",
                    {"chargePointId": cp, "action": "Reset", "payload": {"type": "Soft"}},
                )
                assert reply["error"]["code"] == "FORBIDDEN"
                for kind, data in (
                    ("get_operations", {}),
                    ("get_charge_point_details", {"chargePointId": cp}),
                    ("want_configuration_request", {"chargePointId": cp, "key": "K", "value": "v"}),
                ):
                    denied = await alice.request(kind, data)
                    assert denied["error"]["code"] == "FORBIDDEN", kind
            assert sim.current is not None and sim.current.booted.is_set()
        await asyncio.wait_for(gone.wait(), WAIT)
        async with admin(server) as client:
            offline = await op(client, "SIM-OPS", "ClearCache", {})
        assert offline["error"]["code"] == "CHARGE_POINT_OFFLINE"
        codes = [r.error_code for r in await server.app.operator.operations_log(ADMIN)]
        assert codes == [
            "CHARGE_POINT_OFFLINE",
            "CHARGE_POINT_NOT_FOUND",
            "UNKNOWN_OPERATION",
            "INVALID_PAYLOAD",
        ]
