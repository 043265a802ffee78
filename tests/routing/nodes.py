"""Cluster nodes in one test process, on the real Redis and a fresh PostgreSQL database.

A *gateway* is the whole one-process ``Application`` (OCPP door + core on PostgreSQL) with the
routing parts attached as the composition root attaches them for ``ROLE=gateway``: an
``OwnerRegistry`` on the gateway's online/offline hooks and a ``CommandServer`` running
:func:`~charging_api.cluster.routing.gateway_handlers` of its core objects. An *api* node is
the app door over the routed services and a ``RemoteGateway`` (no OCPP door, no core timers,
no live picture), as ``ROLE=api`` builds it.

Redis: db 13 of the machine's server (``ROUTING_REDIS_URL`` overrides); every node id and
charge point id is unique per test, so tests never see each other's keys (pub/sub notices of
other tests are ignored by id). Nothing is flushed.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import websockets
from redis import asyncio as aioredis

from charging_api.api.auth import TokenVerifier, issue_token
from charging_api.api.handlers import OperatorState
from charging_api.api.hub import UpdateHub
from charging_api.api.server import AppServer
from charging_api.api.session import AppLimits
from charging_api.app import Application
from charging_api.bus.memory import MemoryBus
from charging_api.cluster.commands import CommandClient, CommandServer
from charging_api.cluster.listen import connect
from charging_api.cluster.owners import OwnerMirror, OwnerRegistry
from charging_api.cluster.routing import (
    ApiRouting,
    Budgets,
    GatewayRouting,
    RoutedChargingService,
    RoutedOperatorService,
    RoutedReservationBook,
    RoutedSessionService,
    gateway_handlers,
)
from charging_api.domain.charging import ChargingPolicy, SystemClock
from charging_api.domain.local_list import LocalListSync
from charging_api.domain.profiles import ChargingProfiles
from charging_api.storage.sql import SqlStore
from tests.conftest import SECRET, AppClient, make_settings
from tests.external import missing

REDIS_URL = os.environ.get("ROUTING_REDIS_URL", "redis://127.0.0.1:6379/13")
PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@contextlib.asynccontextmanager
async def fresh_database() -> AsyncIterator[str]:
    """A new PostgreSQL database for the whole test (every node opens it); dropped after."""
    name = f"routing_{uuid.uuid4().hex[:12]}"
    try:
        conn = await asyncpg.connect(PG_DSN)
    except (OSError, asyncpg.PostgresError) as exc:
        missing(
            f"PostgreSQL at {PG_DSN} ({exc})",
            "run PostgreSQL on 127.0.0.1:5432 with user postgres and trust auth (.ci/run)",
        )
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        conn = await asyncpg.connect(PG_DSN)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


async def require_redis() -> None:
    client = connect(REDIS_URL)
    try:
        await client.ping()  # type: ignore[misc]
    except Exception as exc:
        missing(f"Redis at {REDIS_URL} ({exc})", "run redis-server on 127.0.0.1:6379 (.ci/run)")
    finally:
        await client.aclose()


@dataclass
class GatewayNode:
    node_id: str
    app: Application
    routing: GatewayRouting
    ocpp_url: str

    @property
    def owners(self) -> OwnerRegistry:
        return self.routing.owners

    @property
    def commands(self) -> CommandServer:
        return self.routing.commands


@contextlib.asynccontextmanager
async def gateway_node(
    tmp_path: Path, database_url: str, *, owner_ttl: float = 6.0, **overrides: Any
) -> AsyncIterator[GatewayNode]:
    node_id = unique("gw")
    settings = make_settings(tmp_path, database_url=database_url, **overrides)
    app = Application(settings)
    # What ROLE=gateway sets (ChargingPolicy(adopt_on_connect=True)); Application is ROLE=all.
    app.service.policy = replace(app.service.policy, adopt_on_connect=True)
    routing = GatewayRouting(
        REDIS_URL,
        node_id,
        owner_ttl,
        app.gateway,
        gateway_handlers(app.gateway, app.service, app.operator, app.reservations, app.sessions),
    )
    await routing.start()
    ports = await app.start()
    try:
        yield GatewayNode(node_id, app, routing, f"ws://127.0.0.1:{ports.ocpp}/ocpp")
    finally:
        await app.stop()  # charge points disconnect: their releases are queued
        await routing.close()


@dataclass
class ApiNode:
    node_id: str
    store: SqlStore
    client: CommandClient
    mirror: OwnerMirror
    service: RoutedChargingService
    operator: RoutedOperatorService
    reservations: RoutedReservationBook
    sessions: RoutedSessionService
    app_url: str

    def token(self, user: str, *, id_tag: str | None = None, role: str | None = None) -> str:
        return issue_token(SECRET, user, expires_in=600, id_tag=id_tag, role=role)

    @contextlib.asynccontextmanager
    async def app_client(self, token: str) -> AsyncIterator[AppClient]:
        client = AppClient(await websockets.connect(self.app_url))
        try:
            reply = await client.request("auth_request", {"token": token})
            assert reply["data"]["success"] is True, reply
            yield client
        finally:
            await client.close()


@contextlib.asynccontextmanager
async def api_node(
    database_url: str,
    *,
    redis_url: str = REDIS_URL,
    call_timeout: float = 5.0,
    start_timeout: float = 5.0,
    mirror_refresh: float = 2.0,
) -> AsyncIterator[ApiNode]:
    node_id = unique("api")
    store = SqlStore(database_url)
    bus = MemoryBus()
    routing = ApiRouting(
        redis_url, node_id, Budgets(call_timeout, start_timeout, margin=2.0), mirror_refresh
    )
    remote, routed = routing.gateway, routing.routed
    clock = SystemClock()
    service = RoutedChargingService(
        store, remote, bus, policy=ChargingPolicy(start_transaction_timeout=start_timeout), **routed
    )
    reservations = RoutedReservationBook(store, store, remote, bus, clock, **routed)
    service.add_start_rule(reservations)
    profiles = ChargingProfiles(store, store, remote, clock)
    local_list = LocalListSync(store, remote, clock)
    operator = RoutedOperatorService(store, remote, service, **routed)
    sessions = RoutedSessionService(store, remote, bus, clock, **routed)
    service.sessions = sessions
    app_server = AppServer(
        service,
        TokenVerifier(SECRET),
        UpdateHub(),
        AppLimits(),
        operator=operator,
        ops=OperatorState(reservations, profiles, local_list),
        sessions=sessions,
    )
    await store.start()
    await routing.start()
    port = await app_server.start("127.0.0.1", 0)
    try:
        yield ApiNode(
            node_id,
            store,
            routing.client,
            routing.mirror,
            service,
            operator,
            reservations,
            sessions,
            f"ws://127.0.0.1:{port}/ws",
        )
    finally:
        await app_server.shutdown()
        await routing.close()
        await store.close()


async def owner_key(charge_point_id: str) -> str | None:
    from charging_api.cluster import keys

    redis: aioredis.Redis = connect(REDIS_URL)
    try:
        value = await redis.get(keys.owner(charge_point_id))
        return None if value is None else str(value)
    finally:
        await redis.aclose()
