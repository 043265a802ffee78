"""Reservations: a connector held for one id tag until an expiry, kept by the central system.

OCPP 1.6 leaves the bookkeeping to the central system: it allocates the ``reservationId``,
sends ReserveNow/CancelReservation, and sees the reservation used when a StartTransaction
carries that id. :class:`ReservationBook` keeps the active reservations in memory (indexed by
connector, so an app's start checks them without a database read) and in storage (they
survive a restart: :meth:`ReservationBook.load`).

Rules:

* an app user reserves for one of their own id tags; an admin for any registered tag; the
  expiry is capped at ``max_minutes`` (a longer request is shortened, the reply says to when);
* one active reservation per connector: another tag's reservation there is
  CONNECTOR_RESERVED; the same tag's is replaced (same reservationId, new expiry);
* an app start on a reserved connector goes ahead only for the reserving tag, or a tag with
  the same ``parentIdTag`` (or the parent itself); others get CONNECTOR_RESERVED, without a
  RemoteStart;
* a StartTransaction naming the reservationId (or, for our own remote start, the start that
  passed the check) uses it up; its expiry (a core timer on :meth:`Clock.monotonic`) or a
  cancellation frees the connector; each change is a :class:`ReservationChanged` event (the
  holder's ``reservation_update`` push).

Trade-off: expiry is not sent to the charge point a second time: the charge point knows
``expiryDate`` and frees the connector itself; the server only stops honouring it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from charging_api.domain import access
from charging_api.domain.events import ReservationChanged
from charging_api.domain.models import (
    IdTag,
    IdTagStatus,
    Principal,
    Reservation,
    ReservationStatus,
    Transaction,
    id_tag_key,
    ocpp_datetime,
    same_id_tag,
)
from charging_api.domain.ports import ChargerGateway, Clock, EventBus, OpsStateStore, Store
from charging_api.errors import (
    ChargePointNotFound,
    ChargePointOffline,
    ChargePointRejected,
    ChargingApiError,
    ConnectorReserved,
    Forbidden,
    NoIdTag,
    ReservationNotFound,
    ValidationFailed,
)

log = logging.getLogger(__name__)

ConnectorKey = tuple[str, int]
#: After a failed expiry (storage down), try again this much later.
RETRY_AFTER = 5.0


class ReservationBook:
    """Active reservations, their expiry timers and the rules above (a ``StartRule`` and a
    ``TimerSource`` of :class:`~charging_api.domain.charging.ChargingService`)."""

    def __init__(
        self,
        store: Store,
        state: OpsStateStore,
        gateway: ChargerGateway,
        bus: EventBus,
        clock: Clock,
        max_minutes: int = 60,
    ) -> None:
        self._store = store
        self._state = state
        self._gateway = gateway
        self._bus = bus
        self._clock = clock
        self.max_minutes = max_minutes
        self._active: dict[int, Reservation] = {}
        self._on_connector: dict[ConnectorKey, int] = {}
        self._deadlines: dict[int, float] = {}
        #: Called when a new deadline is armed (``ChargingService.wake_timers``).
        self.wake: Callable[[], None] | None = None

    async def load(self) -> None:
        """Rebuild the active reservations from storage; the past-due ones expire at the
        next timer run."""
        for reservation in await self._state.active_reservations():
            self._hold(reservation)
        log.info("loaded %d active reservations", len(self._active))

    # ----------------------------------------------------------------- queries

    def active(self, principal: Principal) -> list[Reservation]:
        """Active reservations: the user's own, or all for an admin."""
        return [
            r
            for _, r in sorted(self._active.items())
            if principal.is_admin or r.user_id == principal.user_id
        ]

    async def listed(self, principal: Principal) -> list[Reservation]:
        """What :meth:`active` says, for callers that may be on a node that does not hold the
        book (a cluster's api node overrides this to read the store)."""
        return self.active(principal)

    def on_connector(self, charge_point_id: str, connector_id: int) -> Reservation | None:
        reservation_id = self._on_connector.get((charge_point_id, connector_id))
        return None if reservation_id is None else self._active.get(reservation_id)

    # ----------------------------------------------------------------- reserve / cancel

    async def reserve(
        self,
        principal: Principal,
        charge_point_id: str,
        connector_id: int,
        id_tag: str | None = None,
        expiry_minutes: int | None = None,
    ) -> Reservation:
        """ReserveNow for ``id_tag`` (default: the user's first accepted tag); returns the
        active reservation. The charge point's refusal (Occupied, Faulted, Unavailable,
        Rejected) is CHARGE_POINT_REJECTED with ``details.status``; nothing stays held."""
        if expiry_minutes is not None and expiry_minutes < 1:
            raise ValidationFailed("expiryMinutes must be 1 or more", {"field": "expiryMinutes"})
        if connector_id < 0:
            raise ValidationFailed("connectorId must be 0 or more", {"field": "connectorId"})
        record = await self._choose_tag(principal, id_tag)
        minutes = min(expiry_minutes or self.max_minutes, self.max_minutes)
        await self._require_online(charge_point_id)
        key = (charge_point_id, connector_id)
        held = self.on_connector(charge_point_id, connector_id)
        if held is not None and not same_id_tag(held.id_tag, record.tag):
            raise _reserved(held)
        now = self._clock.now()
        expiry = now + timedelta(minutes=minutes)
        parent = record.parent_id_tag
        if held is not None:
            reservation = replace(held, expiry=expiry, made_by=principal.user_id)
        else:
            reservation = await self._state.add_reservation(
                Reservation(
                    0,
                    charge_point_id,
                    connector_id,
                    record.tag,
                    record.user_id,
                    expiry,
                    now,
                    principal.user_id,
                    parent,
                )
            )
        payload: dict[str, object] = {
            "connectorId": connector_id,
            "expiryDate": ocpp_datetime(expiry),
            "idTag": record.tag,
            "reservationId": reservation.id,
        }
        if parent is not None:
            payload["parentIdTag"] = parent
        try:
            answer = await self._gateway.call(charge_point_id, "ReserveNow", payload)
        except BaseException:
            if held is None:
                await self._end_quietly(reservation, ReservationStatus.CANCELLED)
            raise
        status = str(answer.get("status"))
        if status != "Accepted":
            if held is None:
                await self._end_quietly(reservation, ReservationStatus.CANCELLED)
            raise ChargePointRejected(
                f"Charge point refused the reservation ({status})",
                {"chargePointId": charge_point_id, "connectorId": connector_id, "status": status},
            )
        if held is not None:
            await self._state.update_reservation(reservation)
        self._hold(reservation)
        assert key in self._on_connector
        await self._publish(reservation)
        return reservation

    async def cancel(self, principal: Principal, reservation_id: int) -> tuple[Reservation, str]:
        """Free the connector and send CancelReservation. Returns the cancelled reservation
        and the charge point's answer (``Accepted``/``Rejected``, or ``Offline`` etc. when it
        could not be asked: the server stops honouring it all the same; the charge point
        frees the connector at ``expiryDate``). Another user's reservation answers exactly
        as an unknown one (RESERVATION_NOT_FOUND)."""
        held = self._active.get(reservation_id)
        if held is None or not (principal.is_admin or held.user_id == principal.user_id):
            raise ReservationNotFound(
                f"No active reservation {reservation_id}", {"reservationId": reservation_id}
            )
        try:
            answer = await self._gateway.call(
                held.charge_point_id, "CancelReservation", {"reservationId": reservation_id}
            )
            cp_status = str(answer.get("status"))
        except ChargingApiError as exc:
            cp_status = exc.code
        ended = await self._end(held, ReservationStatus.CANCELLED)
        return ended, cp_status

    # ----------------------------------------------------------------- an admin's ReserveNow

    async def check_operator_reserve(self, charge_point_id: str, payload: dict[str, Any]) -> None:
        """Before an admin's ReserveNow (OperatorService): CONNECTOR_RESERVED when another
        tag holds the connector; VALIDATION_ERROR when the reservationId is held elsewhere."""
        connector_id = int(payload["connectorId"])
        held = self.on_connector(charge_point_id, connector_id)
        if held is not None and not same_id_tag(held.id_tag, str(payload["idTag"])):
            raise _reserved(held)
        same_id = self._active.get(int(payload["reservationId"]))
        if same_id is not None and (same_id.charge_point_id, same_id.connector_id) != (
            charge_point_id,
            connector_id,
        ):
            raise ValidationFailed(
                f"reservationId {same_id.id} holds connector {same_id.connector_id} of "
                f"{same_id.charge_point_id}; cancel it or choose another id",
                {"reservationId": same_id.id},
            )

    async def adopt(
        self, principal: Principal, charge_point_id: str, payload: dict[str, Any]
    ) -> Reservation:
        """After an admin's ReserveNow the charge point Accepted: keep it as ours (its
        reservationId as the operator chose it; the holder is the tag's owner)."""
        record = await self._store.get_id_tag(str(payload["idTag"]))
        expiry = datetime.fromisoformat(str(payload["expiryDate"]).replace("Z", "+00:00"))
        if expiry.tzinfo is None:
            expiry = expiry.replace(tzinfo=UTC)
        reservation = Reservation(
            int(payload["reservationId"]),
            charge_point_id,
            int(payload["connectorId"]),
            record.tag if record is not None else str(payload["idTag"]),
            record.user_id if record is not None else None,
            expiry,
            self._clock.now(),
            principal.user_id,
            payload.get("parentIdTag") or (record.parent_id_tag if record else None),
        )
        replaced = self._active.get(reservation.id)
        if replaced is not None:
            self._unhold(replaced)
        await self._state.put_reservation(reservation)
        self._hold(reservation)
        await self._publish(reservation)
        return reservation

    async def cancelled_by_operator(self, reservation_id: int) -> None:
        """After an admin's CancelReservation (whatever the charge point answered: Rejected
        means it no longer has it either): the server stops honouring it."""
        held = self._active.get(reservation_id)
        if held is not None:
            await self._end(held, ReservationStatus.CANCELLED)

    # ----------------------------------------------------------------- StartRule

    async def check_start(
        self, principal: Principal, charge_point_id: str, connector_id: int, record: IdTag
    ) -> int | None:
        held = self.on_connector(charge_point_id, connector_id)
        if held is None:
            return None
        if not _may_use(held, record):
            raise _reserved(held)
        return held.id

    async def on_transaction_started(self, tx: Transaction, reservation_id: int | None) -> None:
        held = self._active.get(reservation_id) if reservation_id is not None else None
        if held is None or held.charge_point_id != tx.charge_point_id:
            # A charge point that did not name the id: the reservation on that connector
            # is used if the tag may use it.
            held = self.on_connector(tx.charge_point_id, tx.connector_id)
            if held is None:
                return  # no reservation here: nothing to read
            if not same_id_tag(held.id_tag, tx.id_tag):
                record = await self._store.get_id_tag(tx.id_tag)
                if record is None or not _may_use(held, record):
                    return
        await self._end(held, ReservationStatus.USED, tx.id)

    # ----------------------------------------------------------------- TimerSource

    def next_deadline(self) -> float | None:
        return min(self._deadlines.values(), default=None)

    async def fire_due(self, now: float) -> None:
        """Expire what is due; one whose end cannot be stored (storage down) is tried again
        :data:`RETRY_AFTER` seconds later, still held meanwhile."""
        for reservation_id, deadline in list(self._deadlines.items()):
            held = self._active.get(reservation_id)
            if deadline > now or held is None:
                continue
            try:
                await self._end(held, ReservationStatus.EXPIRED)
            except Exception:
                log.exception("expiring reservation %d failed; retrying", reservation_id)
                self._deadlines[reservation_id] = now + RETRY_AFTER

    # ----------------------------------------------------------------- helpers

    def _hold(self, reservation: Reservation) -> None:
        self._active[reservation.id] = reservation
        self._on_connector[(reservation.charge_point_id, reservation.connector_id)] = reservation.id
        left = (reservation.expiry - self._clock.now()).total_seconds()
        self._deadlines[reservation.id] = self._clock.monotonic() + max(left, 0.0)
        if self.wake is not None:
            self.wake()

    async def _end(
        self, held: Reservation, status: ReservationStatus, transaction_id: int | None = None
    ) -> Reservation:
        ended = replace(
            held, status=status, transaction_id=transaction_id, ended_at=self._clock.now()
        )
        await self._state.update_reservation(ended)
        self._unhold(held)
        await self._publish(ended)
        return ended

    def _unhold(self, held: Reservation) -> None:
        self._active.pop(held.id, None)
        self._deadlines.pop(held.id, None)
        key = (held.charge_point_id, held.connector_id)
        if self._on_connector.get(key) == held.id:
            del self._on_connector[key]

    async def _end_quietly(self, reservation: Reservation, status: ReservationStatus) -> None:
        """A reservation the charge point never took: stored as ended, nobody told."""
        try:
            await self._state.update_reservation(
                replace(reservation, status=status, ended_at=self._clock.now())
            )
        except Exception:
            log.exception("could not end refused reservation %d", reservation.id)

    async def _publish(self, r: Reservation) -> None:
        await self._bus.publish(
            ReservationChanged(
                r.charge_point_id,
                r.connector_id,
                r.id,
                r.user_id,
                r.id_tag,
                r.status.value,
                r.expiry,
                self._clock.now(),
                r.transaction_id,
            )
        )

    async def _require_online(self, charge_point_id: str) -> None:
        if self._gateway.is_online(charge_point_id):
            return
        if await self._store.get_charge_point(charge_point_id) is None:
            raise ChargePointNotFound(
                f"Charge point {charge_point_id} is not known", {"chargePointId": charge_point_id}
            )
        raise ChargePointOffline(
            f"Charge point {charge_point_id} is not connected", {"chargePointId": charge_point_id}
        )

    async def _choose_tag(self, principal: Principal, requested: str | None) -> IdTag:
        """The tag to reserve for, as registered: a user's own (named, from the token, or
        registered to them); an admin names any registered tag. It must be Accepted now."""
        now = self._clock.now()
        if requested is not None:
            record = await self._store.get_id_tag(requested)
            if not access.may_use_id_tag(principal, principal.user_id, requested, record):
                raise Forbidden("This id tag does not belong to you", {"idTag": requested})
            if record is None:
                if principal.is_admin:
                    raise NoIdTag(f"Id tag {requested} is not registered", {"idTag": requested})
                record = IdTag(requested, principal.user_id)  # named in the signed token
                await self._store.put_id_tag(record)
            verdict = access.verdict_for(record, now)
            if verdict.status is not IdTagStatus.ACCEPTED:
                raise Forbidden(
                    f"Id tag {record.tag} may not reserve: it is {verdict.status.value}",
                    {"idTag": record.tag, "idTagStatus": verdict.status.value},
                )
            return record
        if principal.is_admin:
            raise NoIdTag("Name the idTag to reserve for", {"userId": principal.user_id})
        for tag in sorted(principal.id_tags):
            found = await self._store.get_id_tag(tag)
            if found is None:
                found = IdTag(tag, principal.user_id)
                await self._store.put_id_tag(found)
            if found.user_id in (None, principal.user_id) and (
                access.verdict_for(found, now).status is IdTagStatus.ACCEPTED
            ):
                return found
        for found in await self._store.id_tags_of(principal.user_id):
            if access.verdict_for(found, now).status is IdTagStatus.ACCEPTED:
                return found
        raise NoIdTag("No id tag to reserve with", {"userId": principal.user_id})


def _may_use(held: Reservation, record: IdTag) -> bool:
    """The reserving tag, its parent, or a tag with the same parent may use a reservation."""
    if same_id_tag(held.id_tag, record.tag):
        return True
    parent = record.parent_id_tag
    if parent is None:
        return False
    key = id_tag_key(parent)
    return key == id_tag_key(held.id_tag) or (
        held.parent_id_tag is not None and key == id_tag_key(held.parent_id_tag)
    )


def _reserved(held: Reservation) -> ConnectorReserved:
    return ConnectorReserved(
        f"Connector {held.connector_id} of {held.charge_point_id} is reserved for another "
        f"id tag until {ocpp_datetime(held.expiry)}",
        {
            "chargePointId": held.charge_point_id,
            "connectorId": held.connector_id,
            "expiryDate": ocpp_datetime(held.expiry),
        },
    )
