"""The in-process event bus: publish calls every subscriber, in order, in the publisher's task.

Subscribers must be quick and must not block (the app door's hub only queues frames). A
subscriber that raises is logged and the others still get the event.

``publish`` runs once per meter sample, so it walks a tuple that (un)subscribe replace rather
than copying a list per event, and asks ``inspect.isawaitable`` (an ABC check) only
about a handler's result that is not None: the hub's handler is a plain function.
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
        self._handlers: tuple[EventHandler, ...] = ()  # replaced, never mutated: safe to walk
        self.published = 0

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._handlers = ()

    async def publish(self, event: DomainEvent) -> None:
        self.published += 1
        for handler in self._handlers:
            try:
                result = handler(event)
                if result is not None and inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("event handler failed for %s", type(event).__name__)

    def subscribe(self, handler: EventHandler) -> Callable[[], None]:
        self._handlers = (*self._handlers, handler)

        def unsubscribe() -> None:
            if handler in self._handlers:
                index = self._handlers.index(handler)
                self._handlers = self._handlers[:index] + self._handlers[index + 1 :]

        return unsubscribe
