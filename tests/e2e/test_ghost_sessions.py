"""Ghost sessions, the app's stop reason and stop errors, on the wire (issue 10 items 2, 6, 8).

A real server in-process on loopback ports, app clients over real WebSockets, charge points
from the ``ocpp`` library; the CLI tests run the real console script beside a real
``charging-api serve`` process. A charge point "forgets" a transaction the way a rebooted one
does: it reconnects, boots, and reports the connector ``Available`` (or starts anew).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from charging_api.domain.models import IdTagStatus
from charging_api.storage import SqlStore
from tests.conftest import RunningServer, app_client, make_settings, running_server
from tests.e2e.test_cli import cli_env, run_cli
from tests.peers.py_charge_point import connected_charge_point
from tests.reliability.helpers import app_at, db_rows, energy, ocpp_time, start_charge
from tests.serverproc import CHARGING_API, ServerProcess

CP, TAG = "CP-GHOST", "TAG-ALICE"


def stored(server_url: str, tx: int) -> tuple[Any, ...]:
    """(meter_stop_wh, stop_reason, closed_by, app_stop_reason, stopped?) as on disk."""
    [row] = db_rows(
        server_url,
        "SELECT meter_stop_wh, stop_reason, closed_by, app_stop_reason, stopped_at IS NOT NULL"
        " FROM transactions WHERE id = ?",
        (tx,),
    )
    return row


def stopped(tx: int) -> Any:
    return lambda m: m["data"]["transactionId"] == tx and m["data"]["status"] == "Stopped"


async def test_a_new_start_on_the_connector_closes_the_forgotten_transaction(
    tmp_path: Path,
) -> None:
    """A rebooted charge point starts anew on the connector: the open transaction is closed at
    the last meter reading (reason Other, closedBy Superseded) and its owner is told."""
    async with running_server(make_settings(tmp_path)) as server:
        async with app_client(server, server.token("alice", id_tag=TAG)) as alice:
            async with connected_charge_point(server.ocpp_url, CP) as cp:
                await cp.status(1, "Available")
                tx = await start_charge(alice, cp, CP, 1, TAG, meter_start=1000)
                await cp.meter(1, tx, energy(1800))
            async with connected_charge_point(server.ocpp_url, CP) as cp:  # rebooted
                fresh = await cp.start_tx(1, "LOCAL-CARD", 1900)
                assert fresh.transaction_id != tx
                ended = await alice.push("transaction_update", where=stopped(tx))
        assert {k: ended["data"][k] for k in ("meterStopWh", "reason", "closedBy")} == {
            "meterStopWh": 1800,
            "reason": "Other",
            "closedBy": "Superseded",
        }
        assert ended["data"]["energyKWh"] == 0.8
        assert stored(server.settings.database_url, tx) == (1800, "Other", "Superseded", None, 1)
        assert stored(server.settings.database_url, fresh.transaction_id)[4] == 0


async def test_available_without_stop_closes_after_the_grace_and_a_late_stop_corrects_it(
    tmp_path: Path,
) -> None:
    """Available and no StopTransaction within STALE_TRANSACTION_GRACE: closed (reason
    StaleTransaction), owner told, connector free; a StopTransaction arriving later is
    acknowledged and its meter, time and reason replace ours."""
    settings = make_settings(tmp_path, stale_transaction_grace=0.3)
    async with running_server(settings) as server:
        url = server.settings.database_url
        async with app_client(server, server.token("alice", id_tag=TAG)) as alice:
            async with connected_charge_point(server.ocpp_url, CP) as cp:
                await cp.status(1, "Available")
                tx = await start_charge(alice, cp, CP, 1, TAG, meter_start=1000)
                await cp.meter(1, tx, energy(1500))
            async with connected_charge_point(server.ocpp_url, CP) as cp:  # rebooted
                await cp.status(1, "Available")
                ended = await alice.push("transaction_update", where=stopped(tx))
                assert (ended["data"]["reason"], ended["data"]["closedBy"]) == (
                    "StaleTransaction",
                    "ConnectorAvailable",
                )
                assert ended["data"]["meterStopWh"] == 1500
                again = await start_charge(alice, cp, CP, 1, TAG, meter_start=1600)
                assert again != tx
                # The charge point flushes its queued StopTransaction at last.
                stop_at = datetime.now(UTC) - timedelta(seconds=30)
                late = await cp.stop_tx(tx, 1550, reason="PowerLoss", timestamp=ocpp_time(stop_at))
                assert late.id_tag_info is None
        assert stored(url, tx) == (1550, "PowerLoss", "ConnectorAvailable", None, 1)
        [(at,)] = db_rows(url, "SELECT stopped_at FROM transactions WHERE id = ?", (tx,))
        assert datetime.fromisoformat(at).replace(tzinfo=UTC) == stop_at.replace(
            microsecond=stop_at.microsecond // 1000 * 1000
        )


async def test_admin_closes_a_transaction_over_the_app_and_it_is_audited(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """close_transaction_request: a user gets FORBIDDEN; an admin closes it at the given
    meter, the owner is told, the connector is free, and one audit line names who and what."""
    async with running_server(make_settings(tmp_path)) as server:
        async with (
            app_client(server, server.token("alice", id_tag=TAG)) as alice,
            app_client(server, server.token("ops", role="admin")) as ops,
            connected_charge_point(server.ocpp_url, CP) as cp,
        ):
            await cp.status(1, "Available")
            tx = await start_charge(alice, cp, CP, 1, TAG, meter_start=1000)
            refused = await alice.request("close_transaction_request", {"transactionId": tx})
            assert refused["type"] == "close_transaction_response"
            assert refused["error"]["code"] == "FORBIDDEN"
            with caplog.at_level(logging.WARNING):
                done = await ops.request(
                    "close_transaction_request", {"transactionId": tx, "meterStopWh": 2500}
                )
            assert done["data"]["success"] is True, done
            record = done["data"]["transaction"]
            assert (record["status"], record["meterStopWh"], record["closedBy"]) == (
                "Stopped",
                2500,
                "Admin",
            )
            ended = await alice.push("transaction_update", where=stopped(tx))
            assert (ended["data"]["closedBy"], ended["data"]["energyKWh"]) == ("Admin", 1.5)
            twice = await ops.request("close_transaction_request", {"transactionId": tx})
            assert twice["error"]["code"] == "TRANSACTION_NOT_ACTIVE"
            await start_charge(alice, cp, CP, 1, TAG)  # the connector is free
        audit = [r.getMessage() for r in caplog.records if r.getMessage().startswith("audit:")]
        assert len(audit) == 1, audit
        assert "admin ops" in audit[0] and f"transaction {tx} " in audit[0]


async def test_a_session_started_with_a_refused_tag_blocks_app_starts_only_until_closed(
    tmp_path: Path,
) -> None:
    """The charge point starts with an Invalid tag anyway: an app start there is refused with
    CONNECTOR_BUSY naming the tag status (no RemoteStart); Available + grace closes it."""
    settings = make_settings(tmp_path, stale_transaction_grace=0.3)
    async with (
        running_server(settings) as server,
        app_client(server, server.token("alice", id_tag=TAG)) as alice,
        app_client(server, server.token("ops", role="admin")) as ops,
        connected_charge_point(server.ocpp_url, CP) as cp,
    ):
        await ops.request("subscribe", {"chargePointIds": [CP]})
        await cp.status(1, "Available")
        foreign = await cp.start_tx(1, "NOBODY-KNOWS", 0)
        assert foreign.id_tag_info["status"] == IdTagStatus.INVALID.value
        busy = await alice.request(
            "start_charging_request", {"chargePointId": CP, "connectorId": 1}
        )
        assert busy["error"]["code"] == "CONNECTOR_BUSY"
        assert busy["error"]["details"]["idTagStatus"] == "Invalid"
        assert "refused (Invalid)" in busy["error"]["message"]
        assert cp.remote_starts.empty()
        await cp.status(1, "Available")
        await ops.push("transaction_update", where=stopped(foreign.transaction_id))
        await start_charge(alice, cp, CP, 1, TAG)


async def test_the_apps_stop_reason_is_stored_and_shown_beside_the_charge_points(
    server: RunningServer,
) -> None:
    """stop_charging_request's reason comes back as appReason in transaction_update and as
    appStopReason in get_transactions, beside the charge point's own reason."""
    async with (
        app_client(server, server.token("alice", id_tag=TAG)) as alice,
        connected_charge_point(server.ocpp_url, CP) as cp,
    ):
        await cp.status(1, "Available")
        tx = await start_charge(alice, cp, CP, 1, TAG, meter_start=100)
        reply = await alice.request(
            "stop_charging_request",
            {"chargePointId": CP, "transactionId": tx, "reason": "UserStop"},
        )
        assert reply["data"]["success"] is True
        await asyncio.wait_for(cp.remote_stops.get(), 10)
        await cp.stop_tx(tx, 900, reason="Remote")
        ended = await alice.push("transaction_update", where=stopped(tx))
        assert (ended["data"]["reason"], ended["data"]["appReason"]) == ("Remote", "UserStop")
        history = await alice.request("get_transactions")
        [record] = [t for t in history["data"]["transactions"] if t["transactionId"] == tx]
        assert (record["stopReason"], record["appStopReason"]) == ("Remote", "UserStop")


