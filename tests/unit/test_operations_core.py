"""OperatorService on the fakes with the manual clock: the generic path, the operations log
and the rules the core keeps (Reset, availability, configuration, DataTransfer, firmware)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from charging_api.domain.charging import ChargingPolicy, ChargingService
from charging_api.domain.events import DataTransferReceived, DeviceStatusChanged
from charging_api.domain.models import (
    Availability,
    ChargePointInfo,
    DeviceJob,
    IdTag,
    IdTagStatus,
    Principal,
    Role,
)
from charging_api.domain.operations import OPERATIONS, SYSTEM_BOOT, OperatorService
from charging_api.errors import (
    ChargePointError,
    ChargePointNotFound,
    ChargePointOffline,
    ChargePointTimeout,
    ConnectorUnavailable,
    Forbidden,
    TransactionRunning,
    UnknownOperation,
)
from tests.fakes import FakeGateway, ManualClock, MemoryStore, RecordingBus

ADMIN = Principal("ops", Role.ADMIN)
ALICE = Principal("alice", id_tags=frozenset({"TAG-A"}))


class World:
    def __init__(self, vendors: frozenset[str] = frozenset()) -> None:
        self.store = MemoryStore()
        self.gateway = FakeGateway()
        self.bus = RecordingBus()
        self.clock = ManualClock()
        self.charging = ChargingService(
            self.store,
            self.gateway,
            self.bus,
            self.clock,
            ChargingPolicy(data_transfer_vendors=vendors),
        )
        self.ops = OperatorService(self.store, self.gateway, self.charging, self.clock)

    async def online(self, cp: str = "CP1") -> None:
        await self.store.add_charge_point(cp, None)
        self.gateway.online.add(cp)

    async def running_transaction(self, cp: str = "CP1", connector: int = 1) -> int:
        await self.store.put_id_tag(IdTag("TAG-X", "someone"))
        tx_id, verdict = await self.charging.on_start_transaction(
            cp, connector, "TAG-X", 0, self.clock.now()
        )
        assert verdict.status is IdTagStatus.ACCEPTED
        return tx_id


def test_the_nineteen_operations_of_ocpp_16() -> None:
    """Every CSMS->CP message of OCPP 1.6's six feature profiles, and nothing else."""
    assert len(OPERATIONS) == 19
    assert {"Reset", "TriggerMessage", "GetCompositeSchedule", "SendLocalList"} <= OPERATIONS
    assert "BootNotification" not in OPERATIONS


async def test_execute_returns_the_answer_and_logs_it_with_its_duration() -> None:
    """An admin's operation reaches the charge point; the answer comes back and the log
    names who, when, what was asked, the answer and how long it took."""
    world = World()
    await world.online()
    world.gateway.replies["UnlockConnector"] = {"status": "Unlocked"}
    original = world.gateway.call

    async def slow_call(cp: str, action: str, payload: dict[str, object]) -> dict[str, object]:
        world.clock.advance(0.25)
        return await original(cp, action, payload)

    world.gateway.call = slow_call  # type: ignore[method-assign,assignment]
    answer = await world.ops.execute(ADMIN, "CP1", "UnlockConnector", {"connectorId": 1})
    assert answer == {"status": "Unlocked"}
    assert world.gateway.calls.get_nowait() == ("CP1", "UnlockConnector", {"connectorId": 1})
    (entry,) = await world.ops.operations_log(ADMIN)
    assert (entry.charge_point_id, entry.action, entry.requested_by) == (
        "CP1",
        "UnlockConnector",
        "ops",
    )
    assert entry.request == {"connectorId": 1} and entry.response == {"status": "Unlocked"}
    assert entry.error_code is None and entry.duration_ms == 250
    assert entry.requested_at == world.clock.now() - timedelta(seconds=0.25)


async def test_only_admins_send_operations_or_read_the_log() -> None:
    """A user token gets FORBIDDEN and nothing reaches the charge point."""
    world = World()
    await world.online()
    with pytest.raises(Forbidden):
        await world.ops.execute(ALICE, "CP1", "Reset", {"type": "Soft"})
    with pytest.raises(Forbidden):
        await world.ops.operations_log(ALICE)
    assert world.gateway.calls.empty()


