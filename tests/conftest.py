"""Shared fixtures: the real server in-process on free loopback ports, app clients, tokens."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import websockets

from charging_api.app import Application
from charging_api.config import Settings, load_settings

SECRET = "test-secret-0123456789-abcdefghijklmnop"


@dataclass
class RunningServer:
    app: Application
    settings: Settings
    app_url: str
    ocpp_url: str
    http_url: str

    def token(
        self,
        user: str,
        *,
        id_tag: str | None = None,
        role: str | None = None,
        expires_in: float = 3600,
        groups: tuple[str, ...] = (),
    ) -> str:
        from charging_api.api.auth import issue_token

        return issue_token(
            SECRET, user, expires_in=expires_in, id_tag=id_tag, role=role, groups=groups
        )


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "ws_api_host": "127.0.0.1",
        "ws_api_port": 0,
        "ocpp_host": "127.0.0.1",
        "ocpp_port": 0,
        "jwt_secret": SECRET,
        "database_url": f"sqlite:///{tmp_path / 'test.db'}",
        "frontend_url": "http://localhost:3000",
        "start_transaction_timeout": 5,
        "ocpp_call_timeout": 5,
        "_env_file": None,
    }
    values.update(overrides)
    return load_settings(**values)


@contextlib.asynccontextmanager
async def running_server(settings: Settings) -> AsyncIterator[RunningServer]:
    application = Application(settings)
    ports = await application.start()
    try:
        yield RunningServer(
            application,
            settings,
            f"ws://127.0.0.1:{ports.app}/ws",
            f"ws://127.0.0.1:{ports.ocpp}/ocpp",
            f"http://127.0.0.1:{ports.app}",
        )
    finally:
        await application.stop()


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    async with running_server(make_settings(tmp_path)) as running:
        yield running


class AppClient:
    """A bare app client: sends envelopes, sorts what comes back into replies and pushes."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self._next = 0
        self._replies: dict[Any, asyncio.Future[dict[str, Any]]] = {}
        self.pushes: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.unsolicited: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in self.ws:
                message = orjson.loads(raw)
                future = self._replies.pop(message.get("id"), None)
                if future is not None and not future.done():
                    future.set_result(message)
                elif "seq" in message:
                    self.pushes.put_nowait(message)
                else:
                    self.unsolicited.put_nowait(message)

    async def request(
        self,
        kind: str,
        data: dict[str, Any] | None = None,
        message_id: Any = None,
        timeout: float = 15,
    ) -> dict[str, Any]:
        if message_id is None:
            self._next += 1
            message_id = f"m-{self._next}"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[message_id] = future
        envelope: dict[str, Any] = {
            "id": message_id,
            "type": kind,
            "timestamp": "2024-01-15T10:30:00.000Z",
        }
        if data is not None:
            envelope["data"] = data
        await self.ws.send(orjson.dumps(envelope).decode())
        return await asyncio.wait_for(future, timeout)

    async def send_raw(self, text: str | bytes, reply_id: Any) -> dict[str, Any]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[reply_id] = future
        await self.ws.send(text)
        return await asyncio.wait_for(future, 10)

    async def push(
        self, kind: str, timeout: float = 10, where: Callable[[dict[str, Any]], bool] | None = None
    ) -> dict[str, Any]:
        """The next push of ``kind`` (skipping others) matching ``where``."""
        async with asyncio.timeout(timeout):
            while True:
                message = await self.pushes.get()
                if message["type"] == kind and (where is None or where(message)):
                    return message

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


@contextlib.asynccontextmanager
async def app_client(
    server: RunningServer, token: str | None = None, **connect_kwargs: Any
) -> AsyncIterator[AppClient]:
    ws = await websockets.connect(server.app_url, **connect_kwargs)
    client = AppClient(ws)
    try:
        if token is not None:
            reply = await client.request("auth_request", {"token": token})
            assert reply["data"]["success"] is True, reply
        yield client
    finally:
        await client.close()