async def test_stopping_another_users_transaction_answers_like_a_missing_one(
    server: RunningServer,
) -> None:
    """Bob's stop of Alice's transaction, with the right, a wrong or no chargePointId, gets
    the very answer a missing id gets (code, message, details); the charge point hears nothing."""
    async with (
        app_client(server, server.token("alice", id_tag=TAG)) as alice,
        app_client(server, server.token("bob", id_tag="TAG-BOB")) as bob,
        connected_charge_point(server.ocpp_url, CP) as cp,
    ):
        await cp.status(1, "Available")
        tx = await start_charge(alice, cp, CP, 1, TAG)

        async def answer(transaction_id: int, cp_id: str | None) -> str:
            data: dict[str, Any] = {"transactionId": transaction_id}
            if cp_id is not None:
                data["chargePointId"] = cp_id
            reply = await bob.request("stop_charging_request", data)
            assert reply["data"]["success"] is False
            reply.pop("timestamp")
            reply.pop("id")
            return str(reply).replace(str(transaction_id), "N")

        missing = tx + 1000
        answers = {
            await answer(tx, CP),
            await answer(tx, "CP-ELSEWHERE"),
            await answer(tx, None),
            await answer(missing, CP),
            await answer(missing, None),
        }
        assert len(answers) == 1, answers
        assert "TRANSACTION_NOT_FOUND" in answers.pop()
        assert cp.remote_stops.empty()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_cli_closes_a_transaction_through_the_running_server(tmp_path: Path) -> None:
    """``charging-api transactions close ID --meter-stop WH`` beside a running server: the
    server closes it (owner told, connector free) and its log has the audit line."""
    async with ServerProcess(tmp_path) as proc:
        token = proc.token("alice", id_tag=TAG)
        async with (
            app_at(proc.app_url, token) as alice,
            connected_charge_point(proc.ocpp_url, CP) as cp,
        ):
            await cp.status(1, "Available")
            tx = await start_charge(alice, cp, CP, 1, TAG, meter_start=1000)
            env = cli_env(tmp_path, JWT_SECRET=proc.secret, DATABASE_URL=proc.env["DATABASE_URL"])
            child = await asyncio.create_subprocess_exec(
                str(CHARGING_API), "transactions", "close", str(tx), "--meter-stop", "2500",
                "--url", proc.app_url, env=env, cwd=tmp_path,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await asyncio.wait_for(child.communicate(), 60)
            assert child.returncode == 0, err.decode()
            assert "closed through the running server" in out.decode()
            ended = await alice.push("transaction_update", where=stopped(tx))
            assert (ended["data"]["meterStopWh"], ended["data"]["closedBy"]) == (2500, "Admin")
            await start_charge(alice, cp, CP, 1, TAG)
        line = await proc.wait_for_log("audit: admin cli:")
        assert f"transaction {tx} " in line


async def test_cli_closes_in_the_database_when_no_server_runs(tmp_path: Path) -> None:
    """With no server listening, the CLI closes the open transaction in the database by the
    same rules (last known reading), prints how, and logs the audit line; unknown ids exit 1."""
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    store = SqlStore(url)
    await store.start()
    opened, _ = await store.start_transaction(
        CP, 1, TAG, "alice", 700, datetime.now(UTC), IdTagStatus.ACCEPTED
    )
    tx = opened.id
    await store.close()
    nobody = f"ws://127.0.0.1:{free_port()}/ws"
    done = await asyncio.to_thread(
        run_cli, tmp_path, "transactions", "close", str(tx), "--url", nobody
    )
    assert done.returncode == 0, done.stderr
    assert "in the database" in done.stdout and "meterStop 700 Wh" in done.stdout
    assert "audit: admin cli:" in done.stderr
    assert stored(url, tx) == (700, "Other", "Admin", None, 1)
    unknown = await asyncio.to_thread(
        run_cli, tmp_path, "transactions", "close", "999", "--url", nobody
    )
    assert unknown.returncode == 1
    assert "TRANSACTION_NOT_FOUND" in unknown.stderr
