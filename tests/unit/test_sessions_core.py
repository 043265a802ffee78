"""Session features on the core alone: limits, snapshot, events, receipts, history (manual clock)."""

from __future__ import annotations

import asyncio
import csv
import io
from decimal import Decimal
from typing import Any

import pytest

from charging_api.bus.memory import MemoryBus
from charging_api.domain.charging import ChargingService
from charging_api.domain.events import (
    ChargePointConnectionChanged,
    DomainEvent,
    MeterValuesReceived,
    SessionNotice,
    SessionUpdated,
)
from charging_api.domain.models import IdTag, MeterSample, Principal, Role
from charging_api.domain.profiles import ChargingProfiles
from charging_api.domain.sessions import Limits, SessionPolicy, SessionService, history_csv
from charging_api.errors import Forbidden, ValidationFailed
from tests.fakes import FakeGateway, ManualClock, MemoryStore

ALICE = Principal("alice", id_tags=frozenset({"TAG-A"}))
BOB = Principal("bob")
ADMIN = Principal("ops", Role.ADMIN)
TARIFF: dict[str, Any] = {
    "id": "std",
    "currency": "EUR",
    "vatPercent": "20",
    "elements": [
        {
            "priceComponents": [
                {"type": "ENERGY", "price": "0.40"},
                {"type": "FLAT", "price": "0.50"},
                {"type": "PARKING_TIME", "price": "12"},
            ]
        }
    ],
}


class World:
    def __init__(self, store: MemoryStore | None = None) -> None:
        self.store = store or MemoryStore()
        self.gateway = FakeGateway()
        self.bus = MemoryBus()
        self.clock = ManualClock()
        self.service = ChargingService(self.store, self.gateway, self.bus, self.clock)
        self.sessions = SessionService(
            self.store, self.gateway, self.bus, self.clock, SessionPolicy(preparing_threshold=60)
        )
        self.service.sessions = self.sessions
        self.events: list[DomainEvent] = []
        self.bus.subscribe(self.sessions.on_event)
        self.bus.subscribe(self.events.append)

    async def load(self) -> None:
        await self.service.load()
        await self.sessions.load()

    async def started(self, limits: Limits | None = None, meter_start_wh: int = 10_000) -> int:
        await self.store.add_charge_point("CP1", None)
        await self.store.put_id_tag(IdTag("TAG-A", "alice"))
        self.gateway.online.add("CP1")
        task = asyncio.create_task(self.service.start(ALICE, "CP1", 1))
        _, action, payload = await self.gateway.calls.get()
        assert action == "RemoteStartTransaction"
        tx_id, _ = await self.service.on_start_transaction(
            "CP1", 1, str(payload["idTag"]), meter_start_wh, self.clock.now()
        )
        await task
        if limits is not None:
            await self.sessions.set_limits(ALICE, tx_id, limits)
        return tx_id

    async def meter(
        self,
        tx_id: int,
        register_kwh: float,
        seconds: float = 60,
        power_kw: float | None = None,
        state_of_charge: float | None = None,
    ) -> None:
        self.clock.advance(seconds)
        sample = MeterSample(
            self.clock.now(),
            energy_import_kwh=register_kwh,
            power_kw=power_kw,
            state_of_charge=state_of_charge,
        )
        await self.service.on_meter_values("CP1", 1, tx_id, [sample])

    async def settled(self) -> None:
        await self.sessions.drain()

    def notices(self, kind: str | None = None) -> list[SessionNotice]:
        return [e for e in self.events if isinstance(e, SessionNotice) and kind in (None, e.kind)]

    async def stops(self) -> list[dict[str, object]]:
        await self.sessions.drain()
        out = []
        while not self.gateway.calls.empty():
            _, action, payload = self.gateway.calls.get_nowait()
            if action == "RemoteStopTransaction":
                out.append(payload)
        return out


async def test_meter_push_carries_session_energy_not_the_register() -> None:
    """meter_values_update carries session kWh (register - meterStart), power, cost and provenance."""
    world = World()
    await world.store.put_document("tariff", "std", TARIFF)
    await world.store.put_document("tariff_assignment", "default", {"tariffId": "std"})
    tx = await world.started(Limits(energy_kwh=10))
    await world.meter(tx, 12.0, power_kw=7.2)
    pushes = [e for e in world.events if isinstance(e, MeterValuesReceived)]
    session = pushes[-1].session
    assert session is not None
    assert session["energyKWh"] == 2.0
    assert session["powerKw"] == 7.2
    assert session["provenance"]["registerKWh"] == 12.0
    assert session["cost"] == {"currency": "EUR", "total": "1.56"}  # (0.5 + 0.8) * 1.2
    assert session["etaTarget"] == "energyKWh"
    assert session["elapsedSeconds"] == 60


