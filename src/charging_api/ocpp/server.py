"""The OCPP 1.6-J central system's WebSocket server: ``/ocpp/{chargePointId}``.

At the upgrade: the path names the charge point; Basic auth (Security Profile 1, and 2 over
TLS) is checked by the core's ``admit``; subprotocol ``ocpp1.6`` is chosen when offered, a client
offering only other protocols is refused, and a client offering none is accepted as 1.6 (some
real chargers send no ``Sec-WebSocket-Protocol``). A second connection with the same id replaces
the first: the old socket is closed and its outstanding CALL fails at once.

After the upgrade, CALLs from the charge point are handled one at a time, in order (OCPP-J's one
outstanding CALL per direction); CALLRESULT/CALLERROR frames answer our own CALLs or are logged
and ignored.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import http
import logging
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, NegotiationError
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from charging_api.domain.charging import ChargingService
from charging_api.errors import ChargingApiError
from charging_api.ocpp import framing, schemas
from charging_api.ocpp.gateway import OcppGateway, OcppSession
from charging_api.ocpp.handlers import HANDLERS

log = logging.getLogger(__name__)

OCPP16 = Subprotocol("ocpp1.6")
PATH_PREFIX = "/ocpp/"
MAX_ID_LENGTH = 48


def charge_point_id_from_path(path: str) -> str | None:
    """``/ocpp/CP_1`` -> ``CP_1``; None for anything else (nested paths, empty, too long)."""
    path = path.split("?", 1)[0]
    if not path.startswith(PATH_PREFIX):
        return None
    cp_id = unquote(path[len(PATH_PREFIX):])
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


class OcppServer:
    def __init__(
        self,
        service: ChargingService,
        gateway: OcppGateway,
        max_frame_size: int = 65536,
        ping_interval: float | None = None,
    ) -> None:
        self.service = service
        self.gateway = gateway
        self._max_frame_size = max_frame_size
        self._ping_interval = ping_interval
        self._server: Server | None = None
        self._connections: dict[str, ServerConnection] = {}

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
            close_timeout=5,
            ssl=ssl,
            server_header=None,
        )
        return int(next(iter(self._server.sockets)).getsockname()[1])

    async def shutdown(self, timeout: float = 5.0) -> None:
        """Close every charge point socket with 1001 so they reconnect (elsewhere)."""
        if self._server is None:
            return
        self._server.close(close_connections=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), timeout)

    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        cp_id = charge_point_id_from_path(request.path)
        if cp_id is None:
            return _plain(http.HTTPStatus.NOT_FOUND, "Use /ocpp/{chargePointId}\n")
        credentials = basic_auth(request.headers)
        password: str | None = None
        if credentials is not None:
            user, password = credentials
            if user != cp_id:
                log.warning("charge point %s presented credentials of %s", cp_id, user[:48])
                return _unauthorized()
        if not await self.service.admit(cp_id, password):
            log.warning("charge point %s refused at upgrade", cp_id)
            return _unauthorized()
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        cp_id = charge_point_id_from_path(ws.request.path if ws.request else "") or ""
        if ws.subprotocol is None:
            log.info("charge point %s offered no subprotocol; speaking OCPP 1.6", cp_id)

        async def send(frame: bytes) -> None:
            await ws.send(frame, text=True)

        session = OcppSession(cp_id, send)
        replaced = self.gateway.register(session)
        if replaced is not None:
            log.info("charge point %s reconnected; old connection replaced", cp_id)
        old_ws = self._connections.pop(cp_id, None)
        self._connections[cp_id] = ws
        if old_ws is not None:
            with contextlib.suppress(Exception):
                await old_ws.close(1000, "replaced by a new connection")
        log.info("charge point %s connected", cp_id)
        await self.service.on_connected(cp_id)
        try:
            async for message in ws:
                await self._on_message(session, ws, message)
        except ConnectionClosed:
            pass
        finally:
            if self._connections.get(cp_id) is ws:
                del self._connections[cp_id]
            if self.gateway.unregister(session):
                log.info("charge point %s disconnected", cp_id)
                await self.service.on_disconnected(cp_id)

    async def _on_message(self, session: OcppSession, ws: ServerConnection, message: str | bytes) -> None:
        try:
            frame = framing.parse(message)
        except framing.FrameError as exc:
            log.warning("charge point %s sent a bad frame: %s", session.charge_point_id, exc.description)
            if exc.answer:
                await ws.send(exc.to_frame(), text=True)
            return
        if isinstance(frame, framing.Call):
            await ws.send(await self._answer(session.charge_point_id, frame), text=True)
        elif not session.on_reply(frame):
            log.warning(
                "charge point %s answered no pending CALL (id %s); ignored",
                session.charge_point_id,
                frame.unique_id,
            )

    async def _answer(self, cp_id: str, call: framing.Call) -> bytes:
        handler = HANDLERS.get(call.action)
        if handler is None:
            if call.action in schemas.ALL_ACTIONS:
                return framing.encode_error(
                    call.unique_id, "NotSupported", f"{call.action} is not supported by a central system"
                )
            return framing.encode_error(
                call.unique_id, "NotImplemented", f"Unknown action {call.action[:64]}"
            )
        try:
            schemas.validate(call.action, call.payload, call.unique_id)
            reply = await handler(self.service, cp_id, call.payload)
        except framing.FrameError as exc:
            return exc.to_frame()
        except ChargingApiError as exc:
            log.warning("charge point %s %s failed: %s", cp_id, call.action, exc.message)
            return framing.encode_error(call.unique_id, "GenericError", exc.message)
        except ValueError as exc:
            return framing.encode_error(call.unique_id, "PropertyConstraintViolation", str(exc)[:200])
        except Exception:
            log.exception("charge point %s %s failed", cp_id, call.action)
            return framing.encode_error(call.unique_id, "InternalError", "Internal error")
        return framing.encode_result(call.unique_id, reply)


def _select_subprotocol(
    connection: ServerConnection, subprotocols: Sequence[Subprotocol]
) -> Subprotocol | None:
    if not subprotocols:
        return None
    if OCPP16 in subprotocols:
        return OCPP16
    raise NegotiationError(f"unsupported subprotocols: {', '.join(subprotocols)[:100]}")


def _plain(status: http.HTTPStatus, text: str, extra: list[tuple[str, str]] | None = None) -> Response:
    body = text.encode()
    headers = Headers([("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
    for name, value in extra or ():
        headers[name] = value
    return Response(status.value, status.phrase, headers, body)


def _unauthorized() -> Response:
    return _plain(
        http.HTTPStatus.UNAUTHORIZED,
        "Unknown charge point or wrong credentials\n",
        [("WWW-Authenticate", 'Basic realm="ocpp", charset="UTF-8"')],
    )
