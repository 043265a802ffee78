"""Charging profiles of a simulated charge point (OCPP 1.6 Smart Charging), as pure logic.

:class:`ProfileStore` keeps the installed profiles and answers the three operations:
SetChargingProfile (the installation rules), ClearChargingProfile (by id, or by connector /
purpose / stack level) and GetCompositeSchedule (the effective limit over a window). It also
gives the limit in force on a connector at an instant, which caps the simulated current.

The effective limit on connector *n* at time *t* is the smaller of
* the TxProfile of the running transaction, or when there is none the TxDefaultProfile of
  connector *n* (else of connector 0), and
* the ChargePointMaxProfile (connector 0),
where within each purpose the profile with the highest stack level that has a period in force
at *t* wins (a higher one that has ended or not begun lets the next one through).

Trade-off: the simulated charger is single phase at a nominal 230 V, so a limit in W is turned
into amperes as W / 230 and ``numberPhases`` is ignored; and the ChargePointMaxProfile caps each
connector on its own rather than their sum.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

__all__ = ["NOMINAL_VOLTAGE", "Profile", "ProfileStore", "parse_time"]

NOMINAL_VOLTAGE = 230.0
MAX_STACK_LEVEL = 10
MAX_PERIODS = 24
MAX_PROFILES = 10
TX_PROFILE = "TxProfile"
TX_DEFAULT = "TxDefaultProfile"
CP_MAX = "ChargePointMaxProfile"
RECURRENCE = {"Daily": timedelta(days=1), "Weekly": timedelta(days=7)}


def parse_time(value: str) -> datetime:
    """An OCPP dateTime (RFC 3339, ``Z`` or an offset) as an aware datetime."""
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError(f"dateTime without a time zone: {value!r}")
    return parsed


def _optional_time(value: Any) -> datetime | None:
    return parse_time(value) if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class Profile:
    """One installed profile; ``limits`` are (seconds from schedule start, amperes)."""

    profile_id: int
    connector_id: int
    stack_level: int
    purpose: str
    kind: str
    recurrency: str | None
    valid_from: datetime | None
    valid_to: datetime | None
    transaction_id: int | None
    start_schedule: datetime | None
    duration: float | None
    unit: str
    limits: tuple[tuple[float, float], ...]

    @classmethod
    def from_request(cls, connector_id: int, data: Mapping[str, Any], now: datetime) -> Profile:
        """From the ``csChargingProfiles`` of a SetChargingProfile (the ``ocpp`` library's
        snake_case form). An Absolute or Recurring profile without ``startSchedule`` starts now."""
        schedule = data["charging_schedule"]
        unit = schedule["charging_rate_unit"]
        scale = 1.0 / NOMINAL_VOLTAGE if unit == "W" else 1.0
        periods = sorted(
            (float(p["start_period"]), float(p["limit"]) * scale)
            for p in schedule["charging_schedule_period"]
        )
        kind = data["charging_profile_kind"]
        start = _optional_time(schedule.get("start_schedule"))
        if start is None and kind != "Relative":
            start = now
        duration = schedule.get("duration")
        return cls(
            profile_id=int(data["charging_profile_id"]),
            connector_id=connector_id,
            stack_level=int(data["stack_level"]),
            purpose=data["charging_profile_purpose"],
            kind=kind,
            recurrency=data.get("recurrency_kind"),
            valid_from=_optional_time(data.get("valid_from")),
            valid_to=_optional_time(data.get("valid_to")),
            transaction_id=data.get("transaction_id"),
            start_schedule=start,
            duration=float(duration) if duration is not None else None,
            unit=unit,
            limits=tuple(periods),
        )

    def _starts(self, at: datetime, tx_start: datetime | None) -> datetime | None:
        """The start of the schedule occurrence that covers ``at`` (None: no occurrence)."""
        if self.kind == "Relative":
            return tx_start
        assert self.start_schedule is not None
        step = RECURRENCE.get(self.recurrency or "") if self.kind == "Recurring" else None
        if step is None or at < self.start_schedule:
            return self.start_schedule
        k = math.floor((at - self.start_schedule) / step)
        return self.start_schedule + k * step

    def limit_at(self, at: datetime, tx_start: datetime | None) -> float | None:
        """The limit in amperes this profile sets at ``at``, or None when it sets none."""
        if (self.valid_from and at < self.valid_from) or (self.valid_to and at >= self.valid_to):
            return None
        start = self._starts(at, tx_start)
        if start is None or at < start:
            return None
        offset = (at - start).total_seconds()
        if self.duration is not None and offset >= self.duration:
            return None
        limit = None
        for begin, amps in self.limits:
            if begin <= offset:
                limit = amps
        return limit

    def edges(self, t0: datetime, t1: datetime, tx_start: datetime | None) -> set[datetime]:
        """Instants in (t0, t1) where this profile's limit may change."""
        points = {p for p in (self.valid_from, self.valid_to) if p is not None}
        starts: list[datetime] = []
        step = RECURRENCE.get(self.recurrency or "") if self.kind == "Recurring" else None
        first = self._starts(t0, tx_start)
        if first is not None:
            starts.append(first)
            while step is not None and starts[-1] < t1:
                starts.append(starts[-1] + step)
        for start in starts:
            points.update(start + timedelta(seconds=begin) for begin, _ in self.limits)
            if self.duration is not None:
                points.add(start + timedelta(seconds=self.duration))
        return {p for p in points if t0 < p < t1}


