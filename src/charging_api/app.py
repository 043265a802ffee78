"""Composition root: builds storage, bus, core and both doors from Settings and runs them.

The only module that knows every concrete adapter. ``serve`` runs until SIGTERM/SIGINT and then
drains: stop accepting, tell app clients and close them with 1001, close charge point sockets
so they reconnect (to another node if there is one), flush storage, return.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import gc
import getpass
import itertools
import logging
import os
import signal
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
import websockets

from charging_api import __version__
from charging_api.api.asyncapi import asyncapi_document
from charging_api.api.auth import TokenVerifier, issue_token, read_key_file
from charging_api.api.handlers import OperatorState
from charging_api.api.hub import Hub, UpdateHub
from charging_api.api.protocol import transaction_to_wire
from charging_api.api.server import AppLimits, AppServer
from charging_api.bus.memory import MemoryBus
from charging_api.config import NodeRole, Settings
from charging_api.domain import access, operator_rules
from charging_api.domain.charging import ChargingPolicy, ChargingService, SystemClock
from charging_api.domain.local_list import LocalListSync
from charging_api.domain.models import IdTag, IdTagStatus, Principal, Role
from charging_api.domain.operations import OperatorService
from charging_api.domain.ports import ChargerGateway
from charging_api.domain.profiles import ChargingProfiles
from charging_api.domain.reservations import ReservationBook
from charging_api.domain.sessions import SessionPolicy, SessionService
from charging_api.domain.webhooks import WebhookService
from charging_api.errors import ChargePointOffline, ChargingApiError
from charging_api.http.metrics import Counts, Metrics
from charging_api.http.rest import RestConfig, RestDependencies, build_rest_app
from charging_api.http.routes import HttpConfig, HttpRoutes
from charging_api.http.serving import HttpServer
from charging_api.http.webhook_client import HttpPoster
from charging_api.ocpp.gateway import OcppGateway
from charging_api.ocpp.server import OcppServer
from charging_api.storage.schema import MigrationRefused as MigrationRefused
from charging_api.storage.schema import SchemaNotCurrent as SchemaNotCurrent
from charging_api.storage.schema import SchemaState as SchemaState
from charging_api.storage.sql import SqlStore
from charging_api.storage.sql import StorageUnavailable as StorageUnavailable

if TYPE_CHECKING:  # the one-process default never imports Redis (cluster/ imports it)
    from charging_api.cluster.fanout import PushPublisher
    from charging_api.cluster.nodes import NodeHeartbeat
    from charging_api.cluster.routing import ApiRouting, GatewayRouting

log = logging.getLogger(__name__)


class StartupError(Exception):
    """The service cannot start as configured; the message is one line naming the setting."""


async def _listen(
    host_key: str, port_key: str, host: str, port: int, opened: Awaitable[int]
) -> int:
    """Await a door's ``start``; a port it cannot bind becomes a :class:`StartupError`."""
    try:
        return await opened
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(
                f"{port_key}={port}: the port is already in use on {host}; stop what holds it "
                f"or set {port_key} to a free port"
            ) from None
        reason = exc.strerror or str(exc)
        raise StartupError(
            f"{host_key}={host} {port_key}={port}: cannot listen there ({reason}); "
            f"check {host_key} and {port_key}"
        ) from None


async def _reach_redis(started: Awaitable[None]) -> None:
    """A cluster part's ``start``; a Redis that does not answer becomes one line."""
    try:
        await started
    except Exception as exc:  # redis' own errors, or OSError: the cluster's Redis is not there
        if isinstance(exc, OSError) or type(exc).__module__.startswith("redis"):
            raise StartupError(
                f"REDIS_URL: Redis does not answer ({exc}); start it or fix REDIS_URL"
            ) from None
        raise


@dataclass(frozen=True, slots=True)
class BoundPorts:
    app: int
    ocpp: int


def _tls(cert: Any, key: Any) -> ssl.SSLContext | None:
    if not cert:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert), str(key) if key else None)
    return context


