"""Micro-benchmark: the cost of cluster fan-out against the in-process hub, in the same run.

``python -m bench.hubs [--quick] [--repeats N] [--redis-url URL]``

The same workload through both paths, in one process on uvloop (as ``serve`` runs):

- **memory**: ``MemoryBus.publish`` -> ``UpdateHub.on_event`` -> sessions (ROLE=all);
- **cluster**: ``MemoryBus.publish`` -> ``PushPublisher`` (queue, pipelined Lua: INCR, XADD,
  PUBLISH) -> Redis -> pub/sub -> ``ClusterHub`` -> sessions (a gateway's publisher and an api
  node's hub, here in one process: its CPU is both nodes' share).

Workload: ``USERS`` users with one session each, ``ADMINS`` admins subscribed to every charge
point; each event is a meter sample of one user's transaction, so it becomes 1 + ADMINS frames
(the shape of bench scenario 2). A session only counts what it gets. Figures per path: events/s
from the first publish to the last delivery, this process's CPU µs per event, and for the
cluster path Redis's CPU µs per event (``INFO cpu`` before and after) and round trips. Each path
runs ``repeats`` times, alternating, and the median counts. Redis: a database of its own
(emptied before each run; never database 0).

``--busy MS``: a task burns MS ms of CPU per turn of the event loop while each path runs, as a
gateway's charge points do: a Redis round trip then costs several such turns (the publisher
waits for its reply), which is what a busy gateway's publisher pays, not Redis's own work.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from charging_api.api.hub import UpdateHub
from charging_api.app import run
from charging_api.bus.memory import MemoryBus
from charging_api.cluster.fanout import ClusterHub, PushPublisher, connect
from charging_api.domain.events import MeterValuesReceived
from charging_api.domain.models import MeterSample

USERS = 2_000
ADMINS = 10
WHEN = datetime(2024, 1, 15, 10, 30, tzinfo=UTC)
OUT = Path(__file__).resolve().parent / "results" / "hubs.json"


class Counter:
    """A session that counts its frames and says when it has all it expects."""

    def __init__(self, done: asyncio.Event, total: list[int], expected: int) -> None:
        self._done = done
        self._total = total
        self._expected = expected

    def deliver(self, frame: bytes, droppable: bool) -> None:
        self._total[0] += 1
        if self._total[0] >= self._expected:
            self._done.set()


def events(count: int) -> list[MeterValuesReceived]:
    return [
        MeterValuesReceived(
            f"CP-{i % USERS}",
            1,
            i % USERS,
            f"user-{i % USERS}",
            MeterSample(WHEN, energy_import_kwh=float(i), power_kw=7.4),
        )
        for i in range(count)
    ]


@contextlib.asynccontextmanager
async def busy_loop(busy_ms: float) -> AsyncIterator[None]:
    """While inside: a task takes ``busy_ms`` of CPU per turn of the event loop (none: 0)."""
    if busy_ms <= 0:
        yield
        return

    async def burn() -> None:
        while True:
            until = time.perf_counter() + busy_ms / 1000
            while time.perf_counter() < until:
                pass
            await asyncio.sleep(0)

    task = asyncio.create_task(burn())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def memory_path(batch: list[MeterValuesReceived]) -> dict[str, float]:
    bus, hub = MemoryBus(), UpdateHub()
    bus.subscribe(hub.on_event)
    done, total = asyncio.Event(), [0]
    expected = len(batch) * (1 + ADMINS)
    for u in range(USERS):
        await hub.attach(f"user-{u}", Counter(done, total, expected))
    for a in range(ADMINS):
        await hub.attach(f"admin-{a}", Counter(done, total, expected))
        await hub.subscribe(f"admin-{a}", None)
    cpu, wall = time.process_time(), time.perf_counter()
    for event in batch:
        await bus.publish(event)
    await asyncio.wait_for(done.wait(), 60)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"events_per_s": len(batch) / wall, "cpu_us_per_event": cpu / len(batch) * 1e6}


async def _redis_cpu(url: str) -> float:
    client = connect(url)
    try:
        info = await client.info("cpu")
    finally:
        await client.aclose()
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def cluster_path(
    batch: list[MeterValuesReceived], url: str, history_ttl: float
) -> dict[str, float]:
    client = connect(url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()
    bus = MemoryBus()
    publisher = PushPublisher(url, queue_size=len(batch), history_ttl=history_ttl)
    hub = ClusterHub(url, "bench-api")
    await publisher.start()
    await hub.start()
    publisher.follow(bus)
    done, total = asyncio.Event(), [0]
    expected = len(batch) * (1 + ADMINS)
    try:
        for u in range(USERS):
            await hub.attach(f"user-{u}", Counter(done, total, expected))
        for a in range(ADMINS):
            await hub.attach(f"admin-{a}", Counter(done, total, expected))
            await hub.subscribe(f"admin-{a}", None)
        redis_cpu = await _redis_cpu(url)
        cpu, wall = time.process_time(), time.perf_counter()
        for event in batch:
            await bus.publish(event)
        await asyncio.wait_for(done.wait(), 120)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        redis_cpu = await _redis_cpu(url) - redis_cpu
        if publisher.dropped:
            raise RuntimeError(f"the publisher dropped {publisher.dropped} events")
        return {
            "events_per_s": len(batch) / wall,
            "cpu_us_per_event": cpu / len(batch) * 1e6,
            "redis_cpu_us_per_event": redis_cpu / len(batch) * 1e6,
            "events_per_round_trip": len(batch) / max(1, publisher.round_trips),
        }
    finally:
        await hub.close()
        await publisher.close()


async def measure(
    count: int, repeats: int, url: str, history_ttl: float, busy_ms: float = 0.0
) -> dict[str, Any]:
    batch = events(count)
    runs: dict[str, list[dict[str, float]]] = {"memory": [], "cluster": []}
    for _ in range(repeats):
        async with busy_loop(busy_ms):
            runs["memory"].append(await memory_path(batch))
        async with busy_loop(busy_ms):
            runs["cluster"].append(await cluster_path(batch, url, history_ttl))
    medians = {
        path: {key: statistics.median(r[key] for r in results) for key in results[0]}
        for path, results in runs.items()
    }
    return {
        "events": count,
        "frames_per_event": 1 + ADMINS,
        "users": USERS,
        "admins": ADMINS,
        "repeats": repeats,
        "busy_ms": busy_ms,
        "median": medians,
        "ratio_events_per_s": medians["memory"]["events_per_s"]
        / medians["cluster"]["events_per_s"],
        "ratio_cpu_per_event": medians["cluster"]["cpu_us_per_event"]
        / medians["memory"]["cpu_us_per_event"],
        "runs": runs,
    }


def render(result: dict[str, Any]) -> str:
    memory, cluster = result["median"]["memory"], result["median"]["cluster"]
    return "\n".join(
        [
            f"fan-out hubs: {result['events']} events x {result['frames_per_event']} frames, "
            f"median of {result['repeats']}"
            + (f", loop busy {result['busy_ms']:g} ms per turn" if result["busy_ms"] else ""),
            f"  memory  (MemoryBus+UpdateHub):      {memory['events_per_s']:>9,.0f} events/s "
            f"{memory['cpu_us_per_event']:>7.1f} us CPU/event",
            f"  cluster (Publisher+Redis+ClusterHub): {cluster['events_per_s']:>7,.0f} events/s "
            f"{cluster['cpu_us_per_event']:>7.1f} us CPU/event (+ Redis "
            f"{cluster['redis_cpu_us_per_event']:.1f} us; "
            f"{cluster['events_per_round_trip']:.0f} events per round trip)",
            f"  memory/cluster throughput: {result['ratio_events_per_s']:.1f}x; "
            f"cluster/memory CPU per event (this process): {result['ratio_cpu_per_event']:.1f}x",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hubs", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="2,000 events x 3 repeats")
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    parser.add_argument(
        "--history-ttl", type=float, default=86_400.0, help="PushPublisher's (0: no PEXPIRE)"
    )
    parser.add_argument(
        "--busy",
        type=float,
        default=0.0,
        metavar="MS",
        help="a task takes MS ms of CPU per event-loop turn (a busy gateway's loop)",
    )
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if args.redis_url.rstrip("/").endswith(("/0", ":6379")):
        parser.error("--redis-url: give the benchmark a database of its own (it empties it)")
    count, repeats = (2_000, 3) if args.quick else (args.events, args.repeats)
    result = run(measure(count, repeats, args.redis_url, args.history_ttl, args.busy))
    result["redis_url"] = args.redis_url
    result["history_ttl"] = args.history_ttl
    print(render(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
