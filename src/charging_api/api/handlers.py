"""App requests -> core calls -> reply ``data``: one handler per request type, in :data:`ROUTES`.

A handler gets the door's shared parts (:class:`Door`), the connection it serves, the decoded
request and ``now`` (epoch seconds, when the frame arrived). It returns the reply's ``data``
(None: nothing to send) or raises a :class:`~charging_api.errors.ChargingApiError`, which the
server turns into the ``*_response`` failure or the ``error`` message. Decisions about who may do
what live in the core (:class:`ChargingService`) and the session (:class:`AppSession`); the
handlers only translate.

Adding a request type: its data model and ``REQUESTS`` entry in ``api/messages.py`` (the wire
contract), a handler here, and one :data:`ROUTES` entry; ``concurrent=True`` for requests that
wait on a charge point (they run beside the connection's other requests, bounded by
``MAX_PENDING_REQUESTS``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

import orjson
from pydantic import BaseModel

from charging_api.api import messages as m
from charging_api.api import protocol
from charging_api.api.auth import TokenVerifier
from charging_api.api.hub import Hub
from charging_api.api.session import AppSession
from charging_api.domain.charging import ChargingService
from charging_api.domain.local_list import LocalListSync
from charging_api.domain.models import DeviceJob, Principal
from charging_api.domain.operations import OperatorService
from charging_api.domain.profiles import ChargingProfiles
from charging_api.domain.reservations import ReservationBook
from charging_api.domain.sessions import Limits, SessionService, check_limits, history_csv
from charging_api.domain.webhooks import WebhookService
from charging_api.errors import Forbidden, InternalError, ResyncRequired, ValidationFailed

Data = dict[str, Any]


class Connection(Protocol):
    """What a handler may do with the connection it serves."""

    @property
    def session(self) -> AppSession: ...

    def deliver(self, frame: bytes, droppable: bool) -> None: ...

    def replay(self, frames: list[bytes]) -> None: ...


@dataclass(frozen=True, slots=True)
class Door:
    """The app door's shared parts, as handlers see them."""

    service: ChargingService
    verifier: TokenVerifier
    #: The push fan-out; its ``epoch`` names the push numbering (``auth_response.epoch``).
    hub: Hub
    #: The operator side (``operation_request``); None where no charge point door runs.
    operator: OperatorService | None = None
    #: Operator state (reservations, local lists, charging profiles); None in a door built
    #: without it (its requests then answer INTERNAL_ERROR).
    ops: OperatorState | None = None
    #: Limits, receipts, history and tariffs (issue 13); None in tests of the door alone.
    sessions: SessionService | None = None
    #: Webhook endpoints, outbox and delivery log (admins).
    webhooks: WebhookService | None = None


@dataclass(frozen=True, slots=True)
class OperatorState:
    reservations: ReservationBook
    profiles: ChargingProfiles
    local_list: LocalListSync


def _ops(door: Door) -> OperatorState:
    if door.ops is None:
        raise InternalError("Operator state is not configured on this server")
    return door.ops


Handler = Callable[[Door, Connection, protocol.Request, float], Awaitable[Data | None]]


@dataclass(frozen=True, slots=True)
class Route:
    handler: Handler
    #: Runs beside the connection's other requests (it waits on a charge point).
    concurrent: bool = False
    #: Fields a failed ``*_response`` repeats from the request (e.g. its connectorId).
    failure_fields: tuple[str, ...] = ()


def _principal(conn: Connection) -> Principal:
    principal = conn.session.principal
    assert principal is not None  # AppSession.receive lets only authenticated requests through
    return principal


def start_request_key(request: protocol.Request) -> str:
    """The core's idempotency key for a start: the request's type and id, and a hash of its
    envelope ``timestamp`` and canonical ``data`` (the core adds the user).

    A retry is the same message sent again (same id, timestamp and data). A repeated id with
    other content is a new request: both the seed's client and ours number their messages per
    connection, so ids repeat across sessions; the timestamp tells apart two identical starts
    made at different moments (a second page load sends the same id and data again).
    """
    content = orjson.dumps(
        {"timestamp": request.timestamp, "data": request.data.model_dump(mode="json")},
        option=orjson.OPT_SORT_KEYS,
    )
    digest = hashlib.sha256(content).hexdigest()
    return f"{request.type}:{orjson.dumps(request.id).decode()}:{digest}"


