"""Charge points that drop, reconnect over a half-open socket, go silent, or start late.

Each test says what the app user saw, what the database holds afterwards, and that nothing was
lost or doubled. Real server in-process, real sockets, real OCPP-J peers (the ``ocpp`` library,
or a raw websockets peer for the one that never answers), a loopback proxy for network faults.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
import websockets
from websockets.typing import Subprotocol

from tests.conftest import AppClient, RunningServer, make_settings, running_server
from tests.peers.proxy import TcpProxy, proxy_to
from tests.peers.py_charge_point import connected_charge_point, now_text
from tests.reliability.helpers import (
    ago,
    app_at,
    drain_pushes,
    energy,
    energy_samples_in_db,
    start_charge,
    summary,
    transactions_in_db,
)

#: websockets' close_timeout on the OCPP door: how long a failed connection may wait for a peer
#: that does not answer the closing handshake before the socket is aborted.
CLOSE_TIMEOUT = 5.0


async def next_push(app: AppClient, timeout: float = 5) -> dict[str, Any]:
    return await asyncio.wait_for(app.pushes.get(), timeout)


@contextlib.asynccontextmanager
async def server_and_ocpp_proxy(
    tmp_path: Path, **overrides: Any
) -> AsyncIterator[tuple[RunningServer, TcpProxy]]:
    settings = make_settings(
        tmp_path, **{"ocpp_call_timeout": 1, "start_transaction_timeout": 1, **overrides}
    )
    async with running_server(settings) as server:
        port = urlsplit(server.ocpp_url).port
        assert port is not None
        async with proxy_to("127.0.0.1", port) as proxy:
            yield server, proxy


@pytest.mark.parametrize("boots_again", [True, False], ids=["with-boot", "without-boot"])
async def test_drop_mid_transaction_then_replay_is_accepted_once(
    tmp_path: Path, boots_again: bool
) -> None:
    """A charge point dropping mid-transaction: the user sees Offline, the transaction stays
    open, and the replayed Start/MeterValues/Stop after reconnecting are each taken once."""
    cp_id, tag = "CP-DROP", "TAG-DROP"
    started_at = ago(900)
    async with server_and_ocpp_proxy(tmp_path) as (server, proxy):
        url = server.settings.database_url
        async with app_at(server.app_url, server.token("driver", id_tag=tag)) as app:
            async with connected_charge_point(proxy.url("ws", "/ocpp"), cp_id) as cp:
                await cp.status(1, "Available")
                request = asyncio.create_task(
                    app.request(
                        "start_charging_request", {"chargePointId": cp_id, "connectorId": 1}
                    )
                )
                await asyncio.wait_for(cp.remote_starts.get(), 5)
                tx = (await cp.start_tx(1, tag, 1000, timestamp=started_at)).transaction_id
                assert (await request)["data"]["transactionId"] == tx
                started = await next_push(app)
                assert summary(started) == ("transaction_update", "Started")

                proxy.cut()  # the network fails under the charge point
                offline = await next_push(app)
                assert offline["type"] == "charging_status_update"
                assert offline["data"] == {
                    "chargePointId": cp_id,
                    "connectorId": 1,
                    "status": "Offline",
                    "transactionId": tx,
                }
                assert offline["seq"] == started["seq"] + 1
            # The transaction is still open, on disk and for the app.
            assert transactions_in_db(url) == [(tx, cp_id, 1, "driver", 1000, None, 0)]
            state = (await app.request("get_state"))["data"]
            assert [t["transactionId"] for t in state["transactions"]] == [tx]
            assert [(c["connectorId"], c["status"]) for c in state["connectors"]] == [
                (1, "Offline")
            ]

            async with connected_charge_point(server.ocpp_url, cp_id, boot=boots_again) as cp:
                # OCPP 1.6 charge points replay what they queued while offline.
                replay = await cp.start_tx(1, tag, 1000, timestamp=started_at)
                assert replay.transaction_id == tx
                for seconds, wh in ((600, 1100), (540, 1200), (480, 1300)):
                    await cp.meter(1, tx, energy(wh), timestamp=ago(seconds))
                await cp.status(1, "Charging")
                await cp.meter(1, tx, energy(1400), timestamp=now_text())
                stopped = await cp.stop_tx(tx, 1500, reason="Local")
                again = await cp.stop_tx(tx, 1500, reason="Local")  # its ack was lost: resent
                unknown = await cp.stop_tx(424242, 99, reason="Local")
                assert (stopped.id_tag_info, again.id_tag_info, unknown.id_tag_info) == (
                    None,
                    None,
                    None,
                )
                seen = await drain_pushes(app)
            # Old samples (older than METER_LIVE_WINDOW) are not pushed as if live; the rest is,
            # once: the repeated and the unknown StopTransaction push nothing.
            assert [summary(p) for p in seen] == [
                ("charging_status_update", "Charging"),
                ("meter_values_update", 1.4),
                ("transaction_update", "Stopped"),
            ]
            assert [p["seq"] for p in seen] == [offline["seq"] + 1 + i for i in range(3)]
            assert seen[2]["data"]["energyKWh"] == 0.5

            samples = (await app.request("get_meter_values", {"transactionId": tx}))["data"]
            assert [s["energyImportKWh"] for s in samples["meterValues"]] == [1.1, 1.2, 1.3, 1.4]
        # One transaction, closed once; each sample once, in time order (samples are written
        # in batches: flush the last one rather than wait for the flusher).
        await server.app.store.flush()
        assert transactions_in_db(url) == [(tx, cp_id, 1, "driver", 1000, 1500, 1)]
        assert energy_samples_in_db(url, tx) == [1.1, 1.2, 1.3, 1.4]


async def test_half_open_old_socket_is_replaced_and_its_pending_call_answered(
    tmp_path: Path,
) -> None:
    """The same id reconnecting while its old socket is half-open replaces it; the app's stop
    that waited on the old socket gets CHARGE_POINT_OFFLINE at once, and a retry works."""
    cp_id, tag = "CP-HALF", "TAG-HALF"
    async with (
        server_and_ocpp_proxy(tmp_path, ocpp_call_timeout=8) as (server, proxy),
        app_at(server.app_url, server.token("driver", id_tag=tag)) as app,
    ):
        url = server.settings.database_url
        async with connected_charge_point(proxy.url("ws", "/ocpp"), cp_id) as old:
            tx = await start_charge(app, old, cp_id, 1, tag)
            proxy.stall()  # the old socket goes half-open: no bytes either way, no close
            stop = asyncio.create_task(
                app.request("stop_charging_request", {"chargePointId": cp_id, "transactionId": tx})
            )
            await asyncio.wait_for(proxy.wait_for_down(b"RemoteStopTransaction"), 5)
            assert not stop.done()

            began = time.monotonic()
            async with connected_charge_point(server.ocpp_url, cp_id) as new:
                booted = time.monotonic() - began
                reply = await asyncio.wait_for(stop, 2)
                assert reply["type"] == "stop_charging_response"
                assert reply["data"]["success"] is False
                assert reply["error"]["code"] == "CHARGE_POINT_OFFLINE"
                assert time.monotonic() - began < 2  # not the 8 s call timeout
                # The new session answers at once, not after the old socket's close timeout.
                assert booted < 2, f"new connection waited {booted:.1f}s for the old one"

                retry = await app.request(
                    "stop_charging_request", {"chargePointId": cp_id, "transactionId": tx}
                )
                assert retry["data"]["success"] is True, retry
                assert (await asyncio.wait_for(new.remote_stops.get(), 5)) == {"transaction_id": tx}
                await new.stop_tx(tx, 2000, reason="Remote")
                proxy.resume()  # the old socket's close finally gets through
                await asyncio.wait_for(old._connection.wait_closed(), 10)
                await new.status(1, "Available")

                seen = await drain_pushes(app)
                # No Offline: the old socket's end does not take the new session down.
                assert [summary(p) for p in seen] == [
                    ("transaction_update", "Started"),
                    ("transaction_update", "Stopped"),
                    ("charging_status_update", "Available"),
                ]
                assert server.app.gateway.is_online(cp_id)
        assert transactions_in_db(url) == [(tx, cp_id, 1, "driver", 0, 2000, 1)]


class SilentChargePoint:
    """A raw OCPP-J peer that boots, then reads every CALL and never answers one."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.calls: list[tuple[float, str, str]] = []  # (when, unique id, action)
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in self.ws:
                frame = orjson.loads(raw)
                if frame[0] == 2:
                    self.calls.append((time.monotonic(), frame[1], frame[2]))

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self.ws.close()


