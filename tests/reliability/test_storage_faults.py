"""Storage faults under a real ``charging-api serve`` process: another process holding SQLite's
write lock, database files deleted or made read-only while it runs, an unusable database at
start-up. Both doors must keep answering, failures must be answered (not frozen) and visible
on ``/health``, and the service must recover when the database does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ocpp.exceptions import InternalError
from ocpp.v16 import call

from charging_api.storage import SqlStore
from tests.peers.py_charge_point import connected_charge_point
from tests.reliability.helpers import ago, app_at, transactions_in_db
from tests.serverproc import CHARGING_API, ServerProcess, _inherited_env

CP, TAG = "CP-STORE", "TAG-STORE"


@contextlib.contextmanager
def write_lock_held(path: Path) -> Iterator[sqlite3.Connection]:
    """This test process holding the database's write lock, as a CLI command's write would;
    ROLLBACK on the yielded connection releases it early."""
    other = sqlite3.connect(path, isolation_level=None, timeout=10)
    try:
        other.execute("BEGIN IMMEDIATE")
        yield other
    finally:
        if other.in_transaction:
            other.execute("ROLLBACK")
        other.close()


async def health(proc: ServerProcess) -> tuple[int, dict[str, Any]]:
    status, body = await proc.get_json("/health", timeout=5)
    return status, body


async def until_healthy(proc: ServerProcess) -> dict[str, Any]:
    """Poll /health (bounded) until it is 200 again: the server finds out by itself."""
    for _ in range(200):  # 200 x 25 ms: 5 s
        status, body = await health(proc)
        if status == 200:
            return body
        await asyncio.sleep(0.025)
    raise AssertionError(f"/health still {status}: {body}")


async def test_a_held_write_lock_freezes_neither_door_and_the_start_lands_after_it(
    tmp_path: Path,
) -> None:
    """Another process holds the write lock while a StartTransaction waits for it: /health,
    another charge point's Heartbeat and an app request are answered meanwhile; the start
    lands once the lock is freed."""
    db = tmp_path / "held.db"
    url = f"sqlite:///{db}"
    # A generous lock timeout: this test holds the lock until it has seen both doors answer.
    env = {"DATABASE_URL": f"{url}?timeout=60", "LOG_LEVEL": "DEBUG"}  # (the wait is logged)
    async with ServerProcess(tmp_path, env) as proc:
        async with (
            connected_charge_point(proc.ocpp_url, CP) as cp,
            connected_charge_point(proc.ocpp_url, "CP-OTHER") as other_cp,
            app_at(proc.app_url, proc.token("driver")) as app,
        ):
            with write_lock_held(db) as other:
                since = len(proc.log_lines)
                start = asyncio.create_task(cp.start_tx(1, TAG, 1000))
                await proc.wait_for_log("is locked by another process", since=since)

                status, body = await health(proc)
                assert (status, body["status"], body["storage"]) == (200, "healthy", "ok")
                # (A charge point sends one CALL at a time: another one asks.)
                beat = await asyncio.wait_for(other_cp.call(call.Heartbeat(), suppress=False), 5)
                assert beat.current_time
                state = await app.request("get_state", timeout=5)
                assert state["data"]["transactions"] == []
                assert not start.done()  # still waiting for the lock, not failed

                other.execute("ROLLBACK")
                started = await asyncio.wait_for(start, 10)
        assert transactions_in_db(url) == [(started.transaction_id, CP, 1, None, 1000, None, 0)]


async def test_a_lock_held_too_long_is_answered_and_reported_then_the_retry_lands(
    tmp_path: Path,
) -> None:
    """Held past the lock timeout: the charge point gets an InternalError CALLERROR and the app
    INTERNAL_ERROR while the lock is still held, /health is 503 (storage failing: locked);
    after the release /health recovers by itself and the charge point's retry lands."""
    db = tmp_path / "held.db"
    url = f"sqlite:///{db}"
    async with ServerProcess(tmp_path, {"DATABASE_URL": f"{url}?timeout=0.2"}) as proc:
        async with (
            connected_charge_point(proc.ocpp_url, CP) as cp,
            app_at(proc.app_url, proc.token("driver", id_tag="TAG-NEW")) as app,
        ):
            stamp = ago(5)
            with write_lock_held(db):
                with pytest.raises(InternalError):
                    await asyncio.wait_for(cp.start_tx(1, TAG, 1000, timestamp=stamp), 10)
                # The app's start registers the token's new id tag first: that write fails.
                reply = await app.request(
                    "start_charging_request", {"chargePointId": CP, "connectorId": 2}, timeout=10
                )
                assert reply["type"] == "error" and reply["error"]["code"] == "INTERNAL_ERROR"
                status, body = await health(proc)
                assert status == 503
                assert (body["status"], body["storage"], body["storageError"]) == (
                    "unhealthy",
                    "failing",
                    "locked",
                )
                assert transactions_in_db(url) == []

            body = await until_healthy(proc)
            assert body["storage"] == "ok" and "storageError" not in body
            retry = await asyncio.wait_for(cp.start_tx(1, TAG, 1000, timestamp=stamp), 10)
        assert transactions_in_db(url) == [(retry.transaction_id, CP, 1, None, 1000, None, 0)]


