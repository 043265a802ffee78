"""Units of work for the operator state (reservations, local lists, charging profiles).

Portable SQLAlchemy Core, the same on every database: these tables are written a few times
a minute at most, so an upsert is a DELETE and an INSERT in one write transaction rather
than a dialect's ``ON CONFLICT``.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any

import orjson
from sqlalchemy import Connection, bindparam, delete, insert, select, update

from charging_api.domain.models import (
    LocalListState,
    Reservation,
    ReservationStatus,
    StoredChargingProfile,
)
from charging_api.storage.engines import Work
from charging_api.storage.tables import (
    charge_points,
    charging_profiles,
    id_tags,
    local_lists,
    reservations,
)

_r = reservations.c
_ADD_RESERVATION = insert(reservations).returning(_r.id)
_UPDATE_RESERVATION = update(reservations).where(_r.id == bindparam("b_id"))
_GET_RESERVATION = select(reservations).where(_r.id == bindparam("b_id"))
_ACTIVE_RESERVATIONS = (
    select(reservations).where(_r.status == ReservationStatus.ACTIVE.value).order_by(_r.id)
)
_ALL_ID_TAGS = select(id_tags).order_by(id_tags.c.tag)
_CHARGE_POINT_IDS = select(charge_points.c.id).order_by(charge_points.c.id)
_GET_LOCAL_LIST = select(local_lists).where(local_lists.c.charge_point_id == bindparam("b_cp"))
_DELETE_LOCAL_LIST = delete(local_lists).where(local_lists.c.charge_point_id == bindparam("b_cp"))
_p = charging_profiles.c
_DELETE_PROFILE = delete(charging_profiles).where(
    _p.charge_point_id == bindparam("b_cp"), _p.profile_id == bindparam("b_profile")
)
_PROFILES = select(charging_profiles).order_by(_p.charge_point_id, _p.profile_id)


def _reservation_row(r: Reservation) -> dict[str, Any]:
    row = asdict(r)
    row["status"] = r.status.value
    return row


def _reservation(values: Any) -> Reservation:
    return Reservation(**{**values, "status": ReservationStatus(values["status"])})


def add_reservation(reservation: Reservation) -> Work[Reservation]:
    row = _reservation_row(reservation)
    del row["id"]

    def run(conn: Connection) -> Reservation:
        new_id = conn.execute(_ADD_RESERVATION, row).scalar_one()
        return replace(reservation, id=int(new_id))

    return run


def put_reservation(reservation: Reservation) -> Work[None]:
    row = _reservation_row(reservation)

    def run(conn: Connection) -> None:
        conn.execute(delete(reservations).where(_r.id == reservation.id))
        conn.execute(insert(reservations), row)
        if conn.dialect.name == "postgresql":  # keep the sequence above an explicit id
            conn.exec_driver_sql(
                "SELECT setval(pg_get_serial_sequence('reservations', 'id'), "
                "GREATEST((SELECT MAX(id) FROM reservations), 1))"
            )

    return run


def update_reservation(reservation: Reservation) -> Work[None]:
    row = _reservation_row(reservation)
    del row["id"]

    def run(conn: Connection) -> None:
        conn.execute(_UPDATE_RESERVATION.values(**row), {"b_id": reservation.id})

    return run


def get_reservation(reservation_id: int) -> Work[Reservation | None]:
    def run(conn: Connection) -> Reservation | None:
        row = conn.execute(_GET_RESERVATION, {"b_id": reservation_id}).first()
        return None if row is None else _reservation(row._mapping)

    return run


def active_reservations() -> Work[list[Reservation]]:
    def run(conn: Connection) -> list[Reservation]:
        return [_reservation(r._mapping) for r in conn.execute(_ACTIVE_RESERVATIONS)]

    return run


def charge_point_ids() -> Work[list[str]]:
    def run(conn: Connection) -> list[str]:
        return [str(v) for v in conn.execute(_CHARGE_POINT_IDS).scalars()]

    return run


def get_local_list(charge_point_id: str) -> Work[LocalListState | None]:
    def run(conn: Connection) -> LocalListState | None:
        row = conn.execute(_GET_LOCAL_LIST, {"b_cp": charge_point_id}).first()
        if row is None:
            return None
        v = row._mapping
        return LocalListState(
            v["charge_point_id"], v["version"], orjson.loads(v["entries"]), v["synced_at"]
        )

    return run


def put_local_list(state: LocalListState) -> Work[None]:
    row = {
        "charge_point_id": state.charge_point_id,
        "version": state.version,
        "entries": orjson.dumps(state.entries, option=orjson.OPT_SORT_KEYS).decode(),
        "synced_at": state.synced_at,
    }

    def run(conn: Connection) -> None:
        conn.execute(_DELETE_LOCAL_LIST, {"b_cp": state.charge_point_id})
        conn.execute(insert(local_lists), row)

    return run


def put_charging_profile(profile: StoredChargingProfile) -> Work[None]:
    row = asdict(profile)
    row["profile"] = orjson.dumps(profile.profile).decode()

    def run(conn: Connection) -> None:
        conn.execute(
            _DELETE_PROFILE, {"b_cp": profile.charge_point_id, "b_profile": profile.profile_id}
        )
        conn.execute(insert(charging_profiles), row)

    return run


def charging_profiles_of(charge_point_id: str | None) -> Work[list[StoredChargingProfile]]:
    stmt = (
        _PROFILES
        if charge_point_id is None
        else _PROFILES.where(_p.charge_point_id == charge_point_id)
    )

    def run(conn: Connection) -> list[StoredChargingProfile]:
        return [
            StoredChargingProfile(**{**r._mapping, "profile": orjson.loads(r._mapping["profile"])})
            for r in conn.execute(stmt)
        ]

    return run


def delete_charging_profile(charge_point_id: str, profile_id: int) -> Work[None]:
    def run(conn: Connection) -> None:
        conn.execute(_DELETE_PROFILE, {"b_cp": charge_point_id, "b_profile": profile_id})

    return run