@contextlib.asynccontextmanager
async def silent_charge_point(ocpp_url: str, cp_id: str) -> AsyncIterator[SilentChargePoint]:
    ws = await websockets.connect(f"{ocpp_url}/{cp_id}", subprotocols=[Subprotocol("ocpp1.6")])
    boot = [
        2,
        "boot-1",
        "BootNotification",
        {"chargePointVendor": "Quiet", "chargePointModel": "Never-Answers"},
    ]
    await ws.send(orjson.dumps(boot).decode())
    reply = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
    assert reply[0] == 3 and reply[2]["status"] == "Accepted"
    peer = SilentChargePoint(ws)
    try:
        yield peer
    finally:
        await peer.close()


async def test_silent_charge_point_times_out_and_bounds_its_queue(tmp_path: Path) -> None:
    """A charge point that never answers: starts end in CHARGE_POINT_TIMEOUT within
    OCPP_CALL_TIMEOUT, one CALL at a time, the 9th queued command gets CHARGE_POINT_BUSY,
    and another charge point's user is served meanwhile."""
    timeout = 1.0
    async with (
        server_and_ocpp_proxy(tmp_path, ocpp_call_timeout=timeout) as (server, _proxy),
        silent_charge_point(server.ocpp_url, "CP-SILENT") as silent,
        connected_charge_point(server.ocpp_url, "CP-OK") as ok_cp,
        app_at(server.app_url, server.token("stuck", id_tag="TAG-STUCK")) as stuck,
        app_at(server.app_url, server.token("other", id_tag="TAG-OTHER")) as other,
    ):
        limit = server.app.gateway.max_queued
        began = time.monotonic()
        starts = [
            asyncio.create_task(
                stuck.request(
                    "start_charging_request",
                    {"chargePointId": "CP-SILENT", "connectorId": connector},
                )
            )
            for connector in range(1, limit + 2)
        ]
        # The one over the limit is refused at once, before any timeout.
        done, _ = await asyncio.wait(
            starts, timeout=timeout / 2, return_when=asyncio.FIRST_COMPLETED
        )
        assert [t.result()["error"]["code"] for t in done] == ["CHARGE_POINT_BUSY"]
        # Meanwhile another user on another charge point is served normally.
        tx = await start_charge(other, ok_cp, "CP-OK", 1, "TAG-OTHER")
        assert time.monotonic() - began < timeout

        replies = await asyncio.wait_for(asyncio.gather(*starts), timeout * 3)
        elapsed = time.monotonic() - began
        codes = sorted(r["error"]["code"] for r in replies)
        assert codes == ["CHARGE_POINT_BUSY"] + ["CHARGE_POINT_TIMEOUT"] * limit
        assert all(r["type"] == "start_charging_response" for r in replies)
        # Every queued command ended within one OCPP_CALL_TIMEOUT (+ scheduling slack).
        assert timeout <= elapsed < timeout + 0.75, elapsed
        # One outstanding CALL: the first went out at once; none other until it timed out.
        first_at = silent.calls[0][0]
        assert silent.calls[0][2] == "RemoteStartTransaction"
        assert all(at >= first_at + timeout * 0.9 for at, _, _ in silent.calls[1:])
        assert len({uid for _, uid, _ in silent.calls}) == len(silent.calls)

        # Nothing is left stuck: no transaction on the silent one, the server still answers.
        assert [row[1] for row in transactions_in_db(server.settings.database_url)] == ["CP-OK"]
        assert (await other.request("get_state"))["data"]["transactions"][0]["transactionId"] == tx
        again = await stuck.request(
            "start_charging_request", {"chargePointId": "CP-SILENT", "connectorId": 1}
        )
        assert again["error"]["code"] == "CHARGE_POINT_TIMEOUT"


