"""Issue 13 on the wire: limits, live snapshot, events, receipts, history, tariffs.

The real server on loopback ports (in-process, or as a ``charging-api serve`` process for the
restart), app clients over real WebSockets, charge points as real OCPP-J peers (the ``ocpp``
library). Receipts are checked against the samples on disk and the tariff by a computation
written here, independent of ``domain/tariffs.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import itertools
import json
import signal
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import websockets

from charging_api.simulator.connector import SimConnector
from charging_api.simulator.fleet import run_charge_point
from tests.conftest import AppClient, app_client, make_settings, running_server
from tests.e2e.test_cli import run_cli
from tests.peers.py_charge_point import connected_charge_point
from tests.reliability.helpers import db_rows, drain_pushes, energy, start_charge
from tests.serverproc import ServerProcess

CP, TAG = "CP-SESS", "TAG-ALICE"
TARIFF: dict[str, Any] = {
    "id": "std",
    "currency": "EUR",
    "vatPercent": "19",
    "elements": [
        {
            "priceComponents": [
                {"type": "ENERGY", "price": "0.40"},
                {"type": "FLAT", "price": "1.00"},
            ]
        }
    ],
}


@contextlib.asynccontextmanager
async def driver(url: str, token: str) -> AsyncIterator[AppClient]:
    """An app client that asked for session pushes (``sessionEvents``) when it authenticated."""
    ws = await websockets.connect(url)
    client = AppClient(ws)
    try:
        reply = await client.request("auth_request", {"token": token, "sessionEvents": True})
        assert reply["data"]["success"] is True, reply
        yield client
    finally:
        await client.close()


def event(kind: str, tx: int | None = None) -> Any:
    return lambda m: m["data"]["event"] == kind and tx in (None, m["data"]["transactionId"])


async def start_with_limits(
    app: AppClient, cp: Any, limits: dict[str, Any], meter_start: int = 5000
) -> tuple[int, dict[str, Any]]:
    request = asyncio.create_task(
        app.request(
            "start_charging_request", {"chargePointId": CP, "connectorId": 1, "limits": limits}
        )
    )
    await asyncio.wait_for(cp.remote_starts.get(), 10)
    started = await cp.start_tx(1, TAG, meter_start)
    reply = await request
    assert reply["data"]["success"] is True, reply
    return int(started.transaction_id), reply["data"]


async def test_energy_limit_stops_the_charge_and_the_receipt_says_so(tmp_path: Path) -> None:
    """energyKWh reached: RemoteStop is sent, limit_reached pushed, the receipt names the limit."""
    async with (
        running_server(make_settings(tmp_path)) as server,
        driver(server.app_url, server.token("alice", id_tag=TAG)) as alice,
        connected_charge_point(server.ocpp_url, CP) as cp,
    ):
        await cp.status(1, "Available")
        tx, reply = await start_with_limits(alice, cp, {"energyKWh": 1.0})
        assert reply["limits"] == {"energyKWh": 1.0}
        await cp.meter(1, tx, energy(5600))
        update = await alice.push("meter_values_update")
        assert update["data"]["session"]["energyKWh"] == 0.6  # not the 5.6 kWh register
        assert update["data"]["session"]["provenance"]["registerKWh"] == 5.6
        assert cp.remote_stops.empty()
        await cp.meter(1, tx, energy(6050))
        assert await asyncio.wait_for(cp.remote_stops.get(), 10) == {"transaction_id": tx}
        reached = await alice.push("session_event", where=event("limit_reached", tx))
        assert reached["data"]["limit"] == "energyKWh"
        await cp.stop_tx(tx, 6050, reason="Remote")
        ended = await alice.push("session_event", where=event("ended", tx))
        receipt = ended["data"]["receipt"]
        assert receipt["limitReached"] == "energyKWh"
        assert receipt["stopReason"] == "Remote"
        assert receipt["appStopReason"] == "Limit:energyKWh"
        assert receipt["energyKWh"] == 1.05
        again = await alice.request("get_receipt", {"transactionId": tx})
        assert again["data"]["receipt"] == receipt
        assert again["data"]["cdr"]["total_energy"] == 1.05


async def test_set_limits_during_the_session_and_cost_receipt_matches_a_hand_computation(
    tmp_path: Path,
) -> None:
    """An admin's tariff prices the session; a cost limit set mid-session stops it; the receipt's
    cost equals energy (from the stored samples) x price + flat fee, plus VAT."""
    settings = make_settings(tmp_path)
    async with (
        running_server(settings) as server,
        app_client(server, server.token("ops", role="admin")) as ops,
        driver(server.app_url, server.token("alice", id_tag=TAG)) as alice,
        connected_charge_point(server.ocpp_url, CP) as cp,
    ):
        refused = await alice.request("tariffs_request", {"action": "put", "tariff": TARIFF})
        assert refused["error"]["code"] == "FORBIDDEN"
        bad = await ops.request(
            "tariffs_request", {"action": "put", "tariff": {**TARIFF, "currency": "EURO"}}
        )
        assert bad["error"]["code"] == "VALIDATION_ERROR"
        assert bad["error"]["details"] == {"field": "currency"}
        await ops.request("tariffs_request", {"action": "put", "tariff": TARIFF})
        listed = await ops.request(
            "tariffs_request",
            {"action": "assign", "scope": f"chargePoint:{CP}", "tariffId": "std"},
        )
        assert listed["data"]["assignments"] == {f"chargePoint:{CP}": "std"}
        await cp.status(1, "Available")
        tx = await start_charge(alice, cp, CP, 1, TAG, meter_start=5000)
        await cp.meter(1, tx, energy(7000))  # 2 kWh: (1 + 0.8) x 1.19 = 2.14
        first = await alice.push("meter_values_update")
        assert first["data"]["session"]["cost"] == {"currency": "EUR", "total": "2.14"}
        changed = await alice.request(
            "set_limits_request", {"transactionId": tx, "limits": {"cost": 5}}
        )
        assert changed["data"]["limits"] == {"cost": "5"}
        await cp.meter(1, tx, energy(10_000))  # 5 kWh: (1 + 2.0) x 1.19 = 3.57
        await cp.meter(1, tx, energy(13_000))  # 8 kWh: (1 + 3.2) x 1.19 = 5.00
        assert await asyncio.wait_for(cp.remote_stops.get(), 10) == {"transaction_id": tx}
        await cp.stop_tx(tx, 13_100, reason="Remote")
        ended = await alice.push("session_event", where=event("ended", tx))
    receipt = ended["data"]["receipt"]
    registers = [
        r[0]
        for r in db_rows(
            settings.database_url,
            "SELECT energy_import_kwh FROM meter_samples WHERE transaction_id = ? "
            "ORDER BY timestamp, id",
            (tx,),
        )
    ]
    session_kwh = Decimal("13.1") - Decimal("5")  # StopTransaction's meterStop ends it
    assert registers == [7.0, 10.0, 13.0]
    excl = (Decimal("1.00") + session_kwh * Decimal("0.40")).quantize(
        Decimal("0.01"), ROUND_HALF_UP
    )
    vat = (excl * Decimal("0.19")).quantize(Decimal("0.01"), ROUND_HALF_UP)
    assert Decimal(str(receipt["energyKWh"])) == session_kwh
    assert Decimal(receipt["cost"]["exclVat"]) == excl
    assert Decimal(receipt["cost"]["total"]) == excl + vat
    assert receipt["limitReached"] == "cost"
    assert receipt["tariff"]["id"] == "std"


async def test_history_csv_parses_back(tmp_path: Path) -> None:
    """get_history pages the user's sessions and its CSV reads back to the same rows."""
    async with running_server(make_settings(tmp_path)) as server:
        async with (
            driver(server.app_url, server.token("alice", id_tag=TAG)) as alice,
            connected_charge_point(server.ocpp_url, CP) as cp,
        ):
            await cp.status(1, "Available")
            ids = []
            for start in (1000, 3000):
                tx = await start_charge(alice, cp, CP, 1, TAG, meter_start=start)
                await cp.stop_tx(tx, start + 1500)
                await alice.push("session_event", where=event("ended", tx))
                ids.append(tx)
            found = await alice.request("get_history", {"format": "csv", "limit": 10})
            other = await alice.request("get_history", {"chargePointId": "CP-OTHER"})
            spying = await alice.request("get_history", {"userId": "bob"})
        data = found["data"]
        assert data["total"] == 2 and other["data"]["total"] == 0
        assert spying["error"]["code"] == "FORBIDDEN"
        rows = list(csv.DictReader(io.StringIO(data["csv"])))
        assert [int(r["transactionId"]) for r in rows] == ids[::-1]
        assert [float(r["energyKWh"]) for r in rows] == [1.5, 1.5]
        month = datetime.fromisoformat(rows[0]["startedAt"]).strftime("%Y-%m")
        assert data["months"] == [{"month": month, "sessions": 2, "energyKWh": 3.0, "cost": {}}]


