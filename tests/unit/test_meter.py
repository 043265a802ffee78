"""OCPP 1.6 MeterValue -> MeterSample (charging_api.ocpp.meter) -> the seed's meterValue object
(charging_api.api.protocol), and the wire's timestamps (charging_api.timefmt)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from charging_api.api.protocol import sample_to_wire
from charging_api.domain.models import MeterSample
from charging_api.ocpp.meter import meter_value_to_sample, parse_ocpp_datetime
from charging_api.timefmt import format_utc

TS = "2024-01-15T10:31:00.000Z"
AT = datetime(2024, 1, 15, 10, 31, tzinfo=UTC)


def sv(value: str, measurand: str | None = None, **extra: str) -> dict[str, Any]:
    """A SampledValue in wire form; only the keys given are present."""
    item: dict[str, Any] = {"value": value}
    if measurand is not None:
        item["measurand"] = measurand
    item.update(extra)
    return item


def sample_of(*sampled: Any, timestamp: str = TS) -> MeterSample:
    sample = meter_value_to_sample({"timestamp": timestamp, "sampledValue": list(sampled)})
    assert sample is not None
    return sample


def headline(sample: MeterSample) -> dict[str, float | None]:
    return {
        "energy": sample.energy_import_kwh,
        "power": sample.power_kw,
        "voltage": sample.voltage,
        "current": sample.current,
        "soc": sample.state_of_charge,
    }


E = "Energy.Active.Import.Register"
P = "Power.Active.Import"
V = "Voltage"
CUR = "Current.Import"
SOC = "SoC"

NONE: dict[str, float | None] = {
    "energy": None,
    "power": None,
    "voltage": None,
    "current": None,
    "soc": None,
}

# (id, sampled values, expected headline fields that are not None)
HEADLINE_CASES: list[tuple[str, list[Any], dict[str, float]]] = [
    ("energy Wh -> kWh", [sv("15234", E, unit="Wh")], {"energy": 15.234}),
    ("energy kWh kept", [sv("15.234", E, unit="kWh")], {"energy": 15.234}),
    ("no float artefact", [sv("1234.5", E, unit="Wh")], {"energy": 1.2345}),
    ("power W -> kW", [sv("7500", P, unit="W")], {"power": 7.5}),
    ("power kW kept", [sv("7.5", P, unit="kW")], {"power": 7.5}),
    ("default measurand and unit: energy Wh", [sv("15234")], {"energy": 15.234}),
    ("default unit of power is W", [sv("3700", P)], {"power": 3.7}),
    ("default unit of voltage is V", [sv("230.1", V)], {"voltage": 230.1}),
    ("default unit of current is A", [sv("32.6", CUR)], {"current": 32.6}),
    ("SoC in Percent", [sv("75", SOC, unit="Percent", location="EV")], {"soc": 75.0}),
    ("unit case-insensitive", [sv("7500", P, unit="w")], {"power": 7.5}),
    ("unit that does not fit skipped", [sv("10", E, unit="varh"), sv("7", P)], {"power": 0.007}),
    ("decimal comma", [sv("123,4", E, unit="Wh")], {"energy": 0.1234}),
    (
        "decimal comma in every field",
        [
            sv("15234,5", E, unit="Wh"),
            sv("7,4", P, unit="kW"),
            sv("230,1", V),
            sv("16,25", CUR),
            sv("75,5", SOC, location="EV"),
        ],
        {"energy": 15.2345, "power": 7.4, "voltage": 230.1, "current": 16.25, "soc": 75.5},
    ),
    ("negative decimal comma", [sv("-0,5", CUR)], {"current": -0.5}),
    (
        "three-phase energy and power summed",
        [
            sv("1000", E, phase="L1"),
            sv("2000", E, phase="L2"),
            sv("3000", E, phase="L3"),
            sv("3700", P, unit="W", phase="L1-N"),
            sv("3700", P, unit="W", phase="L2-N"),
            sv("3600", P, unit="W", phase="L3-N"),
        ],
        {"energy": 6.0, "power": 11.0},
    ),
    (
        "three-phase voltage is the mean of phase-to-neutral, phase-to-phase ignored",
        [
            sv("230.1", V, phase="L1-N"),
            sv("229.8", V, phase="L2-N"),
            sv("231.0", V, phase="L3-N"),
            sv("400.0", V, phase="L1-L2"),
            sv("401.0", V, phase="L2-L3"),
        ],
        {"voltage": 230.3},
    ),
    (
        "voltage from plain line names",
        [sv("230", V, phase="L1"), sv("232", V, phase="L2")],
        {"voltage": 231.0},
    ),
    ("only phase-to-phase voltage: no headline", [sv("400", V, phase="L1-L2")], {}),
    (
        "three-phase current is the maximum, neutral ignored",
        [
            sv("16.0", CUR, phase="L1"),
            sv("15.5", CUR, phase="L2"),
            sv("16.2", CUR, phase="L3"),
            sv("30.0", CUR, phase="N"),
        ],
        {"current": 16.2},
    ),
    (
        "unphased value wins over phases",
        [
            sv("1000", E, phase="L1"),
            sv("2000", E, phase="L2"),
            sv("5000", E),
            sv("7000", P, phase="L1"),
            sv("7400", P),
            sv("231", V),
            sv("230", V, phase="L1-N"),
            sv("32", CUR),
            sv("40", CUR, phase="L1"),
        ],
        {"energy": 5.0, "power": 7.4, "voltage": 231.0, "current": 32.0},
    ),
    (
        "SignedData skipped",
        [sv("3q2+7w==", E, format="SignedData"), sv("7000", P, format="Raw")],
        {"power": 7.0},
    ),
    (
        "garbage values skipped, the rest kept",
        [sv("abc", E), sv("", P), sv("NaN", V), sv("inf", CUR), sv("80", SOC)],
        {"soc": 80.0},
    ),
    ("bare JSON number accepted", [{"value": 15234, "measurand": E}], {"energy": 15.234}),
    (
        "other measurands ignored",
        [
            sv("50", "Frequency"),
            sv("1200", "Energy.Active.Export.Register"),
            sv("12", "Temperature"),
            sv("230", V),
        ],
        {"voltage": 230.0},
    ),
    (
        "Outlet preferred over other locations",
        [
            sv("9000", E, location="Inlet"),
            sv("8000", E, location="Outlet"),
            sv("9100", E, location="Body"),
        ],
        {"energy": 8.0},
    ),
    (
        "absent location counts as Outlet",
        [sv("232", V, location="Inlet"), sv("230", V)],
        {"voltage": 230.0},
    ),
    (
        "SoC prefers EV",
        [sv("50", SOC, location="Outlet"), sv("75", SOC, location="EV")],
        {"soc": 75.0},
    ),
    (
        "Inlet used when it is the only location",
        [sv("7000", P, location="Inlet")],
        {"power": 7.0},
    ),
    (
        "malformed entries skipped",
        ["x", None, {"no": "value"}, sv("1", E, phase="L9"), sv("2", V)],
        {"voltage": 2.0},
    ),
]


@pytest.mark.parametrize(
    ("sampled", "expected"),
    [(s, e) for _, s, e in HEADLINE_CASES],
    ids=[case_id for case_id, _, _ in HEADLINE_CASES],
)
def test_headline_fields(sampled: list[Any], expected: dict[str, float]) -> None:
    """Units, defaults, measurand mapping, phase rule and location preference give the headline."""
    assert headline(sample_of(*sampled)) == NONE | expected


def test_phases_keep_every_phased_value() -> None:
    """Every phased value is kept under its phase with the seed's camelCase field names."""
    sample = sample_of(
        sv("230.1", V, phase="L1-N"),
        sv("16.0", CUR, phase="L1"),
        sv("3700", P, unit="W", phase="L1"),
        sv("1200", E, unit="Wh", phase="L1"),
        sv("400.0", V, phase="L1-L2"),
        sv("2.0", CUR, phase="N"),
        sv("7400", P, unit="W"),
    )
    assert sample.phases == {
        "L1-N": {"voltage": 230.1},
        "L1": {"current": 16.0, "powerKw": 3.7, "energyImportKWh": 1.2},
        "L1-L2": {"voltage": 400.0},
        "N": {"current": 2.0},
    }


