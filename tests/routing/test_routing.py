"""Routing across nodes: an api node's charge-point commands run on the gateway that owns the
charge point, on the real Redis and PostgreSQL, with real OCPP peers (the ``ocpp`` library).

Two gateways and one api node run in this process (``tests/routing/nodes.py``); the
multi-process cluster behind a load balancer is tested elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from ocpp.routing import on
from ocpp.v16 import call_result
from ocpp.v16.enums import Action

from charging_api.cluster import keys
from charging_api.cluster.listen import connect
from charging_api.domain.models import Principal, Role, TransactionQuery
from charging_api.errors import ChargePointOffline, ServiceUnavailable
from tests.peers.proxy import proxy_to
from tests.peers.py_charge_point import LibraryChargePoint, connected_charge_point
from tests.routing.nodes import (
    REDIS_URL,
    ApiNode,
    GatewayNode,
    api_node,
    fresh_database,
    gateway_node,
    owner_key,
    require_redis,
    unique,
)

WAIT = 15.0
ADMIN = Principal("ops", Role.ADMIN)


class ResettableChargePoint(LibraryChargePoint):
    """Answers Reset with ``reset_answer`` (with ``hang_reset`` set it never answers), and
    accepts ReserveNow and CancelReservation (recorded in ``reservations``)."""

    def __init__(self, cp_id: str, connection: Any) -> None:
        super().__init__(cp_id, connection)
        self.resets: asyncio.Queue[str] = asyncio.Queue()
        self.reset_answer = "Accepted"
        self.hang_reset = False
        self.reservations: asyncio.Queue[tuple[str, int]] = asyncio.Queue()

    @on(Action.reset)  # type: ignore[untyped-decorator]
    async def on_reset(self, type: str, **_: Any) -> Any:
        self.resets.put_nowait(type)
        if self.hang_reset:
            await asyncio.Event().wait()
        return call_result.Reset(status=self.reset_answer)

    @on(Action.reserve_now)  # type: ignore[untyped-decorator]
    async def on_reserve_now(self, reservation_id: int, **_: Any) -> Any:
        self.reservations.put_nowait(("ReserveNow", reservation_id))
        return call_result.ReserveNow(status="Accepted")

    @on(Action.cancel_reservation)  # type: ignore[untyped-decorator]
    async def on_cancel_reservation(self, reservation_id: int, **_: Any) -> Any:
        self.reservations.put_nowait(("CancelReservation", reservation_id))
        return call_result.CancelReservation(status="Accepted")


async def until(
    predicate: Callable[[], Awaitable[bool] | bool], what: str, limit: float = WAIT
) -> None:
    """Poll ``predicate`` until true, at most ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def owned_by(api: ApiNode, cp_id: str, gateway: GatewayNode) -> None:
    """Wait until the api node's mirror names ``gateway`` as the charge point's owner."""
    await until(lambda: api.mirror.owner(cp_id) == gateway.node_id, f"{cp_id} owned by gateway")


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[tuple[GatewayNode, GatewayNode, ApiNode]]:
    await require_redis()
    async with (
        fresh_database() as url,
        gateway_node(tmp_path / "a", url, ocpp_call_timeout=5, start_transaction_timeout=5) as a,
        gateway_node(tmp_path / "b", url, ocpp_call_timeout=5, start_transaction_timeout=5) as b,
        api_node(url, call_timeout=5, start_timeout=5) as api,
    ):
        yield a, b, api


def connect_cp(
    gateway: GatewayNode, cp_id: str, cls: type[LibraryChargePoint] = ResettableChargePoint
) -> Any:
    return connected_charge_point(gateway.ocpp_url, cp_id, cls=cls)


