"""The core alone: ChargingService with in-memory adapters, a manual clock, no sockets."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

import pytest

from charging_api.domain.charging import ChargingPolicy, ChargingService
from charging_api.domain.events import (
    ConnectorStatusChanged,
    MeterValuesReceived,
    TransactionStarted,
    TransactionStopped,
)
from charging_api.domain.models import (
    ClosedBy,
    ConnectorState,
    IdTag,
    IdTagStatus,
    MeterSample,
    Principal,
    Role,
    Transaction,
)
from charging_api.errors import (
    ChargePointNotFound,
    ChargePointOffline,
    ChargePointRejected,
    ChargePointTimeout,
    ConnectorBusy,
    ConnectorNotFound,
    Forbidden,
    NoIdTag,
    TransactionNotActive,
    TransactionNotFound,
    ValidationFailed,
)
from tests.fakes import FakeGateway, ManualClock, MemoryStore, RecordingBus

ALICE = Principal("alice", id_tags=frozenset({"TAG-A"}))
BOB = Principal("bob", id_tags=frozenset({"TAG-B"}))
ADMIN = Principal("ops", Role.ADMIN)


class World:
    def __init__(self, **policy: float) -> None:
        self.store = MemoryStore()
        self.gateway = FakeGateway()
        self.bus = RecordingBus()
        self.clock = ManualClock()
        self.service = ChargingService(
            self.store,
            self.gateway,
            self.bus,
            self.clock,
            ChargingPolicy(**policy),  # type: ignore[arg-type]
        )

    async def online(self, cp: str) -> None:
        await self.store.add_charge_point(cp, None)
        self.gateway.online.add(cp)

    async def started(
        self, principal: Principal = ALICE, cp: str = "CP1", key: str | None = None
    ) -> int:
        """Run a whole remote start: request, RemoteStart, StartTransaction, response."""
        task = asyncio.create_task(self.service.start(principal, cp, 1, request_key=key))
        _, action, payload = await self.gateway.calls.get()
        assert action == "RemoteStartTransaction"
        tx_id, verdict = await self.service.on_start_transaction(
            cp, 1, str(payload["idTag"]), 1000, self.clock.now()
        )
        assert verdict.status is IdTagStatus.ACCEPTED
        outcome = await task
        assert outcome.transaction_id == tx_id
        return tx_id

    async def advance(self, seconds: float) -> None:
        """Move the manual clock and let the core act on every deadline now due."""
        self.clock.advance(seconds)
        await self.service.fire_due_timers()

    async def timed_out_start(self, principal: Principal = ALICE, cp: str = "CP1") -> None:
        """A remote start the charge point accepts and never follows with StartTransaction."""
        task = asyncio.create_task(self.service.start(principal, cp, 1))
        _, action, _ = await self.gateway.calls.get()
        assert action == "RemoteStartTransaction"
        await self.advance(self.service.policy.start_transaction_timeout - 0.5)
        await asyncio.sleep(0)  # let the start run: it must still be waiting
        assert not task.done()
        await self.advance(0.5)
        with pytest.raises(ChargePointTimeout):
            await task


async def test_start_uses_the_token_id_tag_and_registers_it_to_the_user() -> None:
    """The token's idTag is sent in RemoteStart and becomes the user's for Authorize."""
    world = World()
    await world.online("CP1")
    await world.started()
    registered = await world.store.get_id_tag("TAG-A")
    assert registered is not None and registered.user_id == "alice"
    verdict = await world.service.on_authorize("CP1", "TAG-A")
    assert verdict.status is IdTagStatus.ACCEPTED


async def test_foreign_id_tag_and_foreign_user_id_are_forbidden() -> None:
    """A user can neither charge with another user's tag nor act as another user."""
    world = World()
    await world.online("CP1")
    await world.store.put_id_tag(IdTag("TAG-B", "bob"))
    with pytest.raises(Forbidden):
        await world.service.start(ALICE, "CP1", 1, id_tag="TAG-B")
    with pytest.raises(Forbidden):
        await world.service.start(ALICE, "CP1", 1, user_id="bob")
    with pytest.raises(Forbidden):
        await world.service.start(ALICE, "CP1", 1, id_tag="NOT-MINE")
    assert world.gateway.calls.empty()