async def test_events_suspended_fault_offline_and_not_started(tmp_path: Path) -> None:
    """The owner hears suspended by the EV, fault, offline and back; a user waiting in Preparing
    hears "plugged in but didn't start"."""
    settings = make_settings(tmp_path, preparing_threshold=0.2)
    async with (
        running_server(settings) as server,
        driver(server.app_url, server.token("alice", id_tag=TAG)) as alice,
    ):
        async with connected_charge_point(server.ocpp_url, CP) as cp:
            await cp.status(1, "Available")
            tx = await start_charge(alice, cp, CP, 1, TAG, meter_start=0)
            await alice.push("session_event", where=event("started", tx))
            await cp.meter(
                1, tx, [*energy(100), {"value": "0", "measurand": "Power.Active.Import"}]
            )
            await cp.status(1, "SuspendedEV")
            await alice.push("session_event", where=event("suspended_ev", tx))
            await cp.status(1, "Faulted", "GroundFailure")
            fault = await alice.push("session_event", where=event("fault", tx))
            assert fault["data"]["errorCode"] == "GroundFailure"
        await alice.push("session_event", where=event("offline", tx))
        async with connected_charge_point(server.ocpp_url, CP) as cp:
            await alice.push("session_event", where=event("online", tx))
            await cp.stop_tx(tx, 100)
            await alice.push("session_event", where=event("ended", tx))
            await cp.status(2, "Available")
            ask = asyncio.create_task(
                alice.request("start_charging_request", {"chargePointId": CP, "connectorId": 2})
            )
            await asyncio.wait_for(cp.remote_starts.get(), 10)
            await cp.status(2, "Preparing")
            waited = await alice.push("session_event", where=event("not_started"))
            assert waited["data"]["connectorId"] == 2
            ask.cancel()


