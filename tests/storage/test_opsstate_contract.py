"""Contract tests of the operator-state store (``OpsStateStore``) on every backend:
reservations, local lists and charging profiles survive a close and reopen."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from charging_api.domain.models import (
    IdTag,
    IdTagStatus,
    LocalListState,
    Reservation,
    ReservationStatus,
    StoredChargingProfile,
)
from charging_api.domain.ports import OpsStateStore, Store

OpenStore = Callable[..., Awaitable[Store]]
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


async def _open(open_store: OpenStore) -> Any:
    return await open_store()


def _reservation(connector: int = 1) -> Reservation:
    return Reservation(
        0, "CP1", connector, "TAG-A", "alice", T0 + timedelta(minutes=30), T0, "alice", "GROUP"
    )


async def test_reservation_ids_are_allocated_and_reservations_survive_reopen(
    open_store: OpenStore,
) -> None:
    """Each new reservation gets a new reservationId; active ones are read back after a
    reopen, ended ones are not."""
    store = cast(OpsStateStore, await _open(open_store))
    first = await store.add_reservation(_reservation(1))
    second = await store.add_reservation(_reservation(2))
    assert first.id != second.id and first.id > 0
    used = replace(second, status=ReservationStatus.USED, transaction_id=7, ended_at=T0)
    await store.update_reservation(used)
    await cast(Store, store).close()
    store = cast(OpsStateStore, await _open(open_store))
    assert await store.active_reservations() == [first]
    assert await store.get_reservation(second.id) == used


async def test_local_list_state_and_all_id_tags(open_store: OpenStore) -> None:
    """The installed list (version, entries) is kept per charge point; all_id_tags lists
    every tag with its parent."""
    raw = await _open(open_store)
    await cast(Store, raw).put_id_tag(IdTag("B", "u1", IdTagStatus.BLOCKED, parent_id_tag="G"))
    await cast(Store, raw).put_id_tag(IdTag("A", None))
    store = cast(OpsStateStore, raw)
    assert await store.get_local_list("CP1") is None
    entries: dict[str, dict[str, object]] = {
        "a": {"idTag": "A", "idTagInfo": {"status": "Accepted"}}
    }
    await store.put_local_list(LocalListState("CP1", 3, entries, T0))
    await store.put_local_list(LocalListState("CP1", 4, entries, T0))
    assert await store.get_local_list("CP1") == LocalListState("CP1", 4, entries, T0)
    assert [t.tag for t in await store.all_id_tags()] == ["A", "B"]
    assert (await store.all_id_tags())[1].parent_id_tag == "G"


async def test_charging_profiles_are_replaced_by_id_and_deleted(open_store: OpenStore) -> None:
    """A profile with the same id on the same charge point replaces the stored one."""
    store = cast(OpsStateStore, await _open(open_store))
    profile: dict[str, object] = {"chargingProfileId": 5, "stackLevel": 0}
    p = StoredChargingProfile("CP1", 0, 5, "ChargePointMaxProfile", 0, profile, T0, "admin")
    await store.put_charging_profile(p)
    newer = replace(p, stack_level=2, profile={"chargingProfileId": 5, "stackLevel": 2})
    await store.put_charging_profile(newer)
    other = replace(p, charge_point_id="CP2", transaction_id=9, purpose="TxProfile")
    await store.put_charging_profile(other)
    assert await store.charging_profiles("CP1") == [newer]
    assert len(await store.charging_profiles()) == 2
    await store.delete_charging_profile("CP1", 5)
    assert await store.charging_profiles() == [other]


async def test_an_operator_numbered_reservation_keeps_later_ids_above_it(
    open_store: OpenStore,
) -> None:
    """put_reservation stores the operator's own id; add_reservation allocates above it."""
    store = cast(OpsStateStore, await _open(open_store))
    await store.put_reservation(replace(_reservation(), id=500))
    again = replace(_reservation(), id=500, connector_id=2)
    await store.put_reservation(again)  # the same id replaces
    assert await store.get_reservation(500) == again
    assert (await store.add_reservation(_reservation(3))).id > 500
