"""Contract tests: what the core relies on from any ``Store``.

Each test runs once per backend (see ``conftest.py``): SQLite, PostgreSQL and the in-memory
fake of ``tests/fakes.py``. What only ``SqlStore`` promises is in ``test_sql_store.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from charging_api.domain.models import (
    ChargePointInfo,
    ClosedBy,
    ConnectorState,
    IdTag,
    IdTagStatus,
    MeterSample,
    StoredMeterSample,
    TransactionQuery,
)
from charging_api.domain.ports import Store

OpenStore = Callable[..., Awaitable[Store]]  # the conftest fixture
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


async def start_tx(
    store: Store,
    *,
    at: datetime = T0,
    cp: str = "CP1",
    user: str | None = "u1",
    meter: int = 1000,
    connector: int = 1,
    tag: str = "TAG1",
) -> Any:
    tx, created = await store.start_transaction(
        cp, connector, tag, user, meter, at, IdTagStatus.ACCEPTED
    )
    assert created
    return tx


def sample(tx: int | None, at: datetime, **fields: Any) -> StoredMeterSample:
    return StoredMeterSample("CP1", 1, tx, MeterSample(timestamp=at, **fields))


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_transaction_ids_unique_increasing_and_stable_across_reopen(
    open_store: OpenStore,
) -> None:
    """OCPP transactionIds come from the database: unique, increasing, never reused after restart."""
    store = await open_store()
    first = [await start_tx(store, at=T0 + timedelta(minutes=i)) for i in range(3)]
    ids = [t.id for t in first]
    assert ids == sorted(set(ids))
    await store.close()

    reopened = await open_store()
    assert await reopened.get_transaction(ids[0]) == first[0]
    later = await start_tx(reopened, at=T0 + timedelta(hours=1))
    assert later.id > ids[-1]


async def test_a_replayed_start_gets_the_transaction_it_created(open_store: OpenStore) -> None:
    """The same StartTransaction again (even stamped in another time zone) gets the first
    transaction back, not a new one; any difference (meter, connector, time) is a new start."""
    store = await open_store()
    tx = await start_tx(store)
    same_instant = T0.astimezone(timezone(timedelta(hours=2)))
    again = await store.start_transaction(
        "CP1", 1, "TAG1", "u1", 1000, same_instant, IdTagStatus.ACCEPTED
    )
    assert again == (tx, False)
    for cp, connector, meter, at in [
        ("CP1", 1, 1001, T0),
        ("CP1", 2, 1000, T0),
        ("CP1", 1, 1000, T0 + timedelta(seconds=1)),
    ]:
        other, created = await store.start_transaction(
            cp, connector, "TAG1", "u1", meter, at, IdTagStatus.ACCEPTED
        )
        assert created and other.id != tx.id
    assert len(await store.active_transactions()) == 4


async def test_datetimes_come_back_aware_utc(open_store: OpenStore) -> None:
    """Stored datetimes are returned timezone-aware in UTC on every backend."""
    store = await open_store()
    tx = await start_tx(store, at=T0.astimezone(timezone(timedelta(hours=-5))))
    got = await store.get_transaction(tx.id)
    assert got is not None and got.started_at == T0 and got.started_at.tzinfo == UTC


async def test_stop_twice_keeps_first_stop(open_store: OpenStore) -> None:
    """A repeated StopTransaction returns the first stop and does not overwrite it."""
    store = await open_store()
    tx = await start_tx(store)
    stopped = await store.stop_transaction(tx.id, 5000, T0 + timedelta(hours=1), "Local")
    assert stopped is not None and not stopped.active
    assert (stopped.meter_stop_wh, stopped.stopped_at, stopped.stop_reason) == (
        5000,
        T0 + timedelta(hours=1),
        "Local",
    )
    again = await store.stop_transaction(tx.id, 9999, T0 + timedelta(hours=2), "Remote")
    assert again == stopped
    assert await store.get_transaction(tx.id) == stopped


async def test_a_stop_records_who_closed_it_and_the_apps_reason(open_store: OpenStore) -> None:
    """closed_by and app_stop_reason are stored with the stop and read back; a charge
    point's stop is marked ChargePoint."""
    store = await open_store()
    by_server = await start_tx(store)
    by_charger = await start_tx(store, at=T0 + timedelta(minutes=1), connector=2)
    closed = await store.stop_transaction(
        by_server.id, 1500, T0 + timedelta(hours=1), "Other", ClosedBy.SUPERSEDED, "UserStop"
    )
    assert closed is not None
    assert (closed.closed_by, closed.app_stop_reason) == (ClosedBy.SUPERSEDED, "UserStop")
    assert await store.get_transaction(by_server.id) == closed
    plain = await store.stop_transaction(by_charger.id, 1200, T0 + timedelta(hours=1), "Local")
    assert plain is not None
    assert (plain.closed_by, plain.app_stop_reason) == (ClosedBy.CHARGE_POINT, None)
    assert await store.transactions_of(None, 10) == [plain, closed]


