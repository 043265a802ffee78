"""The simulator answers every OCPP 1.6 central-system operation the way a charger does.

The central system here is independent of ours: the PyPI ``ocpp`` library's ``ChargePoint``
(schema validation on, both ways) behind a ``websockets`` server on 127.0.0.1 port 0. It
records every message the simulator sends; the tests send each operation, assert the answer and
wait (bounded) for the follow-up messages. Tests are named after the OCPP operation.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ocpp.routing import on
from ocpp.v16 import ChargePoint, call
from ocpp.v16 import call_result as result
from ocpp.v16.enums import Action, RegistrationStatus
from websockets.asyncio.server import ServerConnection, serve
from websockets.typing import Subprotocol

from charging_api.simulator import SimTimings, SimulatedChargePoint, run_charge_point

WAIT = 10.0
FAST = SimTimings(firmware_step=0.01, diagnostics_step=0.01, reboot=0.05)


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Inbox:
    """Every CALL the simulator sent, in order, with a cursor the tests read forward from."""

    log: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    cursor: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(100))

    def add(self, action: str, payload: dict[str, Any]) -> None:
        self.log.append((action, payload))
        self.changed.set()

    async def expect(
        self, action: str, where: Callable[[dict[str, Any]], bool] | None = None, **fields: Any
    ) -> dict[str, Any]:
        """The next ``action`` (after the cursor) whose payload has ``fields`` (and satisfies
        ``where``); fails after WAIT seconds."""
        async with asyncio.timeout(WAIT):
            while True:
                for i in range(self.cursor, len(self.log)):
                    name, payload = self.log[i]
                    if (
                        name == action
                        and all(payload.get(k) == v for k, v in fields.items())
                        and (where is None or where(payload))
                    ):
                        self.cursor = i + 1
                        return payload
                self.changed.clear()
                await self.changed.wait()

    def since_cursor(self, action: str) -> list[dict[str, Any]]:
        return [p for a, p in self.log[self.cursor :] if a == action]

    def skip(self) -> None:
        """Read on from now: what was sent so far is history."""
        self.cursor = len(self.log)


class CentralSystem(ChargePoint):  # type: ignore[misc]
    """The ``ocpp`` library's central-system side, recording what the charge point sends."""

    def __init__(self, cp_id: str, ws: ServerConnection, inbox: Inbox) -> None:
        super().__init__(cp_id, ws)
        self.inbox = inbox

    def _record(self, action: str, payload: dict[str, Any]) -> None:
        self.inbox.add(action, payload)

    @on(Action.boot_notification)  # type: ignore[untyped-decorator]
    def on_boot(self, **payload: Any) -> Any:
        self._record("BootNotification", payload)
        return result.BootNotification(
            current_time=iso(datetime.now(UTC)), interval=300, status=RegistrationStatus.accepted
        )

    @on(Action.heartbeat)  # type: ignore[untyped-decorator]
    def on_heartbeat(self, **payload: Any) -> Any:
        self._record("Heartbeat", payload)
        return result.Heartbeat(current_time=iso(datetime.now(UTC)))

    @on(Action.status_notification)  # type: ignore[untyped-decorator]
    def on_status(self, **payload: Any) -> Any:
        self._record("StatusNotification", payload)
        return result.StatusNotification()

    @on(Action.authorize)  # type: ignore[untyped-decorator]
    def on_authorize(self, **payload: Any) -> Any:
        self._record("Authorize", payload)
        return result.Authorize(id_tag_info={"status": "Accepted"})

    @on(Action.start_transaction)  # type: ignore[untyped-decorator]
    def on_start(self, **payload: Any) -> Any:
        transaction_id = next(self.inbox.ids)
        self._record("StartTransaction", {**payload, "_transaction_id": transaction_id})
        return result.StartTransaction(
            transaction_id=transaction_id, id_tag_info={"status": "Accepted"}
        )

    @on(Action.stop_transaction)  # type: ignore[untyped-decorator]
    def on_stop(self, **payload: Any) -> Any:
        self._record("StopTransaction", payload)
        return result.StopTransaction()

    @on(Action.meter_values)  # type: ignore[untyped-decorator]
    def on_meter_values(self, **payload: Any) -> Any:
        self._record("MeterValues", payload)
        return result.MeterValues()

    @on(Action.diagnostics_status_notification)  # type: ignore[untyped-decorator]
    def on_diagnostics(self, **payload: Any) -> Any:
        self._record("DiagnosticsStatusNotification", payload)
        return result.DiagnosticsStatusNotification()

    @on(Action.firmware_status_notification)  # type: ignore[untyped-decorator]
    def on_firmware(self, **payload: Any) -> Any:
        self._record("FirmwareStatusNotification", payload)
        return result.FirmwareStatusNotification()


