"""Everything the doors need from ``websockets`` beyond its public API, in one place.

Both doors serve with ``websockets``' asyncio server. Three things they do are not in its public
API; they live here, each with a test in ``tests/unit/test_transport.py`` that pins the
assumption it rests on, and the import fails loudly on a ``websockets`` release those tests have
not run against (:data:`TESTED_WEBSOCKETS`):

:func:`send_text_nowait`
    Queue a text frame without a coroutine; every frame a connection gets during one event-loop
    pass leaves in one ``transport.writelines()``. ``send()`` is a coroutine inside an async
    context manager and writes each frame with its own system call (uvloop writes every
    ``write()`` at once); on the hot path (a CALLRESULT per MeterValues, a push per update to
    each follower) the wrapper, the task a queued send needs and the per-frame syscall cost more
    than the work. Contract: True means the frame is queued behind every frame sent before it
    and is written before the loop next waits for I/O; False means nothing was queued (the
    connection is not open, or its buffer is waiting to drain) and the caller must use the
    awaited ``send()``, which keeps flow control and close handling.

    The output is taken with the public ``Protocol.data_to_send()`` and written with the public
    ``transport.writelines()``. The frame itself is built here when its bytes cannot differ from
    ``Protocol.send_text()``'s (a server's frame is unmasked; without extensions, outside a
    fragmented message and without debug logging it is ``0x81``, the length, the payload) and
    appended to ``Protocol.writes``, the list ``data_to_send()`` hands over. This is the one
    private touch kept on the hot path: ``send_text()`` builds a ``Frame``, checks it and
    serializes it through a ``BytesIO``, several times the cost of the bytes we append, for every
    push to every follower. Anything else goes through ``send_text()``.

:func:`forget_handshake`
    Drop what ``websockets`` keeps of a finished handshake: the request's headers, our 101
    response, and the server's subprotocol selector (a closure over the connection that keeps
    every closed connection in a reference cycle until a full collection).

:func:`split_connections`
    One listening port for WebSockets and plain HTTP. ``websockets``' HTTP parser takes GET
    requests only (no bodies), so the operator REST API cannot be served through
    ``process_request``. The ``create_connection`` hook of ``serve()`` (public) returns a small
    asyncio protocol that reads the request line only, then hands the transport and the bytes
    read to ``websockets``' own connection (GETs of the paths the WebSocket server owns) or to
    an HTTP protocol (everything else: the ASGI app). After the hand-over the front is out of the
    way: the connection's frames never pass through it. The touch on ``websockets``: its
    connection object is given ``connection_made`` and ``data_received`` by us instead of by the
    event loop, exactly as the loop would (the same transport, the same bytes, in order).

:data:`TESTED_WEBSOCKETS`
    The ``websockets`` releases whose internals the tests above have checked.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection
from typing import Any, cast

from websockets.asyncio.connection import Connection
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.protocol import Protocol, Side, State
from websockets.version import version as websockets_version

__all__ = [
    "TESTED_WEBSOCKETS",
    "UntestedWebsockets",
    "check_websockets_version",
    "forget_handshake",
    "send_text_nowait",
    "split_connections",
    "text_frame",
]

log = logging.getLogger(__name__)

#: ``websockets`` (major, minor) releases whose internals ``tests/unit/test_transport.py`` pins.
TESTED_WEBSOCKETS = frozenset({(17, 4)})


class UntestedWebsockets(ImportError):
    """The installed ``websockets`` is not one whose internals this module was tested against."""


def check_websockets_version(version: str) -> None:
    """Raise :class:`UntestedWebsockets` unless ``version`` is a tested release (any patch)."""
    parts = version.split(".")
    try:
        major_minor = (int(parts[0]), int(parts[1]))
    except (IndexError, ValueError):
        major_minor = (-1, -1)
    if major_minor not in TESTED_WEBSOCKETS:
        tested = ", ".join(f"{major}.{minor}" for major, minor in sorted(TESTED_WEBSOCKETS))
        raise UntestedWebsockets(
            f"charging_api.transport relies on websockets internals tested with websockets "
            f"{tested}, but websockets {version} is installed; install the pinned release "
            f"(pip install 'websockets=={tested}') or run tests/unit/test_transport.py against "
            f"{version} and add it to TESTED_WEBSOCKETS"
        )


check_websockets_version(websockets_version)

# ------------------------------------------------------------------------ send without awaiting

#: Connections with frames queued in this loop pass, per running loop (tests run many loops).
_pending: dict[asyncio.AbstractEventLoop, set[Connection]] = {}

#: FIN + text opcode, then the 7-bit length: the header of every frame under 126 bytes.
_SHORT_HEADERS = tuple(bytes((0x81, length)) for length in range(126))


def text_frame(data: bytes) -> bytes:
    """An unmasked, final, uncompressed text frame (RFC 6455 section 5.2)."""
    length = len(data)
    if length < 126:
        return _SHORT_HEADERS[length] + data
    if length < 65536:
        return b"\x81\x7e" + length.to_bytes(2, "big") + data
    return b"\x81\x7f" + length.to_bytes(8, "big") + data


def _plain(protocol: Protocol) -> bool:
    """Whether ``text_frame`` gives the bytes ``protocol.send_text`` would queue."""
    return (
        protocol.side is Side.SERVER
        and not protocol.extensions
        and not protocol.expect_continuation_frame
        and not protocol.debug
    )


def send_text_nowait(connection: Connection, data: bytes) -> bool:
    """Queue ``data`` as one text frame for this loop pass's write; True if it was taken."""
    protocol = connection.protocol
    if protocol.state is not State.OPEN or connection.transport.get_write_buffer_size():
        return False
    if _plain(protocol):
        protocol.writes.append(text_frame(data))
    else:
        protocol.send_text(data)
    loop = connection.loop
    waiting = _pending.get(loop)
    if waiting is None:
        waiting = _pending[loop] = set()
        loop.call_soon(_write_all, loop)
    waiting.add(connection)
    return True