async def test_energy_limit_sends_one_remote_stop_and_names_it_in_the_receipt() -> None:
    """Reaching energyKWh sends RemoteStop once; the receipt says which limit stopped it."""
    world = World()
    tx = await world.started(Limits(energy_kwh=1.5, duration_minutes=600))
    await world.meter(tx, 11.0)
    assert await world.stops() == []
    await world.meter(tx, 11.6)
    assert await world.stops() == [{"transactionId": tx}]
    await world.meter(tx, 11.7)
    assert await world.stops() == []  # once
    assert [n.data for n in world.notices("limit_reached")] == [{"limit": "energyKWh"}]
    await world.service.on_stop_transaction("CP1", tx, 11_700, world.clock.now(), "Remote", None)
    await world.settled()
    ended = world.notices("ended")[-1].data["receipt"]
    assert ended["limitReached"] == "energyKWh"
    assert ended["appStopReason"] == "Limit:energyKWh"
    assert ended["energyKWh"] == pytest.approx(1.7)
    got = await world.sessions.get_receipt(ALICE, tx)
    assert got["receipt"] == ended
    assert got["cdr"]["total_energy"] == pytest.approx(1.7)


async def test_duration_limit_fires_on_the_tick_without_samples() -> None:
    """A duration limit stops the session even when the charger sends no meter values."""
    world = World()
    tx = await world.started(Limits(duration_minutes=30))
    world.clock.advance(29 * 60)
    await world.sessions.tick()
    assert await world.stops() == []
    world.clock.advance(60)
    await world.sessions.tick()
    assert await world.stops() == [{"transactionId": tx}]


async def test_soc_limit_before_any_soc_is_accepted_but_not_enforced_yet() -> None:
    """A SoC limit on a charger that never sent SoC says socEnforced false, then stops at the SoC."""
    world = World()
    tx = await world.started()
    applied = await world.sessions.set_limits(ALICE, tx, Limits(soc=80))
    assert applied["socEnforced"] is False
    await world.meter(tx, 11.0)
    assert await world.stops() == []
    await world.meter(tx, 12.0, state_of_charge=79)
    assert await world.stops() == []
    await world.meter(tx, 13.0, state_of_charge=80)
    assert await world.stops() == [{"transactionId": tx}]


async def test_cost_limit_uses_the_frozen_tariff() -> None:
    """A cost limit stops at the price; changing the tariff mid-session changes nothing."""
    world = World()
    await world.store.put_document("tariff", "std", TARIFF)
    await world.store.put_document("tariff_assignment", "default", {"tariffId": "std"})
    tx = await world.started(Limits(cost=Decimal(5)))
    expensive = {**TARIFF, "elements": [{"priceComponents": [{"type": "ENERGY", "price": "9"}]}]}
    await world.sessions.put_tariff(ADMIN, expensive)
    await world.meter(tx, 15.0)  # 5 kWh: (0.5 + 2.0) * 1.2 = 3.00
    assert await world.stops() == []
    await world.meter(tx, 20.0)  # 10 kWh: (0.5 + 4.0) * 1.2 = 5.40
    assert await world.stops() == [{"transactionId": tx}]


async def test_limits_survive_a_restart() -> None:
    """Limits and energy so far are rebuilt from storage: the limit still stops the session."""
    world = World()
    tx = await world.started(Limits(energy_kwh=2))
    await world.meter(tx, 11.5)
    again = World(world.store)
    again.clock = world.clock
    again.sessions._clock = world.clock  # same moment after the restart
    again.gateway.online.add("CP1")
    await again.load()
    await again.meter(tx, 12.1)
    assert await again.stops() == [{"transactionId": tx}]


async def test_session_update_is_throttled() -> None:
    """session_update goes out at most once per update interval however fast samples come."""
    world = World()
    tx = await world.started()
    for register in (10.1, 10.2, 10.3):
        await world.meter(tx, register, seconds=1)
    await world.meter(tx, 10.4, seconds=5)
    updates = [e for e in world.events if isinstance(e, SessionUpdated)]
    assert [u.session["energyKWh"] for u in updates] == [pytest.approx(0.1), pytest.approx(0.4)]


async def test_events_reach_the_owner() -> None:
    """Suspended by the EV at ~0 kW, by the charger, faulted, offline and back are told to the owner."""
    world = World()
    tx = await world.started()
    await world.meter(tx, 10.0, power_kw=0.0)
    for status in ("SuspendedEV", "Charging", "SuspendedEVSE", "Faulted"):
        await world.service.on_status("CP1", 1, status, "NoError", world.clock.now())
    await world.bus.publish(ChargePointConnectionChanged("CP1", False, world.clock.now()))
    world.clock.advance(30)
    await world.bus.publish(ChargePointConnectionChanged("CP1", True, world.clock.now()))
    kinds = [n.kind for n in world.notices() if n.transaction_id == tx]
    assert kinds == [
        "started", "suspended_ev", "resumed", "suspended_evse", "fault", "offline", "online"
    ]  # fmt: skip
    assert all(n.user_id == "alice" for n in world.notices())
    assert world.notices("online")[0].data == {"offlineSeconds": 30}


