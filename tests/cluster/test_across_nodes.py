"""What a user and a charge point see when the cluster's parts live in different processes,
and when some of them die (issue 12's proof).

The user's devices connect straight to chosen api nodes (or through HAProxy after a node died)
and the charge point, the PyPI ``ocpp`` library, straight to a chosen gateway, so each test
knows which process does what.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from typing import Any

import httpx
import websockets

from charging_api.api.auth import issue_token
from charging_api.cluster.local import LocalCluster, Node
from tests.conftest import AppClient
from tests.peers.py_charge_point import LibraryChargePoint, connected_charge_point
from tests.reliability.helpers import app_at, energy, meter_batch, start_charge
from tests.serverproc import SECRET

TAG = "TAG-ALICE"


def token(user: str = "alice", tag: str | None = TAG, role: str | None = None) -> str:
    return issue_token(SECRET, user, expires_in=600, id_tag=tag, role=role)


def app_url(node: Node) -> str:
    return f"ws://127.0.0.1:{node.port}/ws"


def ocpp_url(node: Node) -> str:
    return f"ws://127.0.0.1:{node.port}/ocpp"


async def until_online(api: Node, cp_id: str, timeout: float = 15.0) -> None:
    """Until the api node sees the charge point's gateway (its owner claim travels through
    Redis): the operator API's charge point says ``online``. Bounded."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    headers = {"Authorization": f"Bearer {token('ops', None, 'admin')}"}
    async with httpx.AsyncClient(timeout=10) as http:
        while True:
            reply = await http.get(
                f"http://127.0.0.1:{api.port}/api/charge-points/{cp_id}", headers=headers
            )
            if reply.status_code == 200 and reply.json().get("online") is True:
                return
            assert loop.time() < deadline, f"{cp_id} never showed online: {reply.text}"
            await asyncio.sleep(0.1)


async def read_until(
    app: AppClient, last: Callable[[dict[str, Any]], bool], timeout: float = 15.0
) -> list[dict[str, Any]]:
    """Every push up to and including the first for which ``last`` holds (bounded)."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while True:
            push = await app.pushes.get()
            seen.append(push)
            if last(push):
                return seen


async def until_stored(app: AppClient, tx: int, wh: int, timeout: float = 10.0) -> None:
    """Until the app's api node reads the sample from PostgreSQL (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        reply = await app.request("get_meter_values", {"transactionId": tx})
        stored = [round(float(v["energyImportKWh"]) * 1000) for v in reply["data"]["meterValues"]]
        if wh in stored:
            return
        assert loop.time() < deadline, f"sample {wh} Wh never stored: {reply}"
        await asyncio.sleep(0.1)


def seqs(pushes: list[dict[str, Any]]) -> list[tuple[int, str]]:
    return [(p["seq"], p["type"]) for p in pushes]


async def booted_available(cp: LibraryChargePoint) -> None:
    await cp.status(1, "Available")


async def test_a_start_on_one_api_node_reaches_a_charge_point_on_another_gateway_and_every_push_comes_back(
    cluster: LocalCluster,
) -> None:
    api_1, api_2 = cluster.node("api-1"), cluster.node("api-2")
    gateway_2 = cluster.node("gateway-2")
    async with (
        connected_charge_point(ocpp_url(gateway_2), "CP-X1") as cp,
        app_at(app_url(api_1), token()) as phone,
        app_at(app_url(api_2), token()) as tablet,
    ):
        await booted_available(cp)
        await until_online(api_1, "CP-X1")
        tx = await start_charge(phone, cp, "CP-X1", 1, TAG, meter_start=1000)
        await cp.status(1, "Charging")
        await meter_batch(cp, 1, tx, 1100, 3)

        def last(push: dict[str, Any]) -> bool:
            return push["type"] == "meter_values_update" and _wh(push) == 1102

        on_phone = await read_until(phone, last)
        on_tablet = await read_until(tablet, last)
        kinds = [p["type"] for p in on_phone]
        assert "transaction_update" in kinds and "charging_status_update" in kinds, kinds
        assert [_wh(p) for p in on_phone if p["type"] == "meter_values_update"] == [
            1100,
            1101,
            1102,
        ]
        # The other device, on the other api node, saw the same pushes with the same numbers.
        assert seqs(on_tablet) == seqs(on_phone)
        assert [p["seq"] for p in on_phone] == list(range(1, len(on_phone) + 1))


