"""App pushes across nodes: numbered once in Redis, delivered by every api node to its own sessions.

Two halves, joined by one Redis:

- :class:`PushPublisher` runs on every node that has a core (its local bus). It subscribes to
  the node's :class:`~charging_api.bus.memory.MemoryBus` (which stays in-process for the other
  in-process subscribers), queues each event that may reach someone and, from one task, sends
  them to Redis in batches: one Lua script call per batch (atomic: no other numbering
  interleaves) finds each event's recipients exactly as :class:`~charging_api.api.hub.UpdateHub`
  does (:mod:`charging_api.api.pushes` decides), INCRs each recipient's ``seq``, appends the
  frame to the recipient's history Stream (entry id ``<seq>-1``, ``MAXLEN ~ history_size``) and
  PUBLISHes, once for the batch, each event's shared frame parts with its ``(user, seq)`` list
  on :data:`keys.PUSHES`.
- :class:`ClusterHub` is the app door's hub on api nodes. It keeps the node's sessions per user
  in memory and everything shared in Redis: subscriptions (``watch:*`` sets), the session-push
  flag, ``seq``, the history, the epoch. It listens to :data:`keys.PUSHES` and splices each
  local recipient's seq into the parts (as the UpdateHub does), so a user with devices on two
  nodes sees one sequence, and ``resume`` works on any node.

Trade-offs, stated:

- **Never block the core.** ``PushPublisher.on_event`` only appends to a bounded deque; a full
  queue (Redis slow or gone) drops the event and counts it (``dropped``): the clients see a seq
  gap (``resume`` may still serve what was numbered) rather than the charge points waiting.
  Events are rendered and sent from the publisher's task, in order, up to ``depth`` batches in
  flight on one connection of its own (Redis runs one connection's commands in the order
  received, so the numbering keeps the queue's order); a second task reads the replies.
- **Pub/sub is at-most-once.** An api node whose pub/sub connection drops misses what was
  published meanwhile; its clients see a gap in ``seq`` and ``resume`` from the history, which
  lives in Redis, not on the node.
- **Redis restart without persistence** empties seqs, histories and subscriptions. The epoch key
  goes with them; the first publisher or hub that sees it missing makes a new one (``SET NX``),
  so a ``resume`` numbered before gets RESYNC_REQUIRED instead of someone else's frames. Hubs
  make their connected users streams again (their pushes are numbered again) and restore the
  subscriptions and session-push flags last set through them; what only a node that is gone
  knew (a disconnected admin's subscription) is lost.
- **Numbering cost**: Redis does an INCR and an XADD per recipient of each event (and a
  PEXPIRE per recipient per batch), a few µs per frame on one Redis thread: that, not the
  nodes, is the ceiling of the cluster's fan-out. ``python -m bench.hubs`` measures it against the in-process hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from redis import asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from charging_api.api import protocol, pushes
from charging_api.api.hub import Recipient
from charging_api.api.pushes import Audience
from charging_api.bus.memory import MemoryBus
from charging_api.cluster import keys, listen
from charging_api.domain.events import DomainEvent
from charging_api.errors import Forbidden
from charging_api.timefmt import utc_now_text

log = logging.getLogger(__name__)

#: The first part of every push frame (``protocol.push_parts``): sent once per batch.
HEAD = protocol.push_parts("", b"", "")[0]

#: Numbers a batch of events' pushes and publishes them in one message. ARGV: 1 epoch key,
#: 2 epoch candidate, 3 seq key prefix, 4 history key prefix, 5 session-push key prefix,
#: 6 watch:all key, 7 watch:cp key prefix, 8 history size, 9 channel, 10 the frames' head
#: (``protocol.push_parts``'s first part, the same for every push), 11 the history's time to
#: live in milliseconds (0: none; renewed once per user per batch); then 8 per event:
#: audience (pushes.Audience value), owner ('' none), charge point, kind, droppable '1'/'0',
#: event time ('' unknown), mid, tail. Returns ``{events that reached someone, frames
#: numbered}`` (two integers: a cheap reply to read). A user is a
#: recipient as owner only while their ``seq`` key exists (hubs create it at attach): the
#: in-process hub's "the owner has a stream". The message: cjson of
#: ``[head, [[droppable, kind, time, mid, tail, [user...], [seq...]], ...]]``, the events that
#: reached someone, in order.
PUBLISH_SCRIPT = """
redis.call('SET', ARGV[1], ARGV[2], 'NX')
local seqp, histp, sessp, cpp = ARGV[3], ARGV[4], ARGV[5], ARGV[7]
local history = tonumber(ARGV[8])
local head = ARGV[10]
local ttl = tonumber(ARGV[11])
local everything = redis.call('SMEMBERS', ARGV[6])
local watchers, expiring = {}, {}
local out, reached, frames = {}, 0, 0
for b = 11, #ARGV - 8, 8 do
  local reach, owner, cp = ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]
  local users, seen, n = {}, {}, 0
  if owner ~= '' and redis.call('EXISTS', seqp .. owner) == 1 then
    if reach ~= 's' or redis.call('EXISTS', sessp .. owner) == 1 then
      n = 1; users[1] = owner; seen[owner] = true
    end
  end
  if reach == 'w' then
    local on_cp = watchers[cp]
    if on_cp == nil then
      on_cp = redis.call('SMEMBERS', cpp .. cp); watchers[cp] = on_cp
    end
    for _, group in ipairs({everything, on_cp}) do
      for _, u in ipairs(group) do
        if not seen[u] then n = n + 1; users[n] = u; seen[u] = true end
      end
    end
  end
  if n > 0 then
    reached = reached + 1; frames = frames + n
    local mid, tail = ARGV[b + 7], ARGV[b + 8]
    local seqs = {}
    for i = 1, n do
      local u = users[i]
      local s = redis.call('INCR', seqp .. u)
      seqs[i] = s
      if history > 0 then
        redis.call('XADD', histp .. u, 'MAXLEN', '~', history, s .. '-1', 'f',
          head .. s .. mid .. s .. tail)
        if ttl > 0 and not expiring[u] then
          redis.call('PEXPIRE', histp .. u, ttl); expiring[u] = true
        end
      end
    end
    out[#out + 1] = {ARGV[b + 5], ARGV[b + 4], ARGV[b + 6], mid, tail, users, seqs}
  end
end
if #out > 0 then redis.call('PUBLISH', ARGV[9], cjson.encode({head, out})) end
return {reached, frames}
"""

#: Changes a user's subscriptions and answers them. ARGV: 1 user, 2 op ('add', 'del' or 'end':
#: 'end' drops every subscription and, if the stream ever subscribed, its history), 3 '1' for
#: every charge point, 4 watch:all key, 5 watching key, 6 privileged key, 7 watch:cp prefix,
#: 8 history key, 9... charge points. Returns {'1'} (watching all) or {'0', cps...}.
WATCH_SCRIPT = """
local u, op = ARGV[1], ARGV[2]
local wall, wing, priv, cpp = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
if op == 'add' then
  redis.call('SET', priv, '1')
  if ARGV[3] == '1' then redis.call('SADD', wall, u) end
  for i = 9, #ARGV do
    redis.call('SADD', cpp .. ARGV[i], u); redis.call('SADD', wing, ARGV[i])
  end
elseif op == 'del' and ARGV[3] ~= '1' then
  for i = 9, #ARGV do
    redis.call('SREM', cpp .. ARGV[i], u); redis.call('SREM', wing, ARGV[i])
  end
elseif op == 'del' or redis.call('EXISTS', priv) == 1 then
  redis.call('SREM', wall, u)
  for _, cp in ipairs(redis.call('SMEMBERS', wing)) do redis.call('SREM', cpp .. cp, u) end
  redis.call('DEL', wing)
  if op == 'end' then redis.call('DEL', priv, ARGV[8]) end
end
if redis.call('SISMEMBER', wall, u) == 1 then return {'1'} end
local answer = redis.call('SMEMBERS', wing)
table.insert(answer, 1, '0')
return answer
"""


def connect(redis_url: str) -> aioredis.Redis:
    """A client for ``redis_url`` (bytes replies; commands time out instead of hanging)."""
    return listen.connect(
        redis_url, decode_responses=False, health_check_interval=10, fail_fast=False
    )


class _Outage:
    """Logs a Redis outage once when it starts and once when it ends, not per failure."""

    def __init__(self, what: str) -> None:
        self._what = what
        self.down = False

    def failed(self, err: BaseException) -> None:
        if not self.down:
            self.down = True
            log.warning("%s: Redis does not answer (%s); retrying", self._what, err)

    def ok(self) -> None:
        if self.down:
            self.down = False
            log.info("%s: Redis answers again", self._what)


async def _adopt_epoch(redis: aioredis.Redis, seen: bytes | None) -> str:
    """The cluster's epoch: ``seen`` (what Redis held), or, when Redis lost it, a new one
    (``SET NX``: the first node to notice makes it, everyone reads the same)."""
    if seen is None:
        await redis.set(keys.EPOCH, secrets.token_hex(4), nx=True)
        seen = await redis.get(keys.EPOCH)
    return seen.decode() if seen is not None else ""


# ----------------------------------------------------------------------------- publisher


class PushPublisher:
    """Numbers and publishes the pushes of one node's domain events (see the module doc).

    Construct, :meth:`start`, then ``bus.subscribe(publisher.on_event)`` (or
    :meth:`follow`); :meth:`close` stops following and sends what is queued (bounded wait).
    ``published`` counts events numbered for at least one user, ``pushes`` the frames numbered,
    ``dropped`` the events lost (queue full, or their batch failed because Redis was gone).

    Pipelined: up to ``depth`` batches (script calls of up to ``batch_size`` events) are in
    flight at once on ONE connection of the publisher's own. Redis runs one connection's
    commands in the order it received them, so numbering stays in queue order (per user
    too), while the node's event loop no longer costs a full round trip per batch (under load
    a round trip is several loop iterations, each shared with every charge point's messages:
    ~50 ms per batch with one call at a time). The price: when the connection fails, every
    batch in flight counts as dropped (some may have been numbered: a ``resume`` serves them).

    Redis memory: a user's history (up to ~``history_size`` frames) lives ``history_ttl``
    seconds after their last push (then a ``resume`` from before gets RESYNC_REQUIRED); their
    ``seq`` key (a few bytes) stays, so numbering never restarts under the same epoch.
    """

    def __init__(
        self,
        redis_url: str,
        *,
        history_size: int = 200,
        history_ttl: float = 86_400.0,
        queue_size: int = 10_000,
        batch_size: int = 256,
        depth: int = 4,
        retry_delay: float = 0.5,
    ) -> None:
        if depth < 1:
            raise ValueError("depth must be at least 1")
        self._redis = connect(redis_url)
        self._history = str(history_size)
        self._history_ttl = str(int(history_ttl * 1000))  # PEXPIRE: milliseconds
        self._queue: deque[DomainEvent] = deque()
        self._queue_size = queue_size
        self._batch = batch_size
        self._depth = depth
        self._retry_delay = retry_delay
        #: Set by on_event, by each reply and by the reply reader's end: the sender re-checks.
        self._wake = asyncio.Event()
        #: Set when a batch was sent: the reply reader reads only while one is expected.
        self._sent = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._unfollow: Callable[[], None] | None = None
        self._outage = _Outage("push publisher")
        self._full_logged = False
        self.published = 0
        self.pushes = 0
        self.dropped = 0
        #: Script calls answered by Redis (one batch each; up to ``depth`` share a round trip).
        self.round_trips = 0
        #: The most batches that were in flight at once (``depth`` at most).
        self.most_in_flight = 0

    def follow(self, bus: MemoryBus) -> None:
        """Subscribe to ``bus`` (undone by :meth:`close`)."""
        self._unfollow = bus.subscribe(self.on_event)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="push publisher")

    async def close(self, drain_timeout: float = 5.0) -> None:
        """Stop following the bus, send what is queued (up to ``drain_timeout`` seconds; the
        rest counts as dropped), close the connection."""
        if self._unfollow is not None:
            self._unfollow()
            self._unfollow = None
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.flushed(), drain_timeout)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.dropped += len(self._queue)
        self._queue.clear()
        await self._redis.aclose()

    async def flushed(self) -> None:
        """Returns once every event queued so far went to Redis (or was counted dropped)."""
        while self._queue or not self._idle.is_set():
            await self._idle.wait()
            if self._queue:
                await asyncio.sleep(0)

    def on_event(self, event: DomainEvent) -> None:
        """Bus handler: queue the event if it may reach someone; never waits."""
        if pushes.audience(event) is Audience.NOBODY:
            return
        if len(self._queue) >= self._queue_size:
            self.dropped += 1
            if not self._full_logged:
                self._full_logged = True
                log.warning("push publisher queue full (%d): dropping pushes", self._queue_size)
            return
        self._queue.append(event)
        self._idle.clear()
        self._wake.set()

    async def _run(self) -> None:
        """Connect when there is something to send, pump batches over the connection until it
        fails, then (after ``retry_delay``) connect again. A failed connect drops one batch,
        as a failed call did: the queue's bound does the rest while Redis is gone."""
        while True:
            self._wake.clear()
            if not self._queue:
                self._idle.set()
                await self._wake.wait()
                continue
            # A connection of its own (the pool's settings): replies are read in send order.
            conn: Any = self._redis.connection_pool.make_connection()  # type: ignore[no-untyped-call]
            try:
                try:
                    await conn.connect()
                except (RedisError, OSError) as err:
                    self._drop_batch()
                    self._outage.failed(err)
                    await asyncio.sleep(self._retry_delay)
                    continue
                try:
                    await self._pump(conn)
                except (RedisError, OSError) as err:
                    self._outage.failed(err)
                    await asyncio.sleep(self._retry_delay)
                except Exception:  # a bug (an odd reply) must not end the publishing
                    log.exception("push publisher: the connection to Redis was given up")
                    await asyncio.sleep(self._retry_delay)
            finally:
                await conn.disconnect(nowait=True)

    def _drop_batch(self) -> None:
        size = min(self._batch, len(self._queue))
        for _ in range(size):
            self._queue.popleft()
        self.dropped += size

    async def _pump(self, conn: Any) -> None:
        """Send batches on ``conn``, up to ``depth`` unanswered, while a reader task counts
        the replies in order. Raises the connection's error; the batches it left unanswered
        count as dropped."""
        sent: deque[int] = deque()  # sizes of the batches sent and not answered yet, in order
        self._sent.clear()
        reader = asyncio.create_task(self._replies(conn, sent), name="push publisher replies")
        reader.add_done_callback(lambda _: self._wake.set())
        try:
            while True:
                self._wake.clear()
                if reader.done():
                    reader.result()  # its error, else it ended without one (cannot happen)
                    return
                if self._queue and len(sent) < self._depth:
                    size = min(self._batch, len(self._queue))
                    batch = [self._queue.popleft() for _ in range(size)]
                    try:
                        args = self._arguments(batch)
                    except Exception:  # a bug must not end the publishing of later events
                        self.dropped += size
                        log.exception("push publisher: a batch of %d events failed", size)
                        continue
                    if args is None:
                        continue
                    # Nothing in flight: the connection may have sat idle, so PING first
                    # when the health-check interval passed (as the pool does); never with
                    # replies pending, whose order the reader relies on. The reader learns
                    # of the batch only once it is sent (the PING's reply is not its).
                    try:
                        await conn.send_packed_command(
                            conn.pack_command("EVAL", PUBLISH_SCRIPT, 0, *args),
                            check_health=not sent,
                        )
                    except BaseException:
                        self.dropped += size
                        raise
                    sent.append(size)
                    self.most_in_flight = max(self.most_in_flight, len(sent))
                    self._sent.set()
                    continue
                if not self._queue and not sent:
                    self._idle.set()
                await self._wake.wait()
        finally:
            if not reader.done():
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, RedisError, OSError):
                    await reader
            self.dropped += sum(sent)
            sent.clear()

    async def _replies(self, conn: Any, sent: deque[int]) -> None:
        """Read the script calls' replies in the order they were sent (one connection: Redis
        answers in order), count them, wake the sender (room for one more batch)."""
        while True:
            while not sent:
                self._sent.clear()
                await self._sent.wait()
            try:
                reached, frames = await conn.read_response()
            except ResponseError:  # this batch only (a bug); the connection is fine
                self.dropped += sent.popleft()
                log.exception("push publisher: Redis refused a batch")
            else:
                sent.popleft()
                self._outage.ok()
                self._full_logged = False
                self.round_trips += 1
                self.published += int(reached)
                self.pushes += int(frames)
            self._wake.set()

    def _arguments(self, batch: list[DomainEvent]) -> list[str | bytes] | None:
        """The script's arguments for ``batch`` (None: none of its events is pushed)."""
        now = utc_now_text()
        args: list[str | bytes] = [
            keys.EPOCH,
            secrets.token_hex(4),  # fresh: a Redis that lost the epoch gets a new one
            keys.seq(""),
            keys.history(""),
            keys.session_pushes(""),
            keys.WATCH_ALL,
            keys.watch_cp(""),
            self._history,
            keys.PUSHES,
            HEAD,
            self._history_ttl,
        ]
        for event in batch:
            rendered = pushes.render(event)
            if rendered is None:
                continue
            _, mid, tail = protocol.push_parts(rendered.kind, rendered.data_json, now)
            stamp = pushes.stamped_at(event)
            args += (
                pushes.audience(event).value,
                pushes.owner_of(event) or "",
                event.charge_point_id,
                rendered.kind,
                "1" if rendered.droppable else "0",
                "" if stamp is None else repr(stamp),
                mid,
                tail,
            )
        return args if len(args) > 11 else None


