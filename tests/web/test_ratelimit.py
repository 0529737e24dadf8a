"""The per-client publish rate limit: a token bucket per client."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from service.ratelimit import RateLimiter, retry_after
from service.settings import Settings


def test_a_client_gets_its_burst_at_once_then_its_rate() -> None:
    limiter = RateLimiter(rate=10, burst=5)
    assert [limiter.take("a", 1, now=0.0) for _ in range(5)] == [0.0] * 5
    assert limiter.take("a", 1, now=0.0) == pytest.approx(0.1)
    assert limiter.take("a", 1, now=0.1) == 0.0
    assert limiter.take("b", 5, now=0.1) == 0.0


def test_a_refused_batch_says_how_long_until_it_would_pass() -> None:
    limiter = RateLimiter(rate=2, burst=4)
    assert limiter.take("a", 4, now=0.0) == 0.0
    wait = limiter.take("a", 3, now=0.5)
    assert wait == pytest.approx(1.0)
    assert retry_after(wait) == 1
    assert limiter.take("a", 3, now=0.5 + wait) == 0.0


@given(
    rate=st.floats(0.5, 100),
    burst=st.integers(1, 50),
    steps=st.lists(st.tuples(st.floats(0, 2), st.integers(1, 10)), max_size=60),
)
def test_no_client_ever_publishes_more_than_burst_plus_rate_times_time(
    rate: float, burst: int, steps: list[tuple[float, int]]
) -> None:
    limiter = RateLimiter(rate, burst)
    now = allowed = 0.0
    for gap, events in steps:
        now += gap
        if limiter.take("c", events, now) == 0.0:
            allowed += events
    assert allowed <= burst + rate * now + 1e-6


def test_a_burst_smaller_than_a_full_batch_is_refused_as_a_setting() -> None:
    with pytest.raises(ValidationError, match="publish_burst"):
        Settings(publish_rate=10, publish_burst=10, max_batch=100)
