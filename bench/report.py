"""Targets (issue 5), the printed table, and results/latest.json."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from bench.cluster import HEADLINES
from bench.procs import PROJECT, base_env, node_binary
from bench.scenarios import SERVER_LABELS


@dataclass(frozen=True)
class Target:
    scenario: str
    name: str
    value: float | None
    limit: float
    unit: str
    passed: bool | None  # None: not measured
    detail: str = ""


def _get(data: dict[str, Any], *path: str) -> Any:
    node: Any = data
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _target(
    scenario: str,
    name: str,
    value: Any,
    limit: float,
    unit: str,
    ok: Callable[[float, float], bool],
    detail: str = "",
) -> Target:
    if not isinstance(value, int | float):
        return Target(scenario, name, None, limit, unit, None, detail or "not measured")
    return Target(scenario, name, float(value), limit, unit, ok(float(value), limit), detail)


def targets(results: dict[str, Any]) -> list[Target]:
    s = results.get("scenarios", {})
    ing = s.get("ingest", {})
    ours = _get(ing, "servers", "charging-api", "messagesPerSecond")
    out: list[Target] = []
    for peer, limit, label in (
        ("ocpp-lib", 3.0, ">= 3x the ocpp-library baseline"),
        ("ocpp-rpc", 1.0, ">= the ocpp-rpc (Node) baseline"),
        ("transport", 0.5, ">= 1/2 the transport limit"),
    ):
        ratio = _get(ing, "ratios", peer, "oursOverTheirs")
        theirs = _get(ing, "servers", peer, "messagesPerSecond")
        detail = f"{_n(ours)} vs {_n(theirs)} MV/s" if ours and theirs else ""
        disturbed = [k for k in ("charging-api", peer) if _get(ing, "servers", k, "quiet") is False]
        if detail and disturbed:
            detail += f"; disturbed by other load: {', '.join(disturbed)}"
        out.append(_target("1 ingest", label, ratio, limit, "x", lambda v, lim: v >= lim, detail))
    fan = s.get("fanout", {})
    out.append(
        _target(
            "2 fan-out",
            "p99 CP send → app receive < 50 ms",
            _get(fan, "latency", "p99"),
            50.0,
            "ms",
            lambda v, lim: v < lim,
        )
    )
    lost = fan.get("lost")
    out.append(
        _target(
            "2 fan-out",
            "no update lost",
            lost,
            0,
            "lost",
            lambda v, lim: v <= lim,
            f"of {_n(fan.get('deliveriesExpected'))} expected" if lost is not None else "",
        )
    )
    con = s.get("connections", {})
    out.append(
        _target(
            "3 connections",
            "< 20 KiB resident per idle connection",
            con.get("rssPerConnectionKiB"),
            20.0,
            "KiB",
            lambda v, lim: v < lim,
        )
    )
    failed = con.get("failed") or 0
    out.append(
        _target(
            "3 connections",
            "whole crowd accepted < 30 s",
            con.get("acceptSeconds"),
            30.0,
            "s",
            lambda v, lim: v < lim and not failed,
            f"{failed} connections failed" if failed else "",
        )
    )
    cmd = s.get("command", {})
    out.append(
        _target(
            "4 command",
            "p99 start latency, our overhead < 20 ms",
            _get(cmd, "startOverhead", "p99"),
            20.0,
            "ms",
            lambda v, lim: v < lim,
        )
    )
    return out


# ---------------------------------------------------------------------------- machine


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    try:
        node = subprocess.run(
            [node_binary(), "--version"],
            capture_output=True,
            text=True,
            timeout=10,
            env=base_env(),
            check=False,
        ).stdout.strip()
    except Exception:
        node = "?"

    def pkg(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "?"

    rpc = "?"
    try:
        rpc = json.loads((PROJECT / "node_modules" / "ocpp-rpc" / "package.json").read_text())[
            "version"
        ]
    except (OSError, ValueError, KeyError):
        pass
    return {
        "revision": _revision(),
        "cpus": os.cpu_count(),
        "cpuModel": model,
        "memoryGiB": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "node": node,
        "websockets": pkg("websockets"),
        "ocpp": pkg("ocpp"),
        "ocppRpc": rpc,
        "loadAverage": list(os.getloadavg()),
    }


def _revision() -> str:
    """The commit the server was measured at, ``+dirty`` when src/ has changes on top."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=PROJECT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"],
            cwd=PROJECT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return (head or "?") + ("+dirty" if dirty else "")


