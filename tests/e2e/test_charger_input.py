"""What real chargers and real users send (issue 10 items 3, 4, 5, 12), over real sockets.

The server runs in-process on loopback; charge points are the PyPI ``ocpp`` library's (or raw
frames where the exact CALLERROR matters); apps are plain WebSocket clients. "No RemoteStart
was sent" is proven without waiting on a timer: after the refused request, an allowed one
follows, and the first RemoteStart the charge point receives must be the allowed one's.
"""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta
from typing import Any

from ocpp.v16 import call

from charging_api.domain.models import IdTag, IdTagStatus
from tests.conftest import AppClient, RunningServer, app_client
from tests.e2e.test_ocpp_conformance import raw_charge_point, stamp
from tests.peers.py_charge_point import LibraryChargePoint, connected_charge_point, now_text


async def start(
    app: AppClient, cp_id: str, connector: int = 1, **data: Any
) -> asyncio.Task[dict[str, Any]]:
    return asyncio.create_task(
        app.request(
            "start_charging_request", {"chargePointId": cp_id, "connectorId": connector, **data}
        )
    )


async def charge(
    app: AppClient, cp: LibraryChargePoint, cp_id: str, tag: str, connector: int = 1
) -> int:
    """A full remote start on ``connector``: the transactionId the app was given."""
    request = await start(app, cp_id, connector)
    asked = await asyncio.wait_for(cp.remote_starts.get(), 10)
    assert asked == {"id_tag": tag, "connector_id": connector}
    started = await cp.start_tx(connector, tag, meter_start=1000)
    response = await request
    assert response["data"]["success"] is True, response
    return int(started.transaction_id)


async def first_remote_start(cp: LibraryChargePoint) -> dict[str, Any]:
    return await asyncio.wait_for(cp.remote_starts.get(), 10)


def stored_samples(server: RunningServer) -> list[tuple[Any, ...]]:
    """Every meter row in the server's SQLite file (transaction, connector, energy, voltage)."""
    path = server.settings.database_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        return db.execute(
            "SELECT transaction_id, connector_id, energy_import_kwh, voltage"
            " FROM meter_samples ORDER BY id"
        ).fetchall()


# ------------------------------------------------------------------- item 4: blocked, expired


async def test_blocked_tag_named_in_the_request_is_refused_before_any_remote_start(
    server: RunningServer,
) -> None:
    """A Blocked tag named in start_charging_request: FORBIDDEN + idTagStatus, no RemoteStart."""
    store = server.app.store
    await store.put_id_tag(IdTag("TAG-BLK", "olga", IdTagStatus.BLOCKED))
    async with (
        connected_charge_point(server.ocpp_url, "CP-BLK") as cp,
        app_client(server, server.token("olga", id_tag="TAG-OK")) as app,
    ):
        refused = await (await start(app, "CP-BLK", idTag="TAG-BLK"))
        authorize = await cp.authorize("TAG-BLK")
        assert refused["data"]["success"] is False
        assert refused["error"]["code"] == "FORBIDDEN"
        assert refused["error"]["details"]["idTagStatus"] == authorize.id_tag_info["status"]
        assert authorize.id_tag_info["status"] == "Blocked"
        allowed = await start(app, "CP-BLK")
        assert await first_remote_start(cp) == {"id_tag": "TAG-OK", "connector_id": 1}
        await cp.start_tx(1, "TAG-OK", meter_start=0)
        assert (await allowed)["data"]["success"] is True


