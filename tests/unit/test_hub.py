"""api/hub.py without sockets: who gets which event, with which seq, and what resume replays."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from charging_api.api import protocol
from charging_api.api.hub import UpdateHub
from charging_api.domain.events import (
    ChargePointConnectionChanged,
    ConnectorStatusChanged,
    MeterValuesReceived,
    TransactionStarted,
)
from charging_api.domain.models import MeterSample
from charging_api.errors import Forbidden

WHEN = datetime(2024, 1, 15, 10, 30, tzinfo=UTC)


class Inbox:
    """A session as the hub sees one: something frames are delivered to."""

    def __init__(self) -> None:
        self.frames: list[tuple[dict[str, Any], bool]] = []

    def deliver(self, frame: bytes, droppable: bool) -> None:
        self.frames.append((orjson.loads(frame), droppable))

    @property
    def messages(self) -> list[dict[str, Any]]:
        return [message for message, _ in self.frames]


def status(
    cp: str = "CP-1", user: str | None = "alice", state: str = "Charging", tx: int | None = 7
) -> ConnectorStatusChanged:
    return ConnectorStatusChanged(cp, 1, state, "NoError", WHEN, tx, user)


def meter(cp: str = "CP-1", user: str | None = "alice", kwh: float = 1.0) -> MeterValuesReceived:
    return MeterValuesReceived(cp, 1, 7, user, MeterSample(WHEN, energy_import_kwh=kwh))


async def hub_with(*users: str, **kwargs: Any) -> tuple[UpdateHub, dict[str, Inbox]]:
    hub = UpdateHub(**kwargs)
    inboxes = {user: Inbox() for user in users}
    for user, inbox in inboxes.items():
        await hub.attach(user, inbox)
    return hub, inboxes


async def test_the_owner_gets_the_event_and_nobody_else() -> None:
    """An event about alice's session reaches alice, not bob nor a non-subscribed admin."""
    hub, inbox = await hub_with("alice", "bob", "admin")
    hub.on_event(status())
    assert [m["type"] for m in inbox["alice"].messages] == ["charging_status_update"]
    assert inbox["alice"].messages[0]["data"] == {
        "chargePointId": "CP-1",
        "connectorId": 1,
        "status": "Charging",
        "transactionId": 7,
    }
    assert inbox["bob"].frames == []
    assert inbox["admin"].frames == []


async def test_an_event_nobody_owns_reaches_only_watchers() -> None:
    """user_id None: no user stream gets it unless an admin watches that charge point."""
    hub, inbox = await hub_with("alice", "admin")
    hub.on_event(status(user=None, tx=None, state="Available"))
    assert inbox["alice"].frames == [] and inbox["admin"].frames == []
    await hub.subscribe("admin", ["CP-1"])
    hub.on_event(status(user=None, tx=None, state="Available"))
    assert [m["data"]["status"] for m in inbox["admin"].messages] == ["Available"]


async def test_admin_watchers_get_their_charge_points_or_everything() -> None:
    """A subscription to CP-1 sees CP-1 only; ``None`` (``*``) sees all; unsubscribe ends it."""
    hub, inbox = await hub_with("alice", "ops", "root")
    assert await hub.subscribe("ops", ["CP-1"]) == ["CP-1"]
    assert await hub.subscribe("root", None) == "*"
    hub.on_event(status(cp="CP-1"))
    hub.on_event(status(cp="CP-2"))
    assert [m["data"]["chargePointId"] for m in inbox["ops"].messages] == ["CP-1"]
    assert [m["data"]["chargePointId"] for m in inbox["root"].messages] == ["CP-1", "CP-2"]
    assert [m["data"]["chargePointId"] for m in inbox["alice"].messages] == ["CP-1", "CP-2"]
    assert await hub.unsubscribe("ops", ["CP-1"]) == []
    assert await hub.unsubscribe("root", None) == []
    hub.on_event(status(cp="CP-1"))
    assert len(inbox["ops"].frames) == 1 and len(inbox["root"].frames) == 2


async def test_an_owner_who_also_watches_gets_the_event_once() -> None:
    """Owner and watcher at once: one frame, not two."""
    hub, inbox = await hub_with("admin")
    await hub.subscribe("admin", None)
    await hub.subscribe("admin", ["CP-1"])
    hub.on_event(status(user="admin"))
    assert len(inbox["admin"].frames) == 1


