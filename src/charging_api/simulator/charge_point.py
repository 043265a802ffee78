"""One simulated OCPP 1.6-J charge point, built on the ``ocpp`` library's ``ChargePoint``.

A :class:`SimulatedChargePoint` lives for one WebSocket connection: its ``run()`` boots,
heartbeats, answers the central system, and returns when the socket closes. What outlives a
connection — the energy register, the state of charge, a transaction under way — is kept in
:class:`SimConnector` objects that the caller passes to the next connection (see
:mod:`charging_api.simulator.fleet`), so a charge point that reconnects resumes its transaction
the way a real one does instead of forgetting it.

Flows (OCPP 1.6-J, charge point side):

* boot: ``BootNotification`` (retried after ``interval`` while Pending/Rejected), then
  ``Heartbeat`` every ``interval`` seconds, then ``StatusNotification`` for each connector
  (Available, or Charging and metering again for a transaction resumed after a reconnect);
* ``RemoteStartTransaction``: Accepted when the connector is Available (any Available connector
  when none is named), else Rejected; then ``StatusNotification`` Preparing, ``Authorize``,
  ``StartTransaction``, ``StatusNotification`` Charging, and ``MeterValues`` every
  ``meter_interval`` seconds while charging;
* ``RemoteStopTransaction``: Accepted when this charge point runs that transaction (or has a
  StartTransaction whose answer has not reached it yet: stopped once started), else
  Rejected; then ``StatusNotification`` Finishing, ``StopTransaction`` (reason Remote),
  ``StatusNotification`` Available.

The sequences after a remote start or stop run in tasks owned by the charge point (a kept set,
cancelled when the connection ends), started from an ``@after`` hook, i.e. after the CALLRESULT
went out. Awaiting a CALL inside an ``@on`` handler would deadlock: the library reads the
answer in the same loop that is running the handler. ``call(..., suppress=False)`` everywhere,
so a CALLERROR raises instead of returning None.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from ocpp.exceptions import OCPPError, UnknownCallErrorCodeError, ValidationError
from ocpp.routing import after, on
from ocpp.v16 import ChargePoint, call
from ocpp.v16 import call_result as result
from ocpp.v16.enums import (
    Action,
    AuthorizationStatus,
    ChargePointErrorCode,
    ChargePointStatus,
    Reason,
    RegistrationStatus,
    RemoteStartStopStatus,
)
from websockets.exceptions import ConnectionClosed

from charging_api.timefmt import utc_now_text

__all__ = ["SimConnector", "SimulatedChargePoint", "new_connectors"]

log = logging.getLogger("charging_api.simulator")

VENDOR = "charging-api"
MODEL = "simulator"
#: Used when the central system answers BootNotification with ``interval`` 0.
DEFAULT_HEARTBEAT_INTERVAL = 300.0
#: Wait before retrying a Pending/Rejected boot whose answer had ``interval`` 0.
DEFAULT_BOOT_RETRY = 10.0


#: What ``ChargePoint.call`` raises when a CALL gets no usable answer (besides ConnectionClosed).
CALL_FAILED = (TimeoutError, OCPPError, ValidationError, UnknownCallErrorCodeError)


class Connection(Protocol):
    """What the simulator needs of a WebSocket (``websockets``' ``ClientConnection`` fits)."""

    async def recv(self) -> str | bytes: ...

    async def send(self, message: str) -> None: ...

    async def close(self) -> None: ...


@dataclass(slots=True)
class SimConnector:
    """One connector and the car plugged into it; outlives a connection.

    The electrical model: single phase at about 230 V, 32 A until 80 % state of charge, then the
    current tapers linearly to 0 at 100 %. Energy is integrated over monotonic time.
    """

    connector_id: int
    energy_wh: float
    soc: float
    battery_kwh: float = 60.0
    max_current_a: float = 32.0
    status: str = ChargePointStatus.available
    transaction_id: int | None = None
    id_tag: str | None = None
    stopping: bool = False
    # A StartTransaction is on the wire, its transactionId not yet ours; a RemoteStop naming a
    # transaction in that window is kept in ``stop_when_started`` (see on_remote_stop).
    starting: bool = False
    stop_when_started: int | None = None
    voltage_v: float = 230.0
    current_a: float = 0.0
    _last_update: float | None = field(default=None, repr=False)

    @property
    def power_w(self) -> float:
        return self.voltage_v * self.current_a

    def advance(self, now: float, rng: random.Random) -> None:
        """Integrate energy and state of charge up to ``now`` (monotonic seconds), re-draw V/A."""
        if self._last_update is not None and self.current_a > 0:
            wh = self.power_w * (now - self._last_update) / 3600.0
            self.energy_wh += wh
            self.soc = min(100.0, self.soc + wh / (self.battery_kwh * 10.0))
        self._last_update = now
        self.voltage_v = round(230.0 + rng.uniform(-2.0, 2.0), 1)
        if self.soc >= 100.0:
            self.current_a = 0.0
        elif self.soc <= 80.0:
            self.current_a = round(self.max_current_a - rng.uniform(0.0, 0.6), 1)
        else:
            self.current_a = round(self.max_current_a * (100.0 - self.soc) / 20.0, 1)

    def begin(self, now: float, rng: random.Random) -> None:
        """Start drawing current (the car starts charging)."""
        self._last_update = None
        self.advance(now, rng)

    def end(self, now: float, rng: random.Random) -> None:
        """Account for the energy up to ``now`` and stop drawing current."""
        self.advance(now, rng)
        self.current_a = 0.0
        self._last_update = None

    def sampled_values(self) -> list[dict[str, str]]:
        """The OCPP 1.6 ``sampledValue`` list of one periodic sample (wire form, camelCase)."""
        periodic = "Sample.Periodic"
        return [
            {
                "value": f"{self.energy_wh:.1f}",
                "context": periodic,
                "measurand": "Energy.Active.Import.Register",
                "location": "Outlet",
                "unit": "Wh",
            },
            {
                "value": f"{self.power_w:.1f}",
                "context": periodic,
                "measurand": "Power.Active.Import",
                "location": "Outlet",
                "unit": "W",
            },
            {
                "value": f"{self.voltage_v:.1f}",
                "context": periodic,
                "measurand": "Voltage",
                "location": "Outlet",
                "unit": "V",
            },
            {
                "value": f"{self.current_a:.1f}",
                "context": periodic,
                "measurand": "Current.Import",
                "location": "Outlet",
                "unit": "A",
            },
            {
                "value": f"{self.soc:.1f}",
                "context": periodic,
                "measurand": "SoC",
                "location": "EV",
                "unit": "Percent",
            },
        ]


def new_connectors(count: int, rng: random.Random | None = None) -> dict[int, SimConnector]:
    """``count`` idle connectors (ids 1..count) with a used-looking energy register."""
    if count < 1:
        raise ValueError("a charge point needs at least one connector")
    rng = rng or random.Random()
    return {
        n: SimConnector(
            connector_id=n,
            energy_wh=float(rng.randrange(100_000, 5_000_000)),
            soc=round(rng.uniform(20.0, 60.0), 1),
        )
        for n in range(1, count + 1)
    }


class SimulatedChargePoint(ChargePoint):  # type: ignore[misc]  # ocpp is untyped
    """A simulated OCPP 1.6-J charge point on one open connection.

    Hooks a test can await (they belong to this connection; clear them to wait again):
    ``booted`` (BootNotification accepted), ``transaction_started`` (Charging after a
    StartTransaction), ``transaction_stopped`` (Available after a StopTransaction),
    ``meter_values_sent`` (after each MeterValues, with ``meter_values_count``).
    ``transactions`` maps connector id -> active transaction id.
    """

    def __init__(
        self,
        charge_point_id: str,
        connection: Connection,
        *,
        connectors: int = 1,
        meter_interval: float = 10.0,
        state: dict[int, SimConnector] | None = None,
        rng: random.Random | None = None,
        response_timeout: float = 30.0,
    ) -> None:
        super().__init__(charge_point_id, connection, response_timeout=response_timeout)
        if meter_interval <= 0:
            raise ValueError("meter_interval must be positive")
        self.meter_interval = meter_interval
        self._rng = rng or random.Random()
        self.connectors: dict[int, SimConnector] = (
            state if state is not None else new_connectors(connectors, self._rng)
        )
        self.heartbeat_interval: float | None = None
        self.booted = asyncio.Event()
        self.transaction_started = asyncio.Event()
        self.transaction_stopped = asyncio.Event()
        self.meter_values_sent = asyncio.Event()
        self.meter_values_count = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._locks = {n: asyncio.Lock() for n in self.connectors}
        self._meter_tasks: dict[int, tuple[asyncio.Task[None], asyncio.Event]] = {}
        self._pending_starts: dict[str, tuple[int, str]] = {}
        self._pending_stops: dict[str, int] = {}

    @property
    def transactions(self) -> dict[int, int]:
        """Connector id -> transaction id, for the transactions under way."""
        return {
            n: c.transaction_id for n, c in self.connectors.items() if c.transaction_id is not None
        }

    # --- lifecycle ----------------------------------------------------------------------

    async def run(self) -> None:
        """Boot and serve until the socket closes; then cancel every task this connection owns."""
        self._spawn(self._boot(), "boot")
        try:
            await self.start()
        except ConnectionClosed as exc:
            log.info("%s disconnected (%s)", self.id, exc)
        finally:
            await self._cancel_tasks()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=f"{self.id}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None or isinstance(exc, ConnectionClosed):
            return
        log.error("%s task %s failed", self.id, task.get_name(), exc_info=exc)

    async def _cancel_tasks(self) -> None:
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._tasks.difference_update(tasks)
        self._meter_tasks.clear()

    async def _close(self) -> None:
        await self._connection.close()

    # --- boot and heartbeat ---------------------------------------------------------------

    async def _boot(self) -> None:
        try:
            while True:
                answer = await self.call(
                    call.BootNotification(charge_point_model=MODEL, charge_point_vendor=VENDOR),
                    suppress=False,
                )
                interval = float(answer.interval)
                if answer.status == RegistrationStatus.accepted:
                    break
                retry = interval if interval > 0 else DEFAULT_BOOT_RETRY
                log.info("%s boot %s, retrying in %.0fs", self.id, answer.status, retry)
                await asyncio.sleep(retry)
        except ConnectionClosed:
            raise
        except Exception:
            log.exception("%s BootNotification failed; closing", self.id)
            await self._close()
            return
        self.heartbeat_interval = interval if interval > 0 else DEFAULT_HEARTBEAT_INTERVAL
        log.info("%s booted (heartbeat every %.0fs)", self.id, self.heartbeat_interval)
        self.booted.set()
        self._spawn(self._heartbeat(self.heartbeat_interval), "heartbeat")
        for connector in self.connectors.values():
            await self._resume(connector)

    async def _heartbeat(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.call(call.Heartbeat(), suppress=False)
            except CALL_FAILED as exc:
                log.warning("%s Heartbeat failed: %r", self.id, exc)

    async def _resume(self, connector: SimConnector) -> None:
        """Report a connector after (re)boot; pick up a transaction that outlived a connection."""
        n = connector.connector_id
        if connector.transaction_id is None:
            connector.stopping = False
            connector.id_tag = None
            await self._status(connector, ChargePointStatus.available)
        elif connector.stopping:
            self._spawn(self._stop_sequence(n, Reason.remote), f"stop:{n}")
        else:
            async with self._locks[n]:
                log.info(
                    "%s connector %d resumes transaction %d", self.id, n, connector.transaction_id
                )
                connector.begin(time.monotonic(), self._rng)
                await self._status(connector, ChargePointStatus.charging)
                self._start_metering(connector)

    async def _status(self, connector: SimConnector, status: str) -> None:
        old, connector.status = connector.status, status
        if old != status:
            log.info("%s connector %d %s -> %s", self.id, connector.connector_id, old, status)
        await self.call(
            call.StatusNotification(
                connector_id=connector.connector_id,
                error_code=ChargePointErrorCode.no_error,
                status=status,
                timestamp=utc_now_text(),
            ),
            suppress=False,
        )

    # --- remote start -----------------------------------------------------------------------

    @on(Action.remote_start_transaction)  # type: ignore[untyped-decorator]
    def on_remote_start_transaction(
        self,
        id_tag: str,
        call_unique_id: str,
        connector_id: int | None = None,
        **_: Any,
    ) -> Any:
        connector = self._free_connector(connector_id)
        if connector is None or not self.booted.is_set():
            log.info("%s RemoteStart on connector %s rejected", self.id, connector_id)
            return result.RemoteStartTransaction(status=RemoteStartStopStatus.rejected)
        # Reserve the connector now, so a second RemoteStart is rejected; the wire follows.
        connector.status = ChargePointStatus.preparing
        self._pending_starts[call_unique_id] = (connector.connector_id, id_tag)
        return result.RemoteStartTransaction(status=RemoteStartStopStatus.accepted)

    @after(Action.remote_start_transaction)  # type: ignore[untyped-decorator]
    def after_remote_start_transaction(self, call_unique_id: str, **_: Any) -> None:
        pending = self._pending_starts.pop(call_unique_id, None)
        if pending is not None:
            n, id_tag = pending
            self._spawn(self._start_sequence(n, id_tag), f"start:{n}")

    def _free_connector(self, connector_id: int | None) -> SimConnector | None:
        if connector_id is None:
            return next(
                (c for c in self.connectors.values() if c.status == ChargePointStatus.available),
                None,
            )
        connector = self.connectors.get(connector_id)
        if connector is None or connector.status != ChargePointStatus.available:
            return None
        return connector

    async def _start_sequence(self, n: int, id_tag: str) -> None:
        connector = self.connectors[n]
        async with self._locks[n]:
            # The reservation made by the handler: the wire status is still Available.
            connector.status = ChargePointStatus.available
            try:
                await self._status(connector, ChargePointStatus.preparing)
                auth = await self.call(call.Authorize(id_tag=id_tag), suppress=False)
                verdict = auth.id_tag_info["status"]
                if verdict != AuthorizationStatus.accepted:
                    log.info("%s connector %d: id tag %s %s", self.id, n, id_tag, verdict)
                    await self._status(connector, ChargePointStatus.available)
                    return
                connector.begin(time.monotonic(), self._rng)
                connector.starting = True
                started = await self.call(
                    call.StartTransaction(
                        connector_id=n,
                        id_tag=id_tag,
                        meter_start=int(connector.energy_wh),
                        timestamp=utc_now_text(),
                    ),
                    suppress=False,
                )
            except ConnectionClosed:
                raise
            except Exception:
                log.exception("%s connector %d: start failed", self.id, n)
                connector.starting, connector.stopping = False, False
                connector.stop_when_started = None
                connector.end(time.monotonic(), self._rng)
                connector.status = ChargePointStatus.available  # reported on reconnect at worst
                with contextlib.suppress(Exception):
                    await self._status(connector, ChargePointStatus.available)
                return
            connector.transaction_id = int(started.transaction_id)
            connector.id_tag = id_tag
            connector.starting = False
            stop_asked, connector.stop_when_started = connector.stop_when_started, None
            log.info("%s connector %d transaction %d started", self.id, n, started.transaction_id)
            verdict = started.id_tag_info["status"]
            if verdict != AuthorizationStatus.accepted:
                # StopTransactionOnInvalidId: the central system refused the tag after all.
                log.info("%s connector %d: StartTransaction says %s", self.id, n, verdict)
                connector.stopping = True
                self._spawn(self._stop_sequence(n, Reason.de_authorized), f"stop:{n}")
                return
            await self._status(connector, ChargePointStatus.charging)
            self._start_metering(connector)
            self.transaction_started.set()
            if stop_asked == connector.transaction_id:
                self._spawn(self._stop_sequence(n, Reason.remote), f"stop:{n}")
            elif stop_asked is not None:
                log.info(
                    "%s RemoteStop of transaction %s was not this start's", self.id, stop_asked
                )
                connector.stopping = False

    # --- metering ---------------------------------------------------------------------------

    def _start_metering(self, connector: SimConnector) -> None:
        stop = asyncio.Event()
        n = connector.connector_id
        task = asyncio.create_task(self._meter_loop(connector, stop), name=f"{self.id}:meter:{n}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        self._meter_tasks[n] = (task, stop)

    async def _stop_metering(self, n: int) -> None:
        entry = self._meter_tasks.pop(n, None)
        if entry is not None:
            task, stop = entry
            stop.set()  # let a MeterValues in flight finish rather than cancel it mid-call
            await asyncio.gather(task, return_exceptions=True)

    async def _meter_loop(self, connector: SimConnector, stop: asyncio.Event) -> None:
        while True:
            try:
                async with asyncio.timeout(self.meter_interval):
                    await stop.wait()
                return
            except TimeoutError:
                pass
            connector.advance(time.monotonic(), self._rng)
            try:
                await self.call(
                    call.MeterValues(
                        connector_id=connector.connector_id,
                        transaction_id=connector.transaction_id,
                        meter_value=[
                            {
                                "timestamp": utc_now_text(),
                                "sampledValue": connector.sampled_values(),
                            }
                        ],
                    ),
                    suppress=False,
                )
            except CALL_FAILED as exc:
                log.warning("%s MeterValues failed: %r", self.id, exc)
                continue
            self.meter_values_count += 1
            self.meter_values_sent.set()

    # --- remote stop ------------------------------------------------------------------------

    @on(Action.remote_stop_transaction)  # type: ignore[untyped-decorator]
    def on_remote_stop_transaction(self, transaction_id: int, call_unique_id: str, **_: Any) -> Any:
        for n, connector in self.connectors.items():
            if connector.transaction_id == transaction_id and not connector.stopping:
                connector.stopping = True
                self._pending_stops[call_unique_id] = n
                return result.RemoteStopTransaction(status=RemoteStartStopStatus.accepted)
        for connector in self.connectors.values():
            if connector.starting and not connector.stopping:
                # The central system may name a transaction before our StartTransaction's
                # answer has reached us (it told the app first): stop it once it is ours.
                connector.stopping = True
                connector.stop_when_started = transaction_id
                return result.RemoteStopTransaction(status=RemoteStartStopStatus.accepted)
        log.info("%s RemoteStop of unknown transaction %s rejected", self.id, transaction_id)
        return result.RemoteStopTransaction(status=RemoteStartStopStatus.rejected)

    @after(Action.remote_stop_transaction)  # type: ignore[untyped-decorator]
    def after_remote_stop_transaction(self, call_unique_id: str, **_: Any) -> None:
        n = self._pending_stops.pop(call_unique_id, None)
        if n is not None:
            self._spawn(self._stop_sequence(n, Reason.remote), f"stop:{n}")

    async def _stop_sequence(self, n: int, reason: str) -> None:
        connector = self.connectors[n]
        async with self._locks[n]:
            transaction_id = connector.transaction_id
            if transaction_id is None:
                connector.stopping = False
                return
            await self._stop_metering(n)
            connector.end(time.monotonic(), self._rng)
            await self._status(connector, ChargePointStatus.finishing)
            stop = call.StopTransaction(
                meter_stop=int(connector.energy_wh),
                timestamp=utc_now_text(),
                transaction_id=transaction_id,
                reason=reason,
                id_tag=connector.id_tag,
            )
            # A lost connection leaves the connector stopping: the next connection sends the
            # StopTransaction again (see _resume). No answer in time: ask again on this one.
            while True:
                try:
                    await self.call(stop, suppress=False)
                except ConnectionClosed:
                    raise
                except TimeoutError:
                    log.warning("%s connector %d: StopTransaction unanswered, again", self.id, n)
                    continue
                except Exception:
                    # A CALLERROR: the central system will not take this stop; do not insist.
                    log.exception("%s connector %d: StopTransaction refused", self.id, n)
                break
            connector.transaction_id = None
            connector.id_tag = None
            connector.stopping = False
            log.info("%s connector %d transaction %d stopped", self.id, n, transaction_id)
            await self._status(connector, ChargePointStatus.available)
            self.transaction_stopped.set()
