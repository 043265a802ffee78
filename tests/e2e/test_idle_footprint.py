"""What an idle connection keeps in the server (issue 5, scenario 3: memory per connection).

Tens of thousands of idle connections make every per-connection object count. These tests pin
the savings so a refactor cannot quietly bring them back: the handshake's headers and our 101
response are dropped once a connection is open, and an idle app session holds no send queue
and no writer task. Each test also checks the connection still works afterwards.
"""

from __future__ import annotations

from websockets.asyncio.server import ServerConnection

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
        ws = server.app.ocpp_server._connections["CP-IDLE"]
        _assert_handshake_forgotten(ws, "/ocpp/CP-IDLE")
        reply = await cp.status(1, "Available")  # the connection still answers
        assert reply is not None
