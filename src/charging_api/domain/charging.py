"""ChargingService: the one place that decides what a start, a stop, a status or a meter value means.

Both doors call in here: the app door with a :class:`Principal` (``start``, ``stop``, queries),
the charge point door with what an OCPP message said (``on_start_transaction`` ...). The service
keeps a small in-memory picture of what is live (active transactions, pending remote starts, who
follows which connector) so the hot path (MeterValues) needs no database read; storage holds the
truth and the picture is rebuilt from it on start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Protocol

from charging_api.domain import access
from charging_api.domain.events import (
    ChargePointBooted,
    ChargePointConnectionChanged,
    ConnectorStatusChanged,
    DataTransferReceived,
    DeviceStatusChanged,
    MeterValuesReceived,
    TransactionStarted,
    TransactionStopped,
)
from charging_api.domain.models import (
    OFFLINE,
    Availability,
    ChargePointInfo,
    ClosedBy,
    ConnectorAvailability,
    ConnectorState,
    DeviceJob,
    DeviceStatus,
    IdTag,
    IdTagStatus,
    IdTagVerdict,
    MeterSample,
    Principal,
    StoredMeterSample,
    Transaction,
    TransactionQuery,
    same_id_tag,
)
from charging_api.domain.ports import ChargerGateway, Clock, EventBus, SessionHooks, Store
from charging_api.errors import (
    ChargePointNotFound,
    ChargePointOffline,
    ChargePointRejected,
    ChargePointTimeout,
    ChargingApiError,
    ConnectorBusy,
    ConnectorNotFound,
    ConnectorUnavailable,
    Forbidden,
    NoIdTag,
    TransactionNotActive,
    TransactionNotFound,
    ValidationFailed,
)

log = logging.getLogger(__name__)

ConnectorKey = tuple[str, int]

#: The stop reason the server records when it closes a transaction whose connector reported
#: ``Available`` and whose StopTransaction did not follow (not an OCPP Reason: ours).
STALE_REASON = "StaleTransaction"
#: Statuses that say a session is still running on the connector: they cancel the grace timer
#: an earlier ``Available`` started.
_IN_SESSION = frozenset({"Charging", "SuspendedEV", "SuspendedEVSE"})
#: After a failed automatic close (storage down), try again this much later.
_RETRY_CLOSE_AFTER = 5.0


class SystemClock:
    """The real clock: aware UTC wall time, and the event loop's monotonic time base."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()


@dataclass(frozen=True, slots=True)
class ChargingPolicy:
    """The knobs of the core, filled from Settings by the composition root."""

    start_transaction_timeout: float = 20.0
    late_start_window: float = 300.0
    meter_live_window: float = 120.0
    heartbeat_interval_s: int = 300
    accept_unknown_charge_points: bool = True
    idempotency_window: float = 120.0
    history_limit: int = 50
    stale_transaction_grace: float = 120.0
    #: DataTransfer vendor ids (compared case-insensitively) answered Accepted and published
    #: to admins; every other vendor gets UnknownVendorId.
    data_transfer_vendors: frozenset[str] = frozenset()
    #: On each connection, read the charge point's open transactions from storage and adopt
    #: those the live picture lacks (another process may have opened them: a gateway that
    #: died). See :meth:`ChargingService.on_connected`. Costs one read per connection (about
    #: 0.6 ms on SQLite), so it is off where one process owns the database (``ROLE=all``: its
    #: picture is storage's) and on for cluster gateways.
    adopt_on_connect: bool = False


@dataclass(frozen=True, slots=True)
class StartOutcome:
    transaction_id: int
    connector_id: int
    status: str
    message: str
    reservation_id: int | None = None  # the holder's reservation this start consumed


class StartRule(Protocol):
    """Operator state that has a say in starts (reservations): registered with
    :meth:`ChargingService.add_start_rule`."""

    async def check_start(
        self, principal: Principal, charge_point_id: str, connector_id: int, record: IdTag
    ) -> int | None:
        """Before the RemoteStart: raise to refuse the app's start; return the id of the
        reservation the start will use (or None)."""
        ...

    async def on_transaction_started(self, tx: Transaction, reservation_id: int | None) -> None:
        """A new transaction was stored; ``reservation_id`` is the StartTransaction's (or the
        one :meth:`check_start` returned for our remote start)."""
        ...


class TimerSource(Protocol):
    """More deadlines on the core's clock, fired by :meth:`ChargingService.run_timers`."""

    def next_deadline(self) -> float | None: ...

    async def fire_due(self, now: float) -> None: ...


@dataclass(frozen=True, slots=True)
class StopOutcome:
    transaction_id: int
    status: str
    message: str


@dataclass(frozen=True, slots=True)
class BootVerdict:
    status: str
    interval_s: int
    current_time: datetime


@dataclass(slots=True)
class _LiveTransaction:
    """What the hot path needs to know about an open transaction, and what closing it without
    its StopTransaction needs (the last energy register seen, the app's stop reason)."""

    transaction_id: int
    charge_point_id: str
    connector_id: int
    user_id: str | None
    id_tag_status: IdTagStatus
    meter_start_wh: int
    started_at: datetime
    last_energy_wh: int | None = None
    last_reading_at: datetime | None = None
    app_stop_reason: str | None = None


@dataclass(slots=True)
class _PendingStart:
    """A RemoteStart we sent and whose StartTransaction has not come yet."""

    user_id: str
    id_tag: str
    record: IdTag  # as read (or stored) when the start was asked for
    created: float
    future: asyncio.Future[Transaction] = field(repr=False)
    timed_out: bool = False
    deadline: float | None = None  # set once the charge point accepted the RemoteStart
    reservation_id: int | None = None
    groups: frozenset[str] = frozenset()  # the owner's, when the owner asked (tariffs)


@dataclass(frozen=True, slots=True)
class UserState:
    """What an app needs to rebuild its screen (``get_state``)."""

    transactions: list[Transaction]
    connectors: list[ConnectorState]


