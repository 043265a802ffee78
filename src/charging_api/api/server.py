"""The app door's I/O: WebSocket connections at ``/ws``, plain HTTP routes beside them.

One :class:`ClientSession` per connection: its auth state, a token bucket, and a bounded send
queue drained by a writer task that exists only while there is something to send. A client that
stops reading fills its own queue and nothing else: meter updates are dropped oldest-first (the
client sees a gap in ``seq`` and may ``resume``); if the queue is still full of status and
transaction updates, the connection is closed with 1013. One sweeper task enforces the
authentication deadline, the idle timeout and token expiry for all sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK
from websockets.http11 import Request, Response

from charging_api.api import messages as m
from charging_api.api import protocol
from charging_api.api.auth import TokenVerifier
from charging_api.api.hub import UpdateHub
from charging_api.domain.charging import ChargingService
from charging_api.domain.models import Principal
from charging_api.errors import (
    AuthenticationFailed,
    ChargingApiError,
    Forbidden,
    InternalError,
    NotAuthenticated,
    RateLimited,
    ResyncRequired,
    TokenExpired,
    TooManyPending,
)
from charging_api.timefmt import format_utc
from charging_api.wsfast import send_text_nowait

log = logging.getLogger(__name__)

#: (status, headers, body) for a plain HTTP route; None means "not mine".
HttpReply = tuple[int, list[tuple[str, str]], bytes]
HttpHandler = Callable[[str, str, Mapping[str, str]], Awaitable[HttpReply | None]]

CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TRY_AGAIN_LATER = 1013
#: Seconds a close handshake may take before the socket is dropped.
CLOSE_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class AppLimits:
    """The app door's knobs, filled from Settings by the composition root."""

    max_connections: int = 1000
    max_connections_per_user: int = 10
    max_frame_size: int = 65536
    auth_timeout: float = 10.0
    idle_timeout: float = 300.0
    session_timeout: float = 3600.0
    heartbeat_interval: float = 30.0
    send_queue_size: int = 256
    max_pending_requests: int = 16
    rate_per_second: float = 20.0
    rate_burst: float = 50.0
    expiry_warning: float = 60.0
    expiry_grace: float = 30.0
    allowed_origins: tuple[str, ...] = ()
    open_timeout: float = 10.0


