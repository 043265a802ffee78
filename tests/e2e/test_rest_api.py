"""The operator REST API over real HTTP against the real server (same port as /ws)."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
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
from tests.e2e.test_webhooks import SECRET as WEBHOOK_SECRET
from tests.e2e.test_webhooks import receiver
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
        "parentIdTag": None,
    }
    assert [t["idTag"] for t in (await client.get("/api/id-tags")).json()] == ["TAG-A"]
    assert (await client.delete("/api/id-tags/Tag-A")).status_code == 204
    assert (await client.get("/api/id-tags/TAG-A")).status_code == 404
    invalid = await client.post("/api/id-tags", json={"idTag": "x" * 21})
    assert invalid.status_code == 422
    assert invalid.json()["error"]["code"] == "VALIDATION_ERROR"


async def test_patch_sets_and_clears_the_parent_id_tag(
    rest: tuple[RunningServer, httpx.AsyncClient],
) -> None:
    """PATCH parentIdTag sets a card's group (a charge point's Authorize then names it), null
    clears it; a tag cannot be its own parent; the OpenAPI shows the field."""
    server, client = rest
    made = await client.post("/api/id-tags", json={"idTag": "CARD-1", "userId": "u1"})
    assert made.status_code == 201 and made.json()["parentIdTag"] is None
    changed = await client.patch("/api/id-tags/card-1", json={"parentIdTag": "FLEET-7"})
    assert changed.status_code == 200, changed.text
    assert changed.json()["parentIdTag"] == "FLEET-7"
    assert changed.json()["userId"] == "u1"  # untouched: not in the body
    assert (await client.get("/api/id-tags/CARD-1")).json()["parentIdTag"] == "FLEET-7"
    async with connected_charge_point(server.ocpp_url, "CP-PARENT") as cp:
        authorized = await cp.authorize("CARD-1")
        assert authorized.id_tag_info["parent_id_tag"] == "FLEET-7"
        cleared = await client.patch("/api/id-tags/CARD-1", json={"parentIdTag": None})
        assert cleared.status_code == 200 and cleared.json()["parentIdTag"] is None
        authorized = await cp.authorize("CARD-1")
        assert authorized.id_tag_info.get("parent_id_tag") is None
    itself = await client.patch("/api/id-tags/CARD-1", json={"parentIdTag": "card-1"})
    assert itself.status_code == 422
    assert itself.json()["error"]["details"]["field"] == "parentIdTag"
    too_long = await client.patch("/api/id-tags/CARD-1", json={"parentIdTag": "x" * 21})
    assert too_long.status_code == 422
    created = await client.post("/api/id-tags", json={"idTag": "CARD-2", "parentIdTag": "FLEET-7"})
    assert created.status_code == 201 and created.json()["parentIdTag"] == "FLEET-7"
    schemas = (await client.get("/api/openapi.json")).json()["components"]["schemas"]
    assert "parentIdTag" in schemas["IdTagChange"]["properties"]
    assert "parentIdTag" in schemas["IdTagOut"]["properties"]


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


class ReservingChargePoint(LibraryChargePoint):
    """Accepts ReserveNow, CancelReservation and SetChargingProfile (records what it got)."""

    def __init__(self, cp_id: str, ws: Any) -> None:
        super().__init__(cp_id, ws)
        self.got: list[tuple[str, dict[str, Any]]] = []

    @on(Action.reserve_now)  # type: ignore[untyped-decorator]
    async def on_reserve_now(self, **kw: Any) -> Any:
        self.got.append(("ReserveNow", kw))
        return call_result.ReserveNow(status="Accepted")

    @on(Action.cancel_reservation)  # type: ignore[untyped-decorator]
    async def on_cancel_reservation(self, **kw: Any) -> Any:
        self.got.append(("CancelReservation", kw))
        return call_result.CancelReservation(status="Accepted")

    @on(Action.set_charging_profile)  # type: ignore[untyped-decorator]
    async def on_set_charging_profile(self, **kw: Any) -> Any:
        self.got.append(("SetChargingProfile", kw))
        return call_result.SetChargingProfile(status="Accepted")


@contextlib.asynccontextmanager
async def reserving(ocpp_url: str, cp_id: str) -> AsyncIterator[ReservingChargePoint]:
    async with websockets.connect(
        f"{ocpp_url}/{cp_id}", subprotocols=[Subprotocol("ocpp1.6")]
    ) as ws:
        cp = ReservingChargePoint(cp_id, ws)
        reader = asyncio.create_task(cp.start())
        try:
            await cp.boot()
            yield cp
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
                await reader


async def test_reservations_create_list_cancel(
    rest: tuple[RunningServer, httpx.AsyncClient],
) -> None:
    """An admin reserves for a registered tag (ReserveNow sent), lists it, cancels it; an
    unregistered tag is 404, a connector reserved for another tag 409, a gone one 404."""
    server, client = rest
    await client.post("/api/id-tags", json={"idTag": "TAG-R", "userId": "u1"})
    await client.post("/api/id-tags", json={"idTag": "TAG-OTHER"})
    async with reserving(server.ocpp_url, "CP-RES") as cp:
        body = {"chargePointId": "CP-RES", "connectorId": 1, "idTag": "TAG-R", "expiryMinutes": 5}
        made = await client.post("/api/reservations", json=body)
        assert made.status_code == 201, made.text
        reservation = made.json()
        assert (reservation["idTag"], reservation["userId"]) == ("TAG-R", "u1")
        assert [name for name, _ in cp.got] == ["ReserveNow"]
        taken = await client.post("/api/reservations", json={**body, "idTag": "TAG-OTHER"})
        assert (taken.status_code, taken.json()["error"]["code"]) == (409, "CONNECTOR_RESERVED")
        unknown = await client.post("/api/reservations", json={**body, "idTag": "NOPE"})
        assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "NO_ID_TAG")
        listed = await client.get("/api/reservations", params={"chargePointId": "CP-RES"})
        assert [r["reservationId"] for r in listed.json()] == [reservation["reservationId"]]
        other = await client.get("/api/reservations", params={"chargePointId": "CP-ELSE"})
        assert other.json() == []
        url = f"/api/reservations/{reservation['reservationId']}"
        cancelled = await client.delete(url)
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["chargePointStatus"] == "Accepted"
        assert cancelled.json()["reservation"]["status"] == "Cancelled"
        assert cp.got[-1][0] == "CancelReservation"
        assert (await client.get("/api/reservations")).json() == []
        assert (await client.delete(url)).status_code == 404
    missing = await client.post("/api/reservations", json={**body, "chargePointId": "NOPE"})
    assert missing.status_code == 404


async def test_charging_profiles_the_server_set_are_listed(
    rest: tuple[RunningServer, httpx.AsyncClient],
) -> None:
    """A profile the charge point accepted through the action route is listed, per charge point."""
    server, client = rest
    profile = {
        "chargingProfileId": 7,
        "stackLevel": 1,
        "chargingProfilePurpose": "TxDefaultProfile",
        "chargingProfileKind": "Absolute",
        "chargingSchedule": {
            "chargingRateUnit": "A",
            "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 16.0}],
        },
    }
    async with reserving(server.ocpp_url, "CP-PROF"):
        sent = await client.post(
            "/api/charge-points/CP-PROF/set-charging-profile",
            json={"connectorId": 1, "csChargingProfiles": profile},
        )
        assert sent.json() == {"status": "Accepted"}, sent.text
    listed = (
        await client.get("/api/charging-profiles", params={"chargePointId": "CP-PROF"})
    ).json()
    assert [(p["chargingProfileId"], p["purpose"], p["setBy"]) for p in listed] == [
        (7, "TxDefaultProfile", "api-key")
    ]
    assert listed[0]["profile"]["chargingSchedule"]["chargingRateUnit"] == "A"
    none = await client.get("/api/charging-profiles", params={"chargePointId": "CP-X"})
    assert none.json() == []


TARIFF_BODY: dict[str, Any] = {
    "currency": "EUR",
    "vatPercent": "20",
    "elements": [{"priceComponents": [{"type": "ENERGY", "price": "0.50"}]}],
}


async def test_tariffs_put_get_assign_delete(
    rest: tuple[RunningServer, httpx.AsyncClient],
) -> None:
    """Tariffs are stored under their path id, listed, assigned by scope, and deleted; bad ones
    are 422 and change nothing; unknown ones 404."""
    _, client = rest
    made = await client.put("/api/tariffs/std", json=TARIFF_BODY)
    assert made.status_code == 200, made.text
    assert made.json()["id"] == "std"
    assert made.json()["elements"][0]["priceComponents"] == [{"type": "ENERGY", "price": "0.50"}]
    bad = await client.put("/api/tariffs/std", json={**TARIFF_BODY, "currency": "EURO"})
    assert (bad.status_code, bad.json()["error"]["code"]) == (422, "VALIDATION_ERROR")
    zone = await client.put("/api/tariffs/std", json={**TARIFF_BODY, "timezone": "Mars/Base"})
    assert zone.status_code == 422
    assert (await client.get("/api/tariffs/std")).json()["currency"] == "EUR"
    assigned = await client.put(
        "/api/tariff-assignments", json={"scope": "chargePoint:CP-1", "tariffId": "std"}
    )
    assert assigned.status_code == 200, assigned.text
    assert assigned.json()["assignments"] == {"chargePoint:CP-1": "std"}
    default = await client.put(
        "/api/tariff-assignments", json={"scope": "default", "tariffId": "std"}
    )
    assert default.json()["assignments"] == {"chargePoint:CP-1": "std", "default": "std"}
    no_id = await client.put("/api/tariff-assignments", json={"scope": "user:", "tariffId": "std"})
    assert no_id.status_code == 422
    ghost = await client.put("/api/tariff-assignments", json={"scope": "default", "tariffId": "x"})
    assert (ghost.status_code, ghost.json()["error"]["code"]) == (404, "TARIFF_NOT_FOUND")
    unassigned = await client.put("/api/tariff-assignments", json={"scope": "default"})
    assert unassigned.json()["assignments"] == {"chargePoint:CP-1": "std"}
    assert [t["id"] for t in (await client.get("/api/tariffs")).json()["tariffs"]] == ["std"]
    assert (await client.delete("/api/tariffs/std")).status_code == 204
    assert (await client.get("/api/tariffs/std")).status_code == 404
    assert (await client.delete("/api/tariffs/std")).status_code == 404


async def test_webhooks_register_log_redeliver(
    rest: tuple[RunningServer, httpx.AsyncClient],
) -> None:
    """An endpoint registered over REST receives a session event; the delivery log shows it;
    redelivery sends the same event again; deletion forgets the endpoint."""
    server, client = rest
    async with receiver() as (got, url):
        short = await client.post("/api/webhooks", json={"id": "x", "url": url, "secret": "s"})
        assert short.status_code == 422
        made = await client.post(
            "/api/webhooks", json={"id": "ops", "url": url, "secret": WEBHOOK_SECRET}
        )
        assert made.status_code == 201, made.text
        assert made.json() == {"id": "ops", "url": url, "events": ["*"]}  # no secret
        assert (await client.get("/api/webhooks")).json() == [made.json()]
        await client.post("/api/id-tags", json={"idTag": "TAG-W", "userId": "u1"})
        async with connected_charge_point(server.ocpp_url, "CP-W") as cp:
            await cp.start_tx(1, "TAG-W", 0)
            await got.wait_for(1)
        first = got.events[0]
        log = (await client.get("/api/webhooks/deliveries")).json()
        assert [(d["eventId"], d["delivered"], d["status"]) for d in log][-1:] == [
            (first["id"], True, 200)
        ]
        again = await client.post(f"/api/webhooks/events/{first['id']}/redeliver")
        assert again.status_code == 202, again.text

        def sent_twice() -> bool:
            return [e["id"] for e in got.events].count(first["id"]) == 2

        async with asyncio.timeout(10), got.arrived:
            await got.arrived.wait_for(sent_twice)
        nope = await client.post("/api/webhooks/events/evt-nope/redeliver")
        assert nope.status_code == 404
    assert (await client.delete("/api/webhooks/ops")).status_code == 204
    assert (await client.get("/api/webhooks")).json() == []
    assert (await client.delete("/api/webhooks/ops")).status_code == 404


async def test_receipt_and_session_history_with_csv(
    rest: tuple[RunningServer, httpx.AsyncClient],
) -> None:
    """A finished session's receipt (with the default tariff's cost) and CDR; the history of
    everyone, filtered and paged, as JSON and as text/csv; a running session has no receipt."""
    server, client = rest
    await client.put("/api/tariffs/std", json=TARIFF_BODY)
    await client.put("/api/tariff-assignments", json={"scope": "default", "tariffId": "std"})
    await client.post("/api/id-tags", json={"idTag": "TAG-H1", "userId": "u1"})
    await client.post("/api/id-tags", json={"idTag": "TAG-H2", "userId": "u2"})
    async with connected_charge_point(server.ocpp_url, "CP-H") as cp:
        first = (await cp.start_tx(1, "TAG-H1", 0)).transaction_id
        await cp.stop_tx(first, 2000)
        second = (await cp.start_tx(2, "TAG-H2", 0)).transaction_id
        running = await client.get(f"/api/transactions/{second}/receipt")
        assert (running.status_code, running.json()["error"]["code"]) == (
            409,
            "TRANSACTION_NOT_ACTIVE",
        )
    await server.app.sessions.drain()
    receipt = await client.get(f"/api/transactions/{first}/receipt")
    assert receipt.status_code == 200, receipt.text
    assert receipt.json()["receipt"]["energyKWh"] == 2.0
    assert receipt.json()["receipt"]["cost"]["total"] == "1.20"  # 2 kWh * 0.50 + 20 % VAT
    assert receipt.json()["cdr"]["total_cost"] == {"excl_vat": 1.0, "incl_vat": 1.2}
    assert (await client.get("/api/transactions/999999/receipt")).status_code == 404
    everyone = (await client.get("/api/sessions")).json()
    assert [s["transactionId"] for s in everyone["sessions"]] == [second, first]
    assert everyone["total"] == 2
    mine = (await client.get("/api/sessions", params={"userId": "u1"})).json()
    assert [(s["transactionId"], s["cost"]) for s in mine["sessions"]] == [(first, "1.20")]
    paged = (await client.get("/api/sessions", params={"limit": 1, "offset": 1})).json()
    assert [s["transactionId"] for s in paged["sessions"]] == [first]
    text = await client.get("/api/sessions", params={"format": "csv", "userId": "u1"})
    assert text.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(text.text)))
    assert [(r["transactionId"], r["energyKWh"], r["cost"]) for r in rows] == [
        (str(first), "2.0", "1.20")
    ]
    naive = await client.get("/api/sessions", params={"from": "2026-01-01T00:00:00"})
    assert naive.status_code == 422