def test_phased_value_per_location_preference() -> None:
    """Within one phase the Outlet value wins over another location, in phases too."""
    sample = sample_of(sv("16", CUR, phase="L1", location="Inlet"), sv("15", CUR, phase="L1"))
    assert sample.phases == {"L1": {"current": 15.0}}
    assert sample.current == 15.0


def test_three_phase_sum_is_rounded() -> None:
    """Summing converted phase values leaves no float artefacts."""
    sample = sample_of(
        sv("0.1", E, unit="kWh", phase="L1"),
        sv("0.2", E, unit="kWh", phase="L2"),
    )
    assert sample.energy_import_kwh == 0.3


@pytest.mark.parametrize(
    "sampled",
    [
        None,
        [],
        [sv("10", E, unit="varh")],
        [sv("21.5", "Temperature")],
        [sv("a1b2c3", E, format="SignedData")],
        ["x", None, {"no": "value"}, sv("1", E, phase="L9")],
        [sv("1,234.5"), sv("1.234,5"), sv("1,2,3"), sv(",5"), sv("5,"), sv("n/a")],
    ],
    ids=["absent", "empty", "unit", "unknown measurand", "signed", "malformed", "not numbers"],
)
def test_no_usable_value_gives_none(sampled: list[Any] | None) -> None:
    """A MeterValue with a timestamp but no usable value is not a sample (never an empty row)."""
    meter_value: dict[str, Any] = {"timestamp": TS}
    if sampled is not None:
        meter_value["sampledValue"] = sampled
    assert meter_value_to_sample(meter_value) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [("123,4", 0.1234), (" 7,25 ", 0.00725), ("+2,0", 0.002), ("1,234", 0.001234)],
)
def test_decimal_comma_is_the_decimal_point(text: str, expected: float) -> None:
    """``"123,4"`` (a charger set to a European locale) is read as 123.4 Wh, not skipped."""
    assert sample_of(sv(text)).energy_import_kwh == expected
    assert sample_of(sv(text, phase="L1")).phases == {"L1": {"energyImportKWh": expected}}


