"""Apps that come and go, retry, or stop reading: sequence numbers, resume, RESYNC_REQUIRED,
get_state, idempotent starts, and the send-queue policy for a stuck client.

Real server in-process, real sockets, the ``ocpp`` library charge point; the stuck client sits
behind a loopback proxy that stops forwarding (``stall``) so the server's writes really block.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from urllib.parse import urlsplit

from tests.conftest import make_settings, running_server
from tests.peers.proxy import proxy_to
from tests.peers.py_charge_point import connected_charge_point
from tests.reliability.helpers import (
    app_at,
    drain_pushes,
    energy,
    meter_batch,
    start_charge,
    summary,
    transactions_in_db,
)


async def test_resume_replays_exactly_the_missed_pushes_in_order(tmp_path: Path) -> None:
    """Every push has the user's next seq; after a reconnect, resume with lastSeq replays
    exactly the pushes missed, in order, once; then live pushes continue the sequence."""
    cp_id, tag = "CP-SEQ", "TAG-SEQ"
    async with (
        running_server(make_settings(tmp_path)) as server,
        connected_charge_point(server.ocpp_url, cp_id) as cp,
    ):
        token = server.token("rider", id_tag=tag)
        async with app_at(server.app_url, token) as first:
            tx = await start_charge(first, cp, cp_id, 1, tag)
            await cp.status(1, "Charging")
            await cp.meter(1, tx, energy(100))
            seen = await drain_pushes(first)
            assert [(p["seq"], summary(p)) for p in seen] == [
                (1, ("transaction_update", "Started")),
                (2, ("charging_status_update", "Charging")),
                (3, ("meter_values_update", 0.1)),
            ]
        # The app is away (tunnel, phone asleep) while the session goes on.
        await cp.meter(1, tx, energy(200))
        await cp.status(1, "SuspendedEV")
        await cp.meter(1, tx, energy(300))

        async with app_at(server.app_url) as back:
            auth = await back.request("auth_request", {"token": token})
            assert auth["data"]["seq"] == 6  # tells the app how far the stream has gone
            epoch = auth["data"]["epoch"]  # the same process: the first session was told it too
            resumed = await back.request("resume", {"lastSeq": 3, "epoch": epoch})
            assert resumed["type"] == "resume_response"
            assert resumed["data"] == {"success": True, "replayed": 3, "currentSeq": 6}
            replayed = await drain_pushes(back)
            assert [(p["seq"], summary(p)) for p in replayed] == [
                (4, ("meter_values_update", 0.2)),
                (5, ("charging_status_update", "SuspendedEV")),
                (6, ("meter_values_update", 0.3)),
            ]
            # Nothing twice: resuming from where we are now replays nothing.
            again = await back.request("resume", {"lastSeq": 6, "epoch": epoch})
            assert again["data"] == {"success": True, "replayed": 0, "currentSeq": 6}
            await cp.meter(1, tx, energy(400))
            live = await drain_pushes(back)
            assert [(p["seq"], summary(p)) for p in live] == [(7, ("meter_values_update", 0.4))]


async def test_gap_older_than_history_is_resync_required_and_get_state_rebuilds(
    tmp_path: Path,
) -> None:
    """A gap older than HISTORY_SIZE answers RESYNC_REQUIRED (with currentSeq); get_state
    returns the user's open transactions and their connectors' current states."""
    cp_id, tag = "CP-RESYNC", "TAG-RESYNC"
    async with (
        running_server(make_settings(tmp_path, history_size=5)) as server,
        connected_charge_point(server.ocpp_url, cp_id) as cp,
    ):
        token = server.token("rider", id_tag=tag)
        async with app_at(server.app_url, token) as first:
            tx = await start_charge(first, cp, cp_id, 2, tag, meter_start=1000)
            last_seen = (await drain_pushes(first))[-1]["seq"]
            assert last_seen == 1
        for wh in range(1100, 1800, 100):  # 7 pushes while away: more than the history holds
            await cp.meter(2, tx, energy(wh))
        await cp.status(2, "Charging")

        async with app_at(server.app_url, token) as back:
            epoch = server.app.app_server.epoch
            reply = await back.request("resume", {"lastSeq": last_seen, "epoch": epoch}, timeout=5)
            assert reply["type"] == "resume_response"
            assert reply["data"]["success"] is False
            assert reply["error"]["code"] == "RESYNC_REQUIRED"
            assert reply["error"]["details"] == {"currentSeq": 9, "epoch": epoch}
            ahead = await back.request("resume", {"lastSeq": 50})  # e.g. from before a restart
            assert ahead["error"]["code"] == "RESYNC_REQUIRED"
            assert await drain_pushes(back) == []  # nothing half-replayed

            state = await back.request("get_state")
            assert state["type"] == "state"
            data = state["data"]
            assert data["seq"] == 9
            assert [
                (
                    t["transactionId"],
                    t["chargePointId"],
                    t["connectorId"],
                    t["status"],
                    t["meterStartWh"],
                    t["userId"],
                )
                for t in data["transactions"]
            ] == [(tx, cp_id, 2, "Active", 1000, "rider")]
            assert [
                (c["chargePointId"], c["connectorId"], c["status"]) for c in data["connectors"]
            ] == [(cp_id, 2, "Charging")]
            # From the state's seq on, the stream continues without a gap.
            await cp.meter(2, tx, energy(1900))
            assert [p["seq"] for p in await drain_pushes(back)] == [10]


async def test_retried_start_with_the_same_message_id_starts_once(tmp_path: Path) -> None:
    """The same start_charging_request id from the same user (same or a second connection,
    in flight or after) gets the first attempt's outcome; one RemoteStart, one transaction."""
    cp_id, tag = "CP-IDEM", "TAG-IDEM"
    start = {"chargePointId": cp_id, "connectorId": 1}
    async with (
        running_server(make_settings(tmp_path)) as server,
        connected_charge_point(server.ocpp_url, cp_id) as cp,
        app_at(server.app_url, server.token("idem", id_tag=tag)) as phone,
        app_at(server.app_url, server.token("idem", id_tag=tag)) as tablet,
        app_at(server.app_url, server.token("other", id_tag="TAG-OTHER")) as other,
    ):
        first = asyncio.create_task(phone.request("start_charging_request", start, "start-42"))
        assert (await cp.remote_starts.get()) == {"id_tag": tag, "connector_id": 1}
        # The phone lost its connection; the app retries the same message from the tablet.
        retry = asyncio.create_task(tablet.request("start_charging_request", start, "start-42"))
        await tablet.request("heartbeat")  # the retry is in the server, waiting on the first
        assert not retry.done()
        started = await cp.start_tx(1, tag, 0)
        replies = [
            await first,
            await retry,
            await phone.request("start_charging_request", start, "start-42"),
        ]
        for reply in replies:
            assert reply["type"] == "start_charging_response"
            assert reply["data"] == {
                "success": True,
                "transactionId": started.transaction_id,
                "connectorId": 1,
                "status": "Accepted",
                "message": "Charging started successfully",
            }
        assert cp.remote_starts.empty()

        # Another user's identical message id is another request.
        theirs = asyncio.create_task(
            other.request("start_charging_request", {**start, "connectorId": 2}, "start-42")
        )
        assert (await cp.remote_starts.get()) == {"id_tag": "TAG-OTHER", "connector_id": 2}
        other_tx = (await cp.start_tx(2, "TAG-OTHER", 0)).transaction_id
        assert (await theirs)["data"]["transactionId"] == other_tx != started.transaction_id

        # A failure is remembered too: the retry gets it without asking the charge point again.
        cp.remote_start_answer = "Rejected"
        refused = await phone.request(
            "start_charging_request", {**start, "connectorId": 3}, "start-43"
        )
        assert refused["error"]["code"] == "CHARGE_POINT_REJECTED"
        assert (await cp.remote_starts.get())["connector_id"] == 3
        again = await tablet.request(
            "start_charging_request", {**start, "connectorId": 3}, "start-43"
        )
        assert again["error"] == refused["error"]
        assert cp.remote_starts.empty()

        rows = transactions_in_db(server.settings.database_url)
        assert [(r[0], r[2], r[3]) for r in rows] == [
            (started.transaction_id, 1, "idem"),
            (other_tx, 2, "other"),
        ]


