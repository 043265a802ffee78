"""The seed's own JavaScript ``ChargingClient``, unchanged, in headless Debian Chromium.

The class is cut at run time from the seed README (``shared/seed/charging-websocket-api-README.md``
beside the repository, or ``SEED_README``), served in a page from a loopback HTTP server whose origin is the
server's FRONTEND_URL, and driven through Playwright against the real server, with the
project's simulated charge point on the OCPP side. Only Debian's ``/usr/bin/chromium`` is used;
no browser is ever downloaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
from playwright.async_api import Browser, ConsoleMessage, async_playwright

from charging_api.simulator.charge_point import SimulatedChargePoint
from charging_api.simulator.fleet import run_charge_point
from tests.conftest import RunningServer, make_settings, running_server
from tests.external import CHROMIUM, SEED_README, missing
from tests.reliability.helpers import transactions_in_db

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = Path("/tmp/charging-api-browser-seed-client.png")
CP = "CP_BROWSER_1"
ID_TAG = "BROWSER_TAG_1"


def seed_client_class() -> str:
    """The ``ChargingClient`` class exactly as the seed's README has it, without its usage demo."""
    if not SEED_README.is_file():
        missing(
            f"the seed README ({SEED_README})",
            "clone the repository beside shared/seed/ or set SEED_README to its path",
        )
    text = SEED_README.read_text(encoding="utf-8")
    section = text.split("### Frontend Implementation (JavaScript)", 1)
    assert len(section) == 2, "seed README has no 'Frontend Implementation (JavaScript)' section"
    block = re.search(r"```javascript\n(.*?)```", section[1], re.DOTALL)
    assert block is not None, "no ```javascript block under the Frontend Implementation heading"
    code = block.group(1)
    cut = re.search(r"^// Usage example", code, re.MULTILINE)
    assert cut is not None, "the seed's client code no longer has its '// Usage example' line"
    source = code[: cut.start()]
    assert "class ChargingClient" in source
    return source


def page_html(client_source: str) -> bytes:
    """A tiny page: the seed's class in a script tag, and a <pre> the test fills with results."""
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>seed ChargingClient</title>"
        "</head><body><h1>seed ChargingClient</h1><pre id='out'>loading</pre>"
        f"<script>{client_source}</script>"
        "<script>document.getElementById('out').textContent = 'ready';</script>"
        "</body></html>"
    ).encode()


@contextlib.asynccontextmanager
async def page_server(body: bytes) -> AsyncIterator[str]:
    """A loopback HTTP/1.1 server answering ``GET /`` with ``body``; yields its origin."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            path = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b""
            if path == b"/":
                status, content, ctype = b"200 OK", body, b"text/html; charset=utf-8"
            else:
                status, content, ctype = b"404 Not Found", b"not found\n", b"text/plain"
            writer.write(
                b"HTTP/1.1 "
                + status
                + b"\r\nContent-Type: "
                + ctype
                + b"\r\nContent-Length: "
                + str(len(content)).encode()
                + b"\r\nConnection: close\r\n\r\n"
                + content
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


def chromium_executable() -> str:
    """Debian's Chromium (never a download); absent: skipped outside CI, failed in CI."""
    if not CHROMIUM.exists():
        missing(
            f"Chromium ({CHROMIUM})", "apt-get install chromium (.ci/run does), or set CHROMIUM"
        )
    return str(CHROMIUM)


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    executable = chromium_executable()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            await browser.close()


@contextlib.asynccontextmanager
async def simulated_charge_point(
    server: RunningServer, cp_id: str
) -> AsyncIterator[SimulatedChargePoint]:
    """The project's simulator connected to the server, booted; stopped and reaped after."""
    stop = asyncio.Event()
    connected: asyncio.Future[SimulatedChargePoint] = asyncio.get_running_loop().create_future()

    def on_connect(cp: SimulatedChargePoint) -> None:
        if not connected.done():
            connected.set_result(cp)

    runner = asyncio.create_task(
        run_charge_point(
            server.ocpp_url,
            cp_id,
            meter_interval=0.5,
            reconnect=False,
            stop=stop,
            on_connect=on_connect,
        )
    )
    try:
        cp = await asyncio.wait_for(asyncio.shield(connected), 10)
        await asyncio.wait_for(cp.booted.wait(), 10)
        yield cp
    finally:
        stop.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(runner, 10)
        if not runner.done():
            runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner


FLOW = """
async ({wsUrl, token, cpId, idTag}) => {
  const out = document.getElementById('out');
  const client = new ChargingClient(wsUrl, token);
  await client.connect();
  const start = await client.startCharging(cpId, 1, idTag);
  if (!start.data.success) { throw new Error('start failed: ' + JSON.stringify(start)); }
  const transactionId = start.data.transactionId;
  const stop = await client.stopCharging(cpId, transactionId);
  out.textContent = JSON.stringify({start, stop}, null, 2);
  client.ws.close();
  return {start, stop};
}
"""

REFUSED = """
async ({wsUrl, token}) => {
  const client = new ChargingClient(wsUrl, token);
  try {
    await client.connect();
    return {connected: true};
  } catch (event) {
    const code = await new Promise((resolve) => {
      if (client.ws.readyState === WebSocket.CLOSED) { resolve(null); return; }
      client.ws.addEventListener('close', (e) => resolve(e.code));
    });
    document.getElementById('out').textContent = 'refused: ' + event.type;
    return {connected: false, eventType: event.type, readyState: client.ws.readyState, code};
  }
}
"""


