"""Scenario 5, the cluster (issue 12): what the bus between nodes costs, measured.

The same two loads run through two arms, in the same run, alternated (A, B, A, B while the time
budget allows) because the machine is shared and noisy; the medians over the runs of each arm
count:

* arm A: one ``charging-api serve`` (``ROLE=all``: both doors, in-process bus) on PostgreSQL;
* arm B: ``charging_api.cluster.local.LocalCluster``, 2 gateways + 2 api nodes behind Debian's
  HAProxy, on the same PostgreSQL server and on Redis (a dedicated database index, flushed).

Each arm gets a fresh PostgreSQL database, so only the bus (Redis, the extra hops, HAProxy)
differs. The loads are scenario 2's fan-out (charge points starting their sessions with their
owners' registered id tags, owners and admins reading the pushes) and scenario 1's ingest
(closed-loop MeterValues, owners connected), both without remote starts, so they need no routing.

CPU per message sums every process the arm needs to serve it: the node(s), and in arm B HAProxy
and the Redis server (its pid from ``INFO server``; it is the machine's shared Redis, so other
users' commands land in its figure too: arm A reads it as well, as that background). PostgreSQL's
backends for the arm's database are read too and reported beside (both arms pay them).

A part that fails is reported as such (an ``error`` for the load, ``problems`` for what the
figures show: e.g. pushes that do not reach the api nodes), never as a number.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from bench.procs import BenchError, base_env, http_get
from bench.scenarios import (
    SECRET,
    STATS_KEY,
    Context,
    LoadTarget,
    Measurement,
    fanout_load,
    fanout_pairs,
    ingest_figures,
    ingest_load,
    our_server,
    owner_tags,
    register_id_tags,
)

ARMS = {
    "A": "1 process (ROLE=all), PostgreSQL",
    "B": "2 gateways + 2 api nodes + HAProxy, PostgreSQL + Redis",
}
#: The figures whose medians are compared, per load: (key path, label).
HEADLINES: dict[str, list[tuple[tuple[str, ...], str]]] = {
    "fanout": [
        (("deliveriesPerSecond",), "deliveries/s"),
        (("latency", "p50"), "latency p50 ms"),
        (("latency", "p99"), "latency p99 ms"),
        (("lost",), "lost"),
        (("cpuUsPerUpdate",), "CPU µs/update"),
        (("cpuUsPerUpdateAboveIdle",), "  above idle"),
        (("cpuUsPerUpdateWithPostgres",), "  with PostgreSQL"),
        (("cpuUsPerDelivery",), "CPU µs/delivery"),
        (("redisCommandsPerUpdate",), "Redis cmds/update"),
        (("pgTransactionsPerUpdate",), "PG commits/update"),
        (("pgRowsWrittenPerUpdate",), "PG rows/update"),
    ],
    "ingest": [
        (("messagesPerSecond",), "MeterValues/s"),
        (("rtt", "p50"), "RTT p50 ms"),
        (("rtt", "p99"), "RTT p99 ms"),
        (("pushLatency", "p99"), "push p99 ms"),
        (("cpuUsPerMessage",), "CPU µs/MeterValues"),
        (("cpuUsPerMessageAboveIdle",), "  above idle"),
        (("cpuUsPerMessageWithPostgres",), "  with PostgreSQL"),
        (("redisCommandsPerMessage",), "Redis cmds/MV"),
        (("pgTransactionsPerMessage",), "PG commits/MV"),
        (("pgRowsWrittenPerMessage",), "PG rows/MV"),
    ],
}
#: Figures of the machine's shared Redis: A (which uses no Redis) measures the background, so
#: B - A is ours and B / A means nothing.
DIFFERENCES = frozenset({"redisCommandsPerUpdate", "redisCommandsPerMessage"})


def _sig(value: float) -> float:
    return float(f"{value:.4g}")


# ----------------------------------------------------------------------- services


def _local(pid: int) -> bool:
    """A process of this machine (whose /proc the CPU figures read)."""
    return Path(f"/proc/{pid}/stat").exists()


def _database_url(admin_dsn: str, name: str) -> str:
    parts = urlsplit(admin_dsn)
    return urlunsplit(("postgresql+asyncpg", parts.netloc, f"/{name}", parts.query, ""))


def _asyncpg_dsn(admin_dsn: str) -> str:
    parts = urlsplit(admin_dsn)
    return urlunsplit(("postgresql", parts.netloc, parts.path, parts.query, ""))


@contextlib.asynccontextmanager
async def fresh_database(admin_dsn: str, label: str) -> AsyncIterator[tuple[str, str]]:
    """A new PostgreSQL database (dropped afterwards): its name and SQLAlchemy URL."""
    try:
        import asyncpg  # type: ignore[import-untyped]
    except ImportError:
        raise BenchError(
            "asyncpg is missing: pip install -e '.[postgres]' (make bench does)"
        ) from None
    try:
        admin = await asyncpg.connect(_asyncpg_dsn(admin_dsn), timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        raise BenchError(f"PostgreSQL at {admin_dsn} does not answer ({exc})") from None
    name = f"bench_cluster_{label.lower()}_{secrets.token_hex(3)}"
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield name, _database_url(admin_dsn, name)
    finally:
        with contextlib.suppress(Exception):
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def postgres_backends(admin_dsn: str, database: str) -> list[int]:
    """Pids of the server processes (backends) connected to ``database``."""
    import asyncpg

    conn = await asyncpg.connect(_asyncpg_dsn(admin_dsn), timeout=5)
    try:
        rows = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1", database)
    finally:
        await conn.close()
    return [int(r["pid"]) for r in rows if _local(int(r["pid"]))]


async def _redis(url: str) -> Any:
    from redis import asyncio as aioredis
    from redis.exceptions import RedisError

    client = aioredis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        await client.ping()
    except (OSError, RedisError) as exc:
        await client.aclose()
        raise BenchError(f"Redis at {url} does not answer ({exc})") from None
    return client


async def redis_pid(url: str) -> int | None:
    """The Redis server's pid when it runs on this machine (``INFO server``), else None."""
    client = await _redis(url)
    try:
        info = await client.info("server")
    finally:
        await client.aclose()
    pid = int(info.get("process_id") or 0)
    return pid if pid and _local(pid) else None


