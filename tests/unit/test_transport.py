"""Every assumption ``charging_api.transport`` makes about ``websockets`` internals, pinned.

If a ``websockets`` upgrade breaks one of these, the failing test names the assumption; the
version check makes sure these tests ran against the installed release.
"""

from __future__ import annotations

import ast
import asyncio
import gc
import logging
import weakref
from collections.abc import Sequence
from pathlib import Path

import pytest
import websockets
from websockets import ServerConnection, Subprotocol
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.protocol import Protocol, State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri
from websockets.version import version as websockets_version

from charging_api import transport


def opened(protocol: Protocol) -> Protocol:
    protocol.state = State.OPEN
    return protocol


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_text_frame_is_what_send_text_queues(length: int) -> None:
    """Every length encoding (7-bit, 16-bit, 64-bit) matches a websockets server's frame."""
    data = bytes(range(48, 58)) * (length // 10) + b"x" * (length % 10)
    protocol = opened(ServerProtocol())
    protocol.send_text(data)
    assert protocol.data_to_send() == [transport.text_frame(data)]


def test_writes_is_the_list_data_to_send_hands_over() -> None:
    """A frame appended to ``Protocol.writes`` leaves, in order, through ``data_to_send()``."""
    protocol = opened(ServerProtocol())
    protocol.send_text(b"first")
    protocol.writes.append(transport.text_frame(b"second"))
    protocol.send_text(b"third")
    assert protocol.data_to_send() == [
        transport.text_frame(d) for d in (b"first", b"second", b"third")
    ]
    assert protocol.data_to_send() == []


def test_only_plain_server_frames_are_built_by_hand() -> None:
    """A client masks its frames, and an extension or a fragment in progress changes them."""
    assert transport._plain(opened(ServerProtocol()))
    assert not transport._plain(opened(ClientProtocol(parse_uri("ws://localhost/"))))
    fragmenting = opened(ServerProtocol())
    fragmenting.send_text(b"part", fin=False)
    assert fragmenting.expect_continuation_frame
    assert not transport._plain(fragmenting)


def test_an_extension_changes_the_frame_so_it_takes_the_public_path() -> None:
    """With permessage-deflate negotiated, send_text's bytes differ from a plain frame."""
    protocol = opened(ServerProtocol())
    protocol.extensions = [PerMessageDeflate(False, False, 15, 15)]
    assert not transport._plain(protocol)
    protocol.send_text(b"x" * 200)
    assert protocol.data_to_send() != [transport.text_frame(b"x" * 200)]


def test_debug_logging_takes_the_public_path() -> None:
    """With DEBUG logging websockets logs each frame in send_text, so we must not bypass it."""
    logger = logging.getLogger("tests.transport.debug")
    logger.setLevel(logging.DEBUG)
    protocol = opened(ServerProtocol(logger=logger))
    assert protocol.debug
    assert not transport._plain(protocol)


def test_an_untested_websockets_release_fails_loudly() -> None:
    """Importing the transport over an untested websockets names the tested release."""
    transport.check_websockets_version("17.4")
    transport.check_websockets_version("17.4.3")  # patch releases keep internals
    for untested in ("17.5", "18.0", "16.0", "garbage"):
        with pytest.raises(transport.UntestedWebsockets, match=r"tested with websockets 17\.4"):
            transport.check_websockets_version(untested)


def test_the_installed_websockets_is_tested() -> None:
    """The pinned release in pyproject.toml is the one these tests cover."""
    transport.check_websockets_version(websockets_version)


def test_serve_keeps_the_subprotocol_selector_on_the_protocol() -> None:
    """``select_subprotocol`` is bound onto the protocol instance (what forget_handshake drops)."""

    def select(protocol: ServerProtocol, offered: Sequence[Subprotocol]) -> Subprotocol | None:
        return None

    protocol = ServerProtocol(select_subprotocol=select)
    assert "select_subprotocol" in vars(protocol)
    vars(protocol).pop("select_subprotocol")
    assert protocol.select_subprotocol([]) is None  # the class's method is back


async def test_a_real_connection_after_forget_handshake_and_nowait_sends() -> None:
    """Over a socket: the handshake is forgotten, frames queued in one pass arrive in order,
    and the closed connection is freed without the cycle collector."""
    seen: list[weakref.ref[ServerConnection]] = []
    done = asyncio.Event()

    def select(ws: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol | None:
        return Subprotocol("ocpp1.6") if "ocpp1.6" in offered else None

    async def handler(ws: ServerConnection) -> None:
        assert "select_subprotocol" in vars(ws.protocol)
        transport.forget_handshake(ws)
        assert "select_subprotocol" not in vars(ws.protocol)
        assert ws.request is not None and len(ws.request.headers) == 0
        assert ws.response is None
        seen.append(weakref.ref(ws))
        async for message in ws:
            assert isinstance(message, str)
            for i in range(3):
                assert transport.send_text_nowait(ws, f"{message}-{i}".encode())
        assert not transport.send_text_nowait(ws, b"after close")
        done.set()

    async with websockets.serve(
        handler, "127.0.0.1", 0, select_subprotocol=select, compression=None
    ) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        gc.collect()
        gc.disable()
        try:
            async with websockets.connect(
                f"ws://127.0.0.1:{port}", subprotocols=[Subprotocol("ocpp1.6")]
            ) as client:
                await client.send("hello")
                assert [await client.recv() for _ in range(3)] == [
                    "hello-0",
                    "hello-1",
                    "hello-2",
                ]
            await asyncio.wait_for(done.wait(), 5)
            for _ in range(200):  # until websockets has let go of the handler (bounded)
                if seen[0]() is None:
                    break
                await asyncio.sleep(0.01)
            assert seen[0]() is None
        finally:
            gc.enable()


async def test_the_end_of_stream_mark_half_closes_after_the_frames_before_it() -> None:
    """An empty chunk from ``data_to_send()`` ends the stream after the frames queued first."""
    done = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        transport.forget_handshake(ws)
        await ws.recv()
        ws.protocol.send_text(b"last words")
        ws.protocol.fail(1011, "going")  # queues a close frame and the end-of-stream mark
        assert b"" in ws.protocol.writes
        transport._flush(ws)
        done.set()

    async with websockets.serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        async with websockets.connect(f"ws://127.0.0.1:{port}") as client:
            await client.send("bye")
            assert await client.recv() == "last words"
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await client.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
        await asyncio.wait_for(done.wait(), 5)


def test_only_transport_touches_websockets_internals() -> None:
    """No other module imports ``websockets.asyncio``/``websockets.protocol`` or pokes private
    state (import-linter sees only whole external packages, so the sources are scanned)."""
    src = Path(transport.__file__).parent
    internal_modules = ("websockets.asyncio", "websockets.protocol")
    private_touches = (".protocol.writes", "send_data(", "expect_continuation_frame", "vars(")
    offenders: list[str] = []
    for path in sorted(src.rglob("*.py")):
        if path.name == "transport.py" and path.parent == src:
            continue
        text = path.read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                internal_modules
            ):
                offenders.append(f"{path.relative_to(src)}: from {node.module} import ...")
            if isinstance(node, ast.Import):
                offenders += [
                    f"{path.relative_to(src)}: import {alias.name}"
                    for alias in node.names
                    if alias.name.startswith(internal_modules)
                ]
        offenders += [f"{path.relative_to(src)}: {t}" for t in private_touches if t in text]
        if ".response = None" in text:
            offenders.append(f"{path.relative_to(src)}: .response = None")
    assert offenders == []


# ------------------------------------------------------------------------ split_connections


class _Teapot(asyncio.Protocol):
    """An HTTP protocol that keeps what it received and answers 418 once a head is in."""

    received: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if b"\r\n\r\n" in self.buffer:
            _Teapot.received.append(self.buffer)
            assert isinstance(self.transport, asyncio.Transport)
            self.transport.write(b"HTTP/1.1 418 Teapot\r\nContent-Length: 0\r\n\r\n")
            self.transport.close()


async def _raw(port: int, chunks: Sequence[bytes]) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for chunk in chunks:
        writer.write(chunk)
        await writer.drain()
    try:
        answer = await asyncio.wait_for(reader.read(), 5)
    except ConnectionResetError:  # dropped with a reset: nothing was answered
        answer = b""
    writer.close()
    return answer


async def test_split_connections_hands_requests_to_their_owner() -> None:
    """GET /ws reaches websockets (handshake, frames); a POST and other paths reach the HTTP
    protocol with every byte, even when the request line arrives in pieces."""
    _Teapot.received.clear()

    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    split = transport.split_connections(["/ws"], _Teapot, timeout=5)
    async with websockets.serve(echo, "127.0.0.1", 0, create_connection=split) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws?x=1") as ws:
            await ws.send("ping")
            assert await asyncio.wait_for(ws.recv(), 5) == "ping"
        post = b"POST /ws HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
        assert (await _raw(port, [post])).startswith(b"HTTP/1.1 418")
        pieces = [b"GE", b"T /api/thing HT", b"TP/1.1\r\nHost: x\r\n\r\n"]
        assert (await _raw(port, pieces)).startswith(b"HTTP/1.1 418")
    assert _Teapot.received == [post, b"".join(pieces)]


async def test_split_connections_drops_a_silent_or_endless_request_line() -> None:
    """A peer that never finishes its request line is dropped (timeout or size), not kept."""

    async def never(ws: ServerConnection) -> None:
        raise AssertionError("no connection may reach the handler")

    split = transport.split_connections(["/ws"], _Teapot, timeout=0.2)
    async with websockets.serve(never, "127.0.0.1", 0, create_connection=split) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        assert await _raw(port, [b"GET /w"]) == b""
        assert await _raw(port, [b"G" * (transport.MAX_REQUEST_LINE + 10)]) == b""
