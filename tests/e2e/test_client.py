"""The Python client library (``charging_api.client``) end to end, over real sockets: the
ordinary flow, and what it promises when the network fails (reconnect with backoff, re-auth,
resume with every push exactly once and in order, ``resync_required``, idempotent start retry).
Network faults come from a loopback proxy between the client and the server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from charging_api.client import ChargingClient, RequestFailed
from tests.conftest import RunningServer, make_settings, running_server
from tests.peers.proxy import TcpProxy, proxy_to
from tests.peers.py_charge_point import LibraryChargePoint, connected_charge_point
from tests.reliability.helpers import energy, transactions_in_db

CP, TAG = "CP-PYCLIENT", "TAG-PY"


@contextlib.asynccontextmanager
async def server_behind_proxy(
    tmp_path: Path, **overrides: Any
) -> AsyncIterator[tuple[RunningServer, TcpProxy, LibraryChargePoint]]:
    async with running_server(make_settings(tmp_path, **overrides)) as server:
        port = urlsplit(server.app_url).port
        assert port is not None
        async with (
            proxy_to("127.0.0.1", port) as proxy,
            connected_charge_point(server.ocpp_url, CP) as cp,
        ):
            yield server, proxy, cp


def fast_client(url: str, token: Any) -> ChargingClient:
    return ChargingClient(url, token, backoff_initial=0.05, backoff_max=0.2, request_timeout=10)


async def start_with(client: ChargingClient, cp: LibraryChargePoint) -> int:
    start = asyncio.create_task(client.start_charging(CP, 1))
    assert (await asyncio.wait_for(cp.remote_starts.get(), 5)) == {"id_tag": TAG, "connector_id": 1}
    started = await cp.start_tx(1, TAG, 0)
    reply = await start
    assert reply["transactionId"] == started.transaction_id
    return int(started.transaction_id)


async def updates(client: ChargingClient, count: int) -> list[dict[str, Any]]:
    return [await client.next_update(timeout=5) for _ in range(count)]


def brief(update: dict[str, Any]) -> tuple[Any, ...]:
    data = update["data"]
    if update["type"] == "meter_values_update":
        return (update.get("seq"), update["type"], data["meterValue"]["energyImportKWh"])
    return (update.get("seq"), update["type"], data.get("status"))


async def test_connect_start_updates_stop(tmp_path: Path) -> None:
    """The client authenticates, starts, receives the pushes in order, stops; errors raise."""
    async with (
        running_server(make_settings(tmp_path)) as server,
        connected_charge_point(server.ocpp_url, CP) as cp,
        fast_client(server.app_url, server.token("py", id_tag=TAG)) as client,
    ):
        assert client.session["userId"] == "py"
        assert client.session["success"] is True
        tx = await start_with(client, cp)
        await cp.status(1, "Charging")
        await cp.meter(1, tx, energy(2500))
        assert [brief(u) for u in await updates(client, 3)] == [
            (1, "transaction_update", "Started"),
            (2, "charging_status_update", "Charging"),
            (3, "meter_values_update", 2.5),
        ]
        stopped = await client.stop_charging(CP, tx)
        assert stopped == {
            "success": True,
            "transactionId": tx,
            "status": "Accepted",
            "message": "Charging stopped successfully",
        }
        assert (await cp.remote_stops.get()) == {"transaction_id": tx}
        await cp.stop_tx(tx, 3000, reason="Remote")
        ended = await client.next_update("transaction_update", timeout=5)
        assert ended["data"]["status"] == "Stopped" and ended["data"]["energyKWh"] == 3.0
        state = await client.get_state()
        assert state["transactions"] == []
        with pytest.raises(RequestFailed) as failed:
            await client.stop_charging(CP, tx)
        assert failed.value.code == "TRANSACTION_NOT_ACTIVE"
        assert client.reconnects == 0


async def test_cut_connection_reconnects_reauths_and_resumes_exactly_once(tmp_path: Path) -> None:
    """After the network cuts the connection, the client reconnects with backoff, fetches a
    fresh token, resumes, and the app sees every push exactly once and in seq order, even
    when a live push overtakes the replay."""
    async with server_behind_proxy(tmp_path) as (server, proxy, cp):
        tokens = 0

        def token() -> str:
            nonlocal tokens
            tokens += 1
            return server.token("py", id_tag=TAG)

        async with fast_client(proxy.url("ws", "/ws"), token) as client:
            tx = await start_with(client, cp)
            await cp.meter(1, tx, energy(100))
            assert [brief(u) for u in await updates(client, 2)] == [
                (1, "transaction_update", "Started"),
                (2, "meter_values_update", 0.1),
            ]
            # The link goes silent, then dies: pushes 3 and 4 are lost in flight.
            proxy.stall()
            await cp.meter(1, tx, energy(200))
            await cp.status(1, "Charging")
            proxy.cut()
            # While the client is away (its reconnect attempts get nowhere): pushes 5 and 6.
            await cp.meter(1, tx, energy(300))
            await cp.status(1, "SuspendedEV")
            # Let it through, but hold its resume until a live push (7) went out before it.
            mark = len(proxy.downstream)
            proxy.stall_up_after(b'"auth_response"')
            proxy.resume()
            await asyncio.wait_for(proxy.wait_for_down(b'"auth_response"', mark), 10)
            await cp.meter(1, tx, energy(400))
            await asyncio.wait_for(proxy.wait_for_down(b'"seq":7,', mark), 5)
            proxy.resume("up")
            await cp.meter(1, tx, energy(500))

            assert [brief(u) for u in await updates(client, 6)] == [
                (3, "meter_values_update", 0.2),
                (4, "charging_status_update", "Charging"),
                (5, "meter_values_update", 0.3),
                (6, "charging_status_update", "SuspendedEV"),
                (7, "meter_values_update", 0.4),
                (8, "meter_values_update", 0.5),
            ]
            assert client._updates.empty()  # nothing twice
            assert client.reconnects >= 1
            assert tokens == 2  # re-authenticated with a freshly fetched token
            assert client.last_seq == 8


async def test_gap_older_than_history_surfaces_as_resync_required(tmp_path: Path) -> None:
    """When the missed pushes are older than the server's history, the client yields a
    ``resync_required`` update; get_state then rebuilds the screen and pushes continue."""
    async with (
        server_behind_proxy(tmp_path, history_size=5) as (server, proxy, cp),
        fast_client(proxy.url("ws", "/ws"), server.token("py", id_tag=TAG)) as client,
    ):
        tx = await start_with(client, cp)
        assert brief(await client.next_update(timeout=5)) == (
            1,
            "transaction_update",
            "Started",
        )
        proxy.stall()
        proxy.cut()
        for wh in range(100, 900, 100):  # 8 pushes while away; the history keeps 5
            await cp.meter(1, tx, energy(wh))
        proxy.resume()
        resync = await client.next_update(timeout=10)
        assert resync == {"type": "resync_required", "data": {"currentSeq": 9}}
        state = await client.get_state()
        assert [t["transactionId"] for t in state["transactions"]] == [tx]
        await cp.meter(1, tx, energy(900))
        assert brief(await client.next_update(timeout=5)) == (10, "meter_values_update", 0.9)


async def test_start_retried_across_a_cut_starts_once(tmp_path: Path) -> None:
    """A start whose connection is cut before the answer is re-sent with the same message id
    after the reconnect: the app gets the outcome, the charge point was asked once, one
    transaction is stored."""
    async with server_behind_proxy(tmp_path) as (server, proxy, cp):
        async with fast_client(proxy.url("ws", "/ws"), server.token("py", id_tag=TAG)) as client:
            start = asyncio.create_task(client.start_charging(CP, 1))
            assert (await asyncio.wait_for(cp.remote_starts.get(), 5))["connector_id"] == 1
            accepted, mark = proxy.accepted, len(proxy.downstream)
            proxy.cut()
            # The client is back (re-authenticated) while the charge point is still starting.
            await asyncio.wait_for(proxy.wait_for_down(b'"auth_response"', mark), 5)
            assert proxy.accepted == accepted + 1
            started = await cp.start_tx(1, TAG, 0)
            reply = await asyncio.wait_for(start, 10)
            assert reply["success"] is True
            assert reply["transactionId"] == started.transaction_id
            assert cp.remote_starts.empty()
            assert client.reconnects == 1
        rows = transactions_in_db(server.settings.database_url)
        assert [(r[0], r[3]) for r in rows] == [(started.transaction_id, "py")]


async def test_two_client_runs_in_a_row_each_start_a_real_charge(tmp_path: Path) -> None:
    """Two ChargingClient instances, one after the other within the idempotency window, send
    the same message ids (py-1, py-2, ...) with the same start: each run is a new request
    (a RemoteStart and a new transaction), not the first run's outcome replayed."""
    async with (
        running_server(make_settings(tmp_path)) as server,
        connected_charge_point(server.ocpp_url, CP) as cp,
    ):
        token = server.token("py", id_tag=TAG)
        transactions = []
        for _ in range(2):
            async with fast_client(server.app_url, token) as client:
                tx = await start_with(client, cp)  # asserts the RemoteStart reached the cp
                stopped = await client.stop_charging(CP, tx)
                assert stopped["success"] is True and stopped["transactionId"] == tx
                assert (await cp.remote_stops.get()) == {"transaction_id": tx}
                await cp.stop_tx(tx, 1000, reason="Remote")
                updates_seen = []
                for _ in range(5):  # Started, then Stopped (bounded)
                    update = await client.next_update("transaction_update", timeout=5)
                    updates_seen.append(update["data"]["status"])
                    if update["data"]["status"] == "Stopped":
                        break
                assert updates_seen == ["Started", "Stopped"]
                transactions.append(tx)
        assert transactions[0] != transactions[1]
        rows = transactions_in_db(server.settings.database_url)
        assert sorted(r[0] for r in rows) == sorted(transactions)


