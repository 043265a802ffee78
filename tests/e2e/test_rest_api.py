"""The operator REST API over real HTTP against the real server (same port as /ws)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, get_args

import httpx
import pytest
import websockets
from ocpp.routing import on
from ocpp.v16 import call, call_result
from ocpp.v16.enums import Action
from websockets.typing import Subprotocol

from charging_api.http.rest import ACTIONS, ActionName
from tests.conftest import RunningServer, app_client, make_settings, running_server
from tests.peers.py_charge_point import LibraryChargePoint, connected_charge_point
from tests.security.certs import make_self_signed

KEY = "stats-key-0123456789abcdef"


@pytest.fixture
async def rest(tmp_path: Path) -> AsyncIterator[tuple[RunningServer, httpx.AsyncClient]]:
    async with (
        running_server(make_settings(tmp_path, stats_api_key=KEY)) as server,
        httpx.AsyncClient(
            base_url=server.http_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=10
        ) as client,
    ):
        yield server, client


async def test_rest_needs_an_admin(rest: tuple[RunningServer, httpx.AsyncClient]) -> None:
    """401 without or with a bad credential, 403 for a user token, 200 for admin JWT or key."""
    server, client = rest
    url = "/api/charge-points"
    assert (await client.get(url, headers={"Authorization": ""})).status_code == 401
    bad = await client.get(url, headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401
    assert bad.json()["error"]["code"] == "AUTHENTICATION_FAILED"
    user = {"Authorization": f"Bearer {server.token('u1')}"}
    assert (await client.get(url, headers=user)).status_code == 403
    admin = {"Authorization": f"Bearer {server.token('boss', role='admin')}"}
    assert (await client.get(url, headers=admin)).status_code == 200
    assert (await client.get(url)).status_code == 200


async def test_post_goes_to_rest_and_ws_still_works(
    rest: tuple[RunningServer, httpx.AsyncClient],
) -> None:
    """A POST with a body reaches the REST API on the app port, and /ws and /health still work."""
    server, client = rest
    created = await client.post("/api/charge-points", json={"chargePointId": "CP-REST"})
    assert created.status_code == 201, created.text
    assert (await client.get("/health")).json()["status"] == "healthy"
    async with app_client(server, server.token("u1")) as app:
        reply = await app.request("heartbeat", {})
        assert reply["type"] == "heartbeat"


async def test_charge_points_register_list_delete(
    rest: tuple[RunningServer, httpx.AsyncClient],
) -> None:
    """A registered charge point is listed with its connectors and online flag, then deleted."""
    server, client = rest
    body = {"chargePointId": "CP-KEYED", "password": "correct-horse-1"}
    keyed = await client.post("/api/charge-points", json=body)
    assert keyed.status_code == 201
    assert keyed.json()["hasPassword"] is True
    assert (
        await client.post("/api/charge-points", json={"chargePointId": "CP-R1"})
    ).status_code == 201
    async with connected_charge_point(server.ocpp_url, "CP-R1") as cp:
        await cp.status(1, "Available")
        listed = (await client.get("/api/charge-points")).json()
        [one] = [c for c in listed if c["chargePointId"] == "CP-R1"]
        assert one["online"] is True
        assert one["hasPassword"] is False
        assert one["vendor"]
        assert [c["status"] for c in one["connectors"]] == ["Available"]
        assert one["lastSeen"] is not None
    assert (await client.delete("/api/charge-points/CP-R1")).status_code == 204
    assert (await client.get("/api/charge-points/CP-R1")).status_code == 404
    assert (await client.delete("/api/charge-points/CP-R1")).status_code == 404


async def test_id_tags_are_case_insensitive(
    rest: tuple[RunningServer, httpx.AsyncClient],
) -> None:
    """Id tags: create, 409 for another case, change status/expiry/owner, delete in any case."""
    _, client = rest
    made = await client.post("/api/id-tags", json={"idTag": "TAG-A", "userId": "u1"})
    assert made.status_code == 201
    again = await client.post("/api/id-tags", json={"idTag": "tag-a"})
    assert again.status_code == 409
    changed = await client.patch(
        "/api/id-tags/tag-a",
        json={"status": "Blocked", "expiry": "2030-01-01T00:00:00Z", "userId": "u2"},
    )
    assert changed.status_code == 200
    assert changed.json() == {
        "idTag": "TAG-A",
        "userId": "u2",
        "status": "Blocked",
        "expiry": "2030-01-01T00:00:00.000Z",
    }
    assert [t["idTag"] for t in (await client.get("/api/id-tags")).json()] == ["TAG-A"]
    assert (await client.delete("/api/id-tags/Tag-A")).status_code == 204
    assert (await client.get("/api/id-tags/TAG-A")).status_code == 404
    invalid = await client.post("/api/id-tags", json={"idTag": "x" * 21})
    assert invalid.status_code == 422
    assert invalid.json()["error"]["code"] == "VALIDATION_ERROR"


async def test_transactions_filter_page_detail_and_close(
    rest: tuple[RunningServer, httpx.AsyncClient],
) -> None:
    """Transactions are filtered by status and charge point, paged, shown with samples, closed."""
    server, client = rest
    await client.post("/api/id-tags", json={"idTag": "TAG-T", "userId": "u1"})
    async with connected_charge_point(server.ocpp_url, "CP-T") as cp:
        first = (await cp.start_tx(1, "TAG-T", 1000)).transaction_id
        await cp.meter(1, first, [{"value": "1500", "measurand": "Energy.Active.Import.Register"}])
        await cp.stop_tx(first, 2000)
        second = (await cp.start_tx(1, "TAG-T", 2000)).transaction_id
    await server.app.store.flush()
    page = (await client.get("/api/transactions", params={"chargePointId": "CP-T"})).json()
    assert [t["transactionId"] for t in page["items"]] == [second, first]
    active = await client.get("/api/transactions", params={"status": "Active", "userId": "u1"})
    assert [t["transactionId"] for t in active.json()["items"]] == [second]
    paged = await client.get("/api/transactions", params={"limit": 1, "offset": 1})
    assert [t["transactionId"] for t in paged.json()["items"]] == [first]
    future = await client.get("/api/transactions", params={"from": "2999-01-01T00:00:00Z"})
    assert future.json()["items"] == []
    detail = (await client.get(f"/api/transactions/{first}")).json()
    assert [s["energyImportKWh"] for s in detail["meterSamples"]] == [1.5]
    closed = await client.post(f"/api/transactions/{second}/close", json={"meterStopWh": 2500})
    assert closed.status_code == 200, closed.text
    assert closed.json()["status"] == "Stopped"
    assert (await client.post(f"/api/transactions/{second}/close", json={})).status_code == 409
    assert (await client.get("/api/transactions/999999")).status_code == 404


async def test_openapi_and_asyncapi_are_served(
    rest: tuple[RunningServer, httpx.AsyncClient],
) -> None:
    """/api/openapi.json (3.1, every route), its docs page, and /api/asyncapi.json are served."""
    _, client = rest
    openapi = (await client.get("/api/openapi.json")).json()
    assert openapi["openapi"].startswith("3.1")
    assert {"/api/charge-points", "/api/id-tags", "/api/transactions"} <= set(openapi["paths"])
    docs = await client.get("/api/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()
    asyncapi = (await client.get("/api/asyncapi.json")).json()
    assert asyncapi["asyncapi"] == "3.0.0"
    assert "start_charging_request" in asyncapi["components"]["messages"]


async def test_cors_preflight_for_allowed_origin_only(
    rest: tuple[RunningServer, httpx.AsyncClient],
) -> None:
    """A preflight from the configured origin is allowed (Authorization); another gets no CORS."""
    _, client = rest
    ask = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization",
    }
    ok = await client.options("/api/id-tags", headers={"Origin": "http://localhost:3000", **ask})
    assert ok.headers.get("access-control-allow-origin") == "http://localhost:3000"
    other = await client.options("/api/id-tags", headers={"Origin": "http://evil.example", **ask})
    assert "access-control-allow-origin" not in other.headers


async def test_keep_alive_connections_close_on_shutdown(tmp_path: Path) -> None:
    """A keep-alive REST connection does not hold up the server's shutdown."""
    async with running_server(make_settings(tmp_path, stats_api_key=KEY)) as server:
        client = httpx.AsyncClient(base_url=server.http_url, timeout=10)
        response = await client.get("/api/openapi.json")
        assert response.status_code == 200
        assert server.app.http_server.connections == 1
    async with asyncio.timeout(5):
        await client.aclose()