# ------------------------------------------------------------------------------ handlers


async def auth(door: Door, conn: Connection, request: protocol.Request, now: float) -> Data:
    """Verify the token; then attach the connection to the user's stream (first login) and
    recompute what it may see (a user-role connection ends the stream's admin view)."""
    data = request.data
    assert isinstance(data, m.AuthRequest)
    principal = door.verifier.verify(data.token)
    session = conn.session
    hub = door.hub
    login = session.authenticate(
        principal,
        now,
        claimed_user=data.userId,
        open_sessions=hub.session_count_of(principal.user_id),
        seq=await hub.current_seq(principal.user_id),
    )
    if login.first:
        await hub.attach(principal.user_id, conn)
    await hub.set_role(principal.user_id, conn, admin=principal.is_admin)
    if data.sessionEvents is not None:
        await hub.set_session_pushes(principal.user_id, data.sessionEvents)
    assert session.session_id is not None and session.expires_at is not None
    return protocol.auth_reply(
        principal,
        session.session_id,
        session.expires_at,
        await hub.current_seq(principal.user_id),
        hub.epoch,
    )


async def start(door: Door, conn: Connection, request: protocol.Request, now: float) -> Data:
    data = request.data
    assert isinstance(data, m.StartChargingRequest)
    limits = _limits(data.limits)
    if limits is not None:
        check_limits(limits)  # refused before the charge point is asked
    principal = _principal(conn)
    outcome = await door.service.start(
        principal,
        data.chargePointId,
        data.connectorId,
        id_tag=data.idTag,
        user_id=data.userId,
        request_key=start_request_key(request),
    )
    reply = protocol.start_reply(outcome)
    if limits is not None and door.sessions is not None:
        applied = await door.sessions.set_limits(principal, outcome.transaction_id, limits)
        reply["limits"] = applied["limits"]
        reply["socEnforced"] = applied["socEnforced"]
    return reply


def _limits(data: m.LimitsData | None) -> Limits | None:
    if data is None:
        return None
    return Limits(
        data.energyKWh,
        data.soc,
        None if data.cost is None else Decimal(str(data.cost)),
        data.durationMinutes,
    )


def _sessions(door: Door) -> SessionService:
    if door.sessions is None:  # pragma: no cover - the composition root always sets it
        raise InternalError("session features are not configured")
    return door.sessions


async def set_limits(door: Door, conn: Connection, request: protocol.Request, now: float) -> Data:
    """Change a running session's limits (owner or admin)."""
    data = request.data
    assert isinstance(data, m.SetLimitsRequest)
    limits = _limits(data.limits)
    assert limits is not None
    return await _sessions(door).set_limits(_principal(conn), data.transactionId, limits)


async def get_receipt(door: Door, conn: Connection, request: protocol.Request, now: float) -> Data:
    """A finished session's receipt, and the same as an OCPI 2.2.1 CDR."""
    data = request.data
    assert isinstance(data, m.GetReceiptRequest)
    return await _sessions(door).get_receipt(_principal(conn), data.transactionId)


async def get_history(door: Door, conn: Connection, request: protocol.Request, now: float) -> Data:
    """Sessions with filters, paging and monthly aggregates; ``format: csv`` adds CSV text."""
    data = request.data
    assert isinstance(data, m.GetHistoryRequest)
    found = await _sessions(door).history(
        _principal(conn),
        user_id=data.userId,
        charge_point_id=data.chargePointId,
        since=data.since,
        until=data.until,
        offset=data.offset,
        limit=data.limit,
    )
    if data.format == "csv":
        found["csv"] = history_csv(found["sessions"])
    return found


