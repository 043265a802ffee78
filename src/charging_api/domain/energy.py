"""A session's energy from its meter readings, with where each figure came from.

Pure: readings in, figures out; no clock, no I/O. The charge point door has already turned
every ``SampledValue`` into kWh (``ocpp/meter.py`` divides Wh by 1000, keeps kWh, and picks one
value per measurand when several locations report it), so this module sees one register value
per sample, in kWh, and ``meterStart`` in Wh as OCPP sends it.

Rules
-----
* Session energy = register - ``meterStart``, never the lifetime register. Before the first
  reading the session has 0 kWh, with ``meterStart`` as its provenance.
* Readings are ordered by their own timestamp, not by arrival: an out-of-order sample (a replay
  after an outage, a StopTransaction's ``transactionData``) lands where it belongs and the
  figure is recomputed. The usual in-order append costs O(1).
* Two readings with the same timestamp (the same moment sent twice, or the same measurand in
  two contexts such as ``Sample.Periodic`` and ``Sample.Clock``) count once: the higher value
  wins, so the result does not depend on the order they came in.
* A register that goes down is a reset or a rollover, never negative energy. With a known
  rollover modulus (``rollover_kwh``) and a drop from its top quarter to its bottom quarter,
  the wrap is counted (``previous -> modulus -> 0 -> new``). Any other drop starts a new
  segment at the new value: the energy between the last reading before the drop and the reset
  is lost (at most one sample interval), which under-counts rather than bills energy that
  cannot be proven. Each drop is recorded as a :class:`Discontinuity`.
* A jump larger than ``max_step_kwh`` between consecutive readings (a glitch, a meter read in
  the wrong unit) is not counted either; the next reading continues from the jumped value.
  Trade-off: a charger silent for hours then reporting a real large step is under-counted;
  the default ceiling (400 kWh) is above any single car's battery.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from datetime import datetime

#: The measurand every session figure is read from.
ENERGY_MEASURAND = "Energy.Active.Import.Register"
#: Default ceiling on one step between two readings, kWh.
DEFAULT_MAX_STEP_KWH = 400.0


@dataclass(frozen=True, slots=True)
class Reading:
    """One energy register reading: the value and where it came from."""

    at: datetime
    register_kwh: float
    measurand: str = ENERGY_MEASURAND
    source: str = "MeterValues"  # "MeterValues", "StopTransaction", "meterStart"


@dataclass(frozen=True, slots=True)
class Discontinuity:
    """A register drop or jump not counted as energy: ``kind`` is "reset", "rollover" or
    "jump"; ``counted_kwh`` is what was counted across it (the wrap's share, else 0)."""

    kind: str
    before: Reading
    after: Reading
    counted_kwh: float


@dataclass(frozen=True, slots=True)
class EnergyFigure:
    """The session's energy now and its provenance: the newest reading it rests on (None:
    only ``meterStart`` so far) and every discontinuity on the way."""

    energy_kwh: float
    meter_start_wh: int
    latest: Reading | None
    discontinuities: tuple[Discontinuity, ...] = ()

    @property
    def register_kwh(self) -> float:
        """The last register value seen (``meterStart`` before the first reading)."""
        return self.latest.register_kwh if self.latest else self.meter_start_wh / 1000.0


@dataclass(slots=True)
class EnergyLedger:
    """The readings of one session, kept in time order, and the energy they add up to."""

    meter_start_wh: int
    started_at: datetime
    rollover_kwh: float | None = None
    max_step_kwh: float = DEFAULT_MAX_STEP_KWH
    _times: list[datetime] = field(default_factory=list)
    _readings: list[Reading] = field(default_factory=list)
    _energy: float = 0.0
    _breaks: list[Discontinuity] = field(default_factory=list)

    @property
    def readings(self) -> tuple[Reading, ...]:
        return tuple(self._readings)

    def add(self, reading: Reading) -> bool:
        """Take one reading; False when it changed nothing (an older duplicate, a reading
        from before the session started)."""
        if reading.at < self.started_at:
            return False
        i = bisect.bisect_left(self._times, reading.at)
        if i < len(self._times) and self._times[i] == reading.at:
            if self._readings[i].register_kwh >= reading.register_kwh:
                return False
            self._readings[i] = reading
            self._recompute()
            return True
        self._times.insert(i, reading.at)
        self._readings.insert(i, reading)
        if i == len(self._readings) - 1:
            previous = self._readings[i - 1] if i else self._start_reading()
            self._energy += self._step(previous, reading)
        else:
            self._recompute()
        return True

    def figure(self) -> EnergyFigure:
        latest = self._readings[-1] if self._readings else None
        return EnergyFigure(
            round(self._energy, 6), self.meter_start_wh, latest, tuple(self._breaks)
        )

    def energy_between(self, start: datetime, end: datetime) -> float:
        """Energy counted on the steps whose later reading lies in ``(start, end]`` (for
        cost by time window); the same step rules as the total."""
        total = 0.0
        previous = self._start_reading()
        for reading in self._readings:
            step = self._step(previous, reading, record=False)
            if start < reading.at <= end:
                total += step
            previous = reading
        return total

    def steps(self) -> list[tuple[Reading, Reading, float]]:
        """Each consecutive pair (from ``meterStart``) and the energy counted between them."""
        out = []
        previous = self._start_reading()
        for reading in self._readings:
            out.append((previous, reading, self._step(previous, reading, record=False)))
            previous = reading
        return out

    # -------------------------------------------------------------- internals

    def _start_reading(self) -> Reading:
        return Reading(self.started_at, self.meter_start_wh / 1000.0, source="meterStart")

    def _recompute(self) -> None:
        self._energy = 0.0
        self._breaks.clear()
        previous = self._start_reading()
        for reading in self._readings:
            self._energy += self._step(previous, reading)
            previous = reading

    def _step(self, before: Reading, after: Reading, record: bool = True) -> float:
        delta = after.register_kwh - before.register_kwh
        if 0 <= delta <= self.max_step_kwh:
            return delta
        kind, counted = "jump", 0.0
        if delta < 0:
            kind = "reset"
            modulus = self.rollover_kwh
            if (
                modulus is not None
                and before.register_kwh >= 0.75 * modulus
                and after.register_kwh <= 0.25 * modulus
            ):
                wrapped = modulus - before.register_kwh + after.register_kwh
                if 0 <= wrapped <= self.max_step_kwh:
                    kind, counted = "rollover", wrapped
        if record:
            self._breaks.append(Discontinuity(kind, before, after, round(counted, 6)))
        return counted
