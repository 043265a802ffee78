"""OCPP 1.6 ``MeterValue`` objects -> :class:`~charging_api.domain.models.MeterSample`.

Pure functions, no I/O: text and dicts in, values out. The charge point door calls
:func:`meter_value_to_sample` once per ``MeterValue`` of a ``MeterValues`` or ``StopTransaction``
request. (The app door builds the seed's ``meterValue`` object from the sample:
``api.protocol.sample_to_wire``; timestamps go out through ``timefmt``.)

Reading a ``SampledValue`` (OCPP 1.6 rules)
-------------------------------------------
* ``value`` is a string (a bare JSON number is accepted too); a value that does not parse as a
  finite number is skipped, never raised. A decimal comma, as chargers configured for many
  European locales send it, is read as the decimal point: ``"123,4"`` is 123.4. Only a single
  comma with no point is taken that way (so ``"1,234"`` is 1.234: meters do not group
  thousands); ``"1,234.5"`` and ``"1.234,5"`` mix separators and are skipped, not guessed.
* ``format: SignedData`` values are skipped (they are not numbers).
* ``measurand`` defaults to ``Energy.Active.Import.Register``.
* An absent ``unit`` takes the measurand's natural unit: energy Wh, power W, voltage V,
  current A, SoC Percent. Units are compared case-insensitively; a unit that does not fit the
  measurand (say ``varh`` on an energy register) skips the value.
* Wh -> kWh and W -> kW are divided by 1000; kWh and kW are kept. Converted and aggregated values
  are rounded to 6 decimals so ``1234.5 / 1000`` is ``1.2345``, not ``1.2345000000000002``.
* Headline fields: ``Energy.Active.Import.Register`` -> ``energy_import_kwh``,
  ``Power.Active.Import`` -> ``power_kw``, ``Voltage`` -> ``voltage``, ``Current.Import`` ->
  ``current``, ``SoC`` -> ``state_of_charge``. Other measurands are ignored.
* Several values for the same measurand and phase that differ only in ``location``: the best
  location wins, ``Outlet`` (the default) > ``Inlet`` > ``Cable`` > ``EV`` > ``Body``; for SoC,
  ``EV`` comes first. Among equal locations the first value wins.
* A ``MeterValue`` without a parsable ``timestamp`` gives None, and so does one with no usable
  value (only unknown measurands, signed data or unreadable numbers): it is not a sample.

Phase rule
----------
For each headline field the unphased value (no ``phase``) is used when present. Otherwise:

* energy and power: the SUM over the lines L1, L2, L3 of the per-line values, taking ``Ln``
  and falling back to ``Ln-N`` for each line; lines that were not reported are left out;
* voltage: the MEAN of the phase-to-neutral voltages of the lines reported, taking ``Ln-N`` and
  falling back to ``Ln``; phase-to-phase values (``L1-L2``, ``L2-L3``, ``L3-L1``) never feed
  the headline (no voltage headline when only those are reported);
* current: the MAXIMUM of the line currents (``Ln``, falling back to ``Ln-N``): the limiting
  phase; the neutral current (``N``) never feeds the headline;
* state of charge: only an unphased value counts.

Every phased value is kept in ``phases``, keyed by the OCPP phase name and then by the seed's
camelCase field name, e.g. ``{"L1": {"voltage": 230.1, "current": 16.0, "powerKw": 3.7,
"energyImportKWh": 1.2}, "L1-L2": {"voltage": 400.0}}``. Unknown phase names are skipped.

Timestamps
----------
:func:`parse_ocpp_datetime` reads RFC 3339 / ISO 8601 (offsets, ``Z``, fractional seconds of any
length, naive taken as UTC) and returns an aware UTC datetime.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any, Final

from charging_api.domain.models import MeterSample

__all__ = ["meter_value_to_sample", "parse_ocpp_datetime"]

# --- timestamps ----------------------------------------------------------------------------


def parse_ocpp_datetime(text: str) -> datetime:
    """Parse an RFC 3339 / ISO 8601 timestamp into an aware UTC datetime.

    Naive input is taken as UTC. Raises :class:`ValueError` on anything that is not a timestamp.
    """
    # Fast path: the common "2024-01-15T10:31:00.000Z" form parses straight to UTC.
    if text.endswith("Z"):
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            pass
        else:
            if parsed.tzinfo is UTC:
                return parsed
            return _to_utc(parsed)
    cleaned = text.strip().upper()  # RFC 3339 allows "t" and "z"
    if not cleaned:
        raise ValueError("empty timestamp")
    try:
        parsed = datetime.fromisoformat(cleaned)
    except ValueError:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}") from None
    return _to_utc(parsed)


def _to_utc(parsed: datetime) -> datetime:
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"timestamp out of range: {parsed.isoformat()}") from None


# --- sampled values ------------------------------------------------------------------------

_ENERGY: Final = "Energy.Active.Import.Register"
_POWER: Final = "Power.Active.Import"
_VOLTAGE: Final = "Voltage"
_CURRENT: Final = "Current.Import"
_SOC: Final = "SoC"

#: measurand -> the seed's camelCase field name.
_FIELD: Final[dict[str, str]] = {
    _ENERGY: "energyImportKWh",
    _POWER: "powerKw",
    _VOLTAGE: "voltage",
    _CURRENT: "current",
    _SOC: "stateOfCharge",
}

#: measurand -> unit absent on the wire.
_DEFAULT_UNIT: Final[dict[str, str]] = {
    _ENERGY: "Wh",
    _POWER: "W",
    _VOLTAGE: "V",
    _CURRENT: "A",
    _SOC: "Percent",
}

#: measurand -> {lower-cased unit: factor to the seed's unit}.
_UNIT_FACTOR: Final[dict[str, dict[str, float]]] = {
    _ENERGY: {"wh": 0.001, "kwh": 1.0},
    _POWER: {"w": 0.001, "kw": 1.0},
    _VOLTAGE: {"v": 1.0},
    _CURRENT: {"a": 1.0},
    _SOC: {"percent": 1.0},
}

_PHASES: Final = frozenset(
    {"L1", "L2", "L3", "N", "L1-N", "L2-N", "L3-N", "L1-L2", "L2-L3", "L3-L1"}
)

#: location -> rank (lower is better); unknown locations rank last.
_LOCATION_RANK: Final[dict[str, int]] = {"Outlet": 0, "Inlet": 1, "Cable": 2, "EV": 3, "Body": 4}
_SOC_LOCATION_RANK: Final[dict[str, int]] = {
    "EV": 0,
    "Outlet": 1,
    "Inlet": 2,
    "Cable": 3,
    "Body": 4,
}
_UNKNOWN_RANK: Final = 99

_LINES: Final = (("L1", "L1-N"), ("L2", "L2-N"), ("L3", "L3-N"))
_LINES_TO_NEUTRAL_FIRST: Final = (("L1-N", "L1"), ("L2-N", "L2"), ("L3-N", "L3"))


#: measurand -> (headline slot, its location ranks); the slots are the order of _SLOT_MEASURANDS.
_SLOT_MEASURANDS: Final = (_ENERGY, _POWER, _VOLTAGE, _CURRENT, _SOC)
_MEASURAND: Final[dict[str, tuple[int, dict[str, int]]]] = {
    measurand: (slot, _SOC_LOCATION_RANK if measurand == _SOC else _LOCATION_RANK)
    for slot, measurand in enumerate(_SLOT_MEASURANDS)
}


def _unit_lookup(measurand: str) -> dict[str | None, float]:
    """{unit: factor} with the unit in OCPP's own spelling ("kWh") and lower-cased, so the usual
    unit is found without ``lower()``; ``None`` and ``""`` (no unit) give the natural unit's."""
    factors = _UNIT_FACTOR[measurand]
    lookup: dict[str | None, float] = {None: factors[_DEFAULT_UNIT[measurand].lower()]}
    lookup[""] = lookup[None]
    lookup.update(factors)
    for unit in ("Wh", "kWh", "W", "kW", "V", "A", "Percent"):
        if unit.lower() in factors:
            lookup[unit] = factors[unit.lower()]
    return lookup