async def test_plugged_in_but_not_started_after_the_threshold() -> None:
    """Preparing longer than the threshold without a transaction tells the follower once."""
    world = World()
    await world.service.on_status("CP1", 2, "Preparing", "NoError", world.clock.now())
    world.clock.advance(59)
    await world.sessions.tick()
    assert world.notices("not_started") == []
    world.clock.advance(1)
    await world.sessions.tick()
    await world.sessions.tick()
    assert len(world.notices("not_started")) == 1


async def test_receipt_sums_match_an_independent_computation() -> None:
    """The receipt's energy, idle time and cost equal a by-hand computation from the samples."""
    world = World()
    await world.store.put_document("tariff", "std", TARIFF)
    await world.store.put_document("tariff_assignment", "user:alice", {"tariffId": "std"})
    tx = await world.started()
    registers = [10.5, 11.2, 11.2, 11.2, 12.0]  # two idle minutes in the middle
    for register in registers:
        await world.meter(tx, register)
    await world.service.on_stop_transaction("CP1", tx, 12_000, world.clock.now(), "Local", None)
    receipt = (await world.sessions.get_receipt(ALICE, tx))["receipt"]
    energy = registers[-1] - 10.0
    idle_hours = Decimal(2) / 60
    excl = Decimal("0.50") + Decimal(repr(energy)) * Decimal("0.40") + idle_hours * 12
    excl = excl.quantize(Decimal("0.01"))
    assert receipt["energyKWh"] == pytest.approx(energy)
    assert receipt["idleSeconds"] == 120
    assert receipt["chargingSeconds"] == 180
    assert Decimal(receipt["cost"]["exclVat"]) == excl
    assert Decimal(receipt["cost"]["total"]) == excl + (excl * Decimal("0.2")).quantize(
        Decimal("0.01")
    )
    assert receipt["meterStartWh"] == 10_000 and receipt["meterStopWh"] == 12_000


async def test_history_filters_pages_aggregates_and_csv() -> None:
    """History pages newest first, filters by charge point, sums per month; CSV parses back."""
    world = World()
    ids = []
    for _ in range(3):
        tx = await world.started()
        await world.meter(tx, 11.0)
        await world.service.on_stop_transaction("CP1", tx, 11_000, world.clock.now(), None, None)
        ids.append(tx)
    found = await world.sessions.history(ALICE, limit=2)
    assert found["total"] == 3
    assert [row["transactionId"] for row in found["sessions"]] == ids[::-1][:2]
    assert found["months"][0]["energyKWh"] == pytest.approx(3.0)
    assert (await world.sessions.history(ALICE, charge_point_id="CP9"))["total"] == 0
    rows = list(csv.DictReader(io.StringIO(history_csv(found["sessions"]))))
    assert [int(r["transactionId"]) for r in rows] == ids[::-1][:2]
    assert rows[0]["energyKWh"] == "1.0"
    with pytest.raises(Forbidden):
        await world.sessions.history(BOB, user_id="alice")
    assert (await world.sessions.history(ADMIN))["total"] == 3


async def test_bad_limits_and_tariff_admin_rules() -> None:
    """Out-of-range limits are refused; only admins manage tariffs; unknown tariffs cannot be assigned."""
    world = World()
    tx = await world.started()
    with pytest.raises(ValidationFailed):
        await world.sessions.set_limits(ALICE, tx, Limits(soc=120))
    with pytest.raises(Forbidden):
        await world.sessions.put_tariff(ALICE, TARIFF)
    with pytest.raises(ValidationFailed):
        await world.sessions.assign_tariff(ADMIN, "chargePoint:CP1", "missing")
    await world.sessions.put_tariff(ADMIN, TARIFF)
    await world.sessions.assign_tariff(ADMIN, "chargePoint:CP1", "std")
    listed = await world.sessions.tariffs(ADMIN)
    assert listed["assignments"] == {"chargePoint:CP1": "std"}
    assert (await world.sessions.tariff_for("CP1", "alice")) is not None


