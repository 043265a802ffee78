"""What a driver sees of a session: energy, cost, limits, ETA, events and the receipt.

:class:`SessionService` follows every open transaction beside :class:`ChargingService`: it
hears TransactionStarted/Stopped and status changes on the bus, and the meter hot path calls
:meth:`SessionService.on_samples` directly (no database read there: the tariff and limits of
a session are in memory from its start, or from :meth:`load` after a restart).

* Energy comes from :mod:`.energy` (register - meterStart, resets, out-of-order samples).
* Cost comes from :mod:`.tariffs`: the tariff that applies (user > group > charge point >
  default) is chosen when the transaction starts and frozen into the session record as a
  snapshot; later tariff changes never touch a running or finished session. Tariffs and
  assignments are held in memory (:class:`~.tariffs.TariffCatalog`, loaded at start, changed
  by the admin calls that write them); a change made by another process (the ``charging-api
  tariffs`` command, another node) bumps a version document that :meth:`SessionService.tick`
  reads every ``tariff_refresh_interval`` seconds, so a start reads nothing.
* Session records (tariff snapshot, limits, the limit reached, the receipt) are written
  behind the command path: batched, ``record_write_delay`` after the change, one transaction
  per batch. What is durable when (docs/sessions.md, "Durability"): limits set by
  :meth:`SessionService.set_limits` before its reply; everything else within that delay, and
  what a crash loses is recomputed (the tariff from the assignments, the receipt from the
  stored transaction and samples).
* Limits (energy, SoC, cost, duration) are checked on every sample and every tick; the first
  one reached sends one RemoteStop and is named in the receipt. They are stored with the
  session record, so they survive a restart. A SoC limit is accepted even before the charger
  has reported any SoC: it is enforced from the first SoC reading, and the start reply and
  the snapshot say ``socEnforced: false`` until then (refusing would block cars whose SoC
  comes only after the first minutes of charging). Within the last ``energy_taper_fraction``
  of an energy limit the power is reduced once (``reduce_power``, a TxProfile) before the stop.
* ETA (see docs/sessions.md): seconds to the nearest limit (or to 100 % SoC when only SoC is
  known), from the average power over the last ``eta_window`` seconds; above 80 % SoC the
  energy left is taken at half that power (the taper).
* Events go to the owner as :class:`SessionNotice`. The receipt of a session followed from its
  start is its running figures plus the StopTransaction reading (no read); otherwise it is
  computed from the stored samples. It is stored (written behind); :func:`cdr_of` gives it the
  OCPI 2.2.1 CDR shape.
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from charging_api.domain.energy import EnergyLedger, Reading
from charging_api.domain.events import (
    ChargePointConnectionChanged,
    ConnectorStatusChanged,
    DomainEvent,
    SessionNotice,
    SessionUpdated,
    TransactionStarted,
    TransactionStopped,
)
from charging_api.domain.models import MeterSample, Principal, Transaction
from charging_api.domain.ports import ChargerGateway, Clock, EventBus, Store
from charging_api.domain.tariffs import (
    DEFAULT_SCOPE,
    Cost,
    CostMeter,
    Period,
    Tariff,
    TariffCatalog,
    check_scope,
    tariff_from_json,
)
from charging_api.domain.writebehind import WriteBehind
from charging_api.errors import (
    Forbidden,
    TransactionNotActive,
    TransactionNotFound,
    ValidationFailed,
)
from charging_api.timefmt import format_utc

log = logging.getLogger(__name__)

#: Below this a reduced power is not asked for (6 A on one 230 V phase: the least current
#: IEC 61851 lets a charger offer).
MIN_TAPER_KW = 1.4

SESSION = "session"
TARIFF = "tariff"
ASSIGNMENT = "tariff_assignment"
DEFAULT_ASSIGNMENT = DEFAULT_SCOPE
#: ``tariff_catalog``/``version``: ``{"version": <random hex>}``, replaced by every writer of
#: a tariff or an assignment; a server whose catalog has another version reloads it.
CATALOG = "tariff_catalog"
CATALOG_VERSION = "version"


@dataclass(frozen=True, slots=True)
class SessionPolicy:
    update_interval: float = 5.0  # session_update pushes at most this often per session
    preparing_threshold: float = 120.0  # Preparing this long without a transaction: notice
    idle_power_kw: float = 0.1  # at or below: the EV draws nothing
    eta_window: float = 300.0
    taper_soc: float = 80.0
    #: Session records are written this long after a change, in one batch (write-behind).
    record_write_delay: float = 0.25
    #: How often :meth:`SessionService.tick` checks whether another process changed tariffs.
    tariff_refresh_interval: float = 2.0
    #: The last part of an energyKWh limit (this fraction of it; 0: off) is charged at
    #: ``energy_taper_power`` times the power measured when it begins (docs/sessions.md).
    energy_taper_fraction: float = 0.1
    energy_taper_power: float = 0.5


@dataclass(frozen=True, slots=True)
class Limits:
    energy_kwh: float | None = None
    soc: float | None = None
    cost: Decimal | None = None
    duration_minutes: float | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.energy_kwh is not None:
            out["energyKWh"] = self.energy_kwh
        if self.soc is not None:
            out["soc"] = self.soc
        if self.cost is not None:
            out["cost"] = str(self.cost)
        if self.duration_minutes is not None:
            out["durationMinutes"] = self.duration_minutes
        return out

    @staticmethod
    def from_json(data: dict[str, Any] | None) -> Limits:
        if not data:
            return Limits()
        cost = data.get("cost")
        return Limits(
            data.get("energyKWh"),
            data.get("soc"),
            None if cost is None else Decimal(str(cost)),
            data.get("durationMinutes"),
        )


@dataclass(slots=True)
class _Tracked:
    transaction_id: int
    charge_point_id: str
    connector_id: int
    user_id: str | None
    started_at: datetime
    meter_start_wh: int
    ledger: EnergyLedger
    id_tag: str | None = None
    tariff: Tariff | None = None
    tariff_json: dict[str, Any] | None = None
    costs: CostMeter | None = None
    limits: Limits = Limits()
    soc: float | None = None
    soc_at_energy: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=64))
    power_kw: float | None = None
    window: deque[tuple[datetime, float]] = field(default_factory=deque)
    charging_s: float = 0.0
    idle_s: float = 0.0
    limit_reached: str | None = None
    tapered: bool = False  # the reduced power for the end of an energy limit was asked for
    last_update: float | None = None
    suspended: str | None = None
    offline_since: datetime | None = None

    def absorb(self, sample: MeterSample, idle_kw: float) -> None:
        if sample.power_kw is not None:
            self.power_kw = sample.power_kw
        if sample.state_of_charge is not None:
            self.soc = sample.state_of_charge
        kwh = sample.energy_import_kwh
        if kwh is None:
            return
        energy = self.add_reading(Reading(sample.timestamp, kwh), idle_kw)
        if energy is None:
            return
        self.window.append((sample.timestamp, energy))
        if self.soc is not None and sample.state_of_charge is not None:
            self.soc_at_energy.append((energy, sample.state_of_charge))

    def add_reading(self, reading: Reading, idle_kw: float) -> float | None:
        """Fold one register reading into the energy, the charging/idle split and the cost
        (the same periods a receipt computed from every reading would make); returns the
        session energy after it, None when it changed nothing."""
        before = self.ledger.figure()
        in_order = before.latest is None or reading.at > before.latest.at
        if not self.ledger.add(reading):
            return None
        after = self.ledger.figure()
        if in_order:
            prev_at = before.latest.at if before.latest else self.started_at
            self._count(_period(prev_at, reading.at, after.energy_kwh - before.energy_kwh, idle_kw))
        else:
            self._rebuild(idle_kw)
        return after.energy_kwh

    def _count(self, period: Period) -> None:
        if period.charging:
            self.charging_s += period.seconds
        else:
            self.idle_s += period.seconds
        if self.costs is not None:
            self.costs.add(period)

    def _rebuild(self, idle_kw: float) -> None:
        self.charging_s = self.idle_s = 0.0
        if self.tariff is not None:
            self.costs = CostMeter(self.tariff, self.started_at)
        for before, after, energy in self.ledger.steps():
            self._count(_period(before.at, after.at, energy, idle_kw))

    def cost(self) -> Cost | None:
        return None if self.costs is None else self.costs.cost()


def _period(start: datetime, end: datetime, energy: float, idle_kw: float) -> Period:
    hours = max((end - start).total_seconds(), 0.0) / 3600
    charging = energy > 0 and (hours == 0 or energy / hours > idle_kw)
    return Period(start, end, energy, charging)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The live figures of one session (``session`` in meter_values_update/session_update)."""

    transaction_id: int
    power_kw: float | None
    energy_kwh: float
    elapsed_s: float
    charging_s: float
    idle_s: float
    cost: Cost | None
    soc: float | None
    eta_s: float | None
    eta_target: str | None
    limits: Limits
    soc_enforced: bool
    register_kwh: float
    reading_at: datetime | None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "transactionId": self.transaction_id,
            "powerKw": self.power_kw,
            "energyKWh": self.energy_kwh,
            "elapsedSeconds": round(self.elapsed_s),
            "chargingSeconds": round(self.charging_s),
            "idleSeconds": round(self.idle_s),
            "stateOfCharge": self.soc,
            "etaSeconds": None if self.eta_s is None else round(self.eta_s),
            "etaTarget": self.eta_target,
            "limits": self.limits.to_json(),
            "socEnforced": self.soc_enforced,
            "provenance": {
                "measurand": "Energy.Active.Import.Register",
                "registerKWh": self.register_kwh,
                "readingAt": None if self.reading_at is None else format_utc(self.reading_at),
            },
        }
        if self.cost is not None:
            out["cost"] = {"currency": self.cost.currency, "total": str(self.cost.total)}
        return out