async def test_expired_tag_in_the_token_claim_is_refused_before_any_remote_start(
    server: RunningServer,
) -> None:
    """A token whose idTag claim is past its expiryDate: FORBIDDEN Expired, no RemoteStart,
    no quiet fall-back to another of the user's tags."""
    store = server.app.store
    await store.put_id_tag(IdTag("TAG-OLD", "paul", expiry=datetime.now(UTC) - timedelta(days=1)))
    await store.put_id_tag(IdTag("TAG-SPARE", "paul"))
    async with (
        connected_charge_point(server.ocpp_url, "CP-EXP") as cp,
        app_client(server, server.token("paul", id_tag="TAG-OLD")) as app,
    ):
        refused = await (await start(app, "CP-EXP"))
        authorize = await cp.authorize("TAG-OLD")
        assert refused["error"]["code"] == "FORBIDDEN", refused
        assert refused["error"]["details"]["idTagStatus"] == "Expired"
        assert authorize.id_tag_info["status"] == "Expired"
        allowed = await start(app, "CP-EXP", idTag="TAG-SPARE")
        assert await first_remote_start(cp) == {"id_tag": "TAG-SPARE", "connector_id": 1}
        await cp.start_tx(1, "TAG-SPARE", meter_start=0)
        assert (await allowed)["data"]["success"] is True


# --------------------------------------------------------------------- item 3: CiString20


async def test_id_tags_match_case_insensitively_and_keep_their_registered_spelling(
    server: RunningServer,
) -> None:
    """A token claiming ``tag-case`` charges with the registered ``TAG-Case``: the RemoteStart
    names it as registered, Authorize and the StartTransaction in another case match it."""
    await server.app.store.put_id_tag(IdTag("TAG-Case", "quinn"))
    async with (
        connected_charge_point(server.ocpp_url, "CP-CASE") as cp,
        app_client(server, server.token("quinn", id_tag="tag-case")) as app,
    ):
        request = await start(app, "CP-CASE")
        assert await first_remote_start(cp) == {"id_tag": "TAG-Case", "connector_id": 1}
        assert (await cp.authorize("tag-CASE")).id_tag_info["status"] == "Accepted"
        started = await cp.start_tx(1, "TAG-CASE", meter_start=0)
        assert started.id_tag_info["status"] == "Accepted"
        response = await request
        assert response["data"]["transactionId"] == started.transaction_id
    tx = await server.app.store.get_transaction(started.transaction_id)
    assert tx is not None and tx.user_id == "quinn"
    [tag] = await server.app.store.id_tags_of("quinn")
    assert tag.tag == "TAG-Case"  # not re-registered as the token spells it


async def test_another_users_tag_in_another_case_is_not_yours(server: RunningServer) -> None:
    """``tag-r`` in a request or a token does not make someone else's ``TAG-R`` usable."""
    await server.app.store.put_id_tag(IdTag("TAG-R", "rita"))
    async with (
        connected_charge_point(server.ocpp_url, "CP-STEAL") as cp,
        app_client(server, server.token("sam", id_tag="tag-r")) as sam,
    ):
        named = await (await start(sam, "CP-STEAL", idTag="Tag-R"))
        assert named["error"]["code"] == "FORBIDDEN", named
        claimed = await (await start(sam, "CP-STEAL"))
        assert claimed["error"]["code"] == "NO_ID_TAG", claimed
        async with app_client(server, server.token("rita")) as rita:
            allowed = await start(rita, "CP-STEAL")
            assert await first_remote_start(cp) == {"id_tag": "TAG-R", "connector_id": 1}
            await cp.start_tx(1, "tag-r", meter_start=0)
            assert (await allowed)["data"]["success"] is True
    assert [t.tag for t in await server.app.store.id_tags_of("sam")] == []


# ---------------------------------------------------------------- item 5: meter and status


