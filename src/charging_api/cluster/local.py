"""``make cluster``: the compose topology on one machine, without containers.

N gateway and M api processes (``charging-api serve --role ...``) on the machine's Redis and
PostgreSQL, behind Debian's HAProxy on one port: ``/ocpp/`` goes to the gateways, everything else
(``/ws``, ``/health``, ``/api/...``, the console) to the api nodes. The tests of
``tests/cluster`` run the same class, so what a developer starts is what is tested.

Every node binds port 0 and reports its ports in its "serving ..." log line (the readiness
signal); HAProxy is configured once they are known. The load balancer's own port is the one
asked for (0: a free one, found by binding and releasing it: the only race, retried).

HAProxy's settings, and why (deploy/haproxy/haproxy.cfg carries the same for compose):
``timeout tunnel`` 1 h, far above the app's 30 s and OCPP's 60 s WebSocket pings, so only a
dead peer ends an upgraded connection; health checks ``GET /health`` every second, a node out
after two failures, so a killed node stops getting new connections within about two seconds;
``option redispatch`` with retries on a failed connection or an empty response, so a request
that meets a dead node before the check noticed is sent to another one (HAProxy retries only
requests it may: not a body it already sent).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: "serving OCPP 1.6-J on H:P ..." / "serving app API on H:P ..." (app.py's readiness lines).
_READY = re.compile(r"serving (?P<door>app API|OCPP 1\.6-J) on (?P<host>[^\s:]+):(?P<port>\d+)")
#: The settings a node's environment must not inherit from the caller's (each node's own).
_PER_NODE = ("ROLE", "NODE_ID", "WS_API_HOST", "WS_API_PORT", "OCPP_HOST", "OCPP_PORT")


def haproxy_config(port: int, gateways: Sequence[int], apis: Sequence[int]) -> str:
    """The load balancer in front of the nodes (loopback only)."""
    lines = [
        "global",
        "    maxconn 4096",  # within a container's usual open-file limit (2 fds per connection)
        "defaults",
        "    mode http",
        "    option redispatch",
        "    retries 3",
        "    retry-on conn-failure empty-response response-timeout",
        "    timeout connect 2s",
        "    timeout client 90s",
        "    timeout server 90s",
        "    timeout tunnel 1h",
        "    timeout client-fin 5s",
        "    timeout http-request 10s",
        "frontend charging",
        f"    bind 127.0.0.1:{port}",
        "    acl is_ocpp path_beg /ocpp/",
        "    use_backend gateways if is_ocpp",
        "    default_backend apis",
    ]
    for name, ports in (("gateways", gateways), ("apis", apis)):
        lines += [
            f"backend {name}",
            "    balance roundrobin",
            "    option httpchk GET /health",
            "    http-check expect status 200",
        ]
        prefix = name[0]
        for index, server_port in enumerate(ports, 1):
            lines.append(
                f"    server {prefix}{index} 127.0.0.1:{server_port} check inter 1s fall 2 rise 1"
            )
    return "\n".join(lines) + "\n"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(eq=False)
class Node:
    """One ``serve --role`` child process."""

    role: str
    node_id: str
    env: dict[str, str]
    port: int = 0  # the door it serves (OCPP for a gateway, app for an api node)
    proc: asyncio.subprocess.Process | None = None
    lines: list[str] = field(default_factory=list)
    _reader: asyncio.Task[None] | None = None
    _ready: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self, program: Sequence[str], timeout: float) -> None:
        self._ready.clear()
        self.proc = await asyncio.create_subprocess_exec(
            *program,
            "serve",
            "--role",
            self.role,
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        self._reader = asyncio.create_task(self._read(self.proc))
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            tail = "\n".join(self.lines[-20:])
            raise RuntimeError(
                f"{self.node_id} did not start within {timeout} s:\n{tail}"
            ) from None

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            if len(self.lines) < 100_000:
                self.lines.append(line)
            found = _READY.search(line)
            if found is not None:
                self.port = int(found["port"])
                self._ready.set()
        if not self._ready.is_set():
            self._ready.set()  # exited before ready: start() reports it
            self.port = 0

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    async def wait(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.kill()
            return await self.proc.wait()
        finally:
            if self._reader is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(self._reader, 5)


class LocalCluster:
    """Gateways, api nodes and HAProxy as child processes; ``async with`` starts and stops them."""

    def __init__(
        self,
        workdir: Path,
        env: Mapping[str, str],
        *,
        gateways: int = 2,
        apis: int = 2,
        port: int = 0,
        haproxy: str | None = None,
        program: Sequence[str] | None = None,
        ready_timeout: float = 30.0,
    ) -> None:
        self.workdir = workdir
        self.base_env = {k: v for k, v in env.items() if k.upper() not in _PER_NODE}
        self.program = list(program or [str(Path(sys.executable).parent / "charging-api")])
        self.haproxy_bin = haproxy or shutil.which("haproxy") or "/usr/sbin/haproxy"
        self.ready_timeout = ready_timeout
        self.port = port
        self.nodes = [self._node("gateway", i) for i in range(1, gateways + 1)]
        self.nodes += [self._node("api", i) for i in range(1, apis + 1)]
        self.haproxy: asyncio.subprocess.Process | None = None

    def _node(self, role: str, index: int) -> Node:
        node_id = f"{role}-{index}"
        env = dict(self.base_env)
        env.update(
            ROLE=role,
            NODE_ID=node_id,
            WS_API_HOST="127.0.0.1",
            WS_API_PORT="0",
            OCPP_HOST="127.0.0.1",
            OCPP_PORT="0",
        )
        return Node(role, node_id, env)

    @property
    def gateways(self) -> list[Node]:
        return [n for n in self.nodes if n.role == "gateway"]

    @property
    def apis(self) -> list[Node]:
        return [n for n in self.nodes if n.role == "api"]

    def node(self, node_id: str) -> Node:
        return next(n for n in self.nodes if n.node_id == node_id)

    @property
    def app_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def ocpp_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ocpp"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> LocalCluster:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """The first gateway alone (it creates an empty schema), then the others together,
        then HAProxy once every node's port is known."""
        first, *rest = self.nodes
        await first.start(self.program, self.ready_timeout)
        await asyncio.gather(*(n.start(self.program, self.ready_timeout) for n in rest))
        for node in self.nodes:
            if not node.port:
                tail = "\n".join(node.lines[-20:])
                raise RuntimeError(f"{node.node_id} exited before it was ready:\n{tail}")
        await self.start_haproxy()

    async def start_haproxy(self) -> None:
        for _attempt in range(5):
            port = self.port or free_port()
            config = self.workdir / "haproxy.cfg"
            config.write_text(
                haproxy_config(port, [n.port for n in self.gateways], [n.port for n in self.apis])
            )
            self.haproxy = await asyncio.create_subprocess_exec(
                self.haproxy_bin,
                "-f",
                str(config),
                "-db",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
            if await self._listening(port):
                self.port = port
                return
            said = b""
            if self.haproxy.stderr is not None and self.haproxy.returncode is not None:
                said = await self.haproxy.stderr.read()
            await self._stop_haproxy()
            if self.port or said:
                raise RuntimeError(
                    f"HAProxy ({self.haproxy_bin}) did not listen on 127.0.0.1:{port}: "
                    + said.decode(errors="replace").strip()[-500:]
                )
        raise RuntimeError(f"HAProxy ({self.haproxy_bin}) did not listen on 127.0.0.1")

    async def _listening(self, port: int, timeout: float = 10.0) -> bool:
        """Until HAProxy accepts on ``port`` or exits (bounded)."""
        assert self.haproxy is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline and self.haproxy.returncode is None:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)  # polling a port that is not open yet: bounded
                continue
            writer.close()
            return True
        return False

    async def _stop_haproxy(self) -> None:
        if self.haproxy is not None and self.haproxy.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.haproxy.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.haproxy.wait(), 5)
            if self.haproxy.returncode is None:
                self.haproxy.kill()
                await self.haproxy.wait()

    async def close(self) -> None:
        await self._stop_haproxy()
        for node in self.nodes:
            node.kill(signal.SIGTERM)
        for node in self.nodes:
            if node.proc is not None:
                await node.wait()


