"""Hostile apps against the real server on ``/ws`` (and its HTTP routes).

Sections: authorization between two users and an admin; the origin check and CORS; every limit
with its error or close code; clients that stop reading; the admin HTTP route and the logs;
a hypothesis property test of malformed frames; a table of hand-picked attacks, after each of
which the server still answers ``/health``, another user's session still works, and the
database holds exactly the transactions it should.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ocpp.v16 import call
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.protocol import State
from websockets.typing import Origin

from charging_api import logs
from charging_api.api.messages import REQUESTS
from charging_api.app import Application
from charging_api.config import Settings
from charging_api.domain.models import IdTag
from charging_api.errors import all_error_codes
from tests.conftest import (
    SECRET,
    AppClient,
    RunningServer,
    app_client,
    make_settings,
    running_server,
)
from tests.peers.py_charge_point import LibraryChargePoint, connected_charge_point, now_text
from tests.security.test_jwt import forgeries

CP = "CP-A"
ALICE_TAG = "TAG-ALICE"  # named in alice's token
ALICE_CARD = "CARD-ALICE"  # registered to alice in storage
BOB_TAG = "TAG-BOB"

# ---------------------------------------------------------------------------- helpers


async def http_get(
    server: RunningServer, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One plain HTTP/1.1 GET on the app port: (status, lower-cased headers, body)."""
    url = urlsplit(server.http_url)
    assert url.hostname is not None and url.port is not None
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        lines = [f"GET {path} HTTP/1.1", f"Host: {url.netloc}", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        async with asyncio.timeout(10):
            raw = await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    parsed = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), parsed, body


async def closed(
    client: AppClient | ClientConnection, timeout: float = 10
) -> tuple[int | None, str | None]:
    """Wait for the server to end the connection; its close code and reason."""
    ws = client.ws if isinstance(client, AppClient) else client
    await asyncio.wait_for(ws.wait_closed(), timeout)
    return ws.close_code, ws.close_reason


async def upgrade_status(server: RunningServer, **connect_kwargs: Any) -> int:
    """The HTTP status of a refused /ws upgrade."""
    with pytest.raises(InvalidStatus) as refused:
        ws = await websockets.connect(server.app_url, **connect_kwargs)
        await ws.close()
    return refused.value.response.status_code


async def start_for(client: AppClient, cp: LibraryChargePoint, connector: int, **extra: Any) -> int:
    """A start the charge point accepts and follows with StartTransaction; the transaction id."""
    start = asyncio.ensure_future(
        client.request(
            "start_charging_request", {"chargePointId": CP, "connectorId": connector, **extra}
        )
    )
    asked = await asyncio.wait_for(cp.remote_starts.get(), 10)
    tx = await cp.start_tx(connector, asked["id_tag"], 1000)
    reply = await start
    assert reply["data"]["success"] is True, reply
    return int(tx.transaction_id)


def failure(reply: dict[str, Any], kind: str, code: str) -> dict[str, Any]:
    """Assert a ``*_response`` failure (success false, the error code) and return its data."""
    assert reply["type"] == kind, reply
    assert reply["data"]["success"] is False
    assert reply["error"]["code"] == code, reply
    return dict(reply["data"])


def error(reply: dict[str, Any], code: str) -> None:
    assert reply["type"] == "error", reply
    assert reply["error"]["code"] == code, reply


async def nothing_more(client: AppClient) -> None:
    """A heartbeat round trip: whatever was pushed before it has arrived; nothing has."""
    assert (await client.request("heartbeat"))["type"] == "heartbeat"
    assert client.pushes.empty(), client.pushes
    assert client.unsolicited.empty(), client.unsolicited


@dataclass
class Scene:
    """One server, one charge point, alice charging on connector 1, bob and an admin online."""

    server: RunningServer
    cp: LibraryChargePoint
    alice: AppClient
    bob: AppClient
    admin: AppClient
    tx: int

    async def transactions(self) -> list[tuple[int, str | None, bool]]:
        txs = await self.server.app.store.transactions_of(None, 100)
        return sorted((t.id, t.user_id, t.active) for t in txs)

    async def assert_unharmed(
        self,
        expected: list[tuple[int, str | None, bool]] | None = None,
    ) -> None:
        """/health answers, alice's session works, the database holds what it should, and no
        command reached the charge point."""
        status, _, body = await http_get(self.server, "/health")
        assert status == 200 and orjson.loads(body)["status"] == "healthy"
        state = await self.alice.request("get_state")
        assert [t["transactionId"] for t in state["data"]["transactions"]] == [self.tx]
        assert await self.transactions() == (expected or [(self.tx, "alice", True)])
        assert self.cp.remote_starts.empty() and self.cp.remote_stops.empty()


@contextlib.asynccontextmanager
async def scene_on(server: RunningServer) -> AsyncIterator[Scene]:
    await server.app.store.put_id_tag(IdTag(ALICE_CARD, "alice"))
    async with (
        connected_charge_point(server.ocpp_url, CP) as cp,
        app_client(server, server.token("alice", id_tag=ALICE_TAG)) as alice,
        app_client(server, server.token("bob", id_tag=BOB_TAG)) as bob,
        app_client(server, server.token("root", role="admin")) as admin,
    ):
        await cp.status(1, "Available")
        await cp.status(2, "Available")
        tx = await start_for(alice, cp, 1)
        await alice.push("transaction_update")
        yield Scene(server, cp, alice, bob, admin, tx)


@pytest.fixture
async def scene(server: RunningServer) -> AsyncIterator[Scene]:
    async with scene_on(server) as built:
        yield built


# ---------------------------------------------------------------------- authorization