async def test_seed_charging_client_starts_and_stops_in_chromium(tmp_path: Path) -> None:
    """The seed's ChargingClient, unchanged, authenticates, starts and stops a real session."""
    body = page_html(seed_client_class())
    async with (
        page_server(body) as origin,
        running_server(make_settings(tmp_path, frontend_url=origin)) as server,
        simulated_charge_point(server, CP) as cp,
        chromium() as browser,
    ):
        page = await browser.new_page()
        console: list[str] = []
        errors: list[str] = []

        def on_console(message: ConsoleMessage) -> None:
            console.append(f"{message.type}: {message.text}")

        page.on("console", on_console)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        response = await page.goto(origin + "/")
        assert response is not None and response.ok
        assert await page.text_content("#out") == "ready"

        token = server.token("browser-user", id_tag=ID_TAG)
        result: dict[str, Any] = await page.evaluate(
            FLOW, {"wsUrl": server.app_url, "token": token, "cpId": CP, "idTag": ID_TAG}
        )
        start, stop = result["start"], result["stop"]
        assert start["type"] == "start_charging_response", start
        assert start["data"]["success"] is True, start
        transaction_id = start["data"]["transactionId"]
        assert isinstance(transaction_id, int)
        assert start["data"]["connectorId"] == 1
        assert start["id"] == "2"  # the seed's client numbers its messages; auth was "1"
        assert stop["type"] == "stop_charging_response", stop
        assert stop["data"]["success"] is True, stop
        assert stop["data"]["transactionId"] == transaction_id
        assert stop["id"] == "3"

        await asyncio.wait_for(cp.transaction_stopped.wait(), 15)
        assert cp.transactions == {}
        shown = orjson.loads(await page.text_content("#out") or "null")
        assert shown["start"]["data"]["transactionId"] == transaction_id
        await page.screenshot(path=str(SCREENSHOT), full_page=True)
        assert errors == [], errors
        # The pushes reached the seed's switch in handleMessage (it logs them).
        assert any(line.startswith("log: Status update:") for line in console), console


async def test_seed_client_twice_in_a_row_starts_two_real_charges(tmp_path: Path) -> None:
    """Two page loads within the idempotency window run the seed's start/stop flow with the
    same message ids ("2" start, "3" stop) and the same start: each run is a new charge (a new
    RemoteStart and a new transaction), not the first run's stopped transaction replayed."""
    body = page_html(seed_client_class())
    async with (
        page_server(body) as origin,
        running_server(make_settings(tmp_path, frontend_url=origin)) as server,
        simulated_charge_point(server, CP) as cp,
        chromium() as browser,
    ):
        page = await browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        token = server.token("browser-user", id_tag=ID_TAG)
        started: list[int] = []
        for _ in range(2):
            response = await page.goto(origin + "/")  # a fresh page: a new ChargingClient
            assert response is not None and response.ok
            cp.transaction_started.clear()
            cp.transaction_stopped.clear()
            result: dict[str, Any] = await page.evaluate(
                FLOW, {"wsUrl": server.app_url, "token": token, "cpId": CP, "idTag": ID_TAG}
            )
            start, stop = result["start"], result["stop"]
            assert (start["id"], stop["id"]) == ("2", "3")
            assert start["data"]["success"] is True, start
            assert stop["data"]["success"] is True, stop
            # The charge point was really asked, and really started and stopped.
            await asyncio.wait_for(cp.transaction_started.wait(), 15)
            await asyncio.wait_for(cp.transaction_stopped.wait(), 15)
            started.append(start["data"]["transactionId"])
        assert started[0] != started[1], started
        rows = transactions_in_db(server.settings.database_url)
        assert sorted(row[0] for row in rows) == sorted(started)
        assert errors == [], errors


async def test_page_from_another_origin_cannot_connect(tmp_path: Path) -> None:
    """A page served from an origin not in FRONTEND_URL gets its WebSocket refused with 403."""
    body = page_html(seed_client_class())
    async with (
        page_server(body) as allowed,
        page_server(body) as foreign,
        running_server(make_settings(tmp_path, frontend_url=allowed)) as server,
        chromium() as browser,
    ):
        assert foreign != allowed
        page = await browser.new_page()
        console: list[str] = []
        page.on("console", lambda message: console.append(message.text))
        await page.goto(foreign + "/")
        async with page.expect_event("websocket") as socket_info:
            result = await page.evaluate(
                REFUSED, {"wsUrl": server.app_url, "token": server.token("intruder")}
            )
        websocket = await socket_info.value
        assert websocket.url == server.app_url
        assert result["connected"] is False, result
        assert result["eventType"] == "error"
        assert result["code"] in (None, 1006), result
        # Chromium reports the handshake's status: "... Unexpected response code: 403"
        assert any("403" in line for line in console), json.dumps(console)
        # and nobody was let in
        stats = server.app.app_server.stats()
        assert stats["totalConnections"] == 0, stats
        assert foreign not in server.settings.frontend_url
