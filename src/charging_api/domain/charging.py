"""ChargingService: the one place that decides what a start, a stop, a status or a meter value means.

Both doors call in here: the app door with a :class:`Principal` (``start``, ``stop``, queries),
the charge point door with what an OCPP message said (``on_start_transaction`` ...). The service
keeps a small in-memory picture of what is live (active transactions, pending remote starts, who
follows which connector) so the hot path (MeterValues) needs no database read; storage holds the
truth and the picture is rebuilt from it on start.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from charging_api.domain import access
from charging_api.domain.events import (
    ChargePointConnectionChanged,
    ConnectorStatusChanged,
    MeterValuesReceived,
    TransactionStarted,
    TransactionStopped,
)
from charging_api.domain.models import (
    OFFLINE,
    ChargePointInfo,
    ConnectorState,
    IdTag,
    IdTagStatus,
    IdTagVerdict,
    MeterSample,
    Principal,
    StoredMeterSample,
    Transaction,
)
from charging_api.domain.ports import ChargerGateway, Clock, EventBus, Store
from charging_api.errors import (
    ChargePointNotFound,
    ChargePointOffline,
    ChargePointRejected,
    ChargePointTimeout,
    ChargingApiError,
    ConnectorBusy,
    Forbidden,
    NoIdTag,
    TransactionNotActive,
    TransactionNotFound,
)

log = logging.getLogger(__name__)

ConnectorKey = tuple[str, int]


class SystemClock:
    """The real clock: aware UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)


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


@dataclass(frozen=True, slots=True)
class StartOutcome:
    transaction_id: int
    connector_id: int
    status: str
    message: str


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
    """What the hot path needs to know about an open transaction."""

    transaction_id: int
    charge_point_id: str
    connector_id: int
    user_id: str | None


