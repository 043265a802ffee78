"""The ``charging-api`` console script as an operator runs it: real processes, real exit codes."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import jwt

from charging_api.config import Settings
from tests.serverproc import CHARGING_API, ServerProcess

SECRET = "cli-secret-0123456789-abcdefghijklmnopq"


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """os.environ without service settings, plus a tmp database, a secret and ``extra``."""
    keys = {name.upper() for name in Settings.model_fields} | {"NODE_ENV"}
    env = {k: v for k, v in os.environ.items() if k.upper() not in keys}
    env.update(
        {
            "DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}",
            "JWT_SECRET": SECRET,
            "APP_ENV": "test",
        }
    )
    env.update(extra)
    return env


def run_cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    assert CHARGING_API.exists(), f"{CHARGING_API} missing: install the project (make test)"
    return subprocess.run(
        [str(CHARGING_API), *args],
        env=cli_env(tmp_path, **env),
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_token_prints_a_jwt_that_verifies_with_the_secret(tmp_path: Path) -> None:
    """``token --user --id-tag --role`` prints one HS256 JWT with sub, idTag, role and exp."""
    before = int(time.time())
    done = run_cli(tmp_path, "token", "--user", "u", "--id-tag", "T", "--role", "admin")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1, done.stdout
    claims = jwt.decode(lines[0], SECRET, algorithms=["HS256"], options={"require": ["exp"]})
    assert claims["sub"] == "u"
    assert claims["idTag"] == "T"
    assert claims["role"] == "admin"
    assert claims["exp"] >= before + 24 * 3600  # JWT_EXPIRES_IN defaults to the seed's 24h


def test_bad_port_exits_2_with_one_line_naming_the_key(tmp_path: Path) -> None:
    """``WS_API_PORT=abc serve`` stops at start-up: exit 2, one stderr line naming WS_API_PORT."""
    done = run_cli(tmp_path, "serve", WS_API_PORT="abc")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert "WS_API_PORT" in lines[0]
    assert done.stdout == ""


def test_production_refuses_the_example_secret(tmp_path: Path) -> None:
    """Production with the seed's example JWT_SECRET exits 2 with one line naming JWT_SECRET."""
    done = run_cli(
        tmp_path, "serve", APP_ENV="production", JWT_SECRET="your-super-secret-jwt-key"
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert "JWT_SECRET" in lines[0]
    assert "your-super-secret-jwt-key" not in lines[0]


def test_idtags_added_are_listed_for_their_user(tmp_path: Path) -> None:
    """``idtags add TAG --user U`` persists; ``idtags list --user U`` shows it, not other users'."""
    added = run_cli(tmp_path, "idtags", "add", "TAG-CLI-1", "--user", "U1")
    assert added.returncode == 0, added.stderr
    other = run_cli(tmp_path, "idtags", "add", "TAG-CLI-2", "--user", "U2", "--status", "Blocked")
    assert other.returncode == 0, other.stderr
    listed = run_cli(tmp_path, "idtags", "list", "--user", "U1")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines() == ["TAG-CLI-1\tAccepted"]
    listed_other = run_cli(tmp_path, "idtags", "list", "--user", "U2")
    assert listed_other.stdout.splitlines() == ["TAG-CLI-2\tBlocked"]


async def test_serve_answers_health_in_the_seed_shape_and_exits_0_on_sigterm(
    tmp_path: Path,
) -> None:
    """``serve`` in a real process answers /health as the seed shows and drains on SIGTERM."""
    async with ServerProcess(tmp_path) as proc:
        status, headers, body = await proc.get("/health")
        assert status == 200
        assert headers["content-type"].startswith("application/json")
        _, health = await proc.get_json("/health")
        # The seed's shape, plus our storage state (see docs/reliability.md).
        assert set(health) == {"status", "timestamp", "version", "uptime", "websocket", "storage"}
        assert health["status"] == "healthy" and health["storage"] == "ok"
        assert isinstance(health["timestamp"], str) and health["timestamp"].endswith("Z")
        assert isinstance(health["version"], str) and health["version"]
        assert isinstance(health["uptime"], int | float) and health["uptime"] >= 0
        assert health["websocket"] == {
            "totalConnections": 0,
            "authenticatedConnections": 0,
            "totalUsers": 0,
            "gatewayConnections": 0,
        }
        assert body  # the raw body was JSON too (parsed above)
        code = await proc.stop(signal.SIGTERM)
        assert code == 0, proc.log()
        assert any("stopped" in line for line in proc.log_lines), proc.log()
