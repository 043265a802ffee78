"""The ``charging-api`` console script as an operator runs it: real processes, real exit codes."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import jwt
import pytest

from charging_api.config import Settings
from tests.serverproc import CHARGING_API, ServerProcess
from tests.serverproc import SECRET as SERVER_SECRET

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


def test_token_refuses_a_lifetime_past_year_9999(tmp_path: Path) -> None:
    """``token --expires-in 300000000000`` prints no token the server would choke on: exit 2,
    one line naming --expires-in."""
    done = run_cli(tmp_path, "token", "--user", "u", "--expires-in", "300000000000")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert "--expires-in" in lines[0] and "9999" in lines[0]


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
    done = run_cli(tmp_path, "serve", APP_ENV="production", JWT_SECRET="your-super-secret-jwt-key")
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


def test_idtags_add_refuses_a_tag_registered_in_another_case(tmp_path: Path) -> None:
    """``idtags add tag-a`` beside ``TAG-A`` is refused (exit 1, one line) and changes nothing."""
    assert run_cli(tmp_path, "idtags", "add", "TAG-A", "--user", "U1").returncode == 0
    refused = run_cli(tmp_path, "idtags", "add", "tag-a", "--user", "U2", "--status", "Blocked")
    assert refused.returncode == 1, refused
    assert refused.stderr.strip().splitlines() == [
        "charging-api: id tag tag-a is already registered as TAG-A (id tags are case-insensitive);"
        " to change it, run: charging-api idtags add TAG-A ..."
    ]
    assert run_cli(tmp_path, "idtags", "list", "--user", "U1").stdout.splitlines() == [
        "TAG-A\tAccepted"
    ]
    assert run_cli(tmp_path, "idtags", "list", "--user", "U2").stdout == ""
    again = run_cli(tmp_path, "idtags", "add", "TAG-A", "--user", "U1", "--status", "Blocked")
    assert again.returncode == 0, again.stderr
    assert run_cli(tmp_path, "idtags", "list", "--user", "U1").stdout.splitlines() == [
        "TAG-A\tBlocked"
    ]


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


def assert_one_line_exit_2(done: subprocess.CompletedProcess[str], *words: str) -> str:
    """Exit 2, no traceback, and the last stderr line is ``charging-api: ...`` naming ``words``."""
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("charging-api:")]
    assert len(errors) == 1, done.stderr
    assert done.stderr.splitlines()[-1] == errors[0]
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


def test_a_port_in_use_ends_start_up_with_one_line_naming_the_key(tmp_path: Path) -> None:
    """OCPP_PORT taken by another process: one line naming OCPP_PORT and what to do, exit 2."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli(
            tmp_path, "serve", OCPP_HOST="127.0.0.1", OCPP_PORT=str(port), WS_API_PORT="0"
        )
    line = assert_one_line_exit_2(done, "OCPP_PORT", str(port), "in use")
    assert "free port" in line


@pytest.mark.parametrize(
    ("url", "hint"),
    [
        ("mysql://u@localhost/db", "sqlite:///"),
        ("postgresql://u@localhost/db", "postgresql+asyncpg://"),
    ],
)
def test_an_unsupported_database_url_ends_start_up_with_one_line(
    tmp_path: Path, url: str, hint: str
) -> None:
    """A DATABASE_URL the store cannot open is refused before anything starts, naming the key."""
    done = run_cli(tmp_path, "serve", DATABASE_URL=url)
    assert_one_line_exit_2(done, "DATABASE_URL", "unsupported scheme", hint)


def test_postgresql_without_the_postgres_extra_says_how_to_install_it(tmp_path: Path) -> None:
    """With asyncpg not installed, a PostgreSQL URL names the extra to install; exit 2."""
    no_asyncpg = (  # sys.modules[name] = None: what Python reports as "not installed"
        "import sys\n"
        "sys.modules['asyncpg'] = None\n"
        "from charging_api.cli import main\n"
        "sys.exit(main(['serve']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", no_asyncpg],
        env=cli_env(tmp_path, DATABASE_URL="postgresql+asyncpg://postgres@127.0.0.1:5432/test"),
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert_one_line_exit_2(done, "DATABASE_URL", "postgres extra", "charging-api[postgres]")


