"""An async Python client for the app protocol: what the seed's JavaScript ``ChargingClient``
does, plus what it promises and does not do (automatic reconnection).

- request/response matched by ``id``; an ``error`` reply raises :class:`RequestFailed`;
- one supervisor task owns the socket: when it drops, it reconnects with capped exponential
  backoff and full jitter, re-authenticates (the token may be a callable, so a fresh one can be
  fetched), and sends ``resume`` with the last ``seq`` seen, so missed pushes arrive in order;
  if the server answers ``RESYNC_REQUIRED`` (or the server says it is another instance than
  before: a different ``epoch`` in ``auth_response``), :meth:`updates` yields a
  ``resync_required`` item and the app should call :meth:`get_state`;
- pushes are de-duplicated by ``seq`` and handed over in ``seq`` order: pushes that arrive
  while a ``resume`` is under way (live ones can overtake the replay) are held until its
  answer, then sorted;
- ``start_charging`` keeps its message (id, timestamp, data) across a reconnect and retries
  once, which the server answers idempotently (no second transaction).

Needs only ``websockets`` and the standard library (and :mod:`charging_api.timefmt`, which is
standard library only): it imports nothing of the server, so an app can install or vendor it
without the server's dependencies. ``tests/e2e/test_client_alone.py`` proves it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import json
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from websockets import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from charging_api.timefmt import utc_now_text

__all__ = ["ChargingClient", "ConnectionLost", "RequestFailed", "TokenSource"]

log = logging.getLogger(__name__)

TokenSource = str | Callable[[], str | Awaitable[str]]


class RequestFailed(Exception):
    """The server answered with an error (``error`` message or ``success: false``)."""

    def __init__(self, reply: dict[str, Any]) -> None:
        error = reply.get("error") or {}
        super().__init__(f"{error.get('code', 'ERROR')}: {error.get('message', '')}")
        self.code: str = error.get("code", "ERROR")
        self.reply = reply


class ConnectionLost(Exception):
    """The socket closed before the reply came; the request may or may not have run."""


class ChargingClient:
    def __init__(
        self,
        url: str,
        token: TokenSource,
        *,
        reconnect: bool = True,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        request_timeout: float = 30.0,
        connect_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.url = url
        self._token = token
        self._reconnect = reconnect
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self.request_timeout = request_timeout
        self._connect_kwargs = connect_kwargs or {}
        self._ids = itertools.count(1)
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._updates: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._ws: ClientConnection | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._closing = False
        self.connected = asyncio.Event()
        self.last_seq = 0
        self.session: dict[str, Any] = {}
        self.reconnects = 0
        self._had_session = False
        self._holding: list[dict[str, Any]] | None = None  # pushes held during a resume

    # ---------------------------------------------------------------- lifecycle

    async def connect(self) -> dict[str, Any]:
        """Open, authenticate, and keep the connection alive in the background."""
        ready: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._supervisor = asyncio.create_task(self._supervise(ready))
        return await ready

    async def close(self) -> None:
        self._closing = True
        if self._ws is not None:
            await self._ws.close()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        self._fail_pending(ConnectionLost("client closed"))

    async def __aenter__(self) -> ChargingClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _supervise(self, ready: asyncio.Future[dict[str, Any]]) -> None:
        attempt = 0
        while not self._closing:
            try:
                async with connect(self.url, **self._connect_kwargs) as ws:
                    self._ws = ws
                    reader = asyncio.create_task(self._read(ws))
                    try:
                        session = await self._open_session()
                        attempt = 0
                        self.connected.set()
                        if not ready.done():
                            ready.set_result(session)
                        await reader
                    finally:
                        reader.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await reader
            except (OSError, ConnectionClosed, ConnectionLost, TimeoutError) as exc:
                log.info("connection to %s lost: %s", self.url, exc)
            except RequestFailed as exc:
                if not ready.done():
                    ready.set_exception(exc)
                    return
                log.warning("re-authentication failed: %s", exc)
            finally:
                self._ws = None
                self.connected.clear()
                self._fail_pending(ConnectionLost("connection lost"))
            if self._closing or not self._reconnect:
                if not ready.done():
                    ready.set_exception(ConnectionLost("could not connect"))
                return
            attempt += 1
            self.reconnects += 1
            ceiling = min(self._backoff_max, self._backoff_initial * 2 ** min(attempt, 16))
            await asyncio.sleep(random.uniform(0, ceiling))  # full jitter

    async def _open_session(self) -> dict[str, Any]:
        token = self._token() if callable(self._token) else self._token
        if inspect.isawaitable(token):
            token = await token
        previous = self.session
        # Pushes may follow the auth reply at once (and overtake a resume's replay): hold them.
        self._holding = []
        try:
            reply = await self._request_now("auth_request", {"token": token})
            self.session = reply["data"]
            current = int(self.session.get("seq", 0))
            if not self._had_session:
                self.last_seq = current  # a first connection starts from now
            elif previous.get("epoch") != self.session.get("epoch"):
                self._resync(current)  # another server instance: its seq is another stream
            else:
                try:
                    await self._request_now(
                        "resume", {"lastSeq": self.last_seq, "epoch": previous.get("epoch")}
                    )
                except RequestFailed as exc:
                    if exc.code != "RESYNC_REQUIRED":
                        raise
                    details = exc.reply.get("error", {}).get("details", {})
                    self._resync(int(details.get("currentSeq", current)))
            self._had_session = True
        except BaseException:
            # Whatever was held will be replayed by the next resume: handing it over now would
            # move last_seq past pushes that never arrived.
            self._holding = None
            raise
        held, self._holding = self._holding, None
        for push in sorted(held, key=lambda p: p["seq"]):
            self._hand_over(push)
        return self.session

    def _resync(self, current_seq: int) -> None:
        """Missed pushes are gone: tell the app to fetch the state; continue after ``current_seq``."""
        self.last_seq = current_seq
        self._updates.put_nowait({"type": "resync_required", "data": {"currentSeq": current_seq}})

    async def _read(self, ws: ClientConnection) -> None:
        async for raw in ws:
            message = json.loads(raw)
            future = self._pending.pop(str(message.get("id")), None)
            if future is not None:
                if not future.done():
                    future.set_result(message)
                continue
            seq = message.get("seq")
            if isinstance(seq, int) and seq > 0 and self._holding is not None:
                self._holding.append(message)
                continue
            self._hand_over(message)

    def _hand_over(self, message: dict[str, Any]) -> None:
        """Pass a push to the app once: a ``seq`` at or below the last one seen is a repeat."""
        seq = message.get("seq")
        if isinstance(seq, int) and seq > 0:
            if seq <= self.last_seq:
                return  # already seen (a resume overlapping live pushes)
            self.last_seq = seq
        self._updates.put_nowait(message)

    def _fail_pending(self, exc: Exception) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(exc)

    # ------------------------------------------------------------------ requests

    async def _request_now(
        self,
        kind: str,
        data: dict[str, Any] | None,
        message_id: str | None = None,
        timestamp: str | None = None,
    ) -> dict[str, Any]:
        ws = self._ws
        if ws is None:
            raise ConnectionLost("not connected")
        mid = message_id or f"py-{next(self._ids)}"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[mid] = future
        envelope: dict[str, Any] = {
            "id": mid,
            "type": kind,
            "timestamp": timestamp or utc_now_text(),
        }
        if data is not None:
            envelope["data"] = data
        try:
            await ws.send(json.dumps(envelope, separators=(",", ":"), ensure_ascii=False))
            reply = await asyncio.wait_for(future, self.request_timeout)
        except ConnectionClosed:
            raise ConnectionLost("connection lost") from None
        finally:
            self._pending.pop(mid, None)
        if reply.get("error") or (
            isinstance(reply.get("data"), dict) and reply["data"].get("success") is False
        ):
            raise RequestFailed(reply)
        return reply

    async def request(
        self,
        kind: str,
        data: dict[str, Any] | None = None,
        *,
        retries: int = 0,
        message_id: str | None = None,
    ) -> dict[str, Any]:
        """Send one request and return the reply; with ``retries``, the same message (same id,
        timestamp and data) is sent again after a reconnect: the server answers a start sent
        again with the first attempt's outcome."""
        mid = message_id or f"py-{next(self._ids)}"
        stamp = utc_now_text()
        for attempt in itertools.count():
            if not self.connected.is_set():
                await asyncio.wait_for(self.connected.wait(), self.request_timeout)
            try:
                return await self._request_now(kind, data, mid, stamp)
            except ConnectionLost:
                if attempt >= retries or not self._reconnect:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def start_charging(
        self, charge_point_id: str, connector_id: int, id_tag: str | None = None
    ) -> dict[str, Any]:
        data: dict[str, Any] = {"chargePointId": charge_point_id, "connectorId": connector_id}
        if id_tag is not None:
            data["idTag"] = id_tag
        return _data(await self.request("start_charging_request", data, retries=1))

    async def stop_charging(self, charge_point_id: str, transaction_id: int) -> dict[str, Any]:
        data = {"chargePointId": charge_point_id, "transactionId": transaction_id}
        return _data(await self.request("stop_charging_request", data))

    async def get_state(self) -> dict[str, Any]:
        return _data(await self.request("get_state"))

    async def updates(self) -> AsyncIterator[dict[str, Any]]:
        """Pushes in order, without duplicates, across reconnects."""
        while True:
            yield await self._updates.get()

    async def next_update(self, kind: str | None = None, timeout: float = 30.0) -> dict[str, Any]:
        """The next push (of ``kind``, skipping others), bounded by ``timeout``."""
        async with asyncio.timeout(timeout):
            while True:
                update = await self._updates.get()
                if kind is None or update.get("type") == kind:
                    return update


def _data(reply: dict[str, Any]) -> dict[str, Any]:
    data = reply.get("data")
    return data if isinstance(data, dict) else {}