@dataclass
class Harness:
    inbox: Inbox
    connections: list[CentralSystem]
    chargers: list[SimulatedChargePoint]

    @property
    def cs(self) -> CentralSystem:
        """The central system's side of the current connection."""
        return self.connections[-1]

    @property
    def sim(self) -> SimulatedChargePoint:
        return self.chargers[-1]

    async def send(self, payload: Any) -> Any:
        return await asyncio.wait_for(self.cs.call(payload, suppress=False), WAIT)

    async def start(self, id_tag: str = "TAG-1", connector_id: int = 1) -> int:
        """A RemoteStart that goes through; the transaction id."""
        answer = await self.send(
            call.RemoteStartTransaction(id_tag=id_tag, connector_id=connector_id)
        )
        assert answer.status == "Accepted"
        started = await self.inbox.expect("StartTransaction", connector_id=connector_id)
        await self.inbox.expect("StatusNotification", connector_id=connector_id, status="Charging")
        return int(started["_transaction_id"])


@contextlib.asynccontextmanager
async def simulator(
    connectors: int = 1, meter_interval: float = 60.0, timings: SimTimings = FAST
) -> AsyncIterator[Harness]:
    """A booted simulator (connectors reported) connected to the library's central system."""
    inbox = Inbox()
    harness = Harness(inbox, [], [])

    async def accept(ws: ServerConnection) -> None:
        cs = CentralSystem("CP-OPS", ws, inbox)
        harness.connections.append(cs)
        with contextlib.suppress(Exception):
            await cs.start()

    async with serve(accept, "127.0.0.1", 0, subprotocols=[Subprotocol("ocpp1.6")]) as server:
        port = server.sockets[0].getsockname()[1]
        halt = asyncio.Event()
        runner = asyncio.create_task(
            run_charge_point(
                f"ws://127.0.0.1:{port}",
                "CP-OPS",
                connectors=connectors,
                meter_interval=meter_interval,
                reconnect=False,  # a reboot reconnects all the same
                stop=halt,
                timings=timings,
                on_connect=harness.chargers.append,
            )
        )
        try:
            await inbox.expect("BootNotification")
            for n in range(1, connectors + 1):
                await inbox.expect("StatusNotification", connector_id=n)
            yield harness
        finally:
            halt.set()
            await asyncio.wait_for(runner, WAIT)


def power(meter_values: dict[str, Any]) -> float:
    for sample in meter_values["meter_value"][0]["sampled_value"]:
        if sample.get("measurand") == "Power.Active.Import":
            return float(sample["value"])
    raise AssertionError(f"no power in {meter_values}")


def tx_profile(limit: float, unit: str = "W", profile_id: int = 1) -> dict[str, Any]:
    return {
        "chargingProfileId": profile_id,
        "stackLevel": 0,
        "chargingProfilePurpose": "TxProfile",
        "chargingProfileKind": "Relative",
        "chargingSchedule": {
            "chargingRateUnit": unit,
            "chargingSchedulePeriod": [{"startPeriod": 0, "limit": limit}],
        },
    }


# --- Core -------------------------------------------------------------------------------------


async def test_change_availability_inoperative_reports_unavailable_and_refuses_starts() -> None:
    """ChangeAvailability Inoperative: Accepted, StatusNotification Unavailable, starts refused."""
    async with simulator() as h:
        answer = await h.send(call.ChangeAvailability(connector_id=1, type="Inoperative"))
        assert answer.status == "Accepted"
        await h.inbox.expect("StatusNotification", connector_id=1, status="Unavailable")
        refused = await h.send(call.RemoteStartTransaction(id_tag="TAG-1", connector_id=1))
        assert refused.status == "Rejected"
        answer = await h.send(call.ChangeAvailability(connector_id=1, type="Operative"))
        assert answer.status == "Accepted"
        await h.inbox.expect("StatusNotification", connector_id=1, status="Available")
        unknown = await h.send(call.ChangeAvailability(connector_id=7, type="Inoperative"))
        assert unknown.status == "Rejected"