async def tariffs(door: Door, conn: Connection, request: protocol.Request, now: float) -> Data:
    """Admins: list, put, delete and assign tariffs (``action``)."""
    data = request.data
    assert isinstance(data, m.TariffsRequest)
    principal = _principal(conn)
    sessions = _sessions(door)
    if data.action == "put":
        if data.tariff is None:
            raise ValidationFailed("put needs a tariff", {"field": "tariff"})
        await sessions.put_tariff(principal, data.tariff)
    elif data.action == "delete":
        if data.tariffId is None:
            raise ValidationFailed("delete needs a tariffId", {"field": "tariffId"})
        await sessions.delete_tariff(principal, data.tariffId)
    elif data.action == "assign":
        if data.scope is None:
            raise ValidationFailed("assign needs a scope", {"field": "scope"})
        await sessions.assign_tariff(principal, data.scope, data.tariffId)
    return await sessions.tariffs(principal)


async def stop(door: Door, conn: Connection, request: protocol.Request, now: float) -> Data:
    data = request.data
    assert isinstance(data, m.StopChargingRequest)
    outcome = await door.service.stop(
        _principal(conn),
        data.chargePointId,
        data.transactionId,
        user_id=data.userId,
        reason=data.reason,
    )
    return protocol.stop_reply(outcome)


async def close_transaction(
    door: Door, conn: Connection, request: protocol.Request, now: float
) -> Data:
    """An admin closes a transaction by hand (a ghost session the charge point forgot)."""
    data = request.data
    assert isinstance(data, m.CloseTransactionRequest)
    closed = await door.service.close_transaction(
        _principal(conn), data.transactionId, data.meterStopWh
    )
    return protocol.close_reply(closed)


async def resume(door: Door, conn: Connection, request: protocol.Request, now: float) -> Data:
    """Replay the pushes after ``lastSeq``, or RESYNC_REQUIRED when they cannot be proven to
    be the ones the client missed: another process numbered them (``epoch`` differs), the
    history no longer holds them, or, without ``epoch``, ``lastSeq`` is older than this
    connection (it may come from before a restart)."""
    data = request.data
    assert isinstance(data, m.ResumeRequest)
    user = _principal(conn).user_id
    hub = door.hub
    trusted = (
        data.epoch == hub.epoch if data.epoch is not None else conn.session.covers(data.lastSeq)
    )
    frames = await hub.missed_since(user, data.lastSeq) if trusted else None
    current = await hub.current_seq(user)
    if frames is None:
        raise ResyncRequired(
            "Missed updates are no longer available; send get_state",
            {"currentSeq": current, "epoch": hub.epoch},
        )
    conn.replay(frames)
    return protocol.resume_reply(len(frames), current)


async def get_state(door: Door, conn: Connection, request: protocol.Request, now: float) -> Data:
    principal = _principal(conn)
    state = await door.service.state_of(principal)
    return protocol.state_reply(await door.hub.current_seq(principal.user_id), state)


async def subscribe(door: Door, conn: Connection, request: protocol.Request, now: float) -> Data:
    """Admin watching of charge points (``subscribe`` and ``unsubscribe``)."""
    data = request.data
    assert isinstance(data, m.SubscribeRequest | m.UnsubscribeRequest)
    principal = _principal(conn)
    if not principal.is_admin:
        raise Forbidden("Only admin tokens may watch charge points")
    cps = None if data.chargePointIds == "*" else list(data.chargePointIds)
    if isinstance(data, m.SubscribeRequest):
        watching = await door.hub.subscribe(principal.user_id, cps)
    else:
        watching = await door.hub.unsubscribe(principal.user_id, cps)
    return protocol.watching_reply(watching)


async def get_transactions(
    door: Door, conn: Connection, request: protocol.Request, now: float
) -> Data:
    data = request.data
    assert isinstance(data, m.GetTransactionsRequest)
    txs = await door.service.history_of(_principal(conn), data.limit)
    return protocol.transactions_reply(txs)


