"""The app connection's rules (api/session.py) on a manual clock: what each frame is answered
with, and what the deadlines do (auth timeout, idle timeout, token expiry, its warning and
grace, the session cap). No server, no sleeping: ``now`` is a number the test moves."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from charging_api.api import protocol
from charging_api.api.handlers import CONCURRENT
from charging_api.api.session import AppLimits, AppSession, Close
from charging_api.domain.models import Principal, Role
from charging_api.errors import AuthenticationFailed, Forbidden

T0 = 1_705_314_600.0  # 2024-01-15T10:30:00Z
LIMITS = AppLimits(
    auth_timeout=10.0,
    idle_timeout=5000.0,
    session_timeout=3600.0,
    max_pending_requests=2,
    rate_per_second=1.0,
    rate_burst=3.0,
    expiry_warning=60.0,
    expiry_grace=30.0,
    max_connections_per_user=2,
)


def principal(
    user: str = "alice", *, exp: float | None = T0 + 600, admin: bool = False
) -> Principal:
    expires = datetime.fromtimestamp(exp, UTC) if exp is not None else None
    return Principal(user, Role.ADMIN if admin else Role.USER, frozenset(), expires)


def frame(kind: str, data: dict[str, Any] | None = None, mid: str = "m-1") -> str:
    return orjson.dumps({"id": mid, "type": kind, "data": data or {}}).decode()


def answer(outcome: bytes | protocol.Request) -> dict[str, Any]:
    assert isinstance(outcome, bytes), outcome
    decoded: dict[str, Any] = orjson.loads(outcome)
    return decoded


def logged_in(exp: float | None = T0 + 600, limits: AppLimits = LIMITS) -> AppSession:
    session = AppSession(limits, T0, CONCURRENT)
    session.authenticate(principal(exp=exp), T0)
    return session


# ------------------------------------------------------------------------------ frames


def test_before_auth_only_auth_and_heartbeat_pass() -> None:
    """An anonymous connection gets NOT_AUTHENTICATED; heartbeat is answered by the session."""
    session = AppSession(LIMITS, T0, CONCURRENT)
    assert answer(session.receive(frame("get_state"), T0))["error"]["code"] == "NOT_AUTHENTICATED"
    beat = answer(session.receive(frame("heartbeat", mid="h"), T0))
    assert beat == {
        "id": "h",
        "type": "heartbeat",
        "timestamp": "2024-01-15T10:30:00.000Z",
        "data": {},
    }
    request = session.receive(frame("auth_request", {"token": "t"}), T0)
    assert isinstance(request, protocol.Request) and request.type == "auth_request"


def test_a_binary_frame_is_refused_with_its_id_and_nothing_is_done() -> None:
    """Binary frames get INVALID_MESSAGE (answering their id when readable), even valid JSON."""
    session = logged_in()
    reply = answer(session.receive(frame("get_state", mid="b-1").encode(), T0))
    assert reply["id"] == "b-1"
    assert reply["error"]["code"] == "INVALID_MESSAGE"
    assert reply["error"]["details"] == {"frame": "binary"}
    garbage = answer(session.receive(b"\x00\xff", T0))
    assert garbage["error"]["code"] == "INVALID_MESSAGE" and garbage["id"].startswith("error-")


def test_the_rate_limit_answers_rate_limited_then_refills() -> None:
    """Burst 3 at 1/s: the fourth frame at once is RATE_LIMITED; a second later one passes."""
    session = logged_in()
    kinds = [answer(session.receive(frame("heartbeat"), T0))["type"] for _ in range(4)]
    assert kinds == ["heartbeat", "heartbeat", "heartbeat", "error"]
    limited = answer(session.receive(frame("heartbeat", mid="x"), T0))
    assert (limited["id"], limited["error"]["code"]) == ("x", "RATE_LIMITED")
    assert answer(session.receive(frame("heartbeat"), T0 + 1))["type"] == "heartbeat"


def test_start_and_stop_are_bounded_in_flight_and_finished_gives_the_slot_back() -> None:
    """MAX_PENDING_REQUESTS start/stops in flight; the next is TOO_MANY_PENDING until one ends."""
    session = logged_in()
    start = frame("start_charging_request", {"chargePointId": "CP", "connectorId": 1})
    first = session.receive(start, T0)
    second = session.receive(start, T0 + 1)
    assert isinstance(first, protocol.Request) and isinstance(second, protocol.Request)
    assert answer(session.receive(start, T0 + 2))["error"]["code"] == "TOO_MANY_PENDING"
    assert isinstance(session.receive(frame("get_state"), T0 + 3), protocol.Request)
    session.finished(first)
    assert isinstance(session.receive(start, T0 + 4), protocol.Request)


# ------------------------------------------------------------------------------- auth


def test_a_connection_never_changes_user_and_a_failure_changes_nothing() -> None:
    """Another user's token, or a userId that does not match, is refused; the session stays."""
    session = logged_in()
    before = (session.principal, session.session_id, session.expires_at)
    with pytest.raises(AuthenticationFailed, match="cannot change user"):
        session.authenticate(principal("bob"), T0 + 5)
    with pytest.raises(AuthenticationFailed, match="userId"):
        session.authenticate(principal(), T0 + 5, claimed_user="bob")
    assert (session.principal, session.session_id, session.expires_at) == before


