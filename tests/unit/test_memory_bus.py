"""bus/memory.py: every subscriber in order, in the publisher's task; one failing does not stop
the others; unsubscribe takes effect at once."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from charging_api.bus.memory import MemoryBus
from charging_api.domain.events import ChargePointConnectionChanged, DomainEvent

EVENT = ChargePointConnectionChanged("CP-1", True, datetime(2024, 1, 15, tzinfo=UTC))


async def test_handlers_run_in_order_sync_and_async() -> None:
    """Plain functions are called, coroutine functions awaited, in subscription order."""
    bus, seen = MemoryBus(), list[str]()

    async def later(event: DomainEvent) -> None:
        seen.append("async")

    bus.subscribe(lambda event: seen.append("first"))
    bus.subscribe(later)
    bus.subscribe(lambda event: seen.append("last"))
    await bus.publish(EVENT)
    assert seen == ["first", "async", "last"]
    assert bus.published == 1


async def test_a_failing_handler_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A subscriber that raises does not keep the event from the next one."""
    bus, seen = MemoryBus(), list[DomainEvent]()

    def broken(event: DomainEvent) -> None:
        raise RuntimeError("boom")

    bus.subscribe(broken)
    bus.subscribe(seen.append)
    await bus.publish(EVENT)
    assert seen == [EVENT]
    assert "event handler failed for ChargePointConnectionChanged" in caplog.text


async def test_unsubscribe_removes_one_subscription() -> None:
    """The same handler subscribed twice runs twice; unsubscribing once leaves one; close ends
    all."""
    bus, seen = MemoryBus(), list[DomainEvent]()
    first = bus.subscribe(seen.append)
    bus.subscribe(seen.append)
    first()
    await bus.publish(EVENT)
    assert seen == [EVENT]
    await bus.close()
    await bus.publish(EVENT)
    assert seen == [EVENT]