async def test_change_availability_is_scheduled_while_a_transaction_runs() -> None:
    """ChangeAvailability during a transaction: Scheduled, applied (Unavailable) when it ends;
    connector 0 covers every connector and idle ones change at once."""
    async with simulator(connectors=2) as h:
        tx = await h.start(connector_id=1)
        answer = await h.send(call.ChangeAvailability(connector_id=0, type="Inoperative"))
        assert answer.status == "Scheduled"
        await h.inbox.expect("StatusNotification", connector_id=2, status="Unavailable")
        stopped = await h.send(call.RemoteStopTransaction(transaction_id=tx))
        assert stopped.status == "Accepted"
        await h.inbox.expect("StopTransaction", transaction_id=tx, reason="Remote")
        await h.inbox.expect("StatusNotification", connector_id=1, status="Unavailable")


async def test_get_configuration_answers_known_and_unknown_keys() -> None:
    """GetConfiguration: every key with readonly flags; asked keys it lacks in unknownKey."""
    async with simulator(connectors=2, meter_interval=15) as h:
        everything = await h.send(call.GetConfiguration())
        keys = {k["key"]: k for k in everything.configuration_key}
        assert keys["NumberOfConnectors"] == {
            "key": "NumberOfConnectors",
            "readonly": True,
            "value": "2",
        }
        assert keys["MeterValueSampleInterval"]["value"] == "15"
        assert keys["HeartbeatInterval"]["value"] == "300"  # from the boot answer
        assert keys["AuthorizeRemoteTxRequests"]["readonly"] is False
        assert "LocalAuthListEnabled" in keys and "SupportedFeatureProfiles" in keys
        some = await h.send(call.GetConfiguration(key=["HeartbeatInterval", "NoSuchKey"]))
        assert [k["key"] for k in some.configuration_key] == ["HeartbeatInterval"]
        assert some.unknown_key == ["NoSuchKey"]


async def test_change_configuration_rejects_readonly_and_bad_values() -> None:
    """ChangeConfiguration: readonly key Rejected, unknown key NotSupported, bad value Rejected,
    a good value Accepted and read back."""
    async with simulator() as h:
        readonly = await h.send(call.ChangeConfiguration(key="NumberOfConnectors", value="4"))
        assert readonly.status == "Rejected"
        unknown = await h.send(call.ChangeConfiguration(key="NoSuchKey", value="1"))
        assert unknown.status == "NotSupported"
        bad = await h.send(call.ChangeConfiguration(key="HeartbeatInterval", value="soon"))
        assert bad.status == "Rejected"
        bad_measurand = await h.send(
            call.ChangeConfiguration(key="MeterValuesSampledData", value="Frequency")
        )
        assert bad_measurand.status == "Rejected"
        good = await h.send(call.ChangeConfiguration(key="LocalPreAuthorize", value="true"))
        assert good.status == "Accepted"
        back = await h.send(call.GetConfiguration(key=["LocalPreAuthorize"]))
        assert back.configuration_key[0]["value"] == "true"


async def test_change_configuration_heartbeat_interval_changes_the_heartbeat() -> None:
    """ChangeConfiguration HeartbeatInterval: the next Heartbeat comes at the new period."""
    async with simulator() as h:
        h.inbox.skip()
        answer = await h.send(call.ChangeConfiguration(key="HeartbeatInterval", value="1"))
        assert answer.status == "Accepted"
        await h.inbox.expect("Heartbeat")  # the boot answer said 300 s; WAIT is 10 s
        await h.inbox.expect("Heartbeat")