async def test_app_start_on_the_api_node_runs_on_the_owner_gateway(
    cluster: tuple[GatewayNode, GatewayNode, ApiNode],
) -> None:
    """A user on the api node starts a charge on a charge point connected to gateway B: the
    RemoteStart goes out from B, the start response comes back with the transaction id, the
    transaction is recorded once and is in B's live picture (not A's); the stop works too."""
    a, b, api = cluster
    cp_id = unique("CP")
    async with connect_cp(b, cp_id) as cp:
        await cp.status(1, "Available")
        await owned_by(api, cp_id, b)
        assert await owner_key(cp_id) == b.node_id
        async with api.app_client(api.token("alice", id_tag="ALICE-TAG")) as alice:
            asked = asyncio.create_task(
                alice.request("start_charging_request", {"chargePointId": cp_id, "connectorId": 1})
            )
            remote = await asyncio.wait_for(cp.remote_starts.get(), WAIT)
            assert remote == {"id_tag": "ALICE-TAG", "connector_id": 1}
            started = await cp.start_tx(1, "ALICE-TAG", 1000)
            reply = await asyncio.wait_for(asked, WAIT)
            assert reply["type"] == "start_charging_response", reply
            tx_id = reply["data"]["transactionId"]
            assert tx_id == started.transaction_id
            stored = await api.store.find_transactions(TransactionQuery(charge_point_id=cp_id))
            assert [tx.id for tx in stored] == [tx_id]
            assert stored[0].user_id == "alice"
            assert b.app.service.live_transactions_on(cp_id) == {1: tx_id}
            assert a.app.service.live_transactions_on(cp_id) == {}

            stopping = asyncio.create_task(
                alice.request("stop_charging_request", {"transactionId": tx_id})
            )
            assert await asyncio.wait_for(cp.remote_stops.get(), WAIT) == {"transaction_id": tx_id}
            stop_reply = await asyncio.wait_for(stopping, WAIT)
            assert stop_reply["data"]["success"] is True, stop_reply
            await cp.stop_tx(tx_id, 5000)
    closed = await api.store.get_transaction(tx_id)
    assert closed is not None and closed.meter_stop_wh == 5000


async def test_an_operator_reset_through_the_api_node_gets_the_charge_points_answer(
    cluster: tuple[GatewayNode, GatewayNode, ApiNode],
) -> None:
    """An admin's Reset on the api node reaches the charge point on gateway A and its answer
    comes back unchanged; the gateway's rules apply (TRANSACTION_RUNNING while a session runs,
    from A's live picture), and errors come back with their code and details."""
    a, _b, api = cluster
    cp_id = unique("CP")
    async with connect_cp(a, cp_id) as cp, api.app_client(api.token("ops", role="admin")) as ops:
        assert isinstance(cp, ResettableChargePoint)
        await owned_by(api, cp_id, a)
        cp.reset_answer = "Rejected"
        reply = await ops.request(
            "operation_request",
            {"chargePointId": cp_id, "action": "Reset", "payload": {"type": "Soft"}},
        )
        assert reply["data"]["response"] == {"status": "Rejected"}, reply
        assert await asyncio.wait_for(cp.resets.get(), WAIT) == "Soft"

        invalid = await ops.request(
            "operation_request",
            {"chargePointId": cp_id, "action": "Reset", "payload": {"type": "Sideways"}},
        )
        assert invalid["error"]["code"] == "INVALID_PAYLOAD", invalid
        assert "schemaError" in invalid["error"]["details"]

        await cp.start_tx(1, "SOME-TAG", 0)  # a session the charge point started itself
        running = await ops.request(
            "operation_request",
            {"chargePointId": cp_id, "action": "Reset", "payload": {"type": "Hard"}},
        )
        assert running["error"]["code"] == "TRANSACTION_RUNNING", running
        assert running["error"]["details"]["chargePointId"] == cp_id
    log = await api.operator.operations_log(ADMIN, charge_point_id=cp_id)
    assert [(r.action, r.error_code) for r in reversed(log)] == [
        ("Reset", None),
        ("Reset", "INVALID_PAYLOAD"),
        ("Reset", "TRANSACTION_RUNNING"),
    ]


