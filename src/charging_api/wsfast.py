"""Send text frames without a coroutine, one socket write per connection per loop pass.

``websockets``' ``send()`` is a coroutine wrapped in an async context manager, and it writes each
frame with its own system call. On the hot path (a CALLRESULT per MeterValues; a push per update,
thousands a second to an admin watching everything) the wrapper, the task a queued send needs and
the per-frame syscall cost more than the work itself. When the connection is open and its
transport buffer is empty there is nothing to wait for: we hand the frame to the sans-I/O protocol
at once (so frames keep their order with any later ``send()``) and write everything the protocol
holds for that connection once, at the end of the current event-loop pass. Anything else (a buffer
waiting to drain, a closing connection) returns False and the caller takes the awaited path, which
keeps ``websockets``' flow control and close handling.

Both doors use it; it depends on ``websockets`` 17's ``Connection.protocol`` and
``Connection.send_data()`` (pinned in pyproject.toml, covered by every end-to-end test).
"""

from __future__ import annotations

import asyncio
import logging

from websockets.asyncio.connection import Connection
from websockets.protocol import State

log = logging.getLogger(__name__)

#: Connections with frames queued in this loop pass, per running loop (tests run many loops).
_pending: dict[asyncio.AbstractEventLoop, set[Connection]] = {}


def send_text_nowait(connection: Connection, data: bytes) -> bool:
    """Queue ``data`` as one text frame for this loop pass's write; True if it was taken."""
    if connection.protocol.state is not State.OPEN or connection.transport.get_write_buffer_size():
        return False
    connection.protocol.send_text(data)
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
            connection.send_data()
        except Exception:  # the connection is going away; its own close path reports it
            log.debug("write to a closing connection failed", exc_info=True)
