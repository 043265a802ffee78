"""The cluster as an operator starts it: 2 gateways + 2 api nodes behind HAProxy.

What is checked here is the topology itself: the load balancer sends charge points to gateways
and everything else to api nodes, every node answers ``/health`` with its role and whether Redis
and PostgreSQL answer, ``/api/stats`` shows the whole cluster from any api node, and a node that
dies leaves it.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import httpx

from charging_api.api.auth import issue_token
from charging_api.cluster.local import LocalCluster
from tests.peers.py_charge_point import connected_charge_point
from tests.serverproc import SECRET


def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(SECRET, 'ops', expires_in=600, role='admin')}"}


async def stats(http: httpx.AsyncClient, base: str) -> dict[str, Any]:
    reply = await http.get(f"{base}/api/stats", headers=admin_headers())
    assert reply.status_code == 200, reply.text
    data: dict[str, Any] = reply.json()["data"]
    return data


async def wait_for_stats(
    http: httpx.AsyncClient, base: str, check: Any, timeout: float = 15.0
) -> dict[str, Any]:
    """Poll /api/stats (bounded) until ``check(data)`` holds; heartbeats are periodic."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        data = await stats(http, base)
        if check(data) or loop.time() > deadline:
            return data
        await asyncio.sleep(0.2)


async def test_every_node_reports_its_role_and_the_cluster_is_seen_from_any_api_node(
    cluster: LocalCluster,
) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        for node in cluster.nodes:
            reply = await http.get(f"http://127.0.0.1:{node.port}/health")
            assert reply.status_code == 200, (node.node_id, reply.text)
            body = reply.json()
            assert body["node"] == {
                "nodeId": node.node_id,
                "role": node.role,
                "redis": "ok",
                "database": "ok",
            }
        through_lb = (await http.get(f"{cluster.http_url}/health")).json()
        assert through_lb["node"]["role"] == "api"

        data = await wait_for_stats(
            http, cluster.http_url, lambda d: len(d["cluster"]["nodes"]) == 4
        )
        seen = {(n["nodeId"], n["role"]) for n in data["cluster"]["nodes"]}
        assert seen == {
            ("gateway-1", "gateway"),
            ("gateway-2", "gateway"),
            ("api-1", "api"),
            ("api-2", "api"),
        }


async def test_a_charge_point_through_the_load_balancer_lands_on_a_gateway_and_is_counted(
    cluster: LocalCluster,
) -> None:
    async with connected_charge_point(cluster.ocpp_url, "CP-LB-1") as cp:
        booted = await cp.boot()
        assert booted.status == "Accepted"
        async with httpx.AsyncClient(timeout=10) as http:
            data = await wait_for_stats(
                http, cluster.http_url, lambda d: d["cluster"]["chargePoints"] == 1
            )
            assert data["cluster"]["chargePoints"] == 1
            on_gateways = {
                n["nodeId"]: n["chargePoints"]
                for n in data["cluster"]["nodes"]
                if n["role"] == "gateway"
            }
            assert sorted(on_gateways.values()) == [0, 1]


async def test_a_killed_node_leaves_the_cluster_view_and_the_balancer_keeps_answering(
    cluster: LocalCluster,
) -> None:
    def ids(data: dict[str, Any]) -> set[str]:
        return {n["nodeId"] for n in data["cluster"]["nodes"]}

    api_1 = cluster.node("api-1")
    async with httpx.AsyncClient(timeout=10) as http:
        data = await wait_for_stats(http, cluster.http_url, lambda d: len(ids(d)) == 4)
        assert "api-1" in ids(data)
        api_1.kill(signal.SIGKILL)
        assert await api_1.wait() == -signal.SIGKILL
        rest = {"gateway-1", "gateway-2", "api-2"}
        data = await wait_for_stats(http, cluster.http_url, lambda d: ids(d) == rest)
        assert ids(data) == rest
        for _ in range(4):  # round robin would have sent half of these to api-1
            reply = await http.get(f"{cluster.http_url}/health")
            assert reply.status_code == 200
            assert reply.json()["node"]["nodeId"] == "api-2"