def _wh(push: dict[str, Any]) -> int:
    return round(float(push["data"]["meterValue"]["energyImportKWh"]) * 1000)


async def test_the_users_api_node_dies_and_a_resume_on_another_node_loses_nothing(
    cluster: LocalCluster,
) -> None:
    api_1, api_2 = cluster.node("api-1"), cluster.node("api-2")
    gateway_1 = cluster.node("gateway-1")
    async with (
        connected_charge_point(ocpp_url(gateway_1), "CP-X2") as cp,
        app_at(app_url(api_2), token()) as tablet,
    ):
        await booted_available(cp)
        await until_online(api_2, "CP-X2")
        phone_ws = await websockets.connect(app_url(api_1))
        phone = AppClient(phone_ws)
        auth = await phone.request("auth_request", {"token": token()})
        epoch = auth["data"]["epoch"]
        tx = await start_charge(phone, cp, "CP-X2", 1, TAG, meter_start=0)
        await meter_batch(cp, 1, tx, 10, 2)

        def at(wh: int) -> Callable[[dict[str, Any]], bool]:
            return lambda p: p["type"] == "meter_values_update" and _wh(p) == wh

        seen_on_phone = await read_until(phone, at(11))
        assert seqs(await read_until(tablet, at(11))) == seqs(seen_on_phone)
        last_seq = seen_on_phone[-1]["seq"]

        api_1.kill(signal.SIGKILL)
        assert await api_1.wait() == -signal.SIGKILL
        await phone.close()

        # While the phone is away: more samples, which the tablet (api-2) gets live.
        await meter_batch(cp, 1, tx, 20, 3)
        missed = await read_until(tablet, at(22))
        assert [p["seq"] for p in missed] == list(range(last_seq + 1, last_seq + 1 + len(missed)))

        async with app_at(cluster.app_url, token()) as phone_again:  # HAProxy: api-2 now
            reply = await phone_again.request("resume", {"lastSeq": last_seq, "epoch": epoch})
            assert reply["data"]["success"] is True, reply
            replayed = await read_until(phone_again, at(22))
            assert seqs(replayed) == seqs(missed)
            assert [p["data"] for p in replayed] == [p["data"] for p in missed]


async def test_the_charge_points_gateway_dies_it_reconnects_elsewhere_and_the_user_stops_the_charge(
    cluster: LocalCluster,
) -> None:
    api_1 = cluster.node("api-1")
    gateway_1, gateway_2 = cluster.node("gateway-1"), cluster.node("gateway-2")
    async with (
        app_at(app_url(api_1), token()) as phone,
    ):
        async with connected_charge_point(ocpp_url(gateway_2), "CP-X3") as cp:
            await booted_available(cp)
            await until_online(api_1, "CP-X3")
            tx = await start_charge(phone, cp, "CP-X3", 1, TAG, meter_start=500)
            await cp.status(1, "Charging")
            gateway_2.kill(signal.SIGKILL)
            assert await gateway_2.wait() == -signal.SIGKILL
        async with connected_charge_point(ocpp_url(gateway_1), "CP-X3") as cp:
            await cp.status(1, "Charging")
            await until_online(api_1, "CP-X3")
            await cp.meter(1, tx, energy(900))
            await phone.push("meter_values_update", where=lambda p: _wh(p) == 900)
            stopping = asyncio.create_task(
                phone.request(
                    "stop_charging_request", {"chargePointId": "CP-X3", "transactionId": tx}
                )
            )
            asked = await asyncio.wait_for(cp.remote_stops.get(), 15)
            assert asked == {"transaction_id": tx}
            await cp.stop_tx(tx, 1000, reason="Remote")
            reply = await stopping
            assert reply["data"]["success"] is True, reply
            ended = await phone.push(
                "transaction_update", where=lambda p: p["data"].get("status") == "Stopped"
            )
            assert ended["data"]["transactionId"] == tx
            assert ended["data"]["meterStopWh"] == 1000
        history = await phone.request("get_transactions", {"limit": 10})
        mine = [t for t in history["data"]["transactions"] if t["transactionId"] == tx]
        assert len(mine) == 1, history
        assert (mine[0]["status"], mine[0]["meterStartWh"], mine[0]["meterStopWh"]) == (
            "Stopped",
            500,
            1000,
        )


