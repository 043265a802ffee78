"""Operator state on the core's fakes and the manual clock: reservations (start rule, use,
expiry, cancel, restart), the local list's Full/Differential updates, power limits and the
profiles the server set."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from charging_api.domain import operator_rules
from charging_api.domain.charging import ChargingService
from charging_api.domain.events import ReservationChanged, TransactionStopped
from charging_api.domain.local_list import LocalListSync
from charging_api.domain.models import (
    ClosedBy,
    ConfigurationEntry,
    IdTag,
    IdTagStatus,
    MeterSample,
    Principal,
    Reservation,
    ReservationStatus,
    Role,
    StoredMeterSample,
    ocpp_datetime,
)
from charging_api.domain.operations import OperatorService
from charging_api.domain.profiles import ChargingProfiles
from charging_api.domain.reservations import ReservationBook
from charging_api.errors import (
    ChargePointRejected,
    ConnectorReserved,
    Forbidden,
    ReservationNotFound,
    TransactionNotFound,
)
from tests.fakes import FakeGateway, ManualClock, MemoryStore, RecordingBus

ALICE = Principal("alice", id_tags=frozenset({"TAG-A"}))
BOB = Principal("bob", id_tags=frozenset({"TAG-B"}))
ADMIN = Principal("ops", Role.ADMIN)


class World:
    def __init__(self, store: MemoryStore | None = None, clock: ManualClock | None = None) -> None:
        self.store = store or MemoryStore()
        self.gateway = FakeGateway()
        self.bus = RecordingBus()
        self.clock = clock or ManualClock()
        self.service = ChargingService(self.store, self.gateway, self.bus, self.clock)
        self.book = ReservationBook(
            self.store, self.store, self.gateway, self.bus, self.clock, max_minutes=30
        )
        self.book.wake = self.service.wake_timers
        self.service.add_start_rule(self.book)
        self.service.add_timer_source(self.book)
        self.profiles = ChargingProfiles(self.store, self.store, self.gateway, self.clock)
        self.lists = LocalListSync(self.store, self.gateway, self.clock)
        self.operator = OperatorService(self.store, self.gateway, self.service, self.clock)
        operator_rules.install(self.operator, self.book, self.profiles, self.lists)

    async def online(self, cp: str = "CP1") -> None:
        await self.store.add_charge_point(cp, None)
        self.gateway.online.add(cp)

    async def call(self, action: str) -> dict[str, object]:
        _, got, payload = await asyncio.wait_for(self.gateway.calls.get(), 5)
        assert got == action
        return payload

    async def start(self, principal: Principal, tag: str, reservation: int | None = None) -> int:
        """A whole remote start whose StartTransaction carries ``reservation``."""
        task = asyncio.create_task(self.service.start(principal, "CP1", 1))
        payload = await self.call("RemoteStartTransaction")
        assert payload["idTag"] == tag
        tx_id, _ = await self.service.on_start_transaction(
            "CP1", 1, tag, 0, self.clock.now(), reservation_id=reservation
        )
        outcome = await task
        assert outcome.transaction_id == tx_id
        return tx_id

    def pushes(self) -> list[ReservationChanged]:
        return [e for e in self.bus.events if isinstance(e, ReservationChanged)]


async def test_reservation_is_sent_capped_and_pushed_to_the_holder() -> None:
    """ReserveNow carries our reservationId and an expiry capped at max_minutes; the
    holder gets an Active reservation_update."""
    world = World()
    await world.online()
    reservation = await world.book.reserve(ALICE, "CP1", 1, expiry_minutes=500)
    payload = await world.call("ReserveNow")
    assert payload["reservationId"] == reservation.id and payload["idTag"] == "TAG-A"
    assert reservation.expiry == world.clock.now() + timedelta(minutes=30)
    assert [(p.status, p.user_id) for p in world.pushes()] == [("Active", "alice")]


async def test_reserved_connector_refuses_another_tag_without_remote_start() -> None:
    """Bob's start on Alice's reserved connector is CONNECTOR_RESERVED and sends nothing."""
    world = World()
    await world.online()
    await world.book.reserve(ALICE, "CP1", 1)
    await world.call("ReserveNow")
    with pytest.raises(ConnectorReserved):
        await asyncio.wait_for(world.service.start(BOB, "CP1", 1), 5)
    assert world.gateway.calls.empty()
    with pytest.raises(ConnectorReserved):
        await world.book.reserve(BOB, "CP1", 1)


async def test_holder_start_uses_the_reservation() -> None:
    """The holder's start passes the check, its outcome names the reservation, and the
    StartTransaction uses it up (Used, with the transaction) so the connector is free."""
    world = World()
    await world.online()
    reservation = await world.book.reserve(ALICE, "CP1", 1)
    await world.call("ReserveNow")
    task = asyncio.create_task(world.service.start(ALICE, "CP1", 1))
    await world.call("RemoteStartTransaction")
    tx_id, _ = await world.service.on_start_transaction(
        "CP1", 1, "tag-a", 0, world.clock.now(), reservation_id=reservation.id
    )
    outcome = await task
    assert outcome.reservation_id == reservation.id
    stored = await world.store.get_reservation(reservation.id)
    assert stored is not None and stored.status is ReservationStatus.USED
    assert stored.transaction_id == tx_id
    assert world.book.on_connector("CP1", 1) is None
    assert world.pushes()[-1].status == "Used" and world.pushes()[-1].transaction_id == tx_id


async def test_a_child_of_the_reserving_parent_may_start() -> None:
    """A tag with the same parentIdTag as the reserving tag starts on the reserved connector."""
    world = World()
    await world.online()
    await world.store.put_id_tag(IdTag("TAG-A", "alice", parent_id_tag="FLEET"))
    await world.store.put_id_tag(IdTag("TAG-C", "carol", parent_id_tag="fleet"))
    await world.book.reserve(ALICE, "CP1", 1)
    assert (await world.call("ReserveNow"))["parentIdTag"] == "FLEET"
    carol = Principal("carol", id_tags=frozenset({"TAG-C"}))
    await world.start(carol, "TAG-C")
    assert world.pushes()[-1].status == "Used"


async def test_reservation_expires_on_the_manual_clock() -> None:
    """At its expiry (and not before) the reservation ends and the connector is free."""
    world = World()
    await world.online()
    await world.book.reserve(ALICE, "CP1", 1, expiry_minutes=10)
    await world.call("ReserveNow")
    world.clock.advance(599)
    await world.service.fire_due_timers()
    assert world.book.on_connector("CP1", 1) is not None
    world.clock.advance(1)
    await world.service.fire_due_timers()
    assert world.book.on_connector("CP1", 1) is None
    assert world.pushes()[-1].status == "Expired"
    await world.start(BOB, "TAG-B")


async def test_cancel_sends_cancel_reservation_and_only_the_holder_may() -> None:
    """Bob cannot see Alice's reservation; Alice's cancel sends CancelReservation and
    frees the connector."""
    world = World()
    await world.online()
    reservation = await world.book.reserve(ALICE, "CP1", 1)
    await world.call("ReserveNow")
    with pytest.raises(ReservationNotFound):
        await world.book.cancel(BOB, reservation.id)
    ended, status = await world.book.cancel(ALICE, reservation.id)
    assert (await world.call("CancelReservation")) == {"reservationId": reservation.id}
    assert status == "Accepted" and ended.status is ReservationStatus.CANCELLED
    assert world.book.on_connector("CP1", 1) is None


async def test_refused_reserve_now_holds_nothing() -> None:
    """The charge point's Occupied is CHARGE_POINT_REJECTED and the connector stays free."""
    world = World()
    await world.online()
    world.gateway.replies["ReserveNow"] = {"status": "Occupied"}
    with pytest.raises(ChargePointRejected) as refused:
        await world.book.reserve(ALICE, "CP1", 1)
    assert refused.value.details["status"] == "Occupied"
    assert world.book.on_connector("CP1", 1) is None
    assert await world.store.active_reservations() == []