async def flush_redis(url: str) -> None:
    """Empty the scenario's own Redis database (refused for index 0, the usual shared one)."""
    if urlsplit(url).path.strip("/") in ("", "0"):
        raise BenchError(f"{url}: give the cluster scenario a dedicated Redis database index")
    client = await _redis(url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()


# --------------------------------------------------------------------------- arms


@dataclass
class Running:
    """An arm's servers, up: where the loads go and what to read."""

    ocpp_url: str
    app_url: str
    workdir: Path
    server: dict[str, list[int]]
    stats_port: int
    extra: dict[str, list[int]]  # HAProxy
    alive: Callable[[], list[str]]  # server processes that exited
    #: Each node's port that answers /metrics (arm B; empty for the single process).
    metrics_ports: dict[str, int] = field(default_factory=dict)


@contextlib.asynccontextmanager
async def single_process(ctx: Context, database_url: str) -> AsyncIterator[Running]:
    server = our_server(ctx, "cluster-A", database_url=database_url, LOG_LEVEL="INFO")
    await server.start()
    try:
        yield Running(
            f"ws://127.0.0.1:{server.ports['ocpp']}/ocpp",
            f"ws://127.0.0.1:{server.ports['app']}/ws",
            server.log_path.parent,
            {"server": [server.pid]},
            server.ports["app"],
            {},
            lambda: [] if server.proc and server.proc.poll() is None else ["server"],
        )
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def local_cluster(ctx: Context, database_url: str) -> AsyncIterator[Running]:
    from charging_api.cluster.local import LocalCluster

    directory = ctx.fresh_dir("cluster-B")
    await flush_redis(ctx.redis_url)
    env = base_env(
        APP_ENV="development",
        DATABASE_URL=database_url,
        REDIS_URL=ctx.redis_url,
        JWT_SECRET=SECRET,
        # INFO: LocalCluster waits for each node's "serving ..." line (arm A logs at INFO too).
        LOG_LEVEL="INFO",
        MAX_CONNECTIONS="20000",
        STATS_API_KEY=STATS_KEY,
    )
    # --server-cmd "<cmd> serve": the nodes run "<cmd> serve --role ...".
    argv = ctx.server_argv
    program = argv[:-1] if argv and argv[-1] == "serve" else argv
    cluster = LocalCluster(directory, env, gateways=2, apis=2, program=program)
    try:
        try:
            await cluster.start()
        except RuntimeError as exc:
            raise BenchError(f"the cluster did not start: {exc}") from None
        assert cluster.haproxy is not None
        nodes = {n.node_id: [n.proc.pid] for n in cluster.nodes if n.proc is not None}
        yield Running(
            cluster.ocpp_url,
            cluster.app_url,
            directory,
            nodes,
            cluster.port,
            {"haproxy": [cluster.haproxy.pid]},
            lambda: [
                n.node_id for n in cluster.nodes if n.proc is None or n.proc.returncode is not None
            ],
            {n.node_id: n.port for n in cluster.nodes},
        )
    finally:
        await cluster.close()
        for node in cluster.nodes:
            with contextlib.suppress(OSError):
                (directory / f"{node.node_id}.log").write_text("\n".join(node.lines) + "\n")
        with contextlib.suppress(BenchError):
            await flush_redis(ctx.redis_url)


def _own(cpu: Mapping[str, float], arm: str) -> float:
    """Cores the arm needs: its servers, plus HAProxy and the Redis server in arm B."""
    return cpu["server"] + cpu.get("haproxy", 0.0) + (cpu.get("redis", 0.0) if arm == "B" else 0.0)


def _costs(
    cpu: Mapping[str, float],
    counters: Mapping[str, float],
    idle: Mapping[str, float] | None,
    seconds: float,
    count: float,
    arm: str,
) -> dict[str, float | None]:
    """Per message: CPU-µs (own; above the idle servers; with PostgreSQL's backends), Redis
    commands (the whole Redis server's), PostgreSQL transactions and rows written (the arm's
    database)."""
    if not count:
        return dict.fromkeys(
            ("cpuUs", "cpuUsAboveIdle", "cpuUsWithPostgres", "redis", "pgTx", "pgRows")
        )
    own = _own(cpu, arm)
    above = own - _own(idle, arm) if idle else None

    def per(value: float | None, scale: float = 1.0) -> float | None:
        return None if value is None else float(f"{value / count * scale:.4g}")

    return {
        "cpuUs": per(own * seconds, 1e6),
        "cpuUsAboveIdle": per(above * seconds if above is not None else None, 1e6),
        "cpuUsWithPostgres": per((own + cpu.get("postgres", 0.0)) * seconds, 1e6),
        "redis": per(counters.get("redisCommands")),
        "pgTx": per(counters.get("pgTransactions")),
        "pgRows": per(counters.get("pgRowsWritten")),
    }


def _breakdown(cpu: Mapping[str, float], running: Running) -> dict[str, Any]:
    return {
        "servers": round(cpu["server"], 3),
        "perServer": {name: round(cpu[name], 3) for name in running.server},
        "haproxy": round(cpu.get("haproxy", 0.0), 3),
        "redis": round(cpu.get("redis", 0.0), 3),
        "postgres": round(cpu.get("postgres", 0.0), 3),
    }


async def service_counters(redis_url: str, admin_dsn: str, database: str) -> dict[str, float]:
    """The Redis server's commands processed (all databases, all clients) and the arm's
    database's committed transactions and rows written (PostgreSQL's statistics, which a backend
    reports at most about once a second: approximate over a short window)."""
    import asyncpg

    async def pg() -> dict[str, float]:
        conn = await asyncpg.connect(_asyncpg_dsn(admin_dsn), timeout=5)
        try:
            row = await conn.fetchrow(
                "SELECT xact_commit, tup_inserted + tup_updated + tup_deleted AS written "
                "FROM pg_stat_database WHERE datname = $1",
                database,
            )
        finally:
            await conn.close()
        return {"pgTransactions": float(row["xact_commit"]), "pgRowsWritten": float(row["written"])}

    async def redis() -> dict[str, float]:
        try:
            client = await _redis(redis_url)
        except BenchError:
            return {}  # arm A without Redis: no background figure
        try:
            info = await client.info("stats")
        finally:
            await client.aclose()
        return {"redisCommands": float(info.get("total_commands_processed", 0))}

    first, second = await asyncio.gather(pg(), redis())
    return {**first, **second}


async def _idle(ctx: Context, target: LoadTarget, running: Running) -> dict[str, Any]:
    """The servers with nothing connected (timers, heartbeats, HAProxy's health checks)."""
    window = await Measurement.prepare(target, [])
    await window.start()
    await asyncio.sleep(ctx.profile.cluster_idle_s)  # the measured window itself
    cpu = await window.stop()
    seconds = ctx.profile.cluster_idle_s
    return {
        "seconds": seconds,
        "cpu": _breakdown(cpu, running),
        "cpuWindow": {k: round(v, 4) for k, v in cpu.items()},
        "countersPerSecond": {k: round(v / seconds, 1) for k, v in window.counters.items()},
    }


async def run_arm(ctx: Context, arm: str, round_no: int) -> dict[str, Any]:
    """One arm: fresh database, servers up, idle, the fan-out load, the ingest load, down."""
    p = ctx.profile
    out: dict[str, Any] = {"arm": arm, "round": round_no, "topology": ARMS[arm], "problems": []}
    fan_pairs = fanout_pairs(p.cluster_fanout_cps, prefix="CFAN", tag="CF")
    ing_pairs = fanout_pairs(p.cluster_ingest_cps, prefix="CING", tag="CI")
    try:
        redis = await redis_pid(ctx.redis_url)
    except BenchError:
        if arm == "B":
            raise
        redis = None  # arm A runs without Redis; only the background reading is missing
    if redis is None:
        out["problems"].append(
            f"arm {arm}: the Redis server is not on this machine or does not answer: "
            "its CPU is not read"
        )
    started = time.monotonic()
    async with fresh_database(ctx.postgres_admin_dsn, arm) as (database, url):
        await register_id_tags(url, owner_tags(fan_pairs) + owner_tags(ing_pairs))
        opened = single_process if arm == "A" else local_cluster
        async with opened(ctx, url) as running:
            out["startSeconds"] = round(time.monotonic() - started, 1)

            async def beside() -> Mapping[str, Sequence[int]]:
                return {
                    **running.extra,
                    "redis": [redis] if redis else [],
                    "postgres": await postgres_backends(ctx.postgres_admin_dsn, database),
                }

            async def counters() -> Mapping[str, float]:
                return await service_counters(ctx.redis_url, ctx.postgres_admin_dsn, database)

            target = LoadTarget(
                running.ocpp_url,
                running.app_url,
                running.workdir,
                running.server,
                beside,
                counters=counters,
            )
            out["idle"] = await _idle(ctx, target, running)
            idle_cpu = out["idle"]["cpuWindow"]
            before = await node_counters(running.metrics_ports)
            out["fanout"] = await _guarded(
                f"arm {arm} fan-out", _fanout(ctx, arm, target, fan_pairs, running, idle_cpu), out
            )
            between = await node_counters(running.metrics_ports)
            out["ingest"] = await _guarded(
                f"arm {arm} ingest", _ingest(ctx, arm, target, ing_pairs, running, idle_cpu), out
            )
            after = await node_counters(running.metrics_ports)
            for load, (start, end) in (("fanout", (before, between)), ("ingest", (between, after))):
                if running.metrics_ports and "error" not in out[load]:
                    out[load]["publishers"] = _publishers(start, end)
            out["serverStats"] = await _stats(running.stats_port)
            dead = running.alive()
            if dead:
                out["problems"].append(f"arm {arm}: exited during the run: {', '.join(dead)}")
    out["seconds"] = round(time.monotonic() - started, 1)
    return out


async def _guarded(
    what: str, load: Awaitable[dict[str, Any]], out: dict[str, Any]
) -> dict[str, Any]:
    try:
        return await load
    except BenchError as exc:
        out["problems"].append(f"{what} load failed: {str(exc).splitlines()[0][:200]}")
        return {"error": str(exc)[:2000]}


async def _fanout(
    ctx: Context,
    arm: str,
    target: LoadTarget,
    pairs: list[dict[str, Any]],
    running: Running,
    idle: Mapping[str, float],
) -> dict[str, Any]:
    p = ctx.profile
    row = await fanout_load(
        ctx,
        target,
        pairs,
        label=f"cluster-{arm}-fanout",
        admins=p.cluster_fanout_admins,
        workers=p.fanout_workers,
        seconds=p.cluster_fanout_seconds,
    )
    cpu, seconds = row["cpuWindow"], row["seconds"]
    per_update = _costs(cpu, row["counters"], idle, seconds, row["updates"], arm)
    deliveries = row["deliveriesPerSecond"] * seconds
    per_delivery = _costs(cpu, row["counters"], idle, seconds, deliveries, arm)
    row.update(
        cpuUsPerUpdate=per_update["cpuUs"],
        cpuUsPerUpdateAboveIdle=per_update["cpuUsAboveIdle"],
        cpuUsPerUpdateWithPostgres=per_update["cpuUsWithPostgres"],
        cpuUsPerDelivery=per_delivery["cpuUs"],
        redisCommandsPerUpdate=per_update["redis"],
        pgTransactionsPerUpdate=per_update["pgTx"],
        pgRowsWrittenPerUpdate=per_update["pgRows"],
        cpu=_breakdown(cpu, running),
    )
    return row


async def _ingest(
    ctx: Context,
    arm: str,
    target: LoadTarget,
    pairs: list[dict[str, Any]],
    running: Running,
    idle: Mapping[str, float],
) -> dict[str, Any]:
    p = ctx.profile
    results, measured = await ingest_load(
        ctx,
        target,
        pairs,
        label=f"cluster-{arm}",
        workers=p.ingest_workers,
        warmup_s=p.cluster_ingest_warmup_s,
        seconds=p.cluster_ingest_seconds,
        start_by="cp",
    )
    cpu, seconds = measured.cpu, p.cluster_ingest_seconds
    row = {"chargePoints": len(pairs), **ingest_figures(results, cpu, seconds, True)}
    per = _costs(cpu, measured.counters, idle, seconds, row["messagesPerSecond"] * seconds, arm)
    row.update(
        cpuUsPerMessage=per["cpuUs"],
        cpuUsPerMessageAboveIdle=per["cpuUsAboveIdle"],
        cpuUsPerMessageWithPostgres=per["cpuUsWithPostgres"],
        redisCommandsPerMessage=per["redis"],
        pgTransactionsPerMessage=per["pgTx"],
        pgRowsWrittenPerMessage=per["pgRows"],
        cpuWindow={k: round(v, 4) for k, v in cpu.items()},
        counters=measured.counters,
        cpu=_breakdown(cpu, running),
    )
    return row


_CLUSTER_METRIC = re.compile(r'^charging_cluster_total\{kind="(?P<kind>[a-z_]+)"\} (?P<value>\S+)$')


async def node_counters(ports: Mapping[str, int]) -> dict[str, dict[str, float]]:
    """Each node's ``charging_cluster_total`` counters from its /metrics (its Redis work:
    events published and dropped, frames numbered, round trips); a node that does not answer
    is left out."""
    found: dict[str, dict[str, float]] = {}
    for node, port in ports.items():
        with contextlib.suppress(OSError, TimeoutError, ValueError):
            text = await _get_text(port, "/metrics")
            found[node] = {
                m["kind"]: float(m["value"])
                for line in text.splitlines()
                if (m := _CLUSTER_METRIC.match(line))
            }
    return found


def _publishers(
    start: Mapping[str, Mapping[str, float]], end: Mapping[str, Mapping[str, float]]
) -> dict[str, Any]:
    """Per gateway over one load: events its push publisher numbered and dropped, round trips,
    events per round trip (the batches it managed)."""
    out: dict[str, Any] = {}
    for node, counts in end.items():
        delta = {k: v - start.get(node, {}).get(k, 0.0) for k, v in counts.items()}
        if "events_published" not in delta:
            continue
        trips = delta.get("redis_round_trips", 0.0)
        out[node] = {
            "eventsPublished": int(delta["events_published"]),
            "pushesNumbered": int(delta.get("pushes_numbered", 0)),
            "eventsDropped": int(delta.get("events_dropped", 0)),
            "roundTrips": int(trips),
            "eventsPerRoundTrip": round(delta["events_published"] / trips, 1) if trips else None,
        }
    return out


async def _get_text(port: int, path: str) -> str:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            f"Authorization: Bearer {STATS_KEY}\r\n\r\n".encode()
        )
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise ValueError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
    return body.decode(errors="replace")