async def test_unknown_and_offline_charge_points_answer_as_in_one_process(
    cluster: tuple[GatewayNode, GatewayNode, ApiNode],
) -> None:
    """No owner: the api node answers itself, as one process does (NOT_FOUND for an unknown
    charge point, OFFLINE for a known one, the operation logged); an admin still closes a
    session whose charge point is gone, and its stop then answers TRANSACTION_NOT_ACTIVE."""
    a, _b, api = cluster
    known = unique("CP")
    async with connect_cp(a, known) as cp:
        await owned_by(api, known, a)
        tx_id = (await cp.start_tx(1, "ALICE-TAG", 100)).transaction_id
    await until(lambda: not api.mirror.is_online(known), "release seen by the api node")
    async with (
        api.app_client(api.token("alice", id_tag="ALICE-TAG")) as alice,
        api.app_client(api.token("ops", role="admin")) as ops,
    ):
        for cp_id, code in (
            (unique("NOPE"), "CHARGE_POINT_NOT_FOUND"),
            (known, "CHARGE_POINT_OFFLINE"),
        ):
            reply = await alice.request(
                "start_charging_request", {"chargePointId": cp_id, "connectorId": 1}
            )
            assert reply["error"]["code"] == code, reply
            reply = await ops.request(
                "operation_request",
                {"chargePointId": cp_id, "action": "Reset", "payload": {"type": "Soft"}},
            )
            assert reply["error"]["code"] == code, reply
        stop = await ops.request("stop_charging_request", {"transactionId": tx_id})
        assert stop["error"]["code"] == "CHARGE_POINT_OFFLINE", stop
        closed = await ops.request("close_transaction_request", {"transactionId": tx_id})
        assert closed["data"]["transaction"]["transactionId"] == tx_id, closed
        again = await ops.request("stop_charging_request", {"transactionId": tx_id})
        assert again["error"]["code"] == "TRANSACTION_NOT_ACTIVE", again
    log = await api.operator.operations_log(ADMIN, charge_point_id=known)
    assert [(r.action, r.error_code) for r in log] == [("Reset", "CHARGE_POINT_OFFLINE")]


async def test_a_charge_point_that_disconnects_mid_command_fails_it_at_once(
    cluster: tuple[GatewayNode, GatewayNode, ApiNode],
) -> None:
    """The charge point never answers the Reset and drops its connection: the admin gets
    CHARGE_POINT_OFFLINE within a second or two, well before the 5 s call time-out."""
    _a, b, api = cluster
    cp_id = unique("CP")
    async with api.app_client(api.token("ops", role="admin")) as ops:
        async with connect_cp(b, cp_id) as cp:
            assert isinstance(cp, ResettableChargePoint)
            cp.hang_reset = True
            await owned_by(api, cp_id, b)
            asked = asyncio.create_task(
                ops.request(
                    "operation_request",
                    {"chargePointId": cp_id, "action": "Reset", "payload": {"type": "Soft"}},
                )
            )
            await asyncio.wait_for(cp.resets.get(), WAIT)
            dropped = time.monotonic()
        reply = await asyncio.wait_for(asked, WAIT)
        assert reply["error"]["code"] == "CHARGE_POINT_OFFLINE", reply
        assert time.monotonic() - dropped < 2.0


async def test_a_command_fails_offline_when_the_charge_point_moves_mid_command(
    cluster: tuple[GatewayNode, GatewayNode, ApiNode],
) -> None:
    """The charge point's old connection to B stays open but silent (a half-open socket);
    it connects to A, which takes ownership: the command waiting on B fails with
    CHARGE_POINT_OFFLINE as soon as the api node hears of the move. B closes the stale
    connection at its next refresh, and its release (compare-and-delete) leaves A's claim."""
    a, b, api = cluster
    cp_id = unique("CP")
    async with contextlib.AsyncExitStack() as on_a, contextlib.AsyncExitStack() as on_b:
        old = await on_b.enter_async_context(connect_cp(b, cp_id))
        assert isinstance(old, ResettableChargePoint)
        old.hang_reset = True
        await owned_by(api, cp_id, b)
        asked = asyncio.create_task(api.operator.execute(ADMIN, cp_id, "Reset", {"type": "Soft"}))
        await asyncio.wait_for(old.resets.get(), WAIT)
        await on_a.enter_async_context(connect_cp(a, cp_id))
        moved = time.monotonic()
        with pytest.raises(ChargePointOffline):
            await asyncio.wait_for(asked, WAIT)
        assert time.monotonic() - moved < 2.0
        await owned_by(api, cp_id, a)
        # B's next refresh finds A's claim and closes the stale connection itself.
        await until(
            lambda: not b.app.gateway.is_online(cp_id),
            "B closes its stale session",
            limit=b.owners.ttl / 3 + 2.0,
        )
        await b.owners.flush()
        assert await owner_key(cp_id) == a.node_id
        assert api.mirror.owner(cp_id) == a.node_id