async def test_reservations_survive_a_restart_and_expire_after_it() -> None:
    """A new book on the same store holds the reservation again and expires it on time."""
    store, clock = MemoryStore(), ManualClock()
    world = World(store, clock)
    await world.online()
    await world.book.reserve(ALICE, "CP1", 1, expiry_minutes=5)
    await world.call("ReserveNow")
    again = World(store, clock)
    again.gateway.online.add("CP1")
    await again.book.load()
    with pytest.raises(ConnectorReserved):
        await asyncio.wait_for(again.service.start(BOB, "CP1", 1), 5)
    clock.advance(300)
    await again.service.fire_due_timers()
    assert again.book.on_connector("CP1", 1) is None


async def test_a_user_cannot_reserve_for_another_users_tag() -> None:
    """Reserving with Bob's tag is FORBIDDEN for Alice; admins must name a tag."""
    world = World()
    await world.online()
    await world.store.put_id_tag(IdTag("TAG-B", "bob"))
    with pytest.raises(Forbidden):
        await world.book.reserve(ALICE, "CP1", 1, id_tag="TAG-B")
    reservation = await world.book.reserve(ADMIN, "CP1", 1, id_tag="tag-b")
    assert reservation.id_tag == "TAG-B" and reservation.user_id == "bob"


async def test_local_list_full_then_differential_with_a_blocked_tag() -> None:
    """The first sync is Full; blocking a tag centrally sends only that tag, Blocked, in the
    next Differential update with the next version; nothing changed sends nothing."""
    world = World()
    await world.online()
    await world.store.put_id_tag(IdTag("TAG-A", "alice", parent_id_tag="FLEET"))
    await world.store.put_id_tag(IdTag("TAG-B", "bob"))
    first = await world.lists.sync(ADMIN, "CP1")
    sent = await world.call("SendLocalList")
    assert (first.update_type, first.version, sent["updateType"]) == ("Full", 1, "Full")
    assert len(sent["localAuthorizationList"]) == 2  # type: ignore[arg-type]
    await world.store.put_id_tag(IdTag("TAG-B", "bob", IdTagStatus.BLOCKED))
    second = await world.lists.sync(ADMIN, "CP1")
    sent = await world.call("SendLocalList")
    assert sent == {
        "listVersion": 2,
        "updateType": "Differential",
        "localAuthorizationList": [{"idTag": "TAG-B", "idTagInfo": {"status": "Blocked"}}],
    }
    assert second.status == "Accepted"
    third = await world.lists.sync(ADMIN, "CP1")
    assert third.status == "UpToDate" and world.gateway.calls.empty()
    with pytest.raises(Forbidden):
        await world.lists.sync(ALICE, "CP1")