def main(argv: Sequence[str] | None = None) -> int:
    """``make cluster``: run until Ctrl-C, printing where to connect."""
    parser = argparse.ArgumentParser(prog="python -m charging_api.cluster.local")
    parser.add_argument("--gateways", type=int, default=2)
    parser.add_argument("--apis", type=int, default=2)
    parser.add_argument("--port", type=int, default=8080, help="the load balancer's port")
    args = parser.parse_args(argv)
    env = dict(os.environ)
    env.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
    env.setdefault("DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")
    workdir = Path(os.environ.get("CLUSTER_DIR", "data/cluster"))
    workdir.mkdir(parents=True, exist_ok=True)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        cluster = LocalCluster(workdir, env, gateways=args.gateways, apis=args.apis, port=args.port)
        async with cluster:
            for node in cluster.nodes:
                print(f"{node.node_id}: 127.0.0.1:{node.port} (pid {node.proc and node.proc.pid})")
            print(f"load balancer: apps {cluster.app_url}, charge points {cluster.ocpp_url}/{{id}}")
            print(f"REDIS_URL={env['REDIS_URL']} DATABASE_URL={env['DATABASE_URL']}; Ctrl-C stops")
            await stop.wait()

    asyncio.run(run())
    return 0


if __name__ == "__main__":  # pragma: no cover - make cluster
    raise SystemExit(main())