async def test_a_limit_survives_a_server_restart(tmp_path: Path) -> None:
    """The server is killed mid-session; after the restart the stored limit still stops the charge."""
    async with ServerProcess(tmp_path) as proc:
        token = proc.token("alice", id_tag=TAG)
        async with (
            driver(proc.app_url, token) as alice,
            connected_charge_point(proc.ocpp_url, CP) as cp,
        ):
            await cp.status(1, "Available")
            tx, _ = await start_with_limits(alice, cp, {"energyKWh": 2})
            await cp.meter(1, tx, energy(6000))
            await alice.push("meter_values_update")
        assert await proc.stop(signal.SIGKILL) == -signal.SIGKILL
        await proc.restart()
        async with (
            driver(proc.app_url, token) as alice,
            connected_charge_point(proc.ocpp_url, CP) as cp,
        ):
            await cp.meter(1, tx, energy(6500))
            assert cp.remote_stops.empty()
            await cp.meter(1, tx, energy(7100))
            assert await asyncio.wait_for(cp.remote_stops.get(), 10) == {"transaction_id": tx}
            await cp.stop_tx(tx, 7100, reason="Remote")
            ended = await alice.push("session_event", where=event("ended", tx))
            assert ended["data"]["receipt"]["limitReached"] == "energyKWh"
            assert ended["data"]["receipt"]["energyKWh"] == 2.1