async def test_change_configuration_meter_values_settings_change_the_meter() -> None:
    """ChangeConfiguration MeterValueSampleInterval and MeterValuesSampledData: samples start
    at the new period and carry only the chosen measurands."""
    async with simulator(meter_interval=600) as h:
        await h.start()
        answer = await h.send(
            call.ChangeConfiguration(
                key="MeterValuesSampledData",
                value="Energy.Active.Import.Register,Power.Active.Import",
            )
        )
        assert answer.status == "Accepted"
        h.inbox.skip()
        answer = await h.send(call.ChangeConfiguration(key="MeterValueSampleInterval", value="1"))
        assert answer.status == "Accepted"
        sample = await h.inbox.expect("MeterValues")
        measurands = [v["measurand"] for v in sample["meter_value"][0]["sampled_value"]]
        assert measurands == ["Energy.Active.Import.Register", "Power.Active.Import"]


async def test_clear_cache_makes_the_charger_ask_again() -> None:
    """ClearCache: Accepted; a tag cached from an earlier answer is authorized by the central
    system again (LocalPreAuthorize on)."""
    async with simulator() as h:
        assert (
            await h.send(call.ChangeConfiguration(key="LocalPreAuthorize", value="true"))
        ).status == "Accepted"
        assert h.sim.start_local("CACHED")
        await h.inbox.expect("Authorize", id_tag="CACHED")
        started = await h.inbox.expect("StartTransaction", id_tag="CACHED")
        await h.send(call.RemoteStopTransaction(transaction_id=started["_transaction_id"]))
        await h.inbox.expect("StatusNotification", connector_id=1, status="Available")
        h.inbox.skip()
        assert h.sim.start_local("CACHED")
        again = await h.inbox.expect("StartTransaction", id_tag="CACHED")
        assert h.inbox.log.count(("Authorize", {"id_tag": "CACHED"})) == 1  # from the cache
        await h.send(call.RemoteStopTransaction(transaction_id=again["_transaction_id"]))
        await h.inbox.expect("StatusNotification", connector_id=1, status="Available")
        cleared = await h.send(call.ClearCache())
        assert cleared.status == "Accepted"
        assert h.sim.start_local("CACHED")
        await h.inbox.expect("Authorize", id_tag="CACHED")


async def test_data_transfer_knows_its_vendor() -> None:
    """DataTransfer: its own vendor id Accepted (data echoed), unknown message id
    UnknownMessageId, another vendor UnknownVendorId."""
    async with simulator() as h:
        echo = await h.send(
            call.DataTransfer(vendor_id="charging-api", message_id="Echo", data="hi")
        )
        assert (echo.status, echo.data) == ("Accepted", "hi")
        odd = await h.send(call.DataTransfer(vendor_id="charging-api", message_id="Nope"))
        assert odd.status == "UnknownMessageId"
        other = await h.send(call.DataTransfer(vendor_id="com.example"))
        assert other.status == "UnknownVendorId"


async def test_reset_hard_stops_the_transaction_and_boots_again() -> None:
    """Reset Hard: Accepted, StopTransaction reason HardReset, the socket closes, a new
    connection boots and reports the connector Available."""
    async with simulator() as h:
        tx = await h.start()
        answer = await h.send(call.Reset(type="Hard"))
        assert answer.status == "Accepted"
        await h.inbox.expect("StopTransaction", transaction_id=tx, reason="HardReset")
        await h.inbox.expect("BootNotification")
        await h.inbox.expect("StatusNotification", connector_id=1, status="Available")
        assert len(h.connections) == 2


async def test_reset_soft_stops_with_reason_soft_reset() -> None:
    """Reset Soft: StopTransaction reason SoftReset, then a reboot; the energy register goes on."""
    async with simulator() as h:
        tx = await h.start()
        assert (await h.send(call.Reset(type="Soft"))).status == "Accepted"
        stop = await h.inbox.expect("StopTransaction", transaction_id=tx, reason="SoftReset")
        await h.inbox.expect("BootNotification")
        await h.inbox.expect("StatusNotification", connector_id=1, status="Available")
        again = await h.start()
        assert again != tx
        started = [p for a, p in h.inbox.log if a == "StartTransaction"][-1]
        assert started["meter_start"] >= stop["meter_stop"]