async def test_user_without_id_tag_gets_no_id_tag() -> None:
    """No claim and nothing registered: NO_ID_TAG, nothing sent to the charge point."""
    world = World()
    await world.online("CP1")
    with pytest.raises(NoIdTag):
        await world.service.start(Principal("carol"), "CP1", 1)
    assert world.gateway.calls.empty()


async def test_registered_tag_is_used_when_the_token_has_none() -> None:
    """A tag registered to the user is the default id tag."""
    world = World()
    await world.online("CP1")
    await world.store.put_id_tag(IdTag("CARD-9", "carol"))
    task = asyncio.create_task(world.service.start(Principal("carol"), "CP1", 1))
    _, _, payload = await world.gateway.calls.get()
    assert payload["idTag"] == "CARD-9"
    task.cancel()


async def test_unknown_and_offline_charge_points() -> None:
    """Unknown id: CHARGE_POINT_NOT_FOUND; known but not connected: CHARGE_POINT_OFFLINE."""
    world = World()
    with pytest.raises(ChargePointNotFound):
        await world.service.start(ALICE, "NOPE", 1)
    await world.store.add_charge_point("CP1", None)
    with pytest.raises(ChargePointOffline):
        await world.service.start(ALICE, "CP1", 1)


async def test_rejected_remote_start_frees_the_connector() -> None:
    """Rejected: CHARGE_POINT_REJECTED, and a new start on the connector is possible."""
    world = World()
    await world.online("CP1")
    world.gateway.answers["RemoteStartTransaction"] = "Rejected"
    with pytest.raises(ChargePointRejected):
        await world.service.start(ALICE, "CP1", 1)
    world.gateway.answers["RemoteStartTransaction"] = "Accepted"
    await world.gateway.calls.get()
    await world.started()


async def test_second_start_on_a_busy_connector_is_refused() -> None:
    """While a start is pending or a transaction runs, another start gets CONNECTOR_BUSY."""
    world = World()
    await world.online("CP1")
    await world.started()
    with pytest.raises(ConnectorBusy):
        await world.service.start(BOB, "CP1", 1)


async def test_missing_start_transaction_times_out_and_a_late_one_is_attached() -> None:
    """No StartTransaction in time: CHARGE_POINT_TIMEOUT; a late one still belongs to the user."""
    world = World(start_transaction_timeout=20)
    await world.online("CP1")
    await world.timed_out_start()
    tx_id, _ = await world.service.on_start_transaction("CP1", 1, "TAG-A", 0, world.clock.now())
    started = [e for e in world.bus.events if isinstance(e, TransactionStarted)]
    assert started[-1].transaction_id == tx_id and started[-1].user_id == "alice"
    assert world.store.transactions[tx_id].user_id == "alice"


async def test_same_request_key_never_starts_twice() -> None:
    """A retried start with the same message id gets the first outcome; one RemoteStart only."""
    world = World()
    await world.online("CP1")
    first = asyncio.create_task(world.service.start(ALICE, "CP1", 1, request_key="m-1"))
    retry = asyncio.create_task(world.service.start(ALICE, "CP1", 1, request_key="m-1"))
    _, _, payload = await world.gateway.calls.get()
    tx_id, _ = await world.service.on_start_transaction(
        "CP1", 1, str(payload["idTag"]), 0, world.clock.now()
    )
    assert (await first).transaction_id == tx_id
    assert (await retry).transaction_id == tx_id
    again = await world.service.start(ALICE, "CP1", 1, request_key="m-1")
    assert again.transaction_id == tx_id
    assert world.gateway.calls.empty()
    assert len(world.store.transactions) == 1


async def test_replayed_start_transaction_gets_the_same_id() -> None:
    """An identical StartTransaction (offline replay) returns the stored transaction id."""
    world = World()
    at = world.clock.now() - timedelta(hours=3)
    first, _ = await world.service.on_start_transaction("CP1", 1, "TAG-X", 500, at)
    second, verdict = await world.service.on_start_transaction("CP1", 1, "TAG-X", 500, at)
    assert first == second
    assert verdict.status is IdTagStatus.INVALID
    assert len(world.store.transactions) == 1