class Application:
    """Everything one ``charging-api serve`` process runs."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        #: ``all`` opens both doors; ``gateway`` only the OCPP door (its port also answers
        #: /health, /metrics and /api/stats); ``api`` only the app door (docs/scaling.md).
        self.role = settings.role
        self.runs_ocpp = self.role is not NodeRole.API
        self.runs_app = self.role is not NodeRole.GATEWAY
        self.node_id = settings.node_id or f"{socket.gethostname()}-{os.getpid()}"
        self.store = SqlStore(settings.database_url)
        self.bus = MemoryBus()
        self.gateway = OcppGateway(call_timeout=settings.ocpp_call_timeout)
        # What the core talks to charge points through: the OCPP door here, or, on an api node,
        # the gateway that owns the charge point (over Redis). On an api node the commands that
        # need the live picture (start, stop, close, operations, reservations, limits) run whole
        # on that gateway (docs/scaling.md, "Routing").
        self.charger: ChargerGateway = self.gateway
        self.api_routing: ApiRouting | None = None
        self.gateway_routing: GatewayRouting | None = None
        charging_cls: type[ChargingService] = ChargingService
        reservations_cls: type[ReservationBook] = ReservationBook
        operator_cls: type[OperatorService] = OperatorService
        sessions_cls: type[SessionService] = SessionService
        routed: dict[str, Any] = {}
        if self.role is NodeRole.API:
            from charging_api.cluster import routing

            assert settings.redis_url is not None  # Settings refuses a role without it
            self.api_routing = routing.ApiRouting(
                settings.redis_url,
                self.node_id,
                routing.Budgets(settings.ocpp_call_timeout, settings.start_transaction_timeout),
                mirror_refresh=max(1.0, settings.owner_ttl / 3),
            )
            self.charger = self.api_routing.gateway
            routed = dict(self.api_routing.routed)
            charging_cls = routing.RoutedChargingService
            reservations_cls = routing.RoutedReservationBook
            operator_cls = routing.RoutedOperatorService
            sessions_cls = routing.RoutedSessionService
        self.service = charging_cls(
            self.store,
            self.charger,
            self.bus,
            **routed,
            policy=ChargingPolicy(
                # A gateway may get a charge point whose transactions another node opened.
                adopt_on_connect=self.role is NodeRole.GATEWAY,
                start_transaction_timeout=settings.start_transaction_timeout,
                stale_transaction_grace=settings.stale_transaction_grace,
                meter_live_window=settings.meter_live_window,
                heartbeat_interval_s=settings.ocpp_heartbeat_interval,
                accept_unknown_charge_points=not settings.production,
                data_transfer_vendors=frozenset(settings.data_transfer_vendors),
            ),
        )
        # Operator state: reservations (a start rule and a timer source of the core),
        # charging profiles (cleared when their session ends: a bus subscriber), local lists.
        clock = self.service.clock
        self.reservations = reservations_cls(
            self.store,
            self.store,
            self.charger,
            self.bus,
            clock,
            max_minutes=settings.max_reservation_minutes,
            **routed,
        )
        self.reservations.wake = self.service.wake_timers
        self.service.add_start_rule(self.reservations)
        self.service.add_timer_source(self.reservations)
        self.profiles = ChargingProfiles(self.store, self.store, self.charger, clock)
        self.local_list = LocalListSync(self.store, self.charger, clock)
        self.operator = operator_cls(self.store, self.charger, self.service, **routed)
        operator_rules.install(self.operator, self.reservations, self.profiles, self.local_list)
        self.sessions = sessions_cls(
            self.store,
            self.charger,
            self.bus,
            SystemClock(),
            SessionPolicy(
                update_interval=settings.session_update_interval,
                preparing_threshold=settings.preparing_threshold,
                energy_taper_fraction=settings.energy_limit_taper_percent / 100,
                energy_taper_power=settings.energy_limit_taper_power_percent / 100,
            ),
            **routed,
        )
        self.sessions.reduce_power = self.profiles.reduce_session_power
        self.service.sessions = self.sessions
        self.webhooks = WebhookService(self.store, HttpPoster(), SystemClock())
        if self.role is NodeRole.GATEWAY:
            from charging_api.cluster import routing

            assert settings.redis_url is not None
            # Claims the charge points connected here (gateway.on_online/on_offline) and runs
            # the commands api nodes send them.
            self.gateway_routing = routing.GatewayRouting(
                settings.redis_url,
                self.node_id,
                settings.owner_ttl,
                self.gateway,
                routing.gateway_handlers(
                    self.gateway, self.service, self.operator, self.reservations, self.sessions
                ),
            )
        self.verifier = TokenVerifier(
            settings.jwt_secret,
            settings.jwt_algorithm,
            settings.jwt_issuer,
            settings.jwt_audience,
            settings.jwt_leeway,
            public_key=read_key_file(settings.jwt_public_key_file),
            jwks=read_key_file(settings.jwt_jwks_file),
        )
        # Pushes: numbered here in one process; on a cluster numbered once in Redis where the
        # event happens (every node's publisher follows its bus) and delivered by the api
        # nodes' ClusterHub from Redis (docs/scaling.md, "Fan-out").
        self.hub: Hub
        self.push_publisher: PushPublisher | None = None
        if self.role is NodeRole.ALL:
            self.hub = UpdateHub(history_size=settings.history_size)
        else:
            from charging_api.cluster.fanout import ClusterHub
            from charging_api.cluster.fanout import PushPublisher as Publisher

            assert settings.redis_url is not None  # Settings refuses a role without it
            self.push_publisher = Publisher(settings.redis_url, history_size=settings.history_size)
            self.push_publisher.follow(self.bus)
            if self.role is NodeRole.API:
                self.hub = ClusterHub(settings.redis_url, self.node_id)
            else:  # a gateway serves no app connection: its hub stays empty
                self.hub = UpdateHub(history_size=settings.history_size)
        origins = tuple(settings.frontend_url)
        self.app_server = AppServer(
            self.service,
            self.verifier,
            self.hub,
            AppLimits(
                max_connections=settings.max_connections,
                max_frame_size=settings.max_frame_size,
                auth_timeout=settings.auth_timeout,
                idle_timeout=settings.connection_timeout,
                session_timeout=settings.session_timeout,
                heartbeat_interval=settings.heartbeat_interval,
                send_queue_size=settings.send_queue_size,
                max_pending_requests=settings.max_pending_requests,
                allowed_origins=origins,
                max_connections_per_user=settings.max_connections_per_user,
                rate_per_second=settings.rate_limit_per_second,
                rate_burst=settings.rate_limit_burst,
                expiry_warning=settings.token_expiry_warning,
                expiry_grace=settings.token_expiry_grace,
                open_timeout=settings.ws_open_timeout,
            ),
            http_handler=None,
            debug=settings.debug_websocket,
            operator=self.operator,
            ops=OperatorState(self.reservations, self.profiles, self.local_list),
            sessions=self.sessions,
            webhooks=self.webhooks,
        )
        # /metrics: histograms observed through hooks, counts read from the parts at scrape.
        self.metrics = Metrics(self._metric_counts)
        self.app_server.on_command_latency = self.metrics.observe_command
        self.gateway.on_call_latency = self.metrics.observe_ocpp_call
        self.hub.on_delivery_lag = self.metrics.observe_delivery_lag
        self.store.on_batch = self.metrics.observe_batch
        # A cluster node: heartbeats in Redis (the cluster view of /api/stats and the Redis
        # and database checks of /health).
        self.heartbeat: NodeHeartbeat | None = None
        if self.role is not NodeRole.ALL:
            from charging_api.cluster import nodes

            assert settings.redis_url is not None  # Settings refuses a role without REDIS_URL
            self.redis = nodes.connect(settings.redis_url, settings.node_heartbeat_interval)
            self.heartbeat = nodes.NodeHeartbeat(
                self.redis,
                self.node_id,
                self.role.value,
                self._node_counts,
                settings.node_heartbeat_interval,
                probe_database=self._probe_database,
            )
        self.routes = HttpRoutes(
            HttpConfig(__version__, origins, settings.stats_api_key),
            self._websocket_stats,
            self._system_stats,
            self.verifier.verify,
            self.store.failure,
            self.metrics.exposition,
            node_health=self.heartbeat.health if self.heartbeat is not None else None,
        )
        self.app_server.set_http_handler(self.routes)
        self.ocpp_server = OcppServer(
            self.service,
            self.gateway,
            max_frame_size=settings.ocpp_max_frame_size,
            ping_interval=settings.ocpp_ping_interval or None,
            rate_limit=settings.ocpp_rate_limit,
            open_timeout=settings.ocpp_open_timeout,
            # /health, /metrics and /api/stats on the OCPP port too, so a load balancer checks
            # each door on the port it serves (a gateway has no app port).
            http_routes=self.routes,
        )
        self.rest = build_rest_app(
            RestConfig(__version__, origins, settings.stats_api_key),
            RestDependencies(
                store=self.store,
                service=self.service,
                is_online=self.charger.is_online,
                verify_bearer=self.verifier.verify,
                asyncapi=asyncapi_document(__version__),
                plain_routes=self.routes,
                operator=self.operator,
                reservations=self.reservations,
                profiles=self.profiles,
                sessions=self.sessions,
                webhooks=self.webhooks,
            ),
        )
        self.http_server = HttpServer(self.rest)
        self.app_server.set_http_protocol(self.http_server.protocol)
        self._unsubscribe = (
            self.bus.subscribe(self.hub.on_event)
            if isinstance(self.hub, UpdateHub) and self.role is NodeRole.ALL
            else lambda: None
        )
        self._unsubscribe_profiles = self.bus.subscribe(self.profiles.on_event)
        self._unsubscribe_operator = self.bus.subscribe(self.operator.on_event)
        self._timers: asyncio.Task[None] | None = None
        self._serving = False
        self._unsubscribe_sessions = self.bus.subscribe(self.sessions.on_event)
        self._unsubscribe_webhooks = self.bus.subscribe(self.webhooks.on_event)
        self._webhook_loop: asyncio.Task[None] | None = None
        self._session_ticks: asyncio.Task[None] | None = None

    def _node_counts(self) -> dict[str, int]:
        return {
            "appConnections": len(self.app_server.sessions),
            "chargePoints": self.gateway.online_count() if self.runs_ocpp else 0,
        }

    async def _probe_database(self) -> None:
        await self.store.count_charge_points()

    def _websocket_stats(self) -> dict[str, int]:
        stats = self.app_server.stats()
        stats["gatewayConnections"] = self.charger.online_count()
        return stats

    def _metric_counts(self) -> Counts:
        return Counts(
            app_connections=len(self.app_server.sessions),
            ocpp_connections=self.gateway.online_count(),
            app_requests=dict(self.app_server.requests_by_type),
            app_pushes=dict(self.hub.pushes_by_type),
            app_errors=dict(self.app_server.errors_by_code),
            ocpp_calls_in=dict(self.ocpp_server.calls_in),
            ocpp_calls_out=dict(self.gateway.calls_out),
            ocpp_errors_sent=dict(self.ocpp_server.call_errors_sent),
            ocpp_errors_received=dict(self.gateway.call_errors_received),
            bus_published=self.bus.published,
            cluster=self._cluster_counts(),
        )

    def _cluster_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        if self.push_publisher is not None:
            counts["events_published"] = self.push_publisher.published
            counts["pushes_numbered"] = self.push_publisher.pushes
            counts["events_dropped"] = self.push_publisher.dropped
            counts["redis_round_trips"] = self.push_publisher.round_trips
        if self.heartbeat is not None:
            counts["heartbeats_failed"] = self.heartbeat.failed_beats
        return counts

    def _system_stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = {
            "ocpp": {
                "connectedChargePoints": self.charger.online_count(),
                "activeTransactions": self.service.live_transaction_count(),
            },
            "bus": {"published": self.bus.published},
        }
        if self.heartbeat is not None:
            seen = self.heartbeat.nodes()
            stats["cluster"] = {
                "nodeId": self.node_id,
                "role": self.role.value,
                "nodes": [node.to_json() for node in seen],
                "appConnections": sum(n.counts.get("appConnections", 0) for n in seen),
                "chargePoints": sum(n.counts.get("chargePoints", 0) for n in seen),
            }
        return stats

    async def start(self) -> BoundPorts:
        await self.store.start()
        await self.bus.start()
        if self.push_publisher is not None:
            await _reach_redis(self.push_publisher.start())
        await _reach_redis(self.hub.start())
        if self.api_routing is not None:
            await _reach_redis(self.api_routing.start())
        if self.gateway_routing is not None:
            await _reach_redis(self.gateway_routing.start())
        await self.service.load()
        await self.reservations.load()
        await self.profiles.load()
        await self.sessions.load()
        await self.webhooks.load()
        if self.runs_ocpp:
            # The core's clocks run where the charge points are: an api node's core objects
            # only answer the app door's reads (docs/scaling.md).
            self._webhook_loop = asyncio.create_task(self.webhooks.run(), name="webhooks")
            self._timers = asyncio.create_task(self.service.run_timers(), name="core timers")
            self._session_ticks = asyncio.create_task(self.sessions.run(), name="session ticks")
        s = self.settings
        ocpp_port = app_port = 0
        if self.runs_ocpp:
            ocpp_port = await _listen(
                "OCPP_HOST",
                "OCPP_PORT",
                s.ocpp_host,
                s.ocpp_port,
                self.ocpp_server.start(
                    s.ocpp_host, s.ocpp_port, _tls(s.ocpp_tls_cert, s.ocpp_tls_key)
                ),
            )
        if self.runs_app:
            app_port = await _listen(
                "WS_API_HOST",
                "WS_API_PORT",
                s.ws_api_host,
                s.ws_api_port,
                self.app_server.start(
                    s.ws_api_host, s.ws_api_port, _tls(s.ws_api_tls_cert, s.ws_api_tls_key)
                ),
            )
        if self.heartbeat is not None:
            await self.heartbeat.start()
        if self.role is NodeRole.ALL:
            log.info(
                "serving app API on %s:%d (/ws, /health, /api/stats, /metrics, /api/...) and OCPP 1.6-J on %s:%d (/ocpp/{id})",
                s.ws_api_host,
                app_port,
                s.ocpp_host,
                ocpp_port,
            )
        elif self.role is NodeRole.GATEWAY:
            log.info(
                "serving OCPP 1.6-J on %s:%d (/ocpp/{id}, /health, /api/stats, /metrics) as gateway node %s",
                s.ocpp_host,
                ocpp_port,
                self.node_id,
            )
        else:
            log.info(
                "serving app API on %s:%d (/ws, /health, /api/stats, /metrics, /api/...) as api node %s",
                s.ws_api_host,
                app_port,
                self.node_id,
            )
        self._serving = True
        return BoundPorts(app_port, ocpp_port)

    async def stop(self) -> None:
        if self.heartbeat is not None:
            await self.heartbeat.close()  # leave /api/stats at once, not three beats later
        await self.app_server.shutdown()
        await self.http_server.shutdown()
        await self.hub.close()
        await self.ocpp_server.shutdown()
        if self.gateway_routing is not None:
            await self.gateway_routing.close()  # releases written, running commands answered
        if self.api_routing is not None:
            await self.api_routing.close()
        for task in (self._timers, self._session_ticks, self._webhook_loop):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._unsubscribe()
        self._unsubscribe_profiles()
        await self.profiles.close()
        self._unsubscribe_operator()
        await self.operator.close()
        self._unsubscribe_sessions()
        self._unsubscribe_webhooks()
        await self.sessions.drain()  # receipts under way are stored before the store closes
        if self.push_publisher is not None:
            await self.push_publisher.close()  # what is queued goes out (bounded)
        await self.bus.close()
        await self.store.close()
        if self.heartbeat is not None:
            await self.redis.aclose()
        if self._serving:  # a start-up that failed says why in one line, not "stopped"
            log.info("stopped")


async def serve(settings: Settings, ready: asyncio.Event | None = None) -> None:
    """Run until SIGTERM or SIGINT, then drain and return."""
    application = Application(settings)
    stop = _stop_on_signals()
    try:
        await application.start()
    except BaseException:
        await application.stop()  # whatever did open (storage threads, a door) closes again
        raise
    _tune_garbage_collector()
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
        log.info("shutting down")
    finally:
        await application.stop()


def _tune_garbage_collector() -> None:
    """Keep the cyclic collector from pausing the event loop for tens of milliseconds.

    What start-up allocated (modules, schemas, compiled statements) lives as long as the
    process: frozen, no collection walks it again. Then a young generation of 50,000
    allocations instead of the default 700: at thousands of messages a second the default
    collects the young generation many times a second, so objects that live a fraction of a
    second (buffered meter samples, in-flight messages) are promoted and then walked by full
    collections, which take a long time with thousands of connections and are the tail of
    push latency. Trade-off: garbage in reference cycles waits a little longer to be freed;
    everything else is freed by reference counting as before.
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 10)


