"""The app door's I/O: WebSocket connections at ``/ws``, plain HTTP routes beside them.

The rules of a connection (auth state, rate limit, requests in flight, expiry and its warning)
live in :class:`~charging_api.api.session.AppSession`, which reads no clock; this module feeds
it frames and the time, sends what it answers, and dispatches requests through
:data:`~charging_api.api.handlers.ROUTES`.

One :class:`AppConnection` per socket: its :class:`AppSession` and a bounded send queue drained
by a writer task that exists only while there is something to send (frames go out at once
through ``send_text_nowait`` while the socket takes them). A client that stops reading fills its
own queue and nothing else: meter updates are dropped oldest-first (the client sees a gap in
``seq`` and may ``resume``); if the queue is still full of status and transaction updates, the
connection is closed with 1013. One sweeper task asks every session for its deadlines once a
second.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from websockets import (
    ConnectionClosed,
    ConnectionClosedOK,
    Headers,
    Request,
    Response,
    Server,
    ServerConnection,
    serve,
)

from charging_api.api import protocol
from charging_api.api.auth import TokenVerifier
from charging_api.api.handlers import (
    CONCURRENT,
    ROUTES,
    Door,
    OperatorState,
    Route,
    failure_extra,
)
from charging_api.api.hub import Hub
from charging_api.api.session import AppLimits, AppSession, Close
from charging_api.domain.charging import ChargingService
from charging_api.domain.operations import OperatorService
from charging_api.domain.sessions import SessionService
from charging_api.domain.webhooks import WebhookService
from charging_api.errors import ChargingApiError, InternalError
from charging_api.transport import forget_handshake, send_text_nowait, split_connections

__all__ = ["AppConnection", "AppLimits", "AppServer", "HttpHandler"]

log = logging.getLogger(__name__)

#: (status, headers, body) for a plain HTTP route; None means "not mine".
HttpReply = tuple[int, list[tuple[str, str]], bytes]
HttpHandler = Callable[[str, str, Mapping[str, str]], Awaitable[HttpReply | None]]

#: GETs of these paths are served by ``websockets`` (``/ws`` and the routes of
#: :mod:`charging_api.http.routes` through ``process_request``); other requests go to the HTTP
#: protocol when one is set.
WEBSOCKET_PATHS = ("/ws", "/health", "/api/stats", "/metrics")

CLOSE_GOING_AWAY = 1001
CLOSE_TRY_AGAIN_LATER = 1013
#: Seconds a close handshake may take before the socket is dropped.
CLOSE_TIMEOUT = 5.0


class AppConnection:
    """One app socket: its session's rules and its send queue."""

    __slots__ = (
        "_app",
        "_queue",
        "_replayed",
        "_writer",
        "close_task",
        "closing",
        "session",
        "ws",
    )

    def __init__(self, app: AppServer, ws: ServerConnection, session: AppSession) -> None:
        self._app = app
        self.ws = ws
        self.session = session
        self.closing = False
        self.close_task: asyncio.Task[Any] | None = None
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


#: Requests whose receipt-to-reply time is reported (``AppServer.on_command_latency``).
TIMED_REQUESTS = frozenset({"start_charging_request", "stop_charging_request"})


