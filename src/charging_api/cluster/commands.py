"""Commands from api nodes to the gateway that owns a charge point, and their answers.

Transport (docs/scaling.md, "Routing"):

- a command is one entry of the owner's Stream ``cmd:{node}`` (``XADD ... MAXLEN ~``):
  ``id``, ``from`` (the asking node), ``kind`` (``call``, ``charging.start`` ...), ``body``
  (JSON) and ``deadline`` (wall-clock seconds, ``time.time()``);
- the gateway's :class:`CommandServer` reads its Stream (``XREAD BLOCK``), drops every command
  already past its deadline (the asker gave up: it is never executed late), and runs each
  other one in a task of its own, bounded by the deadline, through the handler registered
  for its ``kind``;
- the answer is one ``PUBLISH reply:{asker}``: ``{id, ok, result}`` or ``{id, ok: false,
  error: {code, message, details}}``;
- the asking :class:`CommandClient` keeps a future per command id and waits for it until the
  deadline plus a short grace. The outcomes the asker can see:

  * the owner's answer (a result, or the same error subclass the gateway raised);
  * ``CHARGE_POINT_OFFLINE`` when the charge point has no owner, when ownership moves to
    another node (or is released) while the command waits, and when no answer came by the
    deadline (the owner died, or its reply was lost): never a hang;
  * ``SERVICE_UNAVAILABLE`` (retryable) when Redis refuses the command (nothing was sent),
    and when the reply channel is lost while a command waits (then the outcome is unknown:
    ``details.outcome`` says so; a retried start with the same message id is still
    idempotent, the key lives on the owner).

Trade-off: pub/sub replies are at-most-once and need no clean-up, at the price that a reply
published while the asker's subscription is down is lost (the asker reports it, see above).
A Stream per node, not one shared Stream: a gateway reads only its own commands, and no
consumer group is needed because one node reads each Stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis import asyncio as aioredis

from charging_api.cluster import keys
from charging_api.cluster.listen import REDIS_ERRORS, ChannelListener
from charging_api.cluster.wire import error_from_wire, error_to_wire
from charging_api.errors import (
    ChargePointOffline,
    ChargePointTimeout,
    ChargingApiError,
    InternalError,
    ServiceUnavailable,
)

log = logging.getLogger(__name__)

#: A gateway's handler of one command kind: the command's body in, a JSON-ready result out;
#: a ChargingApiError it raises goes back to the asker as it is.
Handler = Callable[[dict[str, Any]], Awaitable[Any]]

#: Entries kept per command Stream (approximate trim): commands are consumed at once, the
#: Stream is only the hand-over.
STREAM_LENGTH = 1000


def offline(charge_point_id: str, why: str) -> ChargePointOffline:
    return ChargePointOffline(
        f"Charge point {charge_point_id} {why}", {"chargePointId": charge_point_id}
    )


class CommandServer:
    """Executes the commands sent to this gateway node (see the module docstring)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        node_id: str,
        handlers: Mapping[str, Handler],
        *,
        block_ms: int = 1000,
    ) -> None:
        self._redis = redis
        self.node_id = node_id
        self._stream = keys.commands(node_id)
        self._handlers = dict(handlers)
        self._block_ms = block_ms
        self._reader: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        #: Commands executed, and dropped because they arrived past their deadline.
        self.executed = 0
        self.expired = 0

    def add_handler(self, kind: str, handler: Handler) -> None:
        self._handlers[kind] = handler

    async def start(self) -> None:
        """Read from the Stream's current end (commands older than this process were meant
        for a previous one: their askers have given up or will at their deadline)."""
        last = "0-0"
        with contextlib.suppress(*REDIS_ERRORS):
            newest = await self._redis.xrevrange(self._stream, count=1)
            if newest:
                last = str(newest[0][0])
        self._reader = asyncio.create_task(self._read(last), name=f"commands {self.node_id}")

    async def close(self) -> None:
        """Stop reading; commands under way are cancelled (their askers get
        CHARGE_POINT_OFFLINE: the charge points reconnect to another gateway)."""
        tasks = [t for t in (self._reader, *self._running) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._reader = None

    async def _read(self, last: str) -> None:
        delay = 0.2
        outage = False
        while True:
            try:
                batches = await self._redis.xread(
                    {self._stream: last}, count=100, block=self._block_ms
                )
            except REDIS_ERRORS as exc:
                if not outage:
                    log.warning("commands: Redis does not answer (%s); retrying", exc)
                    outage = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if outage:
                log.warning("commands: Redis answers again")
                outage, delay = False, 0.2
            for _stream, entries in batches or ():
                for entry_id, fields in entries:
                    last = str(entry_id)
                    self._accept(fields)

    def _accept(self, fields: Mapping[str, str]) -> None:
        try:
            command_id = fields["id"]
            asker = fields["from"]
            kind = fields["kind"]
            deadline = float(fields["deadline"])
            body = orjson.loads(fields["body"])
        except (KeyError, ValueError, orjson.JSONDecodeError):
            log.warning("commands: unreadable command %r dropped", dict(fields))
            return
        if deadline <= time.time():
            self.expired += 1
            log.info("commands: %s %s arrived past its deadline; not executed", kind, command_id)
            return
        task = asyncio.create_task(self._execute(command_id, asker, kind, deadline, body))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _execute(
        self, command_id: str, asker: str, kind: str, deadline: float, body: dict[str, Any]
    ) -> None:
        reply: dict[str, Any] = {"id": command_id, "ok": True}
        try:
            handler = self._handlers.get(kind)
            if handler is None:
                raise InternalError(f"This gateway does not handle {kind[:64]} commands")
            async with asyncio.timeout(deadline - time.time()):
                reply["result"] = await handler(body)
            self.executed += 1
        except ChargingApiError as exc:
            reply = {"id": command_id, "ok": False, "error": error_to_wire(exc)}
        except asyncio.CancelledError:
            # This gateway is closing: the asker hears it now rather than at its deadline.
            gone = offline(str(body.get("chargePointId")), "is on a gateway that is shutting down")
            reply = {"id": command_id, "ok": False, "error": error_to_wire(gone)}
            with contextlib.suppress(*REDIS_ERRORS, TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._redis.publish(keys.replies(asker), orjson.dumps(reply))
            raise
        except TimeoutError:
            timeout = ChargePointTimeout(
                f"The command did not finish before its deadline ({kind})",
                {"chargePointId": body.get("chargePointId")},
            )
            reply = {"id": command_id, "ok": False, "error": error_to_wire(timeout)}
        except Exception:
            log.exception("commands: %s %s failed", kind, command_id)
            internal = InternalError("The gateway failed to carry out the command")
            reply = {"id": command_id, "ok": False, "error": error_to_wire(internal)}
        try:
            await self._redis.publish(keys.replies(asker), orjson.dumps(reply))
        except REDIS_ERRORS as exc:
            log.warning("commands: the answer to %s %s was lost (%s)", kind, command_id, exc)


@dataclass(slots=True)
class _Waiting:
    charge_point_id: str
    owner: str
    future: asyncio.Future[Any] = field(repr=False)


class CommandClient:
    """Sends commands to owner gateways and waits for their answers (an api node's side)."""

    def __init__(self, redis: aioredis.Redis, node_id: str, *, reply_grace: float = 1.0) -> None:
        self._redis = redis
        self.node_id = node_id
        self._reply_grace = reply_grace
        self._waiting: dict[str, _Waiting] = {}
        self._replies = ChannelListener(
            redis,
            [keys.replies(node_id)],
            self._on_reply,
            on_lost=self._replies_lost,
            name=f"replies {node_id}",
        )

    async def start(self) -> None:
        await self._replies.start()

    @property
    def ready(self) -> bool:
        """Whether answers can reach this node now (its reply channel is subscribed)."""
        return self._replies.ready.is_set()

    async def close(self) -> None:
        await self._replies.close()
        for waiting in list(self._waiting.values()):
            if not waiting.future.done():
                waiting.future.set_exception(offline(waiting.charge_point_id, "is unreachable"))

    async def owner_of(self, charge_point_id: str) -> str | None:
        """The node that owns the charge point now (one GET), or None."""
        try:
            owner = await self._redis.get(keys.owner(charge_point_id))
        except REDIS_ERRORS as exc:
            raise _unavailable(exc) from None
        return None if owner is None else str(owner)

    async def send(
        self,
        charge_point_id: str,
        kind: str,
        body: dict[str, Any],
        budget: float,
        owner: str | None = None,
    ) -> Any:
        """Have the owner of ``charge_point_id`` (``owner`` if the caller just read it) carry
        out ``kind`` with ``body`` within ``budget`` seconds; returns its result."""
        if owner is None:
            owner = await self.owner_of(charge_point_id)
            if owner is None:
                raise offline(charge_point_id, "is not connected")
        if not self._replies.ready.is_set():
            raise ServiceUnavailable("Redis does not answer (the reply channel is down)")
        command_id = uuid.uuid4().hex
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[command_id] = _Waiting(charge_point_id, owner, future)
        deadline = time.time() + budget
        try:
            try:
                await self._redis.xadd(
                    keys.commands(owner),
                    {
                        "id": command_id,
                        "from": self.node_id,
                        "kind": kind,
                        "deadline": repr(deadline),
                        "body": orjson.dumps({"chargePointId": charge_point_id, **body}),
                    },
                    maxlen=STREAM_LENGTH,
                    approximate=True,
                )
            except REDIS_ERRORS as exc:
                raise _unavailable(exc) from None
            try:
                async with asyncio.timeout(max(deadline - time.time(), 0.0) + self._reply_grace):
                    return await asyncio.shield(future)
            except TimeoutError:
                raise offline(
                    charge_point_id, f"did not answer through its gateway {owner} in time"
                ) from None
        finally:
            self._waiting.pop(command_id, None)
            if not future.done():
                future.cancel()

    def owner_changed(self, charge_point_id: str, owner: str | None) -> None:
        """Ownership of the charge point moved (or ended): every command waiting on its
        previous owner fails now with CHARGE_POINT_OFFLINE instead of at its deadline."""
        for waiting in list(self._waiting.values()):
            if (
                waiting.charge_point_id == charge_point_id
                and waiting.owner != owner
                and not waiting.future.done()
            ):
                waiting.future.set_exception(
                    offline(charge_point_id, "moved to another gateway or disconnected")
                )

    def waiting_count(self) -> int:
        return len(self._waiting)

    def _on_reply(self, _channel: str, data: str) -> None:
        reply = orjson.loads(data)
        waiting = self._waiting.get(str(reply.get("id")))
        if waiting is None or waiting.future.done():
            return  # the asker gave up already
        if reply.get("ok"):
            waiting.future.set_result(reply.get("result"))
        else:
            waiting.future.set_exception(error_from_wire(reply.get("error") or {}))

    def _replies_lost(self) -> None:
        for waiting in list(self._waiting.values()):
            if not waiting.future.done():
                waiting.future.set_exception(
                    ServiceUnavailable(
                        "Redis connection lost while waiting for the charge point's answer; "
                        "the command may or may not have been carried out",
                        {"outcome": "unknown", "chargePointId": waiting.charge_point_id},
                    )
                )


def _unavailable(exc: BaseException) -> ServiceUnavailable:
    return ServiceUnavailable(f"Redis does not answer ({type(exc).__name__}); retry")
