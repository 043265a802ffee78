"""What a domain event becomes on the app wire: the one place that decides a push.

Two questions, asked by the in-process :class:`~charging_api.api.hub.UpdateHub` and by the
cluster's :class:`~charging_api.cluster.fanout.PushPublisher` alike, so both number and send
the same frames to the same users:

- :func:`audience`: who may get the event (nobody, its owner only when they asked for session
  pushes, its owner only, or its owner and the admins watching its charge point). Cheap: an
  ``isinstance`` chain, no serialisation; a caller with nobody to reach stops here.
- :func:`render`: the push's type, its ``data`` serialised once (shared by every recipient:
  only ``seq`` differs, spliced in by :func:`protocol.push_parts`), and whether a slow client
  may drop it (meter and session updates: a newer one follows).

Pure functions of the event: no clock, no I/O. The frame's timestamp is the caller's (when it
numbers the push), not the event's.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import orjson

from charging_api.api import protocol
from charging_api.domain.events import (
    ChargePointBooted,
    ChargePointConnectionChanged,
    ConnectorStatusChanged,
    DataTransferReceived,
    DeviceStatusChanged,
    DomainEvent,
    MeterValuesReceived,
    ReservationChanged,
    SessionNotice,
    SessionUpdated,
    TransactionStarted,
    TransactionStopped,
)


class Audience(Enum):
    """Who an event may reach (the event's ``user_id`` is its owner)."""

    #: Nobody: an Offline reaches apps as a status update, a boot is the core's business.
    NOBODY = "n"
    #: The owner alone, and only while they asked for ``session_event``/``session_update``.
    OWNER_IF_SESSION_PUSHES = "s"
    #: The owner alone: a charge point wide status copied per owner (subscribers got the
    #: charge point's original).
    OWNER = "o"
    #: The owner and every admin watching the charge point (or every charge point).
    OWNER_AND_WATCHERS = "w"


@dataclass(frozen=True, slots=True)
class Rendered:
    """A push before numbering: ``kind`` (its ``type``), ``data`` as JSON, ``droppable``."""

    kind: str
    data_json: bytes
    droppable: bool


def audience(event: DomainEvent) -> Audience:
    if isinstance(event, ChargePointConnectionChanged | ChargePointBooted):
        return Audience.NOBODY
    if isinstance(event, SessionNotice | SessionUpdated):
        return Audience.OWNER_IF_SESSION_PUSHES
    if isinstance(event, ConnectorStatusChanged) and event.owner_only:
        return Audience.OWNER
    return Audience.OWNER_AND_WATCHERS


def owner_of(event: DomainEvent) -> str | None:
    """The user the event is about (None: nobody's; a charge point connection change)."""
    return None if isinstance(event, ChargePointConnectionChanged) else event.user_id


def render(event: DomainEvent) -> Rendered | None:
    """The push for ``event`` (None: the event is never pushed)."""
    if isinstance(event, MeterValuesReceived):
        return Rendered("meter_values_update", _json(protocol.meter_update(event)), True)
    if isinstance(event, ConnectorStatusChanged):
        return Rendered("charging_status_update", _json(protocol.status_update(event)), False)
    if isinstance(event, TransactionStarted | TransactionStopped):
        return Rendered("transaction_update", _json(protocol.transaction_update(event)), False)
    if isinstance(event, DataTransferReceived):  # to watching admins (no owner)
        return Rendered("data_transfer_received", _json(protocol.data_transfer_push(event)), False)
    if isinstance(event, DeviceStatusChanged):
        return Rendered("device_status_update", _json(protocol.device_status_push(event)), False)
    if isinstance(event, ReservationChanged):
        return Rendered("reservation_update", _json(protocol.reservation_update(event)), False)
    if isinstance(event, SessionNotice):
        return Rendered("session_event", _json(protocol.session_event(event)), False)
    if isinstance(event, SessionUpdated):
        return Rendered("session_update", _json(protocol.session_update(event)), True)
    return None


def stamped_at(event: DomainEvent) -> float | None:
    """The event's own time (epoch seconds) for the delivery-lag histogram; None: unknown."""
    when = (
        event.sample.timestamp
        if isinstance(event, MeterValuesReceived)
        else getattr(event, "timestamp", None)
    )
    return when.timestamp() if when is not None else None


def _json(data: object) -> bytes:
    return orjson.dumps(data)
