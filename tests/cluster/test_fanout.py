"""cluster/fanout.py on a real Redis: one publisher (a core's bus), hubs standing for api nodes.

Each hub is what one api node runs; the sessions are the door's connections as the hub sees
them. The events are the core's own domain events, published on its MemoryBus.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from datetime import UTC, datetime

import orjson
import pytest

from charging_api.api import protocol
from charging_api.api.hub import Hub, UpdateHub
from charging_api.bus.memory import MemoryBus
from charging_api.cluster import keys
from charging_api.cluster.fanout import ClusterHub, PushPublisher, connect
from charging_api.domain.events import (
    ChargePointBooted,
    ChargePointConnectionChanged,
    ConnectorStatusChanged,
    DataTransferReceived,
    DeviceStatusChanged,
    DomainEvent,
    MeterValuesReceived,
    ReservationChanged,
    SessionNotice,
    SessionUpdated,
    TransactionStarted,
    TransactionStopped,
)
from charging_api.domain.models import DeviceJob, MeterSample
from charging_api.errors import Forbidden
from tests.cluster.redis_scene import Inbox, Relay, cluster, empty_redis

WHEN = datetime(2024, 1, 15, 10, 30, tzinfo=UTC)


def status(
    cp: str = "CP-1", user: str | None = "alice", state: str = "Charging"
) -> ConnectorStatusChanged:
    return ConnectorStatusChanged(cp, 1, state, "NoError", WHEN, 7 if user else None, user)


def meter(cp: str = "CP-1", user: str | None = "alice", kwh: float = 1.0) -> MeterValuesReceived:
    return MeterValuesReceived(cp, 1, 7, user, MeterSample(WHEN, energy_import_kwh=kwh))


def notice(user: str = "alice") -> SessionNotice:
    return SessionNotice("CP-1", 1, 7, user, "suspended_ev", WHEN, {"reason": "EV paused"})


async def test_a_user_on_two_nodes_sees_one_sequence() -> None:
    """alice's phone on node A and tablet on node B get the same frames, same seqs; a
    watching admin on A is numbered on its own; both nodes answer the same current seq."""
    async with cluster() as scene:
        a, b = await scene.hub("api-a"), await scene.hub("api-b")
        phone, tablet, ops = Inbox(), Inbox(), Inbox()
        await a.attach("alice", phone)
        await b.attach("alice", tablet)
        await a.attach("ops", ops)
        assert await a.subscribe("ops", ["CP-1"]) == ["CP-1"]
        await scene.emit(
            status(cp="CP-2", user=None),  # nobody's, not watched: reaches no one
            ChargePointConnectionChanged("CP-1", True, WHEN),  # never pushed
            status(),
            meter(),
        )
        await phone.wait_for(2)
        await tablet.wait_for(2)
        await ops.wait_for(2)
        assert phone.frames == tablet.frames
        assert phone.seqs == [1, 2] and ops.seqs == [1, 2]
        assert [m["type"] for m in phone.messages] == [
            "charging_status_update",
            "meter_values_update",
        ]
        assert phone.droppable == [False, True]
        assert [m["data"] for m in phone.messages] == [m["data"] for m in ops.messages]
        assert await a.current_seq("alice") == await b.current_seq("alice") == 2
        assert a.pushes_by_type == {"charging_status_update": 2, "meter_values_update": 2}
        assert b.deliveries == 2
        assert scene.publisher.published == 2 and scene.publisher.pushes == 4


async def test_frames_are_byte_for_byte_what_the_hub_writes() -> None:
    """The seq spliced in Redis and on the node gives encode_push's bytes, live and replayed."""
    async with cluster() as scene:
        a = await scene.hub("api-a")
        phone = Inbox()
        await a.attach("alice", phone)
        await scene.emit(status(), meter(kwh=2.5))
        await phone.wait_for(2)
        for seq, frame in enumerate(phone.frames, start=1):
            message = orjson.loads(frame)
            assert frame == protocol.encode_push(
                message["type"], orjson.dumps(message["data"]), seq, message["timestamp"]
            )
        assert await a.missed_since("alice", 0) == phone.frames