async def test_stop_rules() -> None:
    """Only the owner or an admin stops; unknown and stopped transactions are refused clearly."""
    world = World()
    await world.online("CP1")
    tx_id = await world.started()
    with pytest.raises(TransactionNotFound):
        await world.service.stop(BOB, "CP1", tx_id)
    with pytest.raises(Forbidden):
        await world.service.stop(ALICE, "CP1", tx_id, user_id="bob")
    with pytest.raises(TransactionNotFound):
        await world.service.stop(ALICE, "CP2", tx_id)
    with pytest.raises(TransactionNotFound):
        await world.service.stop(ALICE, None, 999)
    outcome = await world.service.stop(ADMIN, None, tx_id)
    assert outcome.status == "Accepted"
    await world.service.on_stop_transaction("CP1", tx_id, 5000, world.clock.now(), "Remote", None)
    with pytest.raises(TransactionNotActive):
        await world.service.stop(ALICE, "CP1", tx_id)


async def test_stop_transaction_twice_or_unknown_is_acknowledged() -> None:
    """Repeated or unknown StopTransaction: acknowledged, first stop kept, one event only."""
    world = World()
    await world.online("CP1")
    tx_id = await world.started()
    for _ in range(2):
        await world.service.on_stop_transaction("CP1", tx_id, 5000, world.clock.now(), None, None)
    await world.service.on_stop_transaction("CP1", 4242, 1, world.clock.now(), None, None)
    stopped = [e for e in world.bus.events if isinstance(e, TransactionStopped)]
    assert len(stopped) == 1 and stopped[0].energy_kwh == 4.0
    assert world.store.transactions[tx_id].meter_stop_wh == 5000


async def test_another_charge_point_cannot_stop_a_transaction() -> None:
    """CP2's StopTransaction for CP1's transaction changes nothing."""
    world = World()
    await world.online("CP1")
    tx_id = await world.started()
    await world.service.on_stop_transaction("CP2", tx_id, 9, world.clock.now(), None, None)
    assert world.store.transactions[tx_id].active


async def test_old_meter_values_are_stored_not_pushed() -> None:
    """Samples older than the live window are stored; only fresh ones become events."""
    world = World(meter_live_window=60)
    await world.online("CP1")
    tx_id = await world.started()
    old = MeterSample(world.clock.now() - timedelta(minutes=10), energy_import_kwh=1.0)
    fresh = MeterSample(world.clock.now(), energy_import_kwh=2.0)
    await world.service.on_meter_values("CP1", 1, tx_id, [old, fresh])
    pushed = [e for e in world.bus.events if isinstance(e, MeterValuesReceived)]
    assert [e.sample for e in pushed] == [fresh]
    assert pushed[0].user_id == "alice"
    assert [s.sample for s in world.store.samples] == [old, fresh]


async def test_disconnect_reports_offline_to_the_follower_and_keeps_the_transaction() -> None:
    """A dropped charge point: Offline to the owner; the transaction stays open."""
    world = World()
    await world.online("CP1")
    tx_id = await world.started()
    await world.service.on_disconnected("CP1")
    offline = [
        e
        for e in world.bus.events
        if isinstance(e, ConnectorStatusChanged) and e.status == "Offline"
    ]
    assert [(e.user_id, e.transaction_id) for e in offline] == [("alice", tx_id)]
    assert world.store.transactions[tx_id].active


async def test_status_follows_the_user_from_preparing_to_available() -> None:
    """Preparing before the transaction and Available after the stop reach the starter."""
    world = World()
    await world.online("CP1")
    task = asyncio.create_task(world.service.start(ALICE, "CP1", 1))
    await world.gateway.calls.get()
    await world.service.on_status("CP1", 1, "Preparing", "NoError", None)
    tx_id, _ = await world.service.on_start_transaction("CP1", 1, "TAG-A", 0, world.clock.now())
    await task
    await world.service.on_stop_transaction("CP1", tx_id, 10, world.clock.now(), None, None)
    await world.service.on_status("CP1", 1, "Available", "NoError", None)
    await world.service.on_status("CP1", 1, "Preparing", "NoError", None)  # someone else plugs in
    statuses = [
        (e.status, e.user_id) for e in world.bus.events if isinstance(e, ConnectorStatusChanged)
    ]
    assert statuses == [("Preparing", "alice"), ("Available", "alice"), ("Preparing", None)]


async def test_restart_rebuilds_the_live_picture_from_storage() -> None:
    """After a restart, meter values of an open transaction still reach its owner."""
    world = World()
    await world.online("CP1")
    tx_id = await world.started()
    reborn = ChargingService(world.store, world.gateway, world.bus, world.clock)
    await reborn.load()
    await reborn.on_meter_values("CP1", 1, None, [MeterSample(world.clock.now(), 3.0)])
    event = world.bus.events[-1]
    assert isinstance(event, MeterValuesReceived)
    assert (event.transaction_id, event.user_id) == (tx_id, "alice")


