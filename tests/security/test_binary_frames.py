"""Binary WebSocket frames on /ws are refused with a clear error; the connection lives on."""

from __future__ import annotations

import orjson

from tests.conftest import RunningServer, app_client


async def test_a_binary_frame_is_refused_and_the_text_protocol_continues(
    server: RunningServer,
) -> None:
    """A binary frame (even one holding a valid request) gets INVALID_MESSAGE with its id and
    is not acted on; the next text frame on the same socket is served."""
    async with app_client(server, server.token("alice")) as client:
        envelope = {"id": "bin-1", "type": "get_state", "data": {}}
        reply = await client.send_raw(orjson.dumps(envelope), "bin-1")
        assert reply["type"] == "error", reply
        assert reply["error"]["code"] == "INVALID_MESSAGE"
        assert "text frame" in reply["error"]["message"]
        assert reply["error"]["details"] == {"frame": "binary"}
        state = await client.request("get_state")
        assert state["type"] == "state" and "error" not in state