async def test_decimal_commas_are_read_and_empty_samples_never_stored(
    server: RunningServer,
) -> None:
    """``"123,4"`` Wh arrives as 0.1234 kWh; a MeterValue with no usable value stores nothing
    and pushes nothing."""
    await server.app.store.put_id_tag(IdTag("TAG-T", "tina"))
    async with (
        connected_charge_point(server.ocpp_url, "CP-COMMA") as cp,
        app_client(server, server.token("tina")) as app,
    ):
        tx_id = await charge(app, cp, "CP-COMMA", "TAG-T")
        await cp.meter(1, tx_id, [{"value": "21,5", "measurand": "Temperature"}])
        await cp.meter(1, tx_id, [{"value": "n/a"}])
        await cp.meter(
            1, tx_id, [{"value": "123,4", "unit": "Wh"}, {"value": "230,1", "measurand": "Voltage"}]
        )
        pushed = await app.push("meter_values_update")
        assert pushed["data"]["meterValue"]["energyImportKWh"] == 0.1234
        assert pushed["data"]["meterValue"]["voltage"] == 230.1
        await server.app.store.flush()
        assert stored_samples(server) == [(tx_id, 1, 0.1234, 230.1)]


async def test_main_meter_on_connector_0_never_counts_as_the_sessions_energy(
    server: RunningServer,
) -> None:
    """MeterValues on connector 0 naming a transactionId are stored for the charge point only:
    not in the session's samples, not pushed to its owner."""
    await server.app.store.put_id_tag(IdTag("TAG-U", "uma"))
    async with (
        connected_charge_point(server.ocpp_url, "CP-MAIN") as cp,
        app_client(server, server.token("uma")) as app,
    ):
        tx_id = await charge(app, cp, "CP-MAIN", "TAG-U")
        await cp.meter(0, tx_id, [{"value": "987654", "unit": "Wh"}])
        await cp.meter(1, tx_id, [{"value": "1500", "unit": "Wh"}])
        pushed = (await app.push("meter_values_update"))["data"]
        assert (pushed["connectorId"], pushed["meterValue"]["energyImportKWh"]) == (1, 1.5)
        await server.app.store.flush()
        session = await server.app.store.meter_samples_of(tx_id)
        assert [s.sample.energy_import_kwh for s in session] == [1.5]
        assert stored_samples(server) == [(None, 0, 987.654, None), (tx_id, 1, 1.5, None)]


async def status(cp: LibraryChargePoint, connector: int, state: str, **extra: Any) -> None:
    await cp.call(
        call.StatusNotification(
            connector_id=connector, status=state, timestamp=now_text(), **extra
        ),
        suppress=False,
    )


async def test_faulted_charge_point_reaches_every_session_owner_with_info(
    server: RunningServer,
) -> None:
    """Faulted on connector 0 reaches both owners (each with their transactionId), with the
    charger's info and vendorErrorCode; so does the Available that ends it."""
    await server.app.store.put_id_tag(IdTag("TAG-V", "vera"))
    await server.app.store.put_id_tag(IdTag("TAG-W", "walt"))
    async with (
        connected_charge_point(server.ocpp_url, "CP-FAULT") as cp,
        app_client(server, server.token("vera")) as vera,
        app_client(server, server.token("walt")) as walt,
    ):
        for connector in (0, 1, 2):
            await status(cp, connector, "Available", error_code="NoError")
        tx_v = await charge(vera, cp, "CP-FAULT", "TAG-V", connector=1)
        tx_w = await charge(walt, cp, "CP-FAULT", "TAG-W", connector=2)
        await status(
            cp, 0, "Faulted", error_code="GroundFailure", info="RCD tripped",
            vendor_error_code="E-042",
        )  # fmt: skip
        for app, tx_id in ((vera, tx_v), (walt, tx_w)):
            faulted = await app.push(
                "charging_status_update", where=lambda m: m["data"]["connectorId"] == 0
            )
            assert faulted["data"] == {
                "chargePointId": "CP-FAULT", "connectorId": 0, "status": "Faulted",
                "transactionId": tx_id, "errorCode": "GroundFailure", "info": "RCD tripped",
                "vendorErrorCode": "E-042",
            }  # fmt: skip
        await status(cp, 0, "Available", error_code="NoError")
        for app, tx_id in ((vera, tx_v), (walt, tx_w)):
            cleared = await app.push(
                "charging_status_update", where=lambda m: m["data"]["connectorId"] == 0
            )
            assert cleared["data"] == {
                "chargePointId": "CP-FAULT", "connectorId": 0, "status": "Available",
                "transactionId": tx_id,
            }  # fmt: skip


