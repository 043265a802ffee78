"""The four scenarios of issue 5 and the peers measured beside ours in scenario 1.

Each run starts its own server subprocess (fresh SQLite database in a fresh directory) and its own
Node workers, measures, and stops both. Figures come back as plain dicts for the report.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import stats
from bench.procs import (
    BENCH_DIR,
    PROJECT,
    BenchError,
    CpuWindow,
    ServerProcess,
    WorkerGroup,
    base_env,
    free_port,
    http_get,
    node_binary,
    now_us,
    python_binary,
    rss_kib,
    split,
    tcp_ext_counters,
)
from charging_api.api.auth import issue_token
from charging_api.domain.models import IdTag
from charging_api.storage.sql import SqlStore

SECRET = "bench-jwt-secret-0123456789-abcdefghijklmnopqrstuvwxyz"
STATS_KEY = "bench-stats-key-0123456789abcdef"
TOKEN_LIFETIME = 3600

#: Scenario 1's servers, in the order they run; ours last.
INGEST_SERVERS = ("transport", "ocpp-lib", "ocpp-rpc", "charging-api")
SERVER_LABELS = {
    "transport": "transport limit (websockets, fixed reply)",
    "ocpp-lib": "ocpp library (@on, validation on)",
    "ocpp-rpc": "ocpp-rpc, Node (strictMode)",
    "charging-api": "charging-api (stores + pushes)",
}


@dataclass(frozen=True)
class Profile:
    name: str
    ingest_cps: int = 200
    ingest_workers: int = 2
    ingest_warmup_s: float = 2.0
    ingest_seconds: float = 10.0
    ingest_rounds: int = 3
    ingest_budget_s: float = 170.0
    fanout_cps: int = 2000
    fanout_admins: int = 10
    fanout_workers: int = 2
    fanout_seconds: float = 20.0
    crowd_apps: int = 10_000
    crowd_cps: int = 2000
    crowd_workers: int = 4
    crowd_heartbeat_s: int = 30
    crowd_settle_s: float = 3.0
    crowd_idle_s: float = 10.0
    crowd_deadline_s: float = 120.0
    crowd_handshake_timeout_s: float = 15.0
    command_users: int = 50
    command_workers: int = 2
    command_seconds: float = 20.0
    command_think_ms: tuple[int, int] = (100, 200)
    # 5 cluster: the same two loads through one process and through the cluster, arms alternated.
    cluster_fanout_cps: int = 1000
    cluster_fanout_admins: int = 5
    cluster_fanout_seconds: float = 15.0
    cluster_ingest_cps: int = 200
    cluster_ingest_warmup_s: float = 2.0
    cluster_ingest_seconds: float = 10.0
    cluster_idle_s: float = 2.0
    cluster_rounds: int = 2
    cluster_budget_s: float = 480.0


FULL = Profile("full")
QUICK = Profile(
    "quick",
    ingest_cps=50,
    ingest_warmup_s=1.0,
    ingest_seconds=3.0,
    ingest_rounds=1,
    ingest_budget_s=60.0,
    fanout_cps=200,
    fanout_admins=3,
    fanout_workers=2,
    fanout_seconds=5.0,
    crowd_apps=1000,
    crowd_cps=200,
    crowd_workers=2,
    crowd_settle_s=1.0,
    crowd_idle_s=3.0,
    crowd_deadline_s=60.0,
    command_users=10,
    command_workers=1,
    command_seconds=5.0,
    cluster_fanout_cps=200,
    cluster_fanout_admins=3,
    cluster_fanout_seconds=5.0,
    cluster_ingest_cps=50,
    cluster_ingest_warmup_s=1.0,
    cluster_ingest_seconds=3.0,
    cluster_rounds=2,
    cluster_budget_s=300.0,
)


@dataclass
class Context:
    profile: Profile
    workdir: Path
    runs: int = 0
    notes: list[str] = field(default_factory=list)
    #: With a directory, py-spy records our server during each measured window (the figures of
    #: such a run are perturbed by the sampling: use it to see where the time goes, not to compare).
    py_spy_dir: Path | None = None
    py_spy_format: str = "flamegraph"
    #: Replaces ``charging-api serve`` (e.g. to measure a candidate change of the server).
    server_argv: list[str] | None = None
    #: The cluster scenario's Redis (a dedicated database index: it is flushed) and the
    #: PostgreSQL server it creates a fresh database on for each arm (as its superuser).
    redis_url: str = "redis://127.0.0.1:6379/12"
    postgres_admin_dsn: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    _profilers: list[asyncio.subprocess.Process] = field(default_factory=list)

    def fresh_dir(self, name: str) -> Path:
        self.runs += 1
        path = self.workdir / f"{self.runs:02d}-{name}"
        path.mkdir(parents=True)
        return path


async def start_profile(ctx: Context, pid: int, label: str, seconds: float) -> None:
    """py-spy record of ``pid`` for ``seconds`` into ``ctx.py_spy_dir`` (when asked for)."""
    if ctx.py_spy_dir is None:
        return
    binary = Path(sys.prefix) / "bin" / "py-spy"
    found = str(binary) if binary.exists() else shutil.which("py-spy")
    if found is None:
        ctx.notes.append("py-spy is not installed (pip install py-spy); no profiles recorded")
        ctx.py_spy_dir = None
        return
    ctx.py_spy_dir.mkdir(parents=True, exist_ok=True)
    suffix = {"flamegraph": "svg", "speedscope": "json", "raw": "txt"}.get(ctx.py_spy_format, "out")
    out = ctx.py_spy_dir / f"{ctx.runs:02d}-{label}.{suffix}"
    ctx._profilers.append(
        await asyncio.create_subprocess_exec(
            found,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, round(seconds))),
            "--rate",
            "100",
            "--format",
            ctx.py_spy_format,
            "-o",
            str(out),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
    )
    ctx.notes.append(f"py-spy profile: {out}")


async def finish_profiles(ctx: Context) -> None:
    for proc in ctx._profilers:
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    ctx._profilers.clear()


async def register_id_tags(database_url: str, tags: Sequence[tuple[str, str]]) -> None:
    """Register id tags to users in the server's database before it starts."""
    store = SqlStore(database_url)
    await store.start()
    try:
        for tag, user in tags:
            await store.put_id_tag(IdTag(tag, user))
    finally:
        await store.close()