# ------------------------------------------------------------------------------------ hub


class ClusterHub:
    """The app door's hub on an api node (same duties as :class:`UpdateHub`, see
    :class:`~charging_api.api.hub.Hub`), with the shared state in Redis.

    Local: the node's sessions per user, and which of them hold a user-role token. In Redis:
    ``seq``, history, subscriptions, the session-push flag, the epoch, and a lease per
    user-role connection (``keys.non_admins``) so that a subscription made on one node is
    refused while the same user has a user-role connection on another (the lease expires
    ``lease`` seconds after a dead node stopped renewing it).

    ``session_count_of`` counts this node's connections only (the per-user connection limit is
    per node). Construct, ``await start()`` before serving, ``await close()`` after the door
    closed its connections.
    """

    def __init__(self, redis_url: str, node_id: str, *, lease: float = 30.0) -> None:
        self._redis = connect(redis_url)
        self._watch = self._redis.register_script(WATCH_SCRIPT)
        self._node = node_id
        self._lease = lease
        self._local: dict[str, set[Recipient]] = {}
        self._non_admins: dict[str, dict[Recipient, str]] = {}
        #: Subscriptions and session-push flags of local users, as last set through this
        #: node: restored when Redis lost them.
        self._known_watch: dict[str, tuple[bool, list[str]]] = {}
        self._known_session_pushes: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._listener: asyncio.Task[None] | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self._outage = _Outage("cluster hub")
        self.epoch = ""
        self.deliveries = 0
        self.pushes_by_type: dict[str, int] = {}
        self.on_delivery_lag: Callable[[float], None] | None = None

    # ------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Read (or make) the epoch, listen to the pushes channel; returns once listening."""
        self.epoch = await _adopt_epoch(self._redis, await self._redis.get(keys.EPOCH))
        self._listener = asyncio.create_task(self._listen(), name="cluster hub pushes")
        self._keeper = asyncio.create_task(self._keep(), name="cluster hub leases")
        await self._listening.wait()

    async def close(self) -> None:
        for task in (self._listener, self._keeper, *self._tasks):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._listener = self._keeper = None
        await self._redis.aclose()

    # ------------------------------------------------------------- sessions

    async def attach(self, user_id: str, session: Recipient) -> None:
        """Make the user a stream (their events get numbered) and deliver to ``session``."""
        self._local.setdefault(user_id, set()).add(session)
        await self._redis.set(keys.seq(user_id), 0, nx=True)

    def detach(self, user_id: str, session: Recipient) -> None:
        """The user's seq and history stay in Redis (a reconnect anywhere can resume)."""
        sessions = self._local.get(user_id)
        if sessions is None:
            return
        sessions.discard(session)
        if not sessions:
            del self._local[user_id]
            self._known_watch.pop(user_id, None)
            self._known_session_pushes.discard(user_id)
        leases = self._non_admins.get(user_id)
        if leases is not None and session in leases:
            member = leases.pop(session)
            if not leases:
                del self._non_admins[user_id]
            self._spawn(self._redis.zrem(keys.non_admins(user_id), member))

    async def set_role(self, user_id: str, session: Recipient, *, admin: bool) -> None:
        """As :meth:`UpdateHub.set_role`, across nodes: a user-role connection anywhere ends
        the stream's subscriptions and a history that may hold other users' pushes."""
        if session not in self._local.get(user_id, ()):
            return
        leases = self._non_admins.setdefault(user_id, {})
        if admin:
            member = leases.pop(session, None)
            if not leases:
                del self._non_admins[user_id]
            if member is not None:
                await self._redis.zrem(keys.non_admins(user_id), member)
            return
        member = leases.setdefault(session, f"{self._node}:{secrets.token_hex(6)}")
        await self._redis.zadd(keys.non_admins(user_id), {member: time.time() + self._lease})
        await self._watch_call(user_id, "end", True, ())

    def session_count(self) -> int:
        return sum(len(s) for s in self._local.values())

    def session_count_of(self, user_id: str) -> int:
        return len(self._local.get(user_id, ()))

    def user_count(self) -> int:
        return len(self._local)

    # -------------------------------------------------------- subscriptions

    async def subscribe(self, user_id: str, charge_points: Iterable[str] | None) -> list[str] | str:
        if self._non_admins.get(user_id) or await self._redis.zcount(
            keys.non_admins(user_id), time.time(), "+inf"
        ):
            raise Forbidden(
                "Another connection of this user is not admin; subscriptions need every "
                "connection of the user to hold an admin token"
            )
        return await self._watch_call(user_id, "add", charge_points is None, charge_points or ())

    async def unsubscribe(
        self, user_id: str, charge_points: Iterable[str] | None
    ) -> list[str] | str:
        return await self._watch_call(user_id, "del", charge_points is None, charge_points or ())

    async def _watch_call(
        self, user_id: str, op: str, every: bool, charge_points: Iterable[str]
    ) -> list[str] | str:
        answer = await self._watch(
            args=(
                user_id,
                op,
                "1" if every else "0",
                keys.WATCH_ALL,
                keys.watching(user_id),
                keys.privileged(user_id),
                keys.watch_cp(""),
                keys.history(user_id),
                *charge_points,
            )
        )
        watching = sorted(cp.decode() for cp in answer[1:])
        if user_id in self._local:  # what to restore if Redis loses it (see _check_epoch)
            self._known_watch[user_id] = (answer[0] == b"1", watching)
        return "*" if answer[0] == b"1" else watching

    async def set_session_pushes(self, user_id: str, on: bool) -> None:
        if on:
            await self._redis.set(keys.session_pushes(user_id), 1)
            if user_id in self._local:
                self._known_session_pushes.add(user_id)
        else:
            await self._redis.delete(keys.session_pushes(user_id))
            self._known_session_pushes.discard(user_id)

    # ------------------------------------------------------- seq and resume

    async def current_seq(self, user_id: str) -> int:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.get(keys.EPOCH)
            pipe.get(keys.seq(user_id))
            epoch, seq = await pipe.execute()
        await self._check_epoch(epoch)
        return int(seq) if seq is not None else 0

    async def missed_since(self, user_id: str, last_seq: int) -> list[bytes] | None:
        """Frames after ``last_seq`` from the user's history Stream, or None when they cannot
        all be served (older than the history, ahead of the seq, or the epoch changed: Redis
        lost what it held)."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.get(keys.EPOCH)
            pipe.get(keys.seq(user_id))
            pipe.xrange(keys.history(user_id), f"{last_seq + 1}-1", "+")
            epoch, seq_text, entries = await pipe.execute()
        if await self._check_epoch(epoch):
            return None
        if seq_text is None:
            return None if last_seq > 0 else []
        seq = int(seq_text)
        if last_seq > seq:
            return None
        if last_seq == seq:
            return []
        if not entries or int(entries[0][0].split(b"-", 1)[0]) != last_seq + 1:
            return None
        if len(entries) != seq - last_seq:
            return None
        return [fields[b"f"] for _, fields in entries]

    async def _check_epoch(self, seen: bytes | None) -> bool:
        """Adopt the epoch Redis holds; True when it differs from the one this hub gave out."""
        if seen is not None and seen.decode() == self.epoch:
            return False
        self.epoch = await _adopt_epoch(self._redis, seen)
        if self._local:  # a new epoch: Redis lost what it held (a publisher may have noticed first)
            await self._restore()
        return True

    async def _restore(self) -> None:
        """Redis lost what it held: make this node's connected users streams again (their
        pushes are numbered again), with the subscriptions and session-push flags last set
        through this node. Their clients learn of the gap at their next ``resume``
        (RESYNC_REQUIRED: the epoch changed)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for user_id in self._local:
                pipe.set(keys.seq(user_id), 0, nx=True)
            for user_id in self._known_session_pushes:
                pipe.set(keys.session_pushes(user_id), 1)
            await pipe.execute()
        for user_id, (every, watching) in list(self._known_watch.items()):
            if every or watching:
                await self._watch_call(user_id, "add", every, watching)

    # ------------------------------------------------------------ deliveries

    async def _listen(self) -> None:
        """Deliver each published push to this node's sessions of its recipients; on Redis
        loss, subscribe again (what was published meanwhile is a gap ``resume`` fills)."""
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(keys.PUSHES)
                self._listening.set()
                self._outage.ok()
                while True:  # a bounded wait: the client's socket timeout must not fire
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None:
                        try:
                            self._deliver(message["data"])
                        except Exception:  # one bad message must not end the deliveries
                            log.exception("cluster hub: a push could not be delivered")
            except (RedisError, OSError) as err:
                self._outage.failed(err)
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _deliver(self, payload: bytes) -> None:
        """One published batch: each push to this node's sessions of its recipients."""
        head_text, batch = orjson.loads(payload)
        local = self._local
        head = head_text.encode()
        for droppable_flag, kind, stamp, mid_text, tail_text, users, seqs in batch:
            before = self.deliveries
            droppable = droppable_flag == "1"
            mid = tail = b""  # encoded for the first local recipient only
            for user_id, seq in zip(users, seqs, strict=True):
                sessions = local.get(user_id)
                if not sessions:
                    continue
                if not mid:
                    mid, tail = mid_text.encode(), tail_text.encode()
                number = b"%d" % seq
                frame = head + number + mid + number + tail
                for session in tuple(sessions):
                    session.deliver(frame, droppable)
                    self.deliveries += 1
            delivered = self.deliveries - before
            if delivered:
                self.pushes_by_type[kind] = self.pushes_by_type.get(kind, 0) + delivered
                if self.on_delivery_lag is not None and stamp:
                    self.on_delivery_lag(max(0.0, time.time() - float(stamp)))

    # ---------------------------------------------------------------- leases

    async def _keep(self) -> None:
        """Every ``lease / 3`` seconds (2 at most): renew this node's user-role leases, and
        notice an epoch Redis lost (so the connected users' pushes are numbered again)."""
        while True:
            await asyncio.sleep(min(self._lease / 3, 2.0))
            try:
                await self._check_epoch(await self._redis.get(keys.EPOCH))
                if self._non_admins:
                    until = time.time() + self._lease
                    async with self._redis.pipeline(transaction=False) as pipe:
                        for user_id, leases in self._non_admins.items():
                            key = keys.non_admins(user_id)
                            pipe.zremrangebyscore(key, "-inf", time.time())
                            pipe.zadd(key, dict.fromkeys(leases.values(), until))
                        await pipe.execute()
            except (RedisError, OSError) as err:
                self._outage.failed(err)

    def _spawn(self, coro: Any) -> None:
        async def quietly() -> None:
            with contextlib.suppress(RedisError, OSError):
                await coro

        task = asyncio.ensure_future(quietly())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