async def test_tariff_precedence_user_then_group_then_charge_point_then_default() -> None:
    """A user's own tariff beats their groups' (the first group by name), a group's beats the
    charge point's, the charge point's beats the default; a deleted tariff is passed over."""
    world = World()
    for tariff_id in ("d", "cp", "g-a", "g-b", "u"):
        await world.sessions.put_tariff(ADMIN, {**TARIFF, "id": tariff_id})
    for scope, tariff_id in (
        ("default", "d"),
        ("chargePoint:CP1", "cp"),
        ("group:a-team", "g-a"),
        ("group:b-team", "g-b"),
        ("user:alice", "u"),
    ):
        await world.sessions.assign_tariff(ADMIN, scope, tariff_id)

    async def chosen(cp: str, user: str | None, *groups: str) -> str | None:
        tariff = await world.sessions.tariff_for(cp, user, frozenset(groups))
        return None if tariff is None else tariff.id

    assert await chosen("CP2", None) == "d"
    assert await chosen("CP1", "bob") == "cp"
    assert await chosen("CP1", "bob", "b-team", "a-team") == "g-a"
    assert await chosen("CP2", "bob", "b-team", "nobody") == "g-b"
    assert await chosen("CP1", "alice", "a-team") == "u"
    await world.sessions.delete_tariff(ADMIN, "u")
    assert await chosen("CP1", "alice", "a-team") == "g-a"
    with pytest.raises(ValidationFailed):
        await world.sessions.assign_tariff(ADMIN, "group:", "d")


async def test_a_tariff_stored_by_another_process_is_used_after_the_next_check() -> None:
    """Tariffs are read from memory at each start; a change another process stored (the CLI)
    is picked up by the tick's version check once ``tariff_refresh_interval`` has passed."""
    world = World()
    await world.load()
    cli = SessionService(world.store, FakeGateway(), MemoryBus(), ManualClock())
    await cli.put_tariff(ADMIN, TARIFF)
    await cli.assign_tariff(ADMIN, "default", "std")
    assert await world.sessions.tariff_for("CP1", "alice") is None  # not re-read per start
    await world.sessions.tick()
    assert await world.sessions.tariff_for("CP1", "alice") is None  # not due yet
    world.clock.advance(world.sessions.policy.tariff_refresh_interval)
    await world.sessions.tick()
    found = await world.sessions.tariff_for("CP1", "alice")
    assert found is not None and found.id == "std"
    tx = await world.started()
    assert world.notices("started")[-1].data["tariff"]["id"] == "std"
    assert tx > 0


async def test_session_records_are_written_behind_the_commands_and_kept_at_shutdown() -> None:
    """No session record is written on the start's or the stop's own path; the receipt is
    served at once all the same, and drain (shutdown) stores every record, so a restarted
    service reads the same receipt."""
    world = World()
    # A delay no test outlasts: nothing but drain can write the records here.
    world.sessions.records.delay = 3600
    await world.store.put_document("tariff", "std", TARIFF)
    await world.store.put_document("tariff_assignment", "default", {"tariffId": "std"})
    tx = await world.started()
    assert await world.store.get_document("session", str(tx)) is None
    await world.meter(tx, 11.0)
    await world.service.on_stop_transaction("CP1", tx, 11_500, world.clock.now(), "Local", None)
    receipt = (await world.sessions.get_receipt(ALICE, tx))["receipt"]
    assert receipt["energyKWh"] == pytest.approx(1.5)
    assert receipt["tariff"]["id"] == "std"
    await world.sessions.drain()
    stored = await world.store.get_document("session", str(tx))
    assert stored is not None and stored["receipt"] == receipt
    again = World(world.store)
    assert (await again.sessions.get_receipt(ALICE, tx))["receipt"] == receipt
    history = await again.sessions.history(ALICE)
    assert history["sessions"][0]["cost"] == receipt["cost"]["total"]


async def test_the_last_tenth_of_an_energy_limit_asks_for_half_the_power_once() -> None:
    """Within the last 10 % of an energyKWh limit a TxProfile at half the measured power goes
    to the charge point (once), the owner hears power_reduced; the stop at the limit is as
    before."""
    world = World()
    profiles = ChargingProfiles(world.store, world.store, world.gateway, world.clock)
    world.sessions.reduce_power = profiles.reduce_session_power
    tx = await world.started(Limits(energy_kwh=2))
    await world.meter(tx, 11.0, power_kw=20.0)
    await world.settled()
    assert world.notices("power_reduced") == []
    await world.meter(tx, 11.85, power_kw=20.0)
    await world.settled()
    _, action, payload = world.gateway.calls.get_nowait()
    assert action == "SetChargingProfile"
    profile: Any = payload["csChargingProfiles"]
    assert profile["transactionId"] == tx and profile["chargingProfilePurpose"] == "TxProfile"
    period = profile["chargingSchedule"]["chargingSchedulePeriod"][0]
    assert (period["limit"], period["numberPhases"]) == (14.5, 3)  # 10 kW on 3 x 230 V
    assert [n.data for n in world.notices("power_reduced")] == [
        {"limitKw": 10.0, "reason": "energyKWh"}
    ]
    await world.meter(tx, 11.95, power_kw=10.0)
    assert await world.stops() == []  # no second profile, no stop yet
    await world.meter(tx, 12.0, power_kw=10.0)
    assert await world.stops() == [{"transactionId": tx}]
