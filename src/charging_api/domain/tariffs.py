"""Tariffs (an OCPI 2.2.1-like model) and the cost of a session. Pure: no clock, no I/O.

A :class:`Tariff` has a currency, a VAT rate, optional minimum and maximum prices (before
VAT) and a list of elements. Each element has price components (``ENERGY`` per kWh, ``TIME``
per hour while charging, ``PARKING_TIME`` per hour while not charging, ``FLAT`` once per
session; prices before VAT) and optional restrictions (a local time-of-day window and days of
the week, in the tariff's time zone). As in OCPI, for each component type the FIRST element
whose restrictions hold applies.

The cost of a session is computed from its :class:`Period` list (consecutive meter readings:
start, end, energy, charging or not). A period is priced by the element that holds at its
START: the time-of-use error is at most one sample interval per window boundary, which keeps
pricing a single pass over the readings. ``FLAT`` is taken from the element that holds when
the session starts. Amounts are exact decimals; each line is rounded to 4 decimals, totals to
2 (the currency's cents), minimum/maximum apply to the total before VAT, VAT is added last.

A tariff's JSON form (:meth:`Tariff.to_json` / :func:`tariff_from_json`) is what is stored,
what admins send, and the snapshot frozen with a session.

:class:`TariffCatalog` holds every tariff and assignment in memory and answers which tariff a
new session gets (user > group > charge point > default) without I/O.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, time
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from charging_api.errors import ValidationFailed

DAYS = ("MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY", "SATURDAY", "SUNDAY")
_LINE = Decimal("0.0001")
_CENT = Decimal("0.01")
_HOUR = Decimal(3600)


class Component(StrEnum):
    ENERGY = "ENERGY"
    TIME = "TIME"
    PARKING_TIME = "PARKING_TIME"
    FLAT = "FLAT"


@dataclass(frozen=True, slots=True)
class Restrictions:
    """When an element applies: ``start_time <= local time < end_time`` (wrapping past
    midnight when end < start) and the local weekday in ``days`` (0 = Monday); None/empty:
    always."""

    start_time: time | None = None
    end_time: time | None = None
    days: frozenset[int] = frozenset()

    def hold_at(self, local: datetime) -> bool:
        if self.days and local.weekday() not in self.days:
            return False
        t = local.time().replace(tzinfo=None)
        start, end = self.start_time, self.end_time
        if start is not None and end is not None and end < start:
            return t >= start or t < end
        if start is not None and t < start:
            return False
        return not (end is not None and t >= end)


@dataclass(frozen=True, slots=True)
class TariffElement:
    prices: tuple[tuple[Component, Decimal], ...]
    restrictions: Restrictions = Restrictions()

    def price_of(self, component: Component) -> Decimal | None:
        for kind, price in self.prices:
            if kind is component:
                return price
        return None


@dataclass(frozen=True, slots=True)
class Tariff:
    id: str
    currency: str
    elements: tuple[TariffElement, ...]
    vat_percent: Decimal = Decimal(0)
    min_price: Decimal | None = None
    max_price: Decimal | None = None
    timezone: str = "UTC"

    def element_for(self, component: Component, at: datetime) -> tuple[int, Decimal] | None:
        """The first element pricing ``component`` at ``at`` (aware): its index and price."""
        local = at.astimezone(ZoneInfo(self.timezone))
        for index, element in enumerate(self.elements):
            price = element.price_of(component)
            if price is not None and element.restrictions.hold_at(local):
                return index, price
        return None

    def to_json(self) -> dict[str, Any]:
        """The stored/wire form (prices as decimal strings)."""
        out: dict[str, Any] = {
            "id": self.id,
            "currency": self.currency,
            "vatPercent": str(self.vat_percent),
            "timezone": self.timezone,
            "elements": [_element_json(e) for e in self.elements],
        }
        if self.min_price is not None:
            out["minPrice"] = str(self.min_price)
        if self.max_price is not None:
            out["maxPrice"] = str(self.max_price)
        return out


@dataclass(frozen=True, slots=True)
class Period:
    """A stretch of a session between two readings."""

    start: datetime
    end: datetime
    energy_kwh: float
    charging: bool

    @property
    def seconds(self) -> float:
        return max((self.end - self.start).total_seconds(), 0.0)


@dataclass(frozen=True, slots=True)
class CostLine:
    """One tariff element's share of one component: quantity in kWh, hours or sessions."""

    element: int
    component: Component
    quantity: Decimal
    unit_price: Decimal
    amount: Decimal


