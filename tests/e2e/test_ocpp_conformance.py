"""The OCTT 1.6 central-system cases a charge point drives alone or an app start/stop triggers.

Each test runs the real server in-process on loopback; the charge point is the PyPI ``ocpp``
library's (which also checks every CALLRESULT we send against the OCA schemas), or a raw
``websockets`` client where the exact frames matter. What was stored is read back from the
database through the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import websockets
from ocpp.v16 import call
from websockets.asyncio.client import ClientConnection

from charging_api.domain.models import IdTag, IdTagStatus, Transaction
from charging_api.timefmt import format_utc
from tests.conftest import AppClient, RunningServer, app_client, make_settings, running_server
from tests.peers.py_charge_point import LibraryChargePoint, connected_charge_point

RFC3339_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z$")


# ----------------------------------------------------------------------------- helpers


class RawChargePoint:
    """An OCPP-J peer with no library in between: exact frames out, exact frames in."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def send(self, frame: str | bytes | Sequence[Any]) -> None:
        if isinstance(frame, str | bytes):
            await self.ws.send(frame)
        else:
            await self.ws.send(orjson.dumps(list(frame)).decode())

    async def recv(self, timeout: float = 10) -> list[Any]:
        message = await asyncio.wait_for(self.ws.recv(), timeout)
        decoded: list[Any] = orjson.loads(message)
        return decoded

    async def call(
        self, action: str, payload: dict[str, Any], unique_id: str | None = None
    ) -> list[Any]:
        """Send one CALL and return the next frame, which must answer it."""
        unique_id = unique_id or str(uuid.uuid4())
        await self.send([2, unique_id, action, payload])
        reply = await self.recv()
        assert reply[1] == unique_id, reply
        return reply

    async def heartbeat_works(self) -> None:
        reply = await self.call("Heartbeat", {})
        assert reply[0] == 3 and RFC3339_Z.match(reply[2]["currentTime"]), reply


@contextlib.asynccontextmanager
async def raw_charge_point(
    ocpp_url: str, cp_id: str, subprotocols: Sequence[str] | None = ("ocpp1.6",), **kwargs: Any
) -> AsyncIterator[RawChargePoint]:
    async with websockets.connect(
        f"{ocpp_url}/{cp_id}",
        subprotocols=[websockets.Subprotocol(p) for p in subprotocols] if subprotocols else None,
        open_timeout=10,
        close_timeout=2,
        **kwargs,
    ) as ws:
        yield RawChargePoint(ws)


BOOT = {"chargePointVendor": "RawVendor", "chargePointModel": "RawModel"}


def stamp(ago: timedelta = timedelta(0)) -> str:
    return format_utc(datetime.now(UTC) - ago)


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def stopped(message: dict[str, Any]) -> bool:
    return bool(message["data"]["status"] == "Stopped")


async def all_transactions(server: RunningServer) -> list[Transaction]:
    return await server.app.store.transactions_of(None, 1000)


async def register_tag(server: RunningServer, tag: str, user: str | None, **kw: Any) -> None:
    await server.app.store.put_id_tag(IdTag(tag, user, **kw))


async def remote_started(
    app: AppClient, cp: LibraryChargePoint, cp_id: str, connector: int = 1
) -> tuple[asyncio.Task[dict[str, Any]], dict[str, Any]]:
    """The app asks for a start; returns the pending request and what the charge point got."""
    request = asyncio.create_task(
        app.request("start_charging_request", {"chargePointId": cp_id, "connectorId": connector})
    )
    asked = await asyncio.wait_for(cp.remote_starts.get(), 10)
    return request, asked


# ----------------------------------------------------------------------------- TC_001


