"""The deployment files, checked as far as this machine can: there is no Docker engine here, so
the image is never built by CI. What is checked instead: HAProxy's own parser accepts the
load balancer's configuration (Debian's ``haproxy -c``), compose.yaml parses and uses only
settings, commands and flags the service has, and the Dockerfile's entry point, command,
ports and health check name real things (``tests/e2e/test_deploy.py`` runs the health check
and HAProxy's routing against a real server)."""

from __future__ import annotations

import fnmatch
import subprocess
import tomllib

from charging_api.config import Settings, load_settings
from charging_api.http.routes import PATHS
from tests.deployfiles import (
    HAPROXY_CFG,
    PENDING_KEYS,
    ROOT,
    compose,
    dockerfile,
    dockerfile_env,
    haproxy_binary,
    haproxy_config,
    healthcheck_code,
    parse_command,
    settings_keys,
)
from tests.external import missing

GATEWAYS = ("gateway-1", "gateway-2")
API_NODES = ("api-1", "api-2")
NODES = (*GATEWAYS, *API_NODES)


def test_compose_runs_the_cluster_topology_on_official_images() -> None:
    """Redis, PostgreSQL, a migrate job, two gateways, two api nodes and HAProxy; the
    third-party services are official images, the nodes are built from this Dockerfile."""
    services = compose()["services"]
    assert set(services) == {"redis", "postgres", "migrate", "haproxy", *NODES}
    for name, image in (("redis", "redis:"), ("postgres", "postgres:"), ("haproxy", "haproxy:")):
        assert services[name]["image"].startswith(image), services[name]
        assert "/" not in services[name]["image"]  # an official (library) image
    for name in ("migrate", *NODES):
        assert services[name]["build"] == ".", name


def test_compose_nodes_run_real_commands() -> None:
    """``migrate`` runs ``db upgrade``; gateways and api nodes ``serve`` in their role; every
    command parses with the real CLI."""
    services = compose()["services"]
    assert services["migrate"]["command"] == ["db", "upgrade"]
    assert services["migrate"]["restart"] == "no"
    args = parse_command(services["migrate"]["command"])
    assert (args.command, args.action) == ("db", "upgrade")
    for name in NODES:
        command = services[name]["command"]
        role = "gateway" if name in GATEWAYS else "api"
        assert command == ["serve", "--role", role], name
        assert parse_command(command).command == "serve"


def test_compose_sets_only_settings_the_service_reads() -> None:
    """Every environment key of a node is one ``Settings`` reads (or one of issue 12's cluster
    keys built alongside); each node has its own NODE_ID and shares DATABASE_URL and REDIS_URL."""
    known = settings_keys() | PENDING_KEYS
    services = compose()["services"]
    node_ids = set()
    for name in ("migrate", *NODES):
        env = services[name]["environment"]
        assert sorted(set(env) - known) == [], name
        assert env["DATABASE_URL"].startswith("postgresql+asyncpg://")
        assert "@postgres:5432/" in env["DATABASE_URL"]
        assert env["REDIS_URL"] == "redis://redis:6379/0"
        assert env["WS_API_HOST"] == env["OCPP_HOST"] == "0.0.0.0"
        node_ids.add(env["NODE_ID"])
    assert node_ids == {"migrate", *NODES}
    image_env = dockerfile_env()
    python_keys = {"PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED"}
    assert sorted(set(image_env) - settings_keys() - python_keys) == []


def test_compose_starts_nodes_after_the_migration_and_their_engines() -> None:
    """The nodes wait for ``db upgrade`` to have succeeded (they refuse a schema that is
    behind) and for Redis; migrate waits for PostgreSQL; HAProxy for healthy nodes."""
    services = compose()["services"]
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in NODES:
        deps = services[name]["depends_on"]
        assert deps["migrate"] == {"condition": "service_completed_successfully"}, name
        assert deps["redis"] == {"condition": "service_healthy"}, name
    assert services["haproxy"]["depends_on"] == {
        name: {"condition": "service_healthy"} for name in NODES
    }
    for name in ("redis", "postgres"):
        assert services[name]["healthcheck"]["test"][0] == "CMD"