@contextlib.asynccontextmanager
async def _opened_store(settings: Settings) -> AsyncIterator[SqlStore]:
    """The store for one CLI command (the server need not run)."""
    store = SqlStore(settings.database_url, log_failures=False)
    await store.start()
    try:
        yield store
    except Exception as exc:
        unavailable = store.unavailable(exc)  # one line for the CLI, not a traceback
        if unavailable is None:
            raise
        raise unavailable from exc
    finally:
        await store.close()


async def upgrade_database(settings: Settings) -> tuple[SchemaState, SchemaState]:
    """``charging-api db upgrade``: DATABASE_URL's schema brought to head (an empty database
    created at head), in one transaction; (before, after). Raises :class:`MigrationRefused`
    when a revision cannot apply to the data as it is, :class:`SchemaNotCurrent` when the
    database is ahead of this version, :class:`StorageUnavailable` when it cannot be used."""
    store = SqlStore(settings.database_url, log_failures=False)
    try:
        return await store.upgrade_schema()
    finally:
        await store.close()


async def database_revision(settings: Settings) -> SchemaState:
    """``charging-api db current``: where DATABASE_URL's schema stands (changes nothing)."""
    store = SqlStore(settings.database_url, log_failures=False)
    try:
        return await store.schema_state()
    finally:
        await store.close()