async def test_tc001_cold_boot(tmp_path: Path) -> None:
    """TC_001: BootNotification Accepted with OCPP_HEARTBEAT_INTERVAL and a UTC 'Z' time;
    StatusNotification per connector accepted and stored."""
    settings = make_settings(tmp_path, ocpp_heartbeat_interval=77)
    async with (
        running_server(settings) as server,
        connected_charge_point(server.ocpp_url, "CP-BOOT", boot=False) as cp,
    ):
        reply = await cp.boot()
        assert reply.status == "Accepted"
        assert reply.interval == 77
        assert RFC3339_Z.match(reply.current_time), reply.current_time
        assert abs(parse_time(reply.current_time) - datetime.now(UTC)) < timedelta(minutes=1)
        for connector in (0, 1, 2):
            await cp.status(connector, "Available")
        beat = await cp.call(call.Heartbeat(), suppress=False)
        assert RFC3339_Z.match(beat.current_time)

        stored = await server.app.store.get_charge_point("CP-BOOT")
        assert stored is not None and stored.info.vendor == "TestVendor"
        states = await server.app.store.connector_states("CP-BOOT")
        assert sorted((s.connector_id, s.status) for s in states) == [
            (0, "Available"),
            (1, "Available"),
            (2, "Available"),
        ]
        assert await all_transactions(server) == []


# ----------------------------------------------------------------------------- local sessions


async def test_tc003_plug_first_session(server: RunningServer) -> None:
    """TC_003: Preparing, Authorize, StartTransaction Accepted, Charging, StopTransaction Local;
    the tag's owner sees the session and the database holds it closed."""
    await register_tag(server, "TAG-A", "alice")
    async with (
        connected_charge_point(server.ocpp_url, "CP-003") as cp,
        app_client(server, server.token("alice")) as alice,
    ):
        await cp.status(1, "Available")
        await cp.status(1, "Preparing")
        assert (await cp.authorize("TAG-A")).id_tag_info["status"] == "Accepted"
        started = await cp.start_tx(1, "TAG-A", meter_start=1000)
        assert started.id_tag_info["status"] == "Accepted"
        assert isinstance(started.transaction_id, int)
        await cp.status(1, "Charging")
        stopped = await cp.stop_tx(started.transaction_id, 5000, reason="Local", id_tag="TAG-A")
        assert stopped.id_tag_info["status"] == "Accepted"
        await cp.status(1, "Finishing")
        await cp.status(1, "Available")

        begun = await alice.push("transaction_update")
        assert begun["data"]["status"] == "Started"
        assert begun["data"]["transactionId"] == started.transaction_id
        charging = await alice.push("charging_status_update")
        assert charging["data"] == {
            "chargePointId": "CP-003",
            "connectorId": 1,
            "status": "Charging",
            "transactionId": started.transaction_id,
        }
        ended = await alice.push("transaction_update")
        assert ended["data"]["status"] == "Stopped"
        assert ended["data"]["reason"] == "Local"
        assert ended["data"]["energyKWh"] == 4.0

    tx = await server.app.store.get_transaction(started.transaction_id)
    assert tx is not None
    assert (tx.user_id, tx.id_tag, tx.meter_start_wh, tx.meter_stop_wh, tx.stop_reason) == (
        "alice",
        "TAG-A",
        1000,
        5000,
        "Local",
    )
    assert not tx.active
    assert [t.id for t in await all_transactions(server)] == [started.transaction_id]


async def test_tc004_1_identification_first_session(server: RunningServer) -> None:
    """TC_004_1: Authorize before the cable, then Preparing, StartTransaction, stop."""
    await register_tag(server, "TAG-B", "bob")
    async with connected_charge_point(server.ocpp_url, "CP-004") as cp:
        await cp.status(1, "Available")
        assert (await cp.authorize("TAG-B")).id_tag_info["status"] == "Accepted"
        await cp.status(1, "Preparing")
        started = await cp.start_tx(1, "TAG-B", meter_start=0)
        assert started.id_tag_info["status"] == "Accepted"
        await cp.status(1, "Charging")
        await cp.stop_tx(started.transaction_id, 1200, reason="Local")
        await cp.status(1, "Available")
    [tx] = await all_transactions(server)
    assert (tx.id, tx.user_id, tx.stop_reason, tx.active) == (
        started.transaction_id,
        "bob",
        "Local",
        False,
    )


