"""Every OCPP 1.6 central-system operation against an independent charge point: the PyPI
``ocpp`` library's ``ChargePoint`` with its schema validation on (both ways), behind the real
server. Each operation goes out as an admin's ``operation_request`` and the library must accept
what we send; its answer must come back unchanged. Also: the charge point's own DataTransfer
(vendor allowlist, published to admins) and firmware/diagnostics status notifications (stored,
published), a CALLERROR and a time-out, each reported with its own code."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import websockets
from ocpp.exceptions import NotSupportedError
from ocpp.routing import on
from ocpp.v16 import call
from ocpp.v16 import call_result as result
from ocpp.v16.enums import Action

from charging_api.domain.models import DeviceJob, Principal, Role
from tests.conftest import AppClient, RunningServer, app_client, make_settings, running_server
from tests.peers.py_charge_point import LibraryChargePoint

ADMIN = Principal("ops", Role.ADMIN)
WAIT = 15.0


class OperatedChargePoint(LibraryChargePoint):
    """Answers every central-system operation and records what it was asked (snake_case, as
    the library hands it over after validating the request against the OCA schema)."""

    def __init__(self, cp_id: str, connection: Any) -> None:
        super().__init__(cp_id, connection)
        self.asked: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self.never = asyncio.Event()  # what a hung charge point waits for

    def _got(self, action: str, fields: dict[str, Any]) -> None:
        self.asked.put_nowait((action, fields))

    @on(Action.change_availability)  # type: ignore[untyped-decorator]
    def a1(self, **kw: Any) -> Any:
        self._got("ChangeAvailability", kw)
        return result.ChangeAvailability(status="Accepted")

    @on(Action.change_configuration)  # type: ignore[untyped-decorator]
    def a2(self, **kw: Any) -> Any:
        self._got("ChangeConfiguration", kw)
        return result.ChangeConfiguration(status="RebootRequired")

    @on(Action.clear_cache)  # type: ignore[untyped-decorator]
    def a3(self, **kw: Any) -> Any:
        self._got("ClearCache", kw)
        raise NotSupportedError(description="no cache here")

    @on(Action.data_transfer)  # type: ignore[untyped-decorator]
    def a4(self, **kw: Any) -> Any:
        self._got("DataTransfer", kw)
        return result.DataTransfer(status="Accepted", data="pong")

    @on(Action.get_configuration)  # type: ignore[untyped-decorator]
    def a5(self, **kw: Any) -> Any:
        self._got("GetConfiguration", kw)
        return result.GetConfiguration(
            configuration_key=[{"key": "HeartbeatInterval", "readonly": False, "value": "60"}],
            unknown_key=["Nope"],
        )

    @on(Action.reset)  # type: ignore[untyped-decorator]
    def a6(self, **kw: Any) -> Any:
        self._got("Reset", kw)
        return result.Reset(status="Accepted")

    @on(Action.unlock_connector)  # type: ignore[untyped-decorator]
    def a7(self, **kw: Any) -> Any:
        self._got("UnlockConnector", kw)
        return result.UnlockConnector(status="UnlockFailed")

    @on(Action.get_diagnostics)  # type: ignore[untyped-decorator]
    def a8(self, **kw: Any) -> Any:
        self._got("GetDiagnostics", kw)
        return result.GetDiagnostics(file_name="diag.log")

    @on(Action.update_firmware)  # type: ignore[untyped-decorator]
    def a9(self, **kw: Any) -> Any:
        self._got("UpdateFirmware", kw)
        return result.UpdateFirmware()

    @on(Action.get_local_list_version)  # type: ignore[untyped-decorator]
    def a10(self, **kw: Any) -> Any:
        self._got("GetLocalListVersion", kw)
        return result.GetLocalListVersion(list_version=3)

    @on(Action.send_local_list)  # type: ignore[untyped-decorator]
    def a11(self, **kw: Any) -> Any:
        self._got("SendLocalList", kw)
        return result.SendLocalList(status="VersionMismatch")

    @on(Action.reserve_now)  # type: ignore[untyped-decorator]
    def a12(self, **kw: Any) -> Any:
        self._got("ReserveNow", kw)
        return result.ReserveNow(status="Occupied")

    @on(Action.cancel_reservation)  # type: ignore[untyped-decorator]
    def a13(self, **kw: Any) -> Any:
        self._got("CancelReservation", kw)
        return result.CancelReservation(status="Rejected")

    @on(Action.set_charging_profile)  # type: ignore[untyped-decorator]
    def a14(self, **kw: Any) -> Any:
        self._got("SetChargingProfile", kw)
        return result.SetChargingProfile(status="Accepted")

    @on(Action.clear_charging_profile)  # type: ignore[untyped-decorator]
    def a15(self, **kw: Any) -> Any:
        self._got("ClearChargingProfile", kw)
        return result.ClearChargingProfile(status="Unknown")

    @on(Action.get_composite_schedule)  # type: ignore[untyped-decorator]
    def a16(self, **kw: Any) -> Any:
        self._got("GetCompositeSchedule", kw)
        return result.GetCompositeSchedule(status="Rejected")

    @on(Action.trigger_message)  # type: ignore[untyped-decorator]
    async def a17(self, **kw: Any) -> Any:
        self._got("TriggerMessage", kw)
        if kw["requested_message"] == "Heartbeat":
            await self.never.wait()  # hangs: the server's call time-out answers the admin
        return result.TriggerMessage(status="NotImplemented")

    @on(Action.remote_start_transaction)  # type: ignore[untyped-decorator]
    def a18(self, **kw: Any) -> Any:
        self._got("RemoteStartTransaction", kw)
        return result.RemoteStartTransaction(status="Rejected")

    @on(Action.remote_stop_transaction)  # type: ignore[untyped-decorator]
    def a19(self, **kw: Any) -> Any:
        self._got("RemoteStopTransaction", kw)
        return result.RemoteStopTransaction(status="Rejected")


@contextlib.asynccontextmanager
async def operated(server: RunningServer, cp_id: str) -> AsyncIterator[OperatedChargePoint]:
    async with websockets.connect(f"{server.ocpp_url}/{cp_id}", subprotocols=["ocpp1.6"]) as ws:  # type: ignore[list-item]
        cp = OperatedChargePoint(cp_id, ws)
        reader = asyncio.create_task(cp.start())
        try:
            await cp.boot()
            yield cp
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
                await reader


@contextlib.asynccontextmanager
async def admin(server: RunningServer) -> AsyncIterator[AppClient]:
    async with app_client(server, server.token("ops", role="admin")) as client:
        await client.request("subscribe", {"chargePointIds": "*"})
        yield client


async def op(client: AppClient, cp: str, action: str, payload: dict[str, Any]) -> dict[str, Any]:
    reply = await client.request(
        "operation_request",
        {"chargePointId": cp, "action": action, "payload": payload},
        timeout=WAIT,
    )
    data: dict[str, Any] = dict(reply["data"])
    if "error" in reply:
        data["error"] = reply["error"]
    return data


async def test_every_operation_passes_the_library_schema_checks(tmp_path: Path) -> None:
    """Each operation reaches the library charge point (which validates it against the OCA
    schema) with the fields we sent, and its answer comes back to the admin unchanged; the
    CALLERROR of one is CHARGE_POINT_ERROR with its OCPP code; a hung one CHARGE_POINT_TIMEOUT."""
    settings = make_settings(tmp_path, ocpp_call_timeout=1)
    async with running_server(settings) as server, operated(server, "LIB-OPS") as cp:
        async with admin(server) as client:
            profile = {
                "chargingProfileId": 2,
                "stackLevel": 1,
                "chargingProfilePurpose": "TxDefaultProfile",
                "chargingProfileKind": "Absolute",
                "chargingSchedule": {
                    "chargingRateUnit": "W",
                    "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 7400.0}],
                },
            }
            cases: list[tuple[str, dict[str, Any], dict[str, Any], str | None, Any]] = [
                ("ChangeAvailability", {"connectorId": 2, "type": "Inoperative"},
                 {"status": "Accepted"}, "type", "Inoperative"),
                ("ChangeConfiguration", {"key": "HeartbeatInterval", "value": "60"},
                 {"status": "RebootRequired"}, "key", "HeartbeatInterval"),
                ("DataTransfer", {"vendorId": "com.example", "data": "ping"},
                 {"status": "Accepted", "data": "pong"}, "vendor_id", "com.example"),
                ("GetConfiguration", {"key": ["HeartbeatInterval", "Nope"]},
                 {"configurationKey": [{"key": "HeartbeatInterval", "readonly": False,
                                        "value": "60"}], "unknownKey": ["Nope"]},
                 "key", ["HeartbeatInterval", "Nope"]),
                ("Reset", {"type": "Hard"}, {"status": "Accepted"}, "type", "Hard"),
                ("UnlockConnector", {"connectorId": 2}, {"status": "UnlockFailed"},
                 "connector_id", 2),
                ("GetDiagnostics", {"location": "ftp://logs.example/", "retries": 2},
                 {"fileName": "diag.log"}, "retries", 2),
                ("UpdateFirmware", {"location": "https://fw.example/v2.bin",
                                    "retrieveDate": "2030-01-01T00:00:00Z"}, {},
                 "location", "https://fw.example/v2.bin"),
                ("GetLocalListVersion", {}, {"listVersion": 3}, None, None),
                ("SendLocalList", {"listVersion": 4, "updateType": "Differential",
                                   "localAuthorizationList": [{"idTag": "T-1"}]},
                 {"status": "VersionMismatch"}, "update_type", "Differential"),
                ("ReserveNow", {"connectorId": 1, "expiryDate": "2030-01-01T00:00:00Z",
                                "idTag": "T-1", "reservationId": 5},
                 {"status": "Occupied"}, "reservation_id", 5),
                ("CancelReservation", {"reservationId": 5}, {"status": "Rejected"},
                 "reservation_id", 5),
                ("SetChargingProfile", {"connectorId": 1, "csChargingProfiles": profile},
                 {"status": "Accepted"}, "connector_id", 1),
                ("ClearChargingProfile", {"chargingProfilePurpose": "TxDefaultProfile"},
                 {"status": "Unknown"}, "charging_profile_purpose", "TxDefaultProfile"),
                ("GetCompositeSchedule", {"connectorId": 1, "duration": 3600,
                                          "chargingRateUnit": "W"},
                 {"status": "Rejected"}, "duration", 3600),
                ("TriggerMessage", {"requestedMessage": "MeterValues", "connectorId": 1},
                 {"status": "NotImplemented"}, "requested_message", "MeterValues"),
                ("RemoteStartTransaction", {"connectorId": 1, "idTag": "T-1"},
                 {"status": "Rejected"}, "id_tag", "T-1"),
                ("RemoteStopTransaction", {"transactionId": 77}, {"status": "Rejected"},
                 "transaction_id", 77),
            ]  # fmt: skip
            for action, payload, expected, field, value in cases:
                data = await op(client, "LIB-OPS", action, payload)
                assert data.get("success") is True, (action, data)
                assert data["response"] == expected, action
                asked, fields = cp.asked.get_nowait()
                assert asked == action
                if field is not None:
                    assert fields[field] == value, (action, fields)

            failed = await op(client, "LIB-OPS", "ClearCache", {})
            assert failed["success"] is False
            assert failed["error"]["code"] == "CHARGE_POINT_ERROR"
            assert failed["error"]["details"]["ocppErrorCode"] == "NotSupported"
            assert cp.asked.get_nowait()[0] == "ClearCache"

            hung = await op(client, "LIB-OPS", "TriggerMessage", {"requestedMessage": "Heartbeat"})
            assert hung["error"]["code"] == "CHARGE_POINT_TIMEOUT"
            cp.never.set()

        log = await server.app.operator.operations_log(ADMIN, charge_point_id="LIB-OPS")
        assert len({r.action for r in log}) == 19
        assert [r.error_code for r in log[:2]] == ["CHARGE_POINT_TIMEOUT", "CHARGE_POINT_ERROR"]
        stored = {e.key: e for e in await server.app.operator.configuration_of(ADMIN, "LIB-OPS")}
        assert (stored["HeartbeatInterval"].value, stored["HeartbeatInterval"].applied_status) == (
            "60",
            "RebootRequired",
        )


async def test_tc_064_data_transfer_from_a_charge_point_vendor_allowlist(tmp_path: Path) -> None:
    """TC_064: a vendor on DATA_TRANSFER_VENDORS is Accepted and pushed to watching admins
    (any case); any other vendor keeps UnknownVendorId and nothing is pushed."""
    settings = make_settings(tmp_path, data_transfer_vendors="com.example,org.other")
    async with (
        running_server(settings) as server,
        operated(server, "LIB-DT") as cp,
        admin(server) as client,
    ):
        unknown = await cp.call(
            call.DataTransfer(vendor_id="com.unknown", message_id="m0", data="x"),
            suppress=False,
        )
        assert unknown.status == "UnknownVendorId"
        known = await cp.call(
            call.DataTransfer(vendor_id="COM.EXAMPLE", message_id="m1", data='{"a":1}'),
            suppress=False,
        )
        assert known.status == "Accepted"
        push = await client.push("data_transfer_received", WAIT)
        assert push["data"] == {
            "chargePointId": "LIB-DT",
            "vendorId": "COM.EXAMPLE",
            "messageId": "m1",
            "data": '{"a":1}',
        }
        # m0 was sent first: the first push being m1 shows it was never published.


async def test_firmware_and_diagnostics_notifications_are_stored_and_pushed(
    tmp_path: Path,
) -> None:
    """FirmwareStatusNotification and DiagnosticsStatusNotification from a charge point are
    kept as a history per job (the newest is the current status) and pushed to admins."""
    async with running_server(make_settings(tmp_path)) as server, operated(server, "LIB-FW") as cp:
        async with admin(server) as client:
            for status in ("Downloading", "Downloaded", "InstallationFailed"):
                await cp.call(call.FirmwareStatusNotification(status=status), suppress=False)
            await cp.call(call.DiagnosticsStatusNotification(status="UploadFailed"), suppress=False)
            pushed = [(await client.push("device_status_update", WAIT))["data"] for _ in range(4)]
            assert [(p["job"], p["status"]) for p in pushed] == [
                ("firmware", "Downloading"),
                ("firmware", "Downloaded"),
                ("firmware", "InstallationFailed"),
                ("diagnostics", "UploadFailed"),
            ]
        firmware = await server.app.operator.device_statuses_of(ADMIN, "LIB-FW", DeviceJob.FIRMWARE)
        assert [s.status for s in firmware] == ["InstallationFailed", "Downloaded", "Downloading"]
        diagnostics = await server.app.operator.device_statuses_of(
            ADMIN, "LIB-FW", DeviceJob.DIAGNOSTICS
        )
        assert [s.status for s in diagnostics] == ["UploadFailed"]