async def test_correct_stop_only_rewrites_what_the_server_closed(open_store: OpenStore) -> None:
    """correct_stop replaces meter, time and reason of a server-closed transaction (its mark
    and the app's reason stay); one the charge point stopped, an open one: unchanged."""
    store = await open_store()
    ghost = await start_tx(store)
    await store.stop_transaction(
        ghost.id, 1000, T0, "StaleTransaction", ClosedBy.CONNECTOR_AVAILABLE, "UserStop"
    )
    fixed = await store.correct_stop(ghost.id, 3456, T0 + timedelta(minutes=30), "PowerLoss")
    assert fixed is not None
    assert (fixed.meter_stop_wh, fixed.stopped_at, fixed.stop_reason) == (
        3456,
        T0 + timedelta(minutes=30),
        "PowerLoss",
    )
    assert (fixed.closed_by, fixed.app_stop_reason) == (ClosedBy.CONNECTOR_AVAILABLE, "UserStop")
    assert await store.get_transaction(ghost.id) == fixed

    normal = await start_tx(store, connector=2)
    stopped = await store.stop_transaction(normal.id, 2000, T0 + timedelta(hours=1), "Local")
    assert await store.correct_stop(normal.id, 1, T0, "Other") == stopped
    still_open = await start_tx(store, connector=3)
    assert await store.correct_stop(still_open.id, 1, T0, "Other") == still_open
    assert await store.correct_stop(424242, 1, T0, None) is None


async def test_stop_unknown_transaction_returns_none(open_store: OpenStore) -> None:
    """Stopping a transaction id we never issued returns None rather than raising."""
    store = await open_store()
    assert await store.stop_transaction(424242, 1, T0, None) is None


async def test_transaction_queries(open_store: OpenStore) -> None:
    """active_transactions (by id), transactions_of (newest start first, per user or all)."""
    store = await open_store()
    a = await start_tx(store, at=T0, user="u1")
    b = await start_tx(store, at=T0 + timedelta(minutes=5), user=None, connector=2)
    c = await start_tx(store, at=T0 + timedelta(minutes=10), user="u2", cp="CP2")
    # Recorded last, started before all others (a charge point that was offline reports late).
    d = await start_tx(store, at=T0 - timedelta(hours=1), user="u1", cp="CP3")
    await store.stop_transaction(a.id, 2000, T0 + timedelta(minutes=20), None)
    assert [t.id for t in await store.active_transactions()] == [b.id, c.id, d.id]
    assert [t.id for t in await store.transactions_of(None, 10)] == [c.id, b.id, a.id, d.id]
    assert [t.id for t in await store.transactions_of(None, 2)] == [c.id, b.id]
    assert [t.id for t in await store.transactions_of("u1", 10)] == [a.id, d.id]


async def test_meter_samples_batch_flush_and_read_back(open_store: OpenStore) -> None:
    """Samples of a transaction read back in timestamp order, phases intact, others apart."""
    store = await open_store(meter_flush_interval=60, meter_batch_size=1000)
    tx = await start_tx(store)
    phases = {"L1": {"voltage": 230.1, "current": 15.5}, "L2": {"voltage": 229.8}}
    store.add_meter_samples(
        [
            sample(tx.id, T0 + timedelta(seconds=20), energy_import_kwh=1.2),
            sample(
                tx.id,
                T0,
                energy_import_kwh=1.0,
                power_kw=11.0,
                voltage=230.0,
                current=16.0,
                state_of_charge=40.0,
                phases=phases,
            ),
            sample(None, T0 + timedelta(seconds=5)),
        ]
    )
    store.add_meter_samples([sample(tx.id, T0 + timedelta(seconds=10), power_kw=7.5)])
    await store.flush()
    got = await store.meter_samples_of(tx.id)
    assert [s.sample.timestamp for s in got] == [T0 + timedelta(seconds=s) for s in (0, 10, 20)]
    assert got[0] == sample(
        tx.id,
        T0,
        energy_import_kwh=1.0,
        power_kw=11.0,
        voltage=230.0,
        current=16.0,
        state_of_charge=40.0,
        phases=phases,
    )
    assert got[1].sample.energy_import_kwh is None and got[1].sample.phases == {}
    assert all(s.sample.timestamp.tzinfo == UTC for s in got)