async def test_failures_are_logged_with_their_code() -> None:
    """Unknown charge point, offline, unknown action, CALLERROR and time-out are each raised
    with their own error and recorded with that code."""
    world = World()
    with pytest.raises(ChargePointNotFound):
        await world.ops.execute(ADMIN, "NOPE", "ClearCache", {})
    await world.store.add_charge_point("CP1", None)
    with pytest.raises(ChargePointOffline):
        await world.ops.execute(ADMIN, "CP1", "ClearCache", {})
    world.gateway.online.add("CP1")
    with pytest.raises(UnknownOperation):
        await world.ops.execute(ADMIN, "CP1", "BootNotification", {})
    world.gateway.replies["ClearCache"] = ChargePointError("x", {"ocppErrorCode": "NotSupported"})
    with pytest.raises(ChargePointError):
        await world.ops.execute(ADMIN, "CP1", "ClearCache", {})
    world.gateway.replies["ClearCache"] = ChargePointTimeout("slow")
    with pytest.raises(ChargePointTimeout):
        await world.ops.execute(ADMIN, "CP1", "ClearCache", {})
    codes = [r.error_code for r in reversed(await world.ops.operations_log(ADMIN))]
    assert codes == [
        "CHARGE_POINT_NOT_FOUND",
        "CHARGE_POINT_OFFLINE",
        "UNKNOWN_OPERATION",
        "CHARGE_POINT_ERROR",
        "CHARGE_POINT_TIMEOUT",
    ]
    only_cp1 = await world.ops.operations_log(ADMIN, charge_point_id="CP1", limit=2)
    assert [r.error_code for r in only_cp1] == ["CHARGE_POINT_TIMEOUT", "CHARGE_POINT_ERROR"]


async def test_reset_refused_while_a_transaction_runs_unless_forced() -> None:
    """Soft and Hard Reset: TRANSACTION_RUNNING (nothing sent) while a transaction is open;
    with force it goes out; with no transaction it goes out."""
    world = World()
    await world.online()
    tx_id = await world.running_transaction()
    for kind in ("Soft", "Hard"):
        with pytest.raises(TransactionRunning) as refused:
            await world.ops.execute(ADMIN, "CP1", "Reset", {"type": kind})
        assert refused.value.details["transactionIds"] == [tx_id]
    assert world.gateway.calls.empty()
    assert await world.ops.execute(ADMIN, "CP1", "Reset", {"type": "Hard"}, force=True) == {
        "status": "Accepted"
    }
    await world.charging.on_stop_transaction("CP1", tx_id, 10, world.clock.now(), None, None)
    await world.ops.execute(ADMIN, "CP1", "Reset", {"type": "Soft"})
    log = await world.ops.operations_log(ADMIN)
    assert [r.error_code for r in reversed(log)] == ["TRANSACTION_RUNNING"] * 2 + [None, None]


async def test_inoperative_connector_refuses_app_starts_without_a_remote_start() -> None:
    """ChangeAvailability Inoperative (Accepted) is stored; an app start there is
    CONNECTOR_UNAVAILABLE and no RemoteStart goes out; Operative again lets it through."""
    world = World()
    await world.online()
    await world.ops.execute(
        ADMIN, "CP1", "ChangeAvailability", {"connectorId": 1, "type": "Inoperative"}
    )
    world.gateway.calls.get_nowait()
    (stored,) = await world.ops.availability_of(ADMIN, "CP1")
    assert stored.wanted is Availability.INOPERATIVE and not stored.scheduled
    with pytest.raises(ConnectorUnavailable):
        await world.charging.start(ALICE, "CP1", 1)
    assert world.gateway.calls.empty()
    with pytest.raises(ConnectorUnavailable):
        await world.ops.execute(
            ADMIN, "CP1", "RemoteStartTransaction", {"connectorId": 1, "idTag": "TAG-A"}
        )
    assert world.gateway.calls.empty()
    await world.ops.execute(
        ADMIN, "CP1", "ChangeAvailability", {"connectorId": 1, "type": "Operative"}
    )
    world.gateway.calls.get_nowait()
    start = asyncio.create_task(world.charging.start(ALICE, "CP1", 1))
    assert (await world.gateway.calls.get())[1] == "RemoteStartTransaction"
    start.cancel()


async def test_whole_charge_point_inoperative_covers_every_connector() -> None:
    """Connector 0 Inoperative makes each connector refuse app starts."""
    world = World()
    await world.online()
    await world.ops.execute(
        ADMIN, "CP1", "ChangeAvailability", {"connectorId": 0, "type": "Inoperative"}
    )
    for connector in (1, 2):
        assert await world.charging.is_unavailable("CP1", connector)


async def test_rejected_availability_change_is_not_stored() -> None:
    """A Rejected ChangeAvailability changes nothing: starts still go ahead."""
    world = World()
    await world.online()
    world.gateway.replies["ChangeAvailability"] = {"status": "Rejected"}
    await world.ops.execute(
        ADMIN, "CP1", "ChangeAvailability", {"connectorId": 1, "type": "Inoperative"}
    )
    assert await world.ops.availability_of(ADMIN, "CP1") == []
    assert not await world.charging.is_unavailable("CP1", 1)


