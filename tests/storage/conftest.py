"""Backends for the storage suites.

``open_store``: the contract suite runs on SQLite, on PostgreSQL and on the in-memory fake the
core's unit tests use (``tests/fakes.py``), so the fake cannot drift from the real rules.
``open_sql_store``: what only ``SqlStore`` promises (batching, refused rows, the schema), on
SQLite and PostgreSQL.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest
from tests.external import missing
from tests.fakes import MemoryStore

from charging_api.domain.ports import Store
from charging_api.storage import SqlStore

PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"
PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"

OpenStore = Callable[..., Awaitable[Store]]
OpenSqlStore = Callable[..., Awaitable[SqlStore]]


@pytest.fixture(params=["sqlite", "postgresql", "memory"])
async def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OpenStore]:
    """``await open_store(**kwargs)`` gives a started store; every call in one test opens
    the same database (so close + reopen can be tested). The fake ignores ``kwargs`` (they
    tune batching, which it does not do) and "reopens" as the same object."""
    if request.param == "memory":
        memory = MemoryStore()

        async def open_memory(**_: Any) -> Store:
            await memory.start()
            return memory

        yield open_memory
        await memory.close()
        return
    async with _sql_backend(request.param, tmp_path) as open_:
        yield open_


@pytest.fixture(params=["sqlite", "postgresql"])
async def open_sql_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[OpenSqlStore]:
    """As ``open_store``, for ``SqlStore`` only."""
    async with _sql_backend(request.param, tmp_path) as open_:
        yield open_


@contextlib.asynccontextmanager
async def _sql_backend(backend: str, tmp_path: Path) -> AsyncIterator[OpenSqlStore]:
    """``await open_(**kwargs)`` gives a started SqlStore; every call opens the same database.

    PostgreSQL gets a fresh schema per test. It is created inside the test body, so an
    unreachable server skips the test with one line (fails it under ``CI=true``) instead of
    erroring it.
    """
    schema = f"store_test_{uuid.uuid4().hex}"
    opened: list[SqlStore] = []
    created = False

    async def open_(**kwargs: Any) -> SqlStore:
        nonlocal created
        if backend == "sqlite":
            # A missing parent directory is part of the contract: start() creates it.
            store = SqlStore(f"sqlite:///{tmp_path / 'data' / 'store.db'}", **kwargs)
        else:
            if not created:
                try:
                    conn = await asyncpg.connect(PG_DSN)
                except (OSError, asyncpg.PostgresError) as exc:
                    missing(
                        f"PostgreSQL at {PG_DSN} ({exc})",
                        "run PostgreSQL with a `test` database on 127.0.0.1:5432 that user "
                        "postgres reaches without a password (.ci/run starts one)",
                    )
                try:
                    await conn.execute(f'CREATE SCHEMA "{schema}"')
                finally:
                    await conn.close()
                created = True
            server_settings = {"server_settings": {"search_path": schema}}
            store = SqlStore(PG_URL, engine_kwargs={"connect_args": server_settings}, **kwargs)
        await store.start()
        opened.append(store)
        return store

    yield open_
    for store in opened:
        await store.close()
    if created:
        conn = await asyncpg.connect(PG_DSN)
        try:
            await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        finally:
            await conn.close()