_UNIT_LOOKUP: Final = {measurand: _unit_lookup(measurand) for measurand in _UNIT_FACTOR}


def meter_value_to_sample(meter_value: dict[str, Any]) -> MeterSample | None:
    """Turn one OCPP 1.6 ``MeterValue`` (wire, camelCase) into a :class:`MeterSample`.

    Returns None when the timestamp is missing or unparsable, or when no sampled value is
    usable (so no empty sample is ever stored). Bad sampled values are skipped.
    See the module docstring for units, locations and the phase rule.

    It runs for every MeterValues, so the usual shape (unphased values in OCPP's own unit
    spelling) takes a path of plain lookups: unphased values go to five slots, and only
    phased values go through the (measurand, phase) table the phase rule needs.
    """
    if not isinstance(meter_value, dict):
        return None
    raw_ts = meter_value.get("timestamp")
    if not isinstance(raw_ts, str):
        return None
    try:
        timestamp = parse_ocpp_datetime(raw_ts)
    except ValueError:
        return None

    # Unphased: per slot (location rank, value). Phased: (measurand, phase) -> (rank, value).
    # The first value of the best rank wins.
    ranks_of: list[int] = [_UNKNOWN_RANK + 1] * 5
    headline: list[float | None] = [None] * 5
    phased: dict[tuple[str, str], tuple[int, float]] = {}
    sampled = meter_value.get("sampledValue")
    for item in sampled if isinstance(sampled, list) else ():
        if not isinstance(item, dict):
            continue
        get = item.get
        if get("format") == "SignedData":
            continue
        measurand = get("measurand") or _ENERGY
        spec = _MEASURAND.get(measurand) if isinstance(measurand, str) else None
        if spec is None:
            continue
        unit = get("unit")
        factors = _UNIT_LOOKUP[measurand]
        if unit is None or isinstance(unit, str):
            factor = factors.get(unit)
            if factor is None:
                factor = factors.get(unit.lower()) if unit is not None else None
                if factor is None:
                    continue
        elif not unit:  # a falsy non-string (0, [], false): the natural unit, as ``or`` says
            factor = factors[None]
        else:
            continue
        raw = get("value")
        if isinstance(raw, str):
            try:
                number = float(raw)
            except ValueError:
                with_comma = _decimal_comma(raw)
                if with_comma is None:
                    continue
                number = with_comma
        elif isinstance(raw, (int, float)) and not isinstance(raw, bool):
            number = float(raw)
        else:
            continue
        if not math.isfinite(number):
            continue
        location = get("location") or "Outlet"
        ranks = spec[1]
        rank = ranks.get(location, _UNKNOWN_RANK) if isinstance(location, str) else _UNKNOWN_RANK
        phase = get("phase")
        if phase is None:
            slot = spec[0]
            if rank < ranks_of[slot]:
                ranks_of[slot] = rank
                headline[slot] = _scaled(number, factor)
        elif isinstance(phase, str) and phase in _PHASES:
            key = (measurand, phase)
            current = phased.get(key)
            if current is None or rank < current[0]:
                phased[key] = (rank, _scaled(number, factor))

    if not phased:
        if ranks_of == _NOTHING_RANKED:
            return None
        return MeterSample(
            timestamp=timestamp,
            energy_import_kwh=headline[0],
            power_kw=headline[1],
            voltage=headline[2],
            current=headline[3],
            state_of_charge=headline[4],
        )
    values: dict[tuple[str, str | None], float] = {
        (measurand, None): value
        for measurand, value in zip(_SLOT_MEASURANDS, headline, strict=True)
        if value is not None
    }
    phases: dict[str, dict[str, float]] = {}
    for (measurand, phase), (_, value) in phased.items():
        values[(measurand, phase)] = value
        phases.setdefault(phase, {})[_FIELD[measurand]] = value
    return MeterSample(
        timestamp=timestamp,
        energy_import_kwh=_headline_sum(values, _ENERGY),
        power_kw=_headline_sum(values, _POWER),
        voltage=_headline_mean_voltage(values),
        current=_headline_max_current(values),
        state_of_charge=headline[4],
        phases=phases,
    )


