"""One connector of a simulated charge point and the car plugged into it; outlives a connection.

The electrical model: single phase at about 230 V, 32 A until 80 % state of charge, then the
current tapers linearly to 0 at 100 %, never above the charging-profile limit in force
(``limit_a``). Energy is integrated over monotonic time.

Besides the meter, a connector keeps what a charger keeps per connector: its availability
(``operative``, and the change ``Scheduled`` until the running transaction ends) and its
reservation. Pure data and arithmetic, no I/O.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import datetime

from ocpp.v16.enums import ChargePointStatus

from charging_api.simulator.profiles import NOMINAL_VOLTAGE

__all__ = ["Reservation", "SimConnector", "new_connectors"]


@dataclass(frozen=True, slots=True)
class Reservation:
    """A ReserveNow the connector holds until ``expiry`` (aware datetime)."""

    reservation_id: int
    id_tag: str
    expiry: datetime
    parent_id_tag: str | None = None


@dataclass(slots=True)
class SimConnector:
    """One connector (see the module docstring)."""

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
    #: Why the transaction is being stopped (sent again after a reconnect with the same reason).
    stop_reason: str | None = None
    voltage_v: float = 230.0
    current_a: float = 0.0
    #: The charging-profile limit in force (amperes at the nominal 230 V), None: no limit.
    limit_a: float | None = None
    #: Availability: False after ChangeAvailability Inoperative; kept across reboots.
    operative: bool = True
    #: A ChangeAvailability answered Scheduled, applied when the transaction ends.
    scheduled_operative: bool | None = None
    reservation: Reservation | None = None
    #: Wall-clock start of the transaction under way (Relative charging profiles count from it).
    started_at: datetime | None = None
    _last_update: float | None = field(default=None, repr=False)

    @property
    def power_w(self) -> float:
        return self.voltage_v * self.current_a

    @property
    def busy(self) -> bool:
        """A transaction runs, is starting, or a start is being prepared."""
        return (
            self.transaction_id is not None
            or self.starting
            or self.status == ChargePointStatus.preparing
        )

    def idle_status(self) -> str:
        """The status to report when no transaction runs."""
        if not self.operative:
            return str(ChargePointStatus.unavailable)
        if self.reservation is not None:
            return str(ChargePointStatus.reserved)
        return str(ChargePointStatus.available)

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
        self.apply_limit()

    def apply_limit(self) -> None:
        """Hold the current at or below ``limit_a``, and the power at or below its nominal
        ``limit_a * 230`` W whatever the voltage (so a limit in W holds too)."""
        if self.limit_a is None:
            return
        cap = min(self.limit_a, self.limit_a * NOMINAL_VOLTAGE / self.voltage_v)
        self.current_a = min(self.current_a, math.floor(max(cap, 0.0) * 10) / 10)

    def begin(self, now: float, rng: random.Random) -> None:
        """Start drawing current (the car starts charging)."""
        self._last_update = None
        self.advance(now, rng)

    def end(self, now: float, rng: random.Random) -> None:
        """Account for the energy up to ``now`` and stop drawing current."""
        self.advance(now, rng)
        self.current_a = 0.0
        self._last_update = None

    def sampled_values(
        self, measurands: tuple[str, ...] | None = None, context: str = "Sample.Periodic"
    ) -> list[dict[str, str]]:
        """The OCPP 1.6 ``sampledValue`` list of one sample (wire form, camelCase), limited to
        ``measurands`` (all five when None)."""
        values = [
            ("Energy.Active.Import.Register", f"{self.energy_wh:.1f}", "Outlet", "Wh"),
            ("Power.Active.Import", f"{self.power_w:.1f}", "Outlet", "W"),
            ("Voltage", f"{self.voltage_v:.1f}", "Outlet", "V"),
            ("Current.Import", f"{self.current_a:.1f}", "Outlet", "A"),
            ("SoC", f"{self.soc:.1f}", "EV", "Percent"),
        ]
        return [
            {
                "value": value,
                "context": context,
                "measurand": measurand,
                "location": location,
                "unit": unit,
            }
            for measurand, value, location, unit in values
            if measurands is None or measurand in measurands
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
