"""The server comes and goes: ``charging-api serve`` as a real subprocess, SIGKILLed in the
middle of a session and restarted on the same SQLite file, or SIGTERMed to drain.

What the user saw, what the database file holds (read with plain sqlite3 between the two
processes, i.e. exactly what the crash left), and that nothing was lost or doubled.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

from tests.conftest import AppClient
from tests.peers.proxy import proxy_to
from tests.peers.py_charge_point import connected_charge_point
from tests.reliability.helpers import (
    ago,
    app_at,
    drain_pushes,
    energy,
    energy_samples_in_db,
    meter_batch,
    start_charge,
    summary,
    transactions_in_db,
)
from tests.serverproc import ServerProcess

CP, TAG = "CP-PROC", "TAG-PROC"


async def next_push(app: AppClient, timeout: float = 5) -> dict[str, Any]:
    return await asyncio.wait_for(app.pushes.get(), timeout)


async def test_sigkill_mid_session_then_restart_loses_nothing_acknowledged(
    tmp_path: Path,
) -> None:
    """SIGKILL mid-session and restart on the same database: the transaction, its flushed
    meter samples and its owner are there; the charge point reconnects (its replayed start
    gets the same id), the user re-authenticates and stops the charge; nothing doubled."""
    started_at = ago(60)
    async with ServerProcess(tmp_path) as proc:
        url = proc.env["DATABASE_URL"]
        token = proc.token("owner", id_tag=TAG)
        async with (
            connected_charge_point(proc.ocpp_url, CP) as cp,
            app_at(proc.app_url, token) as app,
        ):
            request = asyncio.create_task(
                app.request("start_charging_request", {"chargePointId": CP, "connectorId": 1})
            )
            await asyncio.wait_for(cp.remote_starts.get(), 5)
            tx = (await cp.start_tx(1, TAG, 1000, timestamp=started_at)).transaction_id
            assert (await request)["data"]["transactionId"] == tx
            for wh in (1100, 1200, 1300):
                await cp.meter(1, tx, energy(wh))
            stored = await app.request("get_meter_values", {"transactionId": tx})
            assert [s["energyImportKWh"] for s in stored["data"]["meterValues"]] == [1.1, 1.2, 1.3]
            # The flusher writes them within its interval: wait until they are on disk.
            for _ in range(500):  # bounded: 5 s
                if energy_samples_in_db(url, tx) == [1.1, 1.2, 1.3]:
                    break
                await asyncio.sleep(0.01)
            assert energy_samples_in_db(url, tx) == [1.1, 1.2, 1.3]
            await cp.meter(1, tx, energy(1400))  # acknowledged, but still in the 0.2 s buffer
            last_seq = (await drain_pushes(app))[-1]["seq"]

            assert await proc.stop(signal.SIGKILL) == -signal.SIGKILL
            # Both peers just see the connection die (no close frame: 1006).
            await asyncio.wait_for(app.ws.wait_closed(), 5)
            assert app.ws.close_code == 1006
            await asyncio.wait_for(cp._connection.wait_closed(), 5)

        # What the crash left on disk: the transaction (open, owned), the flushed samples.
        assert transactions_in_db(url) == [(tx, CP, 1, "owner", 1000, None, 0)]
        kept = energy_samples_in_db(url, tx)
        assert kept[:3] == [1.1, 1.2, 1.3]
        # The sample acknowledged within the flush interval before the kill may be lost;
        # it is never invented or doubled.
        assert kept in ([1.1, 1.2, 1.3], [1.1, 1.2, 1.3, 1.4]), kept

        await proc.restart()
        async with connected_charge_point(proc.ocpp_url, CP) as cp, app_at(proc.app_url) as app:
            # The charge point missed our answer to its StartTransaction? It resends it.
            replay = await cp.start_tx(1, TAG, 1000, timestamp=started_at)
            assert replay.transaction_id == tx
            await cp.status(1, "Charging")

            auth = await app.request("auth_request", {"token": token})
            assert auth["data"]["success"] is True
            resumed = await app.request("resume", {"lastSeq": last_seq})
            assert resumed["error"]["code"] == "RESYNC_REQUIRED"  # history died with the process
            state = (await app.request("get_state"))["data"]
            assert [
                (t["transactionId"], t["userId"], t["status"]) for t in state["transactions"]
            ] == [(tx, "owner", "Active")]
            assert [(c["connectorId"], c["status"]) for c in state["connectors"]] == [
                (1, "Charging")
            ]

            stop = await app.request(
                "stop_charging_request", {"chargePointId": CP, "transactionId": tx}
            )
            assert stop["data"]["success"] is True, stop
            assert (await asyncio.wait_for(cp.remote_stops.get(), 5)) == {"transaction_id": tx}
            await cp.meter(1, tx, energy(1500))
            await cp.stop_tx(tx, 1600, reason="Remote")
            assert [summary(p) for p in await drain_pushes(app)] == [
                ("meter_values_update", 1.5),
                ("transaction_update", "Stopped"),
            ]
            samples = await app.request("get_meter_values", {"transactionId": tx})
            after = [s["energyImportKWh"] for s in samples["data"]["meterValues"]]
        assert after == [*kept, 1.5]
        assert await proc.stop(signal.SIGTERM) == 0
    assert transactions_in_db(url) == [(tx, CP, 1, "owner", 1000, 1600, 1)]
    assert energy_samples_in_db(url, tx) == [*kept, 1.5]


async def test_sigterm_drains_tells_apps_closes_everyone_and_flushes(tmp_path: Path) -> None:
    """SIGTERM: app clients get a server_shutdown push then close 1001, charge points are
    closed (1001) so they reconnect elsewhere, buffered meter samples reach the disk, and the
    process exits 0 within a bound."""
    async with ServerProcess(tmp_path) as proc:
        url = proc.env["DATABASE_URL"]
        async with (
            connected_charge_point(proc.ocpp_url, CP) as cp,
            app_at(proc.app_url, proc.token("owner", id_tag=TAG)) as app,
            app_at(proc.app_url, proc.token("bystander")) as bystander,
        ):
            request = asyncio.create_task(
                app.request("start_charging_request", {"chargePointId": CP, "connectorId": 1})
            )
            await asyncio.wait_for(cp.remote_starts.get(), 5)
            tx = (await cp.start_tx(1, TAG, 0)).transaction_id
            assert (await request)["data"]["transactionId"] == tx
            assert summary(await next_push(app)) == ("transaction_update", "Started")
            # 200 samples acknowledged just before the signal: most still sit in the buffer.
            wh = 1
            for _ in range(4):
                wh = await meter_batch(cp, 1, tx, wh, 50)

            began = time.monotonic()
            proc.kill(signal.SIGTERM)
            for client in (app, bystander):
                async with asyncio.timeout(10):
                    while (push := await client.pushes.get())["type"] != "server_shutdown":
                        assert push["type"] == "meter_values_update"
                assert push["data"]["message"].startswith("Server is shutting down")
                await asyncio.wait_for(client.ws.wait_closed(), 10)
                assert client.ws.close_code == 1001
            await asyncio.wait_for(cp._connection.wait_closed(), 10)
            assert cp._connection.close_code == 1001
            assert await proc.wait(10) == 0
            elapsed = time.monotonic() - began
            assert elapsed < 5, f"drain took {elapsed:.1f}s"

    assert transactions_in_db(url) == [(tx, CP, 1, "owner", 0, None, 0)]
    assert energy_samples_in_db(url, tx) == [round(i / 1000, 6) for i in range(1, 201)]


async def test_sigterm_with_a_stuck_app_client_still_exits_in_bounded_time(tmp_path: Path) -> None:
    """A client that never answers the closing handshake does not hold the drain: the others
    are closed with 1001 at once, the stuck one is dropped after the close timeout, exit 0."""
    async with (
        ServerProcess(tmp_path) as proc,
        proxy_to("127.0.0.1", proc.app_port) as proxy,
        app_at(proxy.url("ws", "/ws"), proc.token("stuck")) as stuck,
        app_at(proc.app_url, proc.token("fine")) as fine,
    ):
        proxy.stall()  # from now on the stuck client neither reads nor answers
        began = time.monotonic()
        proc.kill(signal.SIGTERM)
        shutdown = await next_push(fine, 10)
        assert shutdown["type"] == "server_shutdown"
        await asyncio.wait_for(fine.ws.wait_closed(), 10)
        assert fine.ws.close_code == 1001
        assert time.monotonic() - began < 3
        assert await proc.wait(15) == 0
        elapsed = time.monotonic() - began
        # Bounded by the 5 s WebSocket close timeout (plus start-up/exit of Python).
        assert elapsed < 9, f"drain took {elapsed:.1f}s"
        assert stuck.pushes.empty()
        proxy.cut()  # (so that our own side of the stuck client closes at once)


async def test_resume_without_epoch_after_a_restart_is_resync_not_a_silent_gap(
    tmp_path: Path,
) -> None:
    """A lastSeq from before a restart, sent without epoch, is RESYNC_REQUIRED even when the
    new process has numbered that far already (it used to replay only the pushes after that
    number, silently dropping the rest, here the transaction_update Stopped)."""
    async with ServerProcess(tmp_path) as proc:
        token = proc.token("owner", id_tag=TAG)
        async with (
            connected_charge_point(proc.ocpp_url, CP) as cp,
            app_at(proc.app_url, token) as app,
        ):
            tx = await start_charge(app, cp, CP, 1, TAG, meter_start=1000)
            await cp.status(1, "Charging")
            await cp.meter(1, tx, energy(1100))
            old_seq = (await drain_pushes(app))[-1]["seq"]
            assert old_seq == 3  # Started, Charging, the meter value

        await proc.restart()
        async with (
            connected_charge_point(proc.ocpp_url, CP) as cp,
            app_at(proc.app_url, token) as phone,  # the owner's other device, online
        ):
            await cp.status(1, "SuspendedEV")
            await cp.meter(1, tx, energy(1200))
            await cp.stop_tx(tx, 1300)
            seen = [(p["seq"], summary(p)) for p in await drain_pushes(phone)]
            assert seen == [
                (1, ("charging_status_update", "SuspendedEV")),
                (2, ("meter_values_update", 1.2)),
                (3, ("transaction_update", "Stopped")),
            ]
            # The first app comes back with its number from the old process and no epoch: the
            # new process has numbered exactly that far, so "nothing missed" would hide the stop.
            async with app_at(proc.app_url) as back:
                auth = await back.request("auth_request", {"token": token})
                assert auth["data"]["seq"] == 3
                resumed = await back.request("resume", {"lastSeq": old_seq})
                assert resumed["type"] == "resume_response"
                assert resumed["error"]["code"] == "RESYNC_REQUIRED", resumed
                assert resumed["error"]["details"] == {
                    "currentSeq": 3,
                    "epoch": auth["data"]["epoch"],
                }
                assert await drain_pushes(back) == []  # nothing half-replayed
                state = (await back.request("get_state"))["data"]
                assert [(t["transactionId"], t["status"]) for t in state["transactions"]] == []
                # With this process's epoch the same number is proven: nothing to replay.
                own = await back.request("resume", {"lastSeq": 3, "epoch": auth["data"]["epoch"]})
                assert own["data"] == {"success": True, "replayed": 0, "currentSeq": 3}