async def test_tc004_2_identification_first_connection_timeout(server: RunningServer) -> None:
    """TC_004_2: Authorize, Preparing, then Available without a transaction: nothing stored."""
    await register_tag(server, "TAG-C", "carol")
    async with connected_charge_point(server.ocpp_url, "CP-004-2") as cp:
        await cp.status(1, "Available")
        assert (await cp.authorize("TAG-C")).id_tag_info["status"] == "Accepted"
        await cp.status(1, "Preparing")
        await cp.status(1, "Available")
    assert await all_transactions(server) == []
    assert await server.app.store.active_transactions() == []
    [state] = await server.app.store.connector_states("CP-004-2")
    assert (state.connector_id, state.status) == (1, "Available")


async def test_tc005_1_ev_side_disconnected(server: RunningServer) -> None:
    """TC_005_1: StopTransaction with reason EVDisconnected is accepted and stored."""
    await register_tag(server, "TAG-D", "dave")
    async with connected_charge_point(server.ocpp_url, "CP-005") as cp:
        await cp.status(1, "Preparing")
        started = await cp.start_tx(1, "TAG-D", meter_start=100)
        await cp.status(1, "Charging")
        await cp.status(1, "SuspendedEV")
        await cp.stop_tx(started.transaction_id, 900, reason="EVDisconnected")
        await cp.status(1, "Available")
    tx = await server.app.store.get_transaction(started.transaction_id)
    assert tx is not None and not tx.active
    assert (tx.stop_reason, tx.meter_stop_wh) == ("EVDisconnected", 900)


async def test_tc007_cached_id_starts_without_authorize(server: RunningServer) -> None:
    """TC_007: a StartTransaction for a known tag with no Authorize before it is Accepted."""
    await register_tag(server, "TAG-E", "erin")
    async with connected_charge_point(server.ocpp_url, "CP-007") as cp:
        await cp.status(1, "Preparing")
        started = await cp.start_tx(1, "TAG-E", meter_start=0)
        assert started.id_tag_info["status"] == "Accepted"
        await cp.status(1, "Charging")
        await cp.stop_tx(started.transaction_id, 10, reason="Local")
    [tx] = await all_transactions(server)
    assert (tx.id, tx.user_id) == (started.transaction_id, "erin")


# ----------------------------------------------------------------------------- remote start/stop


async def test_tc010_remote_start_cable_plugged_first(server: RunningServer) -> None:
    """TC_010: Preparing first, then the app's start sends RemoteStartTransaction with the
    user's idTag and the StartTransaction that follows answers the app."""
    async with (
        connected_charge_point(server.ocpp_url, "CP-010") as cp,
        app_client(server, server.token("frank", id_tag="TAG-F")) as app,
    ):
        await cp.status(1, "Preparing")
        request, asked = await remote_started(app, cp, "CP-010")
        assert asked == {"id_tag": "TAG-F", "connector_id": 1}
        assert (await cp.authorize("TAG-F")).id_tag_info["status"] == "Accepted"
        started = await cp.start_tx(1, "TAG-F", meter_start=0)
        assert started.id_tag_info["status"] == "Accepted"
        response = await request
        assert response["data"]["success"] is True
        assert response["data"]["transactionId"] == started.transaction_id
        await cp.status(1, "Charging")
        charging = await app.push(
            "charging_status_update", where=lambda m: m["data"]["status"] == "Charging"
        )
        assert charging["data"]["transactionId"] == started.transaction_id
    [tx] = await all_transactions(server)
    assert (tx.id, tx.user_id, tx.id_tag, tx.active) == (
        started.transaction_id,
        "frank",
        "TAG-F",
        True,
    )


async def test_tc011_1_remote_start_first(server: RunningServer) -> None:
    """TC_011_1: RemoteStart first, then Preparing and StartTransaction within the bound."""
    async with (
        connected_charge_point(server.ocpp_url, "CP-011") as cp,
        app_client(server, server.token("gina", id_tag="TAG-G")) as app,
    ):
        await cp.status(1, "Available")
        request, asked = await remote_started(app, cp, "CP-011")
        assert asked == {"id_tag": "TAG-G", "connector_id": 1}
        await cp.status(1, "Preparing")
        preparing = await app.push("charging_status_update")
        assert preparing["data"] == {
            "chargePointId": "CP-011",
            "connectorId": 1,
            "status": "Preparing",
        }
        started = await cp.start_tx(1, "TAG-G", meter_start=0)
        response = await request
        assert response["data"]["transactionId"] == started.transaction_id
    [tx] = await all_transactions(server)
    assert (tx.id, tx.user_id) == (started.transaction_id, "gina")


