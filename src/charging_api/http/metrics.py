"""``GET /metrics``: this process's figures in the Prometheus text format.

Two kinds of figure, chosen for the cost on the hot paths:

- **Counts read at scrape time.** The doors, the hub and the bus already count (or count in a
  plain dict, one increment per message): connections, app requests, pushes, error codes,
  OCPP CALLs and CALLERRORs, bus publishes. :class:`Counts` is a snapshot of them, taken by
  the composition root when Prometheus scrapes, and turned into metric families here; no
  metrics-library call per message.
- **Histograms observed as things happen**, where a distribution cannot be rebuilt from a
  count: app start/stop latency, OCPP CALL latency (one observation per command), bus delivery
  lag (one per event delivered, not per recipient), storage batch latency (one per batch).

Every metric lives in a :class:`~prometheus_client.CollectorRegistry` owned by one
:class:`Metrics` (one per :class:`~charging_api.app.Application`), never the library's
global registry: several servers in one process (the tests) keep their own figures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

#: The ``Content-Type`` of a ``/metrics`` answer (text exposition format 0.0.4).
CONTENT_TYPE = CONTENT_TYPE_LATEST

_COMMAND_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
_BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


@dataclass(frozen=True, slots=True)
class Counts:
    """What the doors, hub and bus have counted since start-up (connections: right now)."""

    app_connections: int
    ocpp_connections: int
    app_requests: Mapping[str, int]  # by request type
    app_pushes: Mapping[str, int]  # frames delivered, by push type
    app_errors: Mapping[str, int]  # by error code sent to an app
    ocpp_calls_in: Mapping[str, int]  # by action
    ocpp_calls_out: Mapping[str, int]  # by action
    ocpp_errors_sent: Mapping[str, int]  # CALLERRORs, by OCPP error code
    ocpp_errors_received: Mapping[str, int]  # CALLERRORs, by OCPP error code
    bus_published: int
    #: A cluster node's Redis work (empty in one process): ``events_published`` (events the
    #: node's publisher numbered in Redis), ``pushes_numbered`` (frames, one per recipient),
    #: ``events_dropped`` (Redis unreachable), ``redis_round_trips`` (publisher and command
    #: client), ``commands_sent``/``commands_served`` (routed to and run for other nodes).
    cluster: Mapping[str, int] = field(default_factory=dict)


class _CountsCollector(Collector):
    """Metric families from a :class:`Counts` snapshot, taken at each scrape."""

    def __init__(self, counts: Callable[[], Counts]) -> None:
        self._counts = counts

    def describe(self) -> list[Metric]:
        return []  # families are only known at scrape time; nothing to check at register

    def collect(self) -> Iterator[Metric]:
        c = self._counts()
        connections = GaugeMetricFamily(
            "charging_connections", "Open WebSocket connections, by door", labels=["door"]
        )
        connections.add_metric(["app"], c.app_connections)
        connections.add_metric(["ocpp"], c.ocpp_connections)
        yield connections
        yield _by_label(
            "charging_app_requests", "App requests answered, by type", "type", c.app_requests
        )
        yield _by_label(
            "charging_app_pushes", "Push frames delivered to apps, by type", "type", c.app_pushes
        )
        yield _by_label(
            "charging_app_errors",
            "Error codes sent to apps (failed requests and refused frames), by code",
            "code",
            c.app_errors,
        )
        calls = CounterMetricFamily(
            "charging_ocpp_calls",
            "OCPP CALLs, by direction (in: from charge points, out: ours) and action",
            labels=["direction", "action"],
        )
        for action, n in sorted(c.ocpp_calls_in.items()):
            calls.add_metric(["in", action], n)
        for action, n in sorted(c.ocpp_calls_out.items()):
            calls.add_metric(["out", action], n)
        yield calls
        errors = CounterMetricFamily(
            "charging_ocpp_call_errors",
            "OCPP CALLERRORs, by direction (sent, received) and OCPP error code",
            labels=["direction", "code"],
        )
        for code, n in sorted(c.ocpp_errors_sent.items()):
            errors.add_metric(["sent", code], n)
        for code, n in sorted(c.ocpp_errors_received.items()):
            errors.add_metric(["received", code], n)
        yield errors
        yield CounterMetricFamily(
            "charging_bus_published", "Domain events published on the bus", value=c.bus_published
        )
        if c.cluster:
            yield _by_label(
                "charging_cluster",
                "A cluster node's Redis work, by kind (events published and dropped, frames "
                "numbered, Redis round trips, commands sent and served)",
                "kind",
                c.cluster,
            )


def _by_label(name: str, doc: str, label: str, values: Mapping[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, n in sorted(values.items()):
        family.add_metric([key], n)
    return family


class Metrics:
    """The registry of one application: its histograms, and the counts read at scrape time.

    The ``observe_*`` methods are the hooks the composition root hands to the doors, the hub
    and the store (plain callables: those modules never import the metrics library).
    """

    def __init__(self, counts: Callable[[], Counts]) -> None:
        self.registry = CollectorRegistry()
        self._commands = Histogram(
            "charging_app_command_duration_seconds",
            "App start/stop requests: receipt to response, by request type",
            ["type"],
            registry=self.registry,
            buckets=_COMMAND_BUCKETS,
        )
        self._ocpp_calls = Histogram(
            "charging_ocpp_call_duration_seconds",
            "OCPP CALLs we send: sent to outcome (result, CALLERROR or timeout), by action",
            ["action"],
            registry=self.registry,
            buckets=_COMMAND_BUCKETS,
        )
        self._lag = Histogram(
            "charging_bus_delivery_lag_seconds",
            "Event timestamp to delivery by the hub, once per event that reaches an app",
            registry=self.registry,
            buckets=_LAG_BUCKETS,
        )
        self._batches = Histogram(
            "charging_storage_batch_duration_seconds",
            "Storage batch writes (meter samples, connector statuses), by kind",
            ["kind"],
            registry=self.registry,
            buckets=_BATCH_BUCKETS,
        )
        self._batch_failures = Counter(
            "charging_storage_batch_failures",
            "Storage batch writes that failed (kept and retried), by kind",
            ["kind"],
            registry=self.registry,
        )
        for kind in ("meter", "status"):  # present from the first scrape, at zero
            self._batches.labels(kind)
            self._batch_failures.labels(kind)
        self.registry.register(_CountsCollector(counts))
        # The labelled children by label value: ``labels()`` checks and locks on every call,
        # a cost paid twice per app command otherwise (the label sets are small and fixed).
        self._command_of: dict[str, Histogram] = {}
        self._ocpp_call_of: dict[str, Histogram] = {}

    def observe_command(self, request_type: str, seconds: float) -> None:
        child = self._command_of.get(request_type)
        if child is None:
            child = self._command_of[request_type] = self._commands.labels(request_type)
        child.observe(seconds)

    def observe_ocpp_call(self, action: str, seconds: float) -> None:
        child = self._ocpp_call_of.get(action)
        if child is None:
            child = self._ocpp_call_of[action] = self._ocpp_calls.labels(action)
        child.observe(seconds)

    def observe_delivery_lag(self, seconds: float) -> None:
        self._lag.observe(seconds)

    def observe_batch(self, kind: str, seconds: float, failed: bool) -> None:
        self._batches.labels(kind).observe(seconds)
        if failed:
            self._batch_failures.labels(kind).inc()

    def exposition(self) -> bytes:
        """The text exposition of every metric, as ``GET /metrics`` answers it."""
        return generate_latest(self.registry)