class OperatedChargePoint(LibraryChargePoint):
    """Answers Reset, hangs on GetConfiguration until released, and leaves UnlockConnector
    unimplemented (the library answers a NotImplemented CALLERROR)."""

    def __init__(self, cp_id: str, ws: Any) -> None:
        super().__init__(cp_id, ws)
        self.release = asyncio.Event()

    @on(Action.reset)  # type: ignore[untyped-decorator]
    async def on_reset(self, type: str, **_: Any) -> Any:
        return call_result.Reset(status="Accepted")

    @on(Action.get_configuration)  # type: ignore[untyped-decorator]
    async def on_get_configuration(self, **_: Any) -> Any:
        await self.release.wait()
        return call_result.GetConfiguration(configuration_key=[])


@contextlib.asynccontextmanager
async def operated(ocpp_url: str, cp_id: str) -> AsyncIterator[OperatedChargePoint]:
    async with websockets.connect(
        f"{ocpp_url}/{cp_id}", subprotocols=[Subprotocol("ocpp1.6")]
    ) as ws:
        cp = OperatedChargePoint(cp_id, ws)
        reader = asyncio.create_task(cp.start())
        try:
            await cp.boot()
            yield cp
        finally:
            cp.release.set()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
                await reader


async def test_action_route_status_codes(tmp_path: Path) -> None:
    """POST /api/charge-points/{id}/{action}: 200 answer, 404, 409, 422, 502, 504, and the log."""
    settings = make_settings(tmp_path, stats_api_key=KEY, ocpp_call_timeout=1)
    async with (
        running_server(settings) as server,
        httpx.AsyncClient(
            base_url=server.http_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=10
        ) as client,
    ):
        missing = await client.post("/api/charge-points/NOPE/reset", json={"type": "Soft"})
        assert missing.status_code == 404
        await client.post("/api/charge-points", json={"chargePointId": "CP-OFF"})
        offline = await client.post("/api/charge-points/CP-OFF/reset", json={"type": "Soft"})
        assert offline.status_code == 409
        assert offline.json()["error"]["code"] == "CHARGE_POINT_OFFLINE"
        async with operated(server.ocpp_url, "CP-OPS"):
            base = "/api/charge-points/CP-OPS"
            done = await client.post(f"{base}/reset", json={"type": "Soft"})
            assert (done.status_code, done.json()) == (200, {"status": "Accepted"})
            bad = await client.post(f"{base}/reset", json={"type": "Medium"})
            assert bad.status_code == 422
            assert bad.json()["error"]["code"] == "INVALID_PAYLOAD"
            assert bad.json()["error"]["details"]["schemaError"]
            refused = await client.post(f"{base}/unlock-connector", json={"connectorId": 1})
            assert refused.status_code == 502
            assert refused.json()["error"]["details"]["ocppErrorCode"] == "NotImplemented"
            slow = await client.post(f"{base}/get-configuration", json={})
            assert slow.status_code == 504
            unknown = await client.post(f"{base}/explode", json={})
            assert unknown.status_code == 422
            assert unknown.json()["error"]["code"] == "VALIDATION_ERROR"
        log = (await client.get("/api/operations", params={"chargePointId": "CP-OPS"})).json()
        reset = [r for r in log if r["action"] == "Reset" and r["errorCode"] is None]
        assert [r["response"] for r in reset] == [{"status": "Accepted"}]
        assert reset[0]["requestedBy"] == "api-key"