async def test_a_start_retried_on_another_api_node_is_the_same_start(
    cluster: LocalCluster,
) -> None:
    """The app's retry (same message id, timestamp and data) from the user's other device on
    the other api node: one RemoteStart, one transaction, the same answer."""
    api_1, api_2 = cluster.node("api-1"), cluster.node("api-2")
    async with (
        connected_charge_point(ocpp_url(cluster.node("gateway-1")), "CP-X4") as cp,
        app_at(app_url(api_1), token()) as phone,
        app_at(app_url(api_2), token()) as tablet,
    ):
        await booted_available(cp)
        await until_online(api_2, "CP-X4")
        tx = await start_charge(phone, cp, "CP-X4", 1, TAG, message_id="start-1")
        again = await tablet.request(
            "start_charging_request",
            {"chargePointId": "CP-X4", "connectorId": 1},
            message_id="start-1",
        )
        assert again["data"]["success"] is True, again
        assert again["data"]["transactionId"] == tx
        assert cp.remote_starts.empty()  # the charge point was asked once
        other = await tablet.request(
            "start_charging_request", {"chargePointId": "CP-X4", "connectorId": 1}
        )
        assert other["error"]["code"] == "CONNECTOR_BUSY", other  # a new request is refused
        history = await tablet.request("get_transactions", {"limit": 10})
        assert [t["transactionId"] for t in history["data"]["transactions"]] == [tx]


async def test_a_ghost_session_left_on_a_dead_gateway_is_closed_by_the_next_one(
    cluster_with: Callable[..., contextlib.AbstractAsyncContextManager[LocalCluster]],
) -> None:
    """The ghost-session rule across nodes: the charge point rebooted (its gateway died too)
    and reports Available on another gateway with no StopTransaction: that gateway closes the
    transaction after the grace, the owner on an api node is told, the connector starts again,
    and the charge point's late StopTransaction corrects the record."""
    async with cluster_with(STALE_TRANSACTION_GRACE="0.5") as cluster:
        api_1 = cluster.node("api-1")
        gateway_1, gateway_2 = cluster.node("gateway-1"), cluster.node("gateway-2")
        async with app_at(app_url(api_1), token()) as phone:
            async with connected_charge_point(ocpp_url(gateway_2), "CP-G1") as cp:
                await booted_available(cp)
                await until_online(api_1, "CP-G1")
                tx = await start_charge(phone, cp, "CP-G1", 1, TAG, meter_start=1000)
                await cp.meter(1, tx, energy(1500))
                await phone.push("meter_values_update", where=lambda p: _wh(p) == 1500)
                # A gateway writes samples in batches (docs/reliability.md: a SIGKILL loses
                # the last 0.2 s); the api node reads PostgreSQL only: once it shows the
                # sample, the sample is durable.
                await until_stored(phone, tx, 1500)
                gateway_2.kill(signal.SIGKILL)
                assert await gateway_2.wait() == -signal.SIGKILL
            async with connected_charge_point(ocpp_url(gateway_1), "CP-G1") as cp:  # rebooted
                await cp.status(1, "Available")
                ended = await phone.push(
                    "transaction_update",
                    where=lambda p: (
                        p["data"]["transactionId"] == tx and p["data"]["status"] == "Stopped"
                    ),
                    timeout=20,
                )
                assert (ended["data"]["reason"], ended["data"]["closedBy"]) == (
                    "StaleTransaction",
                    "ConnectorAvailable",
                )
                assert ended["data"]["meterStopWh"] == 1500
                await until_online(api_1, "CP-G1")
                again = await start_charge(phone, cp, "CP-G1", 1, TAG, meter_start=1600)
                assert again != tx
                late = await cp.stop_tx(tx, 1550, reason="PowerLoss")
                assert late.id_tag_info is None
            history = await phone.request("get_transactions", {"limit": 10})
            rows = {t["transactionId"]: t for t in history["data"]["transactions"]}
            assert sorted(rows) == sorted([tx, again])
            assert (rows[tx]["meterStopWh"], rows[tx]["stopReason"], rows[tx]["closedBy"]) == (
                1550,
                "PowerLoss",
                "ConnectorAvailable",
            )