async def test_a_groups_tariff_prices_its_members_and_a_users_own_tariff_wins(
    tmp_path: Path,
) -> None:
    """Tariff precedence on the wire: a token without groups gets the default; a token whose
    ``groups`` claim names a group with a tariff gets the group's (start notice, receipt
    cost); a tariff assigned to the user beats the group's."""

    def priced(tariff_id: str, energy_price: str) -> dict[str, Any]:
        elements = [{"priceComponents": [{"type": "ENERGY", "price": energy_price}]}]
        return {**TARIFF, "id": tariff_id, "elements": elements}

    async with (
        running_server(make_settings(tmp_path)) as server,
        app_client(server, server.token("ops", role="admin")) as ops,
        connected_charge_point(server.ocpp_url, CP) as cp,
    ):
        for tariff in (TARIFF, priced("fleet", "0.20"), priced("vip", "0.10")):
            put = await ops.request("tariffs_request", {"action": "put", "tariff": tariff})
            assert "error" not in put, put
        for scope, tariff_id in (("default", "std"), ("group:fleet", "fleet")):
            assigned = await ops.request(
                "tariffs_request", {"action": "assign", "scope": scope, "tariffId": tariff_id}
            )
        assert assigned["data"]["assignments"] == {"default": "std", "group:fleet": "fleet"}
        await cp.status(1, "Available")

        async def charge_2_kwh(user: str, tag: str, groups: tuple[str, ...]) -> dict[str, Any]:
            async with driver(server.app_url, server.token(user, id_tag=tag, groups=groups)) as app:
                asked = asyncio.create_task(
                    app.request("start_charging_request", {"chargePointId": CP, "connectorId": 1})
                )
                await asyncio.wait_for(cp.remote_starts.get(), 10)
                tx = int((await cp.start_tx(1, tag, 1000)).transaction_id)
                assert (await asked)["data"]["success"] is True
                started = await app.push("session_event", where=event("started", tx))
                await cp.meter(1, tx, energy(3000))
                await cp.stop_tx(tx, 3000)
                ended = await app.push("session_event", where=event("ended", tx))
                assert ended["data"]["receipt"]["tariff"] == started["data"]["tariff"]
                return dict(ended["data"]["receipt"])

        plain = await charge_2_kwh("bob", "TAG-BOB", ())
        assert plain["tariff"]["id"] == "std"
        assert plain["cost"]["total"] == "2.14"  # (2 x 0.40 + 1.00 flat) + 19 % VAT
        member = await charge_2_kwh("carol", "TAG-CAROL", ("drivers", "fleet"))
        assert member["tariff"]["id"] == "fleet"
        assert member["cost"]["total"] == "0.48"  # 2 x 0.20 + 19 % VAT
        await ops.request(
            "tariffs_request", {"action": "assign", "scope": "user:alice", "tariffId": "vip"}
        )
        own = await charge_2_kwh("alice", TAG, ("fleet",))
        assert own["tariff"]["id"] == "vip"
        assert own["cost"]["total"] == "0.24"  # 2 x 0.10 + 19 % VAT


async def test_a_tariff_the_cli_assigns_reaches_a_running_server(tmp_path: Path) -> None:
    """``charging-api tariffs`` writes the database while a server runs; the server notices
    (its version check, every 2 s) and prices the next session with it, read from memory."""
    settings = make_settings(tmp_path)
    loop = asyncio.get_running_loop()
    path = tmp_path / "std.json"
    path.write_text(json.dumps(TARIFF))
    async with (
        running_server(settings) as server,
        driver(server.app_url, server.token("alice", id_tag=TAG)) as alice,
        connected_charge_point(server.ocpp_url, CP) as cp,
    ):
        for args in (("put", str(path)), ("assign", "default", "std")):
            done = await asyncio.to_thread(
                run_cli, tmp_path, "tariffs", *args, DATABASE_URL=settings.database_url
            )
            assert done.returncode == 0, done.stderr
        deadline = loop.time() + 10
        while await server.app.sessions.tariff_for(CP, "alice") is None:
            assert loop.time() < deadline, "the running server did not see the CLI's tariff"
            await asyncio.sleep(0.1)
        await cp.status(1, "Available")
        asked = asyncio.create_task(
            alice.request("start_charging_request", {"chargePointId": CP, "connectorId": 1})
        )
        await asyncio.wait_for(cp.remote_starts.get(), 10)
        tx = int((await cp.start_tx(1, TAG, 1000)).transaction_id)
        assert (await asked)["data"]["success"] is True
        started = await alice.push("session_event", where=event("started", tx))
        assert started["data"]["tariff"]["id"] == "std"