async def test_bob_cannot_stop_alices_transaction(scene: Scene) -> None:
    """stop_charging_request for another user's transaction: TRANSACTION_NOT_FOUND, as for a
    missing one (it must not reveal where others charge), and no RemoteStop."""
    reply = await scene.bob.request(
        "stop_charging_request", {"chargePointId": CP, "transactionId": scene.tx}
    )
    data = failure(reply, "stop_charging_response", "TRANSACTION_NOT_FOUND")
    assert data["transactionId"] == scene.tx
    await scene.assert_unharmed()


async def test_bob_cannot_act_as_alice(scene: Scene) -> None:
    """A userId other than the token's user is FORBIDDEN, for starts and stops."""
    stop = await scene.bob.request(
        "stop_charging_request", {"transactionId": scene.tx, "userId": "alice"}
    )
    failure(stop, "stop_charging_response", "FORBIDDEN")
    start = await scene.bob.request(
        "start_charging_request", {"chargePointId": CP, "connectorId": 2, "userId": "alice"}
    )
    failure(start, "start_charging_response", "FORBIDDEN")
    await scene.assert_unharmed()


async def test_bob_sees_none_of_alices_meter_values(scene: Scene) -> None:
    """Alice's meter values are pushed to her only; bob's get_meter_values for her tx: FORBIDDEN."""
    await scene.cp.meter(1, scene.tx, [{"value": "2500"}])
    seen = await scene.alice.push("meter_values_update")
    assert seen["data"]["meterValue"]["energyImportKWh"] == 2.5
    await nothing_more(scene.bob)
    error(await scene.bob.request("get_meter_values", {"transactionId": scene.tx}), "FORBIDDEN")
    resumed = await scene.bob.request(
        "resume", {"lastSeq": 0, "epoch": scene.server.app.app_server.epoch}
    )
    assert resumed["data"]["replayed"] == 0
    await nothing_more(scene.bob)
    mine = await scene.alice.request("get_meter_values", {"transactionId": scene.tx})
    assert [v["energyImportKWh"] for v in mine["data"]["meterValues"]] == [2.5]
    await scene.assert_unharmed()


async def test_transaction_lists_hold_only_the_users_own(scene: Scene) -> None:
    """get_transactions/get_state: each user their own, the admin everyone's."""
    bob_tx = await start_for(scene.bob, scene.cp, 2)
    lists = {}
    for name, client in (("alice", scene.alice), ("bob", scene.bob), ("root", scene.admin)):
        listed = await client.request("get_transactions")
        state = await client.request("get_state")
        lists[name] = sorted(t["transactionId"] for t in listed["data"]["transactions"])
        assert lists[name] == sorted(t["transactionId"] for t in state["data"]["transactions"])
    assert lists == {"alice": [scene.tx], "bob": [bob_tx], "root": sorted([scene.tx, bob_tx])}
    await scene.assert_unharmed(sorted([(scene.tx, "alice", True), (bob_tx, "bob", True)]))


async def test_bob_cannot_charge_with_alices_id_tags(scene: Scene) -> None:
    """An id tag registered to alice (in storage or by her token) is FORBIDDEN to bob."""
    for tag in (ALICE_CARD, ALICE_TAG):
        reply = await scene.bob.request(
            "start_charging_request", {"chargePointId": CP, "connectorId": 2, "idTag": tag}
        )
        data = failure(reply, "start_charging_response", "FORBIDDEN")
        assert data["connectorId"] == 2
    await scene.assert_unharmed()


async def test_a_token_naming_alices_tag_does_not_make_it_bobs(scene: Scene) -> None:
    """Bob's token claiming alice's registered tag: it is skipped, bob has no tag to use."""
    async with app_client(scene.server, scene.server.token("bob", id_tag=ALICE_CARD)) as bob:
        reply = await bob.request("start_charging_request", {"chargePointId": CP, "connectorId": 2})
        failure(reply, "start_charging_response", "NO_ID_TAG")
        explicit = await bob.request(
            "start_charging_request", {"chargePointId": CP, "connectorId": 2, "idTag": ALICE_CARD}
        )
        failure(explicit, "start_charging_response", "FORBIDDEN")
    await scene.assert_unharmed()


async def test_only_admins_may_subscribe(scene: Scene) -> None:
    """subscribe/unsubscribe by a non-admin: FORBIDDEN, and bob sees no charge point updates."""
    failure(
        await scene.bob.request("subscribe", {"chargePointIds": "*"}),
        "subscribe_response",
        "FORBIDDEN",
    )
    failure(
        await scene.bob.request("subscribe", {"chargePointIds": [CP]}),
        "subscribe_response",
        "FORBIDDEN",
    )
    failure(await scene.bob.request("unsubscribe", {}), "unsubscribe_response", "FORBIDDEN")
    await scene.cp.status(2, "Unavailable")
    await nothing_more(scene.bob)
    await scene.assert_unharmed()


async def test_an_admin_watches_what_they_subscribe_to(scene: Scene) -> None:
    """Admin subscribe to a list or "*": updates of those charge points arrive; unsubscribe ends it."""
    sub = await scene.admin.request("subscribe", {"chargePointIds": [CP, "CP-OTHER"]})
    assert sub["data"] == {"success": True, "chargePointIds": [CP, "CP-OTHER"]}
    await scene.cp.status(2, "Unavailable")
    seen = await scene.admin.push("charging_status_update")
    assert seen["data"] == {"chargePointId": CP, "connectorId": 2, "status": "Unavailable"}
    await scene.cp.meter(1, scene.tx, [{"value": "3000"}])
    metered = await scene.admin.push("meter_values_update")
    assert metered["data"]["transactionId"] == scene.tx
    assert (await scene.admin.request("subscribe", {"chargePointIds": "*"}))["data"][
        "chargePointIds"
    ] == "*"
    off = await scene.admin.request("unsubscribe", {"chargePointIds": "*"})
    assert off["data"] == {"success": True, "chargePointIds": []}
    await scene.cp.status(2, "Available")
    await nothing_more(scene.admin)
    await nothing_more(scene.bob)
    await scene.assert_unharmed()