class ChargingService:
    """Start/stop for users; reactions to what charge points report."""

    def __init__(
        self,
        store: Store,
        gateway: ChargerGateway,
        bus: EventBus,
        clock: Clock | None = None,
        policy: ChargingPolicy | None = None,
    ) -> None:
        self._store = store
        self._gateway = gateway
        self._bus = bus
        self._clock: Clock = clock or SystemClock()
        #: The core's one clock, shared with the operator state's timers.
        self.clock = self._clock
        self.policy = policy or ChargingPolicy()
        self._live: dict[int, _LiveTransaction] = {}
        self._live_on_connector: dict[ConnectorKey, int] = {}
        self._pending: dict[ConnectorKey, _PendingStart] = {}
        self._followers: dict[ConnectorKey, str] = {}
        # Highest connector id each charge point has reported (read from storage once per
        # charge point, then kept up to date by on_status): the start's CONNECTOR_NOT_FOUND.
        self._highest_connector: dict[str, int] = {}
        # Charge points whose connector 0 reported Faulted last: the status that ends the
        # fault reaches the same session owners.
        self._faulted_charge_points: set[str] = set()
        self._starts_by_request: dict[
            tuple[str, str], tuple[float, asyncio.Future[StartOutcome]]
        ] = {}
        # Open transactions whose connector reported Available: transaction id -> the
        # monotonic time at which they are closed unless a StopTransaction comes first.
        self._stale: dict[int, float] = {}
        self._rearm = asyncio.Event()  # a new deadline: run_timers recomputes its sleep
        # Wanted availability per charge point (connector -> what the operator asked), read
        # from storage once per charge point and kept current by record_availability.
        self._availability: dict[str, dict[int, ConnectorAvailability]] = {}
        self._vendors = frozenset(v.casefold() for v in self.policy.data_transfer_vendors)
        self._start_rules: list[StartRule] = []
        self._timer_sources: list[TimerSource] = []
        #: Live session figures (issue 13): fed on the meter hot path, set by the root.
        self.sessions: SessionHooks | None = None

    def add_start_rule(self, rule: StartRule) -> None:
        self._start_rules.append(rule)

    def add_timer_source(self, source: TimerSource) -> None:
        self._timer_sources.append(source)
        self._rearm.set()

    def wake_timers(self) -> None:
        """A timer source has a new deadline: :meth:`run_timers` recomputes its sleep."""
        self._rearm.set()

    async def load(self) -> None:
        """Rebuild the live picture from storage (after a restart, a crash included).

        An open transaction whose connector was last reported ``Available`` after it started
        gets its grace period again from now (the timer itself is not stored).
        """
        for tx in await self._store.active_transactions():
            self._remember_live(tx)
        for cp_id in sorted({live.charge_point_id for live in self._live.values()}):
            for state in await self._store.connector_states(cp_id):
                tx_id = self._live_on_connector.get((cp_id, state.connector_id))
                if tx_id is None or state.status != "Available" or state.updated_at is None:
                    continue
                if state.updated_at >= self._live[tx_id].started_at:
                    self._arm_stale(tx_id)
        log.info("loaded %d active transactions", len(self._live))

    # ------------------------------------------------------------------ timers

    async def run_timers(self) -> None:
        """Fire the core's deadlines on time (start time-outs, stale-transaction grace) for as
        long as the service runs; the composition root runs it as a task and cancels it.

        Deadlines live on :meth:`Clock.monotonic`; this loop only sleeps until the next one, so
        tests on a manual clock call :meth:`fire_due_timers` instead of running it.
        """
        while True:
            self._rearm.clear()
            try:
                await self.fire_due_timers()
            except Exception:  # a timer must never stop the others
                log.exception("core timers failed")
            deadline = self._next_deadline()
            delay = None if deadline is None else max(deadline - self._clock.monotonic(), 0.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._rearm.wait(), delay)

    async def fire_due_timers(self) -> None:
        """Act on every deadline at or before ``clock.monotonic()``: a start whose
        StartTransaction did not come in time fails with CHARGE_POINT_TIMEOUT; an open
        transaction whose connector reported Available and whose StopTransaction did not
        follow within the grace period is closed (:attr:`ClosedBy.CONNECTOR_AVAILABLE`)."""
        now = self._clock.monotonic()
        for (cp_id, connector_id), pending in list(self._pending.items()):
            if pending.deadline is None or pending.timed_out or pending.deadline > now:
                continue
            # The pending entry stays for late_start_window: a late StartTransaction is
            # still attached to this user and pushed to them.
            pending.timed_out = True
            if not pending.future.done():
                pending.future.set_exception(
                    ChargePointTimeout(
                        "The charge point accepted the remote start but did not start a "
                        f"transaction within {self.policy.start_transaction_timeout:g} s",
                        {"chargePointId": cp_id, "connectorId": connector_id},
                    )
                )
        for tx_id, deadline in list(self._stale.items()):
            if deadline > now or self._stale.get(tx_id) != deadline:
                continue
            del self._stale[tx_id]
            live = self._live.get(tx_id)
            if live is None:
                continue
            try:
                await self._close_by_server(live, ClosedBy.CONNECTOR_AVAILABLE, STALE_REASON)
            except Exception:
                log.exception("closing stale transaction %d failed; retrying", tx_id)
                self._stale.setdefault(tx_id, self._clock.monotonic() + _RETRY_CLOSE_AFTER)
        for source in self._timer_sources:
            try:
                await source.fire_due(now)
            except Exception:  # one source must never stop the others
                log.exception("timer source %r failed", source)

    def _next_deadline(self) -> float | None:
        deadlines = [
            p.deadline for p in self._pending.values() if p.deadline is not None and not p.timed_out
        ]
        deadlines.extend(self._stale.values())
        for source in self._timer_sources:
            deadline = source.next_deadline()
            if deadline is not None:
                deadlines.append(deadline)
        return min(deadlines, default=None)

    def _arm_stale(self, transaction_id: int) -> None:
        if transaction_id not in self._stale:
            self._stale[transaction_id] = (
                self._clock.monotonic() + self.policy.stale_transaction_grace
            )
            self._rearm.set()

    # ------------------------------------------------------------------ app side

    async def start(
        self,
        principal: Principal,
        charge_point_id: str,
        connector_id: int,
        id_tag: str | None = None,
        user_id: str | None = None,
        request_key: str | None = None,
    ) -> StartOutcome:
        """RemoteStart, then wait for the charge point's StartTransaction on that connector.

        ``request_key`` (the app's message id) makes a retry idempotent: the same user sending
        the same key within ``idempotency_window`` gets the first attempt's outcome.
        """
        if request_key is None:
            return await self._start(principal, charge_point_id, connector_id, id_tag, user_id)
        key = (principal.user_id, request_key)
        now = self._clock.monotonic()
        self._expire_request_keys(now)
        known = self._starts_by_request.get(key)
        if known is not None:
            return await asyncio.shield(known[1])
        future: asyncio.Future[StartOutcome] = asyncio.get_running_loop().create_future()
        self._starts_by_request[key] = (now, future)
        try:
            outcome = await self._start(principal, charge_point_id, connector_id, id_tag, user_id)
        except BaseException as exc:
            if isinstance(exc, ChargingApiError):
                future.set_exception(exc)
                future.exception()  # retrieved: a retry may never come
            else:
                self._starts_by_request.pop(key, None)
                future.cancel()
            raise
        future.set_result(outcome)
        return outcome

    def _expire_request_keys(self, now: float) -> None:
        """Forget finished starts older than the idempotency window.

        Keys are inserted in time order, so the walk stops at the first one still inside the
        window: a start costs O(expired), not O(all keys of the last two minutes).
        """
        horizon = now - self.policy.idempotency_window
        expired = []
        for key, (created, future) in self._starts_by_request.items():
            if created >= horizon:
                break
            if future.done():
                expired.append(key)
        for key in expired:
            del self._starts_by_request[key]

    async def _start(
        self,
        principal: Principal,
        charge_point_id: str,
        connector_id: int,
        id_tag: str | None,
        user_id: str | None,
    ) -> StartOutcome:
        if not access.may_act_as(principal, user_id):
            raise Forbidden("userId does not match the authenticated user")
        owner = user_id or principal.user_id
        record = await self._choose_id_tag(principal, owner, id_tag)
        tag = record.tag
        # A connected charge point was admitted, so it is known: the read is only needed to
        # tell "unknown" from "offline".
        if not self._gateway.is_online(charge_point_id):
            if await self._store.get_charge_point(charge_point_id) is None:
                raise ChargePointNotFound(
                    f"Charge point {charge_point_id} is not known",
                    {"chargePointId": charge_point_id},
                )
            raise ChargePointOffline(
                f"Charge point {charge_point_id} is not connected",
                {"chargePointId": charge_point_id},
            )
        await self._check_connector(charge_point_id, connector_id)
        if await self.is_unavailable(charge_point_id, connector_id):
            raise ConnectorUnavailable(
                f"Connector {connector_id} of {charge_point_id} is out of service "
                "(an operator made it Inoperative)",
                {"chargePointId": charge_point_id, "connectorId": connector_id},
            )
        key = (charge_point_id, connector_id)
        self._drop_stale_pending()
        stale = self._pending.get(key)
        if stale is not None and stale.timed_out:
            # A start that already timed out does not block a new attempt: the new one wins
            # (a late StartTransaction then belongs to whoever asked last).
            self._forget_pending(key, stale)
        held_by = self._live_on_connector.get(key)
        if held_by is not None and self._live[held_by].id_tag_status is not IdTagStatus.ACCEPTED:
            status = self._live[held_by].id_tag_status.value
            raise ConnectorBusy(
                f"Connector {connector_id} of {charge_point_id} is held by a session the charge "
                f"point started with an id tag we refused ({status}); it ends when the charge "
                "point stops it, when the connector reports Available and no StopTransaction "
                f"follows within {self.policy.stale_transaction_grace:g} s, or when an admin "
                "closes it",
                {
                    "chargePointId": charge_point_id,
                    "connectorId": connector_id,
                    "idTagStatus": status,
                },
            )
        if held_by is not None or key in self._pending:
            raise ConnectorBusy(
                f"Connector {connector_id} of {charge_point_id} already has a session",
                {"chargePointId": charge_point_id, "connectorId": connector_id},
            )
        reservation_id = None
        for rule in self._start_rules:
            reservation_id = (
                await rule.check_start(principal, charge_point_id, connector_id, record)
                or reservation_id
            )
        pending = _PendingStart(
            owner, tag, record, self._clock.monotonic(), asyncio.get_running_loop().create_future()
        )
        pending.reservation_id = reservation_id
        if owner == principal.user_id:
            pending.groups = principal.groups  # an admin's groups are not the owner's
        self._pending[key] = pending
        self._followers[key] = owner
        try:
            status = await self._gateway.remote_start(charge_point_id, connector_id, tag)
        except BaseException:
            self._forget_pending(key, pending)
            raise
        if status != "Accepted":
            self._forget_pending(key, pending)
            raise ChargePointRejected(
                f"Charge point rejected the remote start ({status})",
                {"chargePointId": charge_point_id, "connectorId": connector_id, "status": status},
            )
        if not pending.future.done():
            # fire_due_timers fails the future with CHARGE_POINT_TIMEOUT at the deadline.
            pending.deadline = self._clock.monotonic() + self.policy.start_transaction_timeout
            self._rearm.set()
        tx = await asyncio.shield(pending.future)
        return StartOutcome(
            tx.id, connector_id, "Accepted", "Charging started successfully", reservation_id
        )

    def _forget_pending(self, key: ConnectorKey, pending: _PendingStart) -> None:
        if self._pending.get(key) is pending:
            del self._pending[key]
            if key not in self._live_on_connector and self._followers.get(key) == pending.user_id:
                del self._followers[key]

    def _drop_stale_pending(self) -> None:
        horizon = self._clock.monotonic() - max(
            self.policy.late_start_window, self.policy.start_transaction_timeout
        )
        for key, pending in list(self._pending.items()):
            if pending.created < horizon:
                self._forget_pending(key, pending)

    async def _check_connector(self, charge_point_id: str, connector_id: int) -> None:
        """CONNECTOR_NOT_FOUND for a connector beyond those the charge point has reported.

        OCPP 1.6 numbers connectors 1..N and a charge point reports each one with a
        StatusNotification after it boots, so the highest id it reported is N. A charge point
        that has reported no connector yet (some report late, or only once a session begins)
        gets the benefit of the doubt: the start goes ahead and the charge point answers for
        itself. Storage is read once per charge point; on_status keeps the number current.
        """
        highest = self._highest_connector.get(charge_point_id)
        if highest is None:
            states = await self._store.connector_states(charge_point_id)
            highest = max((state.connector_id for state in states), default=0)
            self._highest_connector[charge_point_id] = highest
        if highest and connector_id > highest:
            raise ConnectorNotFound(
                f"Charge point {charge_point_id} has no connector {connector_id} "
                f"(it reported connectors 1 to {highest})",
                {"chargePointId": charge_point_id, "connectorId": connector_id},
            )

    async def _choose_id_tag(
        self, principal: Principal, owner: str, requested: str | None
    ) -> IdTag:
        """The tag to start with, as stored (a token's tag is stored for its user first).

        Tags match case-insensitively and the stored spelling is used. A tag named in the
        request, or the token's ``idTag`` claim, that storage knows but Authorize would not
        accept (Blocked, Expired, past its expiry date, ...) is FORBIDDEN here, before any
        RemoteStart, with Authorize's answer in ``details.idTagStatus``: the charge point would
        refuse it, or worse, start a session on it anyway.
        """
        if requested is not None:
            record = await self._store.get_id_tag(requested)
            if not access.may_use_id_tag(principal, owner, requested, record):
                raise Forbidden("This id tag does not belong to you", {"idTag": requested})
            if record is None:
                # A tag named in a signed token becomes the user's, so the charge point's
                # Authorize/StartTransaction for it is Accepted.
                record = IdTag(requested, owner)
                await self._store.put_id_tag(record)
            self._refuse_unless_accepted(record)
            return record
        if owner == principal.user_id:
            refused: IdTag | None = None
            for tag in sorted(principal.id_tags):
                found = await self._store.get_id_tag(tag)
                if access.may_use_id_tag(principal, owner, tag, found):
                    if found is None:
                        found = IdTag(tag, owner)
                        await self._store.put_id_tag(found)
                    elif not self._accepted(found):
                        refused = refused or found
                        continue
                    return found
            if refused is not None:
                # The token names this tag: no quiet fall-back to another card.
                self._refuse_unless_accepted(refused)
        for record in await self._store.id_tags_of(owner):
            if access.verdict_for(record, self._clock.now()).status is IdTagStatus.ACCEPTED:
                return record
        raise NoIdTag(
            "No id tag to charge with: put an idTag claim in the token or register one "
            "(charging-api idtags add TAG --user USER)",
            {"userId": owner},
        )

    def _accepted(self, record: IdTag) -> bool:
        return access.verdict_for(record, self._clock.now()).status is IdTagStatus.ACCEPTED

    def _refuse_unless_accepted(self, record: IdTag) -> None:
        verdict = access.verdict_for(record, self._clock.now())
        if verdict.status is not IdTagStatus.ACCEPTED:
            raise Forbidden(
                f"Id tag {record.tag} may not charge: it is {verdict.status.value}",
                {"idTag": record.tag, "idTagStatus": verdict.status.value},
            )

    async def stop(
        self,
        principal: Principal,
        charge_point_id: str | None,
        transaction_id: int,
        user_id: str | None = None,
        reason: str | None = None,
    ) -> StopOutcome:
        """RemoteStop; success means the charge point accepted it. The end follows as pushes.

        ``reason`` (the app's own words) is kept with the transaction and stored and shown
        beside the charge point's reason when it ends.

        Another user's transaction answers exactly as a missing one: the same
        TRANSACTION_NOT_FOUND (code, message, details) after the same work (one store read, no
        CALL), so stop requests cannot probe where others charge.
        """
        if not access.may_act_as(principal, user_id):
            raise Forbidden("userId does not match the authenticated user")
        live = self._live.get(transaction_id)  # the owner's open transaction: no database read
        if (
            live is not None
            and access.may_stop(principal, live.user_id)
            and charge_point_id in (None, live.charge_point_id)
        ):
            on_charge_point = live.charge_point_id
        else:
            tx = await self._store.get_transaction(transaction_id)
            if (
                tx is None
                or not access.may_stop(principal, tx.user_id)
                or charge_point_id not in (None, tx.charge_point_id)
            ):
                raise _not_found(transaction_id)
            if not tx.active:
                raise TransactionNotActive(
                    f"Transaction {transaction_id} has already stopped",
                    {"transactionId": transaction_id},
                )
            on_charge_point = tx.charge_point_id
            live = self._live.get(transaction_id)
        previous = None if live is None else live.app_stop_reason
        if live is not None and reason is not None:
            live.app_stop_reason = reason  # before the CALL: its StopTransaction may come first
        try:
            status = await self._gateway.remote_stop(on_charge_point, transaction_id)
        except BaseException:
            if live is not None and live.app_stop_reason == reason:
                live.app_stop_reason = previous
            raise
        if status != "Accepted":
            if live is not None and live.app_stop_reason == reason:
                live.app_stop_reason = previous
            raise ChargePointRejected(
                f"Charge point rejected the remote stop ({status})",
                {"transactionId": transaction_id, "status": status},
            )
        return StopOutcome(transaction_id, "Accepted", "Charging stopped successfully")

    async def close_transaction(
        self, principal: Principal, transaction_id: int, meter_stop_wh: int | None = None
    ) -> Transaction:
        """Close an open transaction by hand (admins only), without asking the charge point:
        for a session the charge point forgot. Audited in the log (who, what).

        Without ``meter_stop_wh`` the transaction is stopped at the last known meter reading
        and its time; with it, at that reading and now. The owner gets ``transaction_update``
        Stopped; a StopTransaction the charge point sends later still corrects the record.
        """
        if not principal.is_admin:
            raise Forbidden("Only admins may close transactions by hand")
        live = self._live.get(transaction_id)
        if live is None:
            tx = await self._store.get_transaction(transaction_id)
            if tx is None:
                raise _not_found(transaction_id)
            if not tx.active:
                raise TransactionNotActive(
                    f"Transaction {transaction_id} has already stopped",
                    {"transactionId": transaction_id},
                )
            live = _live_of(tx)  # open in storage, not in this process's picture
        if meter_stop_wh is not None and meter_stop_wh < live.meter_start_wh:
            raise ValidationFailed(
                f"meterStopWh {meter_stop_wh} is below the transaction's meterStart "
                f"{live.meter_start_wh}",
                {"transactionId": transaction_id, "meterStartWh": live.meter_start_wh},
            )
        at = None if meter_stop_wh is None else self._clock.now()
        closed = await self._close_by_server(live, ClosedBy.ADMIN, "Other", meter_stop_wh, at)
        log.warning(
            "audit: admin %s closed transaction %d by hand (charge point %s connector %d, "
            "owner %s, meterStop %s Wh)",
            principal.user_id,
            transaction_id,
            closed.charge_point_id,
            closed.connector_id,
            closed.user_id,
            closed.meter_stop_wh,
        )
        return closed

    async def state_of(self, principal: Principal) -> UserState:
        """The user's open transactions and the states of the connectors they are on."""
        txs = [
            tx
            for tx in await self._store.active_transactions()
            if principal.is_admin or tx.user_id == principal.user_id
        ]
        wanted = {(tx.charge_point_id, tx.connector_id) for tx in txs}
        wanted.update(k for k, u in self._followers.items() if u == principal.user_id)
        connectors: list[ConnectorState] = []
        for cp_id in sorted({cp for cp, _ in wanted}):
            online = self._gateway.is_online(cp_id)
            for state in await self._store.connector_states(cp_id):
                if (cp_id, state.connector_id) in wanted:
                    if not online:
                        state = ConnectorState(
                            cp_id, state.connector_id, OFFLINE, "NoError", state.updated_at
                        )
                    connectors.append(state)
        return UserState(txs, connectors)

    async def history_of(self, principal: Principal, limit: int | None = None) -> list[Transaction]:
        """Transactions, newest first: the user's own, or everyone's for an admin."""
        n = min(limit or self.policy.history_limit, self.policy.history_limit)
        return await self._store.transactions_of(
            None if principal.is_admin else principal.user_id, n
        )

    async def meter_samples_of(
        self, principal: Principal, transaction_id: int
    ) -> list[StoredMeterSample]:
        """The stored samples of one transaction, if the principal may see it."""
        tx = await self._store.get_transaction(transaction_id)
        if tx is None:
            raise TransactionNotFound(
                f"Transaction {transaction_id} not found", {"transactionId": transaction_id}
            )
        if not (principal.is_admin or tx.user_id == principal.user_id):
            raise Forbidden("Not your transaction", {"transactionId": transaction_id})
        return await self._store.meter_samples_of(transaction_id)

    def live_transaction_count(self) -> int:
        return len(self._live)

    def live_transactions_on(self, charge_point_id: str) -> dict[int, int]:
        """Connector id -> id of the transaction open on it, for one charge point."""
        return {
            live.connector_id: tx_id
            for tx_id, live in self._live.items()
            if live.charge_point_id == charge_point_id
        }

    # ---------------------------------------------------------- availability

    async def is_unavailable(self, charge_point_id: str, connector_id: int) -> bool:
        """Whether an operator made this connector (or the whole charge point, connector 0)
        Inoperative: app starts there are refused with CONNECTOR_UNAVAILABLE."""
        wanted = await self._availability_of(charge_point_id)
        return any(
            av.wanted is Availability.INOPERATIVE
            for av in (wanted.get(0), wanted.get(connector_id))
            if av is not None
        )

    def may_have_scheduled_availability(self, charge_point_id: str) -> bool:
        """False when it is known (from memory) that nothing waits on this charge point."""
        known = self._availability.get(charge_point_id)
        return known is None or any(av.scheduled for av in known.values())

    async def scheduled_availability(self, charge_point_id: str) -> list[ConnectorAvailability]:
        """The availability changes a charge point answered ``Scheduled`` (they wait for its
        transactions to end); from memory after the first read per charge point."""
        return [
            av for av in (await self._availability_of(charge_point_id)).values() if av.scheduled
        ]

    async def _availability_of(self, charge_point_id: str) -> dict[int, ConnectorAvailability]:
        wanted = self._availability.get(charge_point_id)
        if wanted is None:
            wanted = {
                av.connector_id: av for av in await self._store.availabilities(charge_point_id)
            }
            self._availability[charge_point_id] = wanted
        return wanted

    async def record_availability(self, availability: ConnectorAvailability) -> None:
        """Store the availability an operator asked for (and the charge point accepted or
        scheduled); the next app start on that connector follows it."""
        await self._store.put_availability(availability)
        wanted = self._availability.get(availability.charge_point_id)
        if wanted is not None:
            wanted[availability.connector_id] = availability

    # ---------------------------------------------------------- charge point side

    async def admit(self, charge_point_id: str, password: str | None) -> bool:
        """May this charge point connect? (Called at the WebSocket upgrade.)

        A registered charge point with a password must present it (Basic auth); an unknown one
        is admitted only when ``accept_unknown_charge_points`` (development mode).
        """
        cp = await self._store.get_charge_point(charge_point_id)
        if cp is None or (cp.registered_at is None and cp.password_hash is None):
            # Unknown, or only ever seen through a development-mode BootNotification.
            return self.policy.accept_unknown_charge_points and password is None
        if cp.password_hash is not None:
            # PBKDF2 takes tens of milliseconds: off the event loop, so a flood of upgrade
            # attempts cannot freeze both doors.
            return password is not None and await asyncio.to_thread(
                access.check_password, password, cp.password_hash
            )
        return True

    async def on_connected(self, charge_point_id: str) -> None:
        """The charge point's session is live: bring its part of the live picture in line
        with storage (:meth:`_adopt_open_transactions`), then tell whoever listens."""
        if self.policy.adopt_on_connect:
            await self._adopt_open_transactions(charge_point_id)
        await self._bus.publish(
            ChargePointConnectionChanged(charge_point_id, True, self._clock.now())
        )

    async def _adopt_open_transactions(self, charge_point_id: str) -> None:
        """Storage is the truth about which transactions of this charge point are open.

        Another process may have opened some since this one loaded its picture (the charge
        point was connected to another gateway, which died) or closed some (an admin's close
        there): the open ones the picture lacks are adopted, so their meter values, stops,
        app stops and ghost rules work here; the ones storage has closed are dropped without
        a push (whoever closed them told their owner). Each connector points at its newest
        open transaction, as after :meth:`load`. Runs before the charge point's first
        message is handled. Storage down: logged, and the connection goes on with the
        picture as it is.
        """
        try:
            stored = await self._store.find_transactions(
                TransactionQuery(charge_point_id=charge_point_id, active=True, limit=100)
            )
        except Exception:
            log.exception("reading the open transactions of %s failed", charge_point_id)
            return
        open_ids = {tx.id for tx in stored}
        for tx_id, live in list(self._live.items()):
            if live.charge_point_id == charge_point_id and tx_id not in open_ids:
                self._forget_live(tx_id)
        adopted = [tx for tx in stored if tx.id not in self._live]
        for tx in adopted:
            self._live[tx.id] = _live_of(tx)
        if not adopted:
            return
        newest: dict[ConnectorKey, _LiveTransaction] = {}
        for live in self._live.values():
            if live.charge_point_id != charge_point_id:
                continue
            key = (charge_point_id, live.connector_id)
            known = newest.get(key)
            if known is None or (live.started_at, live.transaction_id) > (
                known.started_at,
                known.transaction_id,
            ):
                newest[key] = live
        for key, live in newest.items():
            self._live_on_connector[key] = live.transaction_id
        log.info(
            "adopted %d open transaction(s) of %s from storage: %s",
            len(adopted),
            charge_point_id,
            ", ".join(str(tx.id) for tx in adopted),
        )

    async def on_disconnected(self, charge_point_id: str) -> None:
        """Tell whoever follows a connector of this charge point that it went ``Offline``.

        Open transactions stay open: the charge point will replay what it queued.
        """
        now = self._clock.now()
        keys = {k for k in self._followers if k[0] == charge_point_id}
        keys.update(k for k in self._live_on_connector if k[0] == charge_point_id)
        for key in sorted(keys):
            tx_id = self._live_on_connector.get(key)
            user = self._followers.get(key)
            if user is None and tx_id is not None:
                user = self._live[tx_id].user_id
            await self._bus.publish(
                ConnectorStatusChanged(key[0], key[1], OFFLINE, "NoError", now, tx_id, user)
            )
        await self._bus.publish(ChargePointConnectionChanged(charge_point_id, False, now))

    async def on_boot(self, charge_point_id: str, info: ChargePointInfo) -> BootVerdict:
        now = self._clock.now()
        await self._store.record_boot(charge_point_id, info, now)
        await self._bus.publish(ChargePointBooted(charge_point_id, now))
        return BootVerdict("Accepted", self.policy.heartbeat_interval_s, now)

    async def on_device_status(self, charge_point_id: str, job: DeviceJob, status: str) -> None:
        """A FirmwareStatusNotification / DiagnosticsStatusNotification: stored (the history
        of the job), then published to admins."""
        now = self._clock.now()
        await self._store.add_device_status(DeviceStatus(0, charge_point_id, job, status, now))
        await self._bus.publish(DeviceStatusChanged(charge_point_id, job, status, now))

    async def on_data_transfer(
        self, charge_point_id: str, vendor_id: str, message_id: str | None, data: object
    ) -> str:
        """A charge point's DataTransfer: ``Accepted`` and published to admins for a vendor id
        on the allowlist, else ``UnknownVendorId`` (nothing published)."""
        if vendor_id.casefold() not in self._vendors:
            return "UnknownVendorId"
        await self._bus.publish(
            DataTransferReceived(charge_point_id, vendor_id, message_id, data, self._clock.now())
        )
        return "Accepted"

    def on_heartbeat(self, charge_point_id: str) -> datetime:
        return self._clock.now()

    async def on_authorize(self, charge_point_id: str, id_tag: str) -> IdTagVerdict:
        return access.verdict_for(await self._store.get_id_tag(id_tag), self._clock.now())

    async def on_start_transaction(
        self,
        charge_point_id: str,
        connector_id: int,
        id_tag: str,
        meter_start_wh: int,
        timestamp: datetime,
        reservation_id: int | None = None,
    ) -> tuple[int, IdTagVerdict]:
        """Always returns a transactionId (even for an Invalid tag, as OCPP 1.6 requires);
        a replay of a StartTransaction already stored gets the same id. ``reservation_id``
        (the StartTransaction's) is consumed, as is the one our remote start was made for."""
        key = (charge_point_id, connector_id)
        pending = self._pending.get(key)
        record: IdTag | None
        if pending is not None and same_id_tag(pending.id_tag, id_tag):
            user: str | None = pending.user_id
            # Our remote start: the tag's record was read moments ago (re-read if late).
            record = await self._store.get_id_tag(id_tag) if pending.timed_out else pending.record
        else:
            pending = None
            record = await self._store.get_id_tag(id_tag)
            user = record.user_id if record is not None else None
        verdict = access.verdict_for(record, self._clock.now())
        tx, created = await self._store.start_transaction(
            charge_point_id, connector_id, id_tag, user, meter_start_wh, timestamp, verdict.status
        )
        if not created:  # a replay: the first answer again, nobody told twice
            return tx.id, IdTagVerdict(tx.id_tag_status)
        ghost_id = self._live_on_connector.get(key)
        # (A new connection's adoption may have read this very transaction already.)
        ghost = None if ghost_id in (None, tx.id) else self._live.get(ghost_id)
        if ghost is not None and ghost.started_at > timestamp:
            # An offline replay of an older session: it does not end the newer one.
            self._remember_live(tx, on_connector=False)
        else:
            if ghost is not None:
                # The charge point forgot the open transaction (a reboot): it is over.
                try:
                    await self._close_by_server(ghost, ClosedBy.SUPERSEDED, "Other")
                except Exception:  # the new transaction is stored: answer it regardless
                    log.exception("closing superseded transaction %d failed", ghost.transaction_id)
            self._remember_live(tx)
            if user is not None:
                self._followers[key] = user
        groups = pending.groups if pending is not None else frozenset()
        if reservation_id is None and pending is not None:
            reservation_id = pending.reservation_id
        for rule in self._start_rules:
            try:
                await rule.on_transaction_started(tx, reservation_id)
            except Exception:  # the transaction is stored: answer it regardless
                log.exception("start rule %r failed for transaction %d", rule, tx.id)
        if pending is not None:
            del self._pending[key]
            if not pending.future.done():
                pending.future.set_result(tx)
        await self._bus.publish(
            TransactionStarted(
                charge_point_id,
                connector_id,
                tx.id,
                user,
                id_tag,
                meter_start_wh,
                tx.started_at,
                groups,
            )
        )
        return tx.id, verdict

    async def on_stop_transaction(
        self,
        charge_point_id: str,
        transaction_id: int,
        meter_stop_wh: int,
        timestamp: datetime,
        reason: str | None,
        id_tag: str | None,
        transaction_data: Sequence[MeterSample] = (),
    ) -> IdTagVerdict | None:
        """Close the transaction durably. Unknown or already closed: acknowledged all the same
        (answering with an error makes real chargers retry forever)."""
        verdict = (
            access.verdict_for(await self._store.get_id_tag(id_tag), self._clock.now())
            if id_tag
            else None
        )
        live = self._live.get(transaction_id)
        closed_by: ClosedBy | None = None
        if live is not None and live.charge_point_id == charge_point_id:
            connector_id, active = live.connector_id, True  # open: no read needed
        else:
            tx = await self._store.get_transaction(transaction_id)
            if tx is None or tx.charge_point_id != charge_point_id:
                log.warning(
                    "StopTransaction for unknown transaction %s from %s acknowledged",
                    transaction_id,
                    charge_point_id,
                )
                return verdict
            connector_id, active, closed_by = tx.connector_id, tx.active, tx.closed_by
        if transaction_data:
            self._store.add_meter_samples(
                [
                    StoredMeterSample(charge_point_id, connector_id, transaction_id, s)
                    for s in transaction_data
                ]
            )
            if active and live is not None and self.sessions is not None:
                self.sessions.on_stop_samples(transaction_id, transaction_data)
        if not active:
            if closed_by not in (None, ClosedBy.CHARGE_POINT):
                # We closed it without this StopTransaction: its figures are the true ones.
                await self._store.correct_stop(transaction_id, meter_stop_wh, timestamp, reason)
                log.info(
                    "StopTransaction corrected transaction %d (closed earlier: %s)",
                    transaction_id,
                    closed_by,
                )
            return verdict
        app_reason = None if live is None else live.app_stop_reason
        closed = await self._store.stop_transaction(
            transaction_id, meter_stop_wh, timestamp, reason, ClosedBy.CHARGE_POINT, app_reason
        )
        if closed is None:
            return verdict
        if closed.closed_by is not ClosedBy.CHARGE_POINT:
            # The server closed it meanwhile (a grace period ended): the charge point's own
            # figures still win.
            closed = (
                await self._store.correct_stop(transaction_id, meter_stop_wh, timestamp, reason)
                or closed
            )
        if not self._forget_live(transaction_id) and live is not None:
            return verdict  # a concurrent close of this transaction told everyone
        await self._publish_stopped(closed)
        return verdict

    async def on_status(
        self,
        charge_point_id: str,
        connector_id: int,
        status: str,
        error_code: str,
        timestamp: datetime | None,
        info: str | None = None,
        vendor_error_code: str | None = None,
    ) -> None:
        """Store the connector's status and tell the user following that connector.

        ``info`` and ``vendor_error_code`` (the charge point's own words) travel with the
        push. Connector 0 is the charge point itself: see :meth:`_tell_session_owners`.
        """
        key = (charge_point_id, connector_id)
        at = timestamp or self._clock.now()
        await self._store.set_connector_status(
            ConnectorState(charge_point_id, connector_id, status, error_code, at)
        )
        highest = self._highest_connector.get(charge_point_id)
        if highest is not None and connector_id > highest:
            self._highest_connector[charge_point_id] = connector_id
        tx_id = self._live_on_connector.get(key)
        user = self._followers.get(key)
        if user is None and tx_id is not None:
            user = self._live[tx_id].user_id
        if tx_id is not None:
            if status == "Available":
                self._arm_stale(tx_id)  # closed unless its StopTransaction follows in time
            elif status in _IN_SESSION:
                self._stale.pop(tx_id, None)
        event = ConnectorStatusChanged(
            charge_point_id, connector_id, status, error_code, at, tx_id, user, info,
            vendor_error_code,
        )  # fmt: skip
        await self._bus.publish(event)
        if connector_id == 0:
            await self._tell_session_owners(event)
        if status == "Available" and tx_id is None:
            pending = self._pending.get(key)
            if pending is not None and pending.timed_out:
                # The charge point gave up on that remote start (connection time-out).
                self._forget_pending(key, pending)
            if key not in self._pending:
                self._followers.pop(key, None)

    async def _tell_session_owners(self, event: ConnectorStatusChanged) -> None:
        """A charge point's ``Faulted`` (connector 0) concerns every session on it.

        Its owners (and users waiting for a start there) each get a copy with their own
        transactionId; so does the status that ends the fault. Other connector-0 statuses
        (the routine ``Available`` after a boot) stay with subscribed admins.
        """
        cp_id = event.charge_point_id
        if event.status == "Faulted":
            self._faulted_charge_points.add(cp_id)
        elif cp_id in self._faulted_charge_points:
            self._faulted_charge_points.discard(cp_id)
        else:
            return
        told: dict[str, set[int | None]] = {}
        for key, user in self._followers.items():
            if key[0] == cp_id:
                told.setdefault(user, set()).add(self._live_on_connector.get(key))
        for live in self._live.values():
            if live.charge_point_id == cp_id and live.user_id is not None:
                told.setdefault(live.user_id, set()).add(live.transaction_id)
        for user, tx_ids in told.items():
            if None in tx_ids and len(tx_ids) > 1:
                tx_ids.discard(None)  # a waiting start beside a session: one copy will do
            for tx_id in sorted(tx_ids, key=lambda t: -1 if t is None else t):
                copy = replace(event, transaction_id=tx_id, user_id=user, owner_only=True)
                await self._bus.publish(copy)

    async def on_meter_values(
        self,
        charge_point_id: str,
        connector_id: int,
        transaction_id: int | None,
        samples: Sequence[MeterSample],
    ) -> None:
        """The hot path: no database read, one batched write, one publish per live sample.

        Samples older than ``meter_live_window`` (a replay after an outage) are stored but not
        pushed as if they were live. Samples with no usable value are dropped. Connector 0 is
        the charge point's main meter: its samples are stored for the charge point, without a
        transaction, even when they name one, so they never count as a session's energy.
        """
        samples = [sample for sample in samples if sample.has_values]
        if not samples:
            return
        if connector_id == 0:
            transaction_id = None
        named = transaction_id is not None
        if transaction_id is None:
            transaction_id = self._live_on_connector.get((charge_point_id, connector_id))
        live = self._live.get(transaction_id) if transaction_id is not None else None
        if live is None and transaction_id is not None:
            # Not an open transaction (a replay after the stop, or garbage): one read, off
            # the hot path, so a charge point cannot file samples under another's transaction.
            stored = await self._store.get_transaction(transaction_id)
            if stored is None or stored.charge_point_id != charge_point_id:
                transaction_id = None
        elif live is not None and live.charge_point_id != charge_point_id:
            log.warning(
                "MeterValues from %s name transaction %s of %s; stored without it",
                charge_point_id,
                transaction_id,
                live.charge_point_id,
            )
            transaction_id, live = None, None
        user = live.user_id if live is not None else None
        if live is not None:
            self._note_reading(live, samples)
            if named and self._stale:
                self._stale.pop(live.transaction_id, None)  # the charge point still runs it
        self._store.add_meter_samples(
            [StoredMeterSample(charge_point_id, connector_id, transaction_id, s) for s in samples]
        )
        snapshot = None
        if live is not None and self.sessions is not None:
            figures = await self.sessions.on_samples(live.transaction_id, samples)
            snapshot = None if figures is None else figures.to_json()
        horizon = self._clock.now() - timedelta(seconds=self.policy.meter_live_window)
        for sample in samples:
            if sample.timestamp >= horizon:
                await self._bus.publish(
                    MeterValuesReceived(
                        charge_point_id, connector_id, transaction_id, user, sample, snapshot
                    )
                )

    # ------------------------------------------------------------------ helpers

    def _remember_live(self, tx: Transaction, on_connector: bool = True) -> None:
        self._live[tx.id] = _live_of(tx)
        if on_connector:
            self._live_on_connector[(tx.charge_point_id, tx.connector_id)] = tx.id

    def _forget_live(self, transaction_id: int) -> bool:
        """Drop an open transaction from the picture; False if it was not there."""
        self._stale.pop(transaction_id, None)
        live = self._live.pop(transaction_id, None)
        if live is None:
            return False
        key = (live.charge_point_id, live.connector_id)
        if self._live_on_connector.get(key) == transaction_id:
            del self._live_on_connector[key]
        return True

    @staticmethod
    def _note_reading(live: _LiveTransaction, samples: Sequence[MeterSample]) -> None:
        """Remember the newest energy register reading (an old replayed sample does not win)."""
        for sample in samples:
            kwh = sample.energy_import_kwh
            if kwh is None:
                continue
            if live.last_reading_at is None or sample.timestamp >= live.last_reading_at:
                live.last_energy_wh = round(kwh * 1000)
                live.last_reading_at = sample.timestamp

    async def _last_known_reading(self, live: _LiveTransaction) -> tuple[int, datetime]:
        """The last energy register seen and its time: from the live picture, else (after a
        restart) from the stored samples, else meterStart at the start. Never below meterStart."""
        wh, at = live.last_energy_wh, live.last_reading_at
        if wh is None or at is None:
            for stored in reversed(await self._store.meter_samples_of(live.transaction_id)):
                kwh = stored.sample.energy_import_kwh
                if kwh is not None:
                    wh, at = round(kwh * 1000), stored.sample.timestamp
                    break
        if wh is None or at is None:
            return live.meter_start_wh, live.started_at
        return max(wh, live.meter_start_wh), max(at, live.started_at)

    async def _close_by_server(
        self,
        live: _LiveTransaction,
        closed_by: ClosedBy,
        reason: str,
        meter_stop_wh: int | None = None,
        at: datetime | None = None,
    ) -> Transaction:
        """Close a transaction its charge point will not close (it forgot it), durably, and
        tell its owner; by default at the last known meter reading and its time."""
        if meter_stop_wh is None or at is None:
            meter_stop_wh, at = await self._last_known_reading(live)
        tx_id = live.transaction_id
        in_picture = self._live.get(tx_id) is live
        closed = await self._store.stop_transaction(
            tx_id, meter_stop_wh, at, reason, closed_by, live.app_stop_reason
        )
        if closed is None:  # gone from storage: nothing left to close
            self._forget_live(tx_id)
            raise _not_found(tx_id)
        key = (live.charge_point_id, live.connector_id)
        if self._forget_live(tx_id) or (not in_picture and closed.closed_by is closed_by):
            user = live.user_id
            if user is not None and self._followers.get(key) == user and key not in self._pending:
                del self._followers[key]  # the next session on it is someone else's
            await self._publish_stopped(closed)
        if closed.closed_by is closed_by:
            log.warning(
                "transaction %d on %s connector %d closed by the server (%s): meterStop %s Wh "
                "at %s",
                tx_id,
                live.charge_point_id,
                live.connector_id,
                closed_by.value,
                closed.meter_stop_wh,
                closed.stopped_at,
            )
        return closed

    async def _publish_stopped(self, closed: Transaction) -> None:
        """``TransactionStopped`` with what storage holds (whoever won a race to close it)."""
        meter_stop = closed.meter_stop_wh if closed.meter_stop_wh is not None else 0
        await self._bus.publish(
            TransactionStopped(
                closed.charge_point_id,
                closed.connector_id,
                closed.id,
                closed.user_id,
                meter_stop,
                round(max(meter_stop - closed.meter_start_wh, 0) / 1000.0, 6),
                closed.stop_reason,
                closed.stopped_at or self._clock.now(),
                closed.closed_by or ClosedBy.CHARGE_POINT,
                closed.app_stop_reason,
            )
        )


def _live_of(tx: Transaction) -> _LiveTransaction:
    return _LiveTransaction(
        tx.id,
        tx.charge_point_id,
        tx.connector_id,
        tx.user_id,
        tx.id_tag_status,
        tx.meter_start_wh,
        tx.started_at,
    )


def _not_found(transaction_id: int) -> TransactionNotFound:
    """The one answer for a transaction that is missing or not the asker's to see."""
    return TransactionNotFound(
        f"Transaction {transaction_id} not found", {"transactionId": transaction_id}
    )