async def get_meter_values(
    door: Door, conn: Connection, request: protocol.Request, now: float
) -> Data:
    data = request.data
    assert isinstance(data, m.GetMeterValuesRequest)
    stored = await door.service.meter_samples_of(_principal(conn), data.transactionId)
    return protocol.meter_values_reply(data.transactionId, [s.sample for s in stored])


async def operation(door: Door, conn: Connection, request: protocol.Request, now: float) -> Data:
    """An admin's OCPP operation: the charge point's answer payload, or its error."""
    data = request.data
    assert isinstance(data, m.OperationRequest)
    response = await _operator(door).execute(
        _principal(conn), data.chargePointId, data.action, dict(data.payload), force=data.force
    )
    return protocol.operation_reply(data.chargePointId, data.action, response)


def _operator(door: Door) -> OperatorService:
    if door.operator is None:
        raise InternalError("Operations are not available on this server")
    return door.operator


async def want_configuration(
    door: Door, conn: Connection, request: protocol.Request, now: float
) -> Data:
    data = request.data
    assert isinstance(data, m.WantConfigurationRequest)
    await _operator(door).want_configuration(
        _principal(conn), data.chargePointId, data.key, data.value
    )
    return protocol.want_configuration_reply(data.chargePointId, data.key, data.value)


async def charge_point_details(
    door: Door, conn: Connection, request: protocol.Request, now: float
) -> Data:
    data = request.data
    assert isinstance(data, m.GetChargePointDetailsRequest)
    operator, principal, cp = _operator(door), _principal(conn), data.chargePointId
    return protocol.charge_point_details_reply(
        cp,
        await operator.configuration_of(principal, cp),
        await operator.availability_of(principal, cp),
        await operator.device_statuses_of(principal, cp, DeviceJob.FIRMWARE, 20),
        await operator.device_statuses_of(principal, cp, DeviceJob.DIAGNOSTICS, 20),
    )


async def get_operations(
    door: Door, conn: Connection, request: protocol.Request, now: float
) -> Data:
    data = request.data
    assert isinstance(data, m.GetOperationsRequest)
    records = await _operator(door).operations_log(
        _principal(conn),
        charge_point_id=data.chargePointId,
        limit=data.limit,
        before_id=data.beforeId,
    )
    return protocol.operations_reply(records)


async def reserve(door: Door, conn: Connection, request: protocol.Request, now: float) -> Data:
    """Reserve a connector for one's own id tag (admins: any registered tag)."""
    data = request.data
    assert isinstance(data, m.ReserveRequest)
    reservation = await _ops(door).reservations.reserve(
        _principal(conn), data.chargePointId, data.connectorId, data.idTag, data.expiryMinutes
    )
    return {"success": True, "reservation": protocol.reservation_to_wire(reservation)}


async def cancel_reservation(
    door: Door, conn: Connection, request: protocol.Request, now: float
) -> Data:
    data = request.data
    assert isinstance(data, m.CancelReservationRequest)
    ended, cp_status = await _ops(door).reservations.cancel(_principal(conn), data.reservationId)
    return {
        "success": True,
        "reservation": protocol.reservation_to_wire(ended),
        "chargePointStatus": cp_status,
    }


async def set_power_limit(
    door: Door, conn: Connection, request: protocol.Request, now: float
) -> Data:
    """The session's owner limits its power (a TxProfile on the charge point)."""
    data = request.data
    assert isinstance(data, m.SetPowerLimitRequest)
    done = await _ops(door).profiles.set_power_limit(
        _principal(conn), data.transactionId, data.limit, data.unit
    )
    return {
        "success": True,
        "transactionId": done.transaction_id,
        "chargePointId": done.charge_point_id,
        "connectorId": done.connector_id,
        "chargingProfileId": done.profile_id,
        "limitA": done.limit_a,
        "limitKW": done.limit_kw,
        "phases": done.electrical.phases,
        "voltage": done.electrical.voltage,
        "electricalSource": done.source,
    }