async def _stats(port: int) -> dict[str, Any]:
    try:
        body = await http_get(port, "/api/stats", {"Authorization": f"Bearer {STATS_KEY}"})
    except (OSError, TimeoutError, ValueError) as exc:
        return {"error": str(exc)}
    data: dict[str, Any] = body.get("data", {})
    return data


# ---------------------------------------------------------------------- figures


def _pick(row: Mapping[str, Any], path: Sequence[str]) -> float | None:
    node: Any = row
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return float(node) if isinstance(node, int | float) else None


NO_FANOUT = (
    "no push reached an app client: pushes do not cross from the gateways to the api nodes "
    "in this build (issue 12's fan-out)"
)


def _problems(runs: Sequence[dict[str, Any]]) -> dict[str, str | None]:
    """Adds to each run what its figures say about parts that do not work (yet); returns, per
    load, why B / A does not compare like with like (None: it does)."""
    incomparable: dict[str, str | None] = {"fanout": None, "ingest": None}
    for run in runs:
        arm = run.get("arm")
        problems: list[str] = run.setdefault("problems", [])
        if "error" in run:
            incomparable = {load: f"arm {arm} failed" for load in incomparable}
            continue
        fan = run.get("fanout") or {}
        ing = run.get("ingest") or {}
        for load, row in (("fanout", fan), ("ingest", ing)):
            if "error" in row:
                incomparable[load] = f"the {load} load failed in arm {arm}"
        if "error" not in fan and fan.get("deliveriesExpected"):
            if not fan.get("deliveriesReceived"):
                problems.append(f"arm {arm} fan-out: {NO_FANOUT}")
                incomparable["fanout"] = f"arm {arm} delivered no push"
            elif fan.get("lost"):
                problems.append(
                    f"arm {arm} fan-out: {fan['lost']} of {fan['deliveriesExpected']} "
                    "deliveries lost"
                )
        if "error" not in ing and ing.get("messagesPerSecond") and not ing.get("pushesPerSecond"):
            problems.append(
                f"arm {arm} ingest: MeterValues answered, but the owners got no push, so this "
                "arm's CPU per message leaves out the push path"
            )
            incomparable["ingest"] = f"arm {arm} delivered no push (its CPU omits the push path)"
    return incomparable


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of each arm's headline figures over its runs, and B / A (B - A for the shared
    Redis's figures)."""
    incomparable = _problems(runs)
    medians: dict[str, dict[str, dict[str, float | None]]] = {}
    for arm in ARMS:
        arm_runs = [r for r in runs if r.get("arm") == arm]
        medians[arm] = {}
        for load, figures in HEADLINES.items():
            medians[arm][load] = {}
            for path, _label in figures:
                values = [v for r in arm_runs if (v := _pick(r.get(load) or {}, path)) is not None]
                key = ".".join(path)
                medians[arm][load][key] = _sig(statistics.median(values)) if values else None
    ratios: dict[str, dict[str, float | None]] = {}
    differences: dict[str, dict[str, float | None]] = {}
    for load, figures in HEADLINES.items():
        ratios[load], differences[load] = {}, {}
        for path, _label in figures:
            key = ".".join(path)
            a, b = medians["A"][load][key], medians["B"][load][key]
            if key in DIFFERENCES:
                differences[load][key] = _sig(b - a) if a is not None and b is not None else None
            else:
                ratios[load][key] = round(b / a, 3) if a and b is not None else None
    return {
        "arms": ARMS,
        "order": [f"{r['arm']}{r['round']}" for r in runs],
        "medians": medians,
        "ratiosBOverA": ratios,
        "differencesBMinusA": differences,
        "notComparable": incomparable,
        "problems": sorted({p for r in runs for p in r.get("problems", [])}),
        "runs": runs,
    }