class TariffCommandFailed(ValueError):
    """``charging-api tariffs``: the tariff or the scope was refused (the message says why)."""


async def manage_tariffs(
    settings: Settings, action: str, args: argparse.Namespace, text: str | None
) -> str:
    """``charging-api tariffs list|put|delete|assign``, straight on the database (tariffs
    are read when each transaction starts, so a running server uses them from its next
    session); prints the tariffs and assignments afterwards as JSON."""
    admin = Principal(f"cli:{getpass.getuser()}", Role.ADMIN)
    async with _opened_store(settings) as store:
        sessions = SessionService(store, _NoChargePoints(), MemoryBus(), SystemClock())
        try:
            if action == "put":
                try:
                    body = orjson.loads(text or "")
                except orjson.JSONDecodeError as exc:
                    raise TariffCommandFailed(f"not JSON: {exc}") from None
                await sessions.put_tariff(admin, body)
            elif action == "delete":
                await sessions.delete_tariff(admin, args.id)
            elif action == "assign":
                await sessions.assign_tariff(admin, args.scope, args.id)
        except ChargingApiError as exc:
            raise TariffCommandFailed(exc.message) from None
        listed = await sessions.tariffs(admin)
    return orjson.dumps(listed, option=orjson.OPT_INDENT_2).decode()


