"""Webhook outbox rules on fakes: backoff with jitter, order per session, dead endpoints."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime

from charging_api.domain.events import SessionNotice
from charging_api.domain.models import Principal, Role
from charging_api.domain.webhooks import WebhookPolicy, WebhookService, signature
from tests.fakes import ManualClock, MemoryStore

ADMIN = Principal("ops", Role.ADMIN)
T = datetime(2026, 1, 1, tzinfo=UTC)


class Poster:
    def __init__(self) -> None:
        self.up = True
        self.sent: list[tuple[str, dict[str, str]]] = []

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        if not self.up:
            raise ConnectionRefusedError("down")
        self.sent.append((json.loads(body)["type"], headers))
        return 200


def notice(kind: str, tx: int) -> SessionNotice:
    return SessionNotice("CP1", 1, tx, "alice", kind, T, {})


async def world() -> tuple[WebhookService, Poster, ManualClock]:
    poster, clock = Poster(), ManualClock()
    hooks = WebhookService(
        MemoryStore(), poster, clock, WebhookPolicy(base_delay=1, max_delay=8), random.Random(1)
    )
    await hooks.load()
    await hooks.put_endpoint(ADMIN, {"id": "e", "url": "http://x/", "secret": "s" * 16})
    return hooks, poster, clock


async def test_a_failed_event_holds_back_its_session_but_not_others() -> None:
    """While tx 1's first event fails, its second waits; tx 2's event goes out."""
    hooks, poster, clock = await world()
    poster.up = False
    await hooks.on_event(notice("started", 1))
    assert await hooks.deliver_due() == 0
    poster.up = True
    await hooks.on_event(notice("ended", 1))
    await hooks.on_event(notice("started", 2))
    assert await hooks.deliver_due() == 1  # tx 2 only: tx 1 waits for its retry time
    assert [kind for kind, _ in poster.sent] == ["session.started"]
    clock.advance(1)
    assert await hooks.deliver_due() == 2
    assert [kind for kind, _ in poster.sent][1:] == ["session.started", "session.ended"]


async def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    """Retry delays grow as base * 2**n times a factor in [0.5, 1], never above the cap."""
    hooks, poster, clock = await world()
    poster.up = False
    await hooks.on_event(notice("started", 1))
    delays = []
    for _ in range(6):
        before = clock.monotonic()
        await hooks.deliver_due()
        [entry] = await hooks.pending(ADMIN)
        delays.append(entry["nextAt"] - before)
        clock.advance(entry["nextAt"] - before)
    for n, delay in enumerate(delays):
        cap = min(2**n, 8)
        assert cap / 2 <= delay <= cap


async def test_signature_is_hmac_of_timestamp_and_body() -> None:
    """The signature header is HMAC-SHA256(secret, "<timestamp>.<body>")."""
    hooks, poster, _ = await world()
    await hooks.on_event(notice("started", 1))
    await hooks.deliver_due()
    [(_, headers)] = poster.sent
    [entry] = [d for d in await hooks.deliveries(ADMIN) if d["delivered"]]
    stamp = int(headers["X-Webhook-Timestamp"])
    assert headers["X-Webhook-Signature"] == signature("s" * 16, stamp, entry["body"].encode())
