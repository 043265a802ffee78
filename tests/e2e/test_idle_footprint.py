"""What an idle connection keeps in the server (issue 5, scenario 3: memory per connection).

Tens of thousands of idle connections make every per-connection object count. These tests pin
the savings so a refactor cannot quietly bring them back: the handshake's headers and our 101
response are dropped once a connection is open, and an idle app session holds no send queue
and no writer task. Each test also checks the connection still works afterwards. A closed
connection is freed by reference counting, not left to the cyclic garbage collector.
"""

from __future__ import annotations

import asyncio
import gc

from websockets import ServerConnection

from tests.conftest import RunningServer, app_client
from tests.peers.py_charge_point import connected_charge_point


def _assert_handshake_forgotten(ws: ServerConnection, path: str) -> None:
    assert ws.request is not None  # websockets tells the handshake from frames by it
    assert ws.request.path == path
    assert len(ws.request.headers) == 0
    assert ws.response is None


async def test_an_app_connection_keeps_no_handshake_and_no_idle_queue(
    server: RunningServer,
) -> None:
    async with app_client(server, server.token("alice")) as alice:
        (session,) = server.app.app_server.sessions
        _assert_handshake_forgotten(session.ws, "/ws")
        assert session._queue is None and session._writer is None
        reply = await alice.request("heartbeat")
        assert reply["type"] == "heartbeat"
        # A reply written at once leaves nothing behind either.
        assert session._queue is None and session._writer is None


async def test_a_session_that_queued_frames_drops_its_queue_once_drained(
    server: RunningServer,
) -> None:
    async with app_client(server, server.token("alice")) as alice:
        (session,) = server.app.app_server.sessions
        # replay() always goes through the queue and its writer task.
        session.replay([b'{"type":"heartbeat","id":"r1","data":{}}'])
        writer = session._writer
        assert writer is not None
        await writer
        assert session._queue is None and session._writer is None
        assert (await alice.unsolicited.get())["id"] == "r1"


async def test_a_charge_point_connection_keeps_no_handshake(server: RunningServer) -> None:
    async with connected_charge_point(server.ocpp_url, "CP-IDLE") as cp:
        assert server.app.ocpp_server._server is not None
        (ws,) = server.app.ocpp_server._server.connections
        _assert_handshake_forgotten(ws, "/ocpp/CP-IDLE")
        reply = await cp.status(1, "Available")  # the connection still answers
        assert reply is not None


async def test_closed_connections_are_freed_without_the_cycle_collector(
    server: RunningServer,
) -> None:
    """A closed connection must not wait for a full garbage collection to be freed: with
    thousands of connections those collections pause the loop for 100+ ms. (The OCPP door's
    subprotocol selector used to keep every charge point connection in a reference cycle.)"""
    gc.collect()
    gc.disable()
    try:
        for i in range(3):
            async with connected_charge_point(server.ocpp_url, f"CP-GONE-{i}") as cp:
                assert await cp.status(1, "Available") is not None
            async with app_client(server, server.token(f"user{i}")) as app:
                assert (await app.request("heartbeat"))["type"] == "heartbeat"
        for _ in range(500):  # until the server's handlers have finished (bounded)
            if not server.app.gateway.online_count() and not server.app.app_server.sessions:
                break
            await asyncio.sleep(0.01)
        assert not server.app.gateway.online_count() and not server.app.app_server.sessions
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        left = [o for o in gc.garbage if type(o) is ServerConnection]
        assert left == []
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