class ClientSession:
    """One app connection."""

    __slots__ = (
        "_app",
        "_queue",
        "_replayed",
        "_writer",
        "allowance",
        "authenticated_at",
        "close_task",
        "closing",
        "connected_at",
        "ends_with_token",
        "expires_at",
        "last_refill",
        "last_seen",
        "pending",
        "principal",
        "session_id",
        "warned",
        "ws",
    )

    def __init__(self, app: AppServer, ws: ServerConnection) -> None:
        self._app = app
        self.ws = ws
        self.principal: Principal | None = None
        self.session_id: str | None = None
        self.expires_at: float | None = None  # epoch seconds
        self.authenticated_at = 0.0
        self.warned = False
        self.ends_with_token = True
        self.closing = False
        self.close_task: asyncio.Task[Any] | None = None
        now = time.monotonic()
        self.connected_at = now
        self.last_seen = now
        self.allowance = app.limits.rate_burst
        self.last_refill = now
        self.pending = 0
        # (frame, droppable, replayed): frames replayed for a ``resume`` do not count against
        # send_queue_size (there are at most history_size of them and the client asked).
        # None while nothing waits: an empty deque is 624 bytes, and most connections are idle
        # with their frames written at once (``send_text_nowait``).
        self._queue: deque[tuple[bytes, bool, bool]] | None = None
        self._replayed = 0
        self._writer: asyncio.Task[None] | None = None

    # ---------------------------------------------------------------- sending

    def deliver(self, frame: bytes, droppable: bool) -> None:
        """Queue a frame; never blocks. See the module docstring for the overflow policy."""
        if self.closing:
            return
        queue = self._queue
        if queue is not None and len(queue) - self._replayed >= self._app.limits.send_queue_size:
            for index, (_, can_drop, replayed) in enumerate(queue):
                if can_drop:
                    del queue[index]
                    self._replayed -= replayed
                    self._app.dropped_frames += 1
                    break
            else:
                if droppable:
                    self._app.dropped_frames += 1
                    return
                self.close(CLOSE_TRY_AGAIN_LATER, "send queue overflow")
                return
        if self._writer is None and not queue and send_text_nowait(self.ws, frame):
            return
        if queue is None:
            queue = self._queue = deque()
        queue.append((frame, droppable, False))
        if self._writer is None:
            self._writer = self._app.spawn(self._drain())

    def replay(self, frames: list[bytes]) -> None:
        """Queue a resume's frames in order, exempt from send_queue_size: a replay longer than
        the queue must not trip the overflow policy (or a client closed for overflow could
        never catch up)."""
        if self.closing or not frames:
            return
        if self._queue is None:
            self._queue = deque()
        self._queue.extend((frame, False, True) for frame in frames)
        self._replayed += len(frames)
        if self._writer is None:
            self._writer = self._app.spawn(self._drain())

    async def _drain(self) -> None:
        try:
            while self._queue:
                frame, _, replayed = self._queue.popleft()
                self._replayed -= replayed
                await self.ws.send(frame, text=True)
        except ConnectionClosed:
            self._queue = None
            self._replayed = 0
        finally:
            self._writer = None
            if not self._queue:
                self._queue = None  # an emptied deque keeps its 624 bytes; drop it

    def close(self, code: int, reason: str) -> None:
        if not self.closing:
            self.closing = True
            self._queue = None
            self._replayed = 0
            self.close_task = self._app.spawn(self._close(code, reason))

    async def _close(self, code: int, reason: str) -> None:
        """The close handshake, bounded: a peer that stopped reading cannot take our close
        frame (its socket buffer is full), so after CLOSE_TIMEOUT the socket is dropped."""
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self.ws.close(code, reason)
        except TimeoutError:
            self.ws.transport.abort()

    # ----------------------------------------------------------------- limits

    def take_token(self) -> bool:
        """Token bucket: ``rate_per_second`` refill, ``rate_burst`` capacity."""
        now = time.monotonic()
        limits = self._app.limits
        self.allowance = min(
            limits.rate_burst, self.allowance + (now - self.last_refill) * limits.rate_per_second
        )
        self.last_refill = now
        if self.allowance < 1.0:
            return False
        self.allowance -= 1.0
        return True


