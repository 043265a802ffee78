"""One app connection's rules, without I/O: fed frames and ``now``, it says what to send.

:class:`AppSession` holds what the server knows about one ``/ws`` connection (who it is, until
when, how fast it may talk, how many start/stop requests it has in flight) and decides:

- :meth:`AppSession.receive`: a client frame in, either the bytes to answer at once (rate
  limited, binary, malformed, heartbeat, not authenticated, token expired, too many in flight)
  or the :class:`~charging_api.api.protocol.Request` to dispatch;
- :meth:`AppSession.authenticate`: a verified principal in, the new expiry; a failure leaves the
  session exactly as it was;
- :meth:`AppSession.tick`: the deadlines (authentication, idle, token/session expiry and its
  warning) at ``now``, as a :class:`Close` or a frame to send.

``now`` is wall-clock epoch seconds for every rule, because a token's ``exp`` is wall-clock
time. The trade-off: a step of the system clock moves the idle and authentication deadlines
with it (the token bucket ignores steps backwards). Nothing here reads a clock, sleeps or
touches a socket, so every rule is tested with plain numbers (``tests/unit/test_app_session.py``).
"""

from __future__ import annotations

import secrets
from collections.abc import Container
from dataclasses import dataclass

import orjson

from charging_api.api import protocol
from charging_api.domain.models import Principal
from charging_api.errors import (
    AuthenticationFailed,
    ChargingApiError,
    Forbidden,
    InvalidMessage,
    NotAuthenticated,
    RateLimited,
    TokenExpired,
    TooManyPending,
)
from charging_api.ratelimit import TokenBucket

__all__ = ["AppLimits", "AppSession", "Close", "Login"]

CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008
#: Expiry used for a token without ``exp`` (the verifier requires one; this is a backstop).
NO_EXP_LIFETIME = 86400.0


