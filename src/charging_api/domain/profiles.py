"""Smart charging: the charging profiles the server sets, and an owner's power limit.

* ``set_power_limit`` (the app's ``set_power_limit_request``): the owner of an open session
  (or an admin) limits its power, in kW or A. The limit goes to the charge point as a
  TxProfile for that transaction, always in amperes (``chargingRateUnit`` ``A``, the unit
  every smart-charging charger takes), with ``numberPhases``. kW become A with the
  connector's electrical set-up: ``A = W / (phases x voltage)``.
* The set-up of a connector (phases, phase-to-neutral voltage) comes from, in order: the
  session's own meter values (per-phase readings: the lines with current flowing and their
  mean voltage; else headline power, voltage and current: ``phases = P / (V x I)``), what was
  last learnt for that connector (from an earlier session, or :meth:`configure_connector`),
  the charge point's reported ``ConnectorPhaseRotation`` configuration (phases only), else the
  default of 3 x 230 V. Trade-off: reading the stored samples when a limit is set
  costs one query per request and nothing on the MeterValues hot path.
* Admins set any profile (ChargePointMaxProfile, TxDefaultProfile, TxProfile) and read
  GetCompositeSchedule through ``OperatorService`` (its hooks, ``operator_rules``, call
  :meth:`record_accepted` and :meth:`forget_matching`); every profile the server set and the
  charge point accepted is stored and listed (:meth:`profiles`), and the TxProfiles of a
  session are cleared (ClearChargingProfile, then forgotten) when it ends (:meth:`on_event`).
* Which transactions have profiles is kept in memory once :meth:`load` has read the stored
  ones at start (and kept current by every write here), so a session's end costs no read
  when the server set nothing for it: the common case. Trade-off: with several nodes on one
  database, a profile another node set after this one started is not cleared by this node
  (the charge point drops a TxProfile itself when its transaction ends, OCPP 1.6 3.13.3; the
  stored row stays listed until an admin clears it).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from charging_api.domain.events import DomainEvent, TransactionStopped
from charging_api.domain.models import MeterSample, Principal, Role, StoredChargingProfile
from charging_api.domain.ports import ChargerGateway, Clock, OpsStateStore, Store
from charging_api.errors import (
    ChargePointRejected,
    ChargingApiError,
    Forbidden,
    TransactionNotActive,
    TransactionNotFound,
    ValidationFailed,
)

log = logging.getLogger(__name__)

#: Profile ids the server allocates for app power limits start here (an operator's own
#: profiles are expected below it).
FIRST_SERVER_PROFILE_ID = 1_000_000
#: The stack level of app power limits (TxProfile): above a stack-level-0 TxProfile that a
#: RemoteStart may have installed.
POWER_LIMIT_STACK_LEVEL = 1
#: Lines with less current than this (A) carry no load: a one-phase car on three phases.
_LOADED_PHASE_A = 0.5
_LINES = ("L1", "L2", "L3")
#: Who sets the profiles the server decides on by itself (recorded as ``set_by``).
SERVER = Principal("server:sessions", Role.ADMIN)


@dataclass(frozen=True, slots=True)
class Electrical:
    """A connector's supply: phases and phase-to-neutral voltage."""

    phases: int = 3
    voltage: float = 230.0


@dataclass(frozen=True, slots=True)
class PowerLimit:
    """What ``set_power_limit`` sent: the limit in both units and the set-up used."""

    transaction_id: int
    charge_point_id: str
    connector_id: int
    profile_id: int
    limit_a: float
    limit_kw: float
    electrical: Electrical
    source: str  # "meterValues", "connector", "configuration" or "default"


