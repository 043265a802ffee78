"""A real cluster for the tests of this folder: 2 gateway and 2 api processes on the machine's
Redis and PostgreSQL, behind Debian's HAProxy (``charging_api.cluster.local``, as ``make cluster``).

Each test gets its own PostgreSQL database (created and dropped here) and its own Redis database
index, flushed before and after, so the cluster starts empty and leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from redis import asyncio as aioredis
from redis.exceptions import RedisError

from charging_api.cluster.local import LocalCluster, free_port
from tests.external import missing
from tests.serverproc import SECRET, _inherited_env

PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
#: The Redis database index these tests own (other tests and helpers use others).
REDIS_DB = 9
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"


async def _redis_or_skip() -> aioredis.Redis:
    client: aioredis.Redis = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        await client.ping()  # type: ignore[misc]
    except (OSError, RedisError):
        await client.aclose()
        missing("Redis on 127.0.0.1:6379", "start it (.ci/run starts one)")
    return client


@contextlib.asynccontextmanager
async def fresh_database() -> AsyncIterator[str]:
    """A new PostgreSQL database, dropped afterwards; yields its SQLAlchemy URL."""
    try:
        import asyncpg  # type: ignore[import-untyped]
    except ImportError:
        missing("asyncpg", "install the project with its postgres extra (make test does)")
    try:
        admin = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError):
        missing(
            "PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth)",
            "start it (.ci/run starts one)",
        )
    name = f"cha_cluster_{secrets.token_hex(4)}"
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        with contextlib.suppress(Exception):
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def redis_db() -> AsyncIterator[aioredis.Redis]:
    client = await _redis_or_skip()
    await client.flushdb()
    try:
        yield client
    finally:
        await client.flushdb()
        await client.aclose()


def cluster_env(database_url: str, redis_url: str) -> dict[str, str]:
    """Every node's settings: quick heartbeats and owner refreshes, so tests wait less."""
    return _inherited_env() | {
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "JWT_SECRET": SECRET,
        "APP_ENV": "test",
        "LOG_LEVEL": "INFO",
        "NODE_HEARTBEAT_INTERVAL": "1",
        "OWNER_TTL": "3",
        "FRONTEND_URL": "http://localhost:3000",
    }


def need_haproxy() -> None:
    if shutil.which("haproxy", path="/usr/sbin:/usr/bin:/sbin:/bin") is None:
        missing("HAProxy (Debian's haproxy package)", "apt-get install haproxy (.ci/run does)")


@pytest.fixture
async def cluster(tmp_path: Path, redis_db: aioredis.Redis) -> AsyncIterator[LocalCluster]:
    need_haproxy()
    async with (
        fresh_database() as database_url,
        LocalCluster(tmp_path, cluster_env(database_url, REDIS_URL)) as running,
    ):
        yield running


@pytest.fixture
def cluster_with(
    tmp_path: Path, redis_db: aioredis.Redis
) -> Callable[..., contextlib.AbstractAsyncContextManager[LocalCluster]]:
    """``async with cluster_with(STALE_TRANSACTION_GRACE="0.5") as cluster``: the same cluster
    with settings of the test's own."""
    need_haproxy()

    @contextlib.asynccontextmanager
    async def start(**settings: str) -> AsyncIterator[LocalCluster]:
        async with fresh_database() as database_url:
            env = cluster_env(database_url, REDIS_URL) | settings
            async with LocalCluster(tmp_path, env) as running:
                yield running

    return start


class PrivateRedis:
    """A redis-server of this test's own on a free loopback port, so a test can stop and restart
    it (as an outage) without touching the machine's Redis that other tests use."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        binary = shutil.which("redis-server", path="/usr/bin:/usr/sbin:/usr/local/bin")
        if binary is None:
            missing("redis-server (Debian's redis-server package)", "apt-get install redis-server")
        self.proc = await asyncio.create_subprocess_exec(
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        client: aioredis.Redis = aioredis.Redis.from_url(self.url, socket_connect_timeout=1)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        try:
            while True:
                try:
                    await client.ping()  # type: ignore[misc]
                    return
                except (OSError, RedisError):
                    assert loop.time() < deadline, "the private redis-server did not answer"
                    await asyncio.sleep(0.05)
        finally:
            await client.aclose()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


@pytest.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[PrivateRedis]:
    redis = PrivateRedis(tmp_path)
    await redis.start()
    try:
        yield redis
    finally:
        await redis.stop()


@pytest.fixture
async def cluster_on_private_redis(
    tmp_path: Path, private_redis: PrivateRedis
) -> AsyncIterator[tuple[LocalCluster, PrivateRedis]]:
    """The same cluster on a Redis of the test's own, which the test may stop and restart."""
    need_haproxy()
    async with fresh_database() as database_url:
        env = cluster_env(database_url, private_redis.url)
        async with LocalCluster(tmp_path, env) as running:
            yield running, private_redis
