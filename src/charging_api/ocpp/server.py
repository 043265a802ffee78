"""The OCPP 1.6-J central system's WebSocket server: ``/ocpp/{chargePointId}``.

At the upgrade (all of it bounded by ``open_timeout``, so a slow-loris client that never finishes
its HTTP request is dropped):

- the path names the charge point (``/ocpp/{id}``, one segment, at most 48 printable
  characters; anything else is HTTP 404);
- Basic auth (Security Profile 1, and Profile 2 over TLS) is checked by the core's ``admit``:
  a charge point registered with a password must present ``{id}:{password}``, and the Basic-auth
  user must be the path's id, so credentials of one charge point never open another's session;
  production mode refuses ids that are not registered. A refusal is HTTP 401;
- subprotocol ``ocpp1.6`` is chosen when offered, a client offering only other protocols is
  refused (HTTP 400), and a client offering none is accepted as 1.6 (some real chargers send no
  ``Sec-WebSocket-Protocol``).

Words: a *connection* is one WebSocket (``ws``, ``websockets``' ``ServerConnection``); a
*session* (:class:`~charging_api.ocpp.gateway.OcppSession`) is the charge point's OCPP state on
its current connection. The gateway's sessions are the only registry of connected charge points.

A second connection with the same id **replaces** the first (rather than being refused: a
charger that rebooted or lost its network often reconnects while its old connection is still
half-open, and refusing it would lock it out until the old connection times out). The new
session takes over at once; the old connection is closed (1000, "replaced by a new connection")
in the background, and the CALL outstanding on it fails at once with CHARGE_POINT_OFFLINE, so the
app that asked still gets its response.

After the upgrade, CALLs from the charge point are handled one at a time, in order (OCPP-J's one
outstanding CALL per direction): each malformed frame gets its CALLERROR and the connection lives
on; CALLRESULT/CALLERROR frames answer our own CALLs or are logged and ignored. A frame over
``max_frame_size`` closes the connection with 1009. ``rate_limit`` (messages per second per
connection, 0 = off, the default) paces a charge point that sends faster: a token bucket
(:class:`~charging_api.ratelimit.TokenBucket`, spent into debt) with a
burst of one second's worth; over it, the server stops reading that connection until a token is due,
so TCP back-pressure slows the sender and nothing is dropped or refused (an offline replay only
slows down). The server never sends a CALL on its own initiative (OCTT fails a central system
that does): only an app's start/stop request causes one.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import http
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any
from urllib.parse import unquote

from websockets import (
    ConnectionClosed,
    ConnectionClosedOK,
    Headers,
    NegotiationError,
    Request,
    Response,
    Server,
    ServerConnection,
    Subprotocol,
    serve,
)

from charging_api.domain.charging import ChargingService
from charging_api.errors import ChargePointOffline, ChargingApiError
from charging_api.ocpp import framing, schemas
from charging_api.ocpp.gateway import OcppGateway, OcppSession
from charging_api.ocpp.handlers import HANDLERS
from charging_api.ratelimit import TokenBucket
from charging_api.transport import forget_handshake, send_text_nowait

log = logging.getLogger(__name__)

OCPP16 = Subprotocol("ocpp1.6")
PATH_PREFIX = "/ocpp/"
MAX_ID_LENGTH = 48


def charge_point_id_from_path(path: str) -> str | None:
    """``/ocpp/CP_1`` -> ``CP_1``; None for anything else (nested paths, empty, too long)."""
    path = path.split("?", 1)[0]
    if not path.startswith(PATH_PREFIX):
        return None
    cp_id = unquote(path[len(PATH_PREFIX) :])
    if not cp_id or len(cp_id) > MAX_ID_LENGTH or "/" in cp_id or not cp_id.isprintable():
        return None
    return cp_id


def basic_auth(headers: Headers) -> tuple[str, str] | None:
    value = headers.get("Authorization")
    if not value or not value.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(value[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


#: ``(method, path, headers) -> (status, headers, body)`` or None: plain HTTP beside the door.
HttpHandler = Callable[
    [str, str, Mapping[str, str]], Awaitable[tuple[int, list[tuple[str, str]], bytes] | None]
]

#: Bad frames logged at WARNING per session; the rest at DEBUG (a hostile peer cannot flood
#: the log).
MAX_LOGGED_BAD_FRAMES = 20


class OcppServer:
    def __init__(
        self,
        service: ChargingService,
        gateway: OcppGateway,
        max_frame_size: int = 65536,
        ping_interval: float | None = None,
        rate_limit: float = 0.0,
        open_timeout: float = 10.0,
        http_routes: HttpHandler | None = None,
    ) -> None:
        self.service = service
        #: Answers plain GETs outside ``/ocpp/`` (``/health``, ``/metrics``, ``/api/stats`` of a
        #: gateway node, whose app port is not open); None: they get 404.
        self._http = http_routes
        self.gateway = gateway
        self._max_frame_size = max_frame_size
        self._ping_interval = ping_interval
        self._rate_limit = rate_limit
        self._open_timeout = open_timeout
        self._server: Server | None = None
        self._closing: set[asyncio.Task[None]] = set()
        #: CALLs received per action and CALLERRORs sent per error code (read at scrape time).
        self.calls_in: dict[str, int] = {}
        self.call_errors_sent: dict[str, int] = {}

    async def start(self, host: str, port: int, ssl: Any = None) -> int:
        self._server = await serve(
            self._handle,
            host,
            port,
            process_request=self._process_request,
            select_subprotocol=_select_subprotocol,
            subprotocols=[OCPP16],
            max_size=self._max_frame_size,
            max_queue=4,
            compression=None,
            ping_interval=self._ping_interval,
            ping_timeout=self._ping_interval,
            open_timeout=self._open_timeout,
            close_timeout=5,
            ssl=ssl,
            server_header=None,
            backlog=4096,  # reconnect storms: the default 100 overflows the listen queue
        )
        return int(next(iter(self._server.sockets)).getsockname()[1])

    async def shutdown(self, timeout: float = 5.0) -> None:
        """Close every charge point connection with 1001 so they reconnect (elsewhere)."""
        if self._server is None:
            return
        self._server.close(close_connections=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), timeout)
        if self._closing:
            await asyncio.wait(set(self._closing), timeout=timeout)

    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        cp_id = charge_point_id_from_path(request.path)
        if cp_id is None:
            if self._http is not None:
                reply = await self._http(
                    request.method, request.path.split("?", 1)[0], request.headers
                )
                if reply is not None:
                    status, headers, body = reply
                    return Response(status, http.HTTPStatus(status).phrase, Headers(headers), body)
            return _plain(http.HTTPStatus.NOT_FOUND, "Use /ocpp/{chargePointId}\n")
        password: str | None = None
        if "Authorization" in request.headers:
            credentials = basic_auth(request.headers)
            if credentials is None:
                log.warning("charge point %s sent an unreadable Authorization header", cp_id)
                return _unauthorized()
            user, password = credentials
            if user != cp_id:
                log.warning("charge point %s presented credentials of another id", cp_id)
                return _unauthorized()
        if not await self.service.admit(cp_id, password):
            log.warning("charge point %s refused at upgrade", cp_id)
            return _unauthorized()
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        cp_id = charge_point_id_from_path(ws.request.path if ws.request else "") or ""
        forget_handshake(ws)
        if ws.subprotocol is None:
            log.info("charge point %s offered no subprotocol; speaking OCPP 1.6", cp_id)

        async def send(frame: bytes) -> None:
            try:
                await ws.send(frame, text=True)
            except ConnectionClosed:
                raise ChargePointOffline(
                    f"Charge point {cp_id} disconnected", {"chargePointId": cp_id}
                ) from None

        async def disconnect() -> None:
            await ws.close(1000, "replaced by a new connection")

        session = OcppSession(cp_id, send, disconnect)
        replaced = self.gateway.register(session)
        if replaced is not None:
            log.info("charge point %s reconnected; old connection replaced", cp_id)
            self._close_in_background(replaced)
        log.info("charge point %s connected", cp_id)
        await self.service.on_connected(cp_id)
        loop = asyncio.get_running_loop()
        limiter = (
            TokenBucket(self._rate_limit, max(1.0, self._rate_limit), loop.time())
            if self._rate_limit > 0
            else None
        )
        throttled = False
        try:
            # ``recv()`` rather than ``async for``: the async generator behind ``async for``
            # and its entry in the loop's weak set of generators cost ~650 bytes per idle
            # connection. ConnectionClosedOK ends the loop as ``async for`` would.
            while True:
                try:
                    message = await ws.recv()
                except ConnectionClosedOK:
                    break
                if limiter is not None:
                    delay = limiter.take(loop.time())
                    if delay > 0:
                        if not throttled:
                            throttled = True
                            log.warning(
                                "charge point %s exceeds %g messages/s; pacing it",
                                cp_id,
                                self._rate_limit,
                            )
                        await asyncio.sleep(delay)
                await self._on_message(session, ws, message)
        except ConnectionClosed:
            pass
        finally:
            if self.gateway.unregister(session):
                log.info("charge point %s disconnected", cp_id)
                await self.service.on_disconnected(cp_id)

    def _close_in_background(self, session: OcppSession) -> None:
        """Close a replaced session's connection without holding up its successor (a half-open
        peer would make ``close`` wait for ``close_timeout``)."""

        async def close() -> None:
            with contextlib.suppress(Exception):
                await session.disconnect()

        task = asyncio.create_task(close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _on_message(
        self, session: OcppSession, ws: ServerConnection, message: str | bytes
    ) -> None:
        try:
            frame = framing.parse(message)
        except framing.FrameError as exc:
            _log_bad_frame(session, exc.description)
            if exc.answer:
                await ws.send(self._frame_error(exc), text=True)
            return
        if isinstance(frame, framing.Call):
            self.calls_in[frame.action] = self.calls_in.get(frame.action, 0) + 1
            reply = await self._answer(session.charge_point_id, frame)
            if not send_text_nowait(ws, reply):
                await ws.send(reply, text=True)
        elif not session.on_reply(frame):
            _log_bad_frame(session, f"a reply to no pending CALL (id {frame.unique_id})")

    async def _answer(self, cp_id: str, call: framing.Call) -> bytes:
        handler = HANDLERS.get(call.action)
        if handler is None:
            if call.action in schemas.ALL_ACTIONS:
                return self._error(
                    call.unique_id,
                    "NotSupported",
                    f"{call.action} is not supported by a central system",
                )
            return self._error(
                call.unique_id, "NotImplemented", f"Unknown action {call.action[:64]}"
            )
        try:
            schemas.validate(call.action, call.payload, call.unique_id)
            reply = await handler(self.service, cp_id, call.payload)
        except framing.FrameError as exc:
            return self._frame_error(exc)
        except ChargingApiError as exc:
            log.warning("charge point %s %s failed: %s", cp_id, call.action, exc.message)
            return self._error(call.unique_id, "GenericError", exc.message)
        except (ValueError, OverflowError) as exc:
            return self._error(call.unique_id, "PropertyConstraintViolation", str(exc)[:200])
        except Exception:
            log.exception("charge point %s %s failed", cp_id, call.action)
            return self._error(call.unique_id, "InternalError", "Internal error")
        return framing.encode_result(call.unique_id, reply)

    def _error(self, unique_id: str, code: str, description: str) -> bytes:
        """A CALLERROR frame to send, counted by its code."""
        self.call_errors_sent[code] = self.call_errors_sent.get(code, 0) + 1
        return framing.encode_error(unique_id, code, description)

    def _frame_error(self, exc: framing.FrameError) -> bytes:
        return self._error(exc.unique_id, exc.code, exc.description)


def _log_bad_frame(session: OcppSession, what: str) -> None:
    """Log a bad frame: at WARNING up to ``MAX_LOGGED_BAD_FRAMES`` per session, then DEBUG."""
    session.bad_frames += 1
    cp_id = session.charge_point_id
    if session.bad_frames < MAX_LOGGED_BAD_FRAMES:
        log.warning("charge point %s sent a bad frame: %s; ignored", cp_id, what)
    elif session.bad_frames == MAX_LOGGED_BAD_FRAMES:
        log.warning(
            "charge point %s sent %d bad frames; logging the rest at DEBUG",
            cp_id,
            session.bad_frames,
        )
    else:
        log.debug("charge point %s sent a bad frame: %s; ignored", cp_id, what)


def _select_subprotocol(
    connection: ServerConnection, subprotocols: Sequence[Subprotocol]
) -> Subprotocol | None:
    if not subprotocols:
        return None
    if OCPP16 in subprotocols:
        return OCPP16
    raise NegotiationError(f"unsupported subprotocols: {', '.join(subprotocols)[:100]}")


def _plain(
    status: http.HTTPStatus, text: str, extra: list[tuple[str, str]] | None = None
) -> Response:
    body = text.encode()
    headers = Headers(
        [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    )
    for name, value in extra or ():
        headers[name] = value
    return Response(status.value, status.phrase, headers, body)


def _unauthorized() -> Response:
    return _plain(
        http.HTTPStatus.UNAUTHORIZED,
        "Unknown charge point or wrong credentials\n",
        [("WWW-Authenticate", 'Basic realm="ocpp", charset="UTF-8"')],
    )
