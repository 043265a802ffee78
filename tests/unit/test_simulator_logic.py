"""The simulator's charger logic without a socket: configuration keys, local list, profiles."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from charging_api.simulator.config import Configuration
from charging_api.simulator.memory import LocalList
from charging_api.simulator.profiles import Profile, ProfileStore

T0 = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)


def profile(
    profile_id: int,
    purpose: str,
    kind: str,
    periods: list[tuple[int, float]],
    *,
    level: int = 0,
    unit: str = "A",
    start: datetime | None = T0,
    duration: int | None = None,
    recurrency: str | None = None,
    valid_to: datetime | None = None,
) -> dict[str, Any]:
    """A csChargingProfiles in the ``ocpp`` library's snake_case form."""
    schedule: dict[str, Any] = {
        "charging_rate_unit": unit,
        "charging_schedule_period": [{"start_period": s, "limit": lim} for s, lim in periods],
    }
    if start is not None:
        schedule["start_schedule"] = start.isoformat()
    if duration is not None:
        schedule["duration"] = duration
    data: dict[str, Any] = {
        "charging_profile_id": profile_id,
        "stack_level": level,
        "charging_profile_purpose": purpose,
        "charging_profile_kind": kind,
        "charging_schedule": schedule,
    }
    if recurrency:
        data["recurrency_kind"] = recurrency
    if valid_to:
        data["valid_to"] = valid_to.isoformat()
    return data


def install(
    store: ProfileStore, connector: int, data: dict[str, Any], tx: int | None = None
) -> str:
    return store.install(Profile.from_request(connector, data, T0), tx)


def test_a_daily_profile_repeats_every_day() -> None:
    """A Recurring Daily profile sets its night limit on later days too."""
    store = ProfileStore()
    night = profile(
        1, "ChargePointMaxProfile", "Recurring", [(0, 8), (3600, 16)], recurrency="Daily"
    )
    assert install(store, 0, night) == "Accepted"
    assert store.limit_a(1, T0 + timedelta(days=3, minutes=30)) == 8
    assert store.limit_a(1, T0 + timedelta(days=3, hours=2)) == 16
    assert store.limit_a(1, T0 - timedelta(hours=23)) is None  # not before its first day


def test_a_relative_tx_profile_counts_from_the_transaction_start() -> None:
    """A Relative TxProfile begins when its transaction began, and ends with its duration."""
    store = ProfileStore()
    assert install(
        store, 1, profile(1, "TxProfile", "Relative", [(0, 6)], start=None), tx=None
    ) == ("Rejected")
    data = profile(1, "TxProfile", "Relative", [(0, 6), (600, 10)], start=None, duration=1200)
    assert install(store, 1, data, tx=42) == "Accepted"
    began = T0 + timedelta(hours=1)
    assert store.limit_a(1, began + timedelta(seconds=10), 42, began) == 6
    assert store.limit_a(1, began + timedelta(seconds=700), 42, began) == 10
    assert store.limit_a(1, began + timedelta(seconds=1300), 42, began) is None
    store.transaction_ended(1)
    assert store.profiles == []


def test_a_higher_stack_level_that_ended_lets_the_lower_one_through() -> None:
    """Within a purpose the highest stack level in force wins; valid_to ends it."""
    store = ProfileStore()
    install(store, 0, profile(1, "TxDefaultProfile", "Absolute", [(0, 20)]))
    install(
        store,
        0,
        profile(
            2, "TxDefaultProfile", "Absolute", [(0, 10)], level=2, valid_to=T0 + timedelta(hours=1)
        ),
    )
    assert store.limit_a(1, T0 + timedelta(minutes=5)) == 10
    assert store.limit_a(1, T0 + timedelta(hours=2)) == 20
    periods = store.composite(1, T0, 3 * 3600, 32.0)
    assert periods == [(0, 10.0), (3600, 20.0)]


def test_a_limit_in_watts_is_converted_at_230_volts() -> None:
    """A W limit becomes W / 230 amperes; a same-level same-purpose profile replaces it."""
    store = ProfileStore()
    install(store, 0, profile(1, "ChargePointMaxProfile", "Absolute", [(0, 4600)], unit="W"))
    assert store.limit_a(0, T0) == 20
    install(store, 0, profile(9, "ChargePointMaxProfile", "Absolute", [(0, 2300)], unit="W"))
    assert [p.profile_id for p in store.profiles] == [9]
    assert store.clear(purpose="ChargePointMaxProfile") is True
    assert store.clear(profile_id=9) is False


def test_configuration_rules() -> None:
    """Readonly Rejected, unknown NotSupported, keys case-insensitive, booleans normalised."""
    config = Configuration(connectors=2, meter_interval=10, heartbeat_interval=300)
    assert config.change("NumberOfConnectors", "3") == "Rejected"
    assert config.change("Whatever", "1") == "NotSupported"
    assert config.change("meterValueSampleInterval", "-1") == "Rejected"
    assert config.change("metervaluesampleinterval", "30") == "Accepted"
    assert config.integer("MeterValueSampleInterval") == 30
    assert config.change("LocalPreAuthorize", "TRUE") == "Accepted"
    assert config.flag("LocalPreAuthorize")
    known, unknown = config.get(["heartbeatinterval", "Nope"])
    assert known == [{"key": "HeartbeatInterval", "readonly": False, "value": "300"}]
    assert unknown == ["Nope"]


def test_local_list_versions() -> None:
    """Full replaces; a Differential must be newer; entries without idTagInfo are removed."""
    local = LocalList()
    accepted = {"status": "Accepted"}
    assert local.update(5, "Full", [{"id_tag": "A", "id_tag_info": accepted}]) == "Accepted"
    assert local.update(5, "Differential", [{"id_tag": "B", "id_tag_info": accepted}]) == (
        "VersionMismatch"
    )
    assert local.update(
        6, "Differential", [{"id_tag": "A"}, {"id_tag": "B", "id_tag_info": accepted}]
    ) == ("Accepted")
    assert (local.version, set(local.entries)) == (6, {"B"})
    too_many = [{"id_tag": f"T{i}", "id_tag_info": accepted} for i in range(101)]
    assert local.update(7, "Full", too_many) == "Failed"
    assert local.version == 6