async def test_resume_on_another_node_after_the_first_is_gone() -> None:
    """alice's node dies; what was pushed while she was away is served by another node
    exactly (the frames after her lastSeq, in order, same bytes a live session got)."""
    async with cluster() as scene:
        a = await scene.hub("api-a")
        phone, witness = Inbox(), Inbox()
        await a.attach("alice", phone)
        await scene.emit(status(state="Preparing"), status(), meter(kwh=1.0))
        await phone.wait_for(3)
        await a.close()
        scene.hubs.remove(a)
        b = await scene.hub("api-b")
        await b.attach("witness", witness)  # proves B is live before the missed pushes
        await scene.emit(meter(kwh=2.0), status(state="SuspendedEV"))
        missed = await b.missed_since("alice", 3)
        assert missed is not None
        assert [orjson.loads(f)["seq"] for f in missed] == [4, 5]
        assert [orjson.loads(f)["data"].get("status") for f in missed] == [None, "SuspendedEV"]
        everything = await b.missed_since("alice", 0)
        assert everything is not None and everything[:3] == phone.frames
        assert await b.missed_since("alice", 5) == []
        assert await b.missed_since("alice", 6) is None  # ahead of the server
        assert await b.current_seq("alice") == 5
        assert await b.missed_since("nobody", 0) == []
        assert await b.missed_since("nobody", 2) is None


async def test_a_gap_older_than_the_history_needs_a_resync() -> None:
    """History of 3 (trimmed ~ by Redis, so at least 3 kept): after 250 pushes an early
    lastSeq is None (RESYNC_REQUIRED), a recent one is served exactly."""
    async with cluster(history_size=3) as scene:
        a = await scene.hub("api-a")
        await a.attach("alice", Inbox())
        await scene.emit(*(meter(kwh=float(k)) for k in range(250)))
        assert await a.missed_since("alice", 10) is None
        assert await a.missed_since("alice", 0) is None
        recent = await a.missed_since("alice", 247)
        assert recent is not None
        assert [orjson.loads(f)["seq"] for f in recent] == [248, 249, 250]


async def test_a_history_unused_for_its_time_to_live_is_gone() -> None:
    """history_ttl: a user's history expires that long after their last push (Redis memory
    stays bounded by the active users); the seq stays, so a resume from before is refused
    rather than served from a restarted numbering."""
    async with cluster(history_ttl=0.5) as scene:
        a = await scene.hub("api-a")
        await a.attach("alice", Inbox())
        await scene.emit(status(), meter())
        assert await a.missed_since("alice", 0) is not None
        for _ in range(100):  # poll the expiry: bounded, 5 s at most
            if await a.missed_since("alice", 0) is None:
                break
            await asyncio.sleep(0.05)
        assert await a.missed_since("alice", 0) is None
        assert await a.missed_since("alice", 1) is None
        assert await a.current_seq("alice") == 2
        await scene.emit(status(state="SuspendedEV"))
        again = await a.missed_since("alice", 2)
        assert again is not None and [orjson.loads(f)["seq"] for f in again] == [3]


async def test_no_history_means_any_gap_needs_a_resync() -> None:
    async with cluster(history_size=0) as scene:
        a = await scene.hub("api-a")
        await a.attach("alice", Inbox())
        await scene.emit(status())
        assert await a.missed_since("alice", 0) is None
        assert await a.missed_since("alice", 1) == []


async def test_an_admin_subscription_reaches_the_admins_sessions_on_every_node() -> None:
    """ops subscribes on node A; its session on node B gets the charge point's pushes too;
    an unsubscribe on B ends them for both; a user who never connected is not numbered."""
    async with cluster() as scene:
        a, b = await scene.hub("api-a"), await scene.hub("api-b")
        desk, laptop = Inbox(), Inbox()
        await a.attach("ops", desk)
        await b.attach("ops", laptop)
        assert await a.subscribe("ops", None) == "*"
        assert await b.subscribe("ops", ["CP-9"]) == "*"
        await scene.emit(status(cp="CP-5", user="bob"))  # bob never connected: ops only
        await laptop.wait_for(1)
        assert laptop.frames == await desk.wait_for(1)
        assert laptop.seqs == [1]
        assert await b.current_seq("bob") == 0
        assert await b.unsubscribe("ops", None) == []
        await scene.emit(status(cp="CP-9", user=None), status(cp="CP-5", user=None))
        await b.attach("witness", witness := Inbox())
        await a.subscribe("witness", ["CP-9"])
        await scene.emit(status(cp="CP-9", user=None, state="Available"))
        await witness.wait_for(1)
        assert len(desk.frames) == len(laptop.frames) == 1