def token(user: str, id_tag: str | None = None, role: str | None = None) -> str:
    return issue_token(SECRET, user, expires_in=TOKEN_LIFETIME, id_tag=id_tag, role=role)


def _charging_api_binary() -> str:
    candidate = Path(sys.prefix) / "bin" / "charging-api"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("charging-api")
    if found is None:
        raise BenchError("charging-api is not installed in this environment (make install)")
    return found


def our_server(
    ctx: Context, name: str, database_url: str | None = None, **extra_env: str
) -> ServerProcess:
    """``charging-api serve`` on free loopback ports with a fresh SQLite database (or the
    ``database_url`` given, e.g. a fresh PostgreSQL database)."""
    directory = ctx.fresh_dir(name)
    app_port, ocpp_port = free_port(), free_port()
    defaults = dict(
        APP_ENV="development",
        WS_API_HOST="127.0.0.1",
        WS_API_PORT=str(app_port),
        OCPP_HOST="127.0.0.1",
        OCPP_PORT=str(ocpp_port),
        DATABASE_URL=database_url or f"sqlite:///{directory / 'bench.db'}",
        JWT_SECRET=SECRET,
        LOG_LEVEL="WARNING",
        MAX_CONNECTIONS="20000",
        STATS_API_KEY=STATS_KEY,
    )
    env = base_env(**{**defaults, **extra_env})
    return ServerProcess(
        "charging-api",
        ctx.server_argv or [_charging_api_binary(), "serve"],
        env,
        directory,
        directory / "server.log",
        {"app": app_port, "ocpp": ocpp_port},
    )


def peer_server(ctx: Context, kind: str) -> ServerProcess:
    directory = ctx.fresh_dir(kind)
    port = free_port()
    if kind == "transport":
        argv = [python_binary(), "-m", "bench.peers.transport_server", str(port)]
    elif kind == "ocpp-lib":
        argv = [python_binary(), "-m", "bench.peers.ocpp_lib_server", str(port)]
    elif kind == "ocpp-rpc":
        argv = [node_binary(), str(BENCH_DIR / "peers" / "ocpp_rpc_server.cjs"), str(port)]
    else:  # pragma: no cover - the callers pass INGEST_SERVERS
        raise ValueError(kind)
    return ServerProcess(kind, argv, base_env(), PROJECT, directory / "server.log", {"ocpp": port})


def _urls(server: ServerProcess) -> tuple[str, str | None]:
    ocpp = f"ws://127.0.0.1:{server.ports['ocpp']}/ocpp"
    app = f"ws://127.0.0.1:{server.ports['app']}/ws" if "app" in server.ports else None
    return ocpp, app