async def test_an_owner_that_stops_answering_fails_the_command_by_its_deadline(
    tmp_path: Path,
) -> None:
    """The owner gateway still holds the charge point's key but executes nothing (hung or
    killed before its key expired): the command fails with CHARGE_POINT_OFFLINE at its
    deadline (call time-out + margin + grace), never later, and is not executed afterwards."""
    await require_redis()
    cp_id = unique("CP")
    async with (
        fresh_database() as url,
        gateway_node(tmp_path / "a", url, ocpp_call_timeout=1) as a,
        api_node(url, call_timeout=1) as api,
        connect_cp(a, cp_id) as cp,
    ):
        assert isinstance(cp, ResettableChargePoint)
        await owned_by(api, cp_id, a)
        await a.commands.close()
        began = time.monotonic()
        with pytest.raises(ChargePointOffline):
            await api.operator.execute(ADMIN, cp_id, "Reset", {"type": "Soft"})
        waited = time.monotonic() - began
        assert 3.0 <= waited < 5.0  # budget 1 + 2 s, grace 1 s
        await a.commands.start()  # it comes back: the stale command is dropped, not executed
        assert await api.operator.execute(ADMIN, cp_id, "Reset", {"type": "Hard"}) == {
            "status": "Accepted"
        }
        assert await asyncio.wait_for(cp.resets.get(), WAIT) == "Hard"
        assert cp.resets.empty()


async def test_a_retried_start_on_another_api_node_gets_the_first_outcome(
    tmp_path: Path,
) -> None:
    """The same start message sent again through another api node (the app reconnected
    through the load balancer) is answered with the first attempt's transaction: the
    idempotency key lives on the owner gateway. One RemoteStart, one transaction."""
    await require_redis()
    cp_id = unique("CP")
    async with (
        fresh_database() as url,
        gateway_node(tmp_path / "a", url) as a,
        api_node(url) as api1,
        api_node(url) as api2,
        connect_cp(a, cp_id) as cp,
    ):
        await owned_by(api1, cp_id, a)
        await owned_by(api2, cp_id, a)
        token = api1.token("alice", id_tag="ALICE-TAG")
        envelope = {
            "id": "start-1",
            "type": "start_charging_request",
            "timestamp": "2024-01-15T10:30:00.000Z",
            "data": {"chargePointId": cp_id, "connectorId": 1},
        }
        async with api1.app_client(token) as first:
            asked = asyncio.create_task(first.send_raw(orjson.dumps(envelope).decode(), "start-1"))
            await asyncio.wait_for(cp.remote_starts.get(), WAIT)
            tx_id = (await cp.start_tx(1, "ALICE-TAG", 0)).transaction_id
            assert (await asyncio.wait_for(asked, WAIT))["data"]["transactionId"] == tx_id
        async with api2.app_client(token) as second:
            again = await second.send_raw(orjson.dumps(envelope).decode(), "start-1")
        assert again["data"]["transactionId"] == tx_id, again
        assert cp.remote_starts.empty()
        txs = await api2.store.find_transactions(TransactionQuery(charge_point_id=cp_id))
        assert [tx.id for tx in txs] == [tx_id]


async def test_reservations_and_limits_live_on_the_owner_gateway(
    cluster: tuple[GatewayNode, GatewayNode, ApiNode],
) -> None:
    """A reservation made through the api node is held by the owner gateway B (its start
    rule refuses another user's start there), is cancelled through the api node again; a
    session's limits set through the api node are tracked on B."""
    a, b, api = cluster
    cp_id = unique("CP")
    async with (
        connect_cp(b, cp_id) as cp,
        api.app_client(api.token("alice", id_tag="ALICE-TAG")) as alice,
        api.app_client(api.token("bob", id_tag="BOB-TAG")) as bob,
    ):
        assert isinstance(cp, ResettableChargePoint)
        await cp.status(1, "Available")
        await owned_by(api, cp_id, b)
        reserved = await alice.request(
            "reserve_request", {"chargePointId": cp_id, "connectorId": 1, "expiryMinutes": 5}
        )
        assert reserved["data"]["success"] is True, reserved
        reservation_id = reserved["data"]["reservation"]["reservationId"]
        assert await asyncio.wait_for(cp.reservations.get(), WAIT) == (
            "ReserveNow",
            reservation_id,
        )
        held = b.app.reservations.on_connector(cp_id, 1)
        assert held is not None and held.id == reservation_id
        assert a.app.reservations.on_connector(cp_id, 1) is None
        # The api node holds no book; what it lists (REST GET /api/reservations) is the store's.
        admin = Principal("ops", Role.ADMIN)
        assert [r.id for r in await api.reservations.listed(admin)] == [reservation_id]
        assert await api.reservations.listed(Principal("bob", Role.USER)) == []

        refused = await bob.request(
            "start_charging_request", {"chargePointId": cp_id, "connectorId": 1}
        )
        assert refused["error"]["code"] == "CONNECTOR_RESERVED", refused

        cancelled = await alice.request(
            "cancel_reservation_request", {"reservationId": reservation_id}
        )
        assert cancelled["data"]["chargePointStatus"] == "Accepted", cancelled
        assert cancelled["data"]["reservation"]["status"] == "Cancelled"
        assert await asyncio.wait_for(cp.reservations.get(), WAIT) == (
            "CancelReservation",
            reservation_id,
        )
        assert b.app.reservations.on_connector(cp_id, 1) is None

        asked = asyncio.create_task(
            alice.request("start_charging_request", {"chargePointId": cp_id, "connectorId": 1})
        )
        await asyncio.wait_for(cp.remote_starts.get(), WAIT)
        tx_id = (await cp.start_tx(1, "ALICE-TAG", 0)).transaction_id
        assert (await asyncio.wait_for(asked, WAIT))["data"]["transactionId"] == tx_id
        limited = await alice.request(
            "set_limits_request", {"transactionId": tx_id, "limits": {"energyKWh": 7.5}}
        )
        assert limited["data"]["limits"] == {"energyKWh": 7.5}, limited
        others = await bob.request(
            "set_limits_request", {"transactionId": tx_id, "limits": {"energyKWh": 1}}
        )
        assert others["error"]["code"] == "TRANSACTION_NOT_FOUND", others


