"""Live charge point sessions and the CALLs we send them (implements ``ChargerGateway``).

The gateway's table of sessions is the one registry of connected charge points in the process:
a charge point is online exactly while it has a registered session. A session is the charge
point's OCPP state on its current connection (how to send a frame, how to close the connection,
the CALL outstanding); the server creates one per connection and registers it.

OCPP-J allows one outstanding CALL per direction: commands for one charge point wait their turn
behind a lock, at most ``max_queued`` of them, and the whole wait (queue + answer) is bounded by
``call_timeout``. Every CALL is checked against the OCA schema of its request before it is
queued (a bad payload is ``InvalidPayload`` and nothing is sent) and its answer against the
schema of its response (a bad answer is ``ChargePointError``). When a session ends or is
replaced, every CALL waiting on it fails at once with CHARGE_POINT_OFFLINE, so the app that
asked still gets a response.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from charging_api.errors import (
    ChargePointBusy,
    ChargePointError,
    ChargePointOffline,
    ChargePointTimeout,
    InvalidPayload,
)
from charging_api.ocpp import framing, schemas

log = logging.getLogger(__name__)

Sender = Callable[[bytes], Awaitable[None]]
#: Closes the session's connection (awaited in the background when the session is replaced).
Disconnect = Callable[[], Awaitable[None]]


async def _nothing_to_close() -> None:
    return None


class OcppSession:
    """One connected charge point: how to send to it, how to close its connection, and the
    CALL it has outstanding."""

    __slots__ = (
        "_lock",
        "_pending",
        "_pending_id",
        "_send",
        "bad_frames",
        "charge_point_id",
        "closed",
        "disconnect",
        "queued",
    )

    def __init__(
        self, charge_point_id: str, send: Sender, disconnect: Disconnect = _nothing_to_close
    ) -> None:
        self.charge_point_id = charge_point_id
        self._send = send
        self.disconnect = disconnect
        #: Frames from the charge point we could not use (the server bounds its logging by it).
        self.bad_frames = 0
        self._lock = asyncio.Lock()
        self._pending: asyncio.Future[framing.CallResult | framing.CallError] | None = None
        self._pending_id: str | None = None
        self.queued = 0
        self.closed = False

    async def call(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Send one CALL and return its CALLRESULT payload (caller bounds the time).

        The payload is not validated here: :meth:`OcppGateway.call`, the one caller, did
        that (:func:`check_request`) before queueing it."""
        async with self._lock:
            if self.closed:
                raise ChargePointOffline(
                    f"Charge point {self.charge_point_id} disconnected",
                    {"chargePointId": self.charge_point_id},
                )
            unique_id = str(uuid.uuid4())
            future: asyncio.Future[framing.CallResult | framing.CallError] = (
                asyncio.get_running_loop().create_future()
            )
            self._pending, self._pending_id = future, unique_id
            try:
                await self._send(framing.encode_call(unique_id, action, payload))
                reply = await future
            finally:
                self._pending = self._pending_id = None
        if isinstance(reply, framing.CallError):
            raise ChargePointError(
                f"Charge point answered {action} with {reply.code}: {reply.description}"[:300],
                {"ocppErrorCode": reply.code},
            )
        try:
            schemas.validate(f"{action}Response", reply.payload, unique_id)
        except framing.FrameError as exc:
            raise ChargePointError(
                f"Charge point sent an invalid {action} response: {exc.description}"[:300]
            ) from None
        return reply.payload

    def on_reply(self, reply: framing.CallResult | framing.CallError) -> bool:
        """Match a CALLRESULT/CALLERROR to our outstanding CALL; False if it answers nothing."""
        future = self._pending
        if future is None or future.done() or reply.unique_id != self._pending_id:
            return False
        future.set_result(reply)
        return True

    def close(self, reason: str) -> None:
        """Fail the outstanding CALL; later calls fail before sending."""
        self.closed = True
        future = self._pending
        if future is not None and not future.done():
            future.set_exception(
                ChargePointOffline(
                    f"Charge point {self.charge_point_id} {reason}",
                    {"chargePointId": self.charge_point_id},
                )
            )


