"""Send a text frame without a coroutine when the socket can take it now.

``websockets``' ``send()`` is a coroutine wrapped in an async context manager; on the hot path
(a CALLRESULT per MeterValues, a push per update) that wrapper and the task a queued send needs
cost more than the write itself. When the connection is open and its transport buffer is empty
there is nothing to wait for, so we hand the frame to the sans-I/O protocol and write it out
directly: the same two steps ``send()`` takes, without the wrapper. Anything else (a buffer
waiting to drain, a closing connection) returns False and the caller takes the awaited path,
which keeps ``websockets``' flow control and close handling.

Both doors use it; it depends on ``websockets`` 17's ``Connection.protocol`` and
``Connection.send_data()`` (pinned in pyproject.toml, covered by every end-to-end test).
"""

from __future__ import annotations

from websockets.asyncio.connection import Connection
from websockets.protocol import State


def send_text_nowait(connection: Connection, data: bytes) -> bool:
    """Write ``data`` as one text frame now if nothing is waiting; True if it was written."""
    if connection.protocol.state is not State.OPEN or connection.transport.get_write_buffer_size():
        return False
    connection.protocol.send_text(data)
    connection.send_data()
    return True