async def test_tc011_2_remote_start_times_out(tmp_path: Path) -> None:
    """TC_011_2: RemoteStart accepted, no StartTransaction: the app gets CHARGE_POINT_TIMEOUT
    after START_TRANSACTION_TIMEOUT; the connector returns to Available; nothing stored."""
    settings = make_settings(tmp_path, start_transaction_timeout=1)
    async with (
        running_server(settings) as server,
        connected_charge_point(server.ocpp_url, "CP-011-2") as cp,
        app_client(server, server.token("hank", id_tag="TAG-H")) as app,
    ):
        loop = asyncio.get_running_loop()
        began = loop.time()
        request, _ = await remote_started(app, cp, "CP-011-2")
        await cp.status(1, "Preparing")
        response = await request
        elapsed = loop.time() - began
        assert response["type"] == "start_charging_response"
        assert response["data"]["success"] is False
        assert response["error"]["code"] == "CHARGE_POINT_TIMEOUT"
        assert 0.9 <= elapsed < 5, elapsed
        await cp.status(1, "Available")
        available = await app.push(
            "charging_status_update", where=lambda m: m["data"]["status"] == "Available"
        )
        assert available["data"]["connectorId"] == 1
        assert await all_transactions(server) == []


async def test_late_start_transaction_after_timeout_is_attached_to_the_user(
    tmp_path: Path,
) -> None:
    """A StartTransaction arriving after the app's timeout is Accepted, stored as the
    user's and pushed to them as transaction_update."""
    settings = make_settings(tmp_path, start_transaction_timeout=1)
    async with (
        running_server(settings) as server,
        connected_charge_point(server.ocpp_url, "CP-LATE") as cp,
        app_client(server, server.token("ivan", id_tag="TAG-I")) as app,
    ):
        request, _ = await remote_started(app, cp, "CP-LATE")
        response = await request
        assert response["error"]["code"] == "CHARGE_POINT_TIMEOUT"
        started = await cp.start_tx(1, "TAG-I", meter_start=50)
        assert started.id_tag_info["status"] == "Accepted"
        pushed = await app.push("transaction_update")
        assert pushed["data"]["status"] == "Started"
        assert pushed["data"]["transactionId"] == started.transaction_id
        assert pushed["data"]["chargePointId"] == "CP-LATE"
        [tx] = await all_transactions(server)
        assert (tx.id, tx.user_id, tx.active) == (started.transaction_id, "ivan", True)


async def test_tc012_remote_stop(server: RunningServer) -> None:
    """TC_012: the app's stop sends RemoteStopTransaction; StopTransaction Remote closes it."""
    async with (
        connected_charge_point(server.ocpp_url, "CP-012") as cp,
        app_client(server, server.token("judy", id_tag="TAG-J")) as app,
    ):
        request, _ = await remote_started(app, cp, "CP-012")
        started = await cp.start_tx(1, "TAG-J", meter_start=0)
        assert (await request)["data"]["success"] is True
        await cp.status(1, "Charging")
        stop = await app.request(
            "stop_charging_request",
            {"chargePointId": "CP-012", "transactionId": started.transaction_id},
        )
        assert stop["data"]["success"] is True
        asked = await asyncio.wait_for(cp.remote_stops.get(), 10)
        assert asked == {"transaction_id": started.transaction_id}
        await cp.status(1, "Finishing")
        await cp.stop_tx(started.transaction_id, 3000, reason="Remote")
        await cp.status(1, "Available")
        ended = await app.push("transaction_update", where=stopped)
        assert ended["data"]["reason"] == "Remote"
        assert ended["data"]["energyKWh"] == 3.0
    tx = await server.app.store.get_transaction(started.transaction_id)
    assert tx is not None and (tx.active, tx.stop_reason) == (False, "Remote")