def test_action_names_match_the_operations() -> None:
    """The route's action type lists exactly the kebab-case names of the 19 operations."""
    assert set(get_args(ActionName)) == set(ACTIONS)
    assert len(ACTIONS) == 19
    assert ACTIONS["unlock-connector"] == "UnlockConnector"


async def test_configuration_and_status_history(
    rest: tuple[RunningServer, httpx.AsyncClient],
) -> None:
    """A wanted configuration value is stored and listed; GetConfiguration answers show up;
    firmware status history is listed; unknown charge points are 404."""
    server, client = rest
    async with connected_charge_point(server.ocpp_url, "CP-CFG") as cp:
        base = "/api/charge-points/CP-CFG"
        wanted = await client.put(
            f"{base}/configuration/MeterValueSampleInterval", json={"value": "30"}
        )
        assert wanted.status_code == 204, wanted.text
        listed = (await client.get(f"{base}/configuration")).json()
        assert [(e["key"], e["wanted"]) for e in listed] == [("MeterValueSampleInterval", "30")]
        await cp.call(call.FirmwareStatusNotification(status="Downloading"), suppress=False)
        history = (await client.get(f"{base}/status-history/firmware")).json()
        assert [h["status"] for h in history] == ["Downloading"]
    assert (await client.get("/api/charge-points/NOPE/configuration")).status_code == 404
    assert (await client.get(f"{base}/status-history/bogus")).status_code == 422


async def test_rest_and_wss_share_the_tls_port(tmp_path: Path) -> None:
    """With TLS on the app port, REST over https and /ws over wss both work on it."""
    certs = make_self_signed(tmp_path / "tls")
    settings = make_settings(
        tmp_path, stats_api_key=KEY, ws_api_tls_cert=certs.cert, ws_api_tls_key=certs.key
    )
    async with running_server(settings) as server:
        base = server.http_url.replace("http://", "https://")
        async with httpx.AsyncClient(
            base_url=base, verify=certs.client_context(), timeout=10
        ) as client:
            made = await client.post(
                "/api/id-tags",
                json={"idTag": "TLS-TAG"},
                headers={"Authorization": f"Bearer {KEY}"},
            )
            assert made.status_code == 201, made.text
        url = server.app_url.replace("ws://", "wss://")
        async with websockets.connect(url, ssl=certs.client_context()) as ws:
            await ws.send('{"id": 1, "type": "heartbeat"}')
            assert '"heartbeat"' in await asyncio.wait_for(ws.recv(), 5)
