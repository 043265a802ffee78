"""OCPP 1.6-J charge point simulator: ``charging-api simulate``, the end-to-end tests and the bench.

:func:`run_fleet` runs N charge points with reconnects; :class:`SimulatedChargePoint` is one of
them on one connection, with events a test can await, answering every operation a central
system can send (see docs/simulator.md); :class:`ChargerMemory` is what it keeps across
connections and reboots, :class:`SimTimings` the delays of its slow work.
"""

from charging_api.simulator.charge_point import (
    SimConnector,
    SimulatedChargePoint,
    new_connectors,
)
from charging_api.simulator.fleet import (
    backoff_delay,
    charge_point_ids,
    run_charge_point,
    run_fleet,
)
from charging_api.simulator.memory import ChargerMemory, SimTimings

__all__ = [
    "ChargerMemory",
    "SimConnector",
    "SimTimings",
    "SimulatedChargePoint",
    "backoff_delay",
    "charge_point_ids",
    "new_connectors",
    "run_charge_point",
    "run_fleet",
]
