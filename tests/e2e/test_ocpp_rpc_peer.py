"""An independent OCPP-J implementation against the central system: npm ``ocpp-rpc`` in strict mode.

``tests/peers/ocpp_rpc_cp.mjs`` is a charge point built on ocpp-rpc's ``RPCClient`` with
``strictMode: true``: every CALL and CALLRESULT our server sends is validated against the OCA
OCPP 1.6 JSON schemas that ocpp-rpc ships. It runs as a Node.js subprocess and prints one JSON
line per event; the test waits on those lines (no sleeps) while an app client drives the flow.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson

from tests.conftest import RunningServer, app_client
from tests.external import missing

ROOT = Path(__file__).resolve().parents[2]
PEER = ROOT / "tests" / "peers" / "ocpp_rpc_cp.mjs"
CP = "CP_RPC_STRICT_1"
LINE_LIMIT = 1000  # lines a peer may print before a test gives up on it


class NodePeer:
    """The Node.js charge point process and the JSON lines it printed."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: list[dict[str, Any]] = []
        self.stderr = b""
        self._stderr_task = asyncio.create_task(self._drain_stderr())

    async def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        self.stderr = await self.proc.stderr.read()

    @property
    def failures(self) -> list[dict[str, Any]]:
        return [event for event in self.events if event["event"] == "failure"]

    def explain(self) -> str:
        return f"peer events: {self.events!r}\npeer stderr: {self.stderr.decode(errors='replace')}"

    async def expect(self, event: str, timeout: float = 15) -> dict[str, Any]:
        """The next line whose ``event`` is ``event``; fails at EOF or after ``timeout`` s."""
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            for _ in range(LINE_LIMIT):
                raw = await self.proc.stdout.readline()
                if not raw:
                    raise AssertionError(f"peer ended before {event!r}\n{self.explain()}")
                line: dict[str, Any] = orjson.loads(raw)
                self.events.append(line)
                if line["event"] == event:
                    return line
        raise AssertionError(f"no {event!r} in {LINE_LIMIT} lines\n{self.explain()}")

    async def wait(self, timeout: float = 15) -> int:
        """Read the rest of stdout, then the exit code."""
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            rest = await self.proc.stdout.read()
            self.events.extend(orjson.loads(line) for line in rest.splitlines() if line.strip())
            code = await self.proc.wait()
            await self._stderr_task
        return code


@contextlib.asynccontextmanager
async def node_peer(endpoint: str, identity: str, mode: str) -> AsyncIterator[NodePeer]:
    node = shutil.which("node")
    if node is None:
        missing("node (on PATH)", "apt-get install nodejs npm (.ci/run does)")
    if not (ROOT / "node_modules" / "ocpp-rpc").is_dir():
        missing("node_modules/ocpp-rpc", "run `npm install` (make test does)")
    proc = await asyncio.create_subprocess_exec(
        node,
        str(PEER),
        endpoint,
        identity,
        mode,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    peer = NodePeer(proc)
    try:
        yield peer
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        with contextlib.suppress(asyncio.CancelledError):
            await peer._stderr_task


async def test_strict_ocpp_rpc_charge_point_runs_a_remote_session(server: RunningServer) -> None:
    """Every frame of a remote start/meter/stop session satisfies ocpp-rpc's OCPP 1.6 schemas."""
    async with node_peer(server.ocpp_url, CP, "session") as peer:
        booted = await peer.expect("booted")
        assert booted["identity"] == CP
        boot = next(e for e in peer.events if e["event"] == "boot")
        assert boot["result"]["status"] == "Accepted"
        assert boot["result"]["interval"] > 0

        token = server.token("rpc-user", id_tag="RPC_TAG_1")
        async with app_client(server, token) as app:
            start = await app.request(
                "start_charging_request", {"chargePointId": CP, "connectorId": 1}
            )
            assert start["type"] == "start_charging_response", start
            assert start["data"]["success"] is True, start
            transaction_id = start["data"]["transactionId"]
            assert isinstance(transaction_id, int)

            remote_start = await peer.expect("remote_start")
            assert remote_start["params"] == {"connectorId": 1, "idTag": "RPC_TAG_1"}
            started = await peer.expect("started")
            assert started["transactionId"] == transaction_id
            assert started["idTagInfo"]["status"] == "Accepted"

            charging = await app.push(
                "charging_status_update", where=lambda m: m["data"]["status"] == "Charging"
            )
            assert charging["data"] == {
                "chargePointId": CP,
                "connectorId": 1,
                "status": "Charging",
                "transactionId": transaction_id,
            }
            meter = await app.push("meter_values_update")
            assert meter["data"]["chargePointId"] == CP
            assert meter["data"]["transactionId"] == transaction_id
            assert meter["data"]["meterValue"]["energyImportKWh"] == 15.234
            assert meter["data"]["meterValue"]["powerKw"] == 7.4
            await peer.expect("meter_sent")

            stop = await app.request(
                "stop_charging_request", {"chargePointId": CP, "transactionId": transaction_id}
            )
            assert stop["type"] == "stop_charging_response", stop
            assert stop["data"]["success"] is True, stop
            assert stop["data"]["transactionId"] == transaction_id

            remote_stop = await peer.expect("remote_stop")
            assert remote_stop["params"] == {"transactionId": transaction_id}
            ended = await app.push(
                "transaction_update", where=lambda m: m["data"]["status"] == "Stopped"
            )
            assert ended["data"]["transactionId"] == transaction_id
            assert ended["data"]["energyKWh"] == 7.0
            await peer.expect("finished")

        code = await peer.wait()
        assert code == 0, peer.explain()
        assert peer.failures == [], peer.explain()
        statuses = [e["status"] for e in peer.events if e["event"] == "status"]
        assert statuses == ["Available", "Preparing", "Charging", "Finishing", "Available"]


async def test_strict_client_data_transfer_gets_unknown_vendor_id(server: RunningServer) -> None:
    """DataTransfer from an unknown vendor is answered UnknownVendorId, valid per the schema."""
    async with node_peer(server.ocpp_url, "CP_RPC_STRICT_DT", "datatransfer") as peer:
        answer = await peer.expect("data_transfer")
        assert answer["result"] == {"status": "UnknownVendorId"}
        heartbeat = next(e for e in peer.events if e["event"] == "heartbeat")
        assert heartbeat["result"]["currentTime"].endswith("Z")
        code = await peer.wait()
        assert code == 0, peer.explain()
        assert peer.failures == [], peer.explain()