async def test_a_receipt_survives_a_kill_right_after_the_stop(tmp_path: Path) -> None:
    """Session records are written behind the stop; a server killed (SIGKILL) at once still
    gives the same receipt after its restart: energy and cost from the stored transaction."""
    async with ServerProcess(tmp_path) as proc:
        token = proc.token("alice", id_tag=TAG)
        async with (
            driver(proc.app_url, token) as alice,
            driver(proc.app_url, proc.token("ops", role="admin")) as ops,
            connected_charge_point(proc.ocpp_url, CP) as cp,
        ):
            await ops.request("tariffs_request", {"action": "put", "tariff": TARIFF})
            await ops.request(
                "tariffs_request", {"action": "assign", "scope": "default", "tariffId": "std"}
            )
            await cp.status(1, "Available")
            tx = await start_charge(alice, cp, CP, 1, TAG, meter_start=5000)
            await cp.meter(1, tx, energy(6000))
            await cp.stop_tx(tx, 7000, reason="Local")
            ended = await alice.push("session_event", where=event("ended", tx))
        assert await proc.stop(signal.SIGKILL) == -signal.SIGKILL
        before = ended["data"]["receipt"]
        await proc.restart()
        async with driver(proc.app_url, token) as alice:
            after = (await alice.request("get_receipt", {"transactionId": tx}))["data"]["receipt"]
    assert after["energyKWh"] == before["energyKWh"] == 2.0
    assert after["cost"]["total"] == before["cost"]["total"] == "2.14"  # (1 + 0.8) x 1.19
    assert after["tariff"] == before["tariff"]
    assert after["stopReason"] == "Local"


def test_cli_manages_tariffs(tmp_path: Path) -> None:
    """charging-api tariffs put/assign/list round-trips a tariff; a bad one is refused naming why."""
    path = tmp_path / "std.json"
    path.write_text('{"id": "std", "currency": "EUR", "elements": [{"priceComponents": '
                    '[{"type": "ENERGY", "price": "0.3"}]}]}')  # fmt: skip
    assert run_cli(tmp_path, "tariffs", "put", str(path)).returncode == 0
    assigned = run_cli(tmp_path, "tariffs", "assign", "default", "std")
    assert assigned.returncode == 0, assigned.stderr
    assert '"default": "std"' in assigned.stdout
    listed = run_cli(tmp_path, "tariffs", "list")
    assert '"currency": "EUR"' in listed.stdout
    path.write_text('{"id": "bad", "currency": "EURO", "elements": []}')
    refused = run_cli(tmp_path, "tariffs", "put", str(path))
    assert refused.returncode == 1
    assert "currency" in refused.stderr


async def test_soc_limit_on_a_simulated_charge_point(tmp_path: Path) -> None:
    """A simulated charger reporting SoC: the SoC limit stops the charge when the car reaches it;
    the snapshot carries SoC, power and an ETA to the limit."""
    halt = asyncio.Event()
    car = SimConnector(1, energy_wh=1000.0, soc=50.0, battery_kwh=0.05)  # ~4 % per second
    async with (
        running_server(make_settings(tmp_path)) as server,
        app_client(server, server.token("ops", role="admin")) as ops,
        driver(server.app_url, server.token("alice", id_tag=TAG)) as alice,
    ):
        await ops.request("subscribe", {"chargePointIds": ["CP-SIM"]})
        runner = asyncio.create_task(
            run_charge_point(
                server.ocpp_url, "CP-SIM", meter_interval=0.2, state={1: car}, stop=halt
            )
        )
        try:
            await ops.push(
                "charging_status_update",
                where=lambda m: (
                    m["data"]["connectorId"] == 1 and m["data"]["status"] == "Available"
                ),
            )
            reply = await alice.request(
                "start_charging_request",
                {"chargePointId": "CP-SIM", "connectorId": 1, "limits": {"soc": 60}},
            )
            assert reply["data"]["success"] is True, reply
            # socEnforced is False unless a sample with SoC beat the reply (the simulator
            # meters every 0.2 s); the rule itself is pinned on the manual clock in
            # tests/unit/test_sessions_core.py.
            assert isinstance(reply["data"]["socEnforced"], bool)
            tx = reply["data"]["transactionId"]
            update = await alice.push(
                "meter_values_update",
                where=lambda m: m["data"]["session"]["stateOfCharge"] is not None,
                timeout=20,
            )
            assert update["data"]["session"]["socEnforced"] is True
            assert update["data"]["session"]["powerKw"] > 1
            eta = await alice.push(
                "meter_values_update",
                where=lambda m: m["data"]["session"]["etaTarget"] == "soc",
                timeout=20,
            )
            assert 0 <= eta["data"]["session"]["etaSeconds"] < 60
            reached = await alice.push(
                "session_event", where=event("limit_reached", tx), timeout=30
            )
            assert reached["data"]["limit"] == "soc"
            ended = await alice.push("session_event", where=event("ended", tx), timeout=20)
            receipt = ended["data"]["receipt"]
            assert receipt["stopReason"] == "Remote"
            assert receipt["limitReached"] == "soc"
            # The charge point reports SoC with one decimal: 59.96 % goes out as 60.0.
            assert round(car.soc, 1) >= 60
        finally:
            halt.set()
            await asyncio.wait_for(runner, 10)