async def test_a_charge_point_wide_copy_reaches_its_owner_only() -> None:
    """A connector-0 Faulted: watchers see the original once, each owner their own copy."""
    hub, inbox = await hub_with("alice", "bob", "ops")
    await hub.subscribe("ops", ["CP-1"])
    hub.on_event(ConnectorStatusChanged("CP-1", 0, "Faulted", "GroundFailure", WHEN, None, None))
    for user, tx in (("alice", 7), ("bob", 8)):
        copy = ConnectorStatusChanged("CP-1", 0, "Faulted", "GroundFailure", WHEN, tx, user)
        hub.on_event(dataclasses.replace(copy, owner_only=True))
    assert [m["data"].get("transactionId") for m in inbox["ops"].messages] == [None]
    assert [m["data"]["transactionId"] for m in inbox["alice"].messages] == [7]
    assert [m["data"]["transactionId"] for m in inbox["bob"].messages] == [8]


async def test_seq_counts_per_user_and_the_data_is_shared() -> None:
    """Each user's seq runs 1, 2, 3 ... on its own; recipients get the same data."""
    hub, inbox = await hub_with("alice", "ops")
    await hub.subscribe("ops", None)
    hub.on_event(status(cp="CP-9", user=None))
    hub.on_event(status())
    hub.on_event(meter())
    assert [m["seq"] for m in inbox["alice"].messages] == [1, 2]
    assert [m["seq"] for m in inbox["ops"].messages] == [1, 2, 3]
    assert inbox["alice"].messages[1]["data"] == inbox["ops"].messages[2]["data"]
    assert [m["id"] for m in inbox["alice"].messages] == ["evt-1", "evt-2"]
    assert await hub.current_seq("alice") == 2 and await hub.current_seq("ops") == 3
    assert await hub.current_seq("nobody") == 0


async def test_every_session_of_a_user_gets_the_same_frame() -> None:
    """Two connections of alice: both get seq 1."""
    hub, inbox = await hub_with("alice")
    phone = Inbox()
    await hub.attach("alice", phone)
    hub.on_event(status())
    assert inbox["alice"].messages == phone.messages
    assert phone.messages[0]["seq"] == 1
    assert hub.session_count_of("alice") == 2
    assert hub.user_count() == 1


async def test_only_meter_updates_may_be_dropped() -> None:
    """Meter values are droppable under back-pressure; status and transaction updates are not."""
    hub, inbox = await hub_with("alice")
    hub.on_event(meter())
    hub.on_event(status())
    hub.on_event(TransactionStarted("CP-1", 1, 7, "alice", "TAG", 0, WHEN))
    assert [(m["type"], d) for m, d in inbox["alice"].frames] == [
        ("meter_values_update", True),
        ("charging_status_update", False),
        ("transaction_update", False),
    ]


async def test_connection_changes_are_not_pushed() -> None:
    """ChargePointConnectionChanged reaches nobody (Offline arrives as a status update)."""
    hub, inbox = await hub_with("admin")
    await hub.subscribe("admin", None)
    hub.on_event(ChargePointConnectionChanged("CP-1", False, WHEN))
    assert inbox["admin"].frames == []


async def test_missed_since_replays_what_came_after() -> None:
    """Frames after lastSeq in order; nothing when up to date; None when ahead of the server."""
    hub, inbox = await hub_with("alice")
    for kwh in (1.0, 2.0, 3.0):
        hub.on_event(meter(kwh=kwh))
    missed = await hub.missed_since("alice", 1)
    assert missed is not None
    assert [orjson.loads(f) for f in missed] == inbox["alice"].messages[1:]
    everything = await hub.missed_since("alice", 0)
    assert everything is not None
    assert [orjson.loads(f) for f in everything] == inbox["alice"].messages
    assert await hub.missed_since("alice", 3) == []
    assert await hub.missed_since("alice", 4) is None


async def test_missed_since_is_none_when_the_gap_is_older_than_the_history() -> None:
    """History of 3: after 5 pushes, lastSeq 2 can be served, lastSeq 1 cannot."""
    hub, _ = await hub_with("alice", history_size=3)
    for kwh in range(5):
        hub.on_event(meter(kwh=float(kwh)))
    served = await hub.missed_since("alice", 2)
    assert served is not None
    assert [orjson.loads(f)["seq"] for f in served] == [3, 4, 5]
    assert await hub.missed_since("alice", 1) is None
    assert await hub.missed_since("alice", 0) is None


async def test_without_history_any_gap_needs_a_resync() -> None:
    """history_size 0: nothing is kept, so being behind at all answers None."""
    hub, _ = await hub_with("alice", history_size=0)
    hub.on_event(status())
    assert await hub.missed_since("alice", 0) is None
    assert await hub.missed_since("alice", 1) == []


async def test_unknown_users_resume_from_zero_only() -> None:
    """A user the hub never saw: lastSeq 0 is up to date, anything else needs get_state."""
    hub = UpdateHub()
    assert await hub.missed_since("ghost", 0) == []
    assert await hub.missed_since("ghost", 5) is None