async def test_status_info_and_vendor_error_code_reach_the_owner(server: RunningServer) -> None:
    """A connector's StatusNotification info and vendorErrorCode are in charging_status_update."""
    await server.app.store.put_id_tag(IdTag("TAG-X", "xena"))
    async with (
        connected_charge_point(server.ocpp_url, "CP-INFO") as cp,
        app_client(server, server.token("xena")) as app,
    ):
        tx_id = await charge(app, cp, "CP-INFO", "TAG-X")
        await status(
            cp, 1, "SuspendedEVSE", error_code="OtherError", info="Load shedding",
            vendor_error_code="LS-7",
        )  # fmt: skip
        update = await app.push(
            "charging_status_update", where=lambda m: m["data"]["status"] == "SuspendedEVSE"
        )
        assert update["data"] == {
            "chargePointId": "CP-INFO", "connectorId": 1, "status": "SuspendedEVSE",
            "transactionId": tx_id, "errorCode": "OtherError", "info": "Load shedding",
            "vendorErrorCode": "LS-7",
        }  # fmt: skip


async def test_start_transaction_on_connector_0_is_a_property_constraint_violation(
    server: RunningServer,
) -> None:
    """StartTransaction with connectorId 0 gets CALLERROR PropertyConstraintViolation and
    stores no transaction; the connection lives on."""
    await server.app.store.put_id_tag(IdTag("TAG-Y", "yann"))
    async with raw_charge_point(server.ocpp_url, "CP-ZERO") as cp:
        reply = await cp.call(
            "StartTransaction",
            {"connectorId": 0, "idTag": "TAG-Y", "meterStart": 0, "timestamp": stamp()},
            "zero-1",
        )
        assert reply[:3] == [4, "zero-1", "PropertyConstraintViolation"], reply
        await cp.heartbeat_works()
    assert await server.app.store.transactions_of(None, 10) == []


# ------------------------------------------------------------------ item 12: connectors


async def test_start_on_a_connector_the_charge_point_never_reported_is_connector_not_found(
    server: RunningServer,
) -> None:
    """Connectors 1-2 reported: a start on 3 is CONNECTOR_NOT_FOUND and the charger hears
    nothing; a start on 2 goes through."""
    async with (
        connected_charge_point(server.ocpp_url, "CP-TWO") as cp,
        app_client(server, server.token("zoe", id_tag="TAG-Z")) as app,
    ):
        for connector in (0, 1, 2):
            await cp.status(connector, "Available")
        missing = await (await start(app, "CP-TWO", connector=3))
        assert missing["data"]["success"] is False
        assert missing["error"]["code"] == "CONNECTOR_NOT_FOUND", missing
        assert missing["error"]["details"] == {"chargePointId": "CP-TWO", "connectorId": 3}
        allowed = await start(app, "CP-TWO", connector=2)
        assert await first_remote_start(cp) == {"id_tag": "TAG-Z", "connector_id": 2}
        await cp.start_tx(2, "TAG-Z", meter_start=0)
        assert (await allowed)["data"]["success"] is True


async def test_a_charge_point_that_reported_no_connector_yet_is_asked_anyway(
    server: RunningServer,
) -> None:
    """Some chargers report their connectors late: before any report, a start is sent on."""
    async with (
        connected_charge_point(server.ocpp_url, "CP-QUIET") as cp,
        app_client(server, server.token("abe", id_tag="TAG-AB")) as app,
    ):
        request = await start(app, "CP-QUIET", connector=4)
        assert await first_remote_start(cp) == {"id_tag": "TAG-AB", "connector_id": 4}
        await cp.start_tx(4, "TAG-AB", meter_start=0)
        assert (await request)["data"]["success"] is True