async def test_the_end_of_an_energy_limit_is_charged_at_reduced_power(tmp_path: Path) -> None:
    """A simulated charger (smart charging: it caps its current to a TxProfile) with an
    energyKWh limit: within the last half of the limit (ENERGY_LIMIT_TAPER_PERCENT=50 here)
    the server asks for half the power, the charger's reported power drops, and the charge
    still stops at the limit."""
    halt = asyncio.Event()
    car = SimConnector(1, energy_wh=1000.0, soc=10.0, max_current_a=1000.0)  # ~230 kW
    settings = make_settings(
        tmp_path, energy_limit_taper_percent=50, energy_limit_taper_power_percent=50
    )
    async with (
        running_server(settings) as server,
        app_client(server, server.token("ops", role="admin")) as ops,
        driver(server.app_url, server.token("alice", id_tag=TAG)) as alice,
    ):
        await ops.request("subscribe", {"chargePointIds": ["CP-SIM"]})
        runner = asyncio.create_task(
            run_charge_point(
                server.ocpp_url, "CP-SIM", meter_interval=0.2, state={1: car}, stop=halt
            )
        )
        try:
            await ops.push(
                "charging_status_update",
                where=lambda m: (
                    m["data"]["connectorId"] == 1 and m["data"]["status"] == "Available"
                ),
            )
            reply = await alice.request(
                "start_charging_request",
                {"chargePointId": "CP-SIM", "connectorId": 1, "limits": {"energyKWh": 0.2}},
            )
            assert reply["data"]["success"] is True, reply
            tx = reply["data"]["transactionId"]
            full = await alice.push(
                "meter_values_update",
                where=lambda m: (m["data"]["session"]["powerKw"] or 0) > 100,
                timeout=20,
            )
            assert full["data"]["session"]["energyKWh"] < 0.1
            reduced = await alice.push(
                "session_event", where=event("power_reduced", tx), timeout=20
            )
            assert 100 < reduced["data"]["limitKw"] * 2 < 240
            lower = await alice.push(
                "meter_values_update",
                where=lambda m: (m["data"]["session"]["powerKw"] or 999) < 130,
                timeout=20,
            )
            assert 0.1 <= lower["data"]["session"]["energyKWh"] < 0.2
            reached = await alice.push(
                "session_event", where=event("limit_reached", tx), timeout=30
            )
            assert reached["data"]["limit"] == "energyKWh"
            ended = await alice.push("session_event", where=event("ended", tx), timeout=20)
            receipt = ended["data"]["receipt"]
            assert receipt["limitReached"] == "energyKWh"
            assert 0.2 <= receipt["energyKWh"] < 0.26
        finally:
            halt.set()
            await asyncio.wait_for(runner, 10)


async def test_session_pushes_only_when_asked_for(tmp_path: Path) -> None:
    """A client that did not ask for sessionEvents gets the seed's push sequence, no session_* pushes."""
    async with (
        running_server(make_settings(tmp_path)) as server,
        app_client(server, server.token("alice", id_tag=TAG)) as plain,
        connected_charge_point(server.ocpp_url, CP) as cp,
    ):
        await cp.status(1, "Available")
        tx = await start_charge(plain, cp, CP, 1, TAG, meter_start=0)
        await cp.meter(1, tx, energy(500))
        await cp.stop_tx(tx, 500)
        await plain.push("transaction_update", where=lambda m: m["data"]["status"] == "Stopped")
        kinds = {push["type"] for push in await drain_pushes(plain)}
        assert not kinds & {"session_event", "session_update"}
        receipt = await plain.request("get_receipt", {"transactionId": tx})
        assert receipt["data"]["receipt"]["energyKWh"] == 0.5