# ----------------------------------------------------------------------------- TC_023, TC_024


async def test_tc023_authorize_invalid_expired_blocked(server: RunningServer) -> None:
    """TC_023: Authorize answers Invalid (unknown), Expired (past expiry), Blocked."""
    past = datetime.now(UTC) - timedelta(days=1)
    await register_tag(server, "TAG-EXP", "kim", expiry=past)
    await register_tag(server, "TAG-BLK", "kim", status=IdTagStatus.BLOCKED)
    await register_tag(server, "TAG-OK", "kim")
    async with connected_charge_point(server.ocpp_url, "CP-023") as cp:
        unknown = await cp.authorize("NOBODY")
        assert unknown.id_tag_info == {"status": "Invalid"}
        expired = await cp.authorize("TAG-EXP")
        assert expired.id_tag_info["status"] == "Expired"
        assert RFC3339_Z.match(expired.id_tag_info["expiry_date"])
        blocked = await cp.authorize("TAG-BLK")
        assert blocked.id_tag_info["status"] == "Blocked"
        assert (await cp.authorize("TAG-OK")).id_tag_info == {"status": "Accepted"}
    assert await all_transactions(server) == []


async def test_tc024_lock_failure_reaches_the_user(tmp_path: Path) -> None:
    """TC_024: StatusNotification Faulted/ConnectorLockFailure is stored and pushed, with its
    errorCode, to the user who asked for the start."""
    settings = make_settings(tmp_path, start_transaction_timeout=1)
    async with (
        running_server(settings) as server,
        connected_charge_point(server.ocpp_url, "CP-024") as cp,
        app_client(server, server.token("lena", id_tag="TAG-L")) as app,
    ):
        request, _ = await remote_started(app, cp, "CP-024")
        await cp.status(1, "Preparing")
        await cp.status(1, "Faulted", error_code="ConnectorLockFailure")
        faulted = await app.push(
            "charging_status_update", where=lambda m: m["data"]["status"] == "Faulted"
        )
        assert faulted["data"] == {
            "chargePointId": "CP-024",
            "connectorId": 1,
            "status": "Faulted",
            "errorCode": "ConnectorLockFailure",
        }
        assert (await request)["error"]["code"] == "CHARGE_POINT_TIMEOUT"
        [state] = await server.app.store.connector_states("CP-024")
        assert (state.status, state.error_code) == ("Faulted", "ConnectorLockFailure")
        assert await all_transactions(server) == []


# ----------------------------------------------------------------------------- TC_032_1


async def test_tc032_1_power_failure_stops_the_old_transaction(server: RunningServer) -> None:
    """TC_032_1: after a reboot (new connection, BootNotification) StopTransaction with
    reason PowerLoss for the old transaction is accepted and stored."""
    await register_tag(server, "TAG-M", "mia")
    async with connected_charge_point(server.ocpp_url, "CP-032") as cp:
        started = await cp.start_tx(1, "TAG-M", meter_start=0)
        await cp.status(1, "Charging")
    lost_at = stamp(timedelta(minutes=5))
    async with (
        app_client(server, server.token("mia")) as mia,
        connected_charge_point(server.ocpp_url, "CP-032", boot=False) as cp,
    ):
        assert (await cp.boot()).status == "Accepted"
        await cp.stop_tx(started.transaction_id, 700, reason="PowerLoss", timestamp=lost_at)
        await cp.status(1, "Available")
        ended = await mia.push("transaction_update", where=stopped)
        assert ended["data"]["reason"] == "PowerLoss"
    tx = await server.app.store.get_transaction(started.transaction_id)
    assert tx is not None and not tx.active
    assert tx.stop_reason == "PowerLoss"
    assert tx.stopped_at == parse_time(lost_at)
    assert await server.app.store.active_transactions() == []


# ----------------------------------------------------------------------------- offline