def test_haproxy_accepts_its_configuration() -> None:
    """Debian's HAProxy parses the file; its only warnings are the compose host names, which
    do not resolve outside the compose network."""
    binary = haproxy_binary()
    if binary is None:
        missing("haproxy", "apt-get install haproxy (.ci/run installs it)")
    done = subprocess.run(
        [binary, "-c", "-f", str(HAPROXY_CFG)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    assert "Configuration file is valid" in done.stdout + done.stderr
    warnings = [line for line in done.stderr.splitlines() if "[WARNING]" in line]
    assert all("could not resolve address" in line for line in warnings), done.stderr


def test_haproxy_routes_ocpp_to_gateways_and_the_rest_to_api_nodes() -> None:
    """``/ocpp/`` goes to the gateways' OCPP port, everything else to the api nodes' app port;
    every server is a compose service, checked with GET /health on the port it serves (a
    gateway answers /health on its OCPP port, its app port is not open); compose
    mounts this file where the official image reads it and publishes the bind port."""
    config = haproxy_config()
    assert "acl ocpp path_beg /ocpp/" in config.frontend
    assert "use_backend gateways if ocpp" in config.frontend
    assert "default_backend api" in config.frontend
    services = compose()["services"]
    for backend, names in (("gateways", GATEWAYS), ("api", API_NODES)):
        found = config.backends[backend]
        assert "http-check send meth GET uri /health" in found.lines
        assert "/health" in PATHS
        assert [server[0] for server in found.servers] == list(names)
        for name, host, port, check_port in found.servers:
            env = services[host]["environment"]
            door = "OCPP_PORT" if backend == "gateways" else "WS_API_PORT"
            assert port == int(env[door]), name
            assert (check_port or port) == int(env[door]), name
    haproxy = services["haproxy"]
    assert (
        f"./{HAPROXY_CFG.relative_to(ROOT)}:/usr/local/etc/haproxy/haproxy.cfg:ro"
        in haproxy["volumes"]
    )
    assert f"{config.bind_port()}:{config.bind_port()}" in haproxy["ports"]


def test_websocket_tunnels_outlive_the_ping_intervals() -> None:
    """An idle WebSocket carries only pings: HAProxy's tunnel timeout is above both ping
    intervals (the app door's HEARTBEAT_INTERVAL, OCPP_PING_INTERVAL), with room for a lost one."""
    defaults = load_settings(_env_file=None)  # the defaults, not a local .env
    tunnel = haproxy_config().timeout("tunnel")
    assert tunnel >= 2 * max(defaults.heartbeat_interval, defaults.ocpp_ping_interval)
    assert haproxy_config().timeout("client") >= defaults.heartbeat_interval


def test_dockerfile_builds_a_wheel_and_runs_it_slim_and_unprivileged() -> None:
    """Two stages on python:3.11-slim; the runtime runs as a named non-root user; it exposes
    the two doors' default ports; what it copies exists here."""
    instructions = dockerfile()
    froms = [i.arguments for i in instructions if i.keyword == "FROM"]
    assert froms == ["python:3.11-slim AS builder", "python:3.11-slim"]
    runtime = [i for i in instructions if i.stage == 1]
    (user,) = [i.arguments for i in runtime if i.keyword == "USER"]
    assert user not in {"root", "0"} and any(
        user in i.arguments for i in runtime if i.keyword == "RUN"
    )
    (expose,) = [i.arguments.split() for i in runtime if i.keyword == "EXPOSE"]
    fields = Settings.model_fields
    assert expose == [str(fields["ws_api_port"].default), str(fields["ocpp_port"].default)]
    for copy in (i for i in instructions if i.keyword == "COPY" and "--from" not in i.arguments):
        for source in copy.arguments.split()[:-1]:
            assert (ROOT / source).exists(), source
    assert any("pip wheel" in i.arguments for i in instructions if i.stage == 0)


def test_dockerfile_runs_the_real_console_script_and_health_path() -> None:
    """ENTRYPOINT is the project's console script, CMD parses as ``serve``, and the health
    check is Python (the slim image has no curl) asking the app port for /health."""
    instructions = dockerfile()
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    (entrypoint,) = [i.exec_form() for i in instructions if i.keyword == "ENTRYPOINT"]
    assert entrypoint == ["charging-api"] and "charging-api" in scripts
    (command,) = [i.exec_form() for i in instructions if i.keyword == "CMD"]
    assert parse_command(command).command == "serve"
    code = healthcheck_code()
    compile(code, "HEALTHCHECK", "exec")
    assert "/health" in code and "WS_API_PORT" in code


def test_the_build_context_leaves_out_local_state() -> None:
    """The virtualenv, node_modules, a local database, .env (secrets) and git stay out of
    the image's build context."""
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", "node_modules", "data", ".env", ".git"} <= ignored


def test_the_wheel_ships_every_migration_file() -> None:
    """``db upgrade`` from an installed wheel needs Alembic's env.py and every revision:
    each file under storage/migrations is matched by a package-data pattern."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = project["tool"]["setuptools"]["package-data"]["charging_api"]
    package = ROOT / "src" / "charging_api"
    files = [
        p.relative_to(package).as_posix()
        for p in (package / "storage" / "migrations").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    ]
    assert any(f.startswith("storage/migrations/versions/rev") for f in files)
    unmatched = [f for f in files if not any(fnmatch.fnmatch(f, p) for p in patterns)]
    assert unmatched == []