async def test_a_reconnecting_charge_point_brings_its_open_transactions_from_storage() -> None:
    """Another process opened the transaction (a gateway that died): the process the charge
    point connects to now adopts it on connection, so its meter values reach the owner, the
    owner can stop it, and the charge point's StopTransaction closes it and tells them."""
    world = World()
    gateway, bus = FakeGateway(), RecordingBus()
    adopting = ChargingPolicy(adopt_on_connect=True)
    here = ChargingService(world.store, gateway, bus, world.clock, adopting)
    await here.load()  # before the other process opened anything
    await world.online("CP1")
    tx_id = await world.started()
    assert here.live_transactions_on("CP1") == {}

    await here.on_connected("CP1")
    assert here.live_transactions_on("CP1") == {1: tx_id}
    await here.on_meter_values("CP1", 1, None, [MeterSample(world.clock.now(), 2.0)])
    metered = [e for e in bus.events if isinstance(e, MeterValuesReceived)]
    assert [(e.transaction_id, e.user_id) for e in metered] == [(tx_id, "alice")]

    gateway.online.add("CP1")
    outcome = await here.stop(ALICE, None, tx_id)
    assert outcome.status == "Accepted"
    assert (await gateway.calls.get())[1] == "RemoteStopTransaction"
    await here.on_stop_transaction("CP1", tx_id, 2000, world.clock.now(), "Remote", None)
    stopped = [e for e in bus.events if isinstance(e, TransactionStopped)]
    assert [(e.transaction_id, e.user_id, e.meter_stop_wh) for e in stopped] == [
        (tx_id, "alice", 2000)
    ]
    assert here.live_transactions_on("CP1") == {}


async def test_a_reconnection_forgets_transactions_closed_elsewhere_without_telling_twice() -> None:
    """A transaction this process still pictures as open was closed by another (an admin's
    close there): on the charge point's next connection it is dropped silently, and the
    charge point's next session on that connector is not taken for a ghost of it."""
    world = World(adopt_on_connect=True)
    await world.online("CP1")
    tx_id = await world.started()
    other = ChargingService(world.store, FakeGateway(), RecordingBus(), world.clock)
    await other.load()
    await other.close_transaction(ADMIN, tx_id)
    told = len(world.bus.events)

    await world.service.on_connected("CP1")
    assert world.service.live_transactions_on("CP1") == {}
    new_id, _ = await world.service.on_start_transaction(
        "CP1", 1, "TAG-A", 5000, world.clock.now() + timedelta(seconds=1)
    )
    after = world.bus.events[told:]
    assert not [e for e in after if isinstance(e, TransactionStopped)]
    assert world.service.live_transactions_on("CP1") == {1: new_id}
    closed = await world.store.get_transaction(tx_id)
    assert closed is not None and closed.closed_by is ClosedBy.ADMIN


async def test_without_adoption_a_connection_reads_nothing_of_storage() -> None:
    """The one-process default: the live picture is storage's, a connection changes nothing."""
    world = World()
    here = ChargingService(world.store, FakeGateway(), RecordingBus(), world.clock)
    await world.online("CP1")
    await world.started()
    await here.on_connected("CP1")
    assert here.live_transactions_on("CP1") == {}


async def test_admission_rules() -> None:
    """Development admits unknown ids; production only registered ones; passwords are checked."""
    from charging_api.domain.access import hash_password

    dev = World(accept_unknown_charge_points=True)
    assert await dev.service.admit("NEW", None)
    prod = World(accept_unknown_charge_points=False)
    assert not await prod.service.admit("NEW", None)
    await prod.store.add_charge_point("REG", hash_password("s3cret"))
    assert await prod.service.admit("REG", "s3cret")
    assert not await prod.service.admit("REG", "wrong")
    assert not await prod.service.admit("REG", None)


async def test_a_timed_out_start_does_not_block_a_new_attempt() -> None:
    """After CHARGE_POINT_TIMEOUT the user can try again at once; the new attempt gets the tx."""
    world = World(start_transaction_timeout=20)
    await world.online("CP1")
    await world.timed_out_start()
    await world.started()