async def test_tc037_1_offline_start_keeps_its_time(server: RunningServer) -> None:
    """TC_037_1: a StartTransaction stamped hours ago is Accepted and stored with that time;
    a replay of it returns the same transactionId."""
    await register_tag(server, "TAG-N", "nina")
    started_at = stamp(timedelta(hours=3))
    async with connected_charge_point(server.ocpp_url, "CP-037") as cp:
        first = await cp.start_tx(1, "TAG-N", meter_start=20, timestamp=started_at)
        assert first.id_tag_info["status"] == "Accepted"
        again = await cp.start_tx(1, "TAG-N", meter_start=20, timestamp=started_at)
        assert again.transaction_id == first.transaction_id
    [tx] = await all_transactions(server)
    assert (tx.id, tx.started_at, tx.user_id) == (
        first.transaction_id,
        parse_time(started_at),
        "nina",
    )


async def test_tc037_3_offline_start_with_unknown_tag(server: RunningServer) -> None:
    """TC_037_3: an unknown tag still gets a transactionId, with idTagInfo Invalid; the
    charge point's StopTransaction (DeAuthorized) is acknowledged."""
    async with connected_charge_point(server.ocpp_url, "CP-037-3") as cp:
        started = await cp.start_tx(
            1, "STRANGER", meter_start=0, timestamp=stamp(timedelta(hours=2))
        )
        assert isinstance(started.transaction_id, int) and started.transaction_id > 0
        assert started.id_tag_info["status"] == "Invalid"
        await cp.stop_tx(
            started.transaction_id,
            0,
            reason="DeAuthorized",
            timestamp=stamp(timedelta(hours=2) - timedelta(seconds=5)),
        )
    [tx] = await all_transactions(server)
    assert (tx.id, tx.user_id, tx.id_tag_status, tx.stop_reason) == (
        started.transaction_id,
        None,
        IdTagStatus.INVALID,
        "DeAuthorized",
    )


async def test_tc039_offline_transaction_replayed(server: RunningServer) -> None:
    """TC_039: a whole transaction replayed after an outage is stored with its times; old
    MeterValues are stored but not pushed, fresh ones are pushed; an unknown transaction's
    StopTransaction is acknowledged."""
    await register_tag(server, "TAG-O", "omar")
    async with (
        connected_charge_point(server.ocpp_url, "CP-039") as cp,
        app_client(server, server.token("omar")) as omar,
    ):
        started = await cp.start_tx(1, "TAG-O", meter_start=0, timestamp=stamp(timedelta(hours=4)))
        assert started.id_tag_info["status"] == "Accepted"
        old = stamp(timedelta(hours=3))
        await cp.meter(1, started.transaction_id, [{"value": "1500"}], timestamp=old)
        fresh = stamp()
        await cp.meter(1, started.transaction_id, [{"value": "2500"}], timestamp=fresh)
        pushed = await omar.push("meter_values_update")
        assert pushed["data"]["meterValue"]["timestamp"] == fresh
        assert pushed["data"]["meterValue"]["energyImportKWh"] == 2.5
        stopped_at = stamp(timedelta(seconds=1))
        await cp.stop_tx(started.transaction_id, 2600, reason="Local", timestamp=stopped_at)
        unknown = await cp.stop_tx(987654, 10, reason="Local")
        assert unknown.id_tag_info is None
        ended = await omar.push("transaction_update", where=stopped)
        assert ended["data"]["transactionId"] == started.transaction_id
        # Nothing else was pushed: a heartbeat round trip proves the stream is drained.
        await omar.request("heartbeat")
        assert omar.pushes.empty()
    await server.app.store.flush()
    samples = await server.app.store.meter_samples_of(started.transaction_id)
    assert [(format_utc(s.sample.timestamp), s.sample.energy_import_kwh) for s in samples] == [
        (old, 1.5),
        (fresh, 2.5),
    ]
    [tx] = await all_transactions(server)
    assert (tx.id, tx.stopped_at, tx.meter_stop_wh) == (
        started.transaction_id,
        parse_time(stopped_at),
        2600,
    )
    assert await server.app.store.get_transaction(987654) is None


# ----------------------------------------------------------------------------- TC_064


