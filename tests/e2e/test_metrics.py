"""``GET /metrics`` over real HTTP: who may scrape it, and that real traffic (an app client
starting and stopping a charge on an ``ocpp``-library charge point, a refused request, CALLERRORs
both ways) moves each counter and histogram by what happened."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from ocpp.exceptions import NotSupportedError
from ocpp.routing import on
from ocpp.v16.enums import Action
from prometheus_client.parser import text_string_to_metric_families
from websockets.typing import Subprotocol

from tests.conftest import RunningServer, app_client, make_settings, running_server
from tests.peers.py_charge_point import LibraryChargePoint

KEY = "metrics-scrape-key-0123456789"
CP = "CP-METRICS-1"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class NoCacheChargePoint(LibraryChargePoint):
    """The test peer, answering ClearCache with a CALLERROR (NotSupported)."""

    @on(Action.clear_cache)  # type: ignore[untyped-decorator]
    def no_cache(self, **_: Any) -> Any:
        raise NotSupportedError(description="no cache here")


@contextlib.asynccontextmanager
async def charge_point(ocpp_url: str) -> AsyncIterator[NoCacheChargePoint]:
    async with websockets.connect(f"{ocpp_url}/{CP}", subprotocols=[Subprotocol("ocpp1.6")]) as ws:
        cp = NoCacheChargePoint(CP, ws)
        reader = asyncio.create_task(cp.start())
        try:
            await cp.boot()
            yield cp
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
                await reader


async def scrape(server: RunningServer) -> Samples:
    async with httpx.AsyncClient(base_url=server.http_url, timeout=10) as http:
        reply = await http.get("/metrics", headers={"Authorization": f"Bearer {KEY}"})
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def scrape_until(server: RunningServer, done: Callable[[Samples], bool]) -> Samples:
    """Scrape until ``done`` holds (a closed socket's handler ends a moment after the client
    sees the close): bounded, each scrape a real round trip."""
    for _ in range(100):
        samples = await scrape(server)
        if done(samples):
            return samples
    raise AssertionError("the scrapes never showed the expected figures")


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def test_metrics_need_the_stats_key_or_an_admin(tmp_path: Path) -> None:
    """/metrics follows /api/stats: 401 without a token, 403 for a user, 200 for key or admin."""
    async with (
        running_server(make_settings(tmp_path, stats_api_key=KEY)) as server,
        httpx.AsyncClient(base_url=server.http_url, timeout=10) as http,
    ):
        anonymous = await http.get("/metrics")
        assert anonymous.status_code == 401
        assert anonymous.json()["error"]["code"] == "NOT_AUTHENTICATED"
        user = await http.get("/metrics", headers={"Authorization": f"Bearer {server.token('u1')}"})
        assert user.status_code == 403
        admin = await http.get(
            "/metrics", headers={"Authorization": f"Bearer {server.token('a1', role='admin')}"}
        )
        assert admin.status_code == 200
        assert "charging_connections" in admin.text
        posted = await http.post("/metrics", headers={"Authorization": f"Bearer {KEY}"})
        assert posted.status_code in (404, 405)  # GET only, like /health


async def test_real_traffic_moves_counters_and_histograms(tmp_path: Path) -> None:
    """A start/stop, a refused request and CALLERRORs both ways show in the next scrape."""
    async with running_server(make_settings(tmp_path, stats_api_key=KEY)) as server:
        before = await scrape(server)
        assert value(before, "charging_connections", door="app") == 0
        async with (
            charge_point(server.ocpp_url) as cp,
            app_client(server, server.token("u-1", id_tag="TAG_1")) as app,
            app_client(server, server.token("ops", role="admin")) as admin,
            app_client(server) as anonymous,
        ):
            await cp.status(1, "Available")
            start = asyncio.create_task(
                app.request("start_charging_request", {"chargePointId": CP, "connectorId": 1})
            )
            await asyncio.wait_for(cp.remote_starts.get(), 10)
            await cp.status(1, "Preparing")
            started = await cp.start_tx(1, "TAG_1", meter_start=1000)
            assert (await start)["data"]["success"] is True
            await app.push(
                "charging_status_update", where=lambda m: m["data"]["status"] == "Preparing"
            )
            stop = await app.request(
                "stop_charging_request",
                {"chargePointId": CP, "transactionId": started.transaction_id},
            )
            assert stop["data"]["success"] is True
            await cp.meter(
                1,
                started.transaction_id,
                [{"value": "2000", "measurand": "Energy.Active.Import.Register", "unit": "Wh"}],
            )
            await app.push("meter_values_update")
            await cp.stop_tx(started.transaction_id, 3000, reason="Remote")
            await app.push("transaction_update", where=lambda m: m["data"]["status"] == "Stopped")
            refused = await app.request(
                "stop_charging_request", {"chargePointId": CP, "transactionId": 999_999}
            )
            code = refused["error"]["code"]
            before_auth = await anonymous.request(
                "start_charging_request", {"chargePointId": CP, "connectorId": 1}
            )
            assert before_auth["error"]["code"] == "NOT_AUTHENTICATED"
            cleared = await admin.request(
                "operation_request", {"chargePointId": CP, "action": "ClearCache", "payload": {}}
            )
            assert cleared["error"]["details"]["ocppErrorCode"] == "NotSupported"
            # A CALL of an action no central system has: answered with a CALLERROR.
            async with websockets.connect(
                f"{server.ocpp_url}/CP-METRICS-RAW", subprotocols=[Subprotocol("ocpp1.6")]
            ) as raw:
                await raw.send('[2,"raw-1","NoSuchAction",{}]')
                answer = await asyncio.wait_for(raw.recv(), 10)
                assert '"NotImplemented"' in str(answer)
                during = await scrape(server)
        await server.app.store.flush()  # the buffered statuses' batch, now rather than later
        after = await scrape_until(
            server, lambda s: value(s, "charging_connections", door="app") == 0
        )

    assert value(during, "charging_connections", door="app") == 3
    assert value(during, "charging_connections", door="ocpp") == 2
    assert moved(before, after, "charging_app_requests_total", type="auth_request") == 2
    assert moved(before, after, "charging_app_requests_total", type="start_charging_request") == 1
    assert moved(before, after, "charging_app_requests_total", type="stop_charging_request") == 2
    assert moved(before, after, "charging_app_errors_total", code=code) == 1
    assert moved(before, after, "charging_app_errors_total", code="NOT_AUTHENTICATED") == 1
    assert moved(before, after, "charging_app_pushes_total", type="transaction_update") >= 2
    assert moved(before, after, "charging_app_pushes_total", type="charging_status_update") >= 1
    cmd = "charging_app_command_duration_seconds"
    assert moved(before, after, f"{cmd}_count", type="start_charging_request") == 1
    assert moved(before, after, f"{cmd}_count", type="stop_charging_request") == 2
    assert moved(before, after, f"{cmd}_sum", type="start_charging_request") > 0
    calls = "charging_ocpp_calls_total"
    assert moved(before, after, calls, direction="in", action="BootNotification") == 1
    assert moved(before, after, calls, direction="in", action="StartTransaction") == 1
    assert moved(before, after, calls, direction="in", action="StopTransaction") == 1
    assert moved(before, after, calls, direction="in", action="NoSuchAction") == 1
    assert moved(before, after, calls, direction="out", action="RemoteStartTransaction") == 1
    assert moved(before, after, calls, direction="out", action="RemoteStopTransaction") == 1
    assert moved(before, after, calls, direction="out", action="ClearCache") == 1
    ocpp = "charging_ocpp_call_duration_seconds"
    assert moved(before, after, f"{ocpp}_count", action="RemoteStartTransaction") == 1
    assert moved(before, after, f"{ocpp}_count", action="ClearCache") == 1
    errors = "charging_ocpp_call_errors_total"
    assert moved(before, after, errors, direction="received", code="NotSupported") == 1
    assert moved(before, after, errors, direction="sent", code="NotImplemented") == 1
    assert moved(before, after, "charging_bus_published_total") > 0
    lag = "charging_bus_delivery_lag_seconds_count"
    assert moved(before, after, lag) >= 3  # each event that reached the user, once
    batches = "charging_storage_batch_duration_seconds_count"
    assert moved(before, after, batches, kind="status") >= 1
    assert moved(before, after, batches, kind="meter") >= 1
    assert value(after, "charging_storage_batch_failures_total", kind="status") == 0
    assert value(after, "charging_storage_batch_failures_total", kind="meter") == 0


async def test_a_failing_batch_write_is_counted(tmp_path: Path) -> None:
    """A status batch that cannot get SQLite's write lock is counted as failed, then one lands."""
    db = tmp_path / "locked.db"
    settings = make_settings(
        tmp_path, stats_api_key=KEY, database_url=f"sqlite:///{db}?timeout=0.2"
    )
    async with running_server(settings) as server, charge_point(server.ocpp_url) as cp:
        await server.app.store.flush()
        before = await scrape(server)
        other = sqlite3.connect(db, isolation_level=None, timeout=10)
        try:
            other.execute("BEGIN IMMEDIATE")  # another process's write, holding the lock
            await cp.status(1, "Available")
            with pytest.raises(Exception):  # noqa: B017 - the driver's lock error, any wrapper
                await server.app.store.flush()
            failed = await scrape(server)
            other.execute("ROLLBACK")
        finally:
            other.close()
        await server.app.store.flush()  # the kept statuses land now
        after = await scrape(server)
    failures = "charging_storage_batch_failures_total"
    batches = "charging_storage_batch_duration_seconds_count"
    # The background flusher may try (and fail) too while the lock is held: at least ours.
    assert moved(before, failed, failures, kind="status") >= 1
    # Failed batches are timed too; at least one batch since then succeeded.
    assert (
        moved(failed, after, batches, kind="status") - moved(failed, after, failures, kind="status")
        >= 1
    )