class IdTagSpellingConflict(ValueError):
    """``idtags add`` named a tag already registered in another case (id tags are CiString20)."""


async def add_id_tag(settings: Settings, tag: str, user_id: str | None, status: str) -> None:
    """Register ``tag`` (or update the owner and status of the same spelling).

    Id tags are case-insensitive, so ``tag-a`` beside a registered ``TAG-A`` is the same card:
    it is refused (:class:`IdTagSpellingConflict`), never silently merged into the other.
    """
    async with _opened_store(settings) as store:
        known = await store.get_id_tag(tag)
        if known is not None and known.tag != tag:
            raise IdTagSpellingConflict(
                f"id tag {tag} is already registered as {known.tag} (id tags are "
                f"case-insensitive); to change it, run: charging-api idtags add {known.tag} ..."
            )
        await store.put_id_tag(IdTag(tag, user_id, IdTagStatus(status)))


async def list_id_tags(settings: Settings, user_id: str) -> list[IdTag]:
    async with _opened_store(settings) as store:
        return await store.id_tags_of(user_id)


async def add_charge_point(settings: Settings, charge_point_id: str, password: str | None) -> None:
    hashed = access.hash_password(password) if password else None
    async with _opened_store(settings) as store:
        await store.add_charge_point(charge_point_id, hashed)


