"""Webhooks on the wire: a real HTTP receiver checks signatures, is down for a while, comes back;
every session event arrives once, in order; the delivery log shows the failed attempts."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from tests.conftest import app_client, make_settings, running_server
from tests.peers.py_charge_point import connected_charge_point
from tests.reliability.helpers import energy, start_charge

CP, TAG, SECRET = "CP-HOOK", "TAG-ALICE", "whsec-0123456789abcdef"


class Receiver:
    """An HTTP/1.1 endpoint: verifies each POST's signature; answers 503 while ``down``."""

    def __init__(self) -> None:
        self.down = False
        self.events: list[dict[str, Any]] = []
        self.refused = asyncio.Event()
        self.arrived = asyncio.Condition()
        self.bad_signatures = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ln)}
        body = await reader.readexactly(int(headers["content-length"]))
        stamp = headers["x-webhook-timestamp"]
        mac = hmac.new(SECRET.encode(), stamp.encode() + b"." + body, hashlib.sha256)
        fresh = abs(time.time() - int(stamp)) < 300
        if headers["x-webhook-signature"] != "sha256=" + mac.hexdigest() or not fresh:
            self.bad_signatures += 1
            status = "401 Unauthorized"
        elif self.down:
            self.refused.set()
            status = "503 Service Unavailable"
        else:
            status = "200 OK"
            async with self.arrived:
                self.events.append(json.loads(body))
                self.arrived.notify_all()
        writer.write(f"HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    async def wait_for(self, count: int, timeout: float = 30) -> None:
        async with asyncio.timeout(timeout), self.arrived:
            await self.arrived.wait_for(lambda: len(self.events) >= count)


@contextlib.asynccontextmanager
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    got = Receiver()
    server = await asyncio.start_server(got.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield got, f"http://127.0.0.1:{port}/hooks"


async def test_events_delivered_signed_once_in_order_across_an_outage(tmp_path: Path) -> None:
    """The receiver refuses for a while: events are retried and all arrive once, in order."""
    async with (
        receiver() as (got, url),
        running_server(make_settings(tmp_path)) as server,
        app_client(server, server.token("ops", role="admin")) as ops,
        app_client(server, server.token("alice", id_tag=TAG)) as alice,
        connected_charge_point(server.ocpp_url, CP) as cp,
    ):
        refused = await alice.request(
            "webhooks_request",
            {"action": "put", "endpoint": {"id": "x", "url": url, "secret": SECRET}},
        )
        assert refused["error"]["code"] == "FORBIDDEN"
        short = await ops.request(
            "webhooks_request",
            {"action": "put", "endpoint": {"id": "x", "url": url, "secret": "s"}},
        )
        assert short["error"]["details"] == {"field": "secret"}
        await ops.request(
            "webhooks_request",
            {"action": "put", "endpoint": {"id": "ops", "url": url, "secret": SECRET}},
        )
        await cp.status(1, "Available")
        tx = await start_charge(alice, cp, CP, 1, TAG, meter_start=0)
        await got.wait_for(1)
        got.down = True
        await cp.meter(1, tx, energy(1000))
        await cp.status(1, "SuspendedEVSE")
        await cp.status(1, "Faulted", "GroundFailure")
        await asyncio.wait_for(got.refused.wait(), 10)
        await cp.stop_tx(tx, 1000)
        got.down = False
        await got.wait_for(4)
        kinds = [e["type"] for e in got.events]
        assert kinds == [
            "session.started",
            "session.suspended_evse",
            "session.fault",
            "session.ended",
        ]
        assert len({e["id"] for e in got.events}) == 4  # once each
        assert got.events[-1]["data"]["receipt"]["energyKWh"] == 1.0
        assert got.bad_signatures == 0
        # The receiver has answered the fourth POST; the server marks it delivered once it
        # has read that answer: ask until the outbox is empty (bounded; paced under the app
        # rate limit, which a tight loop would hit).
        async with asyncio.timeout(10):
            while True:
                log = await ops.request("webhooks_request", {"action": "list"})
                if not log["data"]["pending"]:
                    break
                await asyncio.sleep(0.1)
        attempts = log["data"]["deliveries"]
        assert any(not a["delivered"] and a["status"] == 503 for a in attempts)
        again = await ops.request(
            "webhooks_request", {"action": "redeliver", "eventId": got.events[0]["id"]}
        )
        assert "error" not in again
        await got.wait_for(5)
        assert got.events[4]["id"] == got.events[0]["id"]  # the same event, sent again
