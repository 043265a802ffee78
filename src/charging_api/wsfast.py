"""Send text frames without a coroutine, one socket write per connection per loop pass.

``websockets``' ``send()`` is a coroutine wrapped in an async context manager, and it writes each
frame with its own system call. On the hot path (a CALLRESULT per MeterValues; a push per update,
thousands a second to an admin watching everything) the wrapper, the task a queued send needs and
the per-frame syscall cost more than the work itself. When the connection is open and its
transport buffer is empty there is nothing to wait for: we hand the frame to the sans-I/O protocol
at once (so frames keep their order with any later ``send()``) and write everything the protocol
holds for that connection once, at the end of the current event-loop pass, with ``writelines``
(uvloop writes each ``write()`` at once, so a frame per ``write()`` would be a syscall per frame).
Anything else (a buffer waiting to drain, a closing connection) returns False and the caller takes
the awaited path, which keeps ``websockets``' flow control and close handling.

The frame itself is built here when nothing can change its bytes: a server's frames are not
masked, and without extensions (both doors serve with ``compression=None``), outside a fragmented
message and without debug logging, a text frame is ``0x81``, the length, the payload. That is
what ``Protocol.send_text`` appends to ``Protocol.writes`` too, through a ``Frame`` object, its
``check()`` and a ``BytesIO``: about a microsecond per frame, 22,000 frames a second in the
fan-out benchmark. Any other case goes through ``send_text``.

Both doors use it; it depends on ``websockets`` 17's ``Connection.protocol``, ``Protocol.writes``
and ``Connection.send_data()`` (pinned in pyproject.toml, covered by every end-to-end test and by
``tests/unit/test_wsfast.py``, which checks the bytes against ``send_text``'s).
"""

from __future__ import annotations

import asyncio
import logging

from websockets.asyncio.connection import Connection
from websockets.protocol import Protocol, Side, State

log = logging.getLogger(__name__)

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
    """One write per connection for every frame queued during the pass."""
    waiting = _pending.pop(loop, None)  # no entry outlives its pass (no loop is kept alive)
    if not waiting:
        return
    for connection in waiting:
        try:
            protocol = connection.protocol
            writes = protocol.writes
            if len(writes) > 1 and all(writes):  # b"" would be websockets' end-of-stream mark
                protocol.writes = []
                connection.transport.writelines(writes)
            else:
                connection.send_data()
        except Exception:  # the connection is going away; its own close path reports it
            log.debug("write to a closing connection failed", exc_info=True)
