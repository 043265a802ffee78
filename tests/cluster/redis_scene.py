"""Real Redis for cluster tests: one dedicated database, emptied before and after each test.

``CLUSTER_TEST_REDIS_URL`` names it (default ``redis://127.0.0.1:6379/13``): never database 0,
which the machine's other users share. Absent Redis is a skip outside CI, a failure in CI.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.exceptions import RedisError

from charging_api.bus.memory import MemoryBus
from charging_api.cluster.fanout import ClusterHub, PushPublisher, connect
from charging_api.domain.events import DomainEvent
from tests.external import missing

REDIS_URL = os.environ.get("CLUSTER_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")


@contextlib.asynccontextmanager
async def empty_redis() -> AsyncIterator[str]:
    """The test database, empty; yields its URL."""
    if REDIS_URL.rstrip("/").endswith(("/0", ":6379")):
        raise RuntimeError("cluster tests flush their database: give them one of their own")
    client = connect(REDIS_URL)
    try:
        try:
            await client.dbsize()
        except (RedisError, OSError):
            missing(f"Redis at {REDIS_URL}", "install redis-server and start it (.ci/run does)")
        await client.flushdb()
        yield REDIS_URL
        await client.flushdb()
    finally:
        await client.aclose()


class Inbox:
    """A session as a hub sees one; frames kept as bytes, waited on with a deadline."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.droppable: list[bool] = []
        self._arrived = asyncio.Event()

    def deliver(self, frame: bytes, droppable: bool) -> None:
        self.frames.append(frame)
        self.droppable.append(droppable)
        self._arrived.set()

    @property
    def messages(self) -> list[dict[str, Any]]:
        return [orjson.loads(frame) for frame in self.frames]

    @property
    def seqs(self) -> list[int]:
        return [message["seq"] for message in self.messages]

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[bytes]:
        async with asyncio.timeout(timeout):
            while len(self.frames) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return self.frames


@dataclass
class Cluster:
    """One core's bus and publisher, and api nodes' hubs, on the test database."""

    url: str
    bus: MemoryBus
    publisher: PushPublisher
    hubs: list[ClusterHub] = field(default_factory=list)

    async def hub(self, node: str, **kwargs: Any) -> ClusterHub:
        hub = ClusterHub(self.url, node, **kwargs)
        await hub.start()
        self.hubs.append(hub)
        return hub

    async def emit(self, *events: DomainEvent) -> None:
        """Publish on the core's bus; returns once Redis numbered and published them."""
        for event in events:
            await self.bus.publish(event)
        await asyncio.wait_for(self.publisher.flushed(), 5)


@contextlib.asynccontextmanager
async def cluster(history_size: int = 200, **publisher: Any) -> AsyncIterator[Cluster]:
    async with empty_redis() as url:
        bus = MemoryBus()
        pushes = PushPublisher(url, history_size=history_size, **publisher)
        await pushes.start()
        pushes.follow(bus)
        scene = Cluster(url, bus, pushes)
        try:
            yield scene
        finally:
            for hub in scene.hubs:
                await hub.close()
            await pushes.close()


class Relay:
    """A loopback TCP relay to Redis that a test cuts (every connection aborted, new ones
    refused) and restores on the same port: a Redis outage as the nodes see it, without
    touching the Redis other tests share."""

    def __init__(self, target_host: str = "127.0.0.1", target_port: int = 6379) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in tuple(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}
