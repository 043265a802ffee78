"""``GET /health`` (public, the seed's shape, nothing sensitive), ``GET /api/stats`` and
``GET /metrics`` (admin only: a Bearer JWT with role admin, or the configured stats key;
Prometheus sends the key as its scrape job's bearer token).

No server library here: a route takes the path and headers and returns
``(status, headers, body)``; the app door's server sends it.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from charging_api.domain.models import Principal
from charging_api.errors import (
    AuthenticationFailed,
    ChargingApiError,
    Forbidden,
    MethodNotAllowed,
    NotAuthenticated,
)
from charging_api.http.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from charging_api.timefmt import utc_now_text

HttpReply = tuple[int, list[tuple[str, str]], bytes]

#: The paths these routes answer.
PATHS = ("/health", "/api/stats", "/metrics")


@dataclass(frozen=True, slots=True)
class HttpConfig:
    version: str
    allowed_origins: tuple[str, ...]
    stats_key: str | None = None


class HttpRoutes:
    def __init__(
        self,
        config: HttpConfig,
        websocket_stats: Callable[[], dict[str, int]],
        system_stats: Callable[[], dict[str, Any]],
        verify_bearer: Callable[[str], Principal],
        storage_failure: Callable[[], str | None] = lambda: None,
        metrics: Callable[[], bytes] | None = None,
        node_health: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self._config = config
        #: A cluster node's part of /health (its id, role, whether Redis and PostgreSQL
        #: answer); "failing" there makes /health 503 so a load balancer takes it out.
        self._node_health = node_health
        self._metrics = metrics
        self._storage_failure = storage_failure
        self._websocket_stats = websocket_stats
        self._system_stats = system_stats
        self._verify = verify_bearer
        self._started = time.monotonic()

    async def __call__(
        self, method: str, path: str, headers: Mapping[str, str]
    ) -> HttpReply | None:
        if path not in PATHS or (path == "/metrics" and self._metrics is None):
            return None
        cors = self._cors(headers)
        if method == "OPTIONS":
            # CORS preflight: a browser on an allowed origin may send Authorization.
            if cors:
                cors += [
                    ("Access-Control-Allow-Methods", "GET, OPTIONS"),
                    ("Access-Control-Max-Age", "600"),
                ]
            return 204, [("Content-Length", "0"), *cors], b""
        if method not in ("GET", "HEAD"):
            return _failure(405, MethodNotAllowed("Use GET"), [("Allow", "GET, OPTIONS"), *cors])
        if path == "/health":
            ws = self._websocket_stats()
            failure = self._storage_failure()  # the kind of error while writes fail
            body: dict[str, Any] = {
                "status": "healthy" if failure is None else "unhealthy",
                "timestamp": utc_now_text(),
                "version": self._config.version,
                "uptime": round(time.monotonic() - self._started, 3),
                "websocket": {
                    "totalConnections": ws["totalConnections"],
                    "authenticatedConnections": ws["authenticatedConnections"],
                    "totalUsers": ws["totalUsers"],
                    "gatewayConnections": ws["gatewayConnections"],
                },
                "storage": "ok" if failure is None else "failing",
            }
            if failure is not None:
                body["storageError"] = failure
            healthy = failure is None
            if self._node_health is not None:
                node = self._node_health()
                body["node"] = node
                if "failing" in (node.get("redis"), node.get("database")):
                    healthy = False
                    body["status"] = "unhealthy"
            return _json(200 if healthy else 503, body, cors)
        if path == "/api/stats":
            denied = self._require_admin(headers)
            if denied is not None:
                return _failure(denied[0], denied[1], cors)
            data = {
                "websocket": self._websocket_stats(),
                **self._system_stats(),
                "uptime": round(time.monotonic() - self._started, 3),
            }
            return _json(200, {"success": True, "data": data}, cors)
        if path == "/metrics" and self._metrics is not None:
            denied = self._require_admin(headers)
            if denied is not None:
                return _failure(denied[0], denied[1], cors)
            payload = self._metrics()
            return (
                200,
                [
                    ("Content-Type", METRICS_CONTENT_TYPE),
                    ("Content-Length", str(len(payload))),
                    ("Cache-Control", "no-store"),
                    *cors,
                ],
                payload,
            )
        return None

    def _require_admin(self, headers: Mapping[str, str]) -> tuple[int, ChargingApiError] | None:
        outcome = check_admin(
            headers.get("Authorization") or "", self._config.stats_key, self._verify
        )
        if isinstance(outcome, ChargingApiError):
            return (403 if isinstance(outcome, Forbidden) else 401), outcome
        return None

    def _cors(self, headers: Mapping[str, str]) -> list[tuple[str, str]]:
        origin = (headers.get("Origin") or "").rstrip("/")
        if origin and origin in self._config.allowed_origins:
            return [
                ("Access-Control-Allow-Origin", origin),
                ("Vary", "Origin"),
                ("Access-Control-Allow-Headers", "Authorization"),
            ]
        return []


def check_admin(
    authorization: str, stats_key: str | None, verify: Callable[[str], Principal]
) -> Principal | ChargingApiError | None:
    """The admin rule of ``/api/stats`` and the REST API, from the ``Authorization`` header.

    An admin's :class:`Principal`; None for the stats API key (no user behind it); otherwise
    the error to answer: :class:`NotAuthenticated` / :class:`AuthenticationFailed` (401) or
    :class:`Forbidden` (403, a valid token without the admin role).
    """
    if not authorization.lower().startswith("bearer "):
        return NotAuthenticated("Bearer token required")
    credential = authorization[7:].strip()
    if stats_key and hmac.compare_digest(credential.encode(), stats_key.encode()):
        return None
    try:
        principal = verify(credential)
    except Exception:
        return AuthenticationFailed("Invalid token")
    if not principal.is_admin:
        return Forbidden("Admin role required")
    return principal


def _failure(status: int, error: ChargingApiError, extra: list[tuple[str, str]]) -> HttpReply:
    """The routes' failure body: the error tree's code and message (no app-protocol details)."""
    body = {"success": False, "error": {"code": error.code, "message": error.message}}
    return _json(status, body, extra)


def _json(status: int, body: dict[str, Any], extra: list[tuple[str, str]]) -> HttpReply:
    payload = orjson.dumps(body)
    headers = [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(payload))),
        ("Cache-Control", "no-store"),
        *extra,
    ]
    return status, headers, payload
