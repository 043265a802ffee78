"""The in-process event bus: publish calls every subscriber, in order, in the publisher's task.

Subscribers must be quick and must not block (the app door's hub only queues frames). A
subscriber that raises is logged and the others still get the event.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable

from charging_api.domain.events import DomainEvent
from charging_api.domain.ports import EventHandler

log = logging.getLogger(__name__)


class MemoryBus:
    def __init__(self) -> None:
        self._handlers: list[EventHandler] = []
        self.published = 0

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._handlers.clear()

    async def publish(self, event: DomainEvent) -> None:
        self.published += 1
        for handler in tuple(self._handlers):
            try:
                result = handler(event)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("event handler failed for %s", type(event).__name__)

    def subscribe(self, handler: EventHandler) -> Callable[[], None]:
        self._handlers.append(handler)

        def unsubscribe() -> None:
            if handler in self._handlers:
                self._handlers.remove(handler)

        return unsubscribe
