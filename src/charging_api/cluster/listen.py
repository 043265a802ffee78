"""Redis connections for the cluster's parts, and a pub/sub listener that survives outages.

:func:`connect` gives a client that fails fast (connect within 2 s, answers within 5 s, one
retry): a Redis that does not answer must become ``SERVICE_UNAVAILABLE`` for the asker within
seconds, not after minutes of back-off. redis-py reconnects by itself on the next command.

:class:`ChannelListener` is one pub/sub connection on a few channels: a task reads it, calls
``on_message`` for each message, and when the connection is lost (Redis restarted, network)
calls ``on_lost``, subscribes again with a bounded back-off and calls ``on_ready`` once the
server confirmed every channel. Pub/sub is at-most-once: whatever was published while the
listener was away is gone, so ``on_ready`` is where a user re-reads what it may have missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

from redis import asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

#: What a lost or refused Redis connection raises (redis-py wraps most, not all, OSErrors).
REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError, OSError)


def connect(
    url: str,
    *,
    decode_responses: bool = True,
    socket_timeout: float = 5.0,
    health_check_interval: int = 0,
    fail_fast: bool = True,
) -> aioredis.Redis:
    """A client on ``url`` (``redis://host:port/db``); every cluster part gets its client here.

    Connects within 2 s and answers within ``socket_timeout``; ``fail_fast`` retries a failed
    command once, without back-off (the routing parts: their asker waits), instead of
    redis-py's default retries. ``decode_responses=False`` gives bytes (the fan-out's frames);
    ``health_check_interval`` pings a connection idle that long before using it (0: never)."""
    options: dict[str, object] = {}
    if fail_fast:
        options["retry"] = Retry(NoBackoff(), 1)
    client: aioredis.Redis = aioredis.from_url(  # type: ignore[no-untyped-call]
        url,
        decode_responses=decode_responses,
        socket_connect_timeout=2.0,
        socket_timeout=socket_timeout,
        health_check_interval=health_check_interval,
        **options,
    )
    return client


class ChannelListener:
    """Keeps a subscription to ``channels`` until :meth:`close` (see the module docstring)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        channels: Sequence[str],
        on_message: Callable[[str, str], None],
        *,
        on_ready: Callable[[], None] | None = None,
        on_lost: Callable[[], None] | None = None,
        name: str = "listener",
    ) -> None:
        self._redis = redis
        self._channels = tuple(channels)
        self._on_message = on_message
        self._on_ready = on_ready
        self._on_lost = on_lost
        self._name = name
        #: Set while every channel is subscribed.
        self.ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self, wait: float = 5.0) -> bool:
        """Start listening; waits up to ``wait`` seconds for the first subscription and says
        whether it was made (when Redis is down the listener keeps trying by itself)."""
        self._task = asyncio.create_task(self._run(), name=self._name)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.ready.wait(), wait)
        return self.ready.is_set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        delay = 0.2
        outage = False
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(*self._channels)
                confirmed = 0
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    kind = message.get("type")
                    if kind == "subscribe":
                        confirmed += 1
                        if confirmed == len(self._channels):
                            self.ready.set()
                            delay = 0.2
                            if outage:
                                log.warning("%s: Redis answers again; subscribed", self._name)
                                outage = False
                            if self._on_ready is not None:
                                self._on_ready()
                    elif kind == "message":
                        try:
                            self._on_message(str(message["channel"]), str(message["data"]))
                        except Exception:  # one bad message must not end the listener
                            log.exception("%s: a message could not be handled", self._name)
            except REDIS_ERRORS as exc:
                self.ready.clear()
                if not outage:
                    log.warning("%s: Redis connection lost (%s); reconnecting", self._name, exc)
                    outage = True
                if self._on_lost is not None:
                    self._on_lost()
            finally:
                with contextlib.suppress(*REDIS_ERRORS):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