async def sync_local_list(
    door: Door, conn: Connection, request: protocol.Request, now: float
) -> Data:
    """Admins: bring one charge point's local list (or every one's) up to date."""
    data = request.data
    assert isinstance(data, m.SyncLocalListRequest)
    sync = _ops(door).local_list
    principal = _principal(conn)
    if data.chargePointId == "*":
        results = await sync.sync_all(principal, data.full)
    else:
        results = [await sync.sync(principal, data.chargePointId, data.full)]
    return {
        "success": True,
        "results": [
            {
                "chargePointId": r.charge_point_id,
                "updateType": r.update_type,
                "status": r.status,
                "listVersion": r.version,
                "entries": r.entries,
            }
            for r in results
        ],
    }


async def webhooks(door: Door, conn: Connection, request: protocol.Request, now: float) -> Data:
    """Admins: webhook endpoints (list, put, delete), the delivery log, redelivery."""
    data = request.data
    assert isinstance(data, m.WebhooksRequest)
    if door.webhooks is None:  # pragma: no cover - the composition root always sets it
        raise InternalError("webhooks are not configured")
    principal = _principal(conn)
    hooks = door.webhooks
    if data.action == "put":
        if data.endpoint is None:
            raise ValidationFailed("put needs an endpoint", {"field": "endpoint"})
        await hooks.put_endpoint(principal, data.endpoint)
    elif data.action == "delete":
        if data.endpointId is None:
            raise ValidationFailed("delete needs an endpointId", {"field": "endpointId"})
        await hooks.delete_endpoint(principal, data.endpointId)
    elif data.action == "redeliver":
        if data.eventId is None:
            raise ValidationFailed("redeliver needs an eventId", {"field": "eventId"})
        await hooks.redeliver(principal, data.eventId)
    return {
        "endpoints": await hooks.endpoints(principal),
        "pending": await hooks.pending(principal),
        "deliveries": await hooks.deliveries(principal, data.limit),
    }


#: Request type -> how it is served (``heartbeat`` is answered by the session itself).
ROUTES: dict[str, Route] = {
    "auth_request": Route(auth),
    "start_charging_request": Route(start, concurrent=True, failure_fields=("connectorId",)),
    "stop_charging_request": Route(stop, concurrent=True, failure_fields=("transactionId",)),
    "resume": Route(resume),
    "get_state": Route(get_state),
    "subscribe": Route(subscribe),
    "unsubscribe": Route(subscribe),
    "get_transactions": Route(get_transactions),
    "get_meter_values": Route(get_meter_values),
    "close_transaction_request": Route(close_transaction, failure_fields=("transactionId",)),
    "operation_request": Route(
        operation, concurrent=True, failure_fields=("chargePointId", "action")
    ),
    "want_configuration_request": Route(
        want_configuration, failure_fields=("chargePointId", "key")
    ),
    "get_charge_point_details": Route(charge_point_details),
    "get_operations": Route(get_operations),
    "reserve_request": Route(
        reserve, concurrent=True, failure_fields=("chargePointId", "connectorId")
    ),
    "cancel_reservation_request": Route(
        cancel_reservation, concurrent=True, failure_fields=("reservationId",)
    ),
    "set_power_limit_request": Route(
        set_power_limit, concurrent=True, failure_fields=("transactionId",)
    ),
    "sync_local_list_request": Route(
        sync_local_list, concurrent=True, failure_fields=("chargePointId",)
    ),
    "set_limits_request": Route(set_limits, failure_fields=("transactionId",)),
    "get_receipt": Route(get_receipt, failure_fields=("transactionId",)),
    "get_history": Route(get_history),
    "tariffs_request": Route(tariffs),
    "webhooks_request": Route(webhooks),
}

#: The request types that run beside others (for :class:`AppSession`).
CONCURRENT = frozenset(kind for kind, route in ROUTES.items() if route.concurrent)


def failure_extra(route: Route, data: BaseModel) -> Data:
    """The request fields a failed ``*_response`` repeats."""
    return {name: getattr(data, name) for name in route.failure_fields}