async def test_scheduled_availability_takes_effect_when_the_transaction_ends() -> None:
    """Scheduled: stored as scheduled while the transaction runs; its end marks it in effect."""
    world = World()
    await world.online()
    tx_id = await world.running_transaction()
    world.gateway.replies["ChangeAvailability"] = {"status": "Scheduled"}
    await world.ops.execute(
        ADMIN, "CP1", "ChangeAvailability", {"connectorId": 1, "type": "Inoperative"}
    )
    (scheduled,) = await world.ops.availability_of(ADMIN, "CP1")
    assert scheduled.scheduled
    await world.charging.on_stop_transaction("CP1", tx_id, 10, world.clock.now(), None, None)
    for event in world.bus.events:
        world.ops.on_event(event)
    await world.ops.drain()
    (done,) = await world.ops.availability_of(ADMIN, "CP1")
    assert not done.scheduled and done.wanted is Availability.INOPERATIVE
    with pytest.raises(ConnectorUnavailable):
        await world.charging.start(ALICE, "CP1", 1)


async def test_get_configuration_answer_is_stored_with_readonly() -> None:
    """GetConfiguration's keys, values and readonly flags are kept per charge point."""
    world = World()
    await world.online()
    world.gateway.replies["GetConfiguration"] = {
        "configurationKey": [
            {"key": "HeartbeatInterval", "readonly": False, "value": "300"},
            {"key": "NumberOfConnectors", "readonly": True, "value": "2"},
        ],
        "unknownKey": ["Nope"],
    }
    await world.ops.execute(ADMIN, "CP1", "GetConfiguration", {})
    found = {e.key: e for e in await world.ops.configuration_of(ADMIN, "CP1")}
    assert set(found) == {"HeartbeatInterval", "NumberOfConnectors"}
    assert found["NumberOfConnectors"].readonly and found["HeartbeatInterval"].value == "300"


async def test_wanted_configuration_is_applied_after_every_boot() -> None:
    """A wanted value goes out as ChangeConfiguration after each BootNotification, logged as
    the system's, with the charge point's answer kept."""
    world = World()
    await world.online()
    await world.ops.want_configuration(ADMIN, "CP1", "MeterValueSampleInterval", "15")
    for _ in range(2):
        await world.charging.on_boot("CP1", ChargePointInfo("V", "M"))
        world.ops.on_event(world.bus.events[-1])
        await world.ops.drain()
        _cp, action, payload = world.gateway.calls.get_nowait()
        assert (action, payload) == (
            "ChangeConfiguration",
            {"key": "MeterValueSampleInterval", "value": "15"},
        )
    (entry,) = await world.ops.configuration_of(ADMIN, "CP1")
    assert (entry.value, entry.wanted, entry.applied_status) == ("15", "15", "Accepted")
    log = await world.ops.operations_log(ADMIN)
    assert [r.requested_by for r in log] == [SYSTEM_BOOT, SYSTEM_BOOT]


async def test_rejected_wanted_configuration_keeps_the_answer() -> None:
    """A Rejected ChangeConfiguration after boot keeps Rejected and does not change the value."""
    world = World()
    await world.online()
    await world.ops.want_configuration(ADMIN, "CP1", "MeterValueSampleInterval", "15")
    world.gateway.replies["ChangeConfiguration"] = {"status": "Rejected"}
    await world.ops.apply_wanted_configuration("CP1")
    (entry,) = await world.ops.configuration_of(ADMIN, "CP1")
    assert (entry.value, entry.applied_status) == (None, "Rejected")


async def test_firmware_and_diagnostics_statuses_are_kept_as_history() -> None:
    """Status notifications are stored per job (newest first) and published to admins."""
    world = World()
    for status in ("Downloading", "Downloaded", "Installing", "Installed"):
        await world.charging.on_device_status("CP1", DeviceJob.FIRMWARE, status)
        world.clock.advance(1)
    await world.charging.on_device_status("CP1", DeviceJob.DIAGNOSTICS, "Uploading")
    firmware = await world.ops.device_statuses_of(ADMIN, "CP1", DeviceJob.FIRMWARE)
    assert [s.status for s in firmware] == ["Installed", "Installing", "Downloaded", "Downloading"]
    diagnostics = await world.ops.device_statuses_of(ADMIN, "CP1", DeviceJob.DIAGNOSTICS)
    assert [s.status for s in diagnostics] == ["Uploading"]
    assert sum(isinstance(e, DeviceStatusChanged) for e in world.bus.events) == 5


async def test_data_transfer_vendor_allowlist() -> None:
    """Vendors on the allowlist (any case) are Accepted and published; others UnknownVendorId."""
    world = World(vendors=frozenset({"com.example"}))
    assert await world.charging.on_data_transfer("CP1", "COM.Example", "m1", "{}") == "Accepted"
    assert await world.charging.on_data_transfer("CP1", "org.other", None, None) == (
        "UnknownVendorId"
    )
    published = [e for e in world.bus.events if isinstance(e, DataTransferReceived)]
    assert [(e.vendor_id, e.message_id, e.data) for e in published] == [("COM.Example", "m1", "{}")]