async def test_the_open_transaction_continues_on_the_gateway_the_charge_point_reconnects_to(
    tmp_path: Path,
) -> None:
    """Gateway B goes away while a session runs; the charge point reconnects to A, which
    adopts the open transaction from the database: meter values are filed under it, and the
    user stops it from the app through the api node."""
    await require_redis()
    cp_id = unique("CP")
    async with (
        fresh_database() as url,
        gateway_node(tmp_path / "a", url) as a,
        api_node(url) as api,
        api.app_client(api.token("alice", id_tag="ALICE-TAG")) as alice,
    ):
        async with gateway_node(tmp_path / "b", url) as b, connect_cp(b, cp_id) as cp:
            await owned_by(api, cp_id, b)
            asked = asyncio.create_task(
                alice.request("start_charging_request", {"chargePointId": cp_id, "connectorId": 1})
            )
            await asyncio.wait_for(cp.remote_starts.get(), WAIT)
            tx_id = (await cp.start_tx(1, "ALICE-TAG", 1000)).transaction_id
            assert (await asyncio.wait_for(asked, WAIT))["data"]["transactionId"] == tx_id
            assert a.app.service.live_transactions_on(cp_id) == {}
        # B is gone (its charge point connections closed). The charge point comes back on A.
        async with connect_cp(a, cp_id) as cp:
            await owned_by(api, cp_id, a)
            assert a.app.service.live_transactions_on(cp_id) == {1: tx_id}
            await cp.meter(
                1,
                tx_id,
                [{"value": "2.5", "measurand": "Energy.Active.Import.Register", "unit": "kWh"}],
            )
            await a.app.store.flush()
            samples = await a.app.store.meter_samples_of(tx_id)
            assert [s.sample.energy_import_kwh for s in samples] == [2.5]

            stopping = asyncio.create_task(
                alice.request("stop_charging_request", {"transactionId": tx_id})
            )
            assert await asyncio.wait_for(cp.remote_stops.get(), WAIT) == {"transaction_id": tx_id}
            assert (await asyncio.wait_for(stopping, WAIT))["data"]["success"] is True
            await cp.stop_tx(tx_id, 2600)
            assert a.app.service.live_transactions_on(cp_id) == {}
        closed = await api.store.get_transaction(tx_id)
        assert closed is not None and closed.meter_stop_wh == 2600 and not closed.active
        txs = await api.store.find_transactions(TransactionQuery(charge_point_id=cp_id))
        assert len(txs) == 1


