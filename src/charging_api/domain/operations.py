"""OperatorService: the 19 operations a central system sends in OCPP 1.6, for admins.

One generic path for all of them (:meth:`OperatorService.execute`): who may (admins only),
the rules the core keeps (a rule hook before the CALL may refuse it, one after it records
what the answer changed), the CALL itself through the :class:`ChargerGateway` port (schema
checks both ways, the one-CALL queue, the call time-out), and one operations-log record per
operation, refused or failed ones included, so an operator can always see what was asked and
what came of it.

Rules kept here (see docs/operators.md):

- **Reset** (Soft or Hard) is refused with ``TRANSACTION_RUNNING`` while a transaction runs on
  the charge point, unless forced.
- **ChangeAvailability**: an ``Accepted`` or ``Scheduled`` answer stores the wanted
  availability of the connector (0: the whole charge point); a scheduled change is marked in
  effect when the transaction on that connector ends (the charge point applies it then,
  OCPP 1.6 section 5.2). App starts on an Inoperative connector are refused by
  :class:`ChargingService` (``CONNECTOR_UNAVAILABLE``); an admin's RemoteStartTransaction on
  one is refused the same way unless forced.
- **GetConfiguration** answers are stored per charge point; **ChangeConfiguration** answers
  are kept per key; values an operator declared as wanted are sent again after every
  accepted BootNotification (recorded in the log as ``system:boot``).

Other rule sets (reservations, local lists, charging profiles) register their own hooks with
:meth:`OperatorService.add_rule`. Trade-off: hooks run inside the operation, so a slow hook
delays its answer; in exchange the log and the stored state never disagree about an operation
that returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from charging_api.domain.charging import ChargingService, SystemClock
from charging_api.domain.events import ChargePointBooted, DomainEvent, TransactionStopped
from charging_api.domain.models import (
    Availability,
    ConfigurationEntry,
    ConnectorAvailability,
    DeviceJob,
    DeviceStatus,
    OperationRecord,
    Principal,
)
from charging_api.domain.ports import ChargerGateway, Clock, Store
from charging_api.errors import (
    ChargePointNotFound,
    ChargePointOffline,
    ChargingApiError,
    ConnectorUnavailable,
    Forbidden,
    TransactionRunning,
    UnknownOperation,
    ValidationFailed,
)

log = logging.getLogger(__name__)

Payload = dict[str, Any]

#: Every operation a central system sends in OCPP 1.6, by feature profile.
CORE = (
    "ChangeAvailability",
    "ChangeConfiguration",
    "ClearCache",
    "DataTransfer",
    "GetConfiguration",
    "RemoteStartTransaction",
    "RemoteStopTransaction",
    "Reset",
    "UnlockConnector",
)
FIRMWARE_MANAGEMENT = ("GetDiagnostics", "UpdateFirmware")
LOCAL_AUTH_LIST_MANAGEMENT = ("GetLocalListVersion", "SendLocalList")
RESERVATION = ("CancelReservation", "ReserveNow")
SMART_CHARGING = ("ClearChargingProfile", "GetCompositeSchedule", "SetChargingProfile")
REMOTE_TRIGGER = ("TriggerMessage",)
OPERATIONS: frozenset[str] = frozenset(
    CORE
    + FIRMWARE_MANAGEMENT
    + LOCAL_AUTH_LIST_MANAGEMENT
    + RESERVATION
    + SMART_CHARGING
    + REMOTE_TRIGGER
)

#: Who the log names for operations the server sends by itself.
SYSTEM_BOOT = "system:boot"


@dataclass(frozen=True, slots=True)
class Operation:
    """One operation as the rule hooks see it."""

    principal: Principal | None  # None: the server itself
    charge_point_id: str
    action: str
    payload: Payload
    force: bool


#: Before the CALL: raise a ChargingApiError to refuse it (nothing is sent).
BeforeHook = Callable[[Operation], Awaitable[None]]
#: After a CALLRESULT: record what the answer changed.
AfterHook = Callable[[Operation, Payload], Awaitable[None]]


@dataclass(slots=True)
class _Rules:
    before: list[BeforeHook] = field(default_factory=list)
    after: list[AfterHook] = field(default_factory=list)


class OperatorService:
    """The operator side of the core; see the module docstring for its rules."""

    def __init__(
        self,
        store: Store,
        gateway: ChargerGateway,
        charging: ChargingService,
        clock: Clock | None = None,
    ) -> None:
        self._store = store
        self._gateway = gateway
        self._charging = charging
        self._clock: Clock = clock or SystemClock()
        self._rules: dict[str, _Rules] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.add_rule("Reset", before=self._refuse_reset_during_transaction)
        self.add_rule("RemoteStartTransaction", before=self._refuse_start_when_unavailable)
        self.add_rule("ChangeAvailability", after=self._keep_availability)
        self.add_rule("GetConfiguration", after=self._keep_reported_configuration)
        self.add_rule("ChangeConfiguration", after=self._keep_configuration_result)

    # ------------------------------------------------------------------ the generic path

    def add_rule(
        self, action: str, *, before: BeforeHook | None = None, after: AfterHook | None = None
    ) -> None:
        """Register rule hooks for ``action`` (run in registration order)."""
        if action not in OPERATIONS:
            raise ValueError(f"{action} is not an OCPP 1.6 central-system operation")
        rules = self._rules.setdefault(action, _Rules())
        if before is not None:
            rules.before.append(before)
        if after is not None:
            rules.after.append(after)

    async def execute(
        self,
        principal: Principal,
        charge_point_id: str,
        action: str,
        payload: dict[str, Any],
        *,
        force: bool = False,
    ) -> dict[str, Any]:
        """Send ``action`` (PascalCase, as OCPP 1.6 names it) with ``payload`` to the charge
        point and return its answer payload. Admins only.

        Errors: ``Forbidden``, ``UnknownOperation``, ``InvalidPayload`` (schema, nothing
        sent), ``ChargePointNotFound``, ``ChargePointOffline``, ``ChargePointBusy``,
        ``ChargePointError`` (CALLERROR, ``details.ocppErrorCode``), ``ChargePointTimeout``,
        and the rules' refusals (``TRANSACTION_RUNNING``, ``CONNECTOR_UNAVAILABLE``). Every
        operation past the admin check is recorded in the operations log, failures too.
        """
        if not principal.is_admin:
            raise Forbidden("Only admins may send operations to charge points")
        return await self._run(Operation(principal, charge_point_id, action, payload, force))

    async def _run(self, op: Operation) -> Payload:
        started = self._clock.monotonic()
        at = self._clock.now()
        response: Payload | None = None
        error: ChargingApiError | None = None
        try:
            if op.action not in OPERATIONS:
                raise UnknownOperation(
                    f"{op.action[:64]} is not an operation a central system sends in OCPP 1.6",
                    {"action": op.action[:64], "operations": sorted(OPERATIONS)},
                )
            rules = self._rules.get(op.action)
            for before in rules.before if rules else ():
                await before(op)
            try:
                response = await self._gateway.call(op.charge_point_id, op.action, op.payload)
            except ChargePointOffline:
                if await self._store.get_charge_point(op.charge_point_id) is None:
                    raise ChargePointNotFound(
                        f"Charge point {op.charge_point_id} is not known",
                        {"chargePointId": op.charge_point_id},
                    ) from None
                raise
            for after in rules.after if rules else ():
                await after(op, response)
            return response
        except ChargingApiError as exc:
            error = exc
            raise
        finally:
            await self._record(op, at, started, response, error)

    async def _record(
        self,
        op: Operation,
        at: Any,
        started: float,
        response: Payload | None,
        error: ChargingApiError | None,
    ) -> None:
        """Append the operation to the log; a failing log never changes the answer."""
        error_code: str | None = None
        if error is not None:
            error_code = error.code
        elif response is None:
            error_code = "INTERNAL_ERROR"  # a bug or a cancellation: still on the record
        record = OperationRecord(
            0,
            op.charge_point_id,
            op.action[:64],
            SYSTEM_BOOT if op.principal is None else op.principal.user_id,
            at,
            max(round((self._clock.monotonic() - started) * 1000), 0),
            dict(op.payload),
            None if error_code else response,
            error_code,
        )
        try:
            await self._store.add_operation(record)
        except Exception:
            log.exception(
                "operations log: recording %s on %s failed", op.action, op.charge_point_id
            )

    async def operations_log(
        self,
        principal: Principal,
        *,
        charge_point_id: str | None = None,
        limit: int = 100,
        before_id: int | None = None,
    ) -> list[OperationRecord]:
        """The operations log, newest first (admins only); ``before_id`` pages back."""
        if not principal.is_admin:
            raise Forbidden("Only admins may read the operations log")
        return await self._store.operations(charge_point_id, max(1, min(limit, 1000)), before_id)

    # ------------------------------------------------------------------ reading the state

    async def availability_of(
        self, principal: Principal, charge_point_id: str
    ) -> list[ConnectorAvailability]:
        if not principal.is_admin:
            raise Forbidden("Only admins may read a charge point's availability")
        return await self._store.availabilities(charge_point_id)

    async def configuration_of(
        self, principal: Principal, charge_point_id: str
    ) -> list[ConfigurationEntry]:
        if not principal.is_admin:
            raise Forbidden("Only admins may read a charge point's configuration")
        return await self._store.configuration(charge_point_id)

    async def device_statuses_of(
        self, principal: Principal, charge_point_id: str, job: DeviceJob, limit: int = 50
    ) -> list[DeviceStatus]:
        """Firmware or diagnostics status history, newest first (the first is the current)."""
        if not principal.is_admin:
            raise Forbidden("Only admins may read firmware and diagnostics status")
        return await self._store.device_statuses(charge_point_id, job, max(1, min(limit, 1000)))

    async def want_configuration(
        self, principal: Principal, charge_point_id: str, key: str, value: str | None
    ) -> None:
        """Declare the value ``key`` should have on the charge point (None: no longer
        wanted); it is sent after every accepted BootNotification. Send ChangeConfiguration
        to apply it now."""
        if not principal.is_admin:
            raise Forbidden("Only admins may change a charge point's configuration")
        if not 1 <= len(key) <= 50 or (value is not None and len(value) > 500):
            raise ValidationFailed(
                "A configuration key has 1 to 50 characters and a value up to 500 (OCPP 1.6)",
                {"key": key[:50]},
            )
        await self._store.put_wanted_configuration(charge_point_id, key, value)

    # ------------------------------------------------------------------ events

    def on_event(self, event: DomainEvent) -> None:
        """Bus subscriber: wanted configuration after a boot; scheduled availability in
        effect when the transaction ends. The work runs in tasks of its own (a CALL must not
        be sent before the BootNotification is answered)."""
        if isinstance(event, ChargePointBooted):
            self._spawn(self.apply_wanted_configuration(event.charge_point_id))
        elif isinstance(event, TransactionStopped) and (
            self._charging.may_have_scheduled_availability(event.charge_point_id)
        ):
            self._spawn(self._scheduled_in_effect(event.charge_point_id, event.connector_id))

    def _spawn(self, work: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await work
            except Exception:
                log.exception("operator follow-up failed")

        task = asyncio.ensure_future(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for the follow-ups under way (tests; shutdown cancels them instead)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def apply_wanted_configuration(self, charge_point_id: str) -> None:
        """Send every wanted value (each recorded), even one the charge point reported before:
        a reboot or a firmware update may have reset it, and one CALL per key is cheap."""
        for entry in await self._store.configuration(charge_point_id):
            if entry.wanted is None:
                continue
            op = Operation(
                None,
                charge_point_id,
                "ChangeConfiguration",
                {"key": entry.key, "value": entry.wanted},
                False,
            )
            try:
                await self._run(op)
            except ChargingApiError as exc:
                log.warning(
                    "wanted configuration %s=%s on %s failed: %s",
                    entry.key,
                    entry.wanted,
                    charge_point_id,
                    exc.code,
                )
                await self._store.put_configuration_result(
                    charge_point_id, entry.key, exc.code, self._clock.now()
                )

    async def _scheduled_in_effect(self, charge_point_id: str, connector_id: int) -> None:
        for av in await self._charging.scheduled_availability(charge_point_id):
            if av.connector_id in (0, connector_id):
                if av.connector_id == 0 and self._charging.live_transactions_on(charge_point_id):
                    continue  # the whole charge point waits for its last transaction
                await self._charging.record_availability(
                    replace(av, scheduled=False, updated_at=self._clock.now())
                )

    # ------------------------------------------------------------------ the rules

    async def _refuse_reset_during_transaction(self, op: Operation) -> None:
        running = self._charging.live_transactions_on(op.charge_point_id)
        if running and not op.force:
            raise TransactionRunning(
                f"{op.charge_point_id} has {len(running)} running transaction(s); a Reset "
                "would end them: stop them first, or send the Reset with force",
                {"chargePointId": op.charge_point_id, "transactionIds": sorted(running.values())},
            )

    async def _refuse_start_when_unavailable(self, op: Operation) -> None:
        connector = op.payload.get("connectorId")
        if op.force or not isinstance(connector, int):
            return
        if await self._charging.is_unavailable(op.charge_point_id, connector):
            raise ConnectorUnavailable(
                f"Connector {connector} of {op.charge_point_id} is Inoperative; make it "
                "Operative first, or send with force",
                {"chargePointId": op.charge_point_id, "connectorId": connector},
            )

    async def _keep_availability(self, op: Operation, response: Payload) -> None:
        status = response.get("status")
        if status not in ("Accepted", "Scheduled"):
            return
        await self._charging.record_availability(
            ConnectorAvailability(
                op.charge_point_id,
                int(op.payload["connectorId"]),
                Availability(op.payload["type"]),
                status == "Scheduled",
                self._clock.now(),
            )
        )

    async def _keep_reported_configuration(self, op: Operation, response: Payload) -> None:
        now = self._clock.now()
        entries = [
            ConfigurationEntry(
                op.charge_point_id,
                str(item["key"]),
                None if item.get("value") is None else str(item["value"]),
                bool(item.get("readonly", False)),
                now,
            )
            for item in response.get("configurationKey") or ()
        ]
        if entries:
            await self._store.put_reported_configuration(op.charge_point_id, entries)

    async def _keep_configuration_result(self, op: Operation, response: Payload) -> None:
        key, value, status = op.payload["key"], op.payload["value"], str(response["status"])
        now = self._clock.now()
        await self._store.put_configuration_result(op.charge_point_id, key, status, now)
        if status in ("Accepted", "RebootRequired"):
            known = {e.key: e for e in await self._store.configuration(op.charge_point_id)}
            old = known.get(key)
            await self._store.put_reported_configuration(
                op.charge_point_id,
                [
                    ConfigurationEntry(
                        op.charge_point_id, key, value, False if old is None else old.readonly, now
                    )
                ],
            )