async def test_unlock_connector_stops_the_transaction() -> None:
    """UnlockConnector: Unlocked, StopTransaction reason UnlockCommand; an unknown connector
    NotSupported."""
    async with simulator() as h:
        tx = await h.start()
        answer = await h.send(call.UnlockConnector(connector_id=1))
        assert answer.status == "Unlocked"
        await h.inbox.expect("StopTransaction", transaction_id=tx, reason="UnlockCommand")
        await h.inbox.expect("StatusNotification", connector_id=1, status="Available")
        unknown = await h.send(call.UnlockConnector(connector_id=5))
        assert unknown.status == "NotSupported"


# --- Firmware Management ---------------------------------------------------------------------


async def test_get_diagnostics_reports_uploading_then_uploaded() -> None:
    """GetDiagnostics: a file name, then DiagnosticsStatusNotification Uploading, Uploaded."""
    async with simulator() as h:
        answer = await h.send(call.GetDiagnostics(location="ftp://logs.example/upload/"))
        assert answer.file_name and answer.file_name.endswith(".log")
        await h.inbox.expect("DiagnosticsStatusNotification", status="Uploading")
        await h.inbox.expect("DiagnosticsStatusNotification", status="Uploaded")


async def test_update_firmware_installs_and_reboots_with_the_new_version() -> None:
    """UpdateFirmware: Downloading, Downloaded, Installing, Installed, then a reboot whose
    BootNotification carries the new firmwareVersion."""
    async with simulator() as h:
        first = next(p for a, p in h.inbox.log if a == "BootNotification")
        assert first["firmware_version"] == "1.0.0"
        await h.send(
            call.UpdateFirmware(
                location="https://fw.example/sim-2.0.0.bin", retrieve_date=iso(datetime.now(UTC))
            )
        )
        for status in ("Downloading", "Downloaded", "Installing", "Installed"):
            await h.inbox.expect("FirmwareStatusNotification", status=status)
        boot = await h.inbox.expect("BootNotification")
        assert boot["firmware_version"] == "sim-2.0.0"


async def test_update_firmware_from_a_location_it_cannot_fetch_fails_the_download() -> None:
    """UpdateFirmware with an unusable location: Downloading, DownloadFailed, no reboot."""
    async with simulator() as h:
        await h.send(
            call.UpdateFirmware(location="gopher://fw/x.bin", retrieve_date=iso(datetime.now(UTC)))
        )
        await h.inbox.expect("FirmwareStatusNotification", status="Downloading")
        await h.inbox.expect("FirmwareStatusNotification", status="DownloadFailed")
        assert len(h.connections) == 1


# --- Local Auth List Management -------------------------------------------------------------


async def test_send_local_list_and_get_local_list_version() -> None:
    """SendLocalList Full/Differential keep the version; a differential that is not newer gets
    VersionMismatch; GetLocalListVersion reads it."""
    async with simulator() as h:
        assert (await h.send(call.GetLocalListVersion())).list_version == 0
        full = await h.send(
            call.SendLocalList(
                list_version=3,
                update_type="Full",
                local_authorization_list=[
                    {"idTag": "LOCAL-1", "idTagInfo": {"status": "Accepted"}},
                    {"idTag": "LOCAL-2", "idTagInfo": {"status": "Blocked"}},
                ],
            )
        )
        assert full.status == "Accepted"
        assert (await h.send(call.GetLocalListVersion())).list_version == 3
        stale = await h.send(
            call.SendLocalList(
                list_version=3, update_type="Differential", local_authorization_list=[]
            )
        )
        assert stale.status == "VersionMismatch"
        diff = await h.send(
            call.SendLocalList(
                list_version=4,
                update_type="Differential",
                local_authorization_list=[{"idTag": "LOCAL-2"}],
            )
        )
        assert diff.status == "Accepted"
        assert (await h.send(call.GetLocalListVersion())).list_version == 4
        assert set(h.sim.memory.local_list.entries) == {"LOCAL-1"}


async def test_send_local_list_authorizes_locally_with_local_pre_authorize() -> None:
    """A tag on the local list starts without an Authorize when LocalPreAuthorize is on."""
    async with simulator() as h:
        await h.send(
            call.SendLocalList(
                list_version=1,
                update_type="Full",
                local_authorization_list=[
                    {"idTag": "LOCAL-1", "idTagInfo": {"status": "Accepted"}}
                ],
            )
        )
        await h.send(call.ChangeConfiguration(key="LocalPreAuthorize", value="true"))
        mark = len(h.inbox.log)
        assert h.sim.start_local("LOCAL-1")
        await h.inbox.expect("StartTransaction", id_tag="LOCAL-1")
        assert "Authorize" not in [action for action, _ in h.inbox.log[mark:]]