def test_simulate_help_shows_the_configured_ocpp_url(tmp_path: Path) -> None:
    """``simulate`` defaults to OCPP_HOST/OCPP_PORT (environment or .env), and --help says so."""
    from_env = run_cli(tmp_path, "simulate", "--help", OCPP_PORT="9123")
    assert from_env.returncode == 0, from_env.stderr
    assert "ws://localhost:9123/ocpp" in " ".join(from_env.stdout.split())
    (tmp_path / ".env").write_text("OCPP_HOST=127.0.0.1\nOCPP_PORT=9456\n")
    from_file = run_cli(tmp_path, "simulate", "--help")
    assert "ws://127.0.0.1:9456/ocpp" in " ".join(from_file.stdout.split())


async def test_simulate_connects_to_the_configured_ocpp_door(tmp_path: Path) -> None:
    """With no --url, ``simulate`` reaches the server on OCPP_PORT (not a fixed :8081)."""
    async with ServerProcess(tmp_path) as server:
        port = urlsplit(server.ocpp_url).port
        assert port is not None
        simulator = await asyncio.create_subprocess_exec(
            str(CHARGING_API), "simulate", "--count", "1", "--prefix", "CFG-",
            env=cli_env(tmp_path / "sim", OCPP_HOST="127.0.0.1", OCPP_PORT=str(port)),
            cwd=tmp_path, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        try:
            await server.wait_for_log("CFG-0001 connected", timeout=30)
        finally:
            simulator.send_signal(signal.SIGTERM)
            await asyncio.wait_for(simulator.wait(), 30)


@pytest.mark.parametrize(("given", "seconds"), [("30m", 1800), ("24h", 86400), ("7d", 604800)])
def test_token_expires_in_takes_durations(tmp_path: Path, given: str, seconds: int) -> None:
    """``token --expires-in`` reads 30m / 24h / 7d as JWT_EXPIRES_IN does."""
    before = int(time.time())
    done = run_cli(tmp_path, "token", "--user", "u", "--expires-in", given)
    assert done.returncode == 0, done.stderr
    claims = jwt.decode(done.stdout.strip(), SECRET, algorithms=["HS256"])
    assert before + seconds <= claims["exp"] <= int(time.time()) + seconds


@pytest.mark.parametrize("given", ["0", "-5", "-30m", "0s"])
def test_token_expires_in_refuses_zero_and_negative(tmp_path: Path, given: str) -> None:
    """A token that is born expired (or lives forever by accident) is refused: exit 2, no JWT."""
    done = run_cli(tmp_path, "token", "--user", "u", f"--expires-in={given}")
    assert done.returncode == 2, done.stdout
    assert done.stdout == ""
    assert "--expires-in" in done.stderr and "positive duration" in done.stderr


@pytest.mark.parametrize("where", ["environment", ".env"])
def test_a_bad_node_env_is_reported_as_node_env(tmp_path: Path, where: str) -> None:
    """The seed's NODE_ENV with a bad value: the one line names NODE_ENV, the key the user set."""
    env = cli_env(tmp_path)
    del env["APP_ENV"]
    if where == ".env":
        (tmp_path / ".env").write_text("NODE_ENV=staging\n")
    else:
        env["NODE_ENV"] = "staging"
    done = subprocess.run(
        [str(CHARGING_API), "serve"],
        env=env,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    line = assert_one_line_exit_2(done, "NODE_ENV")
    assert "APP_ENV" not in line


def test_serve_help_points_to_the_configuration_table(tmp_path: Path) -> None:
    """``serve --help`` tells where every configuration key is documented."""
    done = run_cli(tmp_path, "serve", "--help")
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    assert "Configuration table of README.md" in text and ".env" in text


async def test_demo_runs_a_charge_from_start_to_stop_against_the_configured_server(
    tmp_path: Path,
) -> None:
    """``charging-api demo`` (the README's one-command check) starts, watches and stops a charge."""
    async with ServerProcess(tmp_path) as server:
        app_port, ocpp_port = urlsplit(server.app_url).port, urlsplit(server.ocpp_url).port
        env = cli_env(
            tmp_path / "demo",
            WS_API_HOST="127.0.0.1",
            WS_API_PORT=str(app_port),
            OCPP_HOST="127.0.0.1",
            OCPP_PORT=str(ocpp_port),
            JWT_SECRET=SERVER_SECRET,
        )
        demo = await asyncio.create_subprocess_exec(
            str(CHARGING_API), "demo", "--meter-updates", "1",
            env=env, cwd=tmp_path, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(demo.communicate(), 90)
    assert demo.returncode == 0, err.decode()
    text = out.decode()
    assert "start_charging_response" in text and "'success': True" in text
    assert "meter_values_update" in text
    assert "stop_charging_response" in text and "transaction_update" in text
