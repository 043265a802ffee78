"""Who is in the cluster: each node's heartbeat in Redis, and what this node knows of the others.

Every ``NODE_HEARTBEAT_INTERVAL`` a node writes one field of the :data:`keys.NODES` hash (its
role, its connection counts, when) and reads the whole hash back: one pipelined round trip. The
same beat is this node's Redis health check (``/health`` says ``redis: failing`` while it
fails) and, through ``probe_database``, its PostgreSQL check. A node not seen for three
intervals is left out of :meth:`NodeHeartbeat.nodes` (and deleted from the hash by whoever
notices), so ``/api/stats`` shows the nodes alive now, not every node that ever ran.

Trade-off: the cluster view is up to one interval old, and a node that dies stays listed for
up to three; both are read from memory, so ``/health`` and ``/api/stats`` cost no Redis call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from redis import asyncio as aioredis
from redis.exceptions import RedisError

from charging_api.cluster import keys, listen

log = logging.getLogger(__name__)

#: A node unseen for this many heartbeat intervals is gone.
MISSED_BEATS = 3


def connect(url: str, interval: float) -> aioredis.Redis:
    """The node's Redis client: a pool with bounded socket time-outs, so a Redis that stops
    answering fails a call within seconds (SERVICE_UNAVAILABLE) instead of hanging it, and
    reconnection on the next call after Redis comes back."""
    return listen.connect(
        url,
        decode_responses=False,
        socket_timeout=max(2.0, interval * 2),
        health_check_interval=max(1, int(interval)),
        fail_fast=False,
    )


@dataclass(frozen=True, slots=True)
class NodeSeen:
    node_id: str
    role: str
    seen_at: float
    counts: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {"nodeId": self.node_id, "role": self.role, "seenAt": self.seen_at, **self.counts}


class NodeHeartbeat:
    """Writes this node's beat, keeps the cluster view and the health of Redis and the database."""

    def __init__(
        self,
        redis: aioredis.Redis,
        node_id: str,
        role: str,
        counts: Callable[[], dict[str, int]],
        interval: float,
        probe_database: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._redis = redis
        self.node_id = node_id
        self.role = role
        self._counts = counts
        self._interval = interval
        self._probe_database = probe_database
        self._task: asyncio.Task[None] | None = None
        self._nodes: list[NodeSeen] = []
        #: None while the last beat reached Redis; else the error's one-line description.
        self.redis_failure: str | None = "not checked yet"
        self.database_failure: str | None = None
        #: Beats that failed (Redis round trips that did not complete), for /metrics.
        self.failed_beats = 0
        self.beats = 0

    async def start(self) -> None:
        await self.beat()
        self._task = asyncio.create_task(self._run(), name="node heartbeat")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(RedisError, OSError):
            await self._redis.hdel(keys.NODES, self.node_id)  # type: ignore[misc]

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.beat()

    async def beat(self) -> None:
        """One heartbeat: write ours, read everyone's, probe the database."""
        now = time.time()
        body = orjson.dumps({"role": self.role, "seenAt": now, "counts": self._counts()}).decode()
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hset(keys.NODES, self.node_id, body)
                pipe.hgetall(keys.NODES)
                _, raw = await pipe.execute()
        except (RedisError, OSError) as exc:
            self.failed_beats += 1
            if self.redis_failure is None:
                log.warning("node %s: Redis does not answer (%s)", self.node_id, exc)
            self.redis_failure = type(exc).__name__
        else:
            if self.redis_failure is not None and self.beats:
                log.info("node %s: Redis answers again", self.node_id)
            self.redis_failure = None
            self.beats += 1
            self._nodes = self._read(raw, now)
        if self._probe_database is not None:
            try:
                await self._probe_database()
            except Exception as exc:  # any driver error: the database does not answer
                self.database_failure = type(exc).__name__
            else:
                self.database_failure = None

    def _read(self, raw: dict[bytes, bytes], now: float) -> list[NodeSeen]:
        horizon = now - MISSED_BEATS * self._interval
        seen = []
        for field, value in raw.items():
            try:
                body = orjson.loads(value)
                node = NodeSeen(
                    field.decode(), str(body["role"]), float(body["seenAt"]), dict(body["counts"])
                )
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                continue
            if node.seen_at >= horizon:
                seen.append(node)
        return sorted(seen, key=lambda n: n.node_id)

    def nodes(self) -> list[NodeSeen]:
        """The nodes seen within the last three beats, by id (from the last beat)."""
        return list(self._nodes)

    def health(self) -> dict[str, Any]:
        """This node's part of ``/health``."""
        return {
            "nodeId": self.node_id,
            "role": self.role,
            "redis": "ok" if self.redis_failure is None else "failing",
            "database": "ok" if self.database_failure is None else "failing",
        }