async def test_send_local_list_not_supported_when_disabled() -> None:
    """SendLocalList with LocalAuthListEnabled false: NotSupported; the version reads -1."""
    async with simulator() as h:
        await h.send(call.ChangeConfiguration(key="LocalAuthListEnabled", value="false"))
        answer = await h.send(call.SendLocalList(list_version=1, update_type="Full"))
        assert answer.status == "NotSupported"
        assert (await h.send(call.GetLocalListVersion())).list_version == -1


# --- Reservation ------------------------------------------------------------------------------


async def test_reserve_now_holds_the_connector_for_its_tag() -> None:
    """ReserveNow: Accepted and Reserved; another tag is refused, the reserving tag starts with
    the reservationId; a reserved or charging connector answers Occupied."""
    async with simulator(connectors=2) as h:
        expiry = iso(datetime.now(UTC) + timedelta(minutes=5))
        answer = await h.send(
            call.ReserveNow(connector_id=1, expiry_date=expiry, id_tag="HOLDER", reservation_id=7)
        )
        assert answer.status == "Accepted"
        await h.inbox.expect("StatusNotification", connector_id=1, status="Reserved")
        other = await h.send(
            call.ReserveNow(connector_id=1, expiry_date=expiry, id_tag="OTHER", reservation_id=8)
        )
        assert other.status == "Occupied"
        refused = await h.send(call.RemoteStartTransaction(id_tag="OTHER", connector_id=1))
        assert refused.status == "Rejected"
        assert not h.sim.start_local("OTHER", 1)
        accepted = await h.send(call.RemoteStartTransaction(id_tag="HOLDER"))
        assert accepted.status == "Accepted"
        started = await h.inbox.expect("StartTransaction", id_tag="HOLDER")
        assert (started["connector_id"], started["reservation_id"]) == (1, 7)
        await h.inbox.expect("StatusNotification", connector_id=1, status="Charging")
        busy = await h.send(
            call.ReserveNow(connector_id=1, expiry_date=expiry, id_tag="OTHER", reservation_id=9)
        )
        assert busy.status == "Occupied"


async def test_reserve_now_then_the_holder_presents_a_card() -> None:
    """ReserveNow, then a local start by the reserving tag: its StartTransaction carries the
    reservationId and the reservation is used up."""
    async with simulator() as h:
        expiry = iso(datetime.now(UTC) + timedelta(minutes=5))
        await h.send(
            call.ReserveNow(connector_id=1, expiry_date=expiry, id_tag="CARD", reservation_id=11)
        )
        await h.inbox.expect("StatusNotification", connector_id=1, status="Reserved")
        assert h.sim.start_local("CARD")
        started = await h.inbox.expect("StartTransaction", id_tag="CARD")
        assert started["reservation_id"] == 11
        assert (await h.send(call.CancelReservation(reservation_id=11))).status == "Rejected"


async def test_reserve_now_refuses_unavailable_and_unknown_connectors() -> None:
    """ReserveNow: Unavailable on an inoperative connector, Rejected for connector 0, an unknown
    connector or an expiry in the past."""
    async with simulator() as h:
        expiry = iso(datetime.now(UTC) + timedelta(minutes=5))
        await h.send(call.ChangeAvailability(connector_id=1, type="Inoperative"))
        down = await h.send(
            call.ReserveNow(connector_id=1, expiry_date=expiry, id_tag="T", reservation_id=1)
        )
        assert down.status == "Unavailable"
        for connector_id, when in ((0, expiry), (4, expiry)):
            answer = await h.send(
                call.ReserveNow(
                    connector_id=connector_id, expiry_date=when, id_tag="T", reservation_id=1
                )
            )
            assert answer.status == "Rejected"
        await h.send(call.ChangeAvailability(connector_id=1, type="Operative"))
        past = iso(datetime.now(UTC) - timedelta(minutes=1))
        late = await h.send(
            call.ReserveNow(connector_id=1, expiry_date=past, id_tag="T", reservation_id=1)
        )
        assert late.status == "Rejected"