@dataclass(frozen=True, slots=True)
class AppLimits:
    """The app door's knobs, filled from Settings by the composition root."""

    max_connections: int = 1000
    max_connections_per_user: int = 10
    max_frame_size: int = 65536
    auth_timeout: float = 10.0
    idle_timeout: float = 300.0
    session_timeout: float = 3600.0
    heartbeat_interval: float = 30.0
    send_queue_size: int = 256
    max_pending_requests: int = 16
    rate_per_second: float = 20.0
    rate_burst: float = 50.0
    expiry_warning: float = 60.0
    expiry_grace: float = 30.0
    allowed_origins: tuple[str, ...] = ()
    open_timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class Close:
    """Close the connection with this code and reason."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Login:
    """What an accepted ``auth_request`` changed: ``first`` (the connection was anonymous
    until now) and ``role_changed`` (a re-auth with another role)."""

    first: bool
    role_changed: bool


class AppSession:
    """The per-connection state and rules; see the module docstring.

    ``concurrent`` names the request types that run beside others (start/stop): at most
    ``max_pending_requests`` of them may be in flight; :meth:`finished` gives a slot back.
    """

    __slots__ = (
        "_bucket",
        "_concurrent",
        "_errors",
        "_limits",
        "authenticated_at",
        "connected_at",
        "ends_with_token",
        "expires_at",
        "first_seq",
        "last_seen",
        "pending",
        "principal",
        "session_id",
        "warned",
    )

    def __init__(
        self,
        limits: AppLimits,
        now: float,
        concurrent: Container[str] = (),
        errors: dict[str, int] | None = None,
    ) -> None:
        """``errors``: where to count the error codes this session answers with (shared by
        every session of a server; None: not counted)."""
        self._limits = limits
        self._errors = errors
        self._concurrent = concurrent
        self._bucket = TokenBucket(limits.rate_per_second, limits.rate_burst, now)
        self.principal: Principal | None = None
        self.session_id: str | None = None
        self.expires_at: float | None = None  # epoch seconds
        self.authenticated_at = 0.0
        self.ends_with_token = True
        self.warned = False
        self.connected_at = now
        self.last_seen = now
        self.pending = 0
        #: The user's push seq when this connection first authenticated: without an epoch,
        #: ``resume`` trusts only seqs numbered from here on (see :meth:`covers`).
        self.first_seq = 0

    # ---------------------------------------------------------------- frames

    def receive(self, frame: str | bytes, now: float) -> bytes | protocol.Request:
        """A client frame: the answer to send at once, or the request to dispatch."""
        self.last_seen = now
        if not self._bucket.try_take(now):
            return self._refuse(_peek_id(frame), RateLimited("Too many messages; slow down"), now)
        if not isinstance(frame, str):
            return self._refuse(
                _peek_id(frame),
                InvalidMessage(
                    "Binary frames are not accepted; send each message as a text frame",
                    {"frame": "binary"},
                ),
                now,
            )
        try:
            request = protocol.decode(frame)
        except protocol.BadRequest as bad:
            return self._refuse(bad.request_id, bad.error, now)
        kind = request.type
        if kind == "heartbeat":
            return protocol.encode_reply(request.id, "heartbeat", {}, now)
        if kind == "auth_request":
            return request
        if self.principal is None:
            return self._refuse(request.id, NotAuthenticated(), now)
        if self.expires_at is not None and now >= self.expires_at:
            return self._refuse(
                request.id,
                TokenExpired("Token has expired; send auth_request with a new one"),
                now,
            )
        if kind in self._concurrent:
            if self.pending >= self._limits.max_pending_requests:
                return self._refuse(request.id, TooManyPending("Too many requests in flight"), now)
            self.pending += 1
        return request

    def _refuse(
        self, request_id: protocol.MessageId | None, error: ChargingApiError, now: float
    ) -> bytes:
        """The ``error`` frame answering a request refused here, counted by its code."""
        if self._errors is not None:
            self._errors[error.code] = self._errors.get(error.code, 0) + 1
        return protocol.encode_error(request_id, error, now)

    def finished(self, request: protocol.Request) -> None:
        """A request returned by :meth:`receive` has been answered."""
        if request.type in self._concurrent:
            self.pending -= 1

    # ------------------------------------------------------------------ auth

    def authenticate(
        self,
        principal: Principal,
        now: float,
        *,
        claimed_user: str | None = None,
        open_sessions: int = 0,
        seq: int = 0,
    ) -> Login:
        """Accept a verified principal, or raise saying why not (the session is unchanged).

        ``open_sessions`` is how many authenticated connections the user already has; ``seq``
        the user's push seq now. A connection never changes user; its role may change (the
        caller recomputes what the connection may see when ``role_changed``). The expiry is
        the token's ``exp``, capped by ``session_timeout`` from the first authentication: a
        refresh can extend a session up to that cap, never beyond it.
        """
        if claimed_user is not None and claimed_user != principal.user_id:
            raise AuthenticationFailed("userId does not match the token")
        previous = self.principal
        if previous is not None and previous.user_id != principal.user_id:
            raise AuthenticationFailed("A connection cannot change user; open a new one")
        limits = self._limits
        if previous is None and open_sessions >= limits.max_connections_per_user:
            raise Forbidden(
                "Too many connections for this user", {"limit": limits.max_connections_per_user}
            )
        token_end = (
            principal.expires_at.timestamp()
            if principal.expires_at is not None
            else now + NO_EXP_LIFETIME
        )
        if previous is None:
            self.authenticated_at = now
            self.session_id = "ws_session_" + secrets.token_hex(8)
            self.first_seq = seq
        session_end = self.authenticated_at + limits.session_timeout
        self.expires_at = min(token_end, session_end)
        self.ends_with_token = token_end <= session_end
        self.warned = False
        self.principal = principal
        return Login(
            first=previous is None,
            role_changed=previous is not None and previous.role is not principal.role,
        )

    def covers(self, last_seq: int) -> bool:
        """Whether a ``resume`` without ``epoch`` may trust ``last_seq``: only a seq numbered
        after this connection logged in (so pushed to this very connection) is provably from
        this server process. Any other number, the login's own ``seq`` included, may come from
        before a restart, where the same numbers meant other pushes."""
        return last_seq > self.first_seq

    # ------------------------------------------------------------- deadlines

    def tick(self, now: float) -> Close | bytes | None:
        """The deadlines at ``now``: close, send a ``session_expiring`` warning, or nothing."""
        limits = self._limits
        if self.principal is None:
            if now - self.connected_at >= limits.auth_timeout:
                return Close(CLOSE_POLICY, "authentication timeout")
            return None
        if now - self.last_seen >= limits.idle_timeout:
            return Close(CLOSE_NORMAL, "idle timeout")
        expires = self.expires_at
        if expires is None:
            return None
        if now >= expires + limits.expiry_grace:
            return Close(
                CLOSE_POLICY, "token expired" if self.ends_with_token else "session expired"
            )
        if not self.warned and now >= expires - limits.expiry_warning:
            self.warned = True
            assert self.session_id is not None
            return protocol.session_expiring(self.session_id, expires, now)
        return None


def _peek_id(frame: str | bytes) -> protocol.MessageId | None:
    """The id of a frame we will not act on (rate limited, binary): JSON only, no validation."""
    try:
        message = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return None
    return protocol.request_id_of(message) if isinstance(message, dict) else None
