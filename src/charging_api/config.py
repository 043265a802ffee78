"""Settings from the environment or a ``.env`` file, with the seed's keys and units.

The seed's keys keep their meaning and units (HEARTBEAT_INTERVAL, SESSION_TIMEOUT and
CONNECTION_TIMEOUT in milliseconds, JWT_EXPIRES_IN as ``24h``). Keys this service adds are in
seconds unless their name says otherwise. A bad value stops start-up with one line naming the key
(:func:`load_settings` raises :class:`ConfigError`), and production mode refuses the example secret.
"""

from __future__ import annotations

import importlib.util
import os
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from dotenv import dotenv_values
from pydantic import (
    AliasChoices,
    Field,
    FilePath,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from charging_api.api.auth import ALGORITHMS as JWT_ALGORITHMS

#: Secrets that ship in docs and examples; production refuses to start with them.
EXAMPLE_SECRETS = frozenset(
    {
        "your-super-secret-jwt-key",
        "your-secure-production-secret",
        "change-me-dev-secret-not-for-production",
    }
)
DEV_SECRET = "change-me-dev-secret-not-for-production"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class ConfigError(Exception):
    """A setting has a value we cannot run with; the message names the key."""


class NodeRole(StrEnum):
    """What one ``serve`` process runs (``--role`` / ``ROLE``)."""

    ALL = "all"
    GATEWAY = "gateway"
    API = "api"


class Environment(StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"
    TEST = "test"


def parse_duration(value: Any, default_unit: str = "s") -> float:
    """``24h`` / ``30m`` / ``90`` (in ``default_unit``) -> seconds, as the seed's JWT_EXPIRES_IN."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value) * _UNIT_SECONDS[default_unit]
    else:
        match = _DURATION.match(str(value))
        if match is None:
            raise ValueError(f"not a duration: {value!r} (use e.g. 3600, 30m, 24h)")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2) or default_unit]
    if seconds <= 0:
        raise ValueError("must be positive")
    return seconds


#: DATABASE_URL schemes the storage layer runs on, and the backend each one means.
DATABASE_SCHEMES = {
    "sqlite": "sqlite",
    "sqlite+pysqlite": "sqlite",
    "sqlite+aiosqlite": "sqlite",  # older configurations; read as sqlite://
    "postgresql+asyncpg": "postgresql",
}


def check_database_url(url: str) -> str:
    """``url`` if the storage layer can open it; else a ValueError saying what to write.

    PostgreSQL goes through asyncpg, which is the ``postgres`` extra: its absence is reported
    here, at start-up, rather than as an import error from deep inside the store.
    """
    scheme = url.partition("://")[0].strip().lower() if "://" in url else ""
    backend = DATABASE_SCHEMES.get(scheme)
    if backend is None:
        hint = (
            "use postgresql+asyncpg://user@host/db (the asyncpg driver)"
            if scheme.startswith(("postgresql", "postgres"))
            else "use sqlite:///path/to/file.db or postgresql+asyncpg://user@host/db"
        )
        raise ValueError(f"unsupported scheme {scheme or url[:20]!r}; {hint}")
    if backend == "postgresql" and not _installed("asyncpg"):
        raise ValueError(
            "PostgreSQL needs the postgres extra (asyncpg), which is not installed: "
            "pip install 'charging-api[postgres]'"
        )
    return url


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _millis(value: Any) -> float:
    """A seed timeout in milliseconds -> seconds; must be positive."""
    return parse_duration(value, "ms")


class Settings(BaseSettings):
    """Every knob of the service. Field names are the environment keys, upper-cased."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True
    )

    # Server (seed keys)
    ws_api_port: int = Field(8082, ge=0, le=65535)
    ws_api_host: str = "localhost"
    app_env: Environment = Field(
        Environment.DEVELOPMENT, validation_alias=AliasChoices("APP_ENV", "NODE_ENV")
    )
    # Security (seed keys)
    jwt_secret: str = DEV_SECRET
    jwt_expires_in: float = 24 * 3600.0
    jwt_algorithm: str = "HS256"
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    # Asymmetric tokens (JWT_ALGORITHM RS*/ES*/PS*): the identity provider's public key as a PEM
    # file, or a local JWKS file whose keys are picked by the token's ``kid``.
    jwt_public_key_file: FilePath | None = None
    jwt_jwks_file: FilePath | None = None
    # Clock skew tolerated for exp/nbf/iat, seconds.
    jwt_leeway: float = Field(0.0, ge=0, le=300)
    # Connection settings (seed keys, milliseconds on the wire, seconds here)
    # Defaults are written in the seed's milliseconds: Settings validates defaults too.
    heartbeat_interval: float = 30_000
    session_timeout: float = 3_600_000
    connection_timeout: float = 300_000
    max_connections: int = Field(1000, ge=1)
    frontend_url: Annotated[list[str], NoDecode] = ["http://localhost:3000"]
    debug_websocket: bool = False
    # The seed's split deployment: accepted and reported; the cluster below replaces it
    # (docs/scaling.md says how the seed's split maps onto roles).
    ws_gateway_url: str | None = None
    ws_gateway_api_key: str | None = None

    # Several processes (docs/scaling.md): ROLE all = both doors in one process (the default);
    # gateway = the OCPP door only, api = the app door, REST and console. gateway and api need
    # REDIS_URL (routing, fan-out, shared state) and a PostgreSQL DATABASE_URL.
    role: NodeRole = NodeRole.ALL
    redis_url: str | None = None
    # This process's name in the cluster (owner keys, heartbeats, /api/stats); default
    # "<hostname>-<pid>".
    node_id: str | None = None
    # Seconds between a node's heartbeats; a node unseen for three is gone from /api/stats.
    node_heartbeat_interval: float = Field(2.0, gt=0)
    # Seconds a gateway's claim on a connected charge point lives without a refresh (it is
    # refreshed every third of it): after a gateway dies, its charge points are unowned
    # (commands answer CHARGE_POINT_OFFLINE) for at most this long, or until they reconnect.
    owner_ttl: float = Field(15.0, ge=1)

    # TLS (WSS) for either door, and a key for /api/stats without a JWT
    ws_api_tls_cert: Path | None = None
    ws_api_tls_key: Path | None = None
    ocpp_tls_cert: Path | None = None
    ocpp_tls_key: Path | None = None
    stats_api_key: str | None = None

    # OCPP central system
    ocpp_host: str = "localhost"
    ocpp_port: int = Field(8081, ge=0, le=65535)
    ocpp_heartbeat_interval: int = Field(300, ge=1)
    ocpp_call_timeout: float = Field(10.0, gt=0)
    start_transaction_timeout: float = Field(20.0, gt=0)
    # An open transaction whose connector reports Available is closed when no StopTransaction
    # follows within this many seconds (the charge point forgot it: a reboot).
    stale_transaction_grace: float = Field(120.0, gt=0)
    # The longest reservation (reserve_request, ReserveNow): longer requests are shortened.
    max_reservation_minutes: int = Field(60, ge=1, le=7 * 24 * 60)
    meter_live_window: float = Field(120.0, gt=0)
    # DataTransfer vendor ids (comma-separated) accepted from charge points and published to
    # admins; any other vendor id is answered UnknownVendorId.
    data_transfer_vendors: Annotated[list[str], NoDecode] = []
    session_update_interval: float = Field(5.0, gt=0)
    preparing_threshold: float = Field(120.0, gt=0)
    # The last part of an energyKWh limit (percent of it; 0 = off) is charged at a reduced
    # power (percent of the power when it begins) by a TxProfile, then stopped at the limit.
    energy_limit_taper_percent: float = Field(10.0, ge=0, lt=100)
    energy_limit_taper_power_percent: float = Field(50.0, gt=0, lt=100)
    ocpp_max_frame_size: int = Field(65536, ge=1024)
    ocpp_ping_interval: float = Field(60.0, ge=0)  # WebSocket ping to charge points; 0 = off
    ocpp_rate_limit: float = Field(0.0, ge=0)  # messages/s per charge point; 0 = off
    ocpp_open_timeout: float = Field(10.0, gt=0)  # seconds allowed for the HTTP upgrade

    # App door limits
    max_frame_size: int = Field(65536, ge=1024)
    auth_timeout: float = Field(10.0, gt=0)
    send_queue_size: int = Field(256, ge=8)
    max_pending_requests: int = Field(16, ge=1)
    history_size: int = Field(200, ge=0)
    max_connections_per_user: int = Field(10, ge=1)
    rate_limit_per_second: float = Field(20.0, gt=0)
    rate_limit_burst: float = Field(50.0, ge=1)
    # Token expiry on a live connection: warn this long before expiresAt, close this long after.
    token_expiry_warning: float = Field(60.0, ge=0)
    token_expiry_grace: float = Field(30.0, ge=0)
    # Time allowed for the HTTP upgrade (a slow-loris request is dropped after it).
    ws_open_timeout: float = Field(10.0, gt=0)

    # Storage and logs
    database_url: str = "sqlite:///./data/charging-api.db"
    log_level: str = "INFO"
    log_file: Path | None = None

    @field_validator("jwt_expires_in", mode="before")
    @classmethod
    def _jwt_expiry(cls, value: Any) -> float:
        return parse_duration(value, "s")

    @field_validator("heartbeat_interval", "session_timeout", "connection_timeout", mode="before")
    @classmethod
    def _seed_millis(cls, value: Any) -> float:
        return _millis(value)

    @field_validator("frontend_url", mode="before")
    @classmethod
    def _origins(cls, value: Any) -> list[str]:
        items = value.split(",") if isinstance(value, str) else list(value)
        return [str(item).strip().rstrip("/") for item in items if str(item).strip()]

    @field_validator("data_transfer_vendors", mode="before")
    @classmethod
    def _vendors(cls, value: Any) -> list[str]:
        items = value.split(",") if isinstance(value, str) else list(value)
        vendors = [str(item).strip() for item in items if str(item).strip()]
        for vendor in vendors:
            if len(vendor) > 255:
                raise ValueError(f"vendor id {vendor[:20]}... is longer than OCPP's 255 characters")
        return vendors

    @field_validator("database_url")
    @classmethod
    def _database(cls, value: str) -> str:
        return check_database_url(value)

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @model_validator(mode="after")
    def _cluster(self) -> Settings:
        if self.role is not NodeRole.ALL:
            if self.redis_url is None:
                raise ValueError(f"ROLE={self.role.value} needs REDIS_URL (the cluster's bus)")
            if not self.database_url.startswith("postgresql"):
                raise ValueError(
                    f"ROLE={self.role.value} needs a PostgreSQL DATABASE_URL shared by every node"
                )
        return self

    @field_validator("log_level", mode="before")
    @classmethod
    def _level(cls, value: Any) -> str:
        level = str(value).upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of debug, info, warning, error, critical")
        return level

    @field_validator("jwt_algorithm", mode="before")
    @classmethod
    def _algorithm(cls, value: Any) -> str:
        alg = str(value).upper()
        if alg not in JWT_ALGORITHMS:
            raise ValueError("must be one of " + ", ".join(sorted(JWT_ALGORITHMS)))
        return alg

    @model_validator(mode="after")
    def _jwt_keys(self) -> Settings:
        if self.jwt_algorithm.startswith("HS"):
            if self.jwt_public_key_file is not None or self.jwt_jwks_file is not None:
                raise ValueError(
                    f"JWT_PUBLIC_KEY_FILE/JWT_JWKS_FILE need an asymmetric JWT_ALGORITHM, "
                    f"not {self.jwt_algorithm}"
                )
        elif (self.jwt_public_key_file is None) == (self.jwt_jwks_file is None):
            raise ValueError(
                f"JWT_ALGORITHM {self.jwt_algorithm} needs exactly one of JWT_PUBLIC_KEY_FILE "
                "and JWT_JWKS_FILE"
            )
        return self

    @model_validator(mode="after")
    def _production_guard(self) -> Settings:
        if self.app_env is Environment.PRODUCTION:
            if self.jwt_secret in EXAMPLE_SECRETS:
                raise ValueError("JWT_SECRET is the example secret; set a real one in production")
            if len(self.jwt_secret.encode()) < 32:
                raise ValueError("JWT_SECRET must be at least 32 bytes in production")
        return self

    @property
    def production(self) -> bool:
        return self.app_env is Environment.PRODUCTION


def _set_only_as_node_env() -> bool:
    """Whether the environment (or ``.env``) says NODE_ENV and not APP_ENV, the seed's spelling."""
    found = {key.upper() for key in os.environ if key.upper() in {"APP_ENV", "NODE_ENV"}}
    env_file = Path(".env")
    if env_file.is_file():
        found |= {
            key.upper() for key in dotenv_values(env_file) if key.upper() in {"APP_ENV", "NODE_ENV"}
        }
    return found == {"NODE_ENV"}


def load_settings(**overrides: Any) -> Settings:
    """Build Settings; a bad value becomes one ConfigError line naming the key."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = [str(part) for part in first.get("loc", ())]
        key = loc[0].upper() if loc else "configuration"
        message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        if key == "APP_ENV" and _set_only_as_node_env():
            key = "NODE_ENV"  # name the key the user wrote
        if key == "CONFIGURATION" or not loc:
            raise ConfigError(f"invalid configuration: {message}") from None
        raise ConfigError(f"invalid configuration: {key}: {message}") from None