async def test_reserve_now_expiry_frees_the_connector() -> None:
    """ReserveNow: when the reservation expires the connector reports Available again."""
    async with simulator() as h:
        expiry = iso(datetime.now(UTC) + timedelta(seconds=2))
        answer = await h.send(
            call.ReserveNow(connector_id=1, expiry_date=expiry, id_tag="HOLDER", reservation_id=3)
        )
        assert answer.status == "Accepted"
        await h.inbox.expect("StatusNotification", connector_id=1, status="Reserved")
        await h.inbox.expect("StatusNotification", connector_id=1, status="Available")
        assert (await h.send(call.RemoteStartTransaction(id_tag="ANY"))).status == "Accepted"


async def test_cancel_reservation_frees_the_connector() -> None:
    """CancelReservation: Accepted and Available; an unknown reservation id Rejected."""
    async with simulator() as h:
        expiry = iso(datetime.now(UTC) + timedelta(minutes=5))
        await h.send(
            call.ReserveNow(connector_id=1, expiry_date=expiry, id_tag="HOLDER", reservation_id=5)
        )
        await h.inbox.expect("StatusNotification", connector_id=1, status="Reserved")
        assert (await h.send(call.CancelReservation(reservation_id=5))).status == "Accepted"
        await h.inbox.expect("StatusNotification", connector_id=1, status="Available")
        assert (await h.send(call.CancelReservation(reservation_id=5))).status == "Rejected"


# --- Smart Charging -----------------------------------------------------------------------------


async def test_set_charging_profile_lowers_the_power_in_meter_values() -> None:
    """SetChargingProfile TxProfile 2000 W: the MeterValues that follow report at most 2000 W;
    ClearChargingProfile lifts it (and a second clear finds nothing: Unknown)."""
    async with simulator(meter_interval=0.2) as h:
        await h.start()
        assert power(await h.inbox.expect("MeterValues")) > 6000  # 32 A at about 230 V
        answer = await h.send(
            call.SetChargingProfile(connector_id=1, cs_charging_profiles=tx_profile(2000))
        )
        assert answer.status == "Accepted"
        h.inbox.skip()
        await h.inbox.expect("MeterValues")  # may have been sampled before the answer
        for _ in range(3):
            assert power(await h.inbox.expect("MeterValues")) <= 2000
        cleared = await h.send(call.ClearChargingProfile(id=1))
        assert cleared.status == "Accepted"
        h.inbox.skip()
        await h.inbox.expect("MeterValues", where=lambda p: power(p) > 6000)
        assert (await h.send(call.ClearChargingProfile(id=1))).status == "Unknown"


async def test_remote_start_transaction_with_a_charging_profile_limits_the_charge() -> None:
    """RemoteStartTransaction with a chargingProfile: the transaction is held under it from the
    first MeterValues on."""
    async with simulator(meter_interval=0.2) as h:
        answer = await h.send(
            call.RemoteStartTransaction(
                id_tag="TAG-1", connector_id=1, charging_profile=tx_profile(16, "A", profile_id=4)
            )
        )
        assert answer.status == "Accepted"
        await h.inbox.expect("StatusNotification", connector_id=1, status="Charging")
        for _ in range(3):
            assert power(await h.inbox.expect("MeterValues")) <= 16 * 230
        schedule = await h.send(call.GetCompositeSchedule(connector_id=1, duration=60))
        assert float(schedule.charging_schedule["charging_schedule_period"][0]["limit"]) == 16.0


async def test_set_charging_profile_follows_the_installation_rules() -> None:
    """SetChargingProfile: a TxProfile without a transaction and a ChargePointMaxProfile on a
    connector are Rejected."""
    async with simulator() as h:
        no_tx = await h.send(
            call.SetChargingProfile(connector_id=1, cs_charging_profiles=tx_profile(10, "A"))
        )
        assert no_tx.status == "Rejected"
        cp_max = {**tx_profile(10, "A"), "chargingProfilePurpose": "ChargePointMaxProfile"}
        cp_max["chargingProfileKind"] = "Absolute"
        on_connector = await h.send(
            call.SetChargingProfile(connector_id=1, cs_charging_profiles=cp_max)
        )
        assert on_connector.status == "Rejected"
        on_zero = await h.send(call.SetChargingProfile(connector_id=0, cs_charging_profiles=cp_max))
        assert on_zero.status == "Accepted"


