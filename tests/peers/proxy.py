"""A loopback TCP proxy that breaks connections on purpose: ``stall``, ``cut``, ``resume``.

It sits between a client and a server on 127.0.0.1 and pipes bytes both ways, one pair of
pump tasks per accepted connection:

* :meth:`TcpProxy.stall` stops forwarding in both directions without closing anything: to both
  ends the connection looks alive and silent (a half-open socket, a stuck reader). Bytes already
  read stay in the proxy; nothing more is read, so the kernel buffers fill and the writers block.
  New connections are accepted and connected upstream, but stay silent too.
* :meth:`TcpProxy.cut` aborts every current connection (RST to both ends), as a network failure
  would. The proxy keeps listening: a client that reconnects gets through.
* :meth:`TcpProxy.resume` lets the bytes flow again.

``stall``/``resume`` take a direction: ``"up"`` (client to server), ``"down"`` (server to
client) or ``"both"``. :meth:`TcpProxy.stall_up_after` arms a trigger: the first chunk from the
server that contains a pattern stalls the upstream direction *before* that chunk is forwarded,
so whatever the client sends in answer to it is held (a deterministic way to make something
happen on the server between two client frames; client frames are masked, server frames are not).

Everything the server sends is recorded (``downstream``, bounded) whether it was forwarded yet
or not: :meth:`TcpProxy.wait_for_down` returns once a pattern went past, which tells a test
"the server has sent X" without sleeping. A stalled direction still reads one chunk and holds it.

``upstream_rcvbuf`` shrinks the receive buffer of the proxy's upstream sockets (and the proxy
reads in small chunks), so that a stalled connection fills after a few tens of kilobytes
instead of megabytes: that is what makes a "client that stops reading" quick to provoke.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field


@dataclass(eq=False)
class _Link:
    """One proxied connection: the client side and the upstream side."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    pumps: list[asyncio.Task[None]] = field(default_factory=list)

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            with contextlib.suppress(Exception):
                writer.transport.abort()


class TcpProxy:
    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        upstream_rcvbuf: int | None = None,
        chunk: int = 65536,
    ) -> None:
        self.target = (target_host, target_port)
        self._rcvbuf = upstream_rcvbuf
        self._chunk = chunk if upstream_rcvbuf is None else min(chunk, upstream_rcvbuf)
        self._flow = {"up": asyncio.Event(), "down": asyncio.Event()}
        for event in self._flow.values():
            event.set()
        self._stall_up_pattern: bytes | None = None
        self.downstream = bytearray()
        self._down_seen = asyncio.Event()
        self._links: set[_Link] = set()
        self._server: asyncio.Server | None = None
        self.port = 0
        self.accepted = 0
        #: set every time a connection is accepted (and cleared by whoever waits on it)
        self.new_connection = asyncio.Event()

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def url(self, scheme: str, path: str) -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.cut()
        pumps = [p for link in self._links for p in link.pumps]
        for pump in pumps:
            pump.cancel()
        if pumps:
            await asyncio.gather(*pumps, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    # ----------------------------------------------------------------- faults

    def stall(self, direction: str = "both") -> None:
        """Stop forwarding (both ways by default); every connection stays open and silent."""
        for name in _directions(direction):
            self._flow[name].clear()

    def resume(self, direction: str = "both") -> None:
        """Forward again (what was held back is delivered, in order)."""
        for name in _directions(direction):
            self._flow[name].set()

    def stall_up_after(self, pattern: bytes) -> None:
        """Stall client->server as soon as the server sends a chunk containing ``pattern``."""
        self._stall_up_pattern = pattern

    async def wait_for_down(self, pattern: bytes, start: int = 0) -> int:
        """Wait until the server has sent ``pattern`` (at or after offset ``start`` of
        :attr:`downstream`); returns the offset just past it. Bound it with a timeout."""
        while True:
            found = self.downstream.find(pattern, start)
            if found >= 0:
                return found + len(pattern)
            self._down_seen.clear()
            await self._down_seen.wait()

    def cut(self) -> None:
        """Abort every current connection at both ends; keep accepting new ones."""
        links, self._links = self._links, set()
        for link in links:
            link.abort()

    @property
    def connections(self) -> int:
        return len(self._links)

    # ------------------------------------------------------------------ pipes

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await self._open_upstream()
        except OSError:
            writer.transport.abort()
            return
        link = _Link(writer, up_writer)
        self._links.add(link)
        self.accepted += 1
        self.new_connection.set()
        link.pumps = [
            asyncio.create_task(self._pump(reader, up_writer, link, "up")),
            asyncio.create_task(self._pump(up_reader, writer, link, "down")),
        ]
        await asyncio.gather(*link.pumps, return_exceptions=True)
        self._links.discard(link)
        for side in (writer, up_writer):
            side.close()

    async def _open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._rcvbuf is None:
            return await asyncio.open_connection(*self.target)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            # Before connect(), so the window announced in the handshake is already small.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._rcvbuf)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, self.target)
        except BaseException:
            sock.close()
            raise
        return await asyncio.open_connection(sock=sock, limit=self._chunk)

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, link: _Link, direction: str
    ) -> None:
        flowing = self._flow[direction]
        try:
            while True:
                try:
                    data = await source.read(self._chunk)
                except (ConnectionError, OSError):
                    await flowing.wait()  # a stalled link hides the failure until resumed
                    link.abort()
                    return
                if direction == "down" and data:
                    self._record_down(data)
                await flowing.wait()
                if not data or sink.is_closing():  # ended, or cut while this chunk was held
                    break
                sink.write(data)
                await sink.drain()
            # Orderly end from one side: pass the FIN on, keep the other direction going.
            if not sink.is_closing() and sink.can_write_eof():
                sink.write_eof()
        except (ConnectionError, OSError, RuntimeError):
            link.abort()

    def _record_down(self, data: bytes) -> None:
        pattern = self._stall_up_pattern
        if pattern is not None and pattern in data:
            self._stall_up_pattern = None
            self._flow["up"].clear()
        self.downstream += data
        if len(self.downstream) > _DOWNSTREAM_LIMIT:
            del self.downstream[: len(self.downstream) - _DOWNSTREAM_LIMIT]
        self._down_seen.set()


_DOWNSTREAM_LIMIT = 4 * 1024 * 1024


def _directions(direction: str) -> tuple[str, ...]:
    if direction == "both":
        return ("up", "down")
    if direction in ("up", "down"):
        return (direction,)
    raise ValueError(f"direction must be up, down or both, not {direction!r}")


@contextlib.asynccontextmanager
async def proxy_to(host: str, port: int, **kwargs: object) -> AsyncIterator[TcpProxy]:
    """A started proxy in front of ``host:port``, closed (all links aborted) on exit."""
    proxy = TcpProxy(host, port, **kwargs)  # type: ignore[arg-type]
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()