async def test_deleted_database_files_fail_writes_visibly(tmp_path: Path) -> None:
    """The database files deleted under the running server: the next StartTransaction gets an
    InternalError CALLERROR (not an id that is on no disk) and /health is 503, "missing"."""
    db = tmp_path / "gone.db"
    async with (
        ServerProcess(tmp_path, {"DATABASE_URL": f"sqlite:///{db}"}) as proc,
        connected_charge_point(proc.ocpp_url, CP) as cp,
    ):
        assert (await health(proc))[0] == 200
        for suffix in ("", "-wal", "-shm"):
            os.unlink(f"{db}{suffix}")
        with pytest.raises(InternalError):
            await asyncio.wait_for(cp.start_tx(1, TAG, 1000), 10)
        status, body = await health(proc)
        assert (status, body["storage"], body["storageError"]) == (503, "failing", "missing")
        beat = await asyncio.wait_for(cp.call(call.Heartbeat(), suppress=False), 5)
        assert beat.current_time  # the door itself still answers


def _chattr(flag: str, *paths: Path) -> None:
    subprocess.run(["chattr", flag, *map(str, paths)], check=True, capture_output=True)


@contextlib.contextmanager
def read_only(*paths: Path) -> Iterator[None]:
    """Files nobody may write, not even through descriptors already open (as on a file system
    remounted read-only): the immutable attribute. Needs root and ``chattr`` (e2fsprogs), as
    ``.ci/run`` has; elsewhere the test is skipped with a line saying so (failed under CI)."""
    if os.geteuid() != 0 or shutil.which("chattr") is None:
        reason = "making open files read-only needs root and chattr (apt-get install e2fsprogs)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        _chattr("+i", *paths)
    except subprocess.CalledProcessError as exc:
        reason = f"chattr +i refused here ({exc.stderr.decode().strip()})"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield
    finally:
        _chattr("-i", *paths)


async def test_database_made_read_only_while_running_fails_visibly_and_recovers(
    tmp_path: Path,
) -> None:
    """The database made read-only under the running server: writes are answered InternalError,
    /health is 503 while they fail and 200 again, by itself, once the files are writable."""
    db = tmp_path / "ro.db"
    url = f"sqlite:///{db}"
    async with ServerProcess(tmp_path, {"DATABASE_URL": url}) as proc:
        async with connected_charge_point(proc.ocpp_url, CP) as cp:
            stamp = ago(5)
            with read_only(db, Path(f"{db}-wal")):
                with pytest.raises(InternalError):
                    await asyncio.wait_for(cp.start_tx(1, TAG, 1000, timestamp=stamp), 10)
                status, body = await health(proc)
                assert (status, body["storage"]) == (503, "failing")
                assert body["storageError"] in ("io_error", "read_only")
            await until_healthy(proc)
            retry = await asyncio.wait_for(cp.start_tx(1, TAG, 1000, timestamp=stamp), 10)
        assert transactions_in_db(url) == [(retry.transaction_id, CP, 1, None, 1000, None, 0)]


def run_cli(tmp_path: Path, database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``charging-api ARGS`` on ``database_url`` (for ``serve``: one expected to stop)."""
    env = _inherited_env() | {
        "DATABASE_URL": database_url,
        "WS_API_HOST": "127.0.0.1",
        "WS_API_PORT": "0",
        "OCPP_HOST": "127.0.0.1",
        "OCPP_PORT": "0",
        "JWT_SECRET": "storage-faults-secret-0123456789-abcdef",
        "APP_ENV": "test",
    }
    return subprocess.run(
        [str(CHARGING_API), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )


def test_a_missing_database_path_at_start_up_is_one_line_and_exit_1(tmp_path: Path) -> None:
    """A database path that cannot exist (a file where its directory should be): one line on
    stderr naming the path, exit code 1, no traceback."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    path = blocker / "charging.db"
    done = run_cli(tmp_path, f"sqlite:///{path}", "serve")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1, done.stderr
    assert len(lines) == 1 and str(path) in lines[0] and "missing" in lines[0], lines
    assert "Traceback" not in done.stderr


async def test_a_read_only_database_at_start_up_is_one_line_and_exit_1(tmp_path: Path) -> None:
    """An existing database nobody may write: one line on stderr naming the path (read only),
    exit code 1, no traceback."""
    path = tmp_path / "ro.db"
    made = SqlStore(f"sqlite:///{path}")  # a database this version made and left
    await made.start()
    await made.close()
    path.chmod(0o444)
    with read_only(path) if os.geteuid() == 0 else contextlib.nullcontext():
        done = await asyncio.to_thread(run_cli, tmp_path, f"sqlite:///{path}", "serve")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1, done.stderr
    assert len(lines) == 1 and str(path) in lines[0] and "read only" in lines[0], lines
    assert "Traceback" not in done.stderr


async def test_a_cli_write_that_cannot_get_the_lock_is_one_line_and_exit_1(
    tmp_path: Path,
) -> None:
    """The other side of a held lock: a CLI command whose write cannot get it within the lock
    timeout prints one line naming the database (locked) and exits 1; later it succeeds."""
    path = tmp_path / "cli.db"
    url = f"sqlite:///{path}?timeout=0.2"
    made = SqlStore(url)
    await made.start()
    await made.close()
    with write_lock_held(path):
        done = await asyncio.to_thread(run_cli, tmp_path, url, "idtags", "add", "TAG-CLI")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1, done.stderr
    assert len(lines) == 1 and str(path) in lines[0] and "locked" in lines[0], lines
    again = await asyncio.to_thread(run_cli, tmp_path, url, "idtags", "add", "TAG-CLI")
    assert again.returncode == 0, again.stderr