async def test_session_pushes_only_when_the_user_asked_for_them() -> None:
    """session_event pushes reach alice only while the flag (set on any node) is on."""
    async with cluster() as scene:
        a, b = await scene.hub("api-a"), await scene.hub("api-b")
        phone = Inbox()
        await a.attach("alice", phone)
        await a.subscribe("ops", None)  # a watcher never gets session pushes
        await scene.emit(notice())
        await b.set_session_pushes("alice", True)
        await scene.emit(notice(), status())
        await phone.wait_for(2)
        assert [m["type"] for m in phone.messages] == ["session_event", "charging_status_update"]
        assert phone.seqs == [1, 2]
        await b.set_session_pushes("alice", False)
        await scene.emit(notice(), status(state="Finishing"))
        await phone.wait_for(3)
        assert [m["type"] for m in phone.messages][2:] == ["charging_status_update"]
        assert await a.current_seq("ops") == 2  # the two status updates only


async def test_a_user_role_connection_on_one_node_ends_the_admin_view_on_all() -> None:
    """ops holds an admin session on A and subscribes; a user-role connection of ops on B
    ends the subscription and the history that held other users' pushes, and blocks new
    subscriptions on A until it is admin again or gone."""
    async with cluster() as scene:
        a, b = await scene.hub("api-a"), await scene.hub("api-b")
        desk, phone = Inbox(), Inbox()
        await a.attach("ops", desk)
        await a.set_role("ops", desk, admin=True)
        await a.subscribe("ops", None)
        await scene.emit(status())
        await desk.wait_for(1)
        await b.attach("ops", phone)
        await b.set_role("ops", phone, admin=False)
        assert await a.missed_since("ops", 0) is None  # the admin-era push is not replayed
        assert await a.missed_since("ops", 1) == []
        with pytest.raises(Forbidden):
            await a.subscribe("ops", ["CP-1"])
        await b.set_role("ops", phone, admin=True)
        assert await a.subscribe("ops", ["CP-1"]) == ["CP-1"]
        await b.set_role("ops", phone, admin=False)
        b.detach("ops", phone)
        async with asyncio.timeout(5):  # the lease is released in the background
            while True:
                try:
                    assert await a.subscribe("ops", None) == "*"
                    break
                except Forbidden:
                    await asyncio.sleep(0.01)


async def test_a_dead_nodes_user_role_lease_expires() -> None:
    """A node that dies without detaching stops renewing its user-role lease: after it
    lapses, subscriptions are allowed again."""
    async with cluster() as scene:
        a, b = await scene.hub("api-a"), await scene.hub("api-b", lease=0.3)
        desk, phone = Inbox(), Inbox()
        await a.attach("ops", desk)
        await b.attach("ops", phone)
        await b.set_role("ops", phone, admin=False)
        await b.close()
        scene.hubs.remove(b)
        with pytest.raises(Forbidden):
            await a.subscribe("ops", None)
        async with asyncio.timeout(5):
            while True:
                try:
                    assert await a.subscribe("ops", None) == "*"
                    break
                except Forbidden:
                    await asyncio.sleep(0.05)