def _write_all(loop: asyncio.AbstractEventLoop) -> None:
    """One ``writelines`` per connection for every frame queued during the pass."""
    waiting = _pending.pop(loop, None)  # no entry outlives its pass (no loop is kept alive)
    if not waiting:
        return
    for connection in waiting:
        try:
            _flush(connection)
        except Exception:  # the connection is going away; its own close path reports it
            log.debug("write to a closing connection failed", exc_info=True)


def _flush(connection: Connection) -> None:
    """Write what the protocol holds (``websockets`` may have written it already: then nothing).

    An empty chunk is ``websockets``' end-of-stream mark: what precedes it is written, then the
    stream is half-closed (or closed, where TLS cannot half-close), as ``websockets`` does.
    """
    chunks = connection.protocol.data_to_send()
    if not chunks:
        return
    transport = connection.transport
    if all(chunks):
        transport.writelines(chunks)
        return
    end = chunks.index(b"")
    transport.writelines(chunks[:end])
    if transport.can_write_eof():
        transport.write_eof()
    else:
        transport.close()


# ------------------------------------------------------------------------ after the handshake

#: Stands in for a connection's handshake headers once the handshake is over (never mutated).
_NO_HEADERS = Headers()


def forget_handshake(ws: ServerConnection) -> None:
    """Drop what ``websockets`` keeps of the handshake once the connection is open.

    ``websockets`` keeps the upgrade request's headers and our 101 response for the connection's
    lifetime (~4 KiB, a third of an idle connection's memory) but after the handshake only tests
    ``request is None``. Neither door reads them later: the checks that need headers (path,
    origin, Basic auth, limits) run in ``process_request``. The request object and its path stay.

    ``serve(select_subprotocol=...)`` binds a closure over the connection onto its protocol as an
    instance attribute: connection -> protocol -> closure -> connection, a cycle that only the
    cyclic collector frees. It is used only during the handshake; without it the class's own
    method is back and a closed connection is freed by reference counting.
    """
    if ws.request is not None:
        ws.request.headers = _NO_HEADERS
    ws.response = None
    vars(ws.protocol).pop("select_subprotocol", None)


# ------------------------------------------------------------------------ one port, two servers

#: The longest request line the front waits for before it gives up on the connection.
MAX_REQUEST_LINE = 8192


class _Front(asyncio.Protocol):
    """A new connection until its request line is in: then it belongs to someone else."""

    __slots__ = ("_buffer", "_connection", "_http", "_owned", "_timeout", "_timer", "_transport")

    def __init__(
        self,
        connection: ServerConnection,
        owned: Collection[bytes],
        http: Callable[[], asyncio.Protocol],
        timeout: float,
    ) -> None:
        self._connection = connection
        self._owned = owned
        self._http = http
        self._buffer = b""
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timeout = timeout

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        # A peer that never sends its request line holds no more than a socket for this long.
        self._timer = asyncio.get_running_loop().call_later(self._timeout, self._transport.abort)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        end = self._buffer.find(b"\r\n")
        if end < 0:
            if len(self._buffer) > MAX_REQUEST_LINE and self._transport is not None:
                self._transport.abort()
            return
        method, _, rest = self._buffer[:end].partition(b" ")
        target = rest.split(b" ", 1)[0].split(b"?", 1)[0]
        websocket = method == b"GET" and target in self._owned
        self._hand_over(self._connection if websocket else self._http())

    def _hand_over(self, owner: asyncio.Protocol) -> None:
        transport = self._transport
        assert transport is not None
        if self._timer is not None:
            self._timer.cancel()
        buffered, self._buffer = self._buffer, b""
        transport.set_protocol(owner)
        owner.connection_made(transport)
        owner.data_received(buffered)

    def connection_lost(self, exc: Exception | None) -> None:
        # Gone before its request line: nothing was handed over, nothing else to tell.
        if self._timer is not None:
            self._timer.cancel()

    def eof_received(self) -> bool | None:
        return None  # close the transport


def split_connections(
    owned_paths: Collection[str],
    http: Callable[[], asyncio.Protocol],
    timeout: float,
) -> Any:
    """A ``create_connection`` for ``websockets.asyncio.server.serve``.

    GET requests for ``owned_paths`` go to the WebSocket server as if it were alone on the
    port (its ``process_request``, handshake and handler as before); any other request goes to
    a new protocol from ``http`` (e.g. an ASGI server's HTTP protocol), which then owns the
    connection, keep-alive included. ``timeout`` bounds the wait for the request line.
    """
    owned = frozenset(path.encode() for path in owned_paths)

    def create(*args: Any, **kwargs: Any) -> asyncio.Protocol:
        return _Front(ServerConnection(*args, **kwargs), owned, http, timeout)

    return create