async def test_a_command_past_its_deadline_is_not_executed(
    cluster: tuple[GatewayNode, GatewayNode, ApiNode],
) -> None:
    """A command that reaches the gateway after its deadline is dropped: the charge point
    never sees it; the next one is carried out."""
    a, _b, api = cluster
    cp_id = unique("CP")
    redis = connect(REDIS_URL)
    try:
        async with connect_cp(a, cp_id) as cp:
            assert isinstance(cp, ResettableChargePoint)
            await owned_by(api, cp_id, a)
            late = {
                "id": "late-1",
                "from": api.node_id,
                "kind": "call",
                "deadline": repr(time.time() - 1),
                "body": orjson.dumps(
                    {"chargePointId": cp_id, "action": "Reset", "payload": {"type": "Hard"}}
                ),
            }
            await redis.xadd(keys.commands(a.node_id), late)  # type: ignore[arg-type]
            answer = await api.operator.execute(ADMIN, cp_id, "Reset", {"type": "Soft"})
            assert answer == {"status": "Accepted"}
            assert await asyncio.wait_for(cp.resets.get(), WAIT) == "Soft"
            assert cp.resets.empty()
            assert a.commands.expired == 1
    finally:
        await redis.aclose()


async def test_redis_out_of_reach_is_service_unavailable_and_the_node_recovers(
    tmp_path: Path,
) -> None:
    """The api node's Redis connection goes through a proxy that then goes silent: a start
    fails with SERVICE_UNAVAILABLE (retryable) within the client's time-outs, nothing hangs;
    once Redis is reachable again the same request works, without restarting anything."""
    await require_redis()
    cp_id = unique("CP")
    async with (
        fresh_database() as url,
        gateway_node(tmp_path / "a", url) as a,
        proxy_to("127.0.0.1", 6379) as proxy,
        api_node(url, redis_url=proxy.url("redis", "/13")) as api,
        connect_cp(a, cp_id) as cp,
    ):
        assert isinstance(cp, ResettableChargePoint)
        await owned_by(api, cp_id, a)
        proxy.stall()
        proxy.cut()
        began = time.monotonic()
        with pytest.raises(ServiceUnavailable) as refused:
            await api.operator.execute(ADMIN, cp_id, "Reset", {"type": "Soft"})
        assert refused.value.details["retryable"] is True
        assert time.monotonic() - began < 12.0
        assert cp.resets.empty()
        proxy.resume()
        # The user retries, as the retryable code says; the node reconnects by itself.
        deadline = time.monotonic() + WAIT
        while True:
            try:
                answer = await api.operator.execute(ADMIN, cp_id, "Reset", {"type": "Soft"})
                break
            except ServiceUnavailable:
                assert time.monotonic() < deadline, "the api node did not reconnect to Redis"
                await asyncio.sleep(0.2)
        assert answer == {"status": "Accepted"}
        assert await asyncio.wait_for(cp.resets.get(), WAIT) == "Soft"
        assert cp.resets.empty()


async def test_a_gateway_that_shuts_down_fails_its_commands_under_way_at_once(
    cluster: tuple[GatewayNode, GatewayNode, ApiNode],
) -> None:
    """A start waits on gateway A for its StartTransaction when A's command server closes:
    the user gets CHARGE_POINT_OFFLINE then, not at the end of the start time-out."""
    a, _b, api = cluster
    cp_id = unique("CP")
    async with (
        connect_cp(a, cp_id) as cp,
        api.app_client(api.token("alice", id_tag="ALICE-TAG")) as alice,
    ):
        await owned_by(api, cp_id, a)
        asked = asyncio.create_task(
            alice.request("start_charging_request", {"chargePointId": cp_id, "connectorId": 1})
        )
        await asyncio.wait_for(cp.remote_starts.get(), WAIT)
        closing = time.monotonic()
        await a.commands.close()
        reply = await asyncio.wait_for(asked, WAIT)
        assert reply["error"]["code"] == "CHARGE_POINT_OFFLINE", reply
        assert time.monotonic() - closing < 2.0


async def test_a_lost_owner_key_is_claimed_again_while_the_charge_point_stays(
    cluster: tuple[GatewayNode, GatewayNode, ApiNode],
) -> None:
    """Redis lost the key (a restart without persistence): the owner's next refresh, within
    a third of the TTL, makes it again and tells the api nodes."""
    a, _b, api = cluster
    cp_id = unique("CP")
    redis = connect(REDIS_URL)
    try:
        async with connect_cp(a, cp_id):
            await owned_by(api, cp_id, a)
            await redis.delete(keys.owner(cp_id))
            await api.mirror.refresh()
            assert not api.mirror.is_online(cp_id)
            began = time.monotonic()
            await owned_by(api, cp_id, a)
            assert time.monotonic() - began <= a.owners.ttl / 3 + 1.0
            assert await owner_key(cp_id) == a.node_id
    finally:
        await redis.aclose()