class AppServer:
    """Serves ``/ws`` and hands other paths to the HTTP handler."""

    def __init__(
        self,
        service: ChargingService,
        verifier: TokenVerifier,
        hub: Hub,
        limits: AppLimits,
        http_handler: HttpHandler | None = None,
        debug: bool = False,
        operator: OperatorService | None = None,
        ops: OperatorState | None = None,
        http_protocol: Callable[[], asyncio.Protocol] | None = None,
        sessions: SessionService | None = None,
        webhooks: WebhookService | None = None,
    ) -> None:
        self.service = service
        self.verifier = verifier
        self.hub = hub
        self.limits = limits
        self._http = http_handler
        self._debug = debug
        self._http_protocol = http_protocol
        self.sessions: set[AppConnection] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.dropped_frames = 0
        #: Requests answered per request type, and error codes sent per code (scrape-time
        #: counters: a dict increment per request, no metrics library on the hot path).
        self.requests_by_type: dict[str, int] = {}
        self.errors_by_code: dict[str, int] = {}
        #: Called with (request type, seconds from receipt to reply) for the commands in
        #: :data:`TIMED_REQUESTS` (None: not measured).
        self.on_command_latency: Callable[[str, float], None] | None = None
        self.door = Door(
            service,
            verifier,
            hub,
            operator=operator,
            ops=ops,
            sessions=sessions,
            webhooks=webhooks,
        )

    @property
    def epoch(self) -> str:
        """The hub's push numbering epoch (``auth_response.epoch``): read at each use, since a
        cluster hub's changes when Redis lost it."""
        return self.hub.epoch

    def set_http_handler(self, handler: HttpHandler) -> None:
        self._http = handler

    def set_http_protocol(self, factory: Callable[[], asyncio.Protocol]) -> None:
        """Requests other than GETs of :data:`WEBSOCKET_PATHS` go to a protocol from
        ``factory`` (the REST API's HTTP server) instead of answering 404."""
        self._http_protocol = factory

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
        split: dict[str, Any] = {}
        if self._http_protocol is not None:
            split["create_connection"] = split_connections(
                WEBSOCKET_PATHS, self._http_protocol, self.limits.open_timeout
            )
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
            **split,
        )
        self._sweeper = asyncio.create_task(self._sweep())
        return int(next(iter(self._server.sockets)).getsockname()[1])

    async def shutdown(self, timeout: float = 5.0) -> None:
        """Stop accepting, tell every client, close them with 1001, wait a bounded time."""
        if self._server is not None:
            self._server.close(close_connections=False)
        if self._sweeper is not None:
            self._sweeper.cancel()
        farewell = protocol.server_shutdown(time.time())
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
            if origin is not None and not self._origin_allowed(origin, request.headers):
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

    def _origin_allowed(self, origin: str, headers: Headers) -> bool:
        """A ``FRONTEND_URL`` origin, or this server's own (the console it serves at ``/``)."""
        origin = origin.rstrip("/")
        host = headers.get("Host") or ""
        return origin in self.limits.allowed_origins or (
            bool(host) and origin in (f"http://{host}", f"https://{host}")
        )

    # -------------------------------------------------------------- messages

    async def _handle(self, ws: ServerConnection) -> None:
        forget_handshake(ws)
        conn = AppConnection(
            self, ws, AppSession(self.limits, time.time(), CONCURRENT, self.errors_by_code)
        )
        self.sessions.add(conn)
        try:
            # ``recv()`` rather than ``async for``: the async generator behind ``async for``
            # and its entry in the loop's weak set of generators cost ~650 bytes per idle
            # connection. ConnectionClosedOK ends the loop as ``async for`` would.
            while True:
                try:
                    frame = await ws.recv()
                except ConnectionClosedOK:
                    break
                if conn.closing:
                    break
                now = time.time()
                outcome = conn.session.receive(frame, now)
                if isinstance(outcome, bytes):
                    conn.deliver(outcome, False)
                else:
                    if self._debug:
                        log.debug("app message type=%s id=%s", outcome.type, outcome.id)
                    route = ROUTES[outcome.type]
                    if route.concurrent:
                        self.spawn(self._run(conn, route, outcome, now))
                    else:
                        await self._run(conn, route, outcome, now)
                # Let this connection's writer run: frames that arrived in one read are
                # otherwise all answered before the first reply is sent, and a pipelining
                # client that reads fine could overflow its send queue (1013).
                await asyncio.sleep(0)
            if conn.closing and conn.close_task is not None:
                # Our own close (1013, 1008, ...) must win over the library's default 1000.
                await conn.close_task
        except ConnectionClosed:
            pass
        finally:
            self.sessions.discard(conn)
            conn.closing = True
            principal = conn.session.principal
            if principal is not None:
                self.hub.detach(principal.user_id, conn)

    async def _run(
        self, conn: AppConnection, route: Route, request: protocol.Request, now: float
    ) -> None:
        """Answer one request: data on success, ``*_response`` failure or ``error`` otherwise."""
        kind = request.type
        self.requests_by_type[kind] = self.requests_by_type.get(kind, 0) + 1
        try:
            data = await route.handler(self.door, conn, request, now)
        except ChargingApiError as err:
            self.errors_by_code[err.code] = self.errors_by_code.get(err.code, 0) + 1
            if request.response_type.endswith("_response"):
                frame = protocol.encode_failure(
                    request.id,
                    request.response_type,
                    err,
                    time.time(),
                    failure_extra(route, request.data),
                )
            else:
                frame = protocol.encode_error(request.id, err, time.time())
            conn.deliver(frame, False)
        except Exception:
            log.exception("request %s failed", request.type)
            code = InternalError.code
            self.errors_by_code[code] = self.errors_by_code.get(code, 0) + 1
            conn.deliver(
                protocol.encode_error(request.id, InternalError("Internal error"), time.time()),
                False,
            )
        else:
            if data is not None:
                conn.deliver(
                    protocol.encode_reply(request.id, request.response_type, data, time.time()),
                    False,
                )
        finally:
            conn.session.finished(request)
            if kind in TIMED_REQUESTS and self.on_command_latency is not None:
                self.on_command_latency(kind, time.time() - now)

    # ---------------------------------------------------------------- sweeper

    async def _sweep(self) -> None:
        """Every session's deadlines, asked once a second by one task."""
        while True:
            await asyncio.sleep(1.0)
            now = time.time()
            for conn in list(self.sessions):
                if conn.closing:
                    continue
                due = conn.session.tick(now)
                if isinstance(due, Close):
                    conn.close(due.code, due.reason)
                elif due is not None:
                    # To this connection only: it is about this connection, not an update a
                    # resume should replay elsewhere.
                    conn.deliver(due, False)

    # ------------------------------------------------------------------ stats

    def stats(self) -> dict[str, int]:
        principals = [c.session.principal for c in self.sessions if c.session.principal]
        return {
            "totalConnections": len(self.sessions),
            "authenticatedConnections": len(principals),
            "totalUsers": len({p.user_id for p in principals}),
            "droppedFrames": self.dropped_frames,
            "deliveries": self.hub.deliveries,
        }


def _plain(status: http.HTTPStatus, text: str) -> Response:
    body = text.encode()
    headers = Headers(
        [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    )
    return Response(status.value, status.phrase, headers, body)