async def _sleep_until(us: int) -> None:
    await asyncio.sleep(max(0.0, (us - now_us()) / 1e6))


async def _server_stats(server: ServerProcess) -> dict[str, Any]:
    try:
        body = await http_get(
            server.ports["app"], "/api/stats", {"Authorization": f"Bearer {STATS_KEY}"}
        )
    except (OSError, TimeoutError, ValueError) as exc:
        return {"error": str(exc)}
    data: dict[str, Any] = body.get("data", {})
    return data


def _sum(results: Sequence[Mapping[str, Any]], key: str) -> int:
    return sum(int(r.get(key) or 0) for r in results)


def _worst(results: Sequence[Mapping[str, Any]], key: str) -> float:
    return max((float(r.get(key) or 0.0) for r in results), default=0.0)


def _generator_facts(results: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    return {
        "generatorCpuPerWorkerMax": round(_worst(results, "cpuFraction"), 3),
        "generatorLoopDelayP99Ms": round(_worst(results, "loopDelayP99Ms"), 2),
        "generatorLoopDelayMaxMs": round(_worst(results, "loopDelayMaxMs"), 2),
    }


def _cpu(window: Mapping[str, float]) -> dict[str, float]:
    return {
        "serverCpu": round(window["server"], 3),
        "serverRunqueueWait": round(window["serverWait"], 3),
        "generatorCpu": round(window["generators"], 3),
        "otherCpu": round(window["other"], 3),
        "machineCpu": round(window["machine"], 3),
    }


# ---------------------------------------------------------------------- 1 ingest


@dataclass(frozen=True)
class LoadTarget:
    """Where a load goes and whose CPU is read over its measured window.

    ``server`` groups are the processes under test (summed into ``serverCpu``: one group for a
    single process, one per node for a cluster); ``beside`` groups are read too and reported on
    their own (Redis, HAProxy, PostgreSQL backends), so "other" is only what nobody accounts for.
    """

    ocpp_url: str
    app_url: str | None
    workdir: Path
    server: Mapping[str, Sequence[int]]
    #: Asked when the measured window opens (database backends exist only once the load is set
    #: up): the groups read beside the server.
    beside: Callable[[], Awaitable[Mapping[str, Sequence[int]]]] | None = None
    #: The process py-spy records (``--py-spy``); None records nothing.
    profile_pid: int | None = None
    #: Counters read at both ends of the window (e.g. Redis commands, database transactions).
    counters: Callable[[], Awaitable[Mapping[str, float]]] | None = None


@dataclass
class Measurement:
    """One measured window: the CPU of every group (cores) and the deltas of the target's
    counters (``LoadTarget.counters``) over it."""

    target: LoadTarget
    window: CpuWindow
    cpu: dict[str, float] = field(default_factory=dict)
    counters: dict[str, float] = field(default_factory=dict)
    _before: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    async def prepare(cls, target: LoadTarget, generators: Sequence[int]) -> Measurement:
        beside = await target.beside() if target.beside is not None else {}
        groups = {name: list(pids) for name, pids in {**target.server, **beside}.items()}
        return cls(target, CpuWindow({**groups, "generators": list(generators)}))

    async def start(self) -> None:
        self.window.start()
        if self.target.counters is not None:
            self._before = await self.target.counters()

    async def stop(self) -> dict[str, float]:
        """Cores per group, with ``server``/``serverWait`` summed over the server groups."""
        cpu = self.window.stop()
        cpu["server"] = sum(cpu[name] for name in self.target.server)
        cpu["serverWait"] = sum(cpu[f"{name}Wait"] for name in self.target.server)
        self.cpu = cpu
        if self.target.counters is not None:
            after = await self.target.counters()
            self.counters = {k: v - self._before[k] for k, v in after.items() if k in self._before}
        return cpu


def server_target(ctx: Context, server: ServerProcess) -> LoadTarget:
    ocpp_url, app_url = _urls(server)
    return LoadTarget(
        ocpp_url, app_url, server.log_path.parent, {"server": [server.pid]}, profile_pid=server.pid
    )


async def ingest_load(
    ctx: Context,
    target: LoadTarget,
    pairs: list[dict[str, Any]],
    *,
    label: str,
    workers: int,
    warmup_s: float,
    seconds: float,
    start_by: str | None = None,
) -> tuple[list[dict[str, Any]], Measurement]:
    """Closed-loop MeterValues from ``pairs``' charge points (owners reading pushes when the pairs
    carry tokens); the workers' results and the measured window."""
    group = WorkerGroup(target.workdir, f"ingest-{label}")
    try:
        await group.start(
            {
                "mode": "ingest",
                "ocppUrl": target.ocpp_url,
                "appUrl": target.app_url if "token" in pairs[0] else None,
                "pairs": chunk,
                "startBy": start_by,
                "setupTimeoutMs": 120_000,
                "connectConcurrency": 16,
            }
            for chunk in split(pairs, workers)
        )
        await group.all("ready", 150)
        warmup, duration = int(warmup_s * 1e6), int(seconds * 1e6)
        at = now_us() + 300_000
        window = await Measurement.prepare(target, group.pids)
        await group.broadcast({"cmd": "go", "atUs": at, "warmupUs": warmup, "durationUs": duration})
        await _sleep_until(at + warmup)
        await window.start()
        if target.profile_pid is not None and "token" in pairs[0]:
            await start_profile(ctx, target.profile_pid, "ingest", duration / 1e6)
        await _sleep_until(at + warmup + duration)
        await window.stop()
        results = await group.all("result", 60)
        await finish_profiles(ctx)
    finally:
        await group.close()
    return results, window


def ingest_figures(
    results: Sequence[Mapping[str, Any]], cpu: Mapping[str, float], seconds: float, ours: bool
) -> dict[str, Any]:
    """Throughput, round trips, CPU; with owners, what they were pushed and what was stored."""
    handled = _sum(results, "answeredInWindow") / seconds
    rtt = stats.merge(r["rtt"] for r in results)
    row: dict[str, Any] = {
        "seconds": seconds,
        "messagesPerSecond": round(handled, 1),
        "rtt": stats.summary_ms(rtt),
        **_cpu(cpu),
        "messagesPerServerCpuSecond": round(handled / cpu["server"], 1) if cpu["server"] else None,
        "errors": _sum(results, "errors"),
        "lastError": next((r["lastError"] for r in results if r.get("lastError")), None),
        "unexpectedCloses": _sum(results, "unexpectedCloses"),
        **_generator_facts(results),
    }
    if ours:
        answered = _sum(results, "answered")
        pushes = _sum(results, "pushes")
        row.update(
            pushesPerSecond=round(_sum(results, "pushesInWindow") / seconds, 1),
            pushedShare=round(pushes / answered, 4) if answered else None,
            pushLatency=stats.summary_ms(stats.merge(r["pushLatency"] for r in results)),
            seqGaps=_sum(results, "seqGaps"),
            storedCheck={
                "sent": _sum(results, "storedSent"),
                "stored": _sum(results, "storedFound"),
            },
        )
    return row


async def ingest_one(ctx: Context, kind: str) -> dict[str, Any]:
    """K closed-loop charge points against one server; ours with owners reading the pushes."""
    p = ctx.profile
    ours = kind == "charging-api"
    server = our_server(ctx, "ingest") if ours else peer_server(ctx, kind)
    await server.start()
    try:
        pairs: list[dict[str, Any]] = []
        for i in range(p.ingest_cps):
            pair: dict[str, Any] = {"cp": f"INGEST-{i:05d}", "user": f"ingest-user-{i:05d}"}
            if ours:
                pair["token"] = token(pair["user"], id_tag=f"IT{i:05d}")
            pairs.append(pair)
        results, measured = await ingest_load(
            ctx,
            server_target(ctx, server),
            pairs,
            label=kind,
            workers=p.ingest_workers,
            warmup_s=p.ingest_warmup_s,
            seconds=p.ingest_seconds,
        )
        rss = rss_kib(server.pid)
        server_stats = await _server_stats(server) if ours else None
    finally:
        server.stop()
    row: dict[str, Any] = {
        "server": kind,
        "chargePoints": p.ingest_cps,
        **ingest_figures(results, measured.cpu, p.ingest_seconds, ours),
        "serverRssKiB": rss,
    }
    if ours:
        row["serverStats"] = server_stats
    return row


#: A run during which other processes used less than this many cores counts as undisturbed.
QUIET_OTHER_CPU = 0.25


async def ingest(ctx: Context, servers: Sequence[str] = INGEST_SERVERS) -> dict[str, Any]:
    """Every server once; then, while rounds and time are left, again each server whose runs were
    all disturbed by other load on this shared machine. The best run of each server counts."""
    runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in servers}
    deadline = time.monotonic() + ctx.profile.ingest_budget_s

    def quiet(kind: str) -> bool:
        return any(r.get("otherCpu", 9.0) < QUIET_OTHER_CPU for r in runs[kind])

    for round_no in range(ctx.profile.ingest_rounds):
        todo = list(servers) if round_no == 0 else [k for k in servers if not quiet(k)]
        for kind in todo:
            if round_no and time.monotonic() > deadline:
                break
            try:
                runs[kind].append(await ingest_one(ctx, kind))
            except BenchError as exc:
                runs[kind].append({"server": kind, "error": str(exc)})
    rows: dict[str, Any] = {}
    for kind, attempts in runs.items():
        good = [r for r in attempts if "error" not in r]
        best = max(good, key=lambda r: r["messagesPerSecond"]) if good else attempts[-1]
        rows[kind] = {
            **best,
            "runs": [r.get("messagesPerSecond") for r in attempts],
            "quiet": quiet(kind),
        }
    ours = rows.get("charging-api", {}).get("messagesPerSecond")
    ours_eff = rows.get("charging-api", {}).get("messagesPerServerCpuSecond")
    ratios: dict[str, Any] = {}
    for kind, row in rows.items():
        if kind == "charging-api" or "error" in row:
            continue
        theirs, theirs_eff = row["messagesPerSecond"], row.get("messagesPerServerCpuSecond")
        ratios[kind] = {
            "oursOverTheirs": round(ours / theirs, 3) if ours and theirs else None,
            "oursOverTheirsPerCpuSecond": (
                round(ours_eff / theirs_eff, 3) if ours_eff and theirs_eff else None
            ),
        }
    transport = rows.get("transport", {})
    check = None
    if "error" not in transport and transport:
        # The transport server is one thread: at ~a full core it is the limit; a generator with
        # CPU to spare and a prompt event loop is not.
        server_bound = transport["serverCpu"] >= 0.9
        generator_spare = transport["generatorCpuPerWorkerMax"] < 0.9
        if server_bound:
            verdict = (
                "the transport server ran at a full core (it is one thread): it set the limit, "
                + (
                    "not the generators, which had CPU to spare"
                    if generator_spare
                    else "though a generator worker was near a full core too"
                )
            )
        elif transport["otherCpu"] >= 0.3:
            verdict = (
                "inconclusive: other processes took CPU from this run; the ceiling is understated"
            )
        else:
            verdict = "the transport server was NOT at a full core: the generators limited it"
        # Capacity per core-second: the generators run in several processes, the server in one.
        workers = ctx.profile.ingest_workers
        headroom = (
            workers * transport["serverCpu"] / transport["generatorCpu"]
            if transport["generatorCpu"]
            else None
        )
        check = {
            "generatorHeadroom": round(headroom, 2) if headroom else None,
            "serverCpu": transport["serverCpu"],
            "generatorCpu": transport["generatorCpu"],
            "generatorCpuPerWorkerMax": transport["generatorCpuPerWorkerMax"],
            "generatorLoopDelayP99Ms": transport["generatorLoopDelayP99Ms"],
            "otherCpu": transport["otherCpu"],
            "serverBound": server_bound,
            "verdict": verdict,
        }
    return {"servers": rows, "ratios": ratios, "generatorCheck": check, "allRuns": runs}


