"""Transport limit: the WebSocket library we use, answering every CALL with a fixed CALLRESULT.

No JSON parsing: the unique id is sliced out of ``[2,"<id>",...`` and put into a constant
``[3,"<id>",{}]`` (a reply without the caller's id would not be a reply). Same ``serve()`` options
as our OCPP door (no compression, small receive queue, no pings) and the same event loop (uvloop).

    python -m bench.peers.transport_server PORT
"""

from __future__ import annotations

import asyncio
import sys

import uvloop
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol


async def _answer(ws: ServerConnection) -> None:
    try:
        async for message in ws:
            text = message if isinstance(message, str) else message.decode()
            end = text.find('"', 4)
            await ws.send('[3,"' + text[4:end] + '",{}]')
    except ConnectionClosed:
        pass


async def _main(port: int) -> None:
    async with serve(
        _answer,
        "127.0.0.1",
        port,
        subprotocols=[Subprotocol("ocpp1.6")],
        compression=None,
        max_queue=4,
        max_size=65536,
        ping_interval=None,
        server_header=None,
    ):
        await asyncio.Future()


if __name__ == "__main__":
    uvloop.run(_main(int(sys.argv[1])))
