"""The processes a run needs (the server under test or a peer, the Node load-generator workers)
and what /proc says about them: CPU ticks, resident memory, the whole machine's busy time.

Every wait here is bounded; every process started here is stopped here, by its own pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
PROJECT = BENCH_DIR.parent
LOADGEN = BENCH_DIR / "node" / "loadgen.cjs"
CLK_TCK = os.sysconf("SC_CLK_TCK")

#: Environment keys passed to every child; everything else is set explicitly per child.
_PASS_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "NODE_PATH", "SYSTEMROOT")


def now_us() -> int:
    """CLOCK_MONOTONIC in microseconds: the clock the Node workers stamp with."""
    return time.monotonic_ns() // 1000


def raise_nofile() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (inherited by every child); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _child_limits() -> None:  # pragma: no cover - runs in the child between fork and exec
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def base_env(**extra: str) -> dict[str, str]:
    env = {key: os.environ[key] for key in _PASS_ENV if key in os.environ}
    env.update(extra)
    return env


def node_binary() -> str:
    node = shutil.which("node")
    if node is None:
        raise BenchError("node is not on PATH (the load generators and the ocpp-rpc peer need it)")
    return node


def check_node_modules() -> None:
    """The workers need ``ws`` and the peer needs ``ocpp-rpc``, from the project's node_modules."""
    script = "for (const m of ['ws', 'ocpp-rpc']) require.resolve(m);"
    done = subprocess.run(
        [node_binary(), "-e", script],
        cwd=PROJECT,
        env=base_env(),
        capture_output=True,
        timeout=30,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(
            "node cannot resolve 'ws' and 'ocpp-rpc' from the project's node_modules: run "
            "`npm install` (make bench does) — " + done.stderr.decode(errors="replace")[-300:]
        )


class BenchError(Exception):
    """A run could not be carried out; the message says why."""


# ----------------------------------------------------------------------------- /proc


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process (all its threads), in clock ticks."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = sum(values[:8])
    return total - idle, total


def tcp_ext_counters() -> dict[str, int]:
    """The kernel's TcpExt counters (ListenOverflows, ListenDrops, ...), machine-wide."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    counters: dict[str, int] = {}
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            counters.update(
                zip(names.split()[1:], (int(v) for v in values.split()[1:]), strict=False)
            )
    return counters


def run_delay_ns(pid: int) -> int:
    """Time the process's threads spent runnable but waiting for a CPU (schedstat), in ns."""
    total = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int(stat.read_text().split()[1])
    return total


@dataclass
class CpuWindow:
    """CPU used by some processes and by the whole machine over a wall-clock window."""

    pids: dict[str, list[int]]
    started: float = 0.0
    ticks: dict[str, int] = field(default_factory=dict)
    machine: tuple[int, int] = (0, 0)
    result: dict[str, float] = field(default_factory=dict)

    def _read(self) -> dict[str, int]:
        read: dict[str, int] = {}
        for name, pids in self.pids.items():
            total = 0
            waited = 0
            for pid in pids:
                with contextlib.suppress(OSError, ValueError):
                    total += cpu_ticks(pid)
                    waited += run_delay_ns(pid)
            read[name] = total
            read[f"{name}Wait"] = waited
        return read

    def start(self) -> None:
        self.started = time.monotonic()
        self.ticks = self._read()
        self.machine = machine_ticks()

    def stop(self) -> dict[str, float]:
        """Cores used per group over the window, plus ``machine`` and ``other`` (everyone else)."""
        wall = max(time.monotonic() - self.started, 1e-3)
        after = self._read()
        busy, total = machine_ticks()
        cpus = os.cpu_count() or 1
        result = {name: (after[name] - self.ticks[name]) / CLK_TCK / wall for name in self.pids}
        for name in self.pids:
            # Cores' worth of threads that were runnable but not running (CPU contention).
            key = f"{name}Wait"
            result[key] = (after[key] - self.ticks[key]) / 1e9 / wall
        busy_delta, total_delta = busy - self.machine[0], max(total - self.machine[1], 1)
        result["machine"] = busy_delta / total_delta * cpus
        result["other"] = max(result["machine"] - sum(result[n] for n in self.pids), 0.0)
        result["seconds"] = wall
        self.result = result
        return result


# --------------------------------------------------------------------------- servers


@dataclass
class ServerProcess:
    """The server under test or a peer, as a subprocess with its output in a log file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    log_path: Path
    ports: dict[str, int]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _spawn(self) -> subprocess.Popen[bytes]:
        with self.log_path.open("wb") as log:
            return subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_child_limits,
            )

    async def start(self, ready_timeout: float = 30.0) -> None:
        try:
            self.proc = self._spawn()
        except OSError as exc:
            raise BenchError(f"cannot start {self.name} ({' '.join(self.argv)}): {exc}") from None
        deadline = time.monotonic() + ready_timeout
        for port in self.ports.values():
            while True:
                if self.proc.poll() is not None:
                    raise BenchError(f"{self.name} exited at start-up:\n{self.log_tail()}")
                if await _accepts(port):
                    break
                if time.monotonic() > deadline:
                    self.stop()
                    raise BenchError(f"{self.name} not listening on {port}:\n{self.log_tail()}")
                await asyncio.sleep(0.05)

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


async def _accepts(port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def http_get(port: int, path: str, headers: Mapping[str, str] | None = None) -> Any:
    """GET a JSON route of the server (HTTP/1.1, Connection: close); the decoded body."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    try:
        head = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{head}\r\n".encode()
        )
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    _, _, body = raw.partition(b"\r\n\r\n")
    return json.loads(body)


