"""Webhooks: session events delivered to operators' HTTP endpoints from a durable outbox.

* Endpoints (``webhook`` documents): ``url``, ``secret``, ``events`` (event kinds, or ``*``).
* Every :class:`SessionNotice` that an endpoint wants is written to the outbox (``webhook_outbox``
  documents, committed) when the notice is published, before anything is sent; the delivery loop
  sends it later, so a slow or dead endpoint never slows the doors.
* Each delivery is an HTTP POST of the JSON event with ``X-Webhook-Id``,
  ``X-Webhook-Timestamp`` (epoch seconds) and ``X-Webhook-Signature: sha256=<hex>``, the
  HMAC-SHA256 of ``"<timestamp>.<body>"`` with the endpoint's secret: the receiver recomputes
  it and rejects old timestamps (replays).
* A failure (no connection, a status other than 2xx) is retried with exponential backoff and
  full jitter (``base * 2**attempts``, capped, times a random factor in [0.5, 1]). Order per
  session: an event waits while an earlier event of the same session for the same endpoint is
  undelivered.
* Every attempt is appended to the delivery log (``webhook_delivery`` documents); an admin can
  redeliver a logged event by id.

Pure of I/O except through ports: the HTTP POST is :class:`WebhookPoster` (an adapter), storage
is the :class:`Store`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import random
from dataclasses import dataclass
from typing import Any, Protocol

from charging_api.domain.events import DomainEvent, SessionNotice
from charging_api.domain.models import Principal
from charging_api.domain.ports import Clock, Store
from charging_api.errors import Forbidden, ValidationFailed
from charging_api.timefmt import format_utc

log = logging.getLogger(__name__)

ENDPOINT = "webhook"
OUTBOX = "webhook_outbox"
DELIVERY = "webhook_delivery"


class WebhookPoster(Protocol):
    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        """POST and return the HTTP status; raise OSError/TimeoutError when unreachable."""
        ...


@dataclass(frozen=True, slots=True)
class WebhookPolicy:
    base_delay: float = 1.0
    max_delay: float = 300.0
    poll_interval: float = 0.5


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """``sha256=<hex>`` of HMAC-SHA256(secret, ``"<timestamp>." + body``)."""
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class WebhookService:
    """Endpoints, the outbox and its delivery loop; see the module docstring."""

    def __init__(
        self,
        store: Store,
        poster: WebhookPoster,
        clock: Clock,
        policy: WebhookPolicy | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._poster = poster
        self._clock = clock
        self.policy = policy or WebhookPolicy()
        self._rng = rng or random.Random()
        self._next = 0
        self._wake = asyncio.Event()
        #: The endpoints as stored, read once: they change only through this service, so the
        #: per-event path needs no database read (None: read them at the next use).
        self._endpoints: dict[str, dict[str, Any]] | None = None

    async def load(self) -> None:
        keys = [*(await self._store.documents(OUTBOX)), *(await self._store.documents(DELIVERY))]
        self._next = max((int(k.split(":")[0]) for k in keys), default=0) + 1

    # ------------------------------------------------------------ admin

    async def put_endpoint(self, principal: Principal, data: dict[str, Any]) -> dict[str, Any]:
        _admin(principal)
        endpoint_id, url, secret = data.get("id"), data.get("url"), data.get("secret")
        events = data.get("events", ["*"])
        if not isinstance(endpoint_id, str) or not 1 <= len(endpoint_id) <= 64:
            raise ValidationFailed("id must be 1-64 characters", {"field": "id"})
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValidationFailed("url must be an http(s) URL", {"field": "url"})
        if not isinstance(secret, str) or len(secret) < 16:
            raise ValidationFailed("secret must have at least 16 characters", {"field": "secret"})
        if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
            raise ValidationFailed("events must be a list of event kinds", {"field": "events"})
        body = {"id": endpoint_id, "url": url, "secret": secret, "events": events}
        await self._store.put_document(ENDPOINT, endpoint_id, body)
        self._endpoints = None
        return {k: v for k, v in body.items() if k != "secret"}

    async def delete_endpoint(self, principal: Principal, endpoint_id: str) -> None:
        _admin(principal)
        await self._store.put_document(ENDPOINT, endpoint_id, None)
        self._endpoints = None

    async def endpoints(self, principal: Principal) -> list[dict[str, Any]]:
        _admin(principal)
        return [
            {k: v for k, v in e.items() if k != "secret"}
            for e in (await self._endpoint_documents()).values()
        ]

    async def _endpoint_documents(self) -> dict[str, dict[str, Any]]:
        if self._endpoints is None:
            self._endpoints = await self._store.documents(ENDPOINT)
        return self._endpoints

    async def deliveries(self, principal: Principal, limit: int = 100) -> list[dict[str, Any]]:
        """The delivery log, newest first."""
        _admin(principal)
        log_entries = await self._store.documents(DELIVERY)
        return [log_entries[k] for k in sorted(log_entries, reverse=True)[:limit]]

    async def pending(self, principal: Principal) -> list[dict[str, Any]]:
        _admin(principal)
        return list((await self._store.documents(OUTBOX)).values())

    async def redeliver(self, principal: Principal, event_id: str) -> None:
        """Queue a logged event again (a new outbox entry, same event id and body)."""
        _admin(principal)
        for entry in (await self._store.documents(DELIVERY)).values():
            if entry["eventId"] == event_id:
                await self._enqueue(entry["endpoint"], entry["sessionKey"], event_id,
                                    entry["body"])  # fmt: skip
                return
        raise ValidationFailed(f"No delivered event {event_id}", {"field": "eventId"})

    # ------------------------------------------------------------ events in

    async def on_event(self, event: DomainEvent) -> None:
        """Bus subscriber: write the notice to the outbox of every endpoint that wants it."""
        if not isinstance(event, SessionNotice):
            return
        endpoints = await self._endpoint_documents()
        if not endpoints:
            return
        session_key = (
            f"tx:{event.transaction_id}"
            if event.transaction_id is not None
            else f"cp:{event.charge_point_id}:{event.connector_id}"
        )
        for endpoint in endpoints.values():
            wanted = endpoint.get("events") or ["*"]
            if "*" not in wanted and event.kind not in wanted:
                continue
            event_id = f"evt-{self._next}"
            body = json.dumps(
                {
                    "id": event_id,
                    "type": f"session.{event.kind}",
                    "occurredAt": format_utc(event.timestamp),
                    "chargePointId": event.charge_point_id,
                    "connectorId": event.connector_id,
                    "transactionId": event.transaction_id,
                    "userId": event.user_id,
                    "data": event.data,
                },
                sort_keys=True,
                default=str,
            )
            await self._enqueue(endpoint["id"], session_key, event_id, body)

    async def _enqueue(self, endpoint_id: str, session_key: str, event_id: str, body: str) -> None:
        seq = self._next
        self._next += 1
        entry = {
            "seq": seq,
            "endpoint": endpoint_id,
            "sessionKey": session_key,
            "eventId": event_id,
            "body": body,
            "attempts": 0,
            "nextAt": self._clock.monotonic(),
        }
        await self._store.put_document(OUTBOX, f"{seq:012d}", entry)
        self._wake.set()

    # ------------------------------------------------------------ delivery

    async def deliver_due(self) -> int:
        """Try every outbox entry that is due and first of its (endpoint, session); returns
        how many were delivered."""
        outbox = await self._store.documents(OUTBOX)
        endpoints = await self._endpoint_documents()
        blocked: set[tuple[str, str]] = set()
        delivered = 0
        now = self._clock.monotonic()
        for key in sorted(outbox):
            entry = outbox[key]
            lane = (entry["endpoint"], entry["sessionKey"])
            if lane in blocked:
                continue
            blocked.add(lane)  # later events of this lane wait for this one
            if entry["nextAt"] > now:
                continue
            endpoint = endpoints.get(entry["endpoint"])
            if endpoint is None:  # the endpoint was deleted: drop what was queued for it
                await self._store.put_document(OUTBOX, key, None)
                continue
            if await self._attempt(key, entry, endpoint):
                delivered += 1
                blocked.discard(lane)
        return delivered

    async def _attempt(self, key: str, entry: dict[str, Any], endpoint: dict[str, Any]) -> bool:
        body = entry["body"].encode()
        stamp = int(self._clock.now().timestamp())
        headers = {
            "Content-Type": "application/json",
            "X-Webhook-Id": entry["eventId"],
            "X-Webhook-Timestamp": str(stamp),
            "X-Webhook-Signature": signature(endpoint["secret"], stamp, body),
        }
        status: int | None = None
        error: str | None = None
        try:
            status = await self._poster.post(endpoint["url"], body, headers)
        except (OSError, TimeoutError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        ok = status is not None and 200 <= status < 300
        attempts = entry["attempts"] + 1
        await self._store.put_document(DELIVERY, f"{self._next:012d}:{entry['eventId']}", {
            "eventId": entry["eventId"], "endpoint": entry["endpoint"],
            "sessionKey": entry["sessionKey"], "body": entry["body"], "attempt": attempts,
            "status": status, "error": error, "delivered": ok,
            "at": format_utc(self._clock.now()),
        })  # fmt: skip
        self._next += 1
        if ok:
            await self._store.put_document(OUTBOX, key, None)
            return True
        delay = min(self.policy.base_delay * 2 ** (attempts - 1), self.policy.max_delay)
        delay *= 0.5 + self._rng.random() / 2
        entry = {**entry, "attempts": attempts, "nextAt": self._clock.monotonic() + delay}
        await self._store.put_document(OUTBOX, key, entry)
        return False

    async def run(self) -> None:
        """The delivery loop (the composition root runs it as a task)."""
        while True:
            self._wake.clear()
            try:
                await self.deliver_due()
            except Exception:
                log.exception("webhook delivery failed")
            try:
                await asyncio.wait_for(self._wake.wait(), self.policy.poll_interval)
            except TimeoutError:
                pass


def _admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise Forbidden("Only admins may manage webhooks")
