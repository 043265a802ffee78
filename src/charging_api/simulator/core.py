"""The Core profile of a simulated OCPP 1.6-J charge point, built on the ``ocpp`` library.

:class:`CoreChargePoint` lives for one WebSocket connection: its ``run()`` boots, heartbeats,
answers the central system, and returns when the socket closes. What outlives a connection —
connectors (energy register, a transaction under way, availability, reservation),
configuration, local list, profiles, firmware version — is a
:class:`~charging_api.simulator.memory.ChargerMemory` the caller passes to the next connection
(see :mod:`charging_api.simulator.fleet`), so a charge point that reconnects or reboots resumes
the way a real one does instead of forgetting. The other feature profiles are added by
:class:`~charging_api.simulator.charge_point.SimulatedChargePoint`.

Flows (OCPP 1.6-J, charge point side):

* boot: ``BootNotification`` with the firmware version (retried after ``interval`` while
  Pending/Rejected), then ``Heartbeat`` every ``HeartbeatInterval`` seconds, then
  ``StatusNotification`` for each connector (Available, Unavailable, Reserved, or Charging and
  metering again for a transaction resumed after a reconnect);
* a start (``RemoteStartTransaction``, or :meth:`CoreChargePoint.start_local` for a driver's
  card): Accepted when the connector is Available, or Reserved for that id tag (any such
  connector when none is named), else Rejected; then ``StatusNotification`` Preparing,
  ``Authorize`` (skipped when ``AuthorizeRemoteTxRequests`` is false for a remote start, or when
  ``LocalPreAuthorize`` is on and the local list or cache accepts the tag), ``StartTransaction``
  (with the ``reservationId`` it consumes), ``StatusNotification`` Charging, and ``MeterValues``
  every ``MeterValueSampleInterval`` seconds while charging (the measurands of
  ``MeterValuesSampledData``, the current held under the charging-profile limit);
* a stop (``RemoteStopTransaction`` reason Remote, ``UnlockConnector`` reason UnlockCommand,
  ``Reset`` reason SoftReset/HardReset): ``StatusNotification`` Finishing, ``StopTransaction``,
  ``StatusNotification`` Available (or Unavailable when a ``Scheduled`` availability change
  waited for the end). A RemoteStop for a StartTransaction whose answer has not reached us yet
  is accepted and carried out once started;
* ``ChangeAvailability``: Accepted (Scheduled while a transaction runs, applied when it ends),
  connector 0 for every connector, reported with ``StatusNotification``;
* ``ChangeConfiguration`` / ``GetConfiguration`` over :class:`~.config.Configuration`; a new
  ``HeartbeatInterval`` restarts the heartbeat, a new ``MeterValueSampleInterval`` the meter
  (0: no periodic samples);
* ``ClearCache`` empties the authorization cache; ``DataTransfer`` knows vendor id
  ``charging-api`` (message id ``Echo`` or none: Accepted, the data echoed; other message ids:
  UnknownMessageId), other vendors get UnknownVendorId;
* ``Reset``: Accepted; running transactions stop, the socket closes and ``rebooting`` is set, so
  the fleet connects again (after ``SimTimings.reboot``) and boots anew.

The sequences after an answer run in tasks owned by the charge point (a kept set, cancelled
when the connection ends), started from ``@after`` hooks, i.e. after the CALLRESULT went out:
a handler registers the follow-up with :meth:`CoreChargePoint._later` and the hook runs it.
Awaiting a CALL inside an ``@on`` handler would deadlock: the library reads the answer in the
same loop that is running the handler. ``call(..., suppress=False)`` everywhere, so a CALLERROR
raises instead of returning None.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, Protocol

from ocpp.exceptions import OCPPError, UnknownCallErrorCodeError, ValidationError
from ocpp.routing import after, on
from ocpp.v16 import ChargePoint, call
from ocpp.v16 import call_result as result
from ocpp.v16.enums import (
    Action,
    AuthorizationStatus,
    AvailabilityStatus,
    ChargePointErrorCode,
    ChargePointStatus,
    ClearCacheStatus,
    ConfigurationStatus,
    DataTransferStatus,
    Reason,
    RegistrationStatus,
    RemoteStartStopStatus,
    ResetStatus,
    UnlockStatus,
)
from websockets.exceptions import ConnectionClosed

from charging_api.simulator.config import Configuration
from charging_api.simulator.connector import SimConnector, new_connectors
from charging_api.simulator.memory import ChargerMemory, SimTimings
from charging_api.simulator.profiles import Profile
from charging_api.timefmt import format_utc, utc_now_text

__all__ = ["CoreChargePoint", "now_iso"]

log = logging.getLogger("charging_api.simulator")

VENDOR = "charging-api"
MODEL = "simulator"
#: Used when the central system answers BootNotification with ``interval`` 0.
DEFAULT_HEARTBEAT_INTERVAL = 300.0
#: Wait before retrying a Pending/Rejected boot whose answer had ``interval`` 0.
DEFAULT_BOOT_RETRY = 10.0
#: The message ids of DataTransfer vendor ``charging-api`` (None: no messageId).
DATA_TRANSFER_MESSAGES = (None, "Echo")


#: What ``ChargePoint.call`` raises when a CALL gets no usable answer (besides ConnectionClosed).
CALL_FAILED = (TimeoutError, OCPPError, ValidationError, UnknownCallErrorCodeError)


class Connection(Protocol):
    """What the simulator needs of a WebSocket (``websockets``' ``ClientConnection`` fits)."""

    async def recv(self) -> str | bytes: ...

    async def send(self, message: str) -> None: ...

    async def close(self) -> None: ...


#: Seconds a reboot waits for a StartTransaction's answer before it goes down regardless.
REBOOT_START_WAIT = 10.0


def now_iso(now: datetime | None = None) -> str:
    """``now`` (default: the current time) as every wire timestamp is written (:mod:`timefmt`)."""
    return format_utc(now) if now is not None else utc_now_text()


def new_memory(
    connectors: dict[int, SimConnector], meter_interval: float, timings: SimTimings | None = None
) -> ChargerMemory:
    """A factory-fresh memory for a charge point with these connectors."""
    config = Configuration(
        connectors=len(connectors),
        meter_interval=meter_interval,
        heartbeat_interval=DEFAULT_HEARTBEAT_INTERVAL,
    )
    return ChargerMemory(connectors=connectors, config=config, timings=timings or SimTimings())


class CoreChargePoint(ChargePoint):  # type: ignore[misc]  # ocpp is untyped
    """A simulated OCPP 1.6-J charge point on one open connection: the Core profile.

    Hooks a test can await (they belong to this connection; clear them to wait again):
    ``booted`` (BootNotification accepted), ``transaction_started`` (Charging after a
    StartTransaction), ``transaction_stopped`` (Available after a StopTransaction),
    ``meter_values_sent`` (after each MeterValues, with ``meter_values_count``).
    ``transactions`` maps connector id -> active transaction id. ``rebooting`` is set when the
    charge point closed the socket to boot again (Reset, firmware installed).
    """

    def __init__(
        self,
        charge_point_id: str,
        connection: Connection,
        *,
        connectors: int = 1,
        meter_interval: float = 10.0,
        state: dict[int, SimConnector] | None = None,
        memory: ChargerMemory | None = None,
        rng: random.Random | None = None,
        response_timeout: float = 30.0,
    ) -> None:
        super().__init__(charge_point_id, connection, response_timeout=response_timeout)
        if meter_interval <= 0:
            raise ValueError("meter_interval must be positive")
        self._rng = rng or random.Random()
        if memory is None:
            memory = new_memory(
                state if state is not None else new_connectors(connectors, self._rng),
                meter_interval,
            )
        self.memory = memory
        self.config = memory.config
        self.connectors: dict[int, SimConnector] = memory.connectors
        self.heartbeat_interval: float | None = None
        self.booted = asyncio.Event()
        #: Notified whenever a StartTransaction's answer settles (``SimConnector.starting``).
        self._starts_settled = asyncio.Condition()
        self.transaction_started = asyncio.Event()
        self.transaction_stopped = asyncio.Event()
        self.meter_values_sent = asyncio.Event()
        self.meter_values_count = 0
        self.rebooting = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._locks = {n: asyncio.Lock() for n in self.connectors}
        self._meter_tasks: dict[int, tuple[asyncio.Task[None], asyncio.Event]] = {}
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._follow_ups: dict[str, Callable[[], object]] = {}

    @property
    def transactions(self) -> dict[int, int]:
        """Connector id -> transaction id, for the transactions under way."""
        return {
            n: c.transaction_id for n, c in self.connectors.items() if c.transaction_id is not None
        }

    @property
    def meter_interval(self) -> float:
        """Seconds between periodic MeterValues (``MeterValueSampleInterval``; 0: none)."""
        return float(self.config.value("MeterValueSampleInterval"))

    @property
    def timings(self) -> SimTimings:
        return self.memory.timings

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

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=f"{self.id}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

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

    def _later(self, call_unique_id: str, follow_up: Callable[[], object]) -> None:
        """Run ``follow_up`` once the answer to this CALL went out (from the ``@after`` hook)."""
        self._follow_ups[call_unique_id] = follow_up

    def _run_follow_up(self, call_unique_id: str) -> None:
        follow_up = self._follow_ups.pop(call_unique_id, None)
        if follow_up is not None:
            follow_up()

    # --- boot and heartbeat ---------------------------------------------------------------

    def _boot_notification(self) -> Any:
        return call.BootNotification(
            charge_point_model=MODEL,
            charge_point_vendor=VENDOR,
            firmware_version=self.memory.firmware_version[:50],
        )

    async def _boot(self) -> None:
        try:
            while True:
                answer = await self.call(self._boot_notification(), suppress=False)
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
        self._set_heartbeat(interval if interval > 0 else DEFAULT_HEARTBEAT_INTERVAL)
        log.info("%s booted (heartbeat every %.0fs)", self.id, self.heartbeat_interval)
        self._booted()
        self.booted.set()
        for connector in self.connectors.values():
            await self._resume(connector)

    def _booted(self) -> None:
        """What a feature profile resets once a boot is accepted (hook for subclasses)."""

    def _set_heartbeat(self, interval: float) -> None:
        """Heartbeat every ``interval`` seconds from now on (kept as ``HeartbeatInterval``)."""
        self.heartbeat_interval = interval
        self.config.set("HeartbeatInterval", interval)
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
        self._heartbeat_task = self._spawn(self._heartbeat(interval), "heartbeat")

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
            # A start cut off by the lost connection never happened.
            connector.stopping = connector.starting = False
            connector.stop_when_started = None
            connector.id_tag = None
            reservation = connector.reservation
            if reservation is not None and reservation.expiry <= datetime.now(UTC):
                connector.reservation = None
            elif reservation is not None:
                self._arm_expiry(connector)
            if connector.scheduled_operative is not None:
                connector.operative = connector.scheduled_operative
                connector.scheduled_operative = None
            await self._status(connector, connector.idle_status())
        elif connector.stopping:
            reason = connector.stop_reason or Reason.remote
            self._spawn(self._stop_sequence(n, reason), f"stop:{n}")
        else:
            async with self._locks[n]:
                log.info(
                    "%s connector %d resumes transaction %d", self.id, n, connector.transaction_id
                )
                connector.limit_a = self._limit(connector)
                connector.begin(time.monotonic(), self._rng)
                await self._status(connector, ChargePointStatus.charging)
                self._start_metering(connector)

    def _arm_expiry(self, connector: SimConnector) -> None:
        """Free the connector when its reservation expires (hook: Reservation profile)."""

    async def _status(self, connector: SimConnector, status: str) -> None:
        old, connector.status = connector.status, status
        if old != status:
            log.info("%s connector %d %s -> %s", self.id, connector.connector_id, old, status)
        await self.call(
            call.StatusNotification(
                connector_id=connector.connector_id,
                error_code=ChargePointErrorCode.no_error,
                status=status,
                timestamp=now_iso(),
            ),
            suppress=False,
        )

    async def _settle(self, connector: SimConnector) -> None:
        """No transaction any more: apply a Scheduled availability and report the idle status."""
        if connector.scheduled_operative is not None:
            connector.operative = connector.scheduled_operative
            connector.scheduled_operative = None
        await self._status(connector, connector.idle_status())

    async def _report_idle(self, n: int) -> None:
        """Report an idle connector's status after it changed (availability, reservation)."""
        connector = self.connectors[n]
        async with self._locks[n]:
            if not connector.busy and not connector.stopping:
                await self._status(connector, connector.idle_status())

    # --- starts -----------------------------------------------------------------------------

    @on(Action.remote_start_transaction)  # type: ignore[untyped-decorator]
    def on_remote_start_transaction(
        self,
        id_tag: str,
        call_unique_id: str,
        connector_id: int | None = None,
        charging_profile: dict[str, Any] | None = None,
        **_: Any,
    ) -> Any:
        connector = self._startable(id_tag, connector_id)
        if connector is None or not self.booted.is_set():
            log.info("%s RemoteStart on connector %s rejected", self.id, connector_id)
            return result.RemoteStartTransaction(status=RemoteStartStopStatus.rejected)
        n = connector.connector_id
        # Hold the connector now, so a second start is rejected; the wire follows.
        connector.status = ChargePointStatus.preparing
        self._later(
            call_unique_id,
            lambda: self._spawn(self._start_sequence(n, id_tag, charging_profile), f"start:{n}"),
        )
        return result.RemoteStartTransaction(status=RemoteStartStopStatus.accepted)

    @after(Action.remote_start_transaction)  # type: ignore[untyped-decorator]
    def after_remote_start_transaction(self, call_unique_id: str, **_: Any) -> None:
        self._run_follow_up(call_unique_id)

    def start_local(self, id_tag: str, connector_id: int | None = None) -> bool:
        """A driver presents ``id_tag`` at the charger: start as for a RemoteStart (always with
        authorization). False, and nothing sent, when no connector can start for this tag."""
        connector = self._startable(id_tag, connector_id)
        if connector is None or not self.booted.is_set():
            return False
        n = connector.connector_id
        connector.status = ChargePointStatus.preparing
        self._spawn(self._start_sequence(n, id_tag, None, remote=False), f"start:{n}")
        return True

    def _startable(self, id_tag: str, connector_id: int | None) -> SimConnector | None:
        """The connector a start for ``id_tag`` would use (the named one, else one reserved for
        the tag, else any free one), or None when none can start for it."""

        def free(c: SimConnector) -> bool:
            if not c.operative or c.busy or c.stopping:
                return False
            wanted = (
                ChargePointStatus.available if c.reservation is None else ChargePointStatus.reserved
            )
            if c.reservation is not None and c.reservation.id_tag != id_tag:
                return False
            return bool(c.status == wanted)

        if connector_id is not None:
            connector = self.connectors.get(connector_id)
            return connector if connector is not None and free(connector) else None
        candidates = sorted(self.connectors.values(), key=lambda c: c.reservation is None)
        return next((c for c in candidates if free(c)), None)

    async def _authorized(self, id_tag: str, remote: bool) -> bool:
        """Whether ``id_tag`` may start: asks the central system unless the configuration
        lets the charger decide (see the module docstring)."""
        if remote and not self.config.flag("AuthorizeRemoteTxRequests"):
            return True
        if (
            self.config.flag("LocalPreAuthorize")
            and self.memory.known_verdict(id_tag, datetime.now(UTC)) == AuthorizationStatus.accepted
        ):
            log.info("%s id tag %s accepted locally", self.id, id_tag)
            return True
        auth = await self.call(call.Authorize(id_tag=id_tag), suppress=False)
        self.memory.remember(id_tag, auth.id_tag_info)
        verdict = str(auth.id_tag_info["status"])
        if verdict != AuthorizationStatus.accepted:
            log.info("%s id tag %s %s", self.id, id_tag, verdict)
            return False
        return True

    async def _start_sequence(
        self, n: int, id_tag: str, profile: dict[str, Any] | None, *, remote: bool = True
    ) -> None:
        connector = self.connectors[n]
        async with self._locks[n]:
            # The hold made by the handler: the wire status is still the idle one.
            connector.status = connector.idle_status()
            try:
                await self._status(connector, ChargePointStatus.preparing)
                if not await self._authorized(id_tag, remote):
                    await self._settle(connector)
                    return
                reservation = connector.reservation
                reservation_id = (
                    reservation.reservation_id
                    if reservation is not None and reservation.id_tag == id_tag
                    else None
                )
                if reservation_id is not None:
                    connector.reservation = None  # used up by this StartTransaction
                connector.limit_a = self._limit(connector)
                connector.begin(time.monotonic(), self._rng)
                connector.starting = True
                started = await self.call(
                    call.StartTransaction(
                        connector_id=n,
                        id_tag=id_tag,
                        meter_start=int(connector.energy_wh),
                        timestamp=now_iso(),
                        reservation_id=reservation_id,
                    ),
                    suppress=False,
                )
            except ConnectionClosed:
                raise
            except Exception:
                log.exception("%s connector %d: start failed", self.id, n)
                connector.starting, connector.stopping = False, False
                connector.stop_when_started = None
                await self._start_settled()
                connector.end(time.monotonic(), self._rng)
                connector.status = connector.idle_status()  # reported on reconnect at worst
                with contextlib.suppress(Exception):
                    await self._settle(connector)
                return
            connector.transaction_id = int(started.transaction_id)
            connector.id_tag = id_tag
            connector.started_at = datetime.now(UTC)
            connector.starting = False
            await self._start_settled()
            self.memory.remember(id_tag, started.id_tag_info)
            stop_asked, connector.stop_when_started = connector.stop_when_started, None
            log.info("%s connector %d transaction %d started", self.id, n, started.transaction_id)
            verdict = started.id_tag_info["status"]
            if verdict != AuthorizationStatus.accepted:
                # StopTransactionOnInvalidId: the central system refused the tag after all.
                log.info("%s connector %d: StartTransaction says %s", self.id, n, verdict)
                connector.stopping = True
                self._spawn(self._stop_sequence(n, Reason.de_authorized), f"stop:{n}")
                return
            if profile is not None:
                self._install_start_profile(connector, profile)
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

    def _install_start_profile(self, connector: SimConnector, profile: dict[str, Any]) -> None:
        """The chargingProfile of a RemoteStart: a TxProfile for the transaction it started."""
        try:
            parsed = Profile.from_request(connector.connector_id, profile, datetime.now(UTC))
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("%s RemoteStart chargingProfile ignored: %r", self.id, exc)
            return
        status = self.memory.profiles.install(parsed, connector.transaction_id)
        log.info("%s RemoteStart chargingProfile %s", self.id, status)
        connector.limit_a = self._limit(connector)
        connector.apply_limit()

    def _limit(self, connector: SimConnector) -> float | None:
        """The charging-profile limit (A) in force on a connector now."""
        return self.memory.profiles.limit_a(
            connector.connector_id,
            datetime.now(UTC),
            connector.transaction_id,
            connector.started_at,
        )

    # --- metering ---------------------------------------------------------------------------

    def _start_metering(self, connector: SimConnector) -> None:
        stop = asyncio.Event()
        n = connector.connector_id
        task = self._spawn(self._meter_loop(connector, stop), f"meter:{n}")
        self._meter_tasks[n] = (task, stop)

    async def _stop_metering(self, n: int) -> None:
        entry = self._meter_tasks.pop(n, None)
        if entry is not None:
            task, stop = entry
            stop.set()  # let a MeterValues in flight finish rather than cancel it mid-call
            await asyncio.gather(task, return_exceptions=True)

    async def _restart_metering(self) -> None:
        """A new MeterValueSampleInterval: every meter starts its new period now."""
        for n in list(self._meter_tasks):
            async with self._locks[n]:
                if n in self._meter_tasks:
                    await self._stop_metering(n)
                    self._start_metering(self.connectors[n])

    async def _meter_loop(self, connector: SimConnector, stop: asyncio.Event) -> None:
        while True:
            interval = self.meter_interval
            try:
                async with asyncio.timeout(interval if interval > 0 else None):
                    await stop.wait()
                return
            except TimeoutError:
                pass
            await self._send_meter_values(connector, "Sample.Periodic")

    async def _send_meter_values(self, connector: SimConnector, context: str) -> None:
        """One MeterValues of the configured measurands (a transaction's: advance the meter)."""
        if connector.transaction_id is not None:
            connector.limit_a = self._limit(connector)
            connector.advance(time.monotonic(), self._rng)
        values = connector.sampled_values(self.config.sampled_measurands, context)
        if not values:
            return
        try:
            await self.call(
                call.MeterValues(
                    connector_id=connector.connector_id,
                    transaction_id=connector.transaction_id,
                    meter_value=[{"timestamp": now_iso(), "sampledValue": values}],
                ),
                suppress=False,
            )
        except CALL_FAILED as exc:
            log.warning("%s MeterValues failed: %r", self.id, exc)
            return
        self.meter_values_count += 1
        self.meter_values_sent.set()

    # --- stops ------------------------------------------------------------------------------

    @on(Action.remote_stop_transaction)  # type: ignore[untyped-decorator]
    def on_remote_stop_transaction(self, transaction_id: int, call_unique_id: str, **_: Any) -> Any:
        for n, connector in self.connectors.items():
            if connector.transaction_id == transaction_id and not connector.stopping:
                connector.stopping = True
                self._later(call_unique_id, functools.partial(self._spawn_stop, n, Reason.remote))
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
        self._run_follow_up(call_unique_id)

    def _spawn_stop(self, n: int, reason: str) -> None:
        self._spawn(self._stop_sequence(n, reason), f"stop:{n}")

    async def _stop_sequence(self, n: int, reason: str) -> None:
        connector = self.connectors[n]
        async with self._locks[n]:
            transaction_id = connector.transaction_id
            if transaction_id is None:
                connector.stopping = False
                return
            connector.stop_reason = reason
            await self._stop_metering(n)
            connector.end(time.monotonic(), self._rng)
            await self._status(connector, ChargePointStatus.finishing)
            stop = call.StopTransaction(
                meter_stop=int(connector.energy_wh),
                timestamp=now_iso(),
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
            connector.started_at = None
            connector.stopping = False
            connector.stop_reason = None
            connector.limit_a = None
            self.memory.profiles.transaction_ended(n)
            log.info(
                "%s connector %d transaction %d stopped (%s)", self.id, n, transaction_id, reason
            )
            await self._settle(connector)
            self.transaction_stopped.set()

    # --- Core: availability -----------------------------------------------------------------

    @on(Action.change_availability)  # type: ignore[untyped-decorator]
    def on_change_availability(
        self, connector_id: int, type: str, call_unique_id: str, **_: Any
    ) -> Any:
        if connector_id == 0:
            targets = list(self.connectors.values())
        elif connector_id in self.connectors:
            targets = [self.connectors[connector_id]]
        else:
            return result.ChangeAvailability(status=AvailabilityStatus.rejected)
        operative = type == "Operative"
        scheduled = False
        changed: list[int] = []
        for connector in targets:
            if connector.busy or connector.stopping:
                connector.scheduled_operative = operative
                scheduled = True
                continue
            connector.scheduled_operative = None
            if connector.operative != operative:
                connector.operative = operative
                changed.append(connector.connector_id)

        def report() -> None:
            for n in changed:
                self._spawn(self._report_idle(n), f"availability:{n}")

        self._later(call_unique_id, report)
        status = AvailabilityStatus.scheduled if scheduled else AvailabilityStatus.accepted
        log.info("%s ChangeAvailability %d %s: %s", self.id, connector_id, type, status)
        return result.ChangeAvailability(status=status)

    @after(Action.change_availability)  # type: ignore[untyped-decorator]
    def after_change_availability(self, call_unique_id: str, **_: Any) -> None:
        self._run_follow_up(call_unique_id)

    # --- Core: configuration, cache, data transfer ------------------------------------------

    @on(Action.get_configuration)  # type: ignore[untyped-decorator]
    def on_get_configuration(self, key: list[str] | None = None, **_: Any) -> Any:
        known, unknown = self.config.get(key)
        return result.GetConfiguration(configuration_key=known, unknown_key=unknown or None)

    @on(Action.change_configuration)  # type: ignore[untyped-decorator]
    def on_change_configuration(self, key: str, value: str, **_: Any) -> Any:
        status = self.config.change(key, value)
        log.info("%s ChangeConfiguration %s=%r: %s", self.id, key, value, status)
        if status == ConfigurationStatus.accepted:
            name = self.config.canonical(key)
            # Neither awaits a CALL: a task restarts with the new period.
            if name == "HeartbeatInterval":
                self._set_heartbeat(float(self.config.integer(name)))
            elif name == "MeterValueSampleInterval":
                self._spawn(self._restart_metering(), "meter-interval")
        return result.ChangeConfiguration(status=status)

    @on(Action.clear_cache)  # type: ignore[untyped-decorator]
    def on_clear_cache(self, **_: Any) -> Any:
        self.memory.auth_cache.clear()
        return result.ClearCache(status=ClearCacheStatus.accepted)

    @on(Action.data_transfer)  # type: ignore[untyped-decorator]
    def on_data_transfer(
        self, vendor_id: str, message_id: str | None = None, data: str | None = None, **_: Any
    ) -> Any:
        if vendor_id != VENDOR:
            return result.DataTransfer(status=DataTransferStatus.unknown_vendor_id)
        if message_id not in DATA_TRANSFER_MESSAGES:
            return result.DataTransfer(status=DataTransferStatus.unknown_message_id)
        return result.DataTransfer(status=DataTransferStatus.accepted, data=data)

    # --- Core: reset and unlock -------------------------------------------------------------

    @on(Action.reset)  # type: ignore[untyped-decorator]
    def on_reset(self, type: str, call_unique_id: str, **_: Any) -> Any:
        reason = Reason.hard_reset if type == "Hard" else Reason.soft_reset
        self._later(call_unique_id, lambda: self._spawn(self._reboot(reason), "reset"))
        log.info("%s Reset %s accepted", self.id, type)
        return result.Reset(status=ResetStatus.accepted)

    @after(Action.reset)  # type: ignore[untyped-decorator]
    def after_reset(self, call_unique_id: str, **_: Any) -> None:
        self._run_follow_up(call_unique_id)

    async def _start_settled(self) -> None:
        async with self._starts_settled:
            self._starts_settled.notify_all()

    async def _reboot(self, reason: str) -> None:
        """Stop every transaction with ``reason``, close the socket and ask to boot again.

        A StartTransaction still waiting for its answer is let finish first (bounded by
        ``REBOOT_START_WAIT``): a charger does not forget a transaction it is starting, and
        its StopTransaction needs the transactionId the answer brings."""
        self.rebooting = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(REBOOT_START_WAIT), self._starts_settled:
                await self._starts_settled.wait_for(
                    lambda: not any(c.starting for c in self.connectors.values())
                )
        for n, connector in self.connectors.items():
            if connector.transaction_id is not None:
                connector.stopping = True
                await self._stop_sequence(n, reason)
        log.info("%s rebooting (%s)", self.id, reason)
        await self._close()

    @on(Action.unlock_connector)  # type: ignore[untyped-decorator]
    def on_unlock_connector(self, connector_id: int, call_unique_id: str, **_: Any) -> Any:
        connector = self.connectors.get(connector_id)
        if connector is None:
            return result.UnlockConnector(status=UnlockStatus.not_supported)
        if connector.transaction_id is not None and not connector.stopping:
            connector.stopping = True
            n = connector.connector_id
            self._later(
                call_unique_id, functools.partial(self._spawn_stop, n, Reason.unlock_command)
            )
        return result.UnlockConnector(status=UnlockStatus.unlocked)

    @after(Action.unlock_connector)  # type: ignore[untyped-decorator]
    def after_unlock_connector(self, call_unique_id: str, **_: Any) -> None:
        self._run_follow_up(call_unique_id)