async def test_tc064_data_transfer_unknown_vendor(server: RunningServer) -> None:
    """TC_064: DataTransfer from an unknown vendor answers UnknownVendorId."""
    async with connected_charge_point(server.ocpp_url, "CP-064") as cp:
        reply = await cp.call(
            call.DataTransfer(vendor_id="com.example.nobody", message_id="x", data="{}"),
            suppress=False,
        )
        assert reply.status == "UnknownVendorId"


# ----------------------------------------------------------------------------- TC_088


async def test_tc088_only_unknown_subprotocol_is_refused(server: RunningServer) -> None:
    """TC_088: a client offering only ocpp0.1 is refused at the handshake."""
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with raw_charge_point(server.ocpp_url, "CP-088", subprotocols=["ocpp0.1"]):
            pass
    assert refused.value.response.status_code == 400


async def test_tc088_ocpp16_is_chosen_among_offers(server: RunningServer) -> None:
    """TC_088: offering ocpp0.1 and ocpp1.6 is answered with ocpp1.6."""
    async with raw_charge_point(
        server.ocpp_url, "CP-088", subprotocols=["ocpp0.1", "ocpp1.6"]
    ) as cp:
        assert cp.ws.subprotocol == "ocpp1.6"
        assert (await cp.call("BootNotification", BOOT))[2]["status"] == "Accepted"


async def test_no_subprotocol_is_accepted_as_ocpp16(server: RunningServer) -> None:
    """A charger offering no subprotocol is accepted and spoken to in OCPP 1.6."""
    async with raw_charge_point(server.ocpp_url, "CP-NOPROTO", subprotocols=None) as cp:
        assert cp.ws.subprotocol is None
        assert (await cp.call("BootNotification", BOOT))[2]["status"] == "Accepted"
        await cp.heartbeat_works()


# ----------------------------------------------------------------------------- framing rules


async def test_no_unsolicited_call_after_connect(server: RunningServer) -> None:
    """After connect, BootNotification and a Heartbeat, the server has sent nothing but the
    two CALLRESULTs (OCTT fails a central system that sends unsolicited CALLs)."""
    async with raw_charge_point(server.ocpp_url, "CP-QUIET") as cp:
        await cp.send([2, "boot-1", "BootNotification", BOOT])
        await cp.send([2, "beat-1", "Heartbeat", {}])
        first = await cp.recv()
        second = await cp.recv()
        assert first[:2] == [3, "boot-1"] and first[2]["status"] == "Accepted"
        assert second[:2] == [3, "beat-1"]
        assert server.app.gateway.session("CP-QUIET") is not None


async def test_unknown_action_is_not_implemented(server: RunningServer) -> None:
    """An action OCPP 1.6 does not define answers NotImplemented."""
    async with raw_charge_point(server.ocpp_url, "CP-UNK") as cp:
        assert await cp.call("FlyToTheMoon", {}, "u-1") == [
            4,
            "u-1",
            "NotImplemented",
            "Unknown action FlyToTheMoon",
            {},
        ]
        await cp.heartbeat_works()


async def test_central_system_action_sent_to_us_is_not_supported(server: RunningServer) -> None:
    """A 1.6 action a central system does not take (RemoteStartTransaction) answers
    NotSupported, and starts nothing."""
    async with raw_charge_point(server.ocpp_url, "CP-NS") as cp:
        assert await cp.call("RemoteStartTransaction", {"idTag": "X"}, "u-2") == [
            4,
            "u-2",
            "NotSupported",
            "RemoteStartTransaction is not supported by a central system",
            {},
        ]
        await cp.heartbeat_works()
    assert await all_transactions(server) == []


async def test_schema_invalid_call_gets_its_error_and_stores_nothing(
    server: RunningServer,
) -> None:
    """A schema-invalid StatusNotification answers PropertyConstraintViolation with its id,
    stores nothing, and the connection lives on."""
    async with raw_charge_point(server.ocpp_url, "CP-BADPAY") as cp:
        reply = await cp.call(
            "StatusNotification",
            {"connectorId": 1, "errorCode": "NoError", "status": "Sleeping"},
            "bad-1",
        )
        assert reply[:3] == [4, "bad-1", "PropertyConstraintViolation"]
        await cp.heartbeat_works()
    assert await server.app.store.connector_states("CP-BADPAY") == []
