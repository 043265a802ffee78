"""Who owns which charge point: the gateway's claims and the api node's mirror of them.

A gateway owns the charge points connected to it. ``owner:{cp}`` holds its node id with a TTL
(``OWNER_TTL``); :class:`OwnerRegistry` (gateway side):

- **claims** when a charge point's session becomes live (``SET``, unconditional: the newest
  connection wins, a reconnect to another gateway takes ownership over at once);
- **refreshes** every TTL/3 every charge point it holds (a script: extend if still ours,
  claim again if the key is gone, e.g. after a Redis restart; leave it and stop refreshing if
  another node holds it: the charge point is connected there now);
- **releases** when the live session ends (compare-and-delete: never another node's claim);
- announces each claim and release on the ``owners`` channel.

Claims and releases are queued and written in order by one task (pipelined), so the OCPP
door never waits for Redis. A gateway that dies leaves its keys to expire within the TTL.

:class:`OwnerMirror` (api side) keeps ``charge point -> node`` in memory so
``ChargerGateway.is_online`` stays synchronous: it follows the ``owners`` channel and re-reads
every key (``SCAN``) periodically and after each reconnection to Redis (it may have missed
notices, and expiry sends none). Trade-off: between two scans a dead gateway's charge points
still look online; a command for one then fails with CHARGE_POINT_OFFLINE at its deadline or
as soon as the charge point reconnects elsewhere, whichever comes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import orjson
from redis import asyncio as aioredis

from charging_api.cluster import keys
from charging_api.cluster.listen import REDIS_ERRORS, ChannelListener

log = logging.getLogger(__name__)

_REFRESH = """
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not current then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  redis.call('PUBLISH', ARGV[3], ARGV[4])
  return 2
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 1
end
return 0
"""

#: Writes per pipeline round trip.
_BATCH = 500


def _notice(kind: str, charge_point_id: str, node_id: str) -> bytes:
    return orjson.dumps([kind, charge_point_id, node_id])


class OwnerRegistry:
    """A gateway's claims on its connected charge points (see the module docstring).

    Wire it to ``OcppGateway.on_online``/``on_offline`` (:meth:`claim`/:meth:`release`).
    """

    def __init__(self, redis: aioredis.Redis, node_id: str, ttl: float) -> None:
        self._redis = redis
        self.node_id = node_id
        self.ttl = ttl
        self._ttl_ms = max(int(ttl * 1000), 1000)
        self._owned: set[str] = set()
        self._queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._refresh_script = redis.register_script(_REFRESH)
        self._release_script = redis.register_script(_RELEASE)
        self._tasks: list[asyncio.Task[None]] = []
        self._outage = False
        #: Called with a charge point id when its key turned out to be another node's.
        self.on_lost: Callable[[str], None] | None = None

    def owned(self) -> frozenset[str]:
        return frozenset(self._owned)

    def claim(self, charge_point_id: str) -> None:
        self._owned.add(charge_point_id)
        self._queue.put_nowait(("claim", charge_point_id))

    def release(self, charge_point_id: str) -> None:
        self._owned.discard(charge_point_id)
        self._queue.put_nowait(("release", charge_point_id))

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._write(), name="owner claims"),
            asyncio.create_task(self._keep_alive(), name="owner refresh"),
        ]

    async def flush(self) -> None:
        """Wait until every claim and release queued so far is written (or given up)."""
        await self._queue.join()

    async def close(self, wait: float = 2.0) -> None:
        """Write what is queued (at most ``wait`` seconds), stop refreshing and release every
        charge point still held (best effort: a key left behind expires within the TTL)."""
        if self._tasks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), wait)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        held = sorted(self._owned)
        self._owned.clear()
        with contextlib.suppress(*REDIS_ERRORS):
            await self._apply([("release", cp) for cp in held])

    async def _write(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty() and len(batch) < _BATCH:
                batch.append(self._queue.get_nowait())
            try:
                await self._apply(batch)
                self._recovered()
            except REDIS_ERRORS as exc:
                # Claims stay in _owned: the next refresh writes them. A lost release leaves
                # a key that expires within the TTL.
                self._failed(exc)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _apply(self, batch: list[tuple[str, str]]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for kind, cp in batch:
            if kind == "claim":
                pipe.set(keys.owner(cp), self.node_id, px=self._ttl_ms)
                pipe.publish(keys.OWNERS, _notice("claim", cp, self.node_id))
            else:
                await self._release_script(
                    keys=[keys.owner(cp)],
                    args=[self.node_id, keys.OWNERS, _notice("release", cp, self.node_id)],
                    client=pipe,
                )
        await pipe.execute()

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                await self.refresh()
                self._recovered()
            except REDIS_ERRORS as exc:
                self._failed(exc)

    async def refresh(self) -> None:
        """Extend (or re-make) the key of every charge point held; forget those another node
        holds now."""
        held = sorted(self._owned)
        for start in range(0, len(held), _BATCH):
            chunk = held[start : start + _BATCH]
            pipe = self._redis.pipeline(transaction=False)
            for cp in chunk:
                await self._refresh_script(
                    keys=[keys.owner(cp)],
                    args=[
                        self.node_id,
                        self._ttl_ms,
                        keys.OWNERS,
                        _notice("claim", cp, self.node_id),
                    ],
                    client=pipe,
                )
            for cp, outcome in zip(chunk, await pipe.execute(), strict=True):
                if outcome == 0 and cp in self._owned:
                    log.warning("charge point %s is owned by another gateway now", cp)
                    self._owned.discard(cp)
                    if self.on_lost is not None:
                        self.on_lost(cp)

    def _failed(self, exc: BaseException) -> None:
        if not self._outage:
            log.warning("owner registry: Redis does not answer (%s); claims are retried", exc)
            self._outage = True

    def _recovered(self) -> None:
        if self._outage:
            log.warning("owner registry: Redis answers again")
            self._outage = False


class OwnerMirror:
    """An api node's picture of ``owner:*`` (see the module docstring)."""

    def __init__(self, redis: aioredis.Redis, refresh_interval: float = 5.0) -> None:
        self._redis = redis
        self.refresh_interval = refresh_interval
        self._owners: dict[str, str] = {}
        #: Called with (charge point id, new owner or None) whenever the picture changes.
        self.listeners: list[Callable[[str, str | None], None]] = []
        self._listener = ChannelListener(
            redis, [keys.OWNERS], self._on_notice, on_ready=self._resync, name="owner notices"
        )
        self._refresher: asyncio.Task[None] | None = None
        self._resyncs: set[asyncio.Task[None]] = set()

    def owner(self, charge_point_id: str) -> str | None:
        return self._owners.get(charge_point_id)

    def is_online(self, charge_point_id: str) -> bool:
        return charge_point_id in self._owners

    def count(self) -> int:
        return len(self._owners)

    async def start(self) -> None:
        await self._listener.start()
        with contextlib.suppress(*REDIS_ERRORS):
            await self.refresh()
        self._refresher = asyncio.create_task(self._refresh_loop(), name="owner mirror")

    async def close(self) -> None:
        tasks = [t for t in (self._refresher, *self._resyncs) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._refresher = None
        await self._listener.close()

    def note(self, charge_point_id: str, owner: str | None) -> None:
        """What a fresh read of the key said (also used for notices)."""
        before = self._owners.get(charge_point_id)
        if owner is None:
            self._owners.pop(charge_point_id, None)
        else:
            self._owners[charge_point_id] = owner
        if before != owner:
            for listener in self.listeners:
                listener(charge_point_id, owner)

    async def refresh(self) -> None:
        """Re-read every owner key (SCAN + MGET)."""
        found: dict[str, str] = {}
        prefix = len(keys.owner(""))
        batch: list[str] = []
        async for key in self._redis.scan_iter(match=keys.OWNER_PATTERN, count=1000):
            batch.append(str(key))
            if len(batch) >= 1000:
                await self._read(batch, found, prefix)
                batch = []
        if batch:
            await self._read(batch, found, prefix)
        for cp in set(self._owners) - set(found):
            self.note(cp, None)
        for cp, node in found.items():
            self.note(cp, node)

    async def _read(self, batch: list[str], found: dict[str, str], prefix: int) -> None:
        for key, value in zip(batch, await self._redis.mget(batch), strict=True):
            if value is not None:
                found[key[prefix:]] = str(value)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_interval)
            with contextlib.suppress(*REDIS_ERRORS):
                await self.refresh()

    def _resync(self) -> None:
        task = asyncio.ensure_future(self._quiet_refresh())
        self._resyncs.add(task)
        task.add_done_callback(self._resyncs.discard)

    async def _quiet_refresh(self) -> None:
        with contextlib.suppress(*REDIS_ERRORS):
            await self.refresh()

    def _on_notice(self, _channel: str, data: str) -> None:
        kind, cp, node = orjson.loads(data)
        if kind == "claim":
            self.note(str(cp), str(node))
        elif kind == "release" and self._owners.get(str(cp)) == node:
            self.note(str(cp), None)