async def test_available_after_a_timed_out_start_frees_the_connector_for_others() -> None:
    """The charge point's connection time-out (Available) ends a timed-out pending start."""
    world = World(start_transaction_timeout=20)
    await world.online("CP1")
    await world.timed_out_start()
    await world.service.on_status("CP1", 1, "Available", "NoError", None)
    await world.started(BOB)


async def test_meter_values_naming_another_charge_points_transaction_reach_nobody() -> None:
    """CP2 cannot file samples under CP1's transaction or push them to CP1's user."""
    world = World()
    await world.online("CP1")
    tx_id = await world.started()
    before = len(world.bus.events)
    await world.service.on_meter_values("CP2", 1, tx_id, [MeterSample(world.clock.now(), 9.0)])
    assert all(
        not (isinstance(e, MeterValuesReceived) and e.user_id == "alice")
        for e in world.bus.events[before:]
    )
    assert await world.store.meter_samples_of(tx_id) == []


async def test_connectors_are_known_from_storage_then_from_new_statuses() -> None:
    """After a restart the reported connectors come from storage; a later report adds one."""
    world = World()
    await world.online("CP1")
    for connector in (0, 1):
        await world.store.set_connector_status(ConnectorState("CP1", connector, "Available"))
    with pytest.raises(ConnectorNotFound):
        await world.service.start(ALICE, "CP1", 2)
    assert world.gateway.calls.empty()
    await world.service.on_status("CP1", 2, "Available", "NoError", None)
    task = asyncio.create_task(world.service.start(ALICE, "CP1", 2))
    _, action, payload = await asyncio.wait_for(world.gateway.calls.get(), 5)
    assert (action, payload["connectorId"]) == ("RemoteStartTransaction", 2)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_a_tag_refused_once_its_expiry_passes_on_the_core_clock() -> None:
    """The same tag starts before its expiryDate and is FORBIDDEN (Expired) after it."""
    world = World()
    await world.online("CP1")
    expiry = world.clock.now() + timedelta(minutes=1)
    await world.store.put_id_tag(IdTag("TAG-A", "alice", expiry=expiry))
    await world.started()
    world.clock.advance(61)
    with pytest.raises(Forbidden) as refused:
        await world.service.start(ALICE, "CP1", 2)
    assert refused.value.details == {"idTag": "TAG-A", "idTagStatus": "Expired"}
    assert (await world.service.on_authorize("CP1", "tag-a")).status is IdTagStatus.EXPIRED


# ------------------------------------------------------------------ ghost sessions (issue 10.2)


def stopped_events(world: World) -> list[TransactionStopped]:
    return [e for e in world.bus.events if isinstance(e, TransactionStopped)]


async def test_new_start_transaction_closes_the_open_one_on_that_connector() -> None:
    """A charge point that forgot its transaction starts another: the old one is closed at the
    last meter reading and its time, reason Other, marked superseded, and its owner is told."""
    world = World()
    await world.online("CP1")
    tx_id = await world.started()
    read_at = world.clock.now() + timedelta(minutes=5)
    await world.service.on_meter_values("CP1", 1, tx_id, [MeterSample(read_at, 2.5)])
    world.clock.advance(3600)  # the reboot
    new_id, _ = await world.service.on_start_transaction(
        "CP1", 1, "CARD-X", 2600, world.clock.now()
    )
    assert new_id != tx_id
    old = world.store.transactions[tx_id]
    assert (old.meter_stop_wh, old.stopped_at, old.stop_reason, old.closed_by) == (
        2500,
        read_at,
        "Other",
        ClosedBy.SUPERSEDED,
    )
    [event] = stopped_events(world)
    assert (event.transaction_id, event.user_id, event.energy_kwh, event.closed_by) == (
        tx_id,
        "alice",
        1.5,
        ClosedBy.SUPERSEDED,
    )
    assert world.store.transactions[new_id].active


async def test_an_older_replayed_start_does_not_close_the_open_transaction() -> None:
    """An offline replay of a session older than the open one leaves the open one alone."""
    world = World()
    await world.online("CP1")
    tx_id = await world.started()
    old_at = world.clock.now() - timedelta(hours=2)
    await world.service.on_start_transaction("CP1", 1, "CARD-X", 10, old_at)
    assert world.store.transactions[tx_id].active
    assert stopped_events(world) == []