async def test_a_repeated_id_answers_only_the_same_request(tmp_path: Path) -> None:
    """Over one socket: the same id with other data is a new request (its own RemoteStart);
    the identical message sent again gets the first outcome without asking the charge point."""
    async with (
        running_server(make_settings(tmp_path)) as server,
        connected_charge_point(server.ocpp_url, CP) as cp,
        connected_charge_point(server.ocpp_url, "CP-OTHER") as other,
        fast_client(server.app_url, server.token("py", id_tag=TAG)) as client,
    ):
        first = asyncio.create_task(
            client.request(
                "start_charging_request", {"chargePointId": CP, "connectorId": 1}, message_id="2"
            )
        )
        assert (await asyncio.wait_for(cp.remote_starts.get(), 5))["connector_id"] == 1
        tx1 = (await cp.start_tx(1, TAG, 0)).transaction_id
        assert (await first)["data"]["transactionId"] == tx1

        second = asyncio.create_task(
            client.request(
                "start_charging_request",
                {"chargePointId": "CP-OTHER", "connectorId": 2},
                message_id="2",
            )
        )
        assert (await asyncio.wait_for(other.remote_starts.get(), 5))["connector_id"] == 2
        tx2 = (await other.start_tx(2, TAG, 0)).transaction_id
        reply = (await second)["data"]
        assert (reply["transactionId"], reply["connectorId"]) == (tx2, 2)
        assert tx2 != tx1
        assert cp.remote_starts.empty()
