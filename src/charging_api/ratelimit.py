"""The token bucket both doors meter their peers with; no clock of its own.

A bucket holds up to ``capacity`` tokens and gains ``rate`` tokens a second. The caller passes
``now`` (any clock that only moves forward; a step backwards refills nothing). Two ways to spend:

- :meth:`TokenBucket.try_take` spends a token only when one is there: the app door answers a
  message over the limit with ``RATE_LIMITED`` and drops it;
- :meth:`TokenBucket.take` always spends one and may go into debt, returning how long the caller
  should wait before acting: the OCPP door paces a fast charge point rather than dropping its
  messages (a dropped CALL would make the charger retry).
"""

from __future__ import annotations

__all__ = ["TokenBucket"]


class TokenBucket:
    """``rate`` tokens a second, at most ``capacity``; starts full at ``now``."""

    __slots__ = ("_capacity", "_rate", "_stamp", "_tokens")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        if rate <= 0 or capacity <= 0:
            raise ValueError("a token bucket needs a positive rate and capacity")
        self._rate = rate
        self._capacity = capacity
        self._tokens = capacity
        self._stamp = now

    @property
    def tokens(self) -> float:
        """Tokens left after the last take (negative while in debt)."""
        return self._tokens

    def _refill(self, now: float) -> None:
        elapsed = now - self._stamp
        if elapsed > 0:
            self._tokens = min(self._capacity, self._tokens + elapsed * self._rate)
            self._stamp = now

    def try_take(self, now: float) -> bool:
        """Spend one token if a whole one is there; False (nothing spent) otherwise."""
        self._refill(now)
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def take(self, now: float) -> float:
        """Spend one token, into debt if need be: the seconds until the debt is paid back
        (0.0 when the token was there)."""
        self._refill(now)
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self._rate