async def test_local_list_version_mismatch_falls_back_to_full() -> None:
    """A charge point that lost its list answers VersionMismatch; a Full update follows."""
    world = World()
    await world.online()
    await world.store.put_id_tag(IdTag("TAG-A", "alice"))
    await world.lists.sync(ADMIN, "CP1")
    await world.call("SendLocalList")
    await world.store.put_id_tag(IdTag("TAG-Z", None))
    world.gateway.replies["SendLocalList"] = {"status": "VersionMismatch"}
    task = asyncio.create_task(world.lists.sync(ADMIN, "CP1"))
    assert (await world.call("SendLocalList"))["updateType"] == "Differential"
    assert (await world.call("SendLocalList"))["updateType"] == "Full"
    result = await task
    assert result.update_type == "Full" and result.status == "VersionMismatch"


async def test_power_limit_converts_kw_with_the_meter_phases_and_voltage() -> None:
    """7.36 kW on a one-phase 230 V session (from its meter values) is a 32 A TxProfile;
    with no readings 3 x 230 V is assumed; another user's session is not found."""
    world = World()
    await world.online()
    tx_id = await world.start(ALICE, "TAG-A")
    limit = await world.profiles.set_power_limit(ALICE, tx_id, 11.04, "kW")
    payload = await world.call("SetChargingProfile")
    period = payload["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"][0]  # type: ignore[index]
    assert (limit.limit_a, limit.source, period["numberPhases"]) == (16.0, "default", 3)
    world.store.add_meter_samples(
        [
            StoredMeterSample(
                "CP1",
                1,
                tx_id,
                MeterSample(
                    world.clock.now(),
                    voltage=230.0,
                    phases={"L1": {"current": 15.0, "voltage": 230.0}, "L2": {"current": 0.0}},
                ),
            )
        ]
    )
    limit = await world.profiles.set_power_limit(ALICE, tx_id, 7.36, "kW")
    payload = await world.call("SetChargingProfile")
    profile = payload["csChargingProfiles"]
    assert (limit.limit_a, limit.electrical.phases, limit.source) == (32.0, 1, "meterValues")
    assert profile["transactionId"] == tx_id and profile["chargingProfilePurpose"] == "TxProfile"  # type: ignore[index]
    assert len(await world.store.charging_profiles("CP1")) == 1  # the same profile, replaced
    with pytest.raises(TransactionNotFound):
        await world.profiles.set_power_limit(BOB, tx_id, 5, "A")