class SessionService:
    """Sessions as drivers see them; see the module docstring."""

    def __init__(
        self,
        store: Store,
        gateway: ChargerGateway,
        bus: EventBus,
        clock: Clock,
        policy: SessionPolicy | None = None,
    ) -> None:
        self._store = store
        self._gateway = gateway
        self._bus = bus
        self._clock = clock
        self.policy = policy or SessionPolicy()
        self._tracked: dict[int, _Tracked] = {}
        self._preparing: dict[tuple[str, int], tuple[float, str | None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # Tariffs in memory (None: not loaded yet) and the version they were read at.
        self._catalog: TariffCatalog | None = None
        self._catalog_version: str | None = None
        self._catalog_checked = float("-inf")
        #: The session records not yet written (docs/sessions.md, "Durability").
        self.records = WriteBehind(store, SESSION, self.policy.record_write_delay)
        # Open sessions whose in-memory readings may be incomplete (a sample came before the
        # session was tracked): their receipts are computed from storage.
        self._partial: set[int] = set()
        #: Set by the composition root: limit a session's power to the given kW (a TxProfile
        #: through ``ChargingProfiles``); None: energy limits end abruptly.
        self.reduce_power: Callable[[int, float], Awaitable[object]] | None = None

    # ------------------------------------------------------------ lifecycle

    async def load(self) -> None:
        """Read the tariffs, then rebuild the open sessions (tariff snapshot, limits, energy
        so far) from storage."""
        await self._load_catalog()
        for tx in await self._store.active_transactions():
            record = await self._record_with_tariff(tx)
            tracked = self._track(tx, record)
            for stored in await self._store.meter_samples_of(tx.id):
                tracked.absorb(stored.sample, self.policy.idle_power_kw)

    def _track(self, tx: Transaction, record: dict[str, Any]) -> _Tracked:
        tracked = _Tracked(
            tx.id,
            tx.charge_point_id,
            tx.connector_id,
            tx.user_id,
            tx.started_at,
            tx.meter_start_wh,
            EnergyLedger(tx.meter_start_wh, tx.started_at),
            tx.id_tag,
        )
        if record.get("tariff"):
            tracked.tariff = tariff_from_json(record["tariff"])
            tracked.tariff_json = record["tariff"]
            tracked.costs = CostMeter(tracked.tariff, tx.started_at)
        tracked.limits = Limits.from_json(record.get("limits"))
        tracked.limit_reached = record.get("limitReached")
        self._tracked[tx.id] = tracked
        return tracked

    async def tick(self) -> None:
        """Duration limits, "plugged in but did not start", tariff changes made elsewhere and
        session records whose write failed: the composition root calls this every second;
        tests on a manual clock call it by hand."""
        now = self._clock.now()
        for tracked in list(self._tracked.values()):
            # Energy, SoC and cost only change with a sample (checked there): time alone
            # reaches a duration limit.
            if tracked.limits.duration_minutes is not None:
                await self._check_limits(tracked, now)
        mono = self._clock.monotonic()
        for key, (since, user) in list(self._preparing.items()):
            if mono - since >= self.policy.preparing_threshold:
                del self._preparing[key]
                await self._notice(
                    key[0],
                    key[1],
                    None,
                    user,
                    "not_started",
                    {"waitedSeconds": round(mono - since)},
                )
        self.records.kick()  # a batch that failed is tried again
        if mono - self._catalog_checked >= self.policy.tariff_refresh_interval:
            self._catalog_checked = mono
            try:
                await self.refresh_tariffs()
            except Exception as exc:  # storage down: the tariffs in memory stay in use
                log.warning("checking for tariff changes failed: %s", exc)

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:
                log.exception("session tick failed")
            await asyncio.sleep(1.0)

    # ------------------------------------------------------------ events in

    async def on_event(self, event: DomainEvent) -> None:
        """Bus subscriber."""
        if isinstance(event, TransactionStarted):
            await self._on_started(event)
        elif isinstance(event, TransactionStopped):
            # In a task of its own: subscribers after this one hear of the stop first (the
            # receipt comes after the transaction's own end on every channel).
            self._spawn(self._on_stopped(event))
        elif isinstance(event, ConnectorStatusChanged):
            await self._on_status(event)
        elif isinstance(event, ChargePointConnectionChanged):
            await self._on_connection(event)

    async def _on_started(self, event: TransactionStarted) -> None:
        """Track the new session from the event alone: the tariff comes from memory, the
        record is written behind (no read, no write awaited on the StartTransaction)."""
        self._preparing.pop((event.charge_point_id, event.connector_id), None)
        tracked = self._tracked.get(event.transaction_id)  # set_limits may have got there first
        if tracked is None:
            catalog = await self._tariffs()
            tariff = catalog.for_session(event.charge_point_id, event.user_id, event.groups)
            tracked = _Tracked(
                event.transaction_id,
                event.charge_point_id,
                event.connector_id,
                event.user_id,
                event.timestamp,
                event.meter_start_wh,
                EnergyLedger(event.meter_start_wh, event.timestamp),
                event.id_tag,
            )
            if tariff is not None:
                tracked.tariff = tariff
                tracked.tariff_json = tariff.to_json()
                tracked.costs = CostMeter(tariff, event.timestamp)
            self._tracked[event.transaction_id] = tracked
            self._save(tracked)
        await self._notice_tracked(
            tracked, "started", {"tariff": tracked.tariff_json, "limits": tracked.limits.to_json()}
        )

    async def _on_stopped(self, event: TransactionStopped) -> None:
        tracked = self._tracked.pop(event.transaction_id, None)
        partial = event.transaction_id in self._partial
        self._partial.discard(event.transaction_id)
        key = str(event.transaction_id)
        if tracked is not None and not partial:
            # Every reading of the session went through on_samples: the receipt is the
            # running figures plus the StopTransaction's reading, with nothing to read.
            record = self._record_of(tracked)
            record["receipt"] = self._final_receipt(tracked, event)
        else:  # tracked since a restart that missed samples, or not at all: from storage
            tx = await self._store.get_transaction(event.transaction_id)
            if tx is None:
                return
            record = await self._record_with_tariff(tx)
            record["receipt"] = await self._receipt(tx, record)
        self._put_record(key, record)
        await self._notice(
            event.charge_point_id,
            event.connector_id,
            event.transaction_id,
            event.user_id,
            "ended",
            {"receipt": record["receipt"]},
        )

    async def _on_status(self, event: ConnectorStatusChanged) -> None:
        key = (event.charge_point_id, event.connector_id)
        if event.status == "Preparing" and event.transaction_id is None:
            self._preparing.setdefault(key, (self._clock.monotonic(), event.user_id))
        else:
            self._preparing.pop(key, None)
        if event.owner_only or event.transaction_id is None:
            return
        tracked = self._tracked.get(event.transaction_id)
        if tracked is None:
            return
        kind: str | None = None
        if event.status == "SuspendedEV":
            power = tracked.power_kw
            kind = "suspended_ev" if power is None or power <= self.policy.idle_power_kw else None
        elif event.status == "SuspendedEVSE":
            kind = "suspended_evse"
        elif event.status == "Faulted":
            kind = "fault"
        elif event.status == "Charging" and tracked.suspended is not None:
            kind = "resumed"
        if event.status in ("SuspendedEV", "SuspendedEVSE", "Faulted"):
            tracked.suspended = event.status
        elif event.status == "Charging":
            tracked.suspended = None
        if kind is not None:
            details = {"status": event.status, "errorCode": event.error_code}
            await self._notice_tracked(tracked, kind, details)

    async def _on_connection(self, event: ChargePointConnectionChanged) -> None:
        for tracked in list(self._tracked.values()):
            if tracked.charge_point_id != event.charge_point_id:
                continue
            if not event.online:
                tracked.offline_since = event.timestamp
                await self._notice_tracked(tracked, "offline", {})
            elif tracked.offline_since is not None:
                gone = (event.timestamp - tracked.offline_since).total_seconds()
                tracked.offline_since = None
                await self._notice_tracked(tracked, "online", {"offlineSeconds": round(gone)})

    async def on_samples(
        self, transaction_id: int, samples: Sequence[MeterSample]
    ) -> Snapshot | None:
        """The meter hot path's hook (no database read): fold the samples in, check the
        limits, push a session_update when due; returns the snapshot for the meter push."""
        tracked = self._tracked.get(transaction_id)
        if tracked is None:
            self._partial.add(transaction_id)  # its receipt must read the stored samples
            return None
        for sample in samples:
            tracked.absorb(sample, self.policy.idle_power_kw)
        now = self._clock.now()
        snap = self._snapshot(tracked, now)
        mono = self._clock.monotonic()
        if tracked.last_update is None or mono - tracked.last_update >= self.policy.update_interval:
            tracked.last_update = mono
            await self._bus.publish(
                SessionUpdated(
                    tracked.charge_point_id,
                    tracked.connector_id,
                    transaction_id,
                    tracked.user_id,
                    snap.to_json(),
                )
            )
        await self._check_limits(tracked, now, snap)
        if not tracked.tapered and tracked.limits.energy_kwh is not None:
            self._maybe_taper(tracked, snap)
        return snap

    def _maybe_taper(self, tracked: _Tracked, snap: Snapshot) -> None:
        """Within the last ``energy_taper_fraction`` of an energy limit, ask once for
        ``energy_taper_power`` times the power measured now (not below :data:`MIN_TAPER_KW`);
        the stop at the limit itself is unchanged. A charge point that refuses (no smart
        charging) just charges on at full power to the stop, as before."""
        limit = tracked.limits.energy_kwh
        fraction = self.policy.energy_taper_fraction
        if (
            limit is None
            or self.reduce_power is None
            or tracked.limit_reached is not None
            or fraction <= 0
            or snap.energy_kwh < limit * (1 - fraction)
        ):
            return
        tracked.tapered = True
        power = tracked.power_kw
        if power is None or power * self.policy.energy_taper_power < MIN_TAPER_KW:
            return  # unknown, or already low: nothing to reduce
        self._spawn(self._taper(tracked, round(power * self.policy.energy_taper_power, 3)))

    async def _taper(self, tracked: _Tracked, limit_kw: float) -> None:
        assert self.reduce_power is not None
        try:
            await self.reduce_power(tracked.transaction_id, limit_kw)
        except Exception as exc:  # offline, refused, no smart charging: full power to the end
            log.info(
                "reduced power for the end of transaction %d's energy limit not set: %s",
                tracked.transaction_id,
                exc,
            )
            return
        await self._notice_tracked(
            tracked, "power_reduced", {"limitKw": limit_kw, "reason": "energyKWh"}
        )

    def on_stop_samples(self, transaction_id: int, samples: Sequence[MeterSample]) -> None:
        """A StopTransaction's ``transactionData``, before the stop is published: folded into
        the session's figures for its receipt (no push, no limit check: it is ending)."""
        tracked = self._tracked.get(transaction_id)
        if tracked is None:
            return
        for sample in samples:
            tracked.absorb(sample, self.policy.idle_power_kw)

    # ------------------------------------------------------------ limits

    async def _check_limits(
        self, tracked: _Tracked, now: datetime, snap: Snapshot | None = None
    ) -> None:
        if tracked.limit_reached is not None:
            return
        snap = snap or self._snapshot(tracked, now)
        reached = _reached(tracked.limits, snap)
        if reached is None:
            return
        tracked.limit_reached = reached
        self._save(tracked)  # lost in a crash: the limit is reached again after the restart
        await self._notice_tracked(tracked, "limit_reached", {"limit": reached})
        # Not awaited here: this runs inside the charge point's MeterValues, whose door reads
        # the CALLRESULT of our RemoteStop only after the MeterValues has been answered.
        self._spawn(self._remote_stop(tracked, reached))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("session work failed", exc_info=task.exception())

    async def _remote_stop(self, tracked: _Tracked, reached: str) -> None:
        try:
            await self._gateway.remote_stop(tracked.charge_point_id, tracked.transaction_id)
        except Exception as exc:  # offline or refused: tried again on the next sample or tick
            log.warning(
                "RemoteStop for limit %s of %d failed: %s", reached, tracked.transaction_id, exc
            )
            if self._tracked.get(tracked.transaction_id) is tracked:
                tracked.limit_reached = None

    async def drain(self) -> None:
        """Wait for the work under way (RemoteStops for limits, receipts) and write the
        session records not yet written: tests, shutdown."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        await self.records.flush()

    async def set_limits(
        self, principal: Principal, transaction_id: int, limits: Limits
    ) -> dict[str, Any]:
        """Replace a running session's limits (the owner or an admin); stored before the
        reply (the one session-record write a command waits for)."""
        check_limits(limits)
        tracked = self._tracked.get(transaction_id)
        if tracked is None:
            tx = await self._store.get_transaction(transaction_id)
            if tx is None or not (principal.is_admin or tx.user_id == principal.user_id):
                raise _not_found(transaction_id)
            if not tx.active:
                raise TransactionNotActive(
                    f"Transaction {transaction_id} has ended", {"transactionId": transaction_id}
                )
            groups = principal.groups if principal.user_id == tx.user_id else frozenset()
            record = await self._record_with_tariff(tx, groups)
            tracked = self._tracked.get(tx.id)
            if tracked is None:
                tracked = self._track(tx, record)
                for stored in await self._store.meter_samples_of(tx.id):
                    tracked.absorb(stored.sample, self.policy.idle_power_kw)
        elif not (principal.is_admin or tracked.user_id == principal.user_id):
            raise _not_found(transaction_id)
        tracked.limits = limits
        tracked.limit_reached = None
        tracked.tapered = False  # a new energy limit may taper again (from the power then)
        self._save(tracked)
        await self.records.write(strict=True)
        await self._check_limits(tracked, self._clock.now())
        return {
            "transactionId": transaction_id,
            "limits": limits.to_json(),
            "socEnforced": limits.soc is None or tracked.soc is not None,
        }

    # ------------------------------------------------------------ receipts, history

    async def get_receipt(self, principal: Principal, transaction_id: int) -> dict[str, Any]:
        tx = await self._store.get_transaction(transaction_id)
        if tx is None or not (principal.is_admin or tx.user_id == principal.user_id):
            raise _not_found(transaction_id)
        record = await self._record(str(transaction_id)) or {}
        receipt = record.get("receipt")
        if receipt is None:
            if tx.active:
                raise TransactionNotActive(
                    f"Transaction {transaction_id} is still running: no receipt yet",
                    {"transactionId": transaction_id},
                )
            record = await self._record_with_tariff(tx)
            receipt = await self._receipt(tx, record)
            record["receipt"] = receipt
            self._put_record(str(tx.id), record)
        return {"receipt": receipt, "cdr": cdr_of(receipt)}

    async def _receipt(self, tx: Transaction, record: dict[str, Any]) -> dict[str, Any]:
        """The receipt from the stored samples (the charger's transactionData included; the
        store reads back samples still in its write batch, so no flush is forced here): for
        a session not followed in memory from its start."""
        ledger = EnergyLedger(tx.meter_start_wh, tx.started_at)
        for stored in await self._store.meter_samples_of(tx.id):
            kwh = stored.sample.energy_import_kwh
            if kwh is not None:
                ledger.add(Reading(stored.sample.timestamp, kwh))
        stopped_at = tx.stopped_at or self._clock.now()
        if tx.meter_stop_wh is not None:
            ledger.add(Reading(stopped_at, tx.meter_stop_wh / 1000, source="StopTransaction"))
        tariff = tariff_from_json(record["tariff"]) if record.get("tariff") else None
        meter = CostMeter(tariff, tx.started_at) if tariff is not None else None
        charging = idle = 0.0
        idle_kw = self.policy.idle_power_kw
        for before, after, energy in ledger.steps():
            period = _period(before.at, after.at, energy, idle_kw)
            if period.charging:
                charging += period.seconds
            else:
                idle += period.seconds
            if meter is not None:
                meter.add(period)
        limit = record.get("limitReached")
        return _receipt_json(
            tx,
            stopped_at,
            ledger,
            charging,
            idle,
            None if meter is None else meter.cost(),
            record.get("limits") or {},
            record.get("tariff"),
            limit,
            tx.app_stop_reason or (None if limit is None else f"Limit:{limit}"),
        )

    def _final_receipt(self, tracked: _Tracked, event: TransactionStopped) -> dict[str, Any]:
        """The receipt of a session followed from its start: its running figures plus the
        StopTransaction's reading (equal to :meth:`_receipt` over the same readings)."""
        tracked.add_reading(
            Reading(event.timestamp, event.meter_stop_wh / 1000, source="StopTransaction"),
            self.policy.idle_power_kw,
        )
        tx = Transaction(
            tracked.transaction_id,
            tracked.charge_point_id,
            tracked.connector_id,
            tracked.id_tag or "",
            tracked.user_id,
            tracked.meter_start_wh,
            tracked.started_at,
            meter_stop_wh=event.meter_stop_wh,
            stopped_at=event.timestamp,
            stop_reason=event.reason,
            closed_by=event.closed_by,
            app_stop_reason=event.app_reason,
        )
        limit = tracked.limit_reached
        return _receipt_json(
            tx,
            event.timestamp,
            tracked.ledger,
            tracked.charging_s,
            tracked.idle_s,
            tracked.cost(),
            tracked.limits.to_json(),
            tracked.tariff_json,
            limit,
            event.app_reason or (None if limit is None else f"Limit:{limit}"),
        )

    async def history(
        self,
        principal: Principal,
        *,
        user_id: str | None = None,
        charge_point_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> dict[str, Any]:
        """Sessions newest first, filtered and paged, with per-month aggregates of the
        filtered set (energy, cost per currency). Users see their own; admins anyone's
        (``user_id`` None: everyone's)."""
        if not principal.is_admin:
            if user_id not in (None, principal.user_id):
                raise Forbidden("Only admins may read another user's history")
            user_id = principal.user_id
        txs = await self._store.transactions_of(user_id, 1_000_000)
        chosen = [
            tx
            for tx in txs
            if (charge_point_id is None or tx.charge_point_id == charge_point_id)
            and (since is None or tx.started_at >= since)
            and (until is None or tx.started_at < until)
        ]
        records = self.records.overlay(await self._store.documents(SESSION))
        rows = [_history_row(tx, records.get(str(tx.id), {})) for tx in chosen]
        months: dict[str, dict[str, Any]] = {}
        for row in rows:
            month = months.setdefault(
                row["startedAt"][:7], {"sessions": 0, "energyKWh": 0.0, "cost": {}}
            )
            month["sessions"] += 1
            month["energyKWh"] = round(month["energyKWh"] + (row["energyKWh"] or 0.0), 6)
            if row["cost"] is not None:
                old = Decimal(month["cost"].get(row["currency"], "0"))
                month["cost"][row["currency"]] = str(old + Decimal(row["cost"]))
        return {
            "total": len(rows),
            "offset": offset,
            "sessions": rows[offset : offset + limit],
            "months": [{"month": k, **v} for k, v in sorted(months.items())],
        }

    # ------------------------------------------------------------ tariffs (admins)

    async def put_tariff(self, principal: Principal, data: dict[str, Any]) -> Tariff:
        _admin(principal)
        tariff = tariff_from_json(data)
        await self._store.put_document(TARIFF, tariff.id, tariff.to_json())
        await self._tariffs_changed()
        (await self._tariffs()).put(tariff)
        return tariff

    async def tariffs(self, principal: Principal) -> dict[str, Any]:
        """What is stored (the catalog in memory follows it, see :meth:`refresh_tariffs`)."""
        _admin(principal)
        return {
            "tariffs": list((await self._store.documents(TARIFF)).values()),
            "assignments": {
                k: v["tariffId"] for k, v in (await self._store.documents(ASSIGNMENT)).items()
            },
        }

    async def delete_tariff(self, principal: Principal, tariff_id: str) -> None:
        _admin(principal)
        await self._store.put_document(TARIFF, tariff_id, None)
        await self._tariffs_changed()
        (await self._tariffs()).delete(tariff_id)

    async def assign_tariff(self, principal: Principal, scope: str, tariff_id: str | None) -> None:
        """``scope``: ``default``, ``chargePoint:<id>``, ``group:<name>`` or ``user:<id>``;
        None unassigns."""
        _admin(principal)
        check_scope(scope)
        if tariff_id is not None and await self._store.get_document(TARIFF, tariff_id) is None:
            raise ValidationFailed(f"No tariff {tariff_id}", {"field": "tariffId"})
        body = None if tariff_id is None else {"tariffId": tariff_id}
        await self._store.put_document(ASSIGNMENT, scope, body)
        await self._tariffs_changed()
        (await self._tariffs()).assign(scope, tariff_id)

    async def tariff_for(
        self, charge_point_id: str, user_id: str | None, groups: frozenset[str] = frozenset()
    ) -> Tariff | None:
        """The tariff a new session gets (user > group > charge point > default), from
        memory; None when none is assigned (the session then has no cost)."""
        return (await self._tariffs()).for_session(charge_point_id, user_id, groups)

    async def refresh_tariffs(self) -> bool:
        """Reload the tariffs when another process changed them (one key read); True if it
        did. :meth:`tick` calls this every ``tariff_refresh_interval`` seconds."""
        version = await self._stored_catalog_version()
        if self._catalog is not None and version == self._catalog_version:
            return False
        await self._load_catalog(version)
        return True

    async def _tariffs(self) -> TariffCatalog:
        if self._catalog is None:
            await self._load_catalog()
        assert self._catalog is not None
        return self._catalog

    async def _stored_catalog_version(self) -> str | None:
        found = await self._store.get_document(CATALOG, CATALOG_VERSION)
        version = None if found is None else found.get("version")
        return version if isinstance(version, str) else None

    async def _load_catalog(self, version: str | None = None) -> None:
        # The version first: a change stored while the documents are read bumps it again,
        # and the next check reloads.
        if version is None:
            version = await self._stored_catalog_version()
        catalog = TariffCatalog.from_documents(
            await self._store.documents(TARIFF), await self._store.documents(ASSIGNMENT)
        )
        for broken in catalog.broken:
            log.error("stored tariff %s is not valid: it is not used", broken)
        self._catalog, self._catalog_version = catalog, version
        self._catalog_checked = self._clock.monotonic()

    async def _tariffs_changed(self) -> None:
        """After a tariff or assignment was stored: a new version, for every other process
        (this one changes its catalog itself and keeps its old version, so its next check
        reloads too and also picks up a change another process made meanwhile)."""
        await self._store.put_document(CATALOG, CATALOG_VERSION, {"version": uuid.uuid4().hex})

    # ------------------------------------------------------------ session records

    async def _record(self, key: str) -> dict[str, Any] | None:
        """A session record: the newest body not yet written, else the stored one."""
        found = self.records.get(key)
        return found if found is not None else await self._store.get_document(SESSION, key)

    async def _record_with_tariff(
        self, tx: Transaction, groups: frozenset[str] = frozenset()
    ) -> dict[str, Any]:
        """The session record, with a tariff snapshot: a record lost before it was written
        (a crash within ``record_write_delay`` of the start) gets the tariff the assignments
        give now (the token's groups are not known then: user, charge point, default)."""
        record = await self._record(str(tx.id)) or {}
        if "tariff" not in record:
            catalog = await self._tariffs()
            tariff = catalog.for_session(tx.charge_point_id, tx.user_id, groups)
            record["tariff"] = None if tariff is None else tariff.to_json()
        return record

    def _record_of(self, tracked: _Tracked) -> dict[str, Any]:
        return {
            "tariff": tracked.tariff_json,
            "limits": tracked.limits.to_json(),
            "limitReached": tracked.limit_reached,
        }

    def _save(self, tracked: _Tracked) -> None:
        self._put_record(str(tracked.transaction_id), self._record_of(tracked))

    def _put_record(self, key: str, record: dict[str, Any]) -> None:
        """Write ``record`` behind: within ``record_write_delay``, batched with others."""
        self.records.put(key, record)

    # ------------------------------------------------------------ internals

    def snapshot_of(self, transaction_id: int) -> Snapshot | None:
        tracked = self._tracked.get(transaction_id)
        return None if tracked is None else self._snapshot(tracked, self._clock.now())

    def _snapshot(self, tracked: _Tracked, now: datetime) -> Snapshot:
        figure = tracked.ledger.figure()
        cost = tracked.cost()
        eta, target = _eta(tracked, figure.energy_kwh, cost, now, self.policy)
        return Snapshot(
            tracked.transaction_id,
            tracked.power_kw,
            figure.energy_kwh,
            max((now - tracked.started_at).total_seconds(), 0.0),
            tracked.charging_s,
            tracked.idle_s,
            cost,
            tracked.soc,
            eta,
            target,
            tracked.limits,
            tracked.limits.soc is None or tracked.soc is not None,
            figure.register_kwh,
            None if figure.latest is None else figure.latest.at,
        )

    async def _notice_tracked(self, tracked: _Tracked, kind: str, data: dict[str, Any]) -> None:
        await self._notice(
            tracked.charge_point_id,
            tracked.connector_id,
            tracked.transaction_id,
            tracked.user_id,
            kind,
            data,
        )

    async def _notice(
        self,
        charge_point_id: str,
        connector_id: int,
        transaction_id: int | None,
        user_id: str | None,
        kind: str,
        data: dict[str, Any],
    ) -> None:
        await self._bus.publish(
            SessionNotice(
                charge_point_id,
                connector_id,
                transaction_id,
                user_id,
                kind,
                self._clock.now(),
                data,
            )
        )


def _receipt_json(
    tx: Transaction,
    stopped_at: datetime,
    ledger: EnergyLedger,
    charging_s: float,
    idle_s: float,
    cost: Cost | None,
    limits: dict[str, Any],
    tariff: dict[str, Any] | None,
    limit_reached: str | None,
    app_stop_reason: str | None,
) -> dict[str, Any]:
    figure = ledger.figure()
    return {
        "transactionId": tx.id,
        "chargePointId": tx.charge_point_id,
        "connectorId": tx.connector_id,
        "userId": tx.user_id,
        "idTag": tx.id_tag,
        "startedAt": format_utc(tx.started_at),
        "stoppedAt": format_utc(stopped_at),
        "meterStartWh": tx.meter_start_wh,
        "meterStopWh": tx.meter_stop_wh,
        "energyKWh": figure.energy_kwh,
        "chargingSeconds": round(charging_s, 3),
        "idleSeconds": round(idle_s, 3),
        "stopReason": tx.stop_reason,
        "appStopReason": app_stop_reason,
        "closedBy": None if tx.closed_by is None else tx.closed_by.value,
        "limits": limits,
        "limitReached": limit_reached,
        "tariff": tariff,
        "cost": None if cost is None else cost.to_json(),
        "discontinuities": [
            {"kind": d.kind, "at": format_utc(d.after.at), "countedKWh": d.counted_kwh}
            for d in figure.discontinuities
        ],
    }


def _reached(limits: Limits, snap: Snapshot) -> str | None:
    if limits.energy_kwh is not None and snap.energy_kwh >= limits.energy_kwh:
        return "energyKWh"
    if limits.soc is not None and snap.soc is not None and snap.soc >= limits.soc:
        return "soc"
    if limits.cost is not None and snap.cost is not None and snap.cost.total >= limits.cost:
        return "cost"
    if limits.duration_minutes is not None and snap.elapsed_s >= limits.duration_minutes * 60:
        return "durationMinutes"
    return None


def _eta(
    tracked: _Tracked, energy: float, cost: Cost | None, now: datetime, policy: SessionPolicy
) -> tuple[float | None, str | None]:
    """Seconds to the nearest limit (or to a full battery): docs/sessions.md, "ETA"."""
    window = tracked.window
    horizon = now - timedelta(seconds=policy.eta_window)
    while len(window) > 2 and window[0][0] < horizon:
        window.popleft()
    power = None
    if len(window) >= 2:
        seconds = (window[-1][0] - window[0][0]).total_seconds()
        if seconds > 0:
            power = (window[-1][1] - window[0][1]) / (seconds / 3600)
    if power is None or power <= 0:
        power = tracked.power_kw
    candidates: list[tuple[float, str]] = []
    limits = tracked.limits
    if limits.duration_minutes is not None:
        elapsed = (now - tracked.started_at).total_seconds()
        candidates.append((max(limits.duration_minutes * 60 - elapsed, 0.0), "durationMinutes"))
    if power is not None and power > 0:
        if limits.energy_kwh is not None:
            left = max(limits.energy_kwh - energy, 0.0)
            candidates.append((left / power * 3600, "energyKWh"))
        soc_target = limits.soc if limits.soc is not None else 100.0
        if tracked.soc is not None and len(tracked.soc_at_energy) >= 2:
            (e0, s0), (e1, s1) = tracked.soc_at_energy[0], tracked.soc_at_energy[-1]
            if s1 > s0 and e1 > e0:
                per_pct = (e1 - e0) / (s1 - s0)
                soc = tracked.soc
                flat = max(min(soc_target, policy.taper_soc) - soc, 0.0)
                taper = max(soc_target - max(soc, policy.taper_soc), 0.0)
                hours = flat * per_pct / power + taper * per_pct / (power / 2)
                candidates.append((hours * 3600, "soc" if limits.soc is not None else "full"))
        if limits.cost is not None and cost is not None and energy > 0:
            per_kwh = cost.excl_vat / Decimal(repr(energy)) if cost.excl_vat > 0 else None
            if per_kwh:
                left_cost = max(limits.cost - cost.total, Decimal(0))
                gross = (
                    per_kwh * (1 + tracked.tariff.vat_percent / 100) if tracked.tariff else per_kwh
                )
                candidates.append((float(left_cost / gross) / power * 3600, "cost"))
    if not candidates:
        return None, None
    seconds, target = min(candidates)
    return seconds, target


def check_limits(limits: Limits) -> None:
    """Refuse limits out of range (VALIDATION_ERROR naming the field)."""
    for name, value, high in (
        ("energyKWh", limits.energy_kwh, 10_000.0),
        ("soc", limits.soc, 100.0),
        ("durationMinutes", limits.duration_minutes, 10_080.0),
    ):
        if value is not None and not 0 < value <= high:
            raise ValidationFailed(f"{name} must be > 0 and <= {high:g}", {"field": name})
    if limits.cost is not None and not limits.cost > 0:
        raise ValidationFailed("cost must be > 0", {"field": "cost"})


def _history_row(tx: Transaction, record: dict[str, Any]) -> dict[str, Any]:
    receipt = record.get("receipt") or {}
    cost = receipt.get("cost")
    energy = receipt.get("energyKWh")
    if energy is None and tx.meter_stop_wh is not None:
        energy = round(max(tx.meter_stop_wh - tx.meter_start_wh, 0) / 1000, 6)
    return {
        "transactionId": tx.id,
        "chargePointId": tx.charge_point_id,
        "connectorId": tx.connector_id,
        "userId": tx.user_id,
        "startedAt": format_utc(tx.started_at),
        "stoppedAt": None if tx.stopped_at is None else format_utc(tx.stopped_at),
        "energyKWh": energy,
        "cost": None if cost is None else cost["total"],
        "currency": None if cost is None else cost["currency"],
        "stopReason": tx.stop_reason,
        "limitReached": record.get("limitReached"),
    }


CSV_COLUMNS = (
    "transactionId",
    "chargePointId",
    "connectorId",
    "userId",
    "startedAt",
    "stoppedAt",
    "energyKWh",
    "cost",
    "currency",
    "stopReason",
    "limitReached",
)


def history_csv(rows: Sequence[dict[str, Any]]) -> str:
    """The history rows as CSV text (RFC 4180, header first; empty cell for none)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else row[c] for c in CSV_COLUMNS])
    return out.getvalue()


def cdr_of(receipt: dict[str, Any]) -> dict[str, Any]:
    """The receipt in the shape of an OCPI 2.2.1 CDR object (the fields we know; party and
    location ids are the charge point's, as this server has no OCPI roaming identity)."""
    cost = receipt.get("cost") or {}
    tariff = receipt.get("tariff")
    hours_charging = Decimal(str(receipt["chargingSeconds"])) / 3600
    hours_idle = Decimal(str(receipt["idleSeconds"])) / 3600
    excl = cost.get("exclVat")
    total = cost.get("total")
    return {
        "country_code": "ZZ",
        "party_id": "CAP",
        "id": str(receipt["transactionId"]),
        "start_date_time": receipt["startedAt"],
        "end_date_time": receipt["stoppedAt"],
        "session_id": str(receipt["transactionId"]),
        "cdr_token": {"uid": receipt["idTag"], "type": "RFID", "contract_id": receipt["idTag"]},
        "auth_method": "COMMAND",
        "cdr_location": {
            "id": receipt["chargePointId"],
            "evse_uid": f"{receipt['chargePointId']}-{receipt['connectorId']}",
            "connector_id": str(receipt["connectorId"]),
        },
        "meter_id": receipt["chargePointId"],
        "currency": cost.get("currency"),
        "tariffs": [] if tariff is None else [tariff],
        "charging_periods": [],
        "total_cost": None
        if excl is None
        else {"excl_vat": float(excl), "incl_vat": float(str(total))},
        "total_energy": receipt["energyKWh"],
        "total_time": float(round(hours_charging + hours_idle, 6)),
        "total_parking_time": float(round(hours_idle, 6)),
        "last_updated": receipt["stoppedAt"],
    }


def _admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise Forbidden("Only admins may manage tariffs")


def _not_found(transaction_id: int) -> TransactionNotFound:
    return TransactionNotFound(
        f"Transaction {transaction_id} not found", {"transactionId": transaction_id}
    )