async def test_an_admin_may_read_and_stop_any_transaction(scene: Scene) -> None:
    """The admin reads alice's meter values and stops her transaction; alice is told."""
    await scene.cp.meter(1, scene.tx, [{"value": "4000"}])
    values = await scene.admin.request("get_meter_values", {"transactionId": scene.tx})
    assert values["type"] == "meter_values" and len(values["data"]["meterValues"]) == 1
    stop = await scene.admin.request("stop_charging_request", {"transactionId": scene.tx})
    assert stop["data"]["success"] is True
    assert await asyncio.wait_for(scene.cp.remote_stops.get(), 10) == {"transaction_id": scene.tx}
    await scene.cp.stop_tx(scene.tx, 9000, reason="Remote")
    ended = await scene.alice.push(
        "transaction_update", where=lambda m: m["data"]["status"] == "Stopped"
    )
    assert ended["data"]["transactionId"] == scene.tx
    assert await scene.transactions() == [(scene.tx, "alice", False)]


# ------------------------------------------------------------------------ origin, CORS


async def test_browsers_connect_only_from_frontend_url(tmp_path: Path) -> None:
    """Origins in FRONTEND_URL (a comma list) upgrade; others get 403; no Origin is allowed."""
    settings = make_settings(
        tmp_path, frontend_url="http://localhost:3000, https://app.example.com/"
    )
    async with running_server(settings) as server:
        for origin in (
            "http://localhost:3000",
            "https://app.example.com",
            "https://app.example.com/",
        ):
            async with app_client(server, server.token("alice"), origin=Origin(origin)):
                pass
        async with app_client(server, server.token("alice")):
            pass
        for evil in (
            "https://evil.example",
            "null",
            "http://localhost:3000.evil.example",
            "https://app.example.com.evil.example",
            "http://localhost:3001",
        ):
            assert await upgrade_status(server, origin=Origin(evil)) == 403


@pytest.mark.parametrize("path", ["/health", "/api/stats"])
async def test_cors_headers_only_for_allowed_origins(server: RunningServer, path: str) -> None:
    """/health and /api/stats echo an allowed Origin in Access-Control-Allow-Origin, no other."""
    bearer = {"Authorization": f"Bearer {server.token('root', role='admin')}"}
    status, headers, _ = await http_get(server, path, {**bearer, "Origin": "http://localhost:3000"})
    assert status == 200
    assert headers["access-control-allow-origin"] == "http://localhost:3000"
    assert headers["vary"] == "Origin"
    status, headers, _ = await http_get(server, path, {**bearer, "Origin": "https://evil.example"})
    assert status == 200
    assert "access-control-allow-origin" not in headers
    status, headers, _ = await http_get(server, path, bearer)
    assert "access-control-allow-origin" not in headers


# -------------------------------------------------------------------------------- limits


async def test_max_connections_refuses_the_next_upgrade_with_503(tmp_path: Path) -> None:
    """MAX_CONNECTIONS reached: the next upgrade gets 503; existing sessions keep working."""
    async with (
        running_server(make_settings(tmp_path, max_connections=2)) as server,
        app_client(server, server.token("alice")) as alice,
        app_client(server, server.token("bob")) as bob,
    ):
        assert await upgrade_status(server) == 503
        for client in (alice, bob):
            state = await client.request("get_state")
            assert state["type"] == "state"
        status, _, _ = await http_get(server, "/health")
        assert status == 200


async def test_connections_per_user_are_limited(tmp_path: Path) -> None:
    """MAX_CONNECTIONS_PER_USER: the extra login is FORBIDDEN with the limit; others unaffected."""
    settings = make_settings(tmp_path, max_connections_per_user=2)
    async with (
        running_server(settings) as server,
        app_client(server, server.token("alice")) as first,
        app_client(server, server.token("alice")) as second,
        app_client(server) as third,
    ):
        reply = await third.request("auth_request", {"token": server.token("alice")})
        assert failure(reply, "auth_response", "FORBIDDEN")
        assert reply["error"]["details"] == {"limit": 2}
        error(await third.request("get_state"), "NOT_AUTHENTICATED")
        for client in (first, second):
            assert (await client.request("get_state"))["type"] == "state"
        ok = await third.request("auth_request", {"token": server.token("bob")})
        assert ok["data"]["success"] is True


async def test_an_oversized_frame_closes_with_1009(tmp_path: Path) -> None:
    """A frame over MAX_FRAME_SIZE closes that connection with 1009; one under it is answered."""
    async with (
        running_server(make_settings(tmp_path, max_frame_size=2048)) as server,
        app_client(server, server.token("alice")) as alice,
        app_client(server, server.token("bob")) as bob,
    ):
        fits = json.dumps({"id": "fits", "type": "heartbeat", "pad": "x" * 1900})
        assert len(fits) <= 2048
        assert (await bob.send_raw(fits, "fits"))["type"] == "heartbeat"
        await bob.ws.send(json.dumps({"id": "big", "type": "heartbeat", "pad": "x" * 2100}))
        code, _ = await closed(bob)
        assert code == 1009
        assert (await alice.request("get_state"))["type"] == "state"