# --------------------------------------------------------------------------- workers


class WorkerError(BenchError):
    pass


@dataclass
class Worker:
    """One Node load-generator process, driven over stdin/stdout JSON lines."""

    index: int
    job_path: Path
    log_path: Path
    proc: asyncio.subprocess.Process | None = None
    pending: list[dict[str, Any]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, job: Mapping[str, Any]) -> None:
        self.job_path.write_text(json.dumps(job))
        log = self.log_path.open("wb")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                node_binary(),
                str(LOADGEN),
                str(self.job_path),
                cwd=PROJECT,
                env=base_env(),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                limit=64 * 1024 * 1024,
                preexec_fn=_child_limits,
            )
        finally:
            log.close()

    async def event(self, kind: str, timeout: float) -> dict[str, Any]:
        """The next event of ``kind`` (an ``error`` event or an exit raises WorkerError)."""
        assert self.proc is not None and self.proc.stdout is not None
        for index, early in enumerate(self.pending):
            if early.get("event") == kind:
                return self.pending.pop(index)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WorkerError(f"worker {self.index}: no {kind!r} within {timeout:.0f} s")
            try:
                line = await asyncio.wait_for(self.proc.stdout.readline(), remaining)
            except TimeoutError:
                raise WorkerError(
                    f"worker {self.index}: no {kind!r} within {timeout:.0f} s"
                ) from None
            if not line:
                raise WorkerError(f"worker {self.index} exited before {kind!r}:\n{self.log_tail()}")
            message: dict[str, Any] = json.loads(line)
            if message.get("event") == "error":
                raise WorkerError(f"worker {self.index}: {message.get('message')}"[:2000])
            if message.get("event") == kind:
                return message
            self.pending.append(message)

    async def send(self, command: Mapping[str, Any]) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(command) + "\n").encode())
        await self.proc.stdin.drain()

    async def close(self, timeout: float = 15.0) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


@dataclass
class WorkerGroup:
    """Several workers started together; events are awaited from all of them."""

    workdir: Path
    label: str
    workers: list[Worker] = field(default_factory=list)

    @property
    def pids(self) -> list[int]:
        return [w.pid for w in self.workers]

    async def start(self, jobs: Iterable[Mapping[str, Any]]) -> None:
        for index, job in enumerate(jobs):
            worker = Worker(
                index,
                self.workdir / f"{self.label}-job{index}.json",
                self.workdir / f"{self.label}-worker{index}.log",
            )
            self.workers.append(worker)
            await worker.start({"maxLifetimeMs": 540_000, **job})

    async def all(self, kind: str, timeout: float) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(w.event(kind, timeout) for w in self.workers)))

    async def broadcast(self, command: Mapping[str, Any]) -> None:
        await asyncio.gather(*(w.send(command) for w in self.workers))

    async def close(self) -> None:
        await asyncio.gather(*(w.close() for w in self.workers), return_exceptions=True)
        for worker in self.workers:
            if worker.proc is not None and worker.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.kill()


def split(items: list[Any], parts: int) -> list[list[Any]]:
    """Round-robin ``items`` into ``parts`` non-empty lists (fewer if there are fewer items)."""
    parts = max(1, min(parts, len(items)))
    return [items[i::parts] for i in range(parts)]


def python_binary() -> str:
    return sys.executable