async def test_samples_read_back_before_any_flush(open_store: OpenStore) -> None:
    """A sample is readable as soon as it is added (no flush first): merged in time order
    with those already written, in UTC, other transactions' apart."""
    store = await open_store(meter_flush_interval=60, meter_batch_size=1000)
    tx = await start_tx(store)
    store.add_meter_samples([sample(tx.id, T0 + timedelta(seconds=10), power_kw=1.0)])
    await store.flush()
    plus2 = timezone(timedelta(hours=2))
    store.add_meter_samples(
        [
            sample(tx.id, (T0 + timedelta(seconds=20)).astimezone(plus2), power_kw=3.0),
            sample(tx.id + 1, T0 + timedelta(seconds=5), power_kw=9.0),
            sample(tx.id, T0, power_kw=0.5),
        ]
    )
    got = await store.meter_samples_of(tx.id)
    assert [(s.sample.timestamp, s.sample.power_kw) for s in got] == [
        (T0, 0.5),
        (T0 + timedelta(seconds=10), 1.0),
        (T0 + timedelta(seconds=20), 3.0),
    ]
    assert all(s.sample.timestamp.tzinfo == UTC for s in got)
    await store.flush()
    assert await store.meter_samples_of(tx.id) == got  # the same once written


async def test_close_without_flush_writes_buffered_samples(
    open_store: OpenStore,
) -> None:
    """close() is durable: samples still in the buffer are written before the engine goes."""
    store = await open_store(meter_flush_interval=60, meter_batch_size=1000)
    store.add_meter_samples([sample(7, T0 + timedelta(seconds=i)) for i in range(5)])
    await store.close()
    reopened = await open_store()
    assert len(await reopened.meter_samples_of(7)) == 5


async def test_naive_timestamps_are_refused(open_store: OpenStore) -> None:
    """Naive datetimes are rejected at the call, not silently stored in an unknown zone."""
    store = await open_store()
    naive = T0.replace(tzinfo=None)
    with pytest.raises(ValueError):
        store.add_meter_samples([sample(7, naive)])
    with pytest.raises(Exception, match="naive"):
        await start_tx(store, at=naive)
    tx = await start_tx(store)
    with pytest.raises(Exception, match="naive"):
        await store.stop_transaction(tx.id, 2000, naive, None)
    with pytest.raises(ValueError, match="naive"):
        await store.set_connector_status(ConnectorState("CP1", 1, "Available", updated_at=naive))
    assert await store.get_transaction(tx.id) == tx and await store.connector_states("CP1") == []


async def test_id_tag_upsert_and_id_tags_of(open_store: OpenStore) -> None:
    """put_id_tag inserts or replaces; id_tags_of lists a user's tags."""
    store = await open_store()
    assert await store.get_id_tag("A") is None
    await store.put_id_tag(IdTag("B", "u1", IdTagStatus.BLOCKED, T0))
    await store.put_id_tag(IdTag("A", "u1"))
    await store.put_id_tag(IdTag("C", None))
    assert await store.get_id_tag("B") == IdTag("B", "u1", IdTagStatus.BLOCKED, T0)
    assert [t.tag for t in await store.id_tags_of("u1")] == ["A", "B"]
    await store.put_id_tag(IdTag("A", "u2", IdTagStatus.EXPIRED))
    assert await store.get_id_tag("A") == IdTag("A", "u2", IdTagStatus.EXPIRED)
    assert [t.tag for t in await store.id_tags_of("u1")] == ["B"]