def test_the_connections_per_user_limit_applies_to_the_first_login_only() -> None:
    """MAX_CONNECTIONS_PER_USER refuses a new connection, never a refresh of an open one."""
    fresh = AppSession(LIMITS, T0, CONCURRENT)
    with pytest.raises(Forbidden):
        fresh.authenticate(principal(), T0, open_sessions=2)
    assert fresh.principal is None
    session = logged_in()
    login = session.authenticate(principal(exp=T0 + 900), T0 + 1, open_sessions=2)
    assert login.first is False and session.expires_at == T0 + 900


def test_a_reauth_reports_a_role_change() -> None:
    """Re-auth from admin to user is a role change (the server then recomputes what it sees)."""
    session = AppSession(LIMITS, T0, CONCURRENT)
    first = session.authenticate(principal(admin=True), T0)
    assert (first.first, first.role_changed) == (True, False)
    same = session.authenticate(principal(admin=True), T0 + 1)
    assert same.role_changed is False
    demoted = session.authenticate(principal(), T0 + 2)
    assert (demoted.first, demoted.role_changed) == (False, True)


# -------------------------------------------------------------------------- deadlines


def test_an_anonymous_connection_is_closed_at_the_auth_timeout() -> None:
    """AUTH_TIMEOUT after connecting without auth: close 1008."""
    session = AppSession(LIMITS, T0, CONCURRENT)
    assert session.tick(T0 + 9.9) is None
    assert session.tick(T0 + 10) == Close(1008, "authentication timeout")


def test_an_idle_connection_is_closed_and_a_talking_one_is_not() -> None:
    """CONNECTION_TIMEOUT counts from the last frame received."""
    session = logged_in(exp=T0 + 90_000, limits=AppLimits(idle_timeout=5000.0, session_timeout=9e4))
    session.receive(frame("heartbeat"), T0 + 200)
    assert session.tick(T0 + 5199) is None
    assert session.tick(T0 + 5200) == Close(1000, "idle timeout")


def test_session_expiring_comes_once_before_expiry() -> None:
    """The warning is sent once, TOKEN_EXPIRY_WARNING before expiresAt, about this session."""
    session = logged_in(exp=T0 + 600)
    assert session.tick(T0 + 539) is None
    warning = session.tick(T0 + 540)
    assert isinstance(warning, bytes)
    push = orjson.loads(warning)
    assert push["type"] == "session_expiring" and push["seq"] == 0
    assert push["timestamp"] == "2024-01-15T10:39:00.000Z"
    assert push["data"]["sessionId"] == session.session_id
    assert push["data"]["expiresAt"] == "2024-01-15T10:40:00.000Z"
    assert session.tick(T0 + 541) is None  # once


def test_after_expiry_requests_get_token_expired_then_the_grace_ends_it() -> None:
    """After expiresAt: TOKEN_EXPIRED per request (heartbeat still answered); close 1008
    "token expired" once TOKEN_EXPIRY_GRACE has passed."""
    session = logged_in(exp=T0 + 600)
    late = answer(session.receive(frame("get_state", mid="late-1"), T0 + 600))
    assert (late["id"], late["error"]["code"]) == ("late-1", "TOKEN_EXPIRED")
    assert answer(session.receive(frame("heartbeat"), T0 + 601))["type"] == "heartbeat"
    assert not isinstance(session.tick(T0 + 629), Close)
    assert session.tick(T0 + 630) == Close(1008, "token expired")


def test_a_fresh_token_within_the_grace_revives_an_expired_session() -> None:
    """auth_request after expiry but before the grace ends: requests pass again, warning re-armed."""
    session = logged_in(exp=T0 + 600)
    session.tick(T0 + 600)  # the warning
    assert answer(session.receive(frame("get_state"), T0 + 610))["error"]["code"] == "TOKEN_EXPIRED"
    session.authenticate(principal(exp=T0 + 1800), T0 + 620)
    assert isinstance(session.receive(frame("get_state"), T0 + 621), protocol.Request)
    assert session.tick(T0 + 700) is None
    assert isinstance(session.tick(T0 + 1740), bytes)  # warned again for the new expiry


def test_session_timeout_caps_the_session_whatever_the_token() -> None:
    """SESSION_TIMEOUT from the first login bounds expiresAt; a refresh cannot extend it, and
    the close then says "session expired"."""
    limits = AppLimits(session_timeout=2.0, expiry_warning=0.0, expiry_grace=0.0)
    session = AppSession(limits, T0, CONCURRENT)
    session.authenticate(principal(exp=T0 + 3600), T0)
    assert session.expires_at == T0 + 2
    session.authenticate(principal(exp=T0 + 7200), T0 + 1)
    assert session.expires_at == T0 + 2
    assert session.tick(T0 + 1.9) is None
    assert session.tick(T0 + 2) is not None  # the warning at expiry (warning 0)
    assert session.tick(T0 + 2.1) == Close(1008, "session expired")


def test_resume_without_epoch_trusts_only_seqs_from_this_connection() -> None:
    """``covers``: only seqs numbered after this connection's login are provably this
    process's; the login's own seq and older ones are not."""
    session = AppSession(LIMITS, T0, CONCURRENT)
    session.authenticate(principal(), T0, seq=7)
    assert not session.covers(0) and not session.covers(6) and not session.covers(7)
    assert session.covers(8) and session.covers(9)
    session.authenticate(principal(), T0 + 1, seq=12)  # a refresh does not move the floor
    assert session.covers(8)