# ------------------------------------------------------------------------------ table


def _n(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, int | float):
        return f"{value:,.{digits}f}"
    return str(value)


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}"


def _pct(value: Any) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def render(results: dict[str, Any]) -> str:
    lines: list[str] = []
    m = results["machine"]
    lines.append(
        f"charging-api benchmark ({results['profile']} profile, {results['started']}, "
        f"{results['elapsedSeconds']:.0f} s, server at {m.get('revision', '?')})"
    )
    lines.append(
        f"machine: {m['cpus']} x {m['cpuModel']}, {m['memoryGiB']} GiB, Linux {m['kernel']}, "
        f"Python {m['python']}, Node {m['node']}, websockets {m['websockets']}, "
        f"load average at start {m['loadAverage'][0]:.2f}"
    )
    lines.append(
        "CPU figures are cores (1.00 = one core busy) over the measured window; 'srv wait' is the "
        "server's threads runnable but waiting for a CPU; 'other' is everyone else on this "
        "shared machine."
    )
    s = results["scenarios"]

    ing = s.get("ingest")
    if ing:
        lines.append("")
        any_row: dict[str, Any] = next(
            (r for r in ing["servers"].values() if "chargePoints" in r), {}
        )
        lines.append(
            f"1. Ingest: {_n(any_row.get('chargePoints'))} closed-loop charge points, MeterValues "
            f"back-to-back, {_n(any_row.get('seconds'), 0)} s measured"
        )
        header = (
            f"   {'server':<40} {'MV/s':>8} {'RTT p50':>8} {'RTT p99':>8} {'srv CPU':>8} "
            f"{'srv wait':>8} {'MV/CPU-s':>9} {'gen CPU':>8} {'other':>6} {'ours ÷':>7}"
        )
        lines.append(header)
        for kind, row in ing["servers"].items():
            label = SERVER_LABELS.get(kind, kind)
            if "error" in row:
                lines.append(f"   {label:<40} FAILED: {row['error'].splitlines()[0][:90]}")
                continue
            ratio = (
                "1.00"
                if kind == "charging-api"
                else _n(_get(ing, "ratios", kind, "oursOverTheirs"), 2)
            )
            runs = row.get("runs") or []
            tries = "" if len(runs) < 2 else "  runs: " + " / ".join(_n(r) for r in runs)
            lines.append(
                f"   {label:<40} {_n(row['messagesPerSecond']):>8} {_ms(row['rtt']['p50']):>8} "
                f"{_ms(row['rtt']['p99']):>8} {row['serverCpu']:>8.2f} "
                f"{row.get('serverRunqueueWait', 0.0):>8.2f} "
                f"{_n(row['messagesPerServerCpuSecond']):>9} {row['generatorCpu']:>8.2f} "
                f"{row['otherCpu']:>6.2f} {ratio:>7}{tries}"
            )
            if row.get("errors"):
                lines.append(f"      {row['errors']} CALLERRORs/failures: {row.get('lastError')}")
        ours = ing["servers"].get("charging-api", {})
        if "pushesPerSecond" in ours:
            lines.append(
                f"   charging-api pushed {_n(ours['pushesPerSecond'])}/s to the owners "
                f"({_pct(ours['pushedShare'])} of samples), CP send → app receive "
                f"p50 {_ms(ours['pushLatency']['p50'])} ms, "
                f"p99 {_ms(ours['pushLatency']['p99'])} ms, "
                f"seq gaps {ours['seqGaps']}"
            )
            stored = ours.get("storedCheck") or {}
            if stored.get("sent"):
                lines.append(
                    f"   stored: {_n(stored['stored'])} of {_n(stored['sent'])} samples sent on "
                    "the transactions checked (get_meter_values)"
                )
        check = ing.get("generatorCheck")
        if check:
            lines.append(
                f"   generator check: transport server {check['serverCpu']:.2f} core, generators "
                f"{check['generatorCpu']:.2f} core (busiest worker "
                f"{check['generatorCpuPerWorkerMax']:.2f}, "
                f"event-loop p99 {check['generatorLoopDelayP99Ms']:.1f} ms), "
                f"other {check['otherCpu']:.2f}"
                f" → {check['verdict']}"
            )
            if check.get("generatorHeadroom"):
                lines.append(
                    f"   generator capacity: {check['generatorHeadroom']:.1f}x what the transport "
                    "server absorbed (CPU per message: several generator processes vs one server "
                    "thread)"
                )
        lines.append(
            "   ratios use MV/s; per server CPU-second (less sensitive to other load): "
            + ", ".join(
                f"{k} {_n(v.get('oursOverTheirsPerCpuSecond'), 2)}x"
                for k, v in ing["ratios"].items()
            )
        )

    fan = s.get("fanout")
    if fan:
        lines.append("")
        if "error" in fan:
            lines.append(f"2. Fan-out: FAILED: {fan['error'][:300]}")
        else:
            lines.append(
                f"2. Fan-out: {_n(fan['chargePoints'])} CPs x 1 MeterValues/s, {_n(fan['owners'])} "
                f'owners + {fan["admins"]} admins watching "*", {fan["seconds"]:.0f} s '
                f"(setup {fan['setupSeconds']:.0f} s)"
            )
            lines.append(
                f"   updates in {_n(fan['updatesPerSecond'])}/s, "
                f"deliveries {_n(fan['deliveriesPerSecond'])}/s,"
                f" lost {_n(fan['lost'])} of {_n(fan['deliveriesExpected'])} "
                f"(owners {fan['lostOwner']}, "
                f"admins {fan['lostAdmin']}), seq gaps {fan['seqGaps']}, "
                f"late sends {fan['lateSends']}"
            )
            lines.append(
                f"   latency CP send → app receive: p50 {_ms(fan['latency']['p50'])} ms, "
                f"p99 {_ms(fan['latency']['p99'])} ms, max {_ms(fan['latency']['max'])} ms "
                f"(owners p99 {_ms(fan['ownerLatency']['p99'])}, admins p99 "
                f"{_ms(fan['adminLatency']['p99'])}); "
                f"MeterValues RTT p99 {_ms(fan['rtt']['p99'])} ms"
            )
            lines.append(
                f"   server CPU {fan['serverCpu']:.2f} (runnable but waiting for a CPU "
                f"{fan.get('serverRunqueueWait', 0.0):.2f}; "
                f"{_n(fan.get('deliveriesPerServerCpuSecond'))} deliveries per server CPU-second), "
                f"generators {fan['generatorCpu']:.2f}, "
                f"other {fan['otherCpu']:.2f}; server RSS {fan['serverRssKiB'] / 1024:.0f} MiB"
            )

    con = s.get("connections")
    if con:
        lines.append("")
        if "error" in con:
            lines.append(f"3. Connections: FAILED: {con['error'][:300]}")
        else:
            lines.append(
                f"3. Connections: {_n(con['appConnections'])} authenticated idle app connections + "
                f"{_n(con['chargePoints'])} charge points "
                f"(Heartbeat every {con['heartbeatIntervalS']} s)"
            )
            lines.append(
                f"   reconnect storm (all at once; a client retries after a "
                f"{con['clientHandshakeTimeoutS']:.0f} s handshake timeout, backoff 0.2-2 s)"
            )
            lines.append(
                f"   accepted in {con['acceptSeconds']:.1f} s ({_n(con['accepted'])} ok, "
                f"{con['failed']} failed, {_n(con['connectRetries'])} connect retries"
                + (f", last: {con['lastConnectError']}" if con.get("lastConnectError") else "")
                + ")"
            )
            kinds = con.get("byKind", {})
            for kind, label in (("app", "app clients"), ("cp", "charge points")):
                k = kinds.get(kind)
                if k:
                    lines.append(
                        f"     {label}: {_n(k['done'])} in {_n(k['acceptSeconds'], 1)} s, "
                        f"{_n(k['retries'])} retries, {k['failed']} failed"
                        + (f" ({k['lastError']})" if k.get("lastError") else "")
                    )
            tcp = con.get("stormTcp", {})
            lines.append(
                f"     server CPU during the storm {con['stormServerCpu']:.2f}, generators "
                f"{con['stormGeneratorCpu']:.2f}, other {con['stormOtherCpu']:.2f}; kernel: "
                f"{_n(tcp.get('ListenOverflows'))} listen-queue overflows, "
                f"{_n(tcp.get('TCPSynRetrans'))} SYN retransmits"
            )
            lines.append(
                f"   RSS {con['rssBeforeKiB'] / 1024:.0f} → {con['rssAfterKiB'] / 1024:.0f} MiB = "
                f"{con['rssPerConnectionKiB']:.1f} KiB per connection; idle CPU "
                f"{con['idleServerCpu'] * 100:.1f}% of a core over {con['idleSeconds']:.0f} s "
                f"({con['heartbeatsAnsweredIdle']} heartbeats answered, "
                f"{con['unexpectedCloses']} dropped)"
            )

    cmd = s.get("command")
    if cmd:
        lines.append("")
        if "error" in cmd:
            lines.append(f"4. Command latency: FAILED: {cmd['error'][:300]}")
        else:
            lines.append(
                f"4. Command latency: {cmd['users']} users start/stop in a loop "
                f"(think {cmd['thinkMs'][0]}-{cmd['thinkMs'][1]} ms), {cmd['seconds']:.0f} s, "
                f"{_n(cmd['cycles'])} cycles ({_n(cmd['startsPerSecond'])} starts/s)"
            )
            lines.append(
                f"   start_charging_request → response: p50 {_ms(cmd['startTotal']['p50'])} ms, "
                f"p99 {_ms(cmd['startTotal']['p99'])} ms; charge point's share p99 "
                f"{_ms(cmd['chargePointShare']['p99'])} ms; our overhead p50 "
                f"{_ms(cmd['startOverhead']['p50'])} ms, p99 {_ms(cmd['startOverhead']['p99'])} ms"
            )
            lines.append(
                f"   stop: p50 {_ms(cmd['stopTotal']['p50'])} ms, "
                f"p99 {_ms(cmd['stopTotal']['p99'])} ms;"
                f" errors {cmd['errors'] or 'none'}; server CPU {cmd['serverCpu']:.2f}"
            )

    cl = s.get("cluster")
    if cl:
        lines.append("")
        lines.extend(_cluster_lines(cl))

    lines.append("")
    lines.append("Targets (issue 5)")
    for t in results["targets"]:
        mark = {True: "PASS", False: "FAIL", None: "n/a "}[t["passed"]]
        value = "-" if t["value"] is None else f"{t['value']:,.2f} {t['unit']}"
        detail = f"  ({t['detail']})" if t["detail"] else ""
        lines.append(f"  [{mark}] {t['scenario']:<14} {t['name']:<42} {value}{detail}")
    for note in results.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)