class CloseFailed(Exception):
    """``transactions close`` was refused: ``code`` and ``message`` as the server gave them."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class _NoChargePoints:
    """The gateway of a CLI command: no charge point is connected to it."""

    def is_online(self, charge_point_id: str) -> bool:
        return False

    def online_count(self) -> int:
        return 0

    async def remote_start(self, charge_point_id: str, connector_id: int, id_tag: str) -> str:
        raise ChargePointOffline(f"Charge point {charge_point_id} is not connected")

    async def call(
        self, charge_point_id: str, action: str, payload: dict[str, Any]
    ) -> dict[str, Any]:
        raise ChargePointOffline(f"Charge point {charge_point_id} is not connected")

    async def remote_stop(self, charge_point_id: str, transaction_id: int) -> str:
        raise ChargePointOffline(f"Charge point {charge_point_id} is not connected")


def app_url_of(settings: Settings) -> str:
    """Where this configuration's own server listens for apps (for CLI commands)."""
    host = settings.ws_api_host
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    scheme = "wss" if settings.ws_api_tls_cert else "ws"
    return f"{scheme}://{host}:{settings.ws_api_port}/ws"


async def close_transaction(
    settings: Settings, transaction_id: int, meter_stop_wh: int | None, url: str | None
) -> tuple[dict[str, Any], str]:
    """``charging-api transactions close``: the transaction as closed, and how it was done.

    Through the running server when one answers at ``url`` (an admin ``close_transaction_request``
    with a token signed here, user ``cli:<login>``): its live picture, its owner's push and its
    audit line all follow. When nothing listens there, the database is changed directly by the
    same rules (the server reads it when it starts) and the audit line is this command's log.
    """
    who = f"cli:{getpass.getuser()}"
    target = url or app_url_of(settings)
    try:
        ws = await websockets.connect(target, open_timeout=10, max_size=2**20)
    except OSError:  # nothing listens: no server runs with this configuration
        async with _opened_store(settings) as store:
            service = ChargingService(store, _NoChargePoints(), MemoryBus())
            await service.load()
            try:
                closed = await service.close_transaction(
                    Principal(who, Role.ADMIN), transaction_id, meter_stop_wh
                )
            except ChargingApiError as exc:
                raise CloseFailed(exc.code, exc.message) from None
        return transaction_to_wire(closed), f"in the database (no server answered at {target})"
    async with ws:
        if not settings.jwt_algorithm.startswith("HS"):
            raise CloseFailed(
                "AUTHENTICATION_FAILED",
                f"JWT_ALGORITHM={settings.jwt_algorithm}: this command cannot sign an admin "
                "token; send close_transaction_request with one from your identity provider",
            )
        ids = itertools.count(1)

        async def ask(kind: str, data: dict[str, Any]) -> dict[str, Any]:
            message_id = f"cli-{next(ids)}"
            await ws.send(orjson.dumps({"id": message_id, "type": kind, "data": data}).decode())
            async with asyncio.timeout(settings.ocpp_call_timeout + 10):
                while True:
                    reply: dict[str, Any] = orjson.loads(await ws.recv())
                    if reply.get("id") != message_id:
                        continue  # a push
                    error = reply.get("error")
                    if error:
                        raise CloseFailed(error.get("code", "ERROR"), error.get("message", ""))
                    return dict(reply.get("data") or {})

        await ask("auth_request", {"token": make_token(settings, who, None, "admin", 300)})
        request: dict[str, Any] = {"transactionId": transaction_id}
        if meter_stop_wh is not None:
            request["meterStopWh"] = meter_stop_wh
        done = await ask("close_transaction_request", request)
        return dict(done["transaction"]), f"through the running server at {target}"


