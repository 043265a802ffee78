"""Contract tests for the operator side of every ``Store`` (SQLite, PostgreSQL, the fake):
the operations log, wanted availability, configuration keys, firmware/diagnostics history."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from charging_api.domain.models import (
    Availability,
    ConfigurationEntry,
    ConnectorAvailability,
    DeviceJob,
    DeviceStatus,
    OperationRecord,
)
from charging_api.domain.ports import Store

OpenStore = Callable[..., Awaitable[Store]]
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def record(cp: str, action: str, i: int, error: str | None = None) -> OperationRecord:
    return OperationRecord(
        0,
        cp,
        action,
        "ops",
        T0 + timedelta(seconds=i),
        12,
        {"type": "Soft", "n": i},
        None if error else {"status": "Accepted"},
        error,
    )


async def test_operations_log_keeps_every_field_newest_first_and_pages(
    open_store: OpenStore,
) -> None:
    """The log returns what was recorded (request, answer, error code), newest first, filtered
    by charge point, paged with before_id, and survives a reopen."""
    store = await open_store()
    stored = [
        await store.add_operation(record("CP1", "Reset", 0)),
        await store.add_operation(record("CP2", "ClearCache", 1)),
        await store.add_operation(record("CP1", "Reset", 2, error="CHARGE_POINT_TIMEOUT")),
    ]
    assert [r.id for r in stored] == sorted({r.id for r in stored})
    assert stored[0].request == {"type": "Soft", "n": 0}
    await store.close()
    store = await open_store()
    newest = await store.operations(None, 10, None)
    assert [r.id for r in newest] == [r.id for r in reversed(stored)]
    assert newest[0].error_code == "CHARGE_POINT_TIMEOUT" and newest[0].response is None
    assert newest[2].response == {"status": "Accepted"}
    assert newest[2].requested_at == T0 and newest[2].duration_ms == 12
    only_cp1 = await store.operations("CP1", 10, None)
    assert [r.action for r in only_cp1] == ["Reset", "Reset"]
    page = await store.operations(None, 1, stored[2].id)
    assert [r.id for r in page] == [stored[1].id]


async def test_wanted_availability_is_replaced_per_connector(open_store: OpenStore) -> None:
    """One wanted availability per connector: the last one written wins, per charge point."""
    store = await open_store()
    await store.put_availability(
        ConnectorAvailability("CP1", 1, Availability.INOPERATIVE, True, T0)
    )
    await store.put_availability(
        ConnectorAvailability("CP1", 1, Availability.INOPERATIVE, False, T0 + timedelta(1))
    )
    await store.put_availability(ConnectorAvailability("CP1", 0, Availability.OPERATIVE, False, T0))
    await store.put_availability(ConnectorAvailability("CP2", 1, Availability.OPERATIVE, False, T0))
    found = await store.availabilities("CP1")
    assert found == [
        ConnectorAvailability("CP1", 0, Availability.OPERATIVE, False, T0),
        ConnectorAvailability("CP1", 1, Availability.INOPERATIVE, False, T0 + timedelta(1)),
    ]


async def test_configuration_keeps_reported_wanted_and_result_apart(
    open_store: OpenStore,
) -> None:
    """Reported values, wanted values and the last ChangeConfiguration answer of a key are
    written separately and none overwrites the others."""
    store = await open_store()
    await store.put_wanted_configuration("CP1", "MeterValueSampleInterval", "30")
    await store.put_reported_configuration(
        "CP1",
        [
            ConfigurationEntry("CP1", "MeterValueSampleInterval", "60", False, T0),
            ConfigurationEntry("CP1", "NumberOfConnectors", "2", True, T0),
        ],
    )
    await store.put_configuration_result("CP1", "MeterValueSampleInterval", "Accepted", T0)
    await store.put_reported_configuration(
        "CP1", [ConfigurationEntry("CP1", "MeterValueSampleInterval", "30", False, T0)]
    )
    found = {e.key: e for e in await store.configuration("CP1")}
    assert found["MeterValueSampleInterval"] == ConfigurationEntry(
        "CP1", "MeterValueSampleInterval", "30", False, T0, "30", "Accepted", T0
    )
    assert found["NumberOfConnectors"].readonly is True
    assert found["NumberOfConnectors"].wanted is None
    await store.put_wanted_configuration("CP1", "MeterValueSampleInterval", None)
    entry = {e.key: e for e in await store.configuration("CP1")}["MeterValueSampleInterval"]
    assert entry.wanted is None and entry.value == "30"
    assert await store.configuration("CP2") == []


async def test_device_statuses_are_a_history_per_job(open_store: OpenStore) -> None:
    """Firmware and diagnostics statuses are kept apart, newest first."""
    store = await open_store()
    for i, status in enumerate(["Downloading", "Downloaded", "Installing", "Installed"]):
        await store.add_device_status(
            DeviceStatus(0, "CP1", DeviceJob.FIRMWARE, status, T0 + timedelta(seconds=i))
        )
    await store.add_device_status(DeviceStatus(0, "CP1", DeviceJob.DIAGNOSTICS, "Uploaded", T0))
    firmware = await store.device_statuses("CP1", DeviceJob.FIRMWARE, 3)
    assert [s.status for s in firmware] == ["Installed", "Installing", "Downloaded"]
    assert firmware[0].at == T0 + timedelta(seconds=3) and firmware[0].id > 0
    diagnostics = await store.device_statuses("CP1", DeviceJob.DIAGNOSTICS, 10)
    assert [s.status for s in diagnostics] == ["Uploaded"]
    assert await store.device_statuses("CP2", DeviceJob.FIRMWARE, 10) == []