async def test_receipt_charging_idle_and_cost_recomputed_from_disk(tmp_path: Path) -> None:
    """Charging vs idle time and each tariff element's share, recomputed here from the rows on
    disk (samples, transaction) and the tariff, equal the receipt's."""
    tariff = {
        "id": "timed",
        "currency": "EUR",
        "vatPercent": "19",
        "elements": [
            {
                "priceComponents": [
                    {"type": "ENERGY", "price": "0.40"},
                    {"type": "TIME", "price": "3"},
                    {"type": "PARKING_TIME", "price": "12"},
                ]
            }
        ],
    }
    base = datetime.now(UTC) - timedelta(seconds=100)

    def at(seconds: int) -> str:
        return (base + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.000Z")

    settings = make_settings(tmp_path)
    async with (
        running_server(settings) as server,
        app_client(server, server.token("ops", role="admin")) as ops,
        driver(server.app_url, server.token("alice", id_tag=TAG)) as alice,
        connected_charge_point(server.ocpp_url, CP) as cp,
    ):
        await ops.request("tariffs_request", {"action": "put", "tariff": tariff})
        await ops.request("tariffs_request", {"action": "assign", "scope": "user:alice",
                                              "tariffId": "timed"})  # fmt: skip
        await cp.status(1, "Available")
        asked = asyncio.create_task(
            alice.request("start_charging_request", {"chargePointId": CP, "connectorId": 1})
        )
        await asyncio.wait_for(cp.remote_starts.get(), 10)
        started = await cp.start_tx(1, TAG, 1000, timestamp=at(0))
        tx = int(started.transaction_id)
        assert (await asked)["data"]["transactionId"] == tx
        for seconds, wh in ((20, 2000), (40, 2000), (60, 3000)):  # the middle step is idle
            await cp.meter(1, tx, energy(wh), timestamp=at(seconds))
        await cp.stop_tx(tx, 3000, timestamp=at(80))  # idle again
        ended = await alice.push("session_event", where=event("ended", tx))
    receipt = ended["data"]["receipt"]
    [(start_wh, stop_wh, t_start, t_stop)] = db_rows(
        settings.database_url,
        "SELECT meter_start_wh, meter_stop_wh, started_at, stopped_at FROM transactions "
        "WHERE id = ?",
        (tx,),
    )
    points = [(datetime.fromisoformat(t_start), Decimal(start_wh) / 1000)]
    points += [
        (datetime.fromisoformat(t), Decimal(str(kwh)))
        for t, kwh in db_rows(
            settings.database_url,
            "SELECT timestamp, energy_import_kwh FROM meter_samples WHERE transaction_id = ? "
            "ORDER BY timestamp",
            (tx,),
        )
    ]
    points.append((datetime.fromisoformat(t_stop), Decimal(stop_wh) / 1000))
    charging = idle = Decimal(0)
    for (t0, e0), (t1, e1) in itertools.pairwise(points):
        step = Decimal((t1 - t0).total_seconds())
        if e1 > e0:
            charging += step
        else:
            idle += step
    kwh = points[-1][1] - points[0][1]
    hour = Decimal(3600)
    excl = (kwh * Decimal("0.40") + charging / hour * 3 + idle / hour * 12).quantize(
        Decimal("0.01"), ROUND_HALF_UP
    )
    assert (charging, idle) == (Decimal(40), Decimal(40))
    assert receipt["chargingSeconds"] == 40 and receipt["idleSeconds"] == 40
    assert Decimal(str(receipt["energyKWh"])) == kwh
    assert Decimal(receipt["cost"]["exclVat"]) == excl
    vat = (excl * Decimal("0.19")).quantize(Decimal("0.01"), ROUND_HALF_UP)
    assert Decimal(receipt["cost"]["total"]) == excl + vat
    components = {line["component"] for line in receipt["cost"]["lines"]}
    assert components == {"ENERGY", "TIME", "PARKING_TIME"}
    assert receipt["tariff"]["id"] == "timed"