async def test_get_composite_schedule_combines_stack_levels_and_the_charge_point_limit() -> None:
    """GetCompositeSchedule: the higher stack level wins while it lasts, the lower one after;
    the ChargePointMaxProfile caps both; answered in the unit asked for."""
    async with simulator() as h:
        now = iso(datetime.now(UTC))

        def default(profile_id: int, level: int, limit: float, duration: int | None) -> Any:
            schedule: dict[str, Any] = {
                "chargingRateUnit": "A",
                "startSchedule": now,
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": limit}],
            }
            if duration is not None:
                schedule["duration"] = duration
            return {
                "chargingProfileId": profile_id,
                "stackLevel": level,
                "chargingProfilePurpose": "TxDefaultProfile",
                "chargingProfileKind": "Absolute",
                "chargingSchedule": schedule,
            }

        for profile in (default(1, 0, 20, None), default(2, 1, 10, 600)):
            answer = await h.send(
                call.SetChargingProfile(connector_id=0, cs_charging_profiles=profile)
            )
            assert answer.status == "Accepted"
        cp_max = {
            "chargingProfileId": 3,
            "stackLevel": 0,
            "chargingProfilePurpose": "ChargePointMaxProfile",
            "chargingProfileKind": "Absolute",
            "chargingSchedule": {
                "chargingRateUnit": "W",
                "startSchedule": now,
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 3680}],
            },
        }
        await h.send(call.SetChargingProfile(connector_id=0, cs_charging_profiles=cp_max))
        answer = await h.send(call.GetCompositeSchedule(connector_id=1, duration=3600))
        assert answer.status == "Accepted" and answer.connector_id == 1
        periods = answer.charging_schedule["charging_schedule_period"]
        assert len(periods) == 2
        assert (periods[0]["start_period"], float(periods[0]["limit"])) == (0, 10.0)
        assert 590 <= periods[1]["start_period"] <= 600 and float(periods[1]["limit"]) == 16.0
        in_watts = await h.send(
            call.GetCompositeSchedule(connector_id=1, duration=60, charging_rate_unit="W")
        )
        assert in_watts.charging_schedule["charging_rate_unit"] == "W"
        assert float(in_watts.charging_schedule["charging_schedule_period"][0]["limit"]) == 2300.0
        unknown = await h.send(call.GetCompositeSchedule(connector_id=9, duration=60))
        assert unknown.status == "Rejected"
        cleared = await h.send(
            call.ClearChargingProfile(charging_profile_purpose="TxDefaultProfile")
        )
        assert cleared.status == "Accepted"
        capped = await h.send(call.GetCompositeSchedule(connector_id=1, duration=60))
        assert float(capped.charging_schedule["charging_schedule_period"][0]["limit"]) == 16.0


# --- Remote Trigger ------------------------------------------------------------------------------


async def test_trigger_message_sends_each_of_the_six_messages() -> None:
    """TriggerMessage: Accepted, then the asked message, for each of the six; an unknown
    connector Rejected."""
    async with simulator() as h:
        expected: dict[str, dict[str, Any]] = {
            "BootNotification": {},
            "Heartbeat": {},
            "DiagnosticsStatusNotification": {"status": "Idle"},
            "FirmwareStatusNotification": {"status": "Idle"},
            "StatusNotification": {"connector_id": 1, "status": "Available"},
            "MeterValues": {"connector_id": 1},
        }
        for message, fields in expected.items():
            h.inbox.skip()
            answer = await h.send(call.TriggerMessage(requested_message=message, connector_id=1))
            assert answer.status == "Accepted", message
            payload = await h.inbox.expect(message, **fields)
            if message == "MeterValues":
                assert payload["meter_value"][0]["sampled_value"][0]["context"] == "Trigger"
        refused = await h.send(
            call.TriggerMessage(requested_message="StatusNotification", connector_id=3)
        )
        assert refused.status == "Rejected"
