"""Runs the scenarios in order within a time budget, then prints and saves the results."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import cluster, report, scenarios
from bench.procs import BENCH_DIR, PROJECT, BenchError, check_node_modules, raise_nofile

SCENARIOS: dict[str, Callable[[scenarios.Context], Awaitable[dict[str, Any]]]] = {
    "ingest": scenarios.ingest,
    "fanout": scenarios.fanout,
    "connections": scenarios.connections,
    "command": scenarios.command,
    "cluster": cluster.cluster,
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a much smaller run, for iterating")
    parser.add_argument(
        "--only",
        default=",".join(SCENARIOS),
        help="comma-separated scenarios to run (default: all): " + ", ".join(SCENARIOS),
    )
    parser.add_argument(
        "--servers",
        default=",".join(scenarios.INGEST_SERVERS),
        help="scenario 1's servers (default: all): " + ", ".join(scenarios.INGEST_SERVERS),
    )
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "latest.json")
    parser.add_argument(
        "--budget",
        type=float,
        default=570.0,
        help="seconds for the whole run; scenarios left over are skipped",
    )
    parser.add_argument(
        "--py-spy",
        type=Path,
        metavar="DIR",
        dest="py_spy",
        help="record our server with py-spy during each measured window into DIR "
        "(figures from such a run are perturbed: use it to see where the time goes)",
    )
    parser.add_argument(
        "--py-spy-format", default="flamegraph", choices=["flamegraph", "speedscope", "raw"]
    )
    parser.add_argument(
        "--server-cmd",
        metavar="CMD",
        help="run this command instead of `charging-api serve` as the server under test "
        "(same environment); for measuring a candidate change",
    )
    parser.add_argument(
        "--redis-url",
        default=scenarios.Context.redis_url,
        help="the cluster scenario's Redis: a dedicated database index, FLUSHED before and after "
        "each cluster arm (default: %(default)s)",
    )
    parser.add_argument(
        "--postgres-admin",
        default=scenarios.Context.postgres_admin_dsn,
        help="the PostgreSQL server (a superuser DSN) the cluster scenario creates and drops a "
        "fresh database on for each arm (default: %(default)s)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the work directory (server and worker logs) and print its path",
    )
    return parser


def _server_argv(command: str | None) -> list[str] | None:
    """``--server-cmd`` split; paths relative to the project made absolute (the server runs in
    its own directory)."""
    if not command:
        return None
    argv = shlex.split(command)
    return [
        str(PROJECT / a) if not Path(a).is_absolute() and (PROJECT / a).exists() else a
        for a in argv
    ]


async def _run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    profile = scenarios.QUICK if args.quick else scenarios.FULL
    ctx = scenarios.Context(
        profile,
        workdir,
        py_spy_dir=args.py_spy,
        py_spy_format=args.py_spy_format,
        server_argv=_server_argv(args.server_cmd),
        redis_url=args.redis_url,
        postgres_admin_dsn=args.postgres_admin,
    )
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in SCENARIOS]
    if unknown:
        raise BenchError(f"unknown scenario(s): {', '.join(unknown)}")
    servers = tuple(s.strip() for s in args.servers.split(",") if s.strip())
    started = time.monotonic()
    deadline = started + args.budget
    results: dict[str, Any] = {
        "profile": profile.name,
        "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": report.machine(),
        "scenarios": {},
        "notes": ctx.notes,
    }
    for name in chosen:
        remaining = deadline - time.monotonic()
        if remaining < 20:
            ctx.notes.append(f"{name} skipped: the time budget ({args.budget:.0f} s) ran out")
            continue
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        try:
            if name == "ingest":
                outcome = await asyncio.wait_for(scenarios.ingest(ctx, servers), remaining)
            else:
                outcome = await asyncio.wait_for(SCENARIOS[name](ctx), remaining)
        except TimeoutError:
            outcome = {"error": f"did not finish within the remaining budget ({remaining:.0f} s)"}
        except BenchError as exc:
            outcome = {"error": str(exc)}
        results["scenarios"][name] = outcome
        print(f"[bench] {name} done in {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    results["elapsedSeconds"] = round(time.monotonic() - started, 1)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        import uvloop  # noqa: F401  (the peers and our server run on it)
    except ImportError:  # pragma: no cover
        print("bench: uvloop is missing from this environment", file=sys.stderr)
        return 2
    limit = raise_nofile()
    if limit < 16_384 and not args.quick:
        print(
            f"bench: RLIMIT_NOFILE is {limit}; the connections scenario needs ~13,000 "
            "descriptors in the server process",
            file=sys.stderr,
        )
    try:
        check_node_modules()
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="charging-api-bench-"))
    try:
        try:
            results = asyncio.run(_run(args, workdir))
        except BenchError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 2
        print(report.finish(results, args.out))
        print(f"\nresults written to {args.out}")
    finally:
        if args.keep:
            print(f"work directory (logs): {workdir}", file=sys.stderr)
        else:
            with contextlib.suppress(OSError):
                shutil.rmtree(workdir)
    return 0