async def cluster(ctx: Context) -> dict[str, Any]:
    """A, B, A, B, ... while rounds and the time budget allow (a round is started only if the
    last one's duration fits in what is left)."""
    p = ctx.profile
    deadline = time.monotonic() + p.cluster_budget_s
    runs: list[dict[str, Any]] = []
    longest = 0.0
    for round_no in range(1, p.cluster_rounds + 1):
        if round_no > 1 and time.monotonic() + longest * 1.2 > deadline:
            ctx.notes.append(f"cluster: round {round_no} skipped (time budget)")
            break
        t0 = time.monotonic()
        for arm in ARMS:
            try:
                runs.append(await run_arm(ctx, arm, round_no))
            except BenchError as exc:
                runs.append(
                    {
                        "arm": arm,
                        "round": round_no,
                        "topology": ARMS[arm],
                        "error": str(exc)[:2000],
                        "problems": [f"arm {arm} failed: {str(exc).splitlines()[0][:200]}"],
                    }
                )
        longest = max(longest, time.monotonic() - t0)
    out = summarize(runs)
    out["profile"] = {
        "fanoutChargePoints": p.cluster_fanout_cps,
        "fanoutAdmins": p.cluster_fanout_admins,
        "fanoutSeconds": p.cluster_fanout_seconds,
        "ingestChargePoints": p.cluster_ingest_cps,
        "ingestSeconds": p.cluster_ingest_seconds,
    }
    return out