async def test_a_message_flood_gets_rate_limited(tmp_path: Path) -> None:
    """Past the token bucket's burst each frame is answered RATE_LIMITED with its id."""
    settings = make_settings(tmp_path, rate_limit_per_second=1, rate_limit_burst=5)
    async with (
        running_server(settings) as server,
        app_client(server) as flood,
        app_client(server, server.token("bob")) as bob,
    ):
        replies = await asyncio.gather(
            *(flood.request("heartbeat", message_id=f"f-{i}") for i in range(12))
        )
        assert [r["id"] for r in replies] == [f"f-{i}" for i in range(12)]
        kinds = [r["type"] if r["type"] == "heartbeat" else r["error"]["code"] for r in replies]
        assert kinds[:5] == ["heartbeat"] * 5
        assert kinds.count("RATE_LIMITED") >= 6
        assert set(kinds) == {"heartbeat", "RATE_LIMITED"}
        assert (await bob.request("get_state"))["type"] == "state"
        assert flood.ws.state is State.OPEN


async def test_a_pipelining_client_that_reads_gets_every_reply(tmp_path: Path) -> None:
    """More requests in flight than SEND_QUEUE_SIZE: all answered, in order, no 1013."""
    settings = make_settings(
        tmp_path, send_queue_size=8, rate_limit_per_second=10_000, rate_limit_burst=10_000
    )
    async with running_server(settings) as server, app_client(server) as client:
        for round_ in range(3):
            replies = await asyncio.gather(
                *(client.request("heartbeat", message_id=f"p-{round_}-{i}") for i in range(200))
            )
            assert [r["id"] for r in replies] == [f"p-{round_}-{i}" for i in range(200)]
            assert {r["type"] for r in replies} == {"heartbeat"}
        assert client.ws.state is State.OPEN


async def test_a_connection_that_never_authenticates_is_closed(tmp_path: Path) -> None:
    """AUTH_TIMEOUT: no successful auth_request in time -> 1008; an authenticated one stays."""
    async with (
        running_server(make_settings(tmp_path, auth_timeout=1)) as server,
        app_client(server) as lurker,
        app_client(server, server.token("alice")) as alice,
    ):
        assert (await lurker.request("heartbeat"))["type"] == "heartbeat"
        assert await closed(lurker) == (1008, "authentication timeout")
        assert (await alice.request("get_state"))["type"] == "state"


async def test_pending_requests_per_connection_are_limited(tmp_path: Path) -> None:
    """MAX_PENDING_REQUESTS starts/stops in flight: the next one is TOO_MANY_PENDING."""
    settings = make_settings(tmp_path, max_pending_requests=1)
    async with (
        running_server(settings) as server,
        connected_charge_point(server.ocpp_url, CP) as cp,
        app_client(server, server.token("alice", id_tag=ALICE_TAG)) as alice,
    ):
        first = asyncio.ensure_future(
            alice.request("start_charging_request", {"chargePointId": CP, "connectorId": 1})
        )
        await asyncio.wait_for(cp.remote_starts.get(), 10)  # the first is now in flight
        second = await alice.request(
            "start_charging_request", {"chargePointId": CP, "connectorId": 2}, message_id="p-2"
        )
        assert second["id"] == "p-2"
        error(second, "TOO_MANY_PENDING")
        assert (await alice.request("get_state"))["type"] == "state"
        tx = await cp.start_tx(1, ALICE_TAG, 0)
        assert (await first)["data"]["transactionId"] == tx.transaction_id
        stop = await alice.request("stop_charging_request", {"transactionId": tx.transaction_id})
        assert stop["data"]["success"] is True


# ------------------------------------------------------------ a client that stops reading


async def stalled_watcher(server: RunningServer) -> ClientConnection:
    """An admin watching every charge point whose socket then stops reading: a tiny receive
    buffer, a one-frame client queue, and nobody calling recv()."""
    url = urlsplit(server.app_url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (url.hostname, url.port))
    ws = await websockets.connect(server.app_url, sock=sock, max_queue=1)
    for kind, data in (
        ("auth_request", {"token": server.token("root", role="admin")}),
        ("subscribe", {"chargePointIds": "*"}),
    ):
        await ws.send(orjson.dumps({"id": kind, "type": kind, "data": data}).decode())
        reply = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
        assert reply["data"]["success"] is True, reply
    return ws


QUEUE = 256  # SEND_QUEUE_SIZE (the default) in the stalled-client tests
BATCH = 200  # samples per MeterValues: fewer than QUEUE, so a drop means the queue was backed up


def stall_settings(tmp_path: Path) -> Settings:
    """No rate limit in the way of the bystander's heartbeats."""
    return make_settings(
        tmp_path, send_queue_size=QUEUE, rate_limit_per_second=10_000, rate_limit_burst=10_000
    )


async def flood_until_dropped(
    server: RunningServer, cp: LibraryChargePoint, tx: int, bystander: AppClient
) -> None:
    """MeterValues of BATCH samples until the server drops meter frames for someone (whose
    queue, as BATCH < QUEUE, was no longer draining); between two of them the bystander's
    requests are answered."""
    app_server = server.app.app_server
    async with asyncio.timeout(90):
        for _ in range(5000):
            if app_server.dropped_frames > 0:
                return
            stamp = now_text()
            await cp.call(
                call.MeterValues(
                    connector_id=1,
                    transaction_id=tx,
                    meter_value=[
                        {"timestamp": stamp, "sampled_value": [{"value": str(1000 + i)}]}
                        for i in range(BATCH)
                    ],
                ),
                suppress=False,
            )
            beat = await bystander.request("heartbeat", timeout=5)
            assert beat["type"] == "heartbeat"
    pytest.fail("the server never dropped a frame for the stalled client")