async def test_a_stream_outlives_its_last_session_for_resume() -> None:
    """After a disconnect the seq and history stay, so a reconnect can resume."""
    hub, inbox = await hub_with("alice")
    hub.on_event(status())
    hub.detach("alice", inbox["alice"])
    assert hub.session_count_of("alice") == 0 and hub.user_count() == 0
    hub.on_event(status(state="Finishing"))
    again = Inbox()
    await hub.attach("alice", again)
    missed = await hub.missed_since("alice", 1)
    assert missed is not None
    assert [orjson.loads(f)["data"]["status"] for f in missed] == ["Finishing"]
    assert again.frames == []


async def test_idle_streams_are_bounded_oldest_first() -> None:
    """Past ``idle_streams`` disconnected users the oldest stream (and its watch) is dropped."""
    hub, inbox = await hub_with("old", "new", idle_streams=1)
    await hub.subscribe("old", None)
    hub.on_event(status(user="old"))
    hub.detach("old", inbox["old"])
    hub.detach("new", inbox["new"])
    assert await hub.current_seq("old") == 0
    assert await hub.missed_since("old", 1) is None
    comeback = Inbox()
    await hub.attach("old", comeback)
    hub.on_event(status(cp="CP-7", user=None))
    assert comeback.frames == []  # the dropped stream's subscription went with it


class RawInbox:
    """A session that keeps the exact bytes."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def deliver(self, frame: bytes, droppable: bool) -> None:
        self.frames.append(frame)


async def test_spliced_frames_are_byte_for_byte_encode_push() -> None:
    """Each recipient's frame (its own seq spliced into shared parts) is what encode_push
    would write for that seq, and resume replays those very bytes."""
    hub = UpdateHub()
    alice, ops = RawInbox(), RawInbox()
    await hub.attach("alice", alice)
    await hub.attach("ops", ops)
    await hub.subscribe("ops", None)
    for _ in range(12):
        hub.on_event(status(cp="CP-2", user=None))  # ops only: its seq runs ahead of alice's
    hub.on_event(meter())
    for inbox, seq in ((alice, 1), (ops, 13)):
        frame = orjson.loads(inbox.frames[-1])
        assert frame["seq"] == seq
        assert inbox.frames[-1] == protocol.encode_push(
            "meter_values_update", orjson.dumps(frame["data"]), seq, frame["timestamp"]
        )
    assert await hub.missed_since("ops", 10) == ops.frames[10:]


async def test_history_wraps_and_still_knows_each_frames_seq() -> None:
    """A full history drops its oldest frames; what it replays starts at the right seq."""
    hub = UpdateHub(history_size=4)
    inbox = RawInbox()
    await hub.attach("alice", inbox)
    for kwh in range(10):
        hub.on_event(meter(kwh=float(kwh)))
    assert await hub.missed_since("alice", 5) is None
    assert await hub.missed_since("alice", 6) == inbox.frames[6:]
    assert await hub.missed_since("alice", 8) == inbox.frames[8:]
    assert await hub.missed_since("alice", 10) == []


async def test_a_user_role_session_ends_the_streams_admin_view() -> None:
    """set_role(admin=False) on an attached session: subscriptions end, the history that held
    other users' pushes is dropped (resume from before: None), and subscribe is refused until
    that session is admin again or gone."""
    hub, inbox = await hub_with("ops")
    await hub.subscribe("ops", None)
    hub.on_event(status(user="alice"))
    assert await hub.current_seq("ops") == 1 and await hub.missed_since("ops", 0) is not None
    await hub.set_role("ops", inbox["ops"], admin=False)
    hub.on_event(status(user="alice", state="SuspendedEV"))
    assert len(inbox["ops"].frames) == 1  # nothing after the role change
    assert await hub.missed_since("ops", 0) is None  # the admin-era push is not replayed
    assert await hub.missed_since("ops", 1) == []
    with pytest.raises(Forbidden):
        await hub.subscribe("ops", ["CP-1"])
    await hub.set_role("ops", inbox["ops"], admin=True)
    assert await hub.subscribe("ops", ["CP-1"]) == ["CP-1"]
    other = Inbox()
    await hub.attach("ops", other)
    await hub.set_role("ops", other, admin=False)
    assert await hub.unsubscribe("ops", None) == []  # ended by the user-role session
    hub.detach("ops", other)
    assert await hub.subscribe("ops", None) == "*"  # that session is gone


async def test_a_user_role_session_keeps_a_plain_users_history() -> None:
    """A stream that never subscribed keeps its history: a user's own resume still works."""
    hub, inbox = await hub_with("alice")
    hub.on_event(status(user="alice"))
    await hub.set_role("alice", inbox["alice"], admin=False)
    missed = await hub.missed_since("alice", 0)
    assert missed is not None and len(missed) == 1
