"""The operator state's rules on the admin path: hooks registered with
:meth:`OperatorService.add_rule`, so an admin's raw OCPP operation keeps the same books as
the app's requests do.

- ``ReserveNow``: refused before the CALL when another tag holds the connector in our books
  (CONNECTOR_RESERVED) or the reservationId holds another connector; an ``Accepted`` answer
  makes it one of ours (expiry timer, pushes to the tag's owner, start rule, stored).
- ``CancelReservation``: after any answer, the server stops honouring it.
- ``SendLocalList``: an ``Accepted`` update becomes the charge point's installed list and
  version, so the next differential sync starts from it.
- ``SetChargingProfile``: an ``Accepted`` profile is stored and listed (a TxProfile is cleared
  when its session ends); ``ClearChargingProfile`` ``Accepted`` forgets what it matched.
"""

from __future__ import annotations

from typing import Any

from charging_api.domain.local_list import LocalListSync
from charging_api.domain.operations import Operation, OperatorService
from charging_api.domain.profiles import ChargingProfiles
from charging_api.domain.reservations import ReservationBook

Payload = dict[str, Any]


def install(
    operator: OperatorService,
    reservations: ReservationBook,
    profiles: ChargingProfiles,
    local_list: LocalListSync,
) -> None:
    """Register the hooks above on ``operator``."""

    async def before_reserve(op: Operation) -> None:
        await reservations.check_operator_reserve(op.charge_point_id, op.payload)

    async def after_reserve(op: Operation, response: Payload) -> None:
        if response.get("status") == "Accepted" and op.principal is not None:
            await reservations.adopt(op.principal, op.charge_point_id, op.payload)

    async def after_cancel(op: Operation, response: Payload) -> None:
        await reservations.cancelled_by_operator(int(op.payload["reservationId"]))

    async def after_send_local_list(op: Operation, response: Payload) -> None:
        if response.get("status") == "Accepted":
            await local_list.record_sent(op.charge_point_id, op.payload)

    async def after_set_profile(op: Operation, response: Payload) -> None:
        if response.get("status") == "Accepted" and op.principal is not None:
            await profiles.record_accepted(
                op.principal,
                op.charge_point_id,
                int(op.payload["connectorId"]),
                dict(op.payload["csChargingProfiles"]),
            )

    async def after_clear_profile(op: Operation, response: Payload) -> None:
        if response.get("status") == "Accepted":
            await profiles.forget_matching(op.charge_point_id, op.payload)

    operator.add_rule("ReserveNow", before=before_reserve, after=after_reserve)
    operator.add_rule("CancelReservation", after=after_cancel)
    operator.add_rule("SendLocalList", after=after_send_local_list)
    operator.add_rule("SetChargingProfile", after=after_set_profile)
    operator.add_rule("ClearChargingProfile", after=after_clear_profile)