async def test_session_end_clears_its_profiles() -> None:
    """When the session ends its TxProfile is cleared on the charge point and forgotten."""
    world = World()
    await world.online()
    tx_id = await world.start(ALICE, "TAG-A")
    limit = await world.profiles.set_power_limit(ALICE, tx_id, 10, "A")
    await world.call("SetChargingProfile")
    await world.service.on_stop_transaction("CP1", tx_id, 500, world.clock.now(), None, None)
    stopped = [e for e in world.bus.events if isinstance(e, TransactionStopped)]
    assert stopped and stopped[0].closed_by is ClosedBy.CHARGE_POINT
    world.profiles.on_event(stopped[0])
    assert (await world.call("ClearChargingProfile")) == {"id": limit.profile_id}
    await world.profiles.close()
    assert await world.store.charging_profiles() == []


async def test_profiles_known_at_start_up_are_cleared_and_others_cost_no_call() -> None:
    """After a restart (``load``) the profiles stored for a transaction are still cleared when
    it ends; a transaction the server set no profile for ends without any CALL."""
    world = World()
    await world.online()
    tx_id = await world.start(ALICE, "TAG-A")
    limit = await world.profiles.set_power_limit(ALICE, tx_id, 10, "A")
    await world.call("SetChargingProfile")
    again = World(world.store, world.clock)
    await again.online()
    await again.service.load()
    await again.profiles.load()
    await again.service.on_stop_transaction("CP1", tx_id, 500, again.clock.now(), None, None)
    stopped = [e for e in again.bus.events if isinstance(e, TransactionStopped)]
    again.profiles.on_event(stopped[0])
    assert (await again.call("ClearChargingProfile")) == {"id": limit.profile_id}
    await again.profiles.close()
    assert await again.store.charging_profiles() == []
    again.clock.advance(60)  # a new start, not a replay of the first
    plain = await again.start(ALICE, "TAG-A")
    await again.service.on_stop_transaction("CP1", plain, 900, again.clock.now(), None, None)
    ended = [e for e in again.bus.events if isinstance(e, TransactionStopped)][-1]
    again.profiles.on_event(ended)
    await again.profiles.close()
    assert again.gateway.calls.empty()  # nothing to clear: no ClearChargingProfile


async def test_admin_reserve_now_through_the_operator_service_is_kept() -> None:
    """An admin's raw ReserveNow, once Accepted, holds the connector in our books (other
    tags refused, the holder pushed) and a StartTransaction with its id uses it up."""
    world = World()
    await world.online()
    await world.store.put_id_tag(IdTag("TAG-A", "alice"))
    expiry = ocpp_datetime(world.clock.now() + timedelta(minutes=20))
    payload = {"connectorId": 1, "expiryDate": expiry, "idTag": "tag-a", "reservationId": 77}
    answer = await world.operator.execute(ADMIN, "CP1", "ReserveNow", payload)
    assert answer == {"status": "Accepted"} and (await world.call("ReserveNow")) == payload
    assert world.pushes()[-1].user_id == "alice" and world.pushes()[-1].reservation_id == 77
    with pytest.raises(ConnectorReserved):
        await asyncio.wait_for(world.service.start(BOB, "CP1", 1), 5)
    await world.start(ALICE, "TAG-A", reservation=77)
    stored = await world.store.get_reservation(77)
    assert stored is not None and stored.status is ReservationStatus.USED
    ours = await world.book.reserve(ALICE, "CP1", 1)
    assert ours.id > 77  # ids we allocate stay above the operator's


async def test_admin_reserve_now_on_a_connector_held_for_another_tag_is_refused() -> None:
    """An admin's ReserveNow for Bob on Alice's reserved connector is refused before the CALL."""
    world = World()
    await world.online()
    reservation = await world.book.reserve(ALICE, "CP1", 1)
    await world.call("ReserveNow")
    expiry = ocpp_datetime(world.clock.now() + timedelta(minutes=20))
    payload = {"connectorId": 1, "expiryDate": expiry, "idTag": "TAG-B", "reservationId": 5}
    with pytest.raises(ConnectorReserved):
        await world.operator.execute(ADMIN, "CP1", "ReserveNow", payload)
    assert world.gateway.calls.empty()
    await world.operator.execute(
        ADMIN, "CP1", "CancelReservation", {"reservationId": reservation.id}
    )
    await world.call("CancelReservation")
    assert world.book.on_connector("CP1", 1) is None
    assert world.pushes()[-1].status == "Cancelled"