class AppServer:
    """Serves ``/ws`` and hands other paths to the HTTP handler."""

    def __init__(
        self,
        service: ChargingService,
        verifier: TokenVerifier,
        hub: UpdateHub,
        limits: AppLimits,
        http_handler: HttpHandler | None = None,
        debug: bool = False,
    ) -> None:
        self.service = service
        self.verifier = verifier
        self.hub = hub
        self.limits = limits
        self._http = http_handler
        self._debug = debug
        self.sessions: set[ClientSession] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.dropped_frames = 0
        self.epoch = secrets.token_hex(4)

    def set_http_handler(self, handler: HttpHandler) -> None:
        self._http = handler

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        """Every background task is kept until it ends; its failure is logged, not lost."""
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            if not isinstance(exc, ConnectionClosed):
                log.error("app task failed", exc_info=exc)

    # ------------------------------------------------------------- lifecycle

    async def start(self, host: str, port: int, ssl: Any = None) -> int:
        self._server = await serve(
            self._handle,
            host,
            port,
            process_request=self._process_request,
            max_size=self.limits.max_frame_size,
            open_timeout=self.limits.open_timeout,
            max_queue=4,
            compression=None,
            ping_interval=self.limits.heartbeat_interval,
            ping_timeout=self.limits.heartbeat_interval,
            close_timeout=CLOSE_TIMEOUT,
            ssl=ssl,
            server_header=None,
            backlog=4096,  # reconnect storms: the default 100 overflows the listen queue
        )
        self._sweeper = asyncio.create_task(self._sweep())
        return int(next(iter(self._server.sockets)).getsockname()[1])

    async def shutdown(self, timeout: float = 5.0) -> None:
        """Stop accepting, tell every client, close them with 1001, wait a bounded time."""
        if self._server is not None:
            self._server.close(close_connections=False)
        if self._sweeper is not None:
            self._sweeper.cancel()
        farewell = protocol.encode_connection_push(
            "server_shutdown", {"message": "Server is shutting down; reconnect and resume"}
        )
        for session in list(self.sessions):
            session.deliver(farewell, False)
        drains = [s._writer for s in self.sessions if s._writer is not None]
        if drains:
            await asyncio.wait(drains, timeout=timeout / 2)
        for session in list(self.sessions):
            session.close(CLOSE_GOING_AWAY, "server shutting down")
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), timeout)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)

    # ------------------------------------------------------------ upgrade/http

    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == "/ws" and request.method == "GET":
            origin = request.headers.get("Origin")
            if origin is not None and origin.rstrip("/") not in self.limits.allowed_origins:
                log.warning("refused /ws upgrade from origin %s", origin[:100])
                return _plain(http.HTTPStatus.FORBIDDEN, "Origin not allowed\n")
            if len(self.sessions) >= self.limits.max_connections:
                return _plain(http.HTTPStatus.SERVICE_UNAVAILABLE, "Too many connections\n")
            return None
        reply = (
            await self._http(request.method, path, request.headers)
            if self._http is not None and path != "/ws"
            else None
        )
        if reply is None:
            return _plain(http.HTTPStatus.NOT_FOUND, "Not found\n")
        status, headers, body = reply
        return Response(status, http.HTTPStatus(status).phrase, Headers(headers), body)

    # -------------------------------------------------------------- messages

    async def _handle(self, ws: ServerConnection) -> None:
        forget_handshake(ws)
        session = ClientSession(self, ws)
        self.sessions.add(session)
        try:
            # ``recv()`` rather than ``async for``: the async generator behind ``async for``
            # and its entry in the loop's weak set of generators cost ~650 bytes per idle
            # connection. ConnectionClosedOK ends the loop as ``async for`` would.
            while True:
                try:
                    frame = await ws.recv()
                except ConnectionClosedOK:
                    break
                session.last_seen = time.monotonic()
                if session.closing:
                    break
                await self._on_frame(session, frame)
                # Let this connection's writer run: frames that arrived in one read are
                # otherwise all answered before the first reply is sent, and a pipelining
                # client that reads fine could overflow its send queue (1013).
                await asyncio.sleep(0)
            if session.closing and session.close_task is not None:
                # Our own close (1013, 1008, ...) must win over the library's default 1000.
                await session.close_task
        except ConnectionClosed:
            pass
        finally:
            self.sessions.discard(session)
            session.closing = True
            if session.principal is not None:
                self.hub.detach(session.principal.user_id, session)

    async def _on_frame(self, session: ClientSession, frame: str | bytes) -> None:
        if not session.take_token():
            session.deliver(
                protocol.encode_error(_peek_id(frame), RateLimited("Too many messages; slow down")),
                False,
            )
            return
        try:
            request = protocol.decode(frame)
        except protocol.BadRequest as bad:
            session.deliver(protocol.encode_error(bad.request_id, bad.error), False)
            return
        if self._debug:
            log.debug("app message type=%s id=%s", request.type, request.id)
        if request.type == "heartbeat":
            session.deliver(protocol.encode_reply(request.id, "heartbeat", {}), False)
            return
        if request.type == "auth_request":
            await self._run(session, request)
            return
        if session.principal is None:
            session.deliver(protocol.encode_error(request.id, NotAuthenticated()), False)
            return
        if session.expires_at is not None and time.time() >= session.expires_at:
            session.deliver(
                protocol.encode_error(
                    request.id, TokenExpired("Token has expired; send auth_request with a new one")
                ),
                False,
            )
            return
        if request.type in ("start_charging_request", "stop_charging_request"):
            if session.pending >= self.limits.max_pending_requests:
                session.deliver(
                    protocol.encode_error(
                        request.id, TooManyPending("Too many requests in flight")
                    ),
                    False,
                )
                return
            session.pending += 1
            self.spawn(self._run(session, request))
            return
        await self._run(session, request)

    async def _run(self, session: ClientSession, request: protocol.Request) -> None:
        """Answer one request: data on success, ``*_response`` failure or ``error`` otherwise."""
        try:
            data = await self._answer(session, request)
        except ChargingApiError as err:
            if request.response_type.endswith("_response") and request.type != "auth_request":
                extra = _failure_extra(request)
                frame = protocol.encode_failure(request.id, request.response_type, err, extra)
            elif request.type == "auth_request":
                frame = protocol.encode_failure(request.id, "auth_response", err)
            else:
                frame = protocol.encode_error(request.id, err)
            session.deliver(frame, False)
        except Exception:
            log.exception("request %s failed", request.type)
            session.deliver(
                protocol.encode_error(request.id, InternalError("Internal error")), False
            )
        else:
            if data is not None:
                session.deliver(
                    protocol.encode_reply(request.id, request.response_type, data), False
                )
        finally:
            if request.type in ("start_charging_request", "stop_charging_request"):
                session.pending -= 1

    async def _answer(
        self, session: ClientSession, request: protocol.Request
    ) -> dict[str, Any] | None:
        data = request.data
        if isinstance(data, m.AuthRequest):
            return self._authenticate(session, data)
        principal = session.principal
        assert principal is not None
        if isinstance(data, m.StartChargingRequest):
            started = await self.service.start(
                principal,
                data.chargePointId,
                data.connectorId,
                id_tag=data.idTag,
                user_id=data.userId,
                request_key=str(request.id),
            )
            return {
                "success": True,
                "transactionId": started.transaction_id,
                "connectorId": started.connector_id,
                "status": started.status,
                "message": started.message,
            }
        if isinstance(data, m.StopChargingRequest):
            stopped = await self.service.stop(
                principal,
                data.chargePointId,
                data.transactionId,
                user_id=data.userId,
                reason=data.reason,
            )
            return {
                "success": True,
                "transactionId": stopped.transaction_id,
                "status": stopped.status,
                "message": stopped.message,
            }
        if isinstance(data, m.ResumeRequest):
            frames = (
                self.hub.missed_since(principal.user_id, data.lastSeq)
                if data.epoch is None or data.epoch == self.epoch
                else None  # another server process numbered those pushes
            )
            if frames is None:
                raise ResyncRequired(
                    "Missed updates are no longer available; send get_state",
                    {"currentSeq": self.hub.current_seq(principal.user_id)},
                )
            session.replay(frames)
            return {
                "success": True,
                "replayed": len(frames),
                "currentSeq": self.hub.current_seq(principal.user_id),
            }
        if isinstance(data, m.GetStateRequest):
            state = await self.service.state_of(principal)
            return {
                "seq": self.hub.current_seq(principal.user_id),
                "transactions": [protocol.transaction_to_wire(tx) for tx in state.transactions],
                "connectors": [
                    {
                        "chargePointId": c.charge_point_id,
                        "connectorId": c.connector_id,
                        "status": c.status,
                        "errorCode": c.error_code,
                        "updatedAt": format_utc(c.updated_at) if c.updated_at else None,
                    }
                    for c in state.connectors
                ],
            }
        if isinstance(data, m.SubscribeRequest | m.UnsubscribeRequest):
            if not principal.is_admin:
                raise Forbidden("Only admin tokens may watch charge points")
            cps = None if data.chargePointIds == "*" else list(data.chargePointIds)
            if isinstance(data, m.SubscribeRequest):
                watching = self.hub.subscribe(principal.user_id, cps)
            else:
                watching = self.hub.unsubscribe(principal.user_id, cps)
            return {"success": True, "chargePointIds": watching}
        if isinstance(data, m.GetTransactionsRequest):
            txs = await self.service.history_of(principal, data.limit)
            return {"transactions": [protocol.transaction_to_wire(tx) for tx in txs]}
        if isinstance(data, m.CloseTransactionRequest):
            closed = await self.service.close_transaction(
                principal, data.transactionId, data.meterStopWh
            )
            return {
                "success": True,
                "transactionId": closed.id,
                "message": f"Transaction {closed.id} closed",
                "transaction": protocol.transaction_to_wire(closed),
            }
        if isinstance(data, m.GetMeterValuesRequest):
            samples = await self.service.meter_samples_of(principal, data.transactionId)
            return {
                "transactionId": data.transactionId,
                "meterValues": [protocol.sample_to_wire(s.sample) for s in samples],
            }
        raise InternalError(f"no handler for {request.type}")  # pragma: no cover

    def _authenticate(self, session: ClientSession, data: m.AuthRequest) -> dict[str, Any]:
        """Verify the token; a failure leaves an existing session exactly as it was."""
        principal = self.verifier.verify(data.token)
        if data.userId is not None and data.userId != principal.user_id:
            raise AuthenticationFailed("userId does not match the token")
        previous = session.principal
        if previous is not None and previous.user_id != principal.user_id:
            raise AuthenticationFailed("A connection cannot change user; open a new one")
        if previous is None:
            stream_sessions = self.hub.session_count_of(principal.user_id)
            if stream_sessions >= self.limits.max_connections_per_user:
                raise Forbidden(
                    "Too many connections for this user",
                    {"limit": self.limits.max_connections_per_user},
                )
        now = time.time()
        token_exp = principal.expires_at.timestamp() if principal.expires_at else now + 86400
        session_end = (session.authenticated_at or now) + self.limits.session_timeout
        if previous is None:
            session_end = now + self.limits.session_timeout
        expires = min(token_exp, session_end)
        session.ends_with_token = token_exp <= session_end
        session.principal = principal
        session.expires_at = expires
        session.warned = False
        if previous is None:
            session.authenticated_at = now
            session.session_id = "ws_session_" + secrets.token_hex(8)
            self.hub.attach(principal.user_id, session)
        return {
            "success": True,
            "userId": principal.user_id,
            "sessionId": session.session_id,
            "expiresAt": format_utc(datetime.fromtimestamp(expires, UTC)),
            "message": "Authentication successful",
            "role": principal.role.value,
            "seq": self.hub.current_seq(principal.user_id),
            "epoch": self.epoch,
        }

    # ---------------------------------------------------------------- sweeper

    async def _sweep(self) -> None:
        """Deadlines for every session, checked once a second by one task."""
        limits = self.limits
        while True:
            await asyncio.sleep(1.0)
            mono = time.monotonic()
            wall = time.time()
            for session in list(self.sessions):
                if session.closing:
                    continue
                if session.principal is None:
                    if mono - session.connected_at >= limits.auth_timeout:
                        session.close(CLOSE_POLICY, "authentication timeout")
                    continue
                if mono - session.last_seen >= limits.idle_timeout:
                    session.close(1000, "idle timeout")
                    continue
                expires = session.expires_at
                if expires is None:
                    continue
                if wall >= expires + limits.expiry_grace:
                    session.close(
                        CLOSE_POLICY,
                        "token expired" if session.ends_with_token else "session expired",
                    )
                elif not session.warned and wall >= expires - limits.expiry_warning:
                    session.warned = True
                    # To this session only: it is about this connection, not an update a
                    # resume should replay elsewhere.
                    session.deliver(
                        protocol.encode_connection_push(
                            "session_expiring",
                            {
                                "sessionId": session.session_id,
                                "expiresAt": format_utc(datetime.fromtimestamp(expires, UTC)),
                                "message": "Send auth_request with a fresh token to keep this session",
                            },
                        ),
                        False,
                    )

    # ------------------------------------------------------------------ stats

    def stats(self) -> dict[str, int]:
        authenticated = sum(1 for s in self.sessions if s.principal is not None)
        return {
            "totalConnections": len(self.sessions),
            "authenticatedConnections": authenticated,
            "totalUsers": len({s.principal.user_id for s in self.sessions if s.principal}),
            "droppedFrames": self.dropped_frames,
            "deliveries": self.hub.deliveries,
        }


