"""wsfast builds text frames itself: they must be the bytes websockets' own send_text queues."""

from __future__ import annotations

import pytest
from websockets.client import ClientProtocol
from websockets.protocol import Protocol, State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from charging_api import wsfast


def opened(protocol: Protocol) -> Protocol:
    protocol.state = State.OPEN
    return protocol


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_text_frame_is_what_send_text_queues(length: int) -> None:
    """Every length encoding (7-bit, 16-bit, 64-bit) matches a websockets server's frame."""
    data = bytes(range(48, 58)) * (length // 10) + b"x" * (length % 10)
    protocol = opened(ServerProtocol())
    protocol.send_text(data)
    assert protocol.data_to_send() == [wsfast.text_frame(data)]


def test_only_plain_server_frames_are_built_by_hand() -> None:
    """A client masks its frames, and an extension or a fragment in progress changes them."""
    assert wsfast._plain(opened(ServerProtocol()))
    assert not wsfast._plain(opened(ClientProtocol(parse_uri("ws://localhost/"))))
    fragmenting = opened(ServerProtocol())
    fragmenting.send_text(b"part", fin=False)
    assert not wsfast._plain(fragmenting)