def _winner(profiles: Iterable[Profile], at: datetime, tx_start: datetime | None) -> float | None:
    """The limit of the highest stack level that sets one at ``at``."""
    for profile in sorted(profiles, key=lambda p: -p.stack_level):
        limit = profile.limit_at(at, tx_start)
        if limit is not None:
            return limit
    return None


class ProfileStore:
    """The profiles installed on one charge point; survives reconnects."""

    def __init__(self) -> None:
        self.profiles: list[Profile] = []

    def install(self, profile: Profile, running_transaction: int | None) -> str:
        """SetChargingProfile: the status to answer, the profile kept when ``Accepted``.

        ``running_transaction`` is the transaction on the profile's connector (None when idle).
        """
        if profile.stack_level > MAX_STACK_LEVEL or len(profile.limits) > MAX_PERIODS:
            return "Rejected"
        if profile.purpose == CP_MAX and profile.connector_id != 0:
            return "Rejected"
        if profile.purpose == TX_PROFILE:
            if profile.connector_id == 0 or running_transaction is None:
                return "Rejected"
            if profile.transaction_id not in (None, running_transaction):
                return "Rejected"
            profile = replace(profile, transaction_id=running_transaction)
        kept = [
            p
            for p in self.profiles
            if p.profile_id != profile.profile_id
            and not (
                p.connector_id == profile.connector_id
                and p.purpose == profile.purpose
                and p.stack_level == profile.stack_level
            )
        ]
        if len(kept) >= MAX_PROFILES:
            return "Rejected"
        self.profiles = [*kept, profile]
        return "Accepted"

    def clear(
        self,
        profile_id: int | None = None,
        connector_id: int | None = None,
        purpose: str | None = None,
        stack_level: int | None = None,
    ) -> bool:
        """ClearChargingProfile: True (Accepted) when a profile was removed, else Unknown.

        With an id only that profile goes; otherwise every profile matching all given criteria.
        """

        def doomed(p: Profile) -> bool:
            if profile_id is not None:
                return p.profile_id == profile_id
            return (
                (connector_id is None or p.connector_id == connector_id)
                and (purpose is None or p.purpose == purpose)
                and (stack_level is None or p.stack_level == stack_level)
            )

        before = len(self.profiles)
        self.profiles = [p for p in self.profiles if not doomed(p)]
        return len(self.profiles) < before

    def transaction_ended(self, connector_id: int) -> None:
        """A TxProfile lives as long as its transaction."""
        self.profiles = [
            p
            for p in self.profiles
            if not (p.purpose == TX_PROFILE and p.connector_id == connector_id)
        ]

    def limit_a(
        self,
        connector_id: int,
        at: datetime,
        transaction_id: int | None = None,
        tx_start: datetime | None = None,
    ) -> float | None:
        """The limit in amperes in force on a connector (0: the charge point), None if none."""
        cp_max = _winner(self._of(CP_MAX, 0), at, tx_start)
        if connector_id == 0:
            return cp_max
        tx = None
        if transaction_id is not None:
            tx = _winner(
                (
                    p
                    for p in self._of(TX_PROFILE, connector_id)
                    if p.transaction_id in (None, transaction_id)
                ),
                at,
                tx_start,
            )
        if tx is None:
            tx = _winner(self._of(TX_DEFAULT, connector_id), at, tx_start)
        if tx is None:
            tx = _winner(self._of(TX_DEFAULT, 0), at, tx_start)
        limits = [x for x in (tx, cp_max) if x is not None]
        return min(limits) if limits else None

    def composite(
        self,
        connector_id: int,
        start: datetime,
        duration: int,
        ceiling_a: float,
        transaction_id: int | None = None,
        tx_start: datetime | None = None,
    ) -> list[tuple[int, float]]:
        """GetCompositeSchedule: (seconds from ``start``, amperes) periods over ``duration``.

        Where no profile sets a limit the hardware's ``ceiling_a`` applies; consecutive equal
        limits are merged.
        """
        end = start + timedelta(seconds=duration)
        edges: set[datetime] = {start}
        for profile in self.profiles:
            edges |= profile.edges(start, end, tx_start)
        periods: list[tuple[int, float]] = []
        for edge in sorted(edges):
            limit = self.limit_a(connector_id, edge, transaction_id, tx_start)
            amps = round(min(ceiling_a, limit) if limit is not None else ceiling_a, 1)
            offset = int((edge - start).total_seconds())
            if periods and periods[-1][1] == amps:
                continue
            if periods and periods[-1][0] == offset:
                periods[-1] = (offset, amps)
            else:
                periods.append((offset, amps))
        return periods

    def _of(self, purpose: str, connector_id: int) -> list[Profile]:
        return [p for p in self.profiles if p.purpose == purpose and p.connector_id == connector_id]