@contextlib.asynccontextmanager
async def stalled_scene(
    server: RunningServer,
) -> AsyncIterator[tuple[LibraryChargePoint, AppClient, ClientConnection]]:
    """Alice's transaction running (alice offline), bob online, and a stalled admin watcher
    whose send queue is backed up with meter updates: (cp, bob, stalled connection)."""
    async with connected_charge_point(server.ocpp_url, CP) as cp:
        async with app_client(server, server.token("alice", id_tag=ALICE_TAG)) as alice:
            tx = await start_for(alice, cp, 1)
        async with app_client(server, server.token("bob")) as bob:
            stuck = await stalled_watcher(server)
            try:
                await flood_until_dropped(server, cp, tx, bob)
                yield cp, bob, stuck
            finally:
                stuck.transport.abort()


async def test_a_client_that_stops_reading_loses_meter_updates_and_blocks_nobody(
    tmp_path: Path,
) -> None:
    """A stalled reader loses meter updates (a seq gap), others are served, it lives on."""
    async with (
        running_server(stall_settings(tmp_path)) as server,
        stalled_scene(server) as (_, bob, stuck),
    ):
        assert (await bob.request("get_state", timeout=5))["type"] == "state"
        last = await server.app.hub.current_seq("root")
        seqs: list[int] = []
        async with asyncio.timeout(60):
            while not seqs or seqs[-1] < last:
                seqs.append(orjson.loads(await stuck.recv())["seq"])
        assert seqs == sorted(seqs) and seqs[-1] == last
        assert len(seqs) < last  # dropped meter updates leave a gap
        await stuck.send(orjson.dumps({"id": "hb", "type": "heartbeat"}).decode())
        reply = orjson.loads(await asyncio.wait_for(stuck.recv(), 10))
        assert reply["id"] == "hb" and reply["type"] == "heartbeat"


async def test_a_stalled_client_is_closed_when_undroppable_updates_overflow(
    tmp_path: Path,
) -> None:
    """Once a stalled client's queue holds only status/transaction updates it is closed 1013."""
    async with (
        running_server(stall_settings(tmp_path)) as server,
        stalled_scene(server) as (cp, bob, stuck),
    ):
        for i in range(QUEUE + 1):  # status updates may not be dropped: the queue overflows
            await cp.status(2, "Unavailable" if i % 2 else "Available")
        assert (await bob.request("get_state", timeout=5))["type"] == "state"
        with contextlib.suppress(ConnectionClosed):
            async with asyncio.timeout(60):
                for _ in range(1_000_000):
                    await stuck.recv()
        assert stuck.close_code == 1013
        assert stuck.close_reason == "send queue overflow"
        status, _, _ = await http_get(server, "/health")
        assert status == 200


async def test_shutdown_is_not_held_up_by_a_client_that_stopped_reading(tmp_path: Path) -> None:
    """With a stalled client on the line the server still stops in bounded time."""
    application = Application(stall_settings(tmp_path))
    ports = await application.start()
    server = RunningServer(
        application,
        application.settings,
        f"ws://127.0.0.1:{ports.app}/ws",
        f"ws://127.0.0.1:{ports.ocpp}/ocpp",
        f"http://127.0.0.1:{ports.app}",
    )
    stopped = False
    try:
        async with stalled_scene(server) as (_, _, stuck):
            loop = asyncio.get_running_loop()
            began = loop.time()
            async with asyncio.timeout(20):
                await application.stop()
            stopped = True
            assert loop.time() - began < 10
            assert application.app_server.sessions == set()  # every handler has ended
            with contextlib.suppress(ConnectionClosed):  # and the stalled socket is gone
                async with asyncio.timeout(30):
                    for _ in range(1_000_000):
                        await stuck.recv()
    finally:
        if not stopped:
            await application.stop()


# ------------------------------------------------------------------ HTTP routes and logs


async def test_stats_require_an_admin_token_or_the_stats_key(tmp_path: Path) -> None:
    """/api/stats: 401 without or with a bad credential, 403 for a user, 200 for admin or key."""
    key = "stats-key-0123456789-abcdefghij"
    async with running_server(make_settings(tmp_path, stats_api_key=key)) as server:
        cases = {
            None: 401,
            "Basic cm9vdDpyb290": 401,
            "Bearer ": 401,
            "Bearer not-a-token": 401,
            f"Bearer {forgeries()['payload swapped for an admin role'][0]}": 401,
            f"Bearer {forgeries()['alg none'][0]}": 401,
            f"Bearer {forgeries()['expired'][0]}": 401,
            f"Bearer {key}x": 401,
            f"Bearer {server.token('bob')}": 403,
            f"Bearer {server.token('root', role='admin')}": 200,
            f"Bearer {key}": 200,
        }
        for credential, expected in cases.items():
            headers = {"Authorization": credential} if credential else {}
            status, _, body = await http_get(server, "/api/stats", headers)
            assert status == expected, (credential, body)
            answer = orjson.loads(body)
            assert answer["success"] is (expected == 200)
            if expected == 200:
                assert set(answer["data"]) >= {"websocket", "ocpp", "uptime"}
            else:
                assert answer["error"]["code"] in {
                    "NOT_AUTHENTICATED",
                    "AUTHENTICATION_FAILED",
                    "FORBIDDEN",
                }