@dataclass(frozen=True, slots=True)
class Cost:
    currency: str
    lines: tuple[CostLine, ...]
    subtotal: Decimal  # sum of the lines, before min/max and VAT
    adjustment: Decimal  # what min/max added (+) or took off (-)
    excl_vat: Decimal
    vat: Decimal
    total: Decimal  # incl. VAT, in cents

    def to_json(self) -> dict[str, Any]:
        return {
            "currency": self.currency,
            "lines": [
                {
                    "element": line.element,
                    "component": line.component.value,
                    "quantity": str(line.quantity),
                    "unitPrice": str(line.unit_price),
                    "amount": str(line.amount),
                }
                for line in self.lines
            ],
            "subtotal": str(self.subtotal),
            "adjustment": str(self.adjustment),
            "exclVat": str(self.excl_vat),
            "vat": str(self.vat),
            "total": str(self.total),
        }


class CostMeter:
    """The running cost of one session: periods are added as they come (O(1) each), the
    total is read at any time. :func:`price_session` is the same thing in one call."""

    __slots__ = ("_sums", "tariff")

    def __init__(self, tariff: Tariff, started_at: datetime) -> None:
        self.tariff = tariff
        self._sums: dict[tuple[int, Component], tuple[Decimal, Decimal]] = {}
        self._add(tariff.element_for(Component.FLAT, started_at), Component.FLAT, Decimal(1))

    def _add(self, hit: tuple[int, Decimal] | None, component: Component, qty: Decimal) -> None:
        if hit is None or qty == 0:
            return
        key = (hit[0], component)
        old = self._sums.get(key, (Decimal(0), hit[1]))[0]
        self._sums[key] = (old + qty, hit[1])

    def add(self, period: Period) -> None:
        tariff = self.tariff
        energy = Decimal(repr(max(period.energy_kwh, 0.0)))
        self._add(tariff.element_for(Component.ENERGY, period.start), Component.ENERGY, energy)
        kind = Component.TIME if period.charging else Component.PARKING_TIME
        hours = Decimal(repr(period.seconds)) / _HOUR
        self._add(tariff.element_for(kind, period.start), kind, hours)

    def cost(self) -> Cost:
        tariff = self.tariff
        lines = tuple(
            CostLine(
                index,
                component,
                quantity.quantize(_LINE, ROUND_HALF_UP),
                price,
                (quantity * price).quantize(_LINE, ROUND_HALF_UP),
            )
            for (index, component), (quantity, price) in sorted(self._sums.items())
        )
        subtotal = sum((line.amount for line in lines), Decimal(0))
        bounded = subtotal
        if tariff.min_price is not None and bounded < tariff.min_price:
            bounded = tariff.min_price
        if tariff.max_price is not None and bounded > tariff.max_price:
            bounded = tariff.max_price
        excl = bounded.quantize(_CENT, ROUND_HALF_UP)
        vat = (excl * tariff.vat_percent / 100).quantize(_CENT, ROUND_HALF_UP)
        return Cost(tariff.currency, lines, subtotal, bounded - subtotal, excl, vat, excl + vat)


def price_session(tariff: Tariff, started_at: datetime, periods: Sequence[Period]) -> Cost:
    """The cost of a session made of ``periods`` (see the module docstring for the rules)."""
    meter = CostMeter(tariff, started_at)
    for period in periods:
        meter.add(period)
    return meter.cost()