async def test_redis_losing_its_data_changes_the_epoch_and_resume_resyncs() -> None:
    """FLUSHDB (what a Redis restart without persistence does): the hub gives out a new
    epoch, a resume numbered before is refused, and the connected user's pushes are numbered
    again from 1 under the new epoch; subscriptions and session-push flags set through a
    node are restored by it."""
    async with cluster() as scene:
        a, b = await scene.hub("api-a"), await scene.hub("api-b")
        phone, desk = Inbox(), Inbox()
        await a.attach("alice", phone)
        await a.set_session_pushes("alice", True)
        await b.attach("ops", desk)
        await b.subscribe("ops", ["CP-1"])
        await scene.emit(status(), meter())
        await phone.wait_for(2)
        before = a.epoch
        assert b.epoch == before
        client = connect(scene.url)
        try:
            await client.flushdb()
        finally:
            await client.aclose()
        assert await b.missed_since("alice", 1) is None
        assert b.epoch != before
        assert await a.current_seq("alice") == 0  # A notices too, and re-marks alice
        assert a.epoch == b.epoch
        await scene.emit(status(state="SuspendedEV"), notice())
        await phone.wait_for(4)
        assert phone.seqs == [1, 2, 1, 2]
        assert [m["type"] for m in phone.messages][2:] == [
            "charging_status_update",
            "session_event",
        ]
        assert await b.missed_since("alice", 0) == phone.frames[2:]
        await desk.wait_for(3)  # ops's subscription, restored by node B
        assert desk.seqs == [1, 2, 1]
        client = connect(scene.url)
        try:
            assert (await client.get(keys.EPOCH)) == b.epoch.encode()
        finally:
            await client.aclose()