# --------------------------------------------------------------------- 2 fan-out


def fanout_pairs(count: int, prefix: str = "FAN", tag: str = "FT") -> list[dict[str, Any]]:
    """Charge points with their owners (token with the owner's id tag, registered up front)."""
    low = prefix.lower()
    return [
        {
            "cp": f"{prefix}-{i:05d}",
            "user": f"{low}-user-{i:05d}",
            "tag": f"{tag}{i:05d}",
            "token": token(f"{low}-user-{i:05d}", id_tag=f"{tag}{i:05d}"),
            "index": i,
        }
        for i in range(count)
    ]


def owner_tags(pairs: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    return [(str(x["tag"]), str(x["user"])) for x in pairs]


async def fanout_load(
    ctx: Context,
    target: LoadTarget,
    pairs: list[dict[str, Any]],
    *,
    label: str,
    admins: int,
    workers: int,
    seconds: float,
) -> dict[str, Any]:
    """Charge points sending one MeterValues per second on a shared schedule (their sessions started
    by themselves with their owners' registered tags), owners and admins reading: the figures."""
    group = WorkerGroup(target.workdir, label)
    try:
        admin_list = [
            {"user": f"{label}-admin-{j}", "token": token(f"{label}-admin-{j}", role="admin")}
            for j in range(admins)
        ]
        chunks = split(pairs, workers)
        await group.start(
            {
                "mode": "fanout",
                "ocppUrl": target.ocpp_url,
                "appUrl": target.app_url,
                "pairs": chunk,
                "admins": admin_list[w :: len(chunks)],
                "total": len(pairs),
                "periodMs": 1000,
                "startBy": "cp",
                "setupTimeoutMs": 240_000,
                "connectConcurrency": 16,
            }
            for w, chunk in enumerate(chunks)
        )
        setup_started = now_us()
        await group.all("ready", 300)
        setup_seconds = (now_us() - setup_started) / 1e6
        duration = int(seconds * 1e6)
        at = now_us() + 500_000
        window = await Measurement.prepare(target, group.pids)
        await group.broadcast({"cmd": "go", "atUs": at, "durationUs": duration})
        await _sleep_until(at)
        await window.start()
        if target.profile_pid is not None:
            await start_profile(ctx, target.profile_pid, "fanout", duration / 1e6)
        await _sleep_until(at + duration)
        cpu = await window.stop()
        results = await group.all("result", 90)
        await finish_profiles(ctx)
    finally:
        await group.close()

    sent: dict[str, int] = {}
    owners: dict[str, int] = {}
    admin_counts: list[Mapping[str, int]] = []
    for r in results:
        sent.update(r["sentCounts"])
        for cp, n in r["ownerCounts"].items():
            owners[cp] = owners.get(cp, 0) + n
        admin_counts.extend(r["adminCounts"])
    total_sent = sum(sent.values())
    recipients_per_update = 1 + len(admin_counts)
    lost_owner = sum(max(0, n - owners.get(cp, 0)) for cp, n in sent.items())
    lost_admin = sum(
        max(0, n - counts.get(cp, 0)) for counts in admin_counts for cp, n in sent.items()
    )
    extra = sum(max(0, owners.get(cp, 0) - n) for cp, n in sent.items()) + sum(
        max(0, counts.get(cp, 0) - n) for counts in admin_counts for cp, n in sent.items()
    )
    owner_latency = stats.merge(r["ownerLatency"] for r in results)
    admin_latency = stats.merge(r["adminLatency"] for r in results)
    return {
        "chargePoints": len(pairs),
        "owners": len(pairs),
        "admins": len(admin_counts),
        "seconds": seconds,
        "setupSeconds": round(setup_seconds, 1),
        "updates": total_sent,
        "updatesPerSecond": round(total_sent / seconds, 1),
        "deliveriesPerSecond": round(_sum(results, "receivedInWindow") / seconds, 1),
        "deliveriesPerServerCpuSecond": (
            round(_sum(results, "receivedInWindow") / seconds / cpu["server"], 1)
            if cpu["server"]
            else None
        ),
        "deliveriesExpected": total_sent * recipients_per_update,
        "deliveriesReceived": _sum(results, "received"),
        "lost": lost_owner + lost_admin,
        "lostOwner": lost_owner,
        "lostAdmin": lost_admin,
        "unexpectedExtra": extra,
        "seqGaps": _sum(results, "seqGaps"),
        "lateSends": _sum(results, "late"),
        "errors": _sum(results, "errors"),
        "lastError": next((r["lastError"] for r in results if r.get("lastError")), None),
        "unexpectedCloses": _sum(results, "unexpectedCloses"),
        "latency": stats.summary_ms(stats.merge([owner_latency, admin_latency])),
        "ownerLatency": stats.summary_ms(owner_latency),
        "adminLatency": stats.summary_ms(admin_latency),
        "rtt": stats.summary_ms(stats.merge(r["rtt"] for r in results)),
        **_cpu(cpu),
        **_generator_facts(results),
        "cpuWindow": {k: round(v, 4) for k, v in cpu.items()},
        "counters": window.counters,
    }


async def fanout(ctx: Context) -> dict[str, Any]:
    p = ctx.profile
    server = our_server(ctx, "fanout")
    pairs = fanout_pairs(p.fanout_cps)
    # The charge points start their transactions themselves with their owners' id tags, which are
    # registered up front (as `charging-api idtags add` would): far quicker to set up than 2,000
    # remote starts, and the sessions are owned all the same.
    await register_id_tags(server.env["DATABASE_URL"], owner_tags(pairs))
    await server.start()
    try:
        row = await fanout_load(
            ctx,
            server_target(ctx, server),
            pairs,
            label="fanout",
            admins=p.fanout_admins,
            workers=p.fanout_workers,
            seconds=p.fanout_seconds,
        )
        row["serverStats"] = await _server_stats(server)
        row["serverRssKiB"] = rss_kib(server.pid)
    finally:
        server.stop()
    return row


# ----------------------------------------------------------------- 3 connections


async def connections(ctx: Context) -> dict[str, Any]:
    p = ctx.profile
    server = our_server(ctx, "crowd", OCPP_HEARTBEAT_INTERVAL=str(p.crowd_heartbeat_s))
    await server.start()
    group = WorkerGroup(server.log_path.parent, "crowd")
    try:
        ocpp_url, app_url = _urls(server)
        apps = [
            {"user": f"crowd-user-{i:05d}", "token": token(f"crowd-user-{i:05d}")}
            for i in range(p.crowd_apps)
        ]
        cps = [f"CROWD-{i:05d}" for i in range(p.crowd_cps)]
        workers = p.crowd_workers
        await group.start(
            {
                "mode": "crowd",
                "ocppUrl": ocpp_url,
                "appUrl": app_url,
                "apps": apps[w::workers],
                "cps": cps[w::workers],
                "connectDeadlineMs": int(p.crowd_deadline_s * 1000),
                "handshakeTimeoutMs": int(p.crowd_handshake_timeout_s * 1000),
            }
            for w in range(workers)
        )
        await group.all("ready", 60)
        await asyncio.sleep(1.0)
        rss_before = rss_kib(server.pid)
        at = now_us() + 300_000
        await group.broadcast({"cmd": "go", "atUs": at})
        await _sleep_until(at)
        storm_cpu = CpuWindow({"server": [server.pid], "generators": group.pids})
        storm_cpu.start()
        tcp_before = tcp_ext_counters()
        await start_profile(ctx, server.pid, "crowd-storm", min(p.crowd_deadline_s, 30))
        waiting = asyncio.ensure_future(group.all("connected", p.crowd_deadline_s + 90))
        timeline = await _watch_health(server, waiting, at)
        connected = await waiting
        storm = storm_cpu.stop()
        tcp_after = tcp_ext_counters()
        tcp = {
            k: tcp_after.get(k, 0) - tcp_before.get(k, 0)
            for k in ("ListenOverflows", "ListenDrops", "TCPTimeouts", "TCPSynRetrans")
        }
        accept_seconds = (max(c["lastDoneUs"] for c in connected) - at) / 1e6
        await asyncio.sleep(p.crowd_settle_s)
        rss_after = rss_kib(server.pid)
        health = await http_get(server.ports["app"], "/health")
        window = CpuWindow({"server": [server.pid], "generators": group.pids})
        window.start()
        await start_profile(ctx, server.pid, "crowd-idle", p.crowd_idle_s)
        await asyncio.sleep(p.crowd_idle_s)
        cpu = window.stop()
        await finish_profiles(ctx)
        rss_idle = rss_kib(server.pid)
        await group.broadcast({"cmd": "stop"})
        results = await group.all("result", 60)
    finally:
        await group.close()
        server.stop()
    total = p.crowd_apps + p.crowd_cps
    failed = _sum(connected, "failed")
    kinds: dict[str, Any] = {}
    for kind in ("app", "cp"):
        parts = [c["kinds"][kind] for c in connected]
        done_at = max((k["lastDoneUs"] for k in parts if k["done"]), default=None)
        curve: dict[int, int] = {}
        for k in parts:
            for second, n in k["curve"].items():
                curve[int(second)] = curve.get(int(second), 0) + int(n)
        kinds[kind] = {
            "done": sum(k["done"] for k in parts),
            "failed": sum(k["failed"] for k in parts),
            "retries": sum(k["retries"] for k in parts),
            "acceptSeconds": round((done_at - at) / 1e6, 2) if done_at else None,
            "lastError": next((k["lastError"] for k in parts if k["lastError"]), None),
            "donePerSecond": [curve.get(i, 0) for i in range(max(curve, default=-1) + 1)],
        }
    accepted = total - failed
    grown = max(rss_after, rss_idle) - rss_before
    ws_health = health.get("websocket", {})
    return {
        "appConnections": p.crowd_apps,
        "chargePoints": p.crowd_cps,
        "heartbeatIntervalS": p.crowd_heartbeat_s,
        "clientHandshakeTimeoutS": p.crowd_handshake_timeout_s,
        "acceptSeconds": round(accept_seconds, 2),
        "accepted": accepted,
        "failed": failed,
        "lastError": next((c["lastError"] for c in connected if c.get("lastError")), None),
        "connectRetries": _sum(connected, "connectFailures"),
        "byKind": kinds,
        "stormServerCpu": round(storm["server"], 3),
        "stormGeneratorCpu": round(storm["generators"], 3),
        "stormOtherCpu": round(storm["other"], 3),
        "stormTimeline": timeline,
        "stormTcp": tcp,
        "lastConnectError": next(
            (c["lastConnectError"] for c in connected if c.get("lastConnectError")), None
        ),
        "serverSaw": {
            "authenticatedConnections": ws_health.get("authenticatedConnections"),
            "chargePoints": ws_health.get("gatewayConnections"),
        },
        "rssBeforeKiB": rss_before,
        "rssAfterKiB": max(rss_after, rss_idle),
        "rssPerConnectionKiB": round(grown / accepted, 2) if accepted else None,
        "idleSeconds": p.crowd_idle_s,
        "idleServerCpu": round(cpu["server"], 4),
        "idleGeneratorCpu": round(cpu["generators"], 3),
        "otherCpu": round(cpu["other"], 3),
        "heartbeatsSent": _sum(results, "heartbeatsSent"),
        "heartbeatsAnswered": _sum(results, "heartbeatsAnswered"),
        "heartbeatsAnsweredIdle": _sum(results, "heartbeatsAnsweredIdle"),
        "unexpectedCloses": _sum(results, "unexpectedCloses"),
    }


async def _watch_health(
    server: ServerProcess, until: asyncio.Future[Any], at: int
) -> list[dict[str, Any]]:
    """What the server says it holds, once a second, while the crowd connects."""
    timeline: list[dict[str, Any]] = []
    while not until.done():
        try:
            body = await asyncio.wait_for(http_get(server.ports["app"], "/health"), 5)
            ws = body.get("websocket", {})
            timeline.append(
                {
                    "t": round((now_us() - at) / 1e6, 1),
                    "app": ws.get("totalConnections"),
                    "authenticated": ws.get("authenticatedConnections"),
                    "chargePoints": ws.get("gatewayConnections"),
                }
            )
        except (OSError, TimeoutError, ValueError):
            timeline.append({"t": round((now_us() - at) / 1e6, 1), "error": "no /health answer"})
        await asyncio.wait([until], timeout=1.0)
    return timeline


# ----------------------------------------------------------------------- 4 command


async def command(ctx: Context) -> dict[str, Any]:
    p = ctx.profile
    server = our_server(ctx, "command")
    await server.start()
    group = WorkerGroup(server.log_path.parent, "command")
    try:
        ocpp_url, app_url = _urls(server)
        pairs = [
            {
                "cp": f"CMD-{i:04d}",
                "user": f"cmd-user-{i:04d}",
                "token": token(f"cmd-user-{i:04d}", id_tag=f"CT{i:04d}"),
            }
            for i in range(p.command_users)
        ]
        await group.start(
            {
                "mode": "command",
                "ocppUrl": ocpp_url,
                "appUrl": app_url,
                "pairs": chunk,
                "thinkMs": list(p.command_think_ms),
                "setupTimeoutMs": 60_000,
            }
            for chunk in split(pairs, p.command_workers)
        )
        await group.all("ready", 90)
        duration = int(p.command_seconds * 1e6)
        at = now_us() + 300_000
        window = CpuWindow({"server": [server.pid], "generators": group.pids})
        await group.broadcast({"cmd": "go", "atUs": at, "durationUs": duration})
        await _sleep_until(at)
        window.start()
        await start_profile(ctx, server.pid, "command", duration / 1e6)
        await _sleep_until(at + duration)
        cpu = window.stop()
        results = await group.all("result", 120)
        await finish_profiles(ctx)
    finally:
        await group.close()
        server.stop()
    errors: dict[str, int] = {}
    samples: dict[str, str] = {}
    for r in results:
        for code, n in r["errors"].items():
            errors[code] = errors.get(code, 0) + int(n)
        for code, message in r.get("errorSamples", {}).items():
            samples.setdefault(code, message)

    def merged(key: str) -> dict[str, Any]:
        return stats.summary_ms(stats.merge(r[key] for r in results))

    cycles = _sum(results, "cycles")
    return {
        "users": p.command_users,
        "seconds": duration / 1e6,
        "thinkMs": list(p.command_think_ms),
        "cycles": cycles,
        "startsPerSecond": round(cycles / (duration / 1e6), 1),
        "startOverhead": merged("startOverhead"),
        "startTotal": merged("startTotal"),
        "chargePointShare": merged("startCp"),
        "stopTotal": merged("stopTotal"),
        "stopOverhead": merged("stopOverhead"),
        "errors": errors,
        "errorSamples": samples,
        "unexpectedCloses": _sum(results, "unexpectedCloses"),
        **_cpu(cpu),
        **_generator_facts(results),
    }
