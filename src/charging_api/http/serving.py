"""The HTTP/1.1 server of the REST API: uvicorn's protocol, fed connections by the app door.

The app door's listening socket belongs to ``websockets``; connections that are not WebSocket
upgrades are handed, after their request line, to a protocol made here
(:func:`charging_api.transport.split_connections`). uvicorn's ``httptools`` protocol then
owns the connection: parsing, keep-alive, flow control, the ASGI calls into the app. No
``uvicorn.Server`` runs (it would want its own socket and signal handlers): only the
per-connection protocol and the shared state it registers itself in, which :meth:`shutdown`
uses to end keep-alive connections when the server drains.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

__all__ = ["HttpServer"]

log = logging.getLogger(__name__)


class HttpServer:
    """Connections for one ASGI app; ``protocol`` is the factory the app door calls."""

    def __init__(self, app: Any, keep_alive_timeout: float = 5.0) -> None:
        self._config = Config(
            app,
            http="httptools",
            ws="none",
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            proxy_headers=False,
            timeout_keep_alive=int(keep_alive_timeout),
        )
        self._config.load()
        self._state = ServerState()

    def protocol(self) -> asyncio.Protocol:
        return HttpToolsProtocol(config=self._config, server_state=self._state, app_state={})

    @property
    def connections(self) -> int:
        return len(self._state.connections)

    async def shutdown(self, timeout: float = 5.0) -> None:
        """Close idle connections, let requests in flight finish (bounded by ``timeout``)."""
        for connection in list(self._state.connections):
            connection.shutdown()
        tasks = list(self._state.tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