#: Stands in for a connection's handshake headers once the handshake is over (never mutated).
_NO_HEADERS = Headers()


def forget_handshake(ws: ServerConnection) -> None:
    """Drop the upgrade request's headers and our 101 response once the connection is open.

    ``websockets`` keeps both for the connection's lifetime (~4 KiB per connection, a third of
    an idle connection's memory) but after the handshake only tests ``request is None`` (the
    first event was the handshake). Nothing of ours reads them later: the upgrade's checks
    (origin, limits) run in ``process_request``. The request object and its path stay.
    """
    if ws.request is not None:
        ws.request.headers = _NO_HEADERS
    ws.response = None


def _failure_extra(request: protocol.Request) -> dict[str, Any]:
    data = request.data
    if isinstance(data, m.StartChargingRequest):
        return {"connectorId": data.connectorId}
    if isinstance(data, m.StopChargingRequest | m.CloseTransactionRequest):
        return {"transactionId": data.transactionId}
    return {}


def _peek_id(frame: str | bytes) -> protocol.MessageId | None:
    """The id of a frame we will not act on (rate limited): JSON only, no validation."""
    try:
        message = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return None
    return protocol.request_id_of(message) if isinstance(message, dict) else None


def _plain(status: http.HTTPStatus, text: str) -> Response:
    body = text.encode()
    headers = Headers(
        [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    )
    return Response(status.value, status.phrase, headers, body)