def _fig(value: Any) -> str:
    """A figure with the digits that matter: 12,345 / 123.4 / 1.23 / 0.0123."""
    if not isinstance(value, int | float):
        return "-"
    size = abs(value)
    if size >= 1000:
        return f"{value:,.0f}"
    if size >= 100:
        return f"{value:.1f}"
    if size >= 1 or size == 0:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _cluster_lines(cl: dict[str, Any]) -> list[str]:
    """Scenario 5: medians per arm, B / A, the CPU of every process per run, the problems."""
    if "error" in cl:
        return [f"5. Cluster: FAILED: {cl['error'][:300]}"]
    p = cl["profile"]
    lines = [
        "5. Cluster: the same loads through A = "
        + cl["arms"]["A"]
        + " and B = "
        + cl["arms"]["B"]
        + f"; runs {' '.join(cl['order'])}, medians",
        f"   fan-out: {_n(p['fanoutChargePoints'])} CPs x 1 MeterValues/s, "
        f"{_n(p['fanoutChargePoints'])} owners + {p['fanoutAdmins']} admins, "
        f"{p['fanoutSeconds']:.0f} s; ingest: {_n(p['ingestChargePoints'])} closed-loop CPs with "
        f"their owners connected, {p['ingestSeconds']:.0f} s",
        "   CPU µs per message = CPU-seconds of the servers (+ HAProxy + the Redis server in B) "
        "over the window / messages (updates in for the fan-out, MeterValues for the ingest)",
        f"   {'load':<8} {'figure':<24} {'A':>10} {'B':>10} {'B/A':>7}"
        "  (Δ = B - A: the shared Redis's background is in both)",
    ]
    medians, ratios = cl["medians"], cl["ratiosBOverA"]
    for load, figures in HEADLINES.items():
        why = (cl.get("notComparable") or {}).get(load)
        for path, label in figures:
            key = ".".join(path)
            ratio = ratios[load].get(key)
            difference = (cl.get("differencesBMinusA") or {}).get(load, {}).get(key)
            mark = "*" if why and (ratio is not None or difference is not None) else ""
            compared = _n(ratio, 2) if difference is None else "Δ" + _fig(difference)
            lines.append(
                f"   {load:<8} {label:<24} {_fig(medians['A'][load][key]):>10} "
                f"{_fig(medians['B'][load][key]):>10} {compared + mark:>7}"
            )
        if why:
            lines.append(f"   {'':<8} * {load}: B / A is not like for like: {why}")
    lines.append(
        "   CPU per run (cores over the window): servers, HAProxy, Redis, PostgreSQL, other"
    )
    for run in cl["runs"]:
        tag = f"{run['arm']}{run['round']}"
        if "error" in run:
            lines.append(f"     {tag}: FAILED: {run['error'].splitlines()[0][:200]}")
            continue
        parts = []
        for load in ("fanout", "ingest"):
            row = run.get(load) or {}
            if "error" in row:
                parts.append(f"{load} FAILED")
                continue
            cpu = row.get("cpu", {})
            nodes = " ".join(f"{k} {v:.2f}" for k, v in cpu.get("perServer", {}).items())
            parts.append(
                f"{load} {cpu.get('servers', 0):.2f} ({nodes}), hap {cpu.get('haproxy', 0):.2f}, "
                f"redis {cpu.get('redis', 0):.2f}, pg {cpu.get('postgres', 0):.2f}, "
                f"other {row.get('otherCpu', 0):.2f}"
            )
        lines.append(f"     {tag}: " + "; ".join(parts))
        for load in ("fanout", "ingest"):
            publishers = (run.get(load) or {}).get("publishers") or {}
            if publishers:
                lines.append(
                    f"         {load} push publishers: "
                    + "; ".join(
                        f"{node} {_n(p['eventsPublished'])} events in {_n(p['roundTrips'])} "
                        f"round trips ({_n(p['eventsPerRoundTrip'], 1)}/trip), "
                        f"{_n(p['eventsDropped'])} dropped"
                        for node, p in publishers.items()
                        if p["eventsPublished"] or p["eventsDropped"]
                    )
                )
    for problem in cl.get("problems", []):
        lines.append(f"   problem: {problem}")
    return lines


def finish(results: dict[str, Any], out: Path) -> str:
    results["targets"] = [asdict(t) for t in targets(results)]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    return render(results)