def periods_of(
    points: Sequence[tuple[datetime, float]], idle_below_kwh: float = 0.0
) -> list[Period]:
    """Periods between consecutive ``(time, session energy kWh)`` points; a period that added
    no more than ``idle_below_kwh`` is idle (parking), the others are charging."""
    out = []
    for (t0, e0), (t1, e1) in itertools.pairwise(points):
        energy = max(e1 - e0, 0.0)
        out.append(Period(t0, t1, energy, energy > idle_below_kwh))
    return out


# ------------------------------------------------------------------ JSON


def _element_json(element: TariffElement) -> dict[str, Any]:
    out: dict[str, Any] = {
        "priceComponents": [{"type": k.value, "price": str(p)} for k, p in element.prices]
    }
    r = element.restrictions
    restrictions: dict[str, Any] = {}
    if r.start_time is not None:
        restrictions["startTime"] = r.start_time.strftime("%H:%M")
    if r.end_time is not None:
        restrictions["endTime"] = r.end_time.strftime("%H:%M")
    if r.days:
        restrictions["daysOfWeek"] = [DAYS[d] for d in sorted(r.days)]
    if restrictions:
        out["restrictions"] = restrictions
    return out


def _fail(message: str, path: str) -> ValidationFailed:
    return ValidationFailed(f"Invalid tariff: {message}", {"field": path})


def _decimal(value: Any, path: str, *, allow_none: bool = False) -> Decimal | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _fail("expected a decimal number (string or number)", path)
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise _fail(f"{value!r} is not a number", path) from None
    if not number.is_finite() or number < 0:
        raise _fail("must be a finite number >= 0", path)
    return number


def _time(value: Any, path: str) -> time | None:
    if value is None:
        return None
    try:
        return time.fromisoformat(value) if isinstance(value, str) and len(value) == 5 else None
    except ValueError:
        return None


def tariff_from_json(data: Any, tariff_id: str | None = None) -> Tariff:
    """Read and check a tariff; raises ValidationFailed naming the bad field."""
    if not isinstance(data, dict):
        raise _fail("expected an object", "")
    tid = tariff_id or data.get("id")
    if not isinstance(tid, str) or not 1 <= len(tid) <= 64:
        raise _fail("id must be a string of 1-64 characters", "id")
    currency = data.get("currency")
    if not isinstance(currency, str) or len(currency) != 3 or not currency.isalpha():
        raise _fail("currency must be an ISO 4217 code such as EUR", "currency")
    zone = data.get("timezone", "UTC")
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise _fail(f"unknown time zone {zone!r}", "timezone") from None
    raw_elements = data.get("elements")
    if not isinstance(raw_elements, list) or not raw_elements:
        raise _fail("elements must be a non-empty list", "elements")
    elements = []
    for i, raw in enumerate(raw_elements):
        if not isinstance(raw, dict):
            raise _fail("expected an object", f"elements[{i}]")
        comps = raw.get("priceComponents")
        if not isinstance(comps, list) or not comps:
            raise _fail("priceComponents must be a non-empty list", f"elements[{i}]")
        prices = []
        for j, comp in enumerate(comps):
            path = f"elements[{i}].priceComponents[{j}]"
            kind = comp.get("type") if isinstance(comp, dict) else None
            if not isinstance(kind, str) or kind not in Component.__members__:
                raise _fail(f"type must be one of {', '.join(Component)}", f"{path}.type")
            price = _decimal(comp.get("price"), f"{path}.price")
            assert price is not None
            prices.append((Component(kind), price))
        raw_r = raw.get("restrictions") or {}
        if not isinstance(raw_r, dict):
            raise _fail("expected an object", f"elements[{i}].restrictions")
        start = _time(raw_r.get("startTime"), "")
        end = _time(raw_r.get("endTime"), "")
        for key, parsed in (("startTime", start), ("endTime", end)):
            if raw_r.get(key) is not None and parsed is None:
                raise _fail("expected HH:MM", f"elements[{i}].restrictions.{key}")
        days_raw = raw_r.get("daysOfWeek") or []
        if not isinstance(days_raw, list) or any(d not in DAYS for d in days_raw):
            raise _fail(
                "daysOfWeek must list MONDAY..SUNDAY", f"elements[{i}].restrictions.daysOfWeek"
            )
        restrictions = Restrictions(start, end, frozenset(DAYS.index(d) for d in days_raw))
        elements.append(TariffElement(tuple(prices), restrictions))
    vat = _decimal(data.get("vatPercent", 0), "vatPercent")
    assert vat is not None
    if vat > 100:
        raise _fail("vatPercent must be between 0 and 100", "vatPercent")
    low = _decimal(data.get("minPrice"), "minPrice", allow_none=True)
    high = _decimal(data.get("maxPrice"), "maxPrice", allow_none=True)
    if low is not None and high is not None and low > high:
        raise _fail("minPrice is above maxPrice", "minPrice")
    return Tariff(tid, currency.upper(), tuple(elements), vat, low, high, zone)


