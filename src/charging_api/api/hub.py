"""Routes domain events to the app sessions entitled to them; numbers and remembers pushes.

Every user has a stream: a sequence counter, a bounded history of the frames pushed to them
(for ``resume``), the admin subscriptions they hold, and their live sessions. An event goes to
the stream of the user who owns the session it concerns and to the streams of admins
subscribed to its charge point: nobody else. A stream's sessions all get its frames, so a stream
holds subscriptions only while every attached session is admin (:meth:`UpdateHub.set_role`). The frame's ``data`` is serialised once per event;
only the ``seq`` differs between recipients, spliced in by bytes concatenation
(:func:`protocol.push_parts`).

The history keeps frames only, no ``(seq, frame)`` tuples: seqs are consecutive, so the oldest
kept frame's seq follows from the stream's seq and the history's length. That spares a
GC-tracked allocation per delivery (one per push to each recipient), which is what paces the
collector's runs and their pauses.

No I/O here: a session is anything with ``deliver(frame, droppable)``.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import islice
from typing import Protocol

from charging_api.api import protocol, pushes
from charging_api.api.pushes import Audience
from charging_api.domain.events import DomainEvent
from charging_api.errors import Forbidden
from charging_api.timefmt import utc_now_text


class Recipient(Protocol):
    def deliver(self, frame: bytes, droppable: bool) -> None: ...


class Hub(Protocol):
    """What the app door asks of a hub: :class:`UpdateHub` in one process,
    :class:`~charging_api.cluster.fanout.ClusterHub` on api nodes of a cluster.

    The coroutines are the calls that may need Redis (in :class:`UpdateHub` they just return);
    ``detach`` and the counts stay local and synchronous (a connection's ``finally``, a scrape).
    """

    epoch: str
    deliveries: int
    pushes_by_type: dict[str, int]
    on_delivery_lag: Callable[[float], None] | None

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def attach(self, user_id: str, session: Recipient) -> None: ...
    def detach(self, user_id: str, session: Recipient) -> None: ...
    async def set_role(self, user_id: str, session: Recipient, *, admin: bool) -> None: ...
    def session_count(self) -> int: ...
    def session_count_of(self, user_id: str) -> int: ...
    def user_count(self) -> int: ...
    async def subscribe(
        self, user_id: str, charge_points: Iterable[str] | None
    ) -> list[str] | str: ...
    async def unsubscribe(
        self, user_id: str, charge_points: Iterable[str] | None
    ) -> list[str] | str: ...
    async def missed_since(self, user_id: str, last_seq: int) -> list[bytes] | None: ...
    async def set_session_pushes(self, user_id: str, on: bool) -> None: ...
    async def current_seq(self, user_id: str) -> int: ...


@dataclass(eq=False, slots=True)
class UserStream:
    user_id: str
    seq: int = 0
    history: deque[bytes] | None = None
    sessions: set[Recipient] = field(default_factory=set)
    watch_all: bool = False
    watching: set[str] = field(default_factory=set)
    #: Attached sessions whose principal is not admin (None: none). While there is one, the
    #: stream holds no subscription (they would reach that session too).
    non_admins: set[Recipient] | None = None
    #: The stream has held a subscription: its history may hold other users' pushes.
    privileged: bool = False
    #: The user asked for ``session_event``/``session_update`` pushes (``auth_request``'s
    #: ``sessionEvents``): off by default, so clients written for the seed see the same
    #: push sequence as before.
    session_pushes: bool = False


class UpdateHub:
    """Fan-out of domain events to app sessions, with per-user sequence numbers."""

    def __init__(self, history_size: int = 200, idle_streams: int = 10_000) -> None:
        self._history_size = history_size
        self._idle_limit = idle_streams
        self._streams: dict[str, UserStream] = {}
        self._idle: OrderedDict[str, None] = OrderedDict()
        self._watch_all: set[UserStream] = set()
        self._watch_all_now: tuple[UserStream, ...] = ()  # iterated per event: a snapshot
        self._watch_cp: dict[str, set[UserStream]] = {}
        self.deliveries = 0
        #: Frames delivered per push type (``meter_values_update``, ...): read at scrape time.
        self.pushes_by_type: dict[str, int] = {}
        #: Called once per event that reaches someone, with the seconds from the event's
        #: timestamp to its delivery (None: not measured). One call per event, not per frame.
        self.on_delivery_lag: Callable[[float], None] | None = None
        self._now_millis = -1
        self._now_cached = ""
        #: Names this hub's push numbering (``auth_response.epoch``): a new one per process,
        #: so a ``resume`` numbered by another process gets RESYNC_REQUIRED.
        self.epoch = secrets.token_hex(4)

    async def start(self) -> None:
        """Nothing to start: the hub lives in this process (see ClusterHub for the other)."""

    async def close(self) -> None:
        return None

    # ------------------------------------------------------------- sessions

    async def attach(self, user_id: str, session: Recipient) -> None:
        stream = self._streams.get(user_id)
        if stream is None:
            stream = self._streams[user_id] = UserStream(user_id)
        self._idle.pop(user_id, None)
        stream.sessions.add(session)

    def detach(self, user_id: str, session: Recipient) -> None:
        """The stream outlives its last session (so a reconnect can resume), up to a bound."""
        stream = self._streams.get(user_id)
        if stream is None:
            return
        stream.sessions.discard(session)
        if stream.non_admins is not None:
            stream.non_admins.discard(session)
            if not stream.non_admins:
                stream.non_admins = None
        if not stream.sessions:
            self._idle[user_id] = None
            while len(self._idle) > self._idle_limit:
                old, _ = self._idle.popitem(last=False)
                self._drop(old)

    def _drop(self, user_id: str) -> None:
        stream = self._streams.pop(user_id, None)
        if stream is not None:
            self._set_watch(stream, all_=False, cps=())

    async def set_role(self, user_id: str, session: Recipient, *, admin: bool) -> None:
        """The attached ``session`` now holds an admin or a user principal (at login and at
        every re-auth). A user-role session ends what only admins may see: the stream's
        subscriptions, and a history that holds pushes about other users (a ``resume`` from
        before it gets RESYNC_REQUIRED)."""
        stream = self._streams.get(user_id)
        if stream is None or session not in stream.sessions:
            return
        if admin:
            if stream.non_admins is not None:
                stream.non_admins.discard(session)
                if not stream.non_admins:
                    stream.non_admins = None
            return
        if stream.non_admins is None:
            stream.non_admins = set()
        stream.non_admins.add(session)
        if stream.privileged:
            self._set_watch(stream, all_=False, cps=())
            stream.history = None
            stream.privileged = False

    def session_count(self) -> int:
        return sum(len(s.sessions) for s in self._streams.values())

    def session_count_of(self, user_id: str) -> int:
        stream = self._streams.get(user_id)
        return len(stream.sessions) if stream is not None else 0

    def user_count(self) -> int:
        return sum(1 for s in self._streams.values() if s.sessions)

    # -------------------------------------------------------- subscriptions

    async def subscribe(self, user_id: str, charge_points: Iterable[str] | None) -> list[str] | str:
        """Admin watching: ``None`` means every charge point. Refused (Forbidden) while one
        of the user's connections holds a user-role token: the stream's pushes reach them all."""
        stream = self._streams[user_id]
        if stream.non_admins:
            raise Forbidden(
                "Another connection of this user is not admin; subscriptions need every "
                "connection of the user to hold an admin token"
            )
        stream.privileged = True
        if charge_points is None:
            self._set_watch(stream, all_=True, cps=stream.watching)
        else:
            self._set_watch(stream, all_=stream.watch_all, cps=stream.watching | set(charge_points))
        return "*" if stream.watch_all else sorted(stream.watching)

    async def unsubscribe(
        self, user_id: str, charge_points: Iterable[str] | None
    ) -> list[str] | str:
        stream = self._streams[user_id]
        if charge_points is None:
            self._set_watch(stream, all_=False, cps=())
        else:
            self._set_watch(stream, all_=stream.watch_all, cps=stream.watching - set(charge_points))
        return "*" if stream.watch_all else sorted(stream.watching)

    def _set_watch(self, stream: UserStream, *, all_: bool, cps: Iterable[str]) -> None:
        for cp in stream.watching:
            watchers = self._watch_cp.get(cp)
            if watchers is not None:
                watchers.discard(stream)
                if not watchers:
                    del self._watch_cp[cp]
        stream.watching = set(cps)
        for cp in stream.watching:
            self._watch_cp.setdefault(cp, set()).add(stream)
        stream.watch_all = all_
        if all_:
            self._watch_all.add(stream)
        else:
            self._watch_all.discard(stream)
        self._watch_all_now = tuple(self._watch_all)

    # ---------------------------------------------------------------- events

    def on_event(self, event: DomainEvent) -> None:
        """Bus handler: one event in, one frame per entitled stream out (the owner first).
        Who is entitled and what the frame says: :mod:`charging_api.api.pushes`."""
        reach = pushes.audience(event)
        if reach is Audience.NOBODY:
            return
        user_id = pushes.owner_of(event)
        owner = self._streams.get(user_id) if user_id is not None else None
        watchers: set[UserStream] | None = None
        everything: tuple[UserStream, ...] = ()
        if reach is Audience.OWNER_IF_SESSION_PUSHES:
            if owner is None or not owner.session_pushes:
                return
        elif reach is Audience.OWNER_AND_WATCHERS:
            watchers = self._watch_cp.get(event.charge_point_id)
            everything = self._watch_all_now
        if owner is None and not watchers and not everything:
            return
        rendered = pushes.render(event)
        if rendered is None:  # pragma: no cover - the union is closed
            return
        kind, droppable = rendered.kind, rendered.droppable
        parts = protocol.push_parts(kind, rendered.data_json, self._now_text())
        before = self.deliveries
        if owner is not None:
            self._push(owner, parts, droppable)
        for stream in everything:
            if stream is not owner:
                self._push(stream, parts, droppable)
        if watchers:
            for stream in tuple(watchers):
                if stream is not owner and not stream.watch_all:
                    self._push(stream, parts, droppable)
        delivered = self.deliveries - before
        if delivered:
            self.pushes_by_type[kind] = self.pushes_by_type.get(kind, 0) + delivered
            if self.on_delivery_lag is not None:
                stamped = pushes.stamped_at(event)
                if stamped is not None:
                    self.on_delivery_lag(max(0.0, time.time() - stamped))

    def _push(self, stream: UserStream, parts: tuple[bytes, bytes, bytes], droppable: bool) -> None:
        stream.seq += 1
        number = b"%d" % stream.seq
        frame = parts[0] + number + parts[1] + number + parts[2]
        if self._history_size:
            if stream.history is None:
                stream.history = deque(maxlen=self._history_size)
            stream.history.append(frame)
        for session in stream.sessions:
            session.deliver(frame, droppable)
            self.deliveries += 1

    def _now_text(self) -> str:
        """``utc_now_text()``, formatted once per millisecond: events come in bursts."""
        millis = time.time_ns() // 1_000_000
        if millis != self._now_millis:
            self._now_millis = millis
            self._now_cached = utc_now_text()
        return self._now_cached

    async def missed_since(self, user_id: str, last_seq: int) -> list[bytes] | None:
        """Frames after ``last_seq`` in order, or None when the gap is older than the history
        (or the server restarted): the client must then fetch the state (``get_state``)."""
        stream = self._streams.get(user_id)
        if stream is None:
            return None if last_seq > 0 else []
        if last_seq > stream.seq:
            return None
        if last_seq == stream.seq:
            return []
        history = stream.history
        if not history:
            return None
        first_kept = stream.seq - len(history) + 1  # seqs are consecutive
        if first_kept > last_seq + 1:
            return None
        return list(islice(history, last_seq + 1 - first_kept, None))

    async def set_session_pushes(self, user_id: str, on: bool) -> None:
        """Turn the user's ``session_event``/``session_update`` pushes on or off."""
        stream = self._streams.get(user_id)
        if stream is not None:
            stream.session_pushes = on

    async def current_seq(self, user_id: str) -> int:
        stream = self._streams.get(user_id)
        return stream.seq if stream is not None else 0