async def test_late_start_transaction_is_attached_to_the_user(tmp_path: Path) -> None:
    """RemoteStart accepted but no StartTransaction: the app gets CHARGE_POINT_TIMEOUT; a later
    StartTransaction is attached to that user, pushed as Started, and the user can stop it."""
    cp_id, tag = "CP-LATE", "TAG-LATE"
    async with (
        server_and_ocpp_proxy(tmp_path, start_transaction_timeout=1) as (server, _proxy),
        connected_charge_point(server.ocpp_url, cp_id) as cp,
        app_at(server.app_url, server.token("late", id_tag=tag)) as app,
    ):
        url = server.settings.database_url
        began = time.monotonic()
        reply = await app.request(
            "start_charging_request", {"chargePointId": cp_id, "connectorId": 1}
        )
        assert time.monotonic() - began < 2
        assert reply["type"] == "start_charging_response"
        assert reply["data"]["success"] is False and reply["data"]["connectorId"] == 1
        assert reply["error"]["code"] == "CHARGE_POINT_TIMEOUT"
        assert (await cp.remote_starts.get()) == {"id_tag": tag, "connector_id": 1}
        assert transactions_in_db(url) == []

        late = await cp.start_tx(1, tag, 500)  # the car was slow to plug in
        pushed = await next_push(app)
        assert pushed["type"] == "transaction_update"
        assert pushed["data"]["status"] == "Started"
        assert pushed["data"]["transactionId"] == late.transaction_id
        assert transactions_in_db(url) == [(late.transaction_id, cp_id, 1, "late", 500, None, 0)]

        stop = await app.request(
            "stop_charging_request", {"chargePointId": cp_id, "transactionId": late.transaction_id}
        )
        assert stop["data"]["success"] is True, stop
        assert (await cp.remote_stops.get()) == {"transaction_id": late.transaction_id}
        await cp.stop_tx(late.transaction_id, 4500, reason="Remote")
        ended = await next_push(app)
        assert summary(ended) == ("transaction_update", "Stopped")
        assert ended["data"]["energyKWh"] == 4.0
        assert await drain_pushes(app) == []
        assert transactions_in_db(url) == [(late.transaction_id, cp_id, 1, "late", 500, 4500, 1)]


