"""Two app doors, each with its own ClusterHub (two api nodes), over real WebSockets.

The core is one running server's (its OCPP door, its bus); its PushPublisher numbers the
pushes in Redis. A user's phone is on door A, their tablet on door B: both see one sequence;
door A dies; the phone reconnects to door B and ``resume`` replays exactly what it missed;
after Redis lost its data, the same ``resume`` answers RESYNC_REQUIRED with the new epoch.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import websockets

from charging_api.api.handlers import OperatorState
from charging_api.api.server import AppLimits, AppServer
from charging_api.cluster.fanout import ClusterHub, PushPublisher, connect
from tests.cluster.redis_scene import empty_redis
from tests.conftest import AppClient, RunningServer, app_client, make_settings, running_server
from tests.peers.py_charge_point import connected_charge_point

CP = "CP-CLUSTER-1"


@dataclasses.dataclass
class ApiNode:
    hub: ClusterHub
    door: AppServer
    view: RunningServer  # the running server, with this door's URL

    async def stop(self) -> None:
        await self.hub.close()
        await self.door.shutdown(timeout=2)


@contextlib.asynccontextmanager
async def api_node(server: RunningServer, url: str, node: str) -> AsyncIterator[ApiNode]:
    app = server.app
    hub = ClusterHub(url, node)
    await hub.start()
    door = AppServer(
        app.service,
        app.verifier,
        hub,
        AppLimits(),
        operator=app.operator,
        ops=OperatorState(app.reservations, app.profiles, app.local_list),
        sessions=app.sessions,
    )
    port = await door.start("127.0.0.1", 0)
    api = ApiNode(hub, door, dataclasses.replace(server, app_url=f"ws://127.0.0.1:{port}/ws"))
    try:
        yield api
    finally:
        await api.stop()


def energy(wh: int) -> list[dict[str, str]]:
    return [{"value": str(wh), "measurand": "Energy.Active.Import.Register", "unit": "Wh"}]


Push = dict[str, Any]


async def pushes_through(
    client: AppClient, last: Callable[[Push], bool], timeout: float = 10
) -> list[Push]:
    """The numbered pushes the client gets, up to and including the first one ``last`` likes."""
    seen: list[Push] = []
    async with asyncio.timeout(timeout):
        while not seen or not last(seen[-1]):
            message = await client.pushes.get()
            if message["seq"]:  # not a connection push (server_shutdown, ...)
                seen.append(message)
    return seen


def seq_at_least(seq: int) -> Callable[[Push], bool]:
    return lambda push: bool(push["seq"] >= seq)


def kind_is(kind: str, status: str | None = None) -> Callable[[Push], bool]:
    return lambda push: (
        push["type"] == kind and (status is None or push["data"].get("status") == status)
    )


async def test_two_devices_on_two_api_nodes_and_a_resume_after_one_died(tmp_path: Path) -> None:
    """alice's phone (door A) and tablet (door B) see the same numbered pushes of her charge;
    door A dies; the phone reconnects to door B and resumes exactly what the tablet saw
    meanwhile; after Redis lost its data the same resume answers RESYNC_REQUIRED."""
    async with (
        empty_redis() as url,
        running_server(make_settings(tmp_path)) as server,
    ):
        publisher = PushPublisher(url)
        await publisher.start()
        publisher.follow(server.app.bus)
        try:
            async with (
                api_node(server, url, "api-a") as node_a,
                api_node(server, url, "api-b") as node_b,
                connected_charge_point(server.ocpp_url, CP) as cp,
            ):
                await cp.status(1, "Available")
                token = server.token("alice", id_tag="ALICE")
                async with app_client(node_b.view, token) as tablet:
                    phone = AppClient(await websockets.connect(node_a.view.app_url))
                    try:
                        auth = await phone.request("auth_request", {"token": token})
                        epoch = auth["data"]["epoch"]
                        assert epoch == node_b.hub.epoch
                        start = asyncio.create_task(
                            phone.request(
                                "start_charging_request", {"chargePointId": CP, "connectorId": 1}
                            )
                        )
                        await asyncio.wait_for(cp.remote_starts.get(), 10)
                        await cp.status(1, "Preparing")
                        started = await cp.start_tx(1, "ALICE", meter_start=1000)
                        assert (await start)["data"]["success"] is True
                        await cp.status(1, "Charging")
                        tx = started.transaction_id
                        await cp.meter(1, tx, energy(1500), timestamp="2099-01-15T10:31:00.000Z")
                        on_tablet = await pushes_through(tablet, kind_is("meter_values_update"))
                        current = on_tablet[-1]["seq"]
                        assert current >= 3
                        on_phone = await pushes_through(phone, seq_at_least(current))
                        assert on_phone == on_tablet  # one sequence, the same frames
                        assert [m["seq"] for m in on_phone] == list(range(1, current + 1))
                    finally:
                        await phone.close()

                    await node_a.stop()  # api node A dies
                    await cp.meter(1, tx, energy(2500))
                    await cp.status(1, "SuspendedEV")
                    missed_live = await pushes_through(
                        tablet, kind_is("charging_status_update", "SuspendedEV")
                    )
                    assert len(missed_live) >= 2

                    async with app_client(node_b.view, token) as phone_again:
                        resumed = await phone_again.request(
                            "resume", {"lastSeq": current, "epoch": epoch}
                        )
                        latest = resumed["data"]["currentSeq"]
                        assert resumed["data"] == {
                            "success": True,
                            "replayed": latest - current,
                            "currentSeq": latest,
                        }
                        if missed_live[-1]["seq"] < latest:  # pushed since: the tablet too
                            missed_live += await pushes_through(tablet, seq_at_least(latest))
                        replayed = await pushes_through(phone_again, seq_at_least(latest))
                        assert replayed == missed_live

                        client = connect(url)  # Redis restarts without persistence
                        try:
                            await client.flushdb()
                        finally:
                            await client.aclose()
                        refused = await phone_again.request(
                            "resume", {"lastSeq": latest, "epoch": epoch}
                        )
                        assert refused["error"]["code"] == "RESYNC_REQUIRED"
                        assert refused["error"]["details"]["epoch"] != epoch
                        assert refused["error"]["details"]["epoch"] == node_b.hub.epoch
        finally:
            await publisher.close()