async def test_available_without_stop_transaction_closes_it_after_the_grace() -> None:
    """Available and no StopTransaction within STALE_TRANSACTION_GRACE: closed with its own
    reason, the owner told, the connector free; nothing happens a second before the grace."""
    world = World(stale_transaction_grace=120)
    await world.online("CP1")
    tx_id = await world.started()
    await world.service.on_meter_values("CP1", 1, tx_id, [MeterSample(world.clock.now(), 1.7)])
    await world.service.on_status("CP1", 1, "Available", "NoError", None)
    await world.advance(119)
    assert world.store.transactions[tx_id].active
    with pytest.raises(ConnectorBusy):
        await world.service.start(BOB, "CP1", 1)
    await world.advance(1)
    closed = world.store.transactions[tx_id]
    assert (closed.meter_stop_wh, closed.stop_reason, closed.closed_by) == (
        1700,
        "StaleTransaction",
        ClosedBy.CONNECTOR_AVAILABLE,
    )
    [event] = stopped_events(world)
    assert (event.user_id, event.reason) == ("alice", "StaleTransaction")
    await world.started(BOB)  # the connector is free again


async def test_a_session_status_or_named_meter_values_cancel_the_grace() -> None:
    """Charging after Available, or MeterValues naming the transaction, keep it open."""
    world = World(stale_transaction_grace=120)
    await world.online("CP1")
    tx_id = await world.started()
    await world.service.on_status("CP1", 1, "Available", "NoError", None)
    await world.service.on_status("CP1", 1, "Charging", "NoError", None)
    await world.advance(500)
    await world.service.on_status("CP1", 1, "Available", "NoError", None)
    await world.service.on_meter_values("CP1", 1, tx_id, [MeterSample(world.clock.now(), 1.0)])
    await world.advance(500)
    assert world.store.transactions[tx_id].active
    assert stopped_events(world) == []


async def test_late_stop_transaction_corrects_what_the_server_closed() -> None:
    """A StopTransaction after the grace closed it: acknowledged, and its meter, time and
    reason replace ours (the closure mark stays); nobody is told twice."""
    world = World(stale_transaction_grace=120)
    await world.online("CP1")
    tx_id = await world.started()
    await world.service.on_status("CP1", 1, "Available", "NoError", None)
    await world.advance(120)
    stopped_at = world.clock.now() - timedelta(seconds=100)
    await world.service.on_stop_transaction("CP1", tx_id, 4321, stopped_at, "PowerLoss", None)
    fixed = world.store.transactions[tx_id]
    assert (fixed.meter_stop_wh, fixed.stopped_at, fixed.stop_reason, fixed.closed_by) == (
        4321,
        stopped_at,
        "PowerLoss",
        ClosedBy.CONNECTOR_AVAILABLE,
    )
    assert len(stopped_events(world)) == 1