async def test_id_tags_are_case_insensitive_and_keep_their_spelling(
    open_store: OpenStore,
) -> None:
    """Tag lookups ignore case (OCPP CiString20, non-ASCII too); the first spelling is kept."""
    store = await open_store()
    await store.put_id_tag(IdTag("Tag-Ab", "u1"))
    for asked in ("Tag-Ab", "tag-ab", "TAG-AB"):
        assert await store.get_id_tag(asked) == IdTag("Tag-Ab", "u1")
    await store.put_id_tag(IdTag("TAG-AB", "u1", IdTagStatus.BLOCKED, T0))  # the same card
    assert await store.get_id_tag("tag-ab") == IdTag("Tag-Ab", "u1", IdTagStatus.BLOCKED, T0)
    assert [t.tag for t in await store.id_tags_of("u1")] == ["Tag-Ab"]
    await store.put_id_tag(IdTag("ÄRGER-Ω", "u2"))  # SQL lower() folds ASCII only on SQLite
    assert await store.get_id_tag("ärger-ω") == IdTag("ÄRGER-Ω", "u2")
    assert await store.get_id_tag("tag-ab ") is None


async def test_connector_status_upsert(open_store: OpenStore) -> None:
    """set_connector_status keeps one row per connector, holding the latest status."""
    store = await open_store()
    await store.set_connector_status(ConnectorState("CP1", 2, "Available", updated_at=T0))
    await store.set_connector_status(ConnectorState("CP1", 1, "Available", updated_at=T0))
    await store.set_connector_status(
        ConnectorState("CP1", 1, "Faulted", "GroundFailure", T0 + timedelta(1))
    )
    await store.set_connector_status(ConnectorState("CP2", 1, "Offline"))
    assert await store.connector_states("CP1") == [
        ConnectorState("CP1", 1, "Faulted", "GroundFailure", T0 + timedelta(1)),
        ConnectorState("CP1", 2, "Available", "NoError", T0),
    ]
    assert await store.connector_states("CP3") == []


async def test_connector_statuses_are_batched_and_survive_close(open_store: OpenStore) -> None:
    """Buffered statuses are visible at once, written by flush, and not lost by close."""
    store = await open_store()
    await store.set_connector_status(ConnectorState("CP1", 1, "Preparing", updated_at=T0))
    await store.flush()
    await store.set_connector_status(ConnectorState("CP1", 1, "Charging", updated_at=T0))
    assert [s.status for s in await store.connector_states("CP1")] == ["Charging"]
    await store.close()
    reopened = await open_store()
    assert [s.status for s in await reopened.connector_states("CP1")] == ["Charging"]


async def test_record_boot_does_not_clobber_registration(open_store: OpenStore) -> None:
    """BootNotification updates what the charge point reports but keeps password and registered_at."""
    store = await open_store()
    await store.add_charge_point("CP1", "hash1")
    registered = await store.get_charge_point("CP1")
    assert registered is not None and registered.registered_at is not None
    info = ChargePointInfo("ACME", "X1", "SN1", "1.0")
    await store.record_boot("CP1", info, T0)
    await store.record_boot("CP1", ChargePointInfo("ACME", "X1", "SN1", "1.1"), T0 + timedelta(1))
    cp = await store.get_charge_point("CP1")
    assert cp is not None
    assert (cp.password_hash, cp.registered_at) == ("hash1", registered.registered_at)
    assert cp.info == ChargePointInfo("ACME", "X1", "SN1", "1.1")

    await store.record_boot("CP2", info, T0)  # unknown: created, not registered
    cp2 = await store.get_charge_point("CP2")
    assert cp2 is not None and (cp2.info, cp2.password_hash, cp2.registered_at) == (
        info,
        None,
        None,
    )
    await store.add_charge_point("CP2", "hash2")  # registering keeps what it reported
    cp2 = await store.get_charge_point("CP2")
    assert cp2 is not None and (cp2.info, cp2.password_hash) == (info, "hash2")
    assert cp2.registered_at is not None
    await store.add_charge_point("CP2", None)  # re-key keeps the first registration time
    again = await store.get_charge_point("CP2")
    assert again is not None and (again.password_hash, again.registered_at) == (
        None,
        cp2.registered_at,
    )
    assert await store.count_charge_points() == 2
    assert await store.get_charge_point("nope") is None