async def test_half_open_charge_point_is_found_by_ping_and_reported_offline(
    tmp_path: Path,
) -> None:
    """A charge point whose link goes silent without any close (half-open) is dropped by the
    WebSocket ping within 2 x OCPP_PING_INTERVAL + the 5 s close timeout: its user sees
    Offline, the transaction stays open, and it can come back."""
    cp_id, tag, interval = "CP-PING", "TAG-PING", 0.5
    async with (
        server_and_ocpp_proxy(tmp_path, ocpp_ping_interval=interval) as (server, proxy),
        app_at(server.app_url, server.token("driver", id_tag=tag)) as app,
    ):
        async with connected_charge_point(proxy.url("ws", "/ocpp"), cp_id) as cp:
            tx = await start_charge(app, cp, cp_id, 1, tag)
            assert summary(await next_push(app)) == ("transaction_update", "Started")
            proxy.stall()
            began = time.monotonic()
            bound = interval * 2 + CLOSE_TIMEOUT
            offline = await next_push(app, timeout=bound + 3)
            found = time.monotonic() - began
            assert offline["data"]["status"] == "Offline"
            assert offline["data"]["transactionId"] == tx
            assert found < bound + 1, f"half-open socket dropped after {found:.1f}s"
            assert not server.app.gateway.is_online(cp_id)
            proxy.cut()
        assert transactions_in_db(server.settings.database_url) == [
            (tx, cp_id, 1, "driver", 0, None, 0)
        ]
        async with connected_charge_point(server.ocpp_url, cp_id, boot=False) as cp:
            await cp.status(1, "Charging")
            assert summary(await next_push(app)) == ("charging_status_update", "Charging")