async def test_admin_send_local_list_is_the_base_of_the_next_differential() -> None:
    """A list an admin sent by hand (version 7) is what the next sync diffs against."""
    world = World()
    await world.online()
    await world.store.put_id_tag(IdTag("TAG-A", "alice"))
    entry = {"idTag": "TAG-A", "idTagInfo": {"status": "Accepted"}}
    full = {"listVersion": 7, "updateType": "Full", "localAuthorizationList": [entry]}
    await world.operator.execute(ADMIN, "CP1", "SendLocalList", full)
    await world.call("SendLocalList")
    await world.store.put_id_tag(IdTag("TAG-N", None))
    result = await world.lists.sync(ADMIN, "CP1")
    sent = await world.call("SendLocalList")
    assert (result.update_type, sent["listVersion"]) == ("Differential", 8)
    assert sent["localAuthorizationList"] == [
        {"idTag": "TAG-N", "idTagInfo": {"status": "Accepted"}}
    ]


async def test_admin_profiles_are_listed_and_forgotten_when_cleared() -> None:
    """ChargePointMaxProfile and TxDefaultProfile set through the operator service are
    listed; a ClearChargingProfile by purpose forgets the one it cleared."""
    world = World()
    await world.online()
    schedule = {
        "chargingRateUnit": "W",
        "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 11000}],
    }
    for profile_id, purpose, connector in (
        (1, "ChargePointMaxProfile", 0),
        (2, "TxDefaultProfile", 1),
    ):
        profile = {
            "chargingProfileId": profile_id,
            "stackLevel": 0,
            "chargingProfilePurpose": purpose,
            "chargingProfileKind": "Absolute",
            "chargingSchedule": schedule,
        }
        await world.operator.execute(
            ADMIN,
            "CP1",
            "SetChargingProfile",
            {"connectorId": connector, "csChargingProfiles": profile},
        )
        await world.call("SetChargingProfile")
    listed = await world.profiles.profiles(ADMIN, "CP1")
    assert [(p.profile_id, p.purpose, p.set_by) for p in listed] == [
        (1, "ChargePointMaxProfile", "ops"),
        (2, "TxDefaultProfile", "ops"),
    ]
    await world.operator.execute(
        ADMIN, "CP1", "ClearChargingProfile", {"chargingProfilePurpose": "TxDefaultProfile"}
    )
    await world.call("ClearChargingProfile")
    assert [p.profile_id for p in await world.profiles.profiles(ADMIN, "CP1")] == [1]
    with pytest.raises(Forbidden):
        await world.profiles.profiles(ALICE)


async def test_power_limit_takes_phases_from_the_reported_phase_rotation() -> None:
    """Without meter readings, ConnectorPhaseRotation NotApplicable (GetConfiguration) means
    one phase: 2.3 kW is 10 A."""
    world = World()
    await world.online()
    await world.store.put_reported_configuration(
        "CP1",
        [ConfigurationEntry("CP1", "ConnectorPhaseRotation", "0.RST,1.NotApplicable", True)],
    )
    tx_id = await world.start(ALICE, "TAG-A")
    limit = await world.profiles.set_power_limit(ALICE, tx_id, 2.3, "kW")
    await world.call("SetChargingProfile")
    assert (limit.limit_a, limit.electrical.phases, limit.source) == (10.0, 1, "configuration")


async def test_authorize_names_the_parent_id_tag() -> None:
    """Authorize's IdTagInfo carries the tag's parentIdTag (what reservations and local
    lists group by)."""
    world = World()
    await world.store.put_id_tag(IdTag("TAG-C", "carol", parent_id_tag="FLEET"))
    verdict = await world.service.on_authorize("CP1", "tag-c")
    assert (verdict.status, verdict.parent_id_tag) == (IdTagStatus.ACCEPTED, "FLEET")


async def test_an_expiry_that_cannot_be_stored_is_retried_later() -> None:
    """Storage down at the expiry: the reservation stays held and expires at the retry."""
    world = World()
    await world.online()
    await world.book.reserve(ALICE, "CP1", 1, expiry_minutes=1)
    await world.call("ReserveNow")
    real_update = world.store.update_reservation

    async def broken(reservation: Reservation) -> None:
        raise OSError("database unavailable")

    world.store.update_reservation = broken  # type: ignore[method-assign]
    world.clock.advance(60)
    await world.service.fire_due_timers()
    assert world.book.on_connector("CP1", 1) is not None
    next_deadline = world.book.next_deadline()
    assert next_deadline is not None and next_deadline > world.clock.monotonic()
    world.store.update_reservation = real_update  # type: ignore[method-assign]
    world.clock.advance(5)
    await world.service.fire_due_timers()
    assert world.book.on_connector("CP1", 1) is None