async def test_find_transactions_filters_and_pages(open_store: OpenStore) -> None:
    """Operator search: user, charge point, start range (from inclusive, to exclusive),
    open/closed, newest first, limit and offset — the same on every store."""
    store = await open_store()
    a = await start_tx(store, at=T0, cp="CP1", user="u1")
    b = await start_tx(store, at=T0 + timedelta(hours=1), cp="CP2", user="u2", connector=1)
    c = await start_tx(store, at=T0 + timedelta(hours=2), cp="CP1", user="u1", connector=2)
    await store.stop_transaction(a.id, 2000, T0 + timedelta(minutes=30), "Local")

    async def ids(**query: Any) -> list[int]:
        return [tx.id for tx in await store.find_transactions(TransactionQuery(**query))]

    assert await ids() == [c.id, b.id, a.id]
    assert await ids(user_id="u1") == [c.id, a.id]
    assert await ids(charge_point_id="CP2") == [b.id]
    assert await ids(active=True) == [c.id, b.id]
    assert await ids(active=False) == [a.id]
    hour = T0 + timedelta(hours=1)
    assert await ids(started_from=hour) == [c.id, b.id]
    assert await ids(started_before=hour) == [a.id]
    assert await ids(limit=1, offset=1) == [b.id]
    assert await ids(offset=3) == []


async def test_operator_deletes_and_lists(open_store: OpenStore) -> None:
    """Charge points and id tags are listed in order and deleted (tags in any case); deleting
    a charge point takes its connectors, and an unknown one answers False."""
    store = await open_store()
    await store.add_charge_point("CP-B", None)
    await store.add_charge_point("CP-A", "hash")
    await store.set_connector_status(ConnectorState("CP-A", 1, "Available", updated_at=T0))
    assert [cp.id for cp in await store.list_charge_points()] == ["CP-A", "CP-B"]
    assert await store.delete_charge_point("CP-A") is True
    assert await store.delete_charge_point("CP-A") is False
    assert await store.connector_states("CP-A") == []
    assert [cp.id for cp in await store.list_charge_points()] == ["CP-B"]
    await store.put_id_tag(IdTag("TAG-B", "u1"))
    await store.put_id_tag(IdTag("TAG-A", None))
    assert [t.tag for t in await store.all_id_tags()] == ["TAG-A", "TAG-B"]
    assert await store.delete_id_tag("tag-b") is True
    assert await store.delete_id_tag("TAG-B") is False
    assert [t.tag for t in await store.all_id_tags()] == ["TAG-A"]


async def test_a_batch_of_documents_upserts_and_deletes_in_one_go(open_store: OpenStore) -> None:
    """put_documents (the session records' write-behind batch) replaces, adds and deletes
    documents of one kind at once, durably; other kinds are untouched; an empty batch is fine."""
    store = await open_store()
    await store.put_document("session", "1", {"limits": {}})
    await store.put_document("session", "2", {"limits": {"soc": 80}})
    await store.put_document("tariff", "1", {"id": "1"})
    await store.put_documents(
        "session", {"1": {"receipt": {"energyKWh": 1.5}}, "2": None, "3": {"tariff": None}}
    )
    await store.put_documents("session", {})
    await store.close()
    again = await open_store()
    assert await again.documents("session") == {
        "1": {"receipt": {"energyKWh": 1.5}},
        "3": {"tariff": None},
    }
    assert await again.get_document("tariff", "1") == {"id": "1"}


async def test_documents_upsert_list_delete_and_survive_reopen(open_store: OpenStore) -> None:
    """Session records and tariffs (documents) are replaced by key, listed by kind, deleted, durable."""
    store = await open_store()
    await store.put_document("tariff", "b", {"id": "b", "price": "0.30"})
    await store.put_document("tariff", "a", {"id": "a", "nested": {"x": [1, 2]}})
    await store.put_document("tariff", "b", {"id": "b", "price": "0.35"})
    await store.put_document("session", "1", {"limits": {"soc": 80}})
    assert await store.documents("tariff") == {
        "a": {"id": "a", "nested": {"x": [1, 2]}},
        "b": {"id": "b", "price": "0.35"},
    }
    assert await store.get_document("session", "1") == {"limits": {"soc": 80}}
    await store.put_document("tariff", "a", None)
    assert await store.get_document("tariff", "a") is None
    assert await store.get_document("nothing", "x") is None
    await store.close()
    again = await open_store()
    assert await again.documents("tariff") == {"b": {"id": "b", "price": "0.35"}}
