"""Tariffs: OCPI-like elements, time-of-use, min/max, VAT; bad tariffs refused with the field named."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from charging_api.domain.tariffs import Period, periods_of, price_session, tariff_from_json
from charging_api.errors import ValidationFailed

T0 = datetime(2026, 1, 5, 7, 50, tzinfo=UTC)  # a Monday

TOU = {
    "id": "tou",
    "currency": "EUR",
    "vatPercent": "19",
    "timezone": "UTC",
    "minPrice": "0.50",
    "maxPrice": "30",
    "elements": [
        {
            "priceComponents": [{"type": "ENERGY", "price": "0.50"}],
            "restrictions": {"startTime": "08:00", "endTime": "20:00"},
        },
        {
            "priceComponents": [
                {"type": "ENERGY", "price": "0.30"},
                {"type": "FLAT", "price": "1.00"},
                {"type": "PARKING_TIME", "price": "6"},
            ]
        },
    ],
}


def test_time_of_use_energy_flat_parking_and_vat() -> None:
    """Energy before 08:00 costs the night price, after it the day price; parking by the hour; VAT added."""
    tariff = tariff_from_json(TOU)
    periods = [
        Period(T0, T0 + timedelta(minutes=10), 2.0, True),  # 07:50 night: 2 kWh x 0.30
        Period(T0 + timedelta(minutes=10), T0 + timedelta(minutes=40), 4.0, True),  # day: x 0.50
        Period(T0 + timedelta(minutes=40), T0 + timedelta(minutes=70), 0.0, False),  # 0.5 h parking
    ]
    cost = price_session(tariff, T0, periods)
    amounts = {(line.element, line.component.value): line.amount for line in cost.lines}
    assert amounts == {
        (0, "ENERGY"): Decimal("2.0000"),
        (1, "ENERGY"): Decimal("0.6000"),
        (1, "FLAT"): Decimal("1.0000"),
        (1, "PARKING_TIME"): Decimal("3.0000"),
    }
    assert cost.excl_vat == Decimal("6.60")
    assert cost.vat == Decimal("1.25")
    assert cost.total == Decimal("7.85")


def test_min_and_max_price_bound_the_total_before_vat() -> None:
    """A tiny session pays the minimum, a huge one the maximum."""
    tariff = tariff_from_json({**TOU, "minPrice": "5", "maxPrice": "10", "vatPercent": 0})
    small = price_session(tariff, T0, [Period(T0, T0 + timedelta(minutes=1), 0.1, True)])
    assert small.excl_vat == Decimal("5.00") and small.adjustment > 0
    big = price_session(tariff, T0, [Period(T0, T0 + timedelta(hours=1), 100.0, True)])
    assert big.excl_vat == Decimal("10.00") and big.adjustment < 0


def test_days_of_week_and_midnight_window() -> None:
    """A weekend-only element does not apply on Monday; a 22:00-06:00 window wraps midnight."""
    tariff = tariff_from_json(
        {
            "id": "w",
            "currency": "eur",
            "elements": [
                {
                    "priceComponents": [{"type": "ENERGY", "price": "0.1"}],
                    "restrictions": {"daysOfWeek": ["SATURDAY", "SUNDAY"]},
                },
                {
                    "priceComponents": [{"type": "ENERGY", "price": "0.2"}],
                    "restrictions": {"startTime": "22:00", "endTime": "06:00"},
                },
                {"priceComponents": [{"type": "ENERGY", "price": "0.4"}]},
            ],
        }
    )
    assert tariff.currency == "EUR"
    night = datetime(2026, 1, 6, 2, 0, tzinfo=UTC)  # Tuesday 02:00
    assert tariff.element_for(tariff.elements[0].prices[0][0], night) == (1, Decimal("0.2"))
    noon = datetime(2026, 1, 6, 12, 0, tzinfo=UTC)
    assert tariff.element_for(tariff.elements[0].prices[0][0], noon) == (2, Decimal("0.4"))
    saturday = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
    assert tariff.element_for(tariff.elements[0].prices[0][0], saturday) == (0, Decimal("0.1"))


def test_json_round_trip() -> None:
    """A stored snapshot reads back as the same tariff."""
    tariff = tariff_from_json(TOU)
    assert tariff_from_json(tariff.to_json()) == tariff


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"currency": "EURO"}, "currency"),
        ({"elements": []}, "elements"),
        ({"vatPercent": "-1"}, "vatPercent"),
        ({"minPrice": "10", "maxPrice": "1"}, "minPrice"),
        ({"timezone": "Mars/Base"}, "timezone"),
        (
            {"elements": [{"priceComponents": [{"type": "BEER", "price": "1"}]}]},
            "elements[0].priceComponents[0].type",
        ),
        (
            {"elements": [{"priceComponents": [{"type": "ENERGY", "price": "x"}]}]},
            "elements[0].priceComponents[0].price",
        ),
        (
            {
                "elements": [
                    {
                        "priceComponents": [{"type": "ENERGY", "price": "1"}],
                        "restrictions": {"startTime": "8h"},
                    }
                ]
            },
            "elements[0].restrictions.startTime",
        ),
    ],
)
def test_bad_tariff_is_refused_naming_the_field(change: dict[str, object], field: str) -> None:
    """A malformed tariff is a VALIDATION_ERROR that says which field is wrong."""
    with pytest.raises(ValidationFailed) as caught:
        tariff_from_json({**TOU, **change})
    assert caught.value.details == {"field": field}


def test_periods_split_charging_from_idle() -> None:
    """Steps that add energy are charging time; flat steps are idle."""
    points = [(T0, 0.0), (T0 + timedelta(minutes=1), 0.5), (T0 + timedelta(minutes=2), 0.5)]
    assert [p.charging for p in periods_of(points)] == [True, False]