async def test_admin_closes_a_transaction_by_hand_and_it_is_audited(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Only an admin closes by hand: at the given meter (or the last reading), owner told,
    one audit line naming who and what; wrong meter, closed and unknown ids are refused."""
    world = World()
    await world.online("CP1")
    tx_id = await world.started()
    with pytest.raises(Forbidden):
        await world.service.close_transaction(ALICE, tx_id)
    with pytest.raises(ValidationFailed):
        await world.service.close_transaction(ADMIN, tx_id, meter_stop_wh=999)
    with caplog.at_level("WARNING", logger="charging_api.domain.charging"):
        closed = await world.service.close_transaction(ADMIN, tx_id, meter_stop_wh=3000)
    assert (closed.meter_stop_wh, closed.closed_by, closed.active) == (3000, ClosedBy.ADMIN, False)
    audit = [r.getMessage() for r in caplog.records if r.getMessage().startswith("audit:")]
    assert len(audit) == 1 and "ops" in audit[0] and f"transaction {tx_id}" in audit[0]
    [event] = stopped_events(world)
    assert (event.user_id, event.meter_stop_wh, event.closed_by) == ("alice", 3000, ClosedBy.ADMIN)
    with pytest.raises(TransactionNotActive):
        await world.service.close_transaction(ADMIN, tx_id)
    with pytest.raises(TransactionNotFound):
        await world.service.close_transaction(ADMIN, 999)
    await world.started(BOB)


async def test_a_refused_tag_session_refuses_app_starts_clearly_until_closed() -> None:
    """A session the charge point started with an Invalid tag: app starts on the connector get
    CONNECTOR_BUSY naming the refused tag status; the grace rule closes it."""
    world = World(stale_transaction_grace=60)
    await world.online("CP1")
    tx_id, verdict = await world.service.on_start_transaction(
        "CP1", 1, "STRANGER", 0, world.clock.now()
    )
    assert verdict.status is IdTagStatus.INVALID
    with pytest.raises(ConnectorBusy) as refused:
        await world.service.start(ALICE, "CP1", 1)
    assert refused.value.details["idTagStatus"] == "Invalid"
    assert "refused (Invalid)" in refused.value.message
    assert world.gateway.calls.empty()
    await world.service.on_status("CP1", 1, "Available", "NoError", None)
    await world.advance(60)
    assert world.store.transactions[tx_id].closed_by is ClosedBy.CONNECTOR_AVAILABLE
    await world.started()


async def test_restart_gives_an_available_connector_its_grace_again() -> None:
    """After a restart, an open transaction whose connector was last Available is closed after
    the grace, at the last stored meter reading."""
    world = World(stale_transaction_grace=30)
    await world.online("CP1")
    tx_id = await world.started()
    await world.service.on_meter_values("CP1", 1, tx_id, [MeterSample(world.clock.now(), 1.2)])
    world.clock.advance(5)
    await world.service.on_status("CP1", 1, "Available", "NoError", world.clock.now())
    reborn = ChargingService(
        world.store,
        world.gateway,
        world.bus,
        world.clock,
        ChargingPolicy(stale_transaction_grace=30),
    )
    await reborn.load()
    world.clock.advance(30)
    await reborn.fire_due_timers()
    assert world.store.transactions[tx_id].meter_stop_wh == 1200


# ------------------------------------------------------------------ app stop reason (issue 10.6)


async def test_the_apps_stop_reason_is_stored_beside_the_charge_points() -> None:
    """stop(reason=...) is kept until the StopTransaction and stored and published with it."""
    world = World()
    await world.online("CP1")
    tx_id = await world.started()
    await world.service.stop(ALICE, "CP1", tx_id, reason="UserStop")
    await world.service.on_stop_transaction("CP1", tx_id, 2000, world.clock.now(), "Remote", None)
    stored = world.store.transactions[tx_id]
    assert (stored.stop_reason, stored.app_stop_reason) == ("Remote", "UserStop")
    [event] = stopped_events(world)
    assert (event.reason, event.app_reason) == ("Remote", "UserStop")


async def test_a_rejected_stop_forgets_its_reason() -> None:
    """A stop the charge point rejected leaves no app reason behind."""
    world = World()
    await world.online("CP1")
    tx_id = await world.started()
    world.gateway.answers["RemoteStopTransaction"] = "Rejected"
    with pytest.raises(ChargePointRejected):
        await world.service.stop(ALICE, "CP1", tx_id, reason="UserStop")
    await world.service.on_stop_transaction("CP1", tx_id, 2000, world.clock.now(), "Local", None)
    assert world.store.transactions[tx_id].app_stop_reason is None


# ------------------------------------------------------------------ stop errors (issue 10.8)


class CountingStore(MemoryStore):
    """Counts the reads a stop costs."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    async def get_transaction(self, transaction_id: int) -> Transaction | None:
        self.reads += 1
        return await super().get_transaction(transaction_id)


async def test_stopping_another_users_transaction_is_indistinguishable_from_a_missing_one() -> None:
    """Bob's stop of Alice's transaction (right or wrong charge point) gets exactly what a
    missing id gets, after the same work: one store read, no CALL."""
    world = World()
    counting = world.store = CountingStore()
    world.service = ChargingService(world.store, world.gateway, world.bus, world.clock)
    await world.online("CP1")
    tx_id = await world.started()
    missing = tx_id + 1

    async def answer(cp: str | None, transaction_id: int) -> tuple[object, int]:
        before = counting.reads
        with pytest.raises(TransactionNotFound) as refused:
            await world.service.stop(BOB, cp, transaction_id)
        wire = refused.value.to_wire()
        text = str(wire).replace(str(transaction_id), "N")
        return text, counting.reads - before

    seen = {
        await answer("CP1", tx_id),
        await answer("CP2", tx_id),
        await answer(None, tx_id),
        await answer("CP1", missing),
        await answer(None, missing),
    }
    assert len(seen) == 1, seen
    assert next(iter(seen))[1] == 1
    assert world.gateway.calls.empty()