@pytest.mark.parametrize(
    "meter_value",
    [
        {"sampledValue": [sv("1")]},
        {"timestamp": None, "sampledValue": [sv("1")]},
        {"timestamp": "", "sampledValue": [sv("1")]},
        {"timestamp": "yesterday", "sampledValue": [sv("1")]},
        {"timestamp": 1705314660, "sampledValue": [sv("1")]},
    ],
    ids=["missing", "null", "empty", "garbage", "number"],
)
def test_no_usable_timestamp_gives_none(meter_value: dict[str, Any]) -> None:
    """A MeterValue without a parsable timestamp is dropped (None), never raised."""
    assert meter_value_to_sample(meter_value) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-01-15T10:31:00Z", AT),
        ("2024-01-15T10:31:00.000Z", AT),
        ("2024-01-15T12:31:00+02:00", AT),
        ("2024-01-15T05:31:00-05:00", AT),
        ("2024-01-15T12:31:00+0200", AT),
        ("2024-01-15T10:31:00", AT),
        ("2024-01-15 10:31:00", AT),
        ("2024-01-15t10:31:00z", AT),
        ("2024-01-15T10:31:00.5Z", AT + timedelta(microseconds=500_000)),
        ("2024-01-15T10:31:00.123456Z", AT + timedelta(microseconds=123_456)),
        ("2024-01-15T10:31:00.123456789Z", AT + timedelta(microseconds=123_456)),
        ("2024-01-15T12:31:00.250+02:00", AT + timedelta(microseconds=250_000)),
        ("2024-01-16T00:01:00+13:30", AT),
    ],
    ids=[
        "Z",
        "Z millis",
        "+02:00",
        "-05:00",
        "+0200",
        "naive",
        "naive space",
        "lowercase t z",
        "tenths",
        "micros",
        "nanos truncated",
        "millis with offset",
        "offset across midnight",
    ],
)
def test_parse_ocpp_datetime(text: str, expected: datetime) -> None:
    """Timestamps with Z, offsets, no zone or any fractional digits become aware UTC."""
    parsed = parse_ocpp_datetime(text)
    assert parsed == expected
    assert parsed.tzinfo is UTC