async def test_stuck_app_client_loses_meter_updates_then_is_closed_1013(tmp_path: Path) -> None:
    """A client that stops reading: its meter updates are dropped oldest-first (seq gaps),
    status/transaction updates are kept; when its queue holds only those it is closed with
    1013; resume then recovers every kept update; another user is served all along."""
    queue_size = 64
    settings = make_settings(tmp_path, send_queue_size=queue_size)
    async with running_server(settings) as server:
        app_port = urlsplit(server.app_url).port
        assert app_port is not None
        stats = server.app.app_server.stats
        async with (
            proxy_to("127.0.0.1", app_port, upstream_rcvbuf=4096) as proxy,
            connected_charge_point(server.ocpp_url, "CP-SLOW") as cp,
            connected_charge_point(server.ocpp_url, "CP-FAST") as fast_cp,
            app_at(server.app_url, server.token("fast", id_tag="TAG-FAST")) as fast,
        ):
            slow_token = server.token("slow", id_tag="TAG-SLOW")
            slow_cm = app_at(proxy.url("ws", "/ws"), slow_token)
            slow = await slow_cm.__aenter__()
            try:
                tx = await start_charge(slow, cp, "CP-SLOW", 1, "TAG-SLOW")
                fast_tx = await start_charge(fast, fast_cp, "CP-FAST", 1, "TAG-FAST")
                await drain_pushes(fast)

                async def fill_until_dropping(wh: int) -> int:
                    """Meter updates until the server starts dropping: the socket is full and
                    the send queue holds SEND_QUEUE_SIZE meter updates. Fewer pushes per OCPP
                    message than the queue holds, so a queue that is being drained never fills."""
                    dropped = stats()["droppedFrames"]
                    for _ in range(5000):
                        wh = await meter_batch(cp, 1, tx, wh, queue_size // 2)
                        if stats()["droppedFrames"] > dropped:
                            return wh
                    raise AssertionError("the stalled connection never filled up")

                # Phase 1: the client stops reading; meter updates overflow and are dropped.
                proxy.stall()
                wh = await fill_until_dropping(1000)
                await cp.status(1, "SuspendedEV")
                wh = await meter_batch(cp, 1, tx, wh, 20)
                assert stats()["droppedFrames"] >= 20
                # The other user is not slowed down.
                began = time.monotonic()
                await fast_cp.meter(1, fast_tx, energy(5000))
                assert [summary(p) for p in await drain_pushes(fast)] == [
                    ("meter_values_update", 5.0)
                ]
                assert (await fast.request("get_state"))["data"]["transactions"]
                assert time.monotonic() - began < 1

                proxy.resume()
                phase_1 = await drain_pushes(slow)
                # (the heartbeat reply that drain_pushes waits for evicted one more meter update)
                dropped_1 = stats()["droppedFrames"]
                seqs = [p["seq"] for p in phase_1]
                assert seqs == sorted(set(seqs))
                missing = set(range(seqs[0], seqs[-1] + 1)) - set(seqs)
                assert len(missing) == dropped_1  # every drop is a visible gap in seq
                assert ("charging_status_update", "SuspendedEV") in [summary(p) for p in phase_1]
                last_seen = seqs[-1]

                # Phase 2: stuck again; once only status updates are queued, close with 1013.
                proxy.stall()
                wh = await fill_until_dropping(wh)
                statuses = ["Charging", "SuspendedEVSE"] * queue_size
                for status in statuses[: queue_size + 1]:
                    await cp.status(1, status)
                proxy.resume()
                await asyncio.wait_for(slow.ws.wait_closed(), 10)
                assert slow.ws.close_code == 1013
                while not slow.pushes.empty():
                    last_seen = max(last_seen, slow.pushes.get_nowait()["seq"])
            finally:
                await slow_cm.__aexit__(None, None, None)

            # The app reconnects and resumes: every status update kept for it arrives, once.
            async with app_at(server.app_url, slow_token) as back:
                reply = await back.request(
                    "resume",
                    {"lastSeq": last_seen, "epoch": server.app.app_server.epoch},
                    timeout=5,
                )
                assert reply["data"]["success"] is True, reply
                replayed = await drain_pushes(back)
                assert [p["seq"] for p in replayed] == list(
                    range(last_seen + 1, reply["data"]["currentSeq"] + 1)
                )
                assert [
                    summary(p)[1] for p in replayed if p["type"] != "meter_values_update"
                ] == statuses[: queue_size + 1]
            assert (await fast.request("heartbeat"))["type"] == "heartbeat"


async def test_resume_longer_than_the_send_queue_is_replayed_whole(tmp_path: Path) -> None:
    """A resume that replays more pushes than SEND_QUEUE_SIZE (up to HISTORY_SIZE) delivers
    them all, in order, instead of tripping the overflow policy (close 1013)."""
    cp_id, tag = "CP-LONG", "TAG-LONG"
    queue_size = 8
    async with (
        running_server(make_settings(tmp_path, send_queue_size=queue_size)) as server,
        connected_charge_point(server.ocpp_url, cp_id) as cp,
    ):
        token = server.token("rider", id_tag=tag)
        async with app_at(server.app_url, token) as first:
            await start_charge(first, cp, cp_id, 1, tag)
            last_seen = (await drain_pushes(first))[-1]["seq"]
        statuses = ["Charging", "SuspendedEV"] * (queue_size * 2)
        for status in statuses:  # status updates: never droppable
            await cp.status(1, status)
        async with app_at(server.app_url, token) as back:
            reply = await back.request(
                "resume", {"lastSeq": last_seen, "epoch": server.app.app_server.epoch}, timeout=5
            )
            assert reply["data"] == {
                "success": True,
                "replayed": len(statuses),
                "currentSeq": last_seen + len(statuses),
            }
            replayed = await drain_pushes(back)
            assert [p["seq"] for p in replayed] == list(
                range(last_seen + 1, last_seen + len(statuses) + 1)
            )
            assert [p["data"]["status"] for p in replayed] == statuses
            await cp.status(1, "Charging")  # and the connection carries on
            assert [p["seq"] for p in await drain_pushes(back)] == [last_seen + len(statuses) + 1]