@dataclass(slots=True)
class _PendingStart:
    """A RemoteStart we sent and whose StartTransaction has not come yet."""

    user_id: str
    id_tag: str
    record: IdTag  # as read (or stored) when the start was asked for
    created: float
    future: asyncio.Future[Transaction] = field(repr=False)
    timed_out: bool = False


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
        self.policy = policy or ChargingPolicy()
        self._live: dict[int, _LiveTransaction] = {}
        self._live_on_connector: dict[ConnectorKey, int] = {}
        self._pending: dict[ConnectorKey, _PendingStart] = {}
        self._followers: dict[ConnectorKey, str] = {}
        self._starts_by_request: dict[
            tuple[str, str], tuple[float, asyncio.Future[StartOutcome]]
        ] = {}

    async def load(self) -> None:
        """Rebuild the live picture from storage (after a restart, a crash included)."""
        for tx in await self._store.active_transactions():
            self._remember_live(tx)
        log.info("loaded %d active transactions", len(self._live))

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
        now = time.monotonic()
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
        key = (charge_point_id, connector_id)
        self._drop_stale_pending()
        stale = self._pending.get(key)
        if stale is not None and stale.timed_out:
            # A start that already timed out does not block a new attempt: the new one wins
            # (a late StartTransaction then belongs to whoever asked last).
            self._forget_pending(key, stale)
        if key in self._live_on_connector or key in self._pending:
            raise ConnectorBusy(
                f"Connector {connector_id} of {charge_point_id} already has a session",
                {"chargePointId": charge_point_id, "connectorId": connector_id},
            )
        pending = _PendingStart(
            owner, tag, record, time.monotonic(), asyncio.get_running_loop().create_future()
        )
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
        try:
            tx = await asyncio.wait_for(
                asyncio.shield(pending.future), self.policy.start_transaction_timeout
            )
        except TimeoutError:
            # The pending entry stays for late_start_window: a late StartTransaction is still
            # attached to this user and pushed to them.
            pending.timed_out = True
            raise ChargePointTimeout(
                "The charge point accepted the remote start but did not start a transaction "
                f"within {self.policy.start_transaction_timeout:g} s",
                {"chargePointId": charge_point_id, "connectorId": connector_id},
            ) from None
        return StartOutcome(tx.id, connector_id, "Accepted", "Charging started successfully")

    def _forget_pending(self, key: ConnectorKey, pending: _PendingStart) -> None:
        if self._pending.get(key) is pending:
            del self._pending[key]
            if key not in self._live_on_connector and self._followers.get(key) == pending.user_id:
                del self._followers[key]

    def _drop_stale_pending(self) -> None:
        horizon = time.monotonic() - max(
            self.policy.late_start_window, self.policy.start_transaction_timeout
        )
        for key, pending in list(self._pending.items()):
            if pending.created < horizon:
                self._forget_pending(key, pending)

    async def _choose_id_tag(
        self, principal: Principal, owner: str, requested: str | None
    ) -> IdTag:
        """The tag to start with, as stored (a token's tag is stored for its user first)."""
        if requested is not None:
            record = await self._store.get_id_tag(requested)
            if not access.may_use_id_tag(principal, owner, requested, record):
                raise Forbidden("This id tag does not belong to you", {"idTag": requested})
            if record is None:
                # A tag named in a signed token becomes the user's, so the charge point's
                # Authorize/StartTransaction for it is Accepted.
                record = IdTag(requested, owner)
                await self._store.put_id_tag(record)
            return record
        if owner == principal.user_id:
            for tag in sorted(principal.id_tags):
                found = await self._store.get_id_tag(tag)
                if access.may_use_id_tag(principal, owner, tag, found):
                    if found is None:
                        found = IdTag(tag, owner)
                        await self._store.put_id_tag(found)
                    return found
        for record in await self._store.id_tags_of(owner):
            if access.verdict_for(record, self._clock.now()).status is IdTagStatus.ACCEPTED:
                return record
        raise NoIdTag(
            "No id tag to charge with: put an idTag claim in the token or register one "
            "(charging-api idtags add TAG --user USER)",
            {"userId": owner},
        )

    async def stop(
        self,
        principal: Principal,
        charge_point_id: str | None,
        transaction_id: int,
        user_id: str | None = None,
    ) -> StopOutcome:
        """RemoteStop; success means the charge point accepted it. The end follows as pushes."""
        if not access.may_act_as(principal, user_id):
            raise Forbidden("userId does not match the authenticated user")
        live = self._live.get(transaction_id)  # open transactions need no database read
        if live is not None:
            owner, on_charge_point, active = live.user_id, live.charge_point_id, True
        else:
            tx = await self._store.get_transaction(transaction_id)
            if tx is None:
                raise TransactionNotFound(
                    f"Transaction {transaction_id} not found", {"transactionId": transaction_id}
                )
            owner, on_charge_point, active = tx.user_id, tx.charge_point_id, tx.active
        if charge_point_id is not None and on_charge_point != charge_point_id:
            raise TransactionNotFound(
                f"Transaction {transaction_id} not found", {"transactionId": transaction_id}
            )
        if not access.may_stop(principal, owner):
            raise Forbidden(
                "You may only stop your own transactions", {"transactionId": transaction_id}
            )
        if not active:
            raise TransactionNotActive(
                f"Transaction {transaction_id} has already stopped",
                {"transactionId": transaction_id},
            )
        status = await self._gateway.remote_stop(on_charge_point, transaction_id)
        if status != "Accepted":
            raise ChargePointRejected(
                f"Charge point rejected the remote stop ({status})",
                {"transactionId": transaction_id, "status": status},
            )
        return StopOutcome(transaction_id, "Accepted", "Charging stopped successfully")

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
        await self._bus.publish(
            ChargePointConnectionChanged(charge_point_id, True, self._clock.now())
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
        return BootVerdict("Accepted", self.policy.heartbeat_interval_s, now)

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
    ) -> tuple[int, IdTagVerdict]:
        """Always returns a transactionId (even for an Invalid tag, as OCPP 1.6 requires);
        a replay of a StartTransaction already stored gets the same id."""
        key = (charge_point_id, connector_id)
        pending = self._pending.get(key)
        record: IdTag | None
        if pending is not None and pending.id_tag == id_tag:
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
        self._remember_live(tx)
        if user is not None:
            self._followers[key] = user
        if pending is not None:
            del self._pending[key]
            if not pending.future.done():
                pending.future.set_result(tx)
        await self._bus.publish(
            TransactionStarted(
                charge_point_id, connector_id, tx.id, user, id_tag, meter_start_wh, timestamp
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
            connector_id, active = tx.connector_id, tx.active
        if transaction_data:
            self._store.add_meter_samples(
                [
                    StoredMeterSample(charge_point_id, connector_id, transaction_id, s)
                    for s in transaction_data
                ]
            )
        if not active:
            return verdict
        closed = await self._store.stop_transaction(
            transaction_id, meter_stop_wh, timestamp, reason
        )
        if closed is None:
            return verdict
        if not self._forget_live(transaction_id) and live is not None:
            return verdict  # a concurrent copy of this stop closed it and told everyone
        await self._bus.publish(
            TransactionStopped(
                charge_point_id,
                closed.connector_id,
                transaction_id,
                closed.user_id,
                meter_stop_wh,
                round(max(meter_stop_wh - closed.meter_start_wh, 0) / 1000.0, 6),
                reason,
                timestamp,
            )
        )
        return verdict

    async def on_status(
        self,
        charge_point_id: str,
        connector_id: int,
        status: str,
        error_code: str,
        timestamp: datetime | None,
    ) -> None:
        """Store the connector's status and tell the user following that connector."""
        key = (charge_point_id, connector_id)
        at = timestamp or self._clock.now()
        await self._store.set_connector_status(
            ConnectorState(charge_point_id, connector_id, status, error_code, at)
        )
        tx_id = self._live_on_connector.get(key)
        user = self._followers.get(key)
        if user is None and tx_id is not None:
            user = self._live[tx_id].user_id
        await self._bus.publish(
            ConnectorStatusChanged(
                charge_point_id, connector_id, status, error_code, at, tx_id, user
            )
        )
        if status == "Available" and tx_id is None:
            pending = self._pending.get(key)
            if pending is not None and pending.timed_out:
                # The charge point gave up on that remote start (connection time-out).
                self._forget_pending(key, pending)
            if key not in self._pending:
                self._followers.pop(key, None)

    async def on_meter_values(
        self,
        charge_point_id: str,
        connector_id: int,
        transaction_id: int | None,
        samples: Sequence[MeterSample],
    ) -> None:
        """The hot path: no database read, one batched write, one publish per live sample.

        Samples older than ``meter_live_window`` (a replay after an outage) are stored but not
        pushed as if they were live.
        """
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
        self._store.add_meter_samples(
            [StoredMeterSample(charge_point_id, connector_id, transaction_id, s) for s in samples]
        )
        horizon = self._clock.now() - timedelta(seconds=self.policy.meter_live_window)
        for sample in samples:
            if sample.timestamp >= horizon:
                await self._bus.publish(
                    MeterValuesReceived(charge_point_id, connector_id, transaction_id, user, sample)
                )

    # ------------------------------------------------------------------ helpers

    def _remember_live(self, tx: Transaction) -> None:
        self._live[tx.id] = _LiveTransaction(tx.id, tx.charge_point_id, tx.connector_id, tx.user_id)
        self._live_on_connector[(tx.charge_point_id, tx.connector_id)] = tx.id

    def _forget_live(self, transaction_id: int) -> bool:
        """Drop an open transaction from the picture; False if it was not there."""
        live = self._live.pop(transaction_id, None)
        if live is None:
            return False
        key = (live.charge_point_id, live.connector_id)
        if self._live_on_connector.get(key) == transaction_id:
            del self._live_on_connector[key]
        return True