async def test_nodes_ride_out_a_redis_outage_by_themselves(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis unreachable: the publisher drops and counts what it cannot number (the core is
    never held up), says so once; when Redis is back both the publisher and the hub's
    subscription recover on their own, and resume fills the gap the outage left."""
    relay = Relay()
    port = await relay.start()
    async with empty_redis() as direct:
        url = direct.replace(":6379/", f":{port}/")
        bus = MemoryBus()
        publisher = PushPublisher(url, retry_delay=0.05)
        await publisher.start()
        publisher.follow(bus)
        hub = ClusterHub(url, "api-a")
        await hub.start()
        try:
            phone = Inbox()
            await hub.attach("alice", phone)
            await bus.publish(status())
            await phone.wait_for(1)

            await relay.cut()
            for state in ("SuspendedEV", "SuspendedEVSE", "Charging"):
                await bus.publish(status(state=state))  # returns at once: only queued
            await asyncio.wait_for(publisher.flushed(), 10)
            assert publisher.dropped == 3
            said = [r.getMessage() for r in caplog.records]
            assert len([m for m in said if m.startswith("push publisher: Redis does not")]) == 1

            await relay.start()
            async with asyncio.timeout(10):  # until the hub listens again: bounded
                while len(phone.frames) < 2:
                    await bus.publish(meter())
                    await asyncio.wait_for(publisher.flushed(), 5)
                    with contextlib.suppress(TimeoutError):
                        await phone.wait_for(2, timeout=0.2)
            latest = await hub.current_seq("alice")  # every emit was numbered: final
            while phone.seqs[-1] < latest:  # the last meter's delivery may be on its way
                await phone.wait_for(len(phone.frames) + 1)
            assert phone.seqs[-1] == latest
            missed = await hub.missed_since("alice", 1)
            assert missed is not None and missed[-1] == phone.frames[-1]
            assert [orjson.loads(f)["seq"] for f in missed] == list(range(2, latest + 1))
        finally:
            await hub.close()
            await publisher.close()
            await relay.cut()


async def test_the_cluster_numbers_and_renders_every_event_as_the_in_process_hub() -> None:
    """Every kind of domain event, through an UpdateHub and through publisher + Redis +
    ClusterHub with the same users, subscriptions and session-push flags: each user gets the
    same pushes (type, seq, data, droppable) from both."""
    everything: list[DomainEvent] = [
        status(),  # alice's
        dataclasses.replace(status(user="bob", state="Faulted"), owner_only=True),
        status(cp="CP-2", user=None, state="Available"),
        meter(),
        TransactionStarted("CP-1", 1, 7, "alice", "TAG", 1000, WHEN),
        TransactionStopped("CP-1", 1, 7, "alice", 2000, 1.0, "Local", WHEN),
        DataTransferReceived("CP-1", "acme", "hello", {"x": 1}, WHEN),
        DeviceStatusChanged("CP-2", DeviceJob.FIRMWARE, "Installing", WHEN),
        ReservationChanged("CP-3", 1, 4, "bob", "BOB", "Accepted", WHEN, WHEN),
        notice("alice"),
        notice("bob"),  # bob did not ask for session pushes
        SessionUpdated("CP-1", 1, 7, "alice", {"energyKWh": 1.0}),
        status(user="carol"),  # carol never connected: watchers only
        ChargePointConnectionChanged("CP-1", False, WHEN),
        ChargePointBooted("CP-1", WHEN),
    ]
    users = ("alice", "bob", "ops", "root")

    async def prepare(hub: Hub) -> dict[str, Inbox]:
        inboxes = {user: Inbox() for user in users}
        for user, inbox in inboxes.items():
            await hub.attach(user, inbox)
        await hub.subscribe("ops", ["CP-1"])
        await hub.subscribe("root", None)
        await hub.set_session_pushes("alice", True)
        return inboxes

    def seen(inbox: Inbox) -> list[tuple[object, ...]]:
        return [
            (m["type"], m["seq"], m["data"], droppable)
            for m, droppable in zip(inbox.messages, inbox.droppable, strict=True)
        ]

    local = UpdateHub()
    bus = MemoryBus()
    bus.subscribe(local.on_event)
    expected = await prepare(local)
    for event in everything:
        await bus.publish(event)
    async with cluster() as scene:
        got = await prepare(await scene.hub("api-a"))
        await scene.emit(*everything)
        for user in users:
            await got[user].wait_for(len(expected[user].frames))
        assert {u: seen(got[u]) for u in users} == {u: seen(expected[u]) for u in users}
    assert [len(expected[u].frames) for u in users] == [6, 2, 6, 9]  # not vacuous


async def test_batches_in_flight_together_keep_each_users_order_and_numbering() -> None:
    """Small batches, several in flight at once on the publisher's one connection: every
    user still gets their pushes in publish order, numbered 1, 2, 3 ... without a gap or a
    repeat, live and in the history; a watcher of everything gets them all in order too.

    Whether batches overlap depends on when the event loop runs the reply reader (on a loaded
    machine it may read each reply before the next batch is sent): the scenario runs on a fresh
    Redis until a run shows overlap (at most five runs), and every run must keep the order."""
    most_in_flight = 0
    for _run in range(5):
        most_in_flight = await _overlapping_batches_scenario()
        if most_in_flight > 1:
            break
    assert most_in_flight > 1  # the batches really overlapped


async def _overlapping_batches_scenario() -> int:
    """One run of the test above; returns the most batches that were in flight at once."""
    users = ("alice", "bob", "carol")
    rounds = 100
    async with cluster(batch_size=3, depth=4) as scene:
        a, b = await scene.hub("api-a"), await scene.hub("api-b")
        inboxes = {u: Inbox() for u in users}
        for i, u in enumerate(users):
            await (a if i % 2 else b).attach(u, inboxes[u])
        ops = Inbox()
        await a.attach("ops", ops)
        assert await a.subscribe("ops", None) == "*"
        await scene.emit(
            *(
                meter(cp=f"CP-{u}", user=u, kwh=float(n))
                for n in range(1, rounds + 1)
                for u in users
            )
        )
        assert scene.publisher.round_trips == rounds * len(users) // 3
        for u in users:
            frames = await inboxes[u].wait_for(rounds)
            assert inboxes[u].seqs == list(range(1, rounds + 1))
            kwh = [m["data"]["meterValue"]["energyImportKWh"] for m in inboxes[u].messages]
            assert kwh == [float(n) for n in range(1, rounds + 1)]
            assert await a.missed_since(u, 0) == frames
        await ops.wait_for(rounds * len(users))
        assert ops.seqs == list(range(1, rounds * len(users) + 1))
        assert [
            (m["data"]["chargePointId"], m["data"]["meterValue"]["energyImportKWh"])
            for m in ops.messages
        ] == [(f"CP-{u}", float(n)) for n in range(1, rounds + 1) for u in users]
        assert scene.publisher.dropped == 0
        return scene.publisher.most_in_flight
