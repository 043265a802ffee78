"""Routing: an api node's charge-point-bound work is carried out by the owner gateway.

Two ways across (both :mod:`.commands` over Redis):

- :class:`RemoteGateway` is the api node's ``ChargerGateway``: each CALL becomes a ``call``
  command the owner executes through its own ``OcppGateway`` (schemas, the one-CALL queue,
  the call time-out), with the same errors as in one process. ``is_online`` and
  ``online_count`` read the :class:`~.owners.OwnerMirror` (synchronous, cluster-wide).
- the **routed services** (:class:`RoutedChargingService`, :class:`RoutedOperatorService`,
  :class:`RoutedReservationBook`, :class:`RoutedSessionService`) are thin subclasses the
  composition root builds on api nodes in place of the core's classes. The calls whose state
  lives with the charge point's live session (pending starts and their idempotency keys, the
  live transaction picture, reservation holds and timers, session limits) are forwarded whole,
  with the principal, to the owner gateway and executed there by the *same* core method
  (:func:`gateway_handlers` is the table the gateway's :class:`~.commands.CommandServer`
  runs them from); the answer or the same error subclass comes back. Everything else (reads,
  store-only writes, and calls whose state is all in the store: ``set_power_limit``,
  ``sync``, ``want_configuration``) runs on the api node, its CALLs through
  :class:`RemoteGateway`.

When the charge point has no owner, the routed methods fall back to the core's own method on
the api node, which answers exactly as one process does for an offline charge point
(``CHARGE_POINT_NOT_FOUND`` for an unknown one, ``CHARGE_POINT_OFFLINE``, ``FORBIDDEN``,
``TRANSACTION_NOT_FOUND`` ...), and an admin's ``close_transaction`` of a session whose charge
point is gone still closes it (in the store, as ``transactions close`` does without a server).

The core keeps no cluster import: these classes live here and only the composition root
picks them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from charging_api.cluster.commands import CommandClient, CommandServer, Handler
from charging_api.cluster.listen import connect
from charging_api.cluster.owners import OwnerMirror, OwnerRegistry
from charging_api.cluster.wire import decode, encode, principal_from_wire, principal_to_wire
from charging_api.domain import access
from charging_api.domain.charging import ChargingService, StartOutcome, StopOutcome
from charging_api.domain.models import Principal, Reservation, ReservationStatus, Transaction
from charging_api.domain.operations import OperatorService
from charging_api.domain.ports import ChargerGateway
from charging_api.domain.reservations import ReservationBook
from charging_api.domain.sessions import Limits, SessionService
from charging_api.ocpp.gateway import OcppGateway

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Budgets:
    """How long an api node waits for each kind of routed work (seconds): at least the
    work's own time-out on the gateway plus ``margin`` for the two Redis hops. Fill from
    Settings: ``ocpp_call_timeout`` and ``start_transaction_timeout``."""

    call_timeout: float = 10.0
    start_transaction_timeout: float = 20.0
    margin: float = 3.0

    @property
    def call(self) -> float:
        return self.call_timeout + self.margin

    @property
    def start(self) -> float:
        return self.call_timeout + self.start_transaction_timeout + self.margin


class RemoteGateway:
    """``ChargerGateway`` of an api node: CALLs go to the owner gateway (module docstring)."""

    def __init__(self, client: CommandClient, owners: OwnerMirror, budgets: Budgets) -> None:
        self._client = client
        self._owners = owners
        self._budgets = budgets

    def is_online(self, charge_point_id: str) -> bool:
        return self._owners.is_online(charge_point_id)

    def online_count(self) -> int:
        return self._owners.count()

    async def call(
        self, charge_point_id: str, action: str, payload: dict[str, Any]
    ) -> dict[str, Any]:
        result = await self._client.send(
            charge_point_id, "call", {"action": action, "payload": payload}, self._budgets.call
        )
        return dict(result)

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


class RoutedChargingService(ChargingService):
    """An api node's ``ChargingService``: start, stop and close_transaction run on the owner
    gateway. It keeps no live picture (:meth:`load` reads nothing; its timers must not run):
    the gateways hold it."""

    def __init__(self, *args: Any, client: CommandClient, budgets: Budgets, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._client = client
        self._budgets = budgets

    async def load(self) -> None:
        """Nothing: the live picture lives on the gateways (a copy here would go stale)."""

    async def start(
        self,
        principal: Principal,
        charge_point_id: str,
        connector_id: int,
        id_tag: str | None = None,
        user_id: str | None = None,
        request_key: str | None = None,
    ) -> StartOutcome:
        owner = await self._client.owner_of(charge_point_id)
        if owner is None:
            return await super().start(
                principal, charge_point_id, connector_id, id_tag, user_id, request_key
            )
        body = {
            "principal": principal_to_wire(principal),
            "connectorId": connector_id,
            "idTag": id_tag,
            "userId": user_id,
            "requestKey": request_key,
        }
        result = await self._client.send(
            charge_point_id, "charging.start", body, self._budgets.start, owner
        )
        return decode(StartOutcome, result)

    async def stop(
        self,
        principal: Principal,
        charge_point_id: str | None,
        transaction_id: int,
        user_id: str | None = None,
        reason: str | None = None,
    ) -> StopOutcome:
        tx = await self._store.get_transaction(transaction_id)
        owner = None
        if (
            tx is not None
            and tx.active
            and access.may_act_as(principal, user_id)
            and access.may_stop(principal, tx.user_id)
            and charge_point_id in (None, tx.charge_point_id)
        ):
            owner = await self._client.owner_of(tx.charge_point_id)
        if tx is None or owner is None:
            # Refused, missing, ended or offline: the core's own answers, no CALL.
            return await super().stop(principal, charge_point_id, transaction_id, user_id, reason)
        body = {
            "principal": principal_to_wire(principal),
            "requestedChargePointId": charge_point_id,
            "transactionId": transaction_id,
            "userId": user_id,
            "reason": reason,
        }
        result = await self._client.send(
            tx.charge_point_id, "charging.stop", body, self._budgets.call, owner
        )
        return decode(StopOutcome, result)

    async def close_transaction(
        self, principal: Principal, transaction_id: int, meter_stop_wh: int | None = None
    ) -> Transaction:
        tx = await self._store.get_transaction(transaction_id) if principal.is_admin else None
        owner = None
        if tx is not None and tx.active:
            owner = await self._client.owner_of(tx.charge_point_id)
        if tx is None or owner is None:
            return await super().close_transaction(principal, transaction_id, meter_stop_wh)
        body = {
            "principal": principal_to_wire(principal),
            "transactionId": transaction_id,
            "meterStopWh": meter_stop_wh,
        }
        result = await self._client.send(
            tx.charge_point_id, "charging.close", body, self._budgets.call, owner
        )
        return decode(Transaction, result)


class RoutedOperatorService(OperatorService):
    """An api node's ``OperatorService``: ``execute`` runs on the owner gateway (its rules
    read the live picture there); an offline charge point is answered and logged here."""

    def __init__(self, *args: Any, client: CommandClient, budgets: Budgets, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._client = client
        self._budgets = budgets

    async def execute(
        self,
        principal: Principal,
        charge_point_id: str,
        action: str,
        payload: dict[str, Any],
        *,
        force: bool = False,
    ) -> dict[str, Any]:
        owner = await self._client.owner_of(charge_point_id) if principal.is_admin else None
        if owner is None:
            return await super().execute(principal, charge_point_id, action, payload, force=force)
        body = {
            "principal": principal_to_wire(principal),
            "action": action,
            "payload": payload,
            "force": force,
        }
        result = await self._client.send(
            charge_point_id, "operator.execute", body, self._budgets.call, owner
        )
        return dict(result)


class RoutedReservationBook(ReservationBook):
    """An api node's ``ReservationBook``: reserve and cancel run on the owner gateway, which
    holds the reservation and its expiry timer. Do not ``load`` it on an api node."""

    def __init__(self, *args: Any, client: CommandClient, budgets: Budgets, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._client = client
        self._budgets = budgets

    async def listed(self, principal: Principal) -> list[Reservation]:
        """The gateways hold the books: read the active reservations from the store (those
        whose expiry passed while their gateway's timer had not yet run are left out)."""
        now = self._clock.now()
        return [
            r
            for r in await self._state.active_reservations()
            if r.expiry > now and (principal.is_admin or r.user_id == principal.user_id)
        ]

    async def reserve(
        self,
        principal: Principal,
        charge_point_id: str,
        connector_id: int,
        id_tag: str | None = None,
        expiry_minutes: int | None = None,
    ) -> Reservation:
        owner = await self._client.owner_of(charge_point_id)
        if owner is None:
            return await super().reserve(
                principal, charge_point_id, connector_id, id_tag, expiry_minutes
            )
        body = {
            "principal": principal_to_wire(principal),
            "connectorId": connector_id,
            "idTag": id_tag,
            "expiryMinutes": expiry_minutes,
        }
        result = await self._client.send(
            charge_point_id, "reservations.reserve", body, self._budgets.call, owner
        )
        return decode(Reservation, result)

    async def cancel(self, principal: Principal, reservation_id: int) -> tuple[Reservation, str]:
        held = await self._state.get_reservation(reservation_id)
        if (
            held is None
            or held.status is not ReservationStatus.ACTIVE
            or not (principal.is_admin or held.user_id == principal.user_id)
        ):
            return await super().cancel(principal, reservation_id)  # RESERVATION_NOT_FOUND
        owner = await self._client.owner_of(held.charge_point_id)
        if owner is None:
            # Nobody holds it live: end it here (the charge point is told CancelReservation
            # never; it frees the connector at expiryDate, as in one process).
            self._hold(held)
            return await super().cancel(principal, reservation_id)
        body = {"principal": principal_to_wire(principal), "reservationId": reservation_id}
        result = await self._client.send(
            held.charge_point_id, "reservations.cancel", body, self._budgets.call, owner
        )
        return decode(Reservation, result["reservation"]), str(result["chargePointStatus"])


class RoutedSessionService(SessionService):
    """An api node's ``SessionService``: ``set_limits`` runs on the owner gateway, where the
    session's figures are tracked from its meter values."""

    def __init__(self, *args: Any, client: CommandClient, budgets: Budgets, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._client = client
        self._budgets = budgets

    async def set_limits(
        self, principal: Principal, transaction_id: int, limits: Limits
    ) -> dict[str, Any]:
        tx = await self._store.get_transaction(transaction_id)
        owner = None
        if tx is not None and tx.active and (principal.is_admin or tx.user_id == principal.user_id):
            owner = await self._client.owner_of(tx.charge_point_id)
        if tx is None or owner is None:
            return await super().set_limits(principal, transaction_id, limits)
        body = {
            "principal": principal_to_wire(principal),
            "transactionId": transaction_id,
            "limits": encode(limits),
        }
        result = await self._client.send(
            tx.charge_point_id, "sessions.set_limits", body, self._budgets.call, owner
        )
        return dict(result)


def gateway_handlers(
    gateway: ChargerGateway,
    charging: ChargingService,
    operator: OperatorService | None = None,
    reservations: ReservationBook | None = None,
    sessions: SessionService | None = None,
) -> Mapping[str, Handler]:
    """What a gateway's ``CommandServer`` executes: each kind by the real object's method."""

    async def call(body: dict[str, Any]) -> Any:
        return await gateway.call(body["chargePointId"], body["action"], body["payload"])

    async def start(body: dict[str, Any]) -> Any:
        outcome = await charging.start(
            principal_from_wire(body["principal"]),
            body["chargePointId"],
            int(body["connectorId"]),
            body.get("idTag"),
            body.get("userId"),
            body.get("requestKey"),
        )
        return encode(outcome)

    async def stop(body: dict[str, Any]) -> Any:
        outcome = await charging.stop(
            principal_from_wire(body["principal"]),
            body.get("requestedChargePointId"),
            int(body["transactionId"]),
            body.get("userId"),
            body.get("reason"),
        )
        return encode(outcome)

    async def close(body: dict[str, Any]) -> Any:
        closed = await charging.close_transaction(
            principal_from_wire(body["principal"]),
            int(body["transactionId"]),
            body.get("meterStopWh"),
        )
        return encode(closed)

    handlers: dict[str, Handler] = {
        "call": call,
        "charging.start": start,
        "charging.stop": stop,
        "charging.close": close,
    }
    if operator is not None:

        async def execute(body: dict[str, Any]) -> Any:
            return await operator.execute(
                principal_from_wire(body["principal"]),
                body["chargePointId"],
                body["action"],
                body["payload"],
                force=bool(body.get("force")),
            )

        handlers["operator.execute"] = execute
    if reservations is not None:

        async def reserve(body: dict[str, Any]) -> Any:
            reservation = await reservations.reserve(
                principal_from_wire(body["principal"]),
                body["chargePointId"],
                int(body["connectorId"]),
                body.get("idTag"),
                body.get("expiryMinutes"),
            )
            return encode(reservation)

        async def cancel(body: dict[str, Any]) -> Any:
            ended, status = await reservations.cancel(
                principal_from_wire(body["principal"]), int(body["reservationId"])
            )
            return {"reservation": encode(ended), "chargePointStatus": status}

        handlers["reservations.reserve"] = reserve
        handlers["reservations.cancel"] = cancel
    if sessions is not None:

        async def set_limits(body: dict[str, Any]) -> Any:
            return await sessions.set_limits(
                principal_from_wire(body["principal"]),
                int(body["transactionId"]),
                decode(Limits, body["limits"]),
            )

        handlers["sessions.set_limits"] = set_limits
    return handlers


class GatewayRouting:
    """What a ``ROLE=gateway`` node runs for routing: its own Redis client, the
    :class:`~.owners.OwnerRegistry` on the ``OcppGateway``'s online/offline hooks, and the
    :class:`~.commands.CommandServer` executing ``handlers`` (:func:`gateway_handlers`).

    A charge point whose key another gateway took while its connection here stays open (a
    half-open socket the charge point has given up on) is disconnected here.

    Start before the OCPP door listens; close after the OCPP door has shut down (its
    disconnections queue the releases this writes before it stops).
    """

    def __init__(
        self,
        redis_url: str,
        node_id: str,
        owner_ttl: float,
        gateway: OcppGateway,
        handlers: Mapping[str, Handler],
    ) -> None:
        self.redis = connect(redis_url)
        self.owners = OwnerRegistry(self.redis, node_id, owner_ttl)
        self.commands = CommandServer(self.redis, node_id, handlers)
        self._gateway = gateway
        gateway.on_online = self.owners.claim
        gateway.on_offline = self.owners.release
        self.owners.on_lost = self._drop_zombie
        self._closing: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self.commands.start()
        await self.owners.start()

    async def close(self) -> None:
        await self.owners.close()
        await self.commands.close()
        if self._closing:
            await asyncio.wait(set(self._closing), timeout=5.0)
        await self.redis.aclose()

    def _drop_zombie(self, charge_point_id: str) -> None:
        session = self._gateway.session(charge_point_id)
        if session is None:
            return
        log.warning(
            "closing the stale connection of %s (it is connected elsewhere)", charge_point_id
        )
        task = asyncio.ensure_future(session.disconnect())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)


class ApiRouting:
    """What a ``ROLE=api`` node runs for routing: its own Redis client, the
    :class:`~.commands.CommandClient`, the :class:`~.owners.OwnerMirror` (which tells the
    client when a charge point moves) and the :class:`RemoteGateway` (:attr:`gateway`) to
    give the core objects. Build the routed services with ``**routing.routed``.

    Start before the app door listens; close after it has shut down.
    """

    def __init__(
        self, redis_url: str, node_id: str, budgets: Budgets, mirror_refresh: float = 5.0
    ) -> None:
        self.redis = connect(redis_url)
        self.budgets = budgets
        self.client = CommandClient(self.redis, node_id)
        self.mirror = OwnerMirror(self.redis, mirror_refresh)
        self.mirror.listeners.append(self.client.owner_changed)
        self.gateway = RemoteGateway(self.client, self.mirror, budgets)

    @property
    def routed(self) -> dict[str, Any]:
        """The keyword arguments every routed service takes (``client``, ``budgets``)."""
        return {"client": self.client, "budgets": self.budgets}

    async def start(self) -> None:
        await self.client.start()
        await self.mirror.start()

    async def close(self) -> None:
        await self.mirror.close()
        await self.client.close()
        await self.redis.aclose()