_NOTHING_RANKED: Final = [_UNKNOWN_RANK + 1] * 5


def _decimal_comma(raw: str) -> float | None:
    """``"123,4"`` -> 123.4: one comma, no point, digits on both sides; anything else None."""
    whole, comma, fraction = raw.strip().partition(",")
    if not comma or "." in raw or "," in fraction:
        return None
    digits = whole[1:] if whole[:1] in ("+", "-") else whole
    if not (digits.isdigit() and fraction.isdigit() and digits.isascii() and fraction.isascii()):
        return None
    return float(f"{whole}.{fraction}")


def _scaled(number: float, factor: float) -> float:
    """``number * factor`` rounded to 6 decimals. An integral reading already in the seed's unit
    (``"32"`` A, ``"55"`` %) is its own rounding: ``round()`` (a decimal conversion) is skipped."""
    if factor == 1.0 and number.is_integer():
        return number + 0.0  # -0.0 -> 0.0, as _round does
    return round(number * factor, 6) + 0.0


def _round(value: float) -> float:
    # round() may return -0.0; normalise it so the wire never says "-0.0".
    return round(value, 6) + 0.0


def _per_line(
    values: dict[tuple[str, str | None], float],
    measurand: str,
    lines: tuple[tuple[str, str], ...],
) -> list[float]:
    picked: list[float] = []
    for first, fallback in lines:
        value = values.get((measurand, first))
        if value is None:
            value = values.get((measurand, fallback))
        if value is not None:
            picked.append(value)
    return picked


def _headline_sum(values: dict[tuple[str, str | None], float], measurand: str) -> float | None:
    unphased = values.get((measurand, None))
    if unphased is not None:
        return unphased
    per_line = _per_line(values, measurand, _LINES)
    return _round(math.fsum(per_line)) if per_line else None


def _headline_mean_voltage(values: dict[tuple[str, str | None], float]) -> float | None:
    unphased = values.get((_VOLTAGE, None))
    if unphased is not None:
        return unphased
    per_line = _per_line(values, _VOLTAGE, _LINES_TO_NEUTRAL_FIRST)
    return _round(math.fsum(per_line) / len(per_line)) if per_line else None


def _headline_max_current(values: dict[tuple[str, str | None], float]) -> float | None:
    unphased = values.get((_CURRENT, None))
    if unphased is not None:
        return unphased
    per_line = _per_line(values, _CURRENT, _LINES)
    return max(per_line) if per_line else None