async def test_health_is_public_and_reveals_nothing_sensitive(scene: Scene) -> None:
    """/health needs no credential and names no user, token, secret, id tag or charge point."""
    status, headers, body = await http_get(scene.server, "/health")
    assert status == 200
    assert headers["cache-control"] == "no-store"
    health = orjson.loads(body)
    assert set(health) == {"status", "timestamp", "version", "uptime", "websocket", "storage"}
    assert health["storage"] == "ok"  # a failure shows a kind only (no path, no message)
    assert set(health["websocket"]) == {
        "totalConnections",
        "authenticatedConnections",
        "totalUsers",
        "gatewayConnections",
    }
    for secret in (SECRET, "alice", "bob", "root", ALICE_TAG, CP, "eyJ"):
        assert secret.encode() not in body
    status, _, _ = await http_get(scene.server, "/not-here")
    assert status == 404


@pytest.fixture
def restore_logging() -> Any:
    """logs.configure replaces the root handlers; put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    ws_level = logging.getLogger("websockets").level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
        if handler not in handlers:
            handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("websockets").setLevel(ws_level)


@pytest.mark.usefixtures("restore_logging")
async def test_tokens_and_secrets_never_reach_the_logs(tmp_path: Path) -> None:
    """A whole flow at DEBUG, with failures and a careless log line: no token or secret in LOG_FILE."""
    key = "stats-key-0123456789-abcdefghij"
    log_file = tmp_path / "logs" / "app.log"
    settings = make_settings(
        tmp_path, stats_api_key=key, log_file=log_file, log_level="DEBUG", debug_websocket=True
    )
    logs.configure(settings.log_level, settings.log_file, [settings.jwt_secret, key])
    tokens: list[str] = []
    async with running_server(settings) as server:
        alice_token = server.token("alice", id_tag=ALICE_TAG)
        admin_token = server.token("root", role="admin")
        tokens += [alice_token, admin_token, *(token for token, _ in forgeries().values())]
        async with (
            connected_charge_point(server.ocpp_url, CP) as cp,
            app_client(server, alice_token) as alice,
            app_client(server) as mallory,
        ):
            for token, _ in forgeries().values():
                await mallory.request("auth_request", {"token": token})
            await mallory.request(alice_token, {"token": alice_token})  # token as the type
            await mallory.ws.send("not json " + alice_token)
            await asyncio.wait_for(mallory.unsolicited.get(), 10)
            tx = await start_for(alice, cp, 1)
            await alice.request("stop_charging_request", {"transactionId": tx})
            await cp.stop_tx(tx, 5000)
            for credential in (
                f"Bearer {admin_token}",
                f"Bearer {key}",
                f"Bearer {key}x",
                f"Bearer {alice_token}",
                f"Basic {key}",
            ):
                await http_get(server, "/api/stats", {"Authorization": credential})
            logging.getLogger("charging_api.careless").warning(
                "careless line with token=%s secret=%s key=%s header=Bearer %s",
                alice_token,
                SECRET,
                key,
                admin_token,
            )
    for handler in logging.getLogger().handlers:
        handler.flush()
    text = log_file.read_text()
    assert "serving app API" in text and "careless line" in text
    for secret in (SECRET, key, *tokens):
        assert secret not in text
    for token in tokens:
        signature = token.rsplit(".", 1)[-1]
        if len(signature) >= 16:
            assert signature not in text


# ---------------------------------------------------------------- property: bad frames

JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
IDS = st.one_of(
    st.text(max_size=8),
    st.text(min_size=120, max_size=400),
    st.integers(),
    st.integers(min_value=2**63, max_value=2**80),
    st.floats(),
    st.booleans(),
    JSON_VALUES,
)
FIELD_VALUES = st.one_of(
    JSON_VALUES,
    st.text(max_size=300),
    st.integers(),
    st.sampled_from([CP, 1, 0, -1, "*"]),
    st.integers(min_value=2**31 - 2, max_value=2**64 - 1),
    st.integers(max_value=-(2**31)),
    st.lists(st.text(max_size=140), max_size=50),
)
HOSTILE_FRAMES = [
    "",
    "null",
    "true",
    "1",
    "[]",
    "{}",
    '"heartbeat"',
    '{"id":"\\ud800","type":"heartbeat"}',
    '{"id":1,"type":"heartbeat","id":2}',
    '{"id":1e999,"type":"heartbeat"}',
    '{"id":NaN,"type":"heartbeat"}',
    '\ufeff{"id":"bom","type":"heartbeat"}',
    '{"id":"p","type":"__proto__"}',
    '{"id":"z","type":"heartbeat\\u0000"}',
    '{"id":"t","type":"auth_request","data":{"token":"' + "A" * 8000 + '"}}',
    '{"id":"t","type":"auth_request","data":{"token":"a.b.c"}}',
    '{"id":"x","type":"stop_charging_request","data":{"transactionId":9223372036854775808}}',
    '{"id":"x","type":"get_meter_values","data":{"transactionId":-9223372036854775809}}',
    '{"id":"r","type":"resume","data":{"lastSeq":18446744073709551615}}',
    '{"id":"s","type":"subscribe","data":{"chargePointIds":["' + '","'.join(["C"] * 2000) + '"]}}',
]


def envelope_for(kind: Any) -> st.SearchStrategy[dict[str, Any]]:
    data: st.SearchStrategy[Any] = JSON_VALUES
    if isinstance(kind, str) and kind in REQUESTS:
        fields = {name: FIELD_VALUES for name in REQUESTS[kind][0].model_fields}
        data = st.fixed_dictionaries({}, optional=fields) | JSON_VALUES
    return st.fixed_dictionaries(
        {"type": st.just(kind)},
        optional={
            "id": IDS,
            "data": data,
            "timestamp": JSON_VALUES,
            "error": JSON_VALUES,
            "seq": JSON_VALUES,
        },
    )


ENVELOPES = st.one_of(st.sampled_from(sorted(REQUESTS)), st.text(max_size=80), JSON_VALUES).flatmap(
    envelope_for
)


def as_text(value: Any, ascii_only: bool) -> str:
    return json.dumps(value, ensure_ascii=ascii_only)


FRAMES: st.SearchStrategy[str | bytes] = st.one_of(
    st.builds(as_text, ENVELOPES, st.booleans()),
    st.builds(as_text, ENVELOPES, st.booleans()).map(str.encode),  # binary frames
    st.builds(as_text, JSON_VALUES, st.booleans()),
    st.text(max_size=300),
    st.binary(max_size=300),
    st.integers(1, 3000).map(lambda n: "[" * n + "]" * n),
    st.integers(1, 3000).map(lambda n: '{"a":' * n + "1" + "}" * n),
    st.sampled_from(HOSTILE_FRAMES),
)

#: Close codes a frame may legitimately earn (docs/security.md); none should occur here.
DOCUMENTED_CLOSES = {1009}
KNOWN_CODES = set(all_error_codes()) - {"INTERNAL_ERROR"}


@dataclass
class FuzzTarget:
    """The fuzzing connection (reconnected if a documented limit closes it) and the scene."""

    scene: Scene
    ws: ClientConnection | None = None
    closes: int = 0

    async def connection(self) -> ClientConnection:
        if self.ws is None or self.ws.state is not State.OPEN:
            server = self.scene.server
            self.ws = await websockets.connect(server.app_url)
            token = server.token("mallory", id_tag="TAG-MALLORY")
            await self.ws.send(
                orjson.dumps(
                    {"id": "login", "type": "auth_request", "data": {"token": token}}
                ).decode()
            )
            assert orjson.loads(await self.ws.recv())["data"]["success"] is True
        return self.ws


@pytest.fixture
async def fuzz_target(tmp_path: Path) -> AsyncIterator[FuzzTarget]:
    settings = make_settings(tmp_path, rate_limit_per_second=100_000, rate_limit_burst=100_000)
    async with running_server(settings) as server, scene_on(server) as built:
        target = FuzzTarget(built)
        try:
            yield target
        finally:
            if target.ws is not None:
                await target.ws.close()


def parsed(frame: str | bytes) -> dict[str, Any]:
    """The frame as a JSON object (parsed as the server parses), or {} when it is none."""
    try:
        message = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return {}
    return message if isinstance(message, dict) else {}


def readable_id(frame: str | bytes) -> Any:
    """The id a reply must carry: a non-empty string of at most 128 characters or an integer;
    None when the frame has none (the server then answers with an ``error-N`` id)."""
    raw = parsed(frame).get("id")
    if (isinstance(raw, str) and 0 < len(raw) <= 128) or (
        isinstance(raw, int) and not isinstance(raw, bool)
    ):
        return raw
    return None


def response_type(frame: str | bytes) -> str | None:
    kind = parsed(frame).get("type")
    return REQUESTS[kind][1] if isinstance(kind, str) and kind in REQUESTS else None


async def answered_or_documented_close(target: FuzzTarget, frame: str | bytes) -> None:
    """Send one frame and check what comes back (see the property test's docstring)."""
    ws = await target.connection()
    try:
        await ws.send(frame)
        reply = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
    except ConnectionClosed:
        assert ws.close_code in DOCUMENTED_CLOSES, (ws.close_code, ws.close_reason, frame)
        target.closes += 1
        return
    expected_id = readable_id(frame)
    if expected_id is None:
        assert str(reply["id"]).startswith("error-"), (reply, frame)
    else:
        assert reply["id"] == expected_id, (reply, frame)
    if reply["type"] == "error":
        assert reply["error"]["code"] in KNOWN_CODES, (reply, frame)
        assert set(reply) == {"id", "type", "timestamp", "error"}
    else:
        assert reply["type"] == response_type(frame), (reply, frame)
        if "error" in reply:
            assert reply["error"]["code"] in KNOWN_CODES, (reply, frame)
            assert reply["data"]["success"] is False


@settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(frames=st.lists(FRAMES, min_size=1, max_size=3))
async def test_every_malformed_frame_gets_its_reply_or_an_error(
    fuzz_target: FuzzTarget, frames: list[str | bytes]
) -> None:
    """Any frame gets its reply (same id) or an error, never INTERNAL_ERROR; nothing breaks."""
    for frame in frames:
        await answered_or_documented_close(fuzz_target, frame)
    assert fuzz_target.closes == 0  # every frame here is under MAX_FRAME_SIZE: no close is due
    await fuzz_target.scene.assert_unharmed()


async def test_hand_written_hostile_frames_get_their_reply_or_an_error(
    fuzz_target: FuzzTarget,
) -> None:
    """The property test's hostile snippets, every one of them, on one connection."""
    for frame in HOSTILE_FRAMES:
        await answered_or_documented_close(fuzz_target, frame)
        await answered_or_documented_close(fuzz_target, frame.encode())
    assert fuzz_target.closes == 0
    await fuzz_target.scene.assert_unharmed()


# ------------------------------------------------------------------- hand-picked attacks


Attack = Callable[[Scene], Awaitable[None]]


async def forged_logins(scene: Scene) -> None:
    """Every JWT forgery: auth_response failure with its code, and the connection stays
    unauthenticated (it cannot stop alice's transaction)."""
    async with app_client(scene.server) as mallory:
        for token, code in forgeries().values():
            reply = await mallory.request("auth_request", {"token": token})
            failure(reply, "auth_response", code)
            stop = await mallory.request("stop_charging_request", {"transactionId": scene.tx})
            error(stop, "NOT_AUTHENTICATED")


async def cross_user_stop(scene: Scene) -> None:
    for data in ({"transactionId": scene.tx}, {"transactionId": scene.tx, "chargePointId": CP}):
        failure(
            await scene.bob.request("stop_charging_request", data),
            "stop_charging_response",
            "TRANSACTION_NOT_FOUND",
        )
    failure(
        await scene.bob.request(
            "stop_charging_request", {"transactionId": scene.tx, "userId": "alice"}
        ),
        "stop_charging_response",
        "FORBIDDEN",
    )


async def cross_user_meter_snooping(scene: Scene) -> None:
    await scene.cp.meter(1, scene.tx, [{"value": "1500"}])
    await scene.alice.push("meter_values_update")
    await nothing_more(scene.bob)
    error(await scene.bob.request("get_meter_values", {"transactionId": scene.tx}), "FORBIDDEN")
    failure(
        await scene.bob.request("subscribe", {"chargePointIds": [CP]}),
        "subscribe_response",
        "FORBIDDEN",
    )
    await scene.cp.meter(1, scene.tx, [{"value": "1600"}])
    await scene.alice.push("meter_values_update")
    await nothing_more(scene.bob)


async def foreign_id_tag(scene: Scene) -> None:
    for tag in (ALICE_CARD, ALICE_TAG):
        failure(
            await scene.bob.request(
                "start_charging_request", {"chargePointId": CP, "connectorId": 2, "idTag": tag}
            ),
            "start_charging_response",
            "FORBIDDEN",
        )


async def start_on_alices_connector(scene: Scene) -> None:
    failure(
        await scene.bob.request(
            "start_charging_request", {"chargePointId": CP, "connectorId": 1, "idTag": BOB_TAG}
        ),
        "start_charging_response",
        "CONNECTOR_BUSY",
    )


async def origin_spoof(scene: Scene) -> None:
    assert await upgrade_status(scene.server, origin=Origin("https://evil.example")) == 403


async def oversized_frame(scene: Scene) -> None:
    async with app_client(scene.server, scene.server.token("bob")) as bob:
        await bob.ws.send("[" + "1," * 40_000 + "1]")
        assert (await closed(bob))[0] == 1009


async def invalid_utf8_text_frame(scene: Scene) -> None:
    async with app_client(scene.server) as mallory:
        await mallory.ws.send(b'{"id":"\xff"}', text=True)
        assert (await closed(mallory))[0] == 1007


async def binary_garbage(scene: Scene) -> None:
    async with app_client(scene.server, scene.server.token("bob")) as bob:
        await bob.ws.send(b"\x00\xffnot json at all\x81")
        reply = await asyncio.wait_for(bob.unsolicited.get(), 10)
        error(reply, "INVALID_MESSAGE")
        assert (await bob.request("heartbeat"))["type"] == "heartbeat"


async def flood(scene: Scene) -> None:
    """300 frames at once (default 20/s, burst 50): RATE_LIMITED answers, each with its id."""
    async with app_client(scene.server, scene.server.token("bob")) as bob:
        replies = await asyncio.gather(
            *(bob.request("heartbeat", message_id=f"f-{i}") for i in range(300))
        )
        assert [r["id"] for r in replies] == [f"f-{i}" for i in range(300)]
        limited = sum(
            1 for r in replies if r["type"] == "error" and r["error"]["code"] == "RATE_LIMITED"
        )
        assert limited >= 200
        assert bob.ws.state is State.OPEN


async def slow_loris_upgrade(scene: Scene) -> None:
    """An upgrade request dribbled a byte at a time is dropped after WS_OPEN_TIMEOUT (1 s here)."""
    url = urlsplit(scene.server.http_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    request = f"GET /ws HTTP/1.1\r\nHost: {url.netloc}\r\nUpgrade: websocket\r\nX-Pad: "
    writer.write(request.encode())
    loop = asyncio.get_running_loop()
    began = loop.time()
    eof = asyncio.ensure_future(reader.read())
    try:
        async with asyncio.timeout(5):
            for _ in range(100):  # one byte every 100 ms, never finishing the headers
                done, _ = await asyncio.wait([eof], timeout=0.1)
                if done:
                    break
                writer.write(b"a")
                assert (await scene.alice.request("heartbeat"))["type"] == "heartbeat"
            await eof
    finally:
        writer.close()
    assert loop.time() - began < 4
    assert not eof.result().startswith(b"HTTP/1.1 101")


ATTACKS: dict[str, Attack] = {
    "JWT forgeries": forged_logins,
    "cross-user stop": cross_user_stop,
    "cross-user meter snooping": cross_user_meter_snooping,
    "foreign id tag": foreign_id_tag,
    "start on another user's connector": start_on_alices_connector,
    "origin spoof": origin_spoof,
    "oversized frame": oversized_frame,
    "invalid UTF-8 text frame": invalid_utf8_text_frame,
    "binary garbage": binary_garbage,
    "flood": flood,
    "slow-loris upgrade": slow_loris_upgrade,
}


@pytest.mark.parametrize("name", list(ATTACKS))
async def test_hand_picked_attack_fails_and_harms_nobody(tmp_path: Path, name: str) -> None:
    """Each attack gets its documented answer and leaves health, alice and the DB intact."""
    async with (
        running_server(make_settings(tmp_path, ws_open_timeout=1)) as server,
        scene_on(server) as scene,
    ):
        await ATTACKS[name](scene)
        await scene.assert_unharmed()
        assert (await scene.bob.request("get_state"))["type"] == "state"
