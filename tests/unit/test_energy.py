"""Session energy from register readings: resets, rollovers, duplicates, out-of-order samples."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from charging_api.domain.energy import EnergyLedger, Reading

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


increments = st.lists(st.floats(min_value=0, max_value=5, allow_nan=False), max_size=40)


@given(start_wh=st.integers(min_value=0, max_value=10**9), steps=increments, seed=st.randoms())
def test_energy_is_register_minus_meter_start_in_any_arrival_order(
    start_wh: int, steps: list[float], seed: object
) -> None:
    """A rising register gives last - meterStart however the samples arrive."""
    register = start_wh / 1000
    readings = []
    for i, step in enumerate(steps):
        register += step
        readings.append(Reading(at(i + 1), register))
    shuffled = list(readings)
    seed.shuffle(shuffled)  # type: ignore[attr-defined]
    ledger = EnergyLedger(start_wh, T0)
    for reading in shuffled:
        ledger.add(reading)
    expected = (readings[-1].register_kwh - start_wh / 1000) if readings else 0.0
    figure = ledger.figure()
    assert abs(figure.energy_kwh - expected) < 1e-6
    assert figure.latest == (readings[-1] if readings else None)
    assert figure.discontinuities == ()


@given(
    values=st.lists(st.floats(min_value=0, max_value=1000, allow_nan=False), max_size=30),
    seed=st.randoms(),
)
def test_energy_never_negative_and_order_independent(values: list[float], seed: object) -> None:
    """Whatever the register does (drops, duplicates), energy is >= 0 and arrival order does not matter."""
    readings = [Reading(at(i + 1), v) for i, v in enumerate(values)]
    duplicates = [Reading(r.at, r.register_kwh / 2) for r in readings[::3]]
    one, two = EnergyLedger(0, T0), EnergyLedger(0, T0)
    for r in readings + duplicates:
        one.add(r)
    mixed = readings + duplicates
    seed.shuffle(mixed)  # type: ignore[attr-defined]
    for r in mixed:
        two.add(r)
    assert one.figure().energy_kwh >= 0
    assert abs(one.figure().energy_kwh - two.figure().energy_kwh) < 1e-6
    total_rise = sum(max(b - a, 0) for a, b in zip([0.0, *values], values, strict=False))
    assert one.figure().energy_kwh <= total_rise + 1e-6


def test_lifetime_register_is_never_the_session_energy() -> None:
    """A charger whose register reads 12 345 kWh reports the session's 2.5 kWh, not the register."""
    ledger = EnergyLedger(12_345_000, T0)
    ledger.add(Reading(at(60), 12_346.0))
    ledger.add(Reading(at(120), 12_347.5))
    figure = ledger.figure()
    assert figure.energy_kwh == 2.5
    assert figure.register_kwh == 12_347.5
    assert figure.latest is not None and figure.latest.measurand == "Energy.Active.Import.Register"


def test_reset_starts_a_new_segment() -> None:
    """A register reset to zero mid-session keeps the energy before it and counts on from zero."""
    ledger = EnergyLedger(1000, T0)
    ledger.add(Reading(at(60), 3.0))  # +2
    ledger.add(Reading(at(120), 0.5))  # reset: not counted
    ledger.add(Reading(at(180), 1.5))  # +1
    figure = ledger.figure()
    assert figure.energy_kwh == 3.0
    assert [d.kind for d in figure.discontinuities] == ["reset"]
    assert figure.discontinuities[0].before.register_kwh == 3.0


def test_rollover_counts_the_wrap() -> None:
    """A 100 000 kWh counter that wraps from 99 999 to 1 adds 2 kWh, not minus 99 998."""
    ledger = EnergyLedger(99_998_000, T0, rollover_kwh=100_000.0)
    ledger.add(Reading(at(60), 99_999.0))
    ledger.add(Reading(at(120), 1.0))
    figure = ledger.figure()
    assert abs(figure.energy_kwh - 3.0) < 1e-6
    assert [d.kind for d in figure.discontinuities] == ["rollover"]


def test_out_of_order_sample_lands_in_place() -> None:
    """A replayed older sample does not become the latest reading nor change the total."""
    ledger = EnergyLedger(0, T0)
    ledger.add(Reading(at(60), 1.0))
    ledger.add(Reading(at(180), 3.0))
    ledger.add(Reading(at(120), 2.0, source="StopTransaction"))
    figure = ledger.figure()
    assert figure.energy_kwh == 3.0
    assert figure.latest is not None and figure.latest.at == at(180)
    assert [r.at for r in ledger.readings] == [at(60), at(120), at(180)]


def test_same_moment_in_two_contexts_counts_once() -> None:
    """The same register sent as Sample.Periodic and Sample.Clock for one instant counts once."""
    ledger = EnergyLedger(0, T0)
    ledger.add(Reading(at(60), 1.0, source="MeterValues"))
    assert not ledger.add(Reading(at(60), 1.0, source="MeterValues"))
    assert ledger.figure().energy_kwh == 1.0


def test_glitch_jump_is_not_billed() -> None:
    """A register that jumps by 5000 kWh between two samples (a unit glitch) is not counted."""
    ledger = EnergyLedger(0, T0)
    ledger.add(Reading(at(60), 1.0))
    ledger.add(Reading(at(120), 5001.0))
    ledger.add(Reading(at(180), 5002.0))
    figure = ledger.figure()
    assert figure.energy_kwh == 2.0
    assert [d.kind for d in figure.discontinuities] == ["jump"]


def test_reading_before_the_start_is_ignored() -> None:
    """A sample stamped before the transaction started is not session energy."""
    ledger = EnergyLedger(0, T0)
    assert not ledger.add(Reading(at(-60), 5.0))
    assert ledger.figure().energy_kwh == 0.0