# ------------------------------------------------------------------ the catalog

#: Assignment scopes, most specific first: a user's own tariff wins over their groups', a
#: group's over the charge point's, the charge point's over the default.
SCOPE_KINDS = ("user", "group", "chargePoint")
DEFAULT_SCOPE = "default"


def check_scope(scope: str) -> None:
    """Refuse an assignment scope other than ``default``, ``user:<id>``, ``group:<name>`` or
    ``chargePoint:<id>`` (VALIDATION_ERROR naming ``scope``)."""
    kind, _, name = scope.partition(":")
    if scope != DEFAULT_SCOPE and (kind not in SCOPE_KINDS or not name):
        raise ValidationFailed(
            "scope must be default, chargePoint:<id>, group:<name> or user:<id>",
            {"field": "scope"},
        )


class TariffCatalog:
    """Every tariff and assignment, in memory: what a new session gets, without I/O.

    Built from the stored documents (:meth:`from_documents`) and changed by the writer that
    stored a change (:meth:`put`, :meth:`delete`, :meth:`assign`). A stored tariff that no
    longer parses is left out (and named in :attr:`broken`) rather than failing every start.
    """

    __slots__ = ("_assigned", "_tariffs", "broken")

    def __init__(self) -> None:
        self._tariffs: dict[str, Tariff] = {}
        self._assigned: dict[str, str] = {}
        self.broken: list[str] = []

    @staticmethod
    def from_documents(
        tariffs: dict[str, dict[str, Any]], assignments: dict[str, dict[str, Any]]
    ) -> TariffCatalog:
        catalog = TariffCatalog()
        for key, body in tariffs.items():
            try:
                catalog._tariffs[key] = tariff_from_json(body, key)
            except ValidationFailed:
                catalog.broken.append(key)
        for scope, body in assignments.items():
            tariff_id = body.get("tariffId")
            if isinstance(tariff_id, str):
                catalog._assigned[scope] = tariff_id
        return catalog

    def put(self, tariff: Tariff) -> None:
        self._tariffs[tariff.id] = tariff

    def delete(self, tariff_id: str) -> None:
        self._tariffs.pop(tariff_id, None)

    def assign(self, scope: str, tariff_id: str | None) -> None:
        if tariff_id is None:
            self._assigned.pop(scope, None)
        else:
            self._assigned[scope] = tariff_id

    def get(self, tariff_id: str) -> Tariff | None:
        return self._tariffs.get(tariff_id)

    def for_session(
        self, charge_point_id: str, user_id: str | None, groups: Iterable[str] = ()
    ) -> Tariff | None:
        """The tariff a new session gets: the user's, else the first of their groups' (in
        name order, so the choice does not depend on the token's order), else the charge
        point's, else the default; None when none applies. An assignment naming a deleted
        tariff is passed over."""
        scopes: list[str] = []
        if user_id is not None:
            scopes.append(f"user:{user_id}")
        scopes.extend(f"group:{g}" for g in sorted(set(groups)))
        scopes += [f"chargePoint:{charge_point_id}", DEFAULT_SCOPE]
        for scope in scopes:
            tariff_id = self._assigned.get(scope)
            if tariff_id is not None:
                tariff = self._tariffs.get(tariff_id)
                if tariff is not None:
                    return tariff
        return None