def _stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT (where the platform lets us handle them)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    return stop


def make_token(
    settings: Settings,
    user_id: str,
    id_tag: str | None,
    role: str | None,
    expires_in: float | None,
    groups: tuple[str, ...] = (),
) -> str:
    return issue_token(
        settings.jwt_secret,
        user_id,
        expires_in=expires_in or settings.jwt_expires_in,
        id_tag=id_tag,
        role=role,
        groups=groups,
        algorithm=settings.jwt_algorithm,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
    )


async def simulate(
    url: str, count: int, prefix: str, meter_interval: float, connectors: int
) -> None:
    from charging_api.simulator.fleet import run_fleet

    logging.getLogger("ocpp").setLevel(logging.WARNING)  # the library logs every frame at INFO
    stop = _stop_on_signals()
    await run_fleet(
        url, count, prefix=prefix, meter_interval=meter_interval, connectors=connectors, stop=stop
    )


async def demo(settings: Settings, app_url: str, ocpp_url: str, meter_updates: int) -> None:
    """A newcomer's tour: one simulated charge point, one app user on the Python client,
    against a running server. Prints what the app sees from start to stop."""
    from charging_api.client import ChargingClient
    from charging_api.simulator.charge_point import SimulatedChargePoint
    from charging_api.simulator.fleet import run_charge_point

    logging.getLogger("ocpp").setLevel(logging.WARNING)
    cp_id = "DEMO-0001"
    booted = asyncio.Event()

    def connected(cp: SimulatedChargePoint) -> None:
        cp_booted = cp.booted

        async def relay() -> None:
            await cp_booted.wait()
            booted.set()

        tasks.add(asyncio.ensure_future(relay()))

    tasks: set[asyncio.Future[None]] = set()
    stop = asyncio.Event()
    charger = asyncio.create_task(
        run_charge_point(ocpp_url, cp_id, meter_interval=2.0, stop=stop, on_connect=connected)
    )
    try:
        await asyncio.wait_for(booted.wait(), 15)
        token = make_token(settings, "demo-user", "DEMO_TAG", None, 600)
        async with ChargingClient(app_url, token) as client:
            print(f"authenticated as demo-user; starting a charge on {cp_id} connector 1")
            started = await client.start_charging(cp_id, 1)
            print(f"start_charging_response: {started}")
            seen = 0
            while seen < meter_updates:
                update = await client.next_update(timeout=30)
                print(f"push seq={update.get('seq')} {update['type']}: {update['data']}")
                seen += update["type"] == "meter_values_update"
            stopped = await client.stop_charging(cp_id, started["transactionId"])
            print(f"stop_charging_response: {stopped}")
            ended = await client.next_update("transaction_update", timeout=30)
            print(f"push {ended['type']}: {ended['data']}")
    finally:
        stop.set()
        await asyncio.wait_for(charger, 10)
        for task in tasks:
            task.cancel()


def run(coro: Any) -> Any:
    """Run a coroutine on uvloop where available."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        return asyncio.run(coro)
    return uvloop.run(coro)
