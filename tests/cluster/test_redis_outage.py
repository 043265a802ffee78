"""Redis restarted under a running cluster (it keeps nothing on disk, as on these machines).

During the outage a command answers SERVICE_UNAVAILABLE with ``retryable``; the charge point
keeps charging through its gateway (samples go to PostgreSQL); afterwards the nodes are back by
themselves, the user stops the charge, and PostgreSQL holds the transaction exactly once.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from charging_api.cluster.local import LocalCluster
from tests.cluster.conftest import PrivateRedis
from tests.cluster.test_across_nodes import app_url, ocpp_url, token, until_online
from tests.peers.py_charge_point import connected_charge_point
from tests.reliability.helpers import app_at, energy, start_charge

TAG = "TAG-ALICE"


async def every_node_reaches_redis(cluster: LocalCluster, timeout: float = 20.0) -> None:
    """Until each node's /health says Redis answers again (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with httpx.AsyncClient(timeout=5) as http:
        for node in cluster.nodes:
            while True:
                reply = await http.get(f"http://127.0.0.1:{node.port}/health")
                if reply.status_code == 200 and reply.json()["node"]["redis"] == "ok":
                    break
                assert loop.time() < deadline, f"{node.node_id}: {reply.text}"
                await asyncio.sleep(0.1)


async def redis_failing_on(cluster: LocalCluster, node_id: str, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    node = cluster.node(node_id)
    async with httpx.AsyncClient(timeout=5) as http:
        while True:
            reply = await http.get(f"http://127.0.0.1:{node.port}/health")
            if reply.status_code == 503:
                assert reply.json()["node"]["redis"] == "failing"
                return
            assert loop.time() < deadline, reply.text
            await asyncio.sleep(0.1)


async def test_commands_during_a_redis_restart_fail_retryably_and_nothing_is_lost_or_doubled(
    cluster_on_private_redis: tuple[LocalCluster, PrivateRedis],
) -> None:
    cluster, redis = cluster_on_private_redis
    api_1, gateway_1 = cluster.node("api-1"), cluster.node("gateway-1")
    async with (
        connected_charge_point(ocpp_url(gateway_1), "CP-R1") as cp,
        app_at(app_url(api_1), token()) as phone,
    ):
        await cp.status(1, "Available")
        await until_online(api_1, "CP-R1")
        tx = await start_charge(phone, cp, "CP-R1", 1, TAG, meter_start=100)

        await redis.stop()
        await redis_failing_on(cluster, "api-1")
        stop = {"chargePointId": "CP-R1", "transactionId": tx}
        refused = await phone.request("stop_charging_request", stop)
        assert refused["error"]["code"] == "SERVICE_UNAVAILABLE", refused
        assert refused["error"]["details"]["retryable"] is True
        assert cp.remote_stops.empty()  # nothing was sent
        await cp.meter(1, tx, energy(400))  # the charge point goes on; its gateway stores it

        await redis.start()
        await every_node_reaches_redis(cluster)
        await until_online(api_1, "CP-R1")  # its gateway claimed it again
        stopping = asyncio.create_task(phone.request("stop_charging_request", stop))
        asked = await asyncio.wait_for(cp.remote_stops.get(), 15)
        assert asked == {"transaction_id": tx}
        await cp.stop_tx(tx, 500, reason="Remote")
        reply = await stopping
        assert reply.get("data", {}).get("success") is True, reply

        history = await phone.request("get_transactions", {"limit": 10})
        rows: list[dict[str, Any]] = history["data"]["transactions"]
        assert [(t["transactionId"], t["status"], t["meterStopWh"]) for t in rows] == [
            (tx, "Stopped", 500)
        ]
        samples = await phone.request("get_meter_values", {"transactionId": tx})
        stored = [round(float(v["energyImportKWh"]) * 1000) for v in samples["data"]["meterValues"]]
        assert 400 in stored, samples  # the sample sent while Redis was down was kept