def check_request(action: str, payload: dict[str, Any]) -> None:
    """Raise ``InvalidPayload`` when ``payload`` breaks the OCPP 1.6 schema of ``action`` (or
    ``action`` is none of OCPP 1.6's)."""
    if action not in schemas.ALL_ACTIONS:
        raise InvalidPayload(
            f"{action[:64]} is not an OCPP 1.6 action",
            {
                "schemaError": "unknown action",
                "ocppErrorCode": "NotImplemented",
                "action": action[:64],
            },
        )
    try:
        schemas.validate(action, payload, framing.UNKNOWN_ID)
    except framing.FrameError as exc:
        raise InvalidPayload(
            f"{action} payload is invalid: {exc.description}"[:300],
            {"schemaError": exc.description, "ocppErrorCode": exc.code, "action": action},
        ) from None


class OcppGateway:
    """``ChargerGateway`` over the live sessions of this process."""

    def __init__(self, call_timeout: float = 10.0, max_queued: int = 8) -> None:
        self.call_timeout = call_timeout
        self.max_queued = max_queued
        self._sessions: dict[str, OcppSession] = {}
        #: CALLs sent per action and CALLERRORs received per error code (read at scrape time).
        self.calls_out: dict[str, int] = {}
        self.call_errors_received: dict[str, int] = {}
        #: Called with (action, seconds from sending to the outcome) for each CALL sent,
        #: whatever its outcome (result, CALLERROR, timeout, disconnect); None: not measured.
        self.on_call_latency: Callable[[str, float], None] | None = None
        #: Called with the charge point id when a session becomes its live one (a replacement
        #: included) and when its live session ends: a cluster gateway claims and releases
        #: ownership here (``cluster.owners.OwnerRegistry``). Synchronous: they must not block.
        self.on_online: Callable[[str], None] | None = None
        self.on_offline: Callable[[str], None] | None = None

    def register(self, session: OcppSession) -> OcppSession | None:
        """Make ``session`` the charge point's live one; returns the one it replaced (its CALL
        has failed; closing its connection is the caller's)."""
        old = self._sessions.get(session.charge_point_id)
        self._sessions[session.charge_point_id] = session
        if old is not None:
            old.close("was replaced by a new connection")
        if self.on_online is not None:
            self.on_online(session.charge_point_id)
        return old

    def unregister(self, session: OcppSession) -> bool:
        """Forget ``session`` if it is still the live one; True if it was."""
        session.close("disconnected")
        if self._sessions.get(session.charge_point_id) is session:
            del self._sessions[session.charge_point_id]
            if self.on_offline is not None:
                self.on_offline(session.charge_point_id)
            return True
        return False

    def session(self, charge_point_id: str) -> OcppSession | None:
        return self._sessions.get(charge_point_id)

    def is_online(self, charge_point_id: str) -> bool:
        return charge_point_id in self._sessions

    def online_count(self) -> int:
        return len(self._sessions)

    async def call(
        self, charge_point_id: str, action: str, payload: dict[str, Any]
    ) -> dict[str, Any]:
        check_request(action, payload)
        session = self._sessions.get(charge_point_id)
        if session is None:
            raise ChargePointOffline(
                f"Charge point {charge_point_id} is not connected",
                {"chargePointId": charge_point_id},
            )
        if session.queued >= self.max_queued:
            raise ChargePointBusy(
                f"Too many commands waiting for {charge_point_id}",
                {"chargePointId": charge_point_id, "limit": self.max_queued},
            )
        session.queued += 1
        self.calls_out[action] = self.calls_out.get(action, 0) + 1
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.call_timeout):
                return await session.call(action, payload)
        except ChargePointError as exc:
            code = str(exc.details.get("ocppErrorCode", ""))
            if code:
                self.call_errors_received[code] = self.call_errors_received.get(code, 0) + 1
            raise
        except TimeoutError:
            raise ChargePointTimeout(
                f"Charge point {charge_point_id} did not answer {action} "
                f"within {self.call_timeout:g} s",
                {"chargePointId": charge_point_id, "action": action},
            ) from None
        finally:
            session.queued -= 1
            if self.on_call_latency is not None:
                self.on_call_latency(action, time.monotonic() - started)

    async def remote_start(self, charge_point_id: str, connector_id: int, id_tag: str) -> str:
        reply = await self.call(
            charge_point_id,
            "RemoteStartTransaction",
            {"connectorId": connector_id, "idTag": id_tag},
        )
        return str(reply["status"])

    async def remote_stop(self, charge_point_id: str, transaction_id: int) -> str:
        reply = await self.call(
            charge_point_id, "RemoteStopTransaction", {"transactionId": transaction_id}
        )
        return str(reply["status"])
