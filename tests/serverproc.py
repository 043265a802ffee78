"""``charging-api serve`` as a real subprocess, for tests that need a process boundary
(signals, SIGKILL and restart on the same database, the console script itself).

Usage::

    async with ServerProcess(tmp_path, {"LOG_LEVEL": "DEBUG"}) as proc:
        proc.app_url, proc.ocpp_url, proc.http_url      # ws://127.0.0.1:P/ws, .../ocpp, http://...
        token = proc.token("alice", id_tag="TAG-A", role="admin")
        status, body = await proc.get_json("/health")
        code = await proc.stop(signal.SIGKILL)            # -9; SIGTERM drains and gives 0
        await proc.restart()                              # same ports, same SQLite file

Ports: the first start binds port 0 for both doors and reads the bound ports from the
``serving app API on HOST:PORT ... OCPP 1.6-J on HOST:PORT`` log line, which is also the readiness
signal (no polling, no port race); a restart asks for those same ports again. Every line the
process writes to stderr is kept in ``log_lines`` and can be awaited with :meth:`wait_for_log`.
The child runs in its own session (process group) with ``cwd=tmp_path``, so it reads no ``.env`` of
the repository, and ``__aexit__`` kills whatever is left of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import orjson

from charging_api.api.auth import issue_token
from charging_api.config import Settings

SECRET = "serverproc-secret-0123456789-abcdefghijkl"
CHARGING_API = Path(sys.executable).parent / "charging-api"
READY = re.compile(
    r"serving app API on (?P<app_host>\S+):(?P<app_port>\d+) .*OCPP 1\.6-J on "
    r"(?P<ocpp_host>\S+):(?P<ocpp_port>\d+)"
)
MAX_LOG_LINES = 200_000  # a runaway child must not eat the test's memory


def _inherited_env() -> dict[str, str]:
    """os.environ without any key that configures the service (tests say what they want)."""
    keys = {name.upper() for name in Settings.model_fields} | {"NODE_ENV"}
    return {k: v for k, v in os.environ.items() if k.upper() not in keys}


class ServerProcess:
    """One ``charging-api serve`` child process on loopback; see the module docstring."""

    def __init__(
        self,
        tmp_path: Path,
        env: Mapping[str, str] | None = None,
        *,
        ready_timeout: float = 15.0,
    ) -> None:
        self.tmp_path = tmp_path
        self.ready_timeout = ready_timeout
        self.env: dict[str, str] = {
            "WS_API_HOST": "127.0.0.1",
            "WS_API_PORT": "0",
            "OCPP_HOST": "127.0.0.1",
            "OCPP_PORT": "0",
            "DATABASE_URL": f"sqlite:///{tmp_path / 'serverproc.db'}",
            "JWT_SECRET": SECRET,
            "FRONTEND_URL": "http://localhost:3000",
            "APP_ENV": "test",
            "LOG_LEVEL": "INFO",
        }
        self.env.update(env or {})
        self.secret = self.env["JWT_SECRET"]
        self.app_port = 0
        self.ocpp_port = 0
        self.proc: asyncio.subprocess.Process | None = None
        self.log_lines: list[str] = []
        self.stdout_lines: list[str] = []
        self._log_changed = asyncio.Event()
        self._readers: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------------ addresses

    @property
    def app_url(self) -> str:
        return f"ws://127.0.0.1:{self.app_port}/ws"

    @property
    def ocpp_url(self) -> str:
        return f"ws://127.0.0.1:{self.ocpp_port}/ocpp"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.app_port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.returncode

    def token(
        self,
        user: str,
        *,
        id_tag: str | None = None,
        role: str | None = None,
        expires_in: float = 3600,
    ) -> str:
        """A JWT signed with this server's JWT_SECRET (HS256, no issuer/audience)."""
        return issue_token(self.secret, user, expires_in=expires_in, id_tag=id_tag, role=role)

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> ServerProcess:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Start the child and return once it logged that both doors listen."""
        assert self.proc is None or self.proc.returncode is not None, "already running"
        assert CHARGING_API.exists(), f"{CHARGING_API} missing: install the project (make test)"
        env = _inherited_env() | self.env
        if self.app_port:
            env["WS_API_PORT"] = str(self.app_port)
        if self.ocpp_port:
            env["OCPP_PORT"] = str(self.ocpp_port)
        first_line = len(self.log_lines)
        self.proc = await asyncio.create_subprocess_exec(
            str(CHARGING_API),
            "serve",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=self.tmp_path,
            env=env,
            start_new_session=True,
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers = [
            asyncio.create_task(self._read(self.proc.stderr, self.log_lines)),
            asyncio.create_task(self._read(self.proc.stdout, self.stdout_lines)),
        ]
        try:
            line = await self.wait_for_log(READY, self.ready_timeout, since=first_line)
        except BaseException:
            await self.close()
            raise
        match = READY.search(line)
        assert match is not None
        self.app_port = int(match["app_port"])
        self.ocpp_port = int(match["ocpp_port"])

    async def _read(self, stream: asyncio.StreamReader, into: list[str]) -> None:
        """Keep reading (a full pipe would block the child); keep the first MAX_LOG_LINES."""
        while raw := await stream.readline():
            if len(into) < MAX_LOG_LINES:
                into.append(raw.decode(errors="replace").rstrip("\n"))
                self._log_changed.set()
        self._log_changed.set()

    def _exited(self) -> bool:
        return all(task.done() for task in self._readers)

    async def wait_for_log(
        self, pattern: str | re.Pattern[str], timeout: float = 10.0, *, since: int = 0
    ) -> str:
        """The first stderr line from index ``since`` on that contains/matches ``pattern``.

        Raises AssertionError (with the log) if the process ends or ``timeout`` passes first.
        """
        regex = pattern if isinstance(pattern, re.Pattern) else re.compile(re.escape(pattern))
        seen = since
        try:
            async with asyncio.timeout(timeout):
                while True:
                    self._log_changed.clear()
                    for index in range(seen, len(self.log_lines)):
                        if regex.search(self.log_lines[index]):
                            return self.log_lines[index]
                    seen = len(self.log_lines)
                    if self._exited():
                        raise AssertionError(
                            f"charging-api exited before logging {regex.pattern!r}:\n{self.log()}"
                        )
                    await self._log_changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"no log line {regex.pattern!r} within {timeout}s:\n{self.log()}"
            ) from None

    def log(self) -> str:
        """Everything the process wrote to stderr so far."""
        return "\n".join(self.log_lines)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the server process (only to it, not to its process group)."""
        assert self.proc is not None, "not started"
        if self.proc.returncode is None:
            self.proc.send_signal(sig)

    async def wait(self, timeout: float = 15.0) -> int:
        """Wait for the process to end (and its output to be read); its exit code."""
        assert self.proc is not None, "not started"
        async with asyncio.timeout(timeout):
            code = await self.proc.wait()
            await asyncio.gather(*self._readers)
        return code

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send ``sig`` and wait for the exit code (negative: killed by that signal)."""
        self.kill(sig)
        return await self.wait(timeout)

    async def terminate_and_wait(self, timeout: float = 15.0) -> int:
        """SIGTERM (a graceful drain) and the exit code; 0 when the drain went well."""
        return await self.stop(signal.SIGTERM, timeout)

    async def restart(self, env: Mapping[str, str] | None = None) -> None:
        """Stop (SIGTERM) if running, then start again on the same ports and database."""
        if self.proc is not None and self.proc.returncode is None:
            await self.terminate_and_wait()
        self.env.update(env or {})
        await self.start()

    async def close(self) -> None:
        """Kill what is left (the whole process group) and reap it; safe to call twice."""
        proc = self.proc
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await proc.wait()
        for task in self._readers:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)

    # ------------------------------------------------------------------ plain HTTP

    async def get(
        self, path: str, headers: Mapping[str, str] | None = None, timeout: float = 10.0
    ) -> tuple[int, dict[str, str], bytes]:
        """GET ``path`` from the app door: (status, lower-cased headers, body)."""
        return await http_get(self.http_url + path, headers, timeout)

    async def get_json(
        self, path: str, headers: Mapping[str, str] | None = None, timeout: float = 10.0
    ) -> tuple[int, Any]:
        status, _, body = await self.get(path, headers, timeout)
        return status, orjson.loads(body)


async def http_get(
    url: str, headers: Mapping[str, str] | None = None, timeout: float = 10.0
) -> tuple[int, dict[str, str], bytes]:
    """A minimal HTTP/1.1 GET over a fresh connection (``Connection: close``)."""
    parts = urlsplit(url)
    assert parts.scheme == "http" and parts.hostname and parts.port, url
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    lines = [f"GET {target} HTTP/1.1", f"Host: {parts.netloc}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        try:
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            status = int(status_line.split(" ", 2)[1])
            reply_headers: dict[str, str] = {}
            for line in header_lines:
                if ":" in line:
                    name, _, value = line.partition(":")
                    reply_headers[name.strip().lower()] = value.strip()
            length = reply_headers.get("content-length")
            body = await (reader.readexactly(int(length)) if length else reader.read())
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
    return status, reply_headers, body