@pytest.mark.parametrize(
    "text",
    ["", " ", "garbage", "2024-13-01T00:00:00Z", "2024-01-15T25:00:00Z", "15/01/2024 10:31", "Z"],
)
def test_parse_ocpp_datetime_rejects_garbage(text: str) -> None:
    """Anything that is not a timestamp raises ValueError."""
    with pytest.raises(ValueError):
        parse_ocpp_datetime(text)


@pytest.mark.parametrize(
    ("dt", "expected"),
    [
        (AT, "2024-01-15T10:31:00.000Z"),
        (AT.replace(microsecond=123_999), "2024-01-15T10:31:00.123Z"),
        (
            datetime(2024, 1, 15, 12, 31, tzinfo=timezone(timedelta(hours=2))),
            "2024-01-15T10:31:00.000Z",
        ),
        (datetime(2024, 1, 15, 10, 31), "2024-01-15T10:31:00.000Z"),
        (datetime(999, 1, 2, 3, 4, 5, tzinfo=UTC), "0999-01-02T03:04:05.000Z"),
    ],
    ids=["utc", "millis truncated", "offset converted", "naive as UTC", "padded year"],
)
def test_format_utc(dt: datetime, expected: str) -> None:
    """Timestamps go out as RFC 3339 UTC with milliseconds and Z."""
    assert format_utc(dt) == expected


def test_format_parse_round_trip() -> None:
    """A formatted timestamp parses back to the same instant (to the millisecond)."""
    dt = datetime(2024, 6, 30, 23, 59, 59, 999_000, tzinfo=UTC)
    assert parse_ocpp_datetime(format_utc(dt)) == dt


def test_seed_example_wire_dict() -> None:
    """The seed's meter_values_update example comes out exactly, from OCPP units."""
    meter_value = {
        "timestamp": "2024-01-15T10:31:00Z",
        "sampledValue": [
            {
                "value": "15234",
                "context": "Sample.Periodic",
                "format": "Raw",
                "measurand": "Energy.Active.Import.Register",
                "location": "Outlet",
                "unit": "Wh",
            },
            {
                "value": "7500",
                "context": "Sample.Periodic",
                "measurand": "Power.Active.Import",
                "unit": "W",
            },
            {"value": "230.1", "context": "Sample.Periodic", "measurand": "Voltage", "unit": "V"},
            {
                "value": "32.6",
                "context": "Sample.Periodic",
                "measurand": "Current.Import",
                "unit": "A",
            },
            {
                "value": "75",
                "context": "Sample.Periodic",
                "measurand": "SoC",
                "location": "EV",
                "unit": "Percent",
            },
        ],
    }
    sample = meter_value_to_sample(meter_value)
    assert sample is not None
    assert sample_to_wire(sample) == {
        "energyImportKWh": 15.234,
        "powerKw": 7.5,
        "voltage": 230.1,
        "current": 32.6,
        "timestamp": "2024-01-15T10:31:00.000Z",
        "stateOfCharge": 75,
    }


def test_wire_nulls_and_phases() -> None:
    """Unmeasured fields are null; phases appear only when there are phased values."""
    assert sample_to_wire(MeterSample(timestamp=AT)) == {
        "energyImportKWh": None,
        "powerKw": None,
        "voltage": None,
        "current": None,
        "timestamp": "2024-01-15T10:31:00.000Z",
        "stateOfCharge": None,
    }
    sample = sample_of(sv("230", V, phase="L1-N"), sv("400", V, phase="L1-L2"))
    wire = sample_to_wire(sample)
    assert wire["voltage"] == 230.0
    assert wire["phases"] == {"L1-N": {"voltage": 230.0}, "L1-L2": {"voltage": 400.0}}
