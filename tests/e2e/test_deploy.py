"""What the deployment files say, run for real on this machine (no Docker engine here): the
image's HEALTHCHECK program against a real server, and Debian's HAProxy with the shipped
configuration in front of a real server, routing ``/ocpp/`` to the OCPP door and the rest to
the app door, WebSocket upgrades included. Only the server addresses and the bind address are
rewritten to loopback ports (the compose host names do not resolve here)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import websockets
from websockets import Subprotocol

from charging_api.client import ChargingClient
from tests.deployfiles import HAPROXY_CFG, haproxy_binary, healthcheck_code
from tests.external import missing
from tests.serverproc import ServerProcess, http_get


def _run_healthcheck(port: int) -> subprocess.CompletedProcess[str]:
    """The image's HEALTHCHECK program, as Docker runs it, with WS_API_PORT=``port``."""
    return subprocess.run(
        [sys.executable, "-c", healthcheck_code()],
        env={"WS_API_PORT": str(port)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        stdin=subprocess.DEVNULL,
    )


async def test_the_image_healthcheck_passes_on_a_serving_node_and_fails_without_one(
    tmp_path: Path,
) -> None:
    """Exit 0 while the node answers /health, non-zero once it is gone."""
    async with ServerProcess(tmp_path) as proc:
        port = proc.app_port
        passed = await asyncio.to_thread(_run_healthcheck, port)
        assert passed.returncode == 0, passed.stderr
    failed = await asyncio.to_thread(_run_healthcheck, port)
    assert failed.returncode != 0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _local_config(app_port: int, ocpp_port: int, bind_port: int) -> str:
    """The shipped haproxy.cfg with its compose addresses pointed at one local server: both
    gateways at its OCPP port, both api nodes at its app port, checks on its app port; no
    Docker DNS resolver."""
    ports = {"8081": str(ocpp_port), "8082": str(app_port)}
    lines: list[str] = []
    in_resolvers = False
    for line in HAPROXY_CFG.read_text(encoding="utf-8").splitlines():
        if line.startswith("resolvers "):
            in_resolvers = True
            continue
        if in_resolvers and line.startswith(" "):
            continue
        in_resolvers = False
        words = line.split()
        if words[:1] == ["bind"]:
            line = f"    bind 127.0.0.1:{bind_port}"
        elif words[:1] == ["default-server"]:
            line = line.split(" resolvers ")[0]
        elif words[:1] == ["server"]:
            _, port = words[2].rsplit(":", 1)
            words[2] = f"127.0.0.1:{ports[port]}"
            if "port" in words:
                at = words.index("port") + 1
                words[at] = ports[words[at]]
            line = "    " + " ".join(words)
        lines.append(line)
    return "\n".join(lines) + "\n"


def _find(tree: object, key: str) -> object:
    """The first value of ``key`` anywhere in a JSON tree."""
    if isinstance(tree, dict):
        if key in tree:
            return tree[key]
        tree = list(tree.values())
    if isinstance(tree, list):
        for item in tree:
            found = _find(item, key)
            if found is not None:
                return found
    return None


@contextlib.asynccontextmanager
async def haproxy(config: str, tmp_path: Path) -> AsyncIterator[None]:
    binary = haproxy_binary()
    if binary is None:
        missing("haproxy", "apt-get install haproxy (.ci/run installs it)")
    path = tmp_path / "haproxy.cfg"
    path.write_text(config, encoding="utf-8")
    log = (tmp_path / "haproxy.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        binary, "-db", "-f", str(path),
        stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
    )  # fmt: skip
    try:
        yield
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(10):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        log.close()


async def _wait_healthy(url: str, deadline: float = 15.0) -> dict[str, object]:
    """GET ``url`` until it answers 200 (HAProxy starting, its first checks), bounded."""
    last: object = None
    async with asyncio.timeout(deadline):
        while True:
            try:
                status, _, body = await http_get(url, timeout=2)
                if status == 200:
                    found: dict[str, object] = orjson.loads(body)
                    return found
                last = status
            except OSError as exc:
                last = exc
            await asyncio.sleep(0.1)  # polling a process we do not own, bounded above
    raise AssertionError(last)  # pragma: no cover - the timeout raises first


async def test_haproxy_with_the_shipped_config_routes_each_door(tmp_path: Path) -> None:
    """Through HAProxy: /health comes from the node; a charge point's WebSocket to /ocpp/{id}
    reaches the OCPP door (BootNotification accepted); an app's /ws reaches the app door
    (authenticated) and sees that charge point online."""
    async with ServerProcess(tmp_path) as proc:
        lb = _free_port()
        config = _local_config(proc.app_port, proc.ocpp_port, lb)
        assert "resolvers" not in config and config.count("127.0.0.1:") == 5, config
        async with haproxy(config, tmp_path):
            health = await _wait_healthy(f"http://127.0.0.1:{lb}/health")
            assert health["status"] == "healthy"

            async with websockets.connect(
                f"ws://127.0.0.1:{lb}/ocpp/CP-LB", subprotocols=[Subprotocol("ocpp1.6")]
            ) as cp:
                assert cp.subprotocol == "ocpp1.6"
                boot = {"chargePointVendor": "V", "chargePointModel": "M"}
                await cp.send(orjson.dumps([2, "b1", "BootNotification", boot]).decode())
                async with asyncio.timeout(10):
                    reply = orjson.loads(await cp.recv())
                assert reply[:2] == [3, "b1"] and reply[2]["status"] == "Accepted"

                token = proc.token("ops", role="admin")
                async with ChargingClient(f"ws://127.0.0.1:{lb}/ws", token, reconnect=False) as app:
                    assert app.session  # authenticated through the proxy
                    state = await app.get_state()
                    assert state is not None
                status, _, body = await http_get(
                    f"http://127.0.0.1:{lb}/api/stats", {"Authorization": f"Bearer {token}"}
                )
                assert status == 200
                assert _find(orjson.loads(body), "connectedChargePoints") == 1
        # HAProxy's own log (written as each request ends) names the backend of each path.
        log = (tmp_path / "haproxy.log").read_text(errors="replace")
        found = re.findall(r' (gateways|api)/\S+ .*"GET (\S+) HTTP', log)
        backends = {path: backend for backend, path in found}
        assert backends.get("/ocpp/CP-LB") == "gateways", log
        assert backends.get("/ws") == "api", log