class ChargingProfiles:
    """The server's charging profiles (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        state: OpsStateStore,
        gateway: ChargerGateway,
        clock: Clock,
        default: Electrical | None = None,
    ) -> None:
        self._store = store
        self._state = state
        self._gateway = gateway
        self._clock = clock
        self.default = default or Electrical()
        self._connectors: dict[tuple[str, int], Electrical] = {}
        self._tasks: set[asyncio.Future[None]] = set()
        # transaction id -> {(charge point, profile id)} of the stored profiles bound to it;
        # None until load() (then every end reads the stored profiles, as before).
        self._by_transaction: dict[int, set[tuple[str, int]]] | None = None

    async def load(self) -> None:
        """Read which transactions have stored profiles (once, at start)."""
        index: dict[int, set[tuple[str, int]]] = {}
        for p in await self._state.charging_profiles(None):
            if p.transaction_id is not None:
                index.setdefault(p.transaction_id, set()).add((p.charge_point_id, p.profile_id))
        self._by_transaction = index

    def _index(self, stored: StoredChargingProfile) -> None:
        if self._by_transaction is None:
            return
        self._unindex(stored.charge_point_id, stored.profile_id)  # a profile id reused
        if stored.transaction_id is not None:
            self._by_transaction.setdefault(stored.transaction_id, set()).add(
                (stored.charge_point_id, stored.profile_id)
            )

    def _unindex(self, charge_point_id: str, profile_id: int) -> None:
        if self._by_transaction is None:
            return
        key = (charge_point_id, profile_id)
        for tx_id, held in list(self._by_transaction.items()):
            if key in held:
                held.discard(key)
                if not held:
                    del self._by_transaction[tx_id]

    async def _forget(self, charge_point_id: str, profile_id: int) -> None:
        await self._state.delete_charging_profile(charge_point_id, profile_id)
        self._unindex(charge_point_id, profile_id)

    def configure_connector(
        self, charge_point_id: str, connector_id: int, electrical: Electrical
    ) -> None:
        """Declare a connector's supply (used until its meter values say otherwise)."""
        self._connectors[(charge_point_id, connector_id)] = electrical

    async def electrical_of(
        self, charge_point_id: str, connector_id: int, transaction_id: int | None
    ) -> tuple[Electrical, str]:
        """The connector's supply and where it was learnt (see the module docstring)."""
        key = (charge_point_id, connector_id)
        if transaction_id is not None:
            for stored in reversed(await self._store.meter_samples_of(transaction_id)):
                found = _electrical_from(stored.sample)
                if found is not None:
                    self._connectors[key] = found
                    return found, "meterValues"
        known = self._connectors.get(key)
        if known is not None:
            return known, "connector"
        configured = await self._configured_phases(charge_point_id, connector_id)
        if configured is not None:
            return Electrical(configured, self.default.voltage), "configuration"
        return self.default, "default"

    async def _configured_phases(self, charge_point_id: str, connector_id: int) -> int | None:
        """Phases from the charge point's reported ``ConnectorPhaseRotation`` (OCPP 1.6
        9.1.9, e.g. ``0.RST,1.RST,2.NotApplicable``): a rotation (``RST`` ...) is three
        phases, ``NotApplicable`` one (single phase or DC); ``Unknown`` tells nothing."""
        for entry in await self._store.configuration(charge_point_id):
            if entry.key != "ConnectorPhaseRotation" or not entry.value:
                continue
            rotations = dict(
                part.strip().split(".", 1) for part in entry.value.split(",") if "." in part
            )
            value = rotations.get(str(connector_id), rotations.get("0"))
            if value == "NotApplicable":
                return 1
            if value is not None and len(value) == 3 and set(value) == set("RST"):
                return 3
        return None

    async def set_power_limit(
        self, principal: Principal, transaction_id: int, limit: float, unit: str
    ) -> PowerLimit:
        """Limit an open session's power (kW or A) with a TxProfile; the owner or an admin.
        Another user's session answers as a missing one (TRANSACTION_NOT_FOUND)."""
        if unit not in ("kW", "A"):
            raise ValidationFailed('unit must be "kW" or "A"', {"field": "unit"})
        if not limit > 0:
            raise ValidationFailed("limit must be above 0", {"field": "limit"})
        tx = await self._store.get_transaction(transaction_id)
        if tx is None or not (principal.is_admin or tx.user_id == principal.user_id):
            raise TransactionNotFound(
                f"Transaction {transaction_id} not found", {"transactionId": transaction_id}
            )
        if not tx.active:
            raise TransactionNotActive(
                f"Transaction {transaction_id} has already stopped",
                {"transactionId": transaction_id},
            )
        await self._store.flush()  # the newest meter values tell the phases
        electrical, source = await self.electrical_of(tx.charge_point_id, tx.connector_id, tx.id)
        watts_per_amp = electrical.phases * electrical.voltage
        limit_a = limit if unit == "A" else limit * 1000.0 / watts_per_amp
        limit_a = round(limit_a, 1)
        existing = [
            p
            for p in await self._state.charging_profiles(tx.charge_point_id)
            if p.transaction_id == tx.id and p.stack_level == POWER_LIMIT_STACK_LEVEL
        ]
        profile_id = (
            existing[0].profile_id if existing else await self._new_profile_id(tx.charge_point_id)
        )
        profile: dict[str, Any] = {
            "chargingProfileId": profile_id,
            "transactionId": tx.id,
            "stackLevel": POWER_LIMIT_STACK_LEVEL,
            "chargingProfilePurpose": "TxProfile",
            "chargingProfileKind": "Relative",
            "chargingSchedule": {
                "chargingRateUnit": "A",
                "chargingSchedulePeriod": [
                    {"startPeriod": 0, "limit": limit_a, "numberPhases": electrical.phases}
                ],
            },
        }
        await self._send_profile(principal, tx.charge_point_id, tx.connector_id, profile)
        return PowerLimit(
            tx.id,
            tx.charge_point_id,
            tx.connector_id,
            profile_id,
            limit_a,
            round(limit_a * watts_per_amp / 1000.0, 3),
            electrical,
            source,
        )

    async def reduce_session_power(self, transaction_id: int, limit_kw: float) -> PowerLimit:
        """The server's own power limit for a session (the end of an energy limit, see
        ``SessionService``): the same TxProfile as :meth:`set_power_limit`, set by
        :data:`SERVER`."""
        return await self.set_power_limit(SERVER, transaction_id, limit_kw, "kW")

    async def forget_matching(self, charge_point_id: str, criteria: dict[str, Any]) -> None:
        """Forget the stored profiles a ClearChargingProfile with ``criteria`` cleared (OCPP:
        by id, else by every given field of connectorId, purpose and stackLevel)."""
        for p in await self._state.charging_profiles(charge_point_id):
            if _matches(p, criteria):
                await self._forget(charge_point_id, p.profile_id)

    async def record_accepted(
        self, principal: Principal, charge_point_id: str, connector_id: int, profile: dict[str, Any]
    ) -> StoredChargingProfile:
        """Keep a profile the charge point accepted (also called for SetChargingProfile sent
        through the operator service)."""
        tx_id = profile.get("transactionId")
        stored = StoredChargingProfile(
            charge_point_id,
            connector_id,
            int(profile["chargingProfileId"]),
            str(profile["chargingProfilePurpose"]),
            int(profile["stackLevel"]),
            profile,
            self._clock.now(),
            principal.user_id,
            tx_id if isinstance(tx_id, int) else None,
        )
        await self._state.put_charging_profile(stored)
        self._index(stored)
        return stored

    async def profiles(
        self, principal: Principal, charge_point_id: str | None = None
    ) -> list[StoredChargingProfile]:
        """The stored profiles (admins)."""
        _admin(principal)
        return await self._state.charging_profiles(charge_point_id)

    def on_event(self, event: DomainEvent) -> None:
        """Bus handler: a session's end clears its TxProfiles (best effort on the charge
        point, which drops them itself at the end of the transaction in OCPP 1.6).

        Plain function, returning at once for every other event (it sees each meter
        sample); the clearing runs as a task of its own, not in the publisher's (that is
        the charge point's StopTransaction, which must not wait on a CALL to the same
        charge point)."""
        if isinstance(event, TransactionStopped):
            index = self._by_transaction
            if index is not None and event.transaction_id not in index:
                return  # the server set no profile for it: nothing to clear, nothing to read
            task = asyncio.ensure_future(
                self.clear_session(event.charge_point_id, event.transaction_id)
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Wait for the clearings under way (at most one CALL time-out each)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def clear_session(self, charge_point_id: str, transaction_id: int) -> None:
        """Clear and forget the profiles the server set for one transaction."""
        try:
            await self._clear_session(charge_point_id, transaction_id)
        except Exception:
            log.exception("clearing the profiles of transaction %d failed", transaction_id)

    async def _clear_session(self, charge_point_id: str, transaction_id: int) -> None:
        for p in await self._state.charging_profiles(charge_point_id):
            if p.transaction_id != transaction_id:
                continue
            try:
                await self._gateway.call(
                    p.charge_point_id, "ClearChargingProfile", {"id": p.profile_id}
                )
            except ChargingApiError as exc:
                log.info("ClearChargingProfile %d on %s: %s", p.profile_id, p.charge_point_id, exc)
            await self._forget(p.charge_point_id, p.profile_id)

    async def _send_profile(
        self, principal: Principal, charge_point_id: str, connector_id: int, profile: dict[str, Any]
    ) -> dict[str, Any]:
        payload = {"connectorId": connector_id, "csChargingProfiles": profile}
        answer = await self._gateway.call(charge_point_id, "SetChargingProfile", payload)
        status = str(answer.get("status"))
        if status != "Accepted":
            raise ChargePointRejected(
                f"Charge point refused the charging profile ({status})",
                {"chargePointId": charge_point_id, "status": status},
            )
        await self.record_accepted(principal, charge_point_id, connector_id, profile)
        return answer

    async def _new_profile_id(self, charge_point_id: str) -> int:
        used = [p.profile_id for p in await self._state.charging_profiles(charge_point_id)]
        return max([FIRST_SERVER_PROFILE_ID - 1, *used]) + 1


def _electrical_from(sample: MeterSample) -> Electrical | None:
    """Phases and voltage from one sample; None if it does not tell. Per-phase readings:
    the lines with current flowing, their mean voltage. Else the headline power, voltage and
    current: ``phases = P / (V x I)`` rounded (1 to 3)."""
    phases, voltage = sample.phases, sample.voltage
    if not phases:
        power, current = sample.power_kw, sample.current
        if power is None or voltage is None or current is None or current < _LOADED_PHASE_A:
            return None
        if not 100.0 <= voltage <= 300.0:
            return None
        count = round(power * 1000.0 / (voltage * current))
        return Electrical(min(max(count, 1), 3), round(voltage, 1)) if count >= 1 else None
    loaded = 0
    volts: list[float] = []
    for line in _LINES:
        values = phases.get(line) or phases.get(f"{line}-N") or {}
        current = values.get("current")
        if current is not None and current >= _LOADED_PHASE_A:
            loaded += 1
        v = (phases.get(f"{line}-N") or phases.get(line) or {}).get("voltage")
        if v is not None:
            volts.append(v)
    if loaded == 0:
        return None
    mean = sum(volts) / len(volts) if volts else voltage
    if mean is None or not 100.0 <= mean <= 300.0:  # not a phase-to-neutral voltage
        mean = 230.0
    return Electrical(loaded, round(mean, 1))


def _matches(p: StoredChargingProfile, criteria: dict[str, Any]) -> bool:
    if "id" in criteria:
        return bool(p.profile_id == criteria["id"])
    checks = (
        ("connectorId", p.connector_id),
        ("chargingProfilePurpose", p.purpose),
        ("stackLevel", p.stack_level),
    )
    return all(criteria[k] == v for k, v in checks if k in criteria)


def _admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise Forbidden("Only admins may manage charging profiles")
