"""The token bucket both doors share: refill, capacity, dropping and pacing, on a manual clock."""

from __future__ import annotations

import pytest

from charging_api.ratelimit import TokenBucket


def test_try_take_spends_the_burst_then_refuses_until_a_token_refills() -> None:
    """The app door's way: ``capacity`` messages at once, then one per 1/rate seconds."""
    bucket = TokenBucket(rate=2.0, capacity=3.0, now=100.0)
    assert [bucket.try_take(100.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.try_take(100.4) is False  # 0.8 of a token
    assert bucket.try_take(100.5) is True  # a whole one
    assert bucket.try_take(100.5) is False


def test_refill_never_exceeds_the_capacity() -> None:
    """A long quiet spell gives back a full bucket, no more."""
    bucket = TokenBucket(rate=10.0, capacity=2.0, now=0.0)
    assert bucket.try_take(0.0) and bucket.try_take(0.0)
    assert [bucket.try_take(3600.0) for _ in range(3)] == [True, True, False]


def test_take_goes_into_debt_and_says_how_long_to_wait() -> None:
    """The OCPP door's way: every message is taken; over the limit, the wait that repays it."""
    bucket = TokenBucket(rate=4.0, capacity=4.0, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [0.0, 0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.25)
    assert bucket.take(0.0) == pytest.approx(0.5)
    assert bucket.take(0.5) == pytest.approx(0.25)  # 2 tokens back, 1 spent: debt of 1


def test_a_clock_step_backwards_refills_nothing() -> None:
    """``now`` going back (a wall-clock step) neither refills nor breaks the bucket."""
    bucket = TokenBucket(rate=1.0, capacity=1.0, now=50.0)
    assert bucket.try_take(50.0) is True
    assert bucket.try_take(10.0) is False
    assert bucket.try_take(50.9) is False
    assert bucket.try_take(51.0) is True


@pytest.mark.parametrize(("rate", "capacity"), [(0.0, 1.0), (1.0, 0.0), (-1.0, 5.0)])
def test_a_bucket_needs_a_positive_rate_and_capacity(rate: float, capacity: float) -> None:
    """A zero or negative setting is refused at construction, not divided by later."""
    with pytest.raises(ValueError, match="positive"):
        TokenBucket(rate, capacity, 0.0)
