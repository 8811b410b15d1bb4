"""The gateway's per-key rate limiter: a moving window per limit, driven by a test clock.

The HTTP side (429 with ``Retry-After``, nothing published) is in ``test_gateway.py``;
these tests move the clock instead of sleeping through windows.
"""

from __future__ import annotations

from ingest.gateway.app import _RateLimiter
from ingest.gateway.settings import parse_rate_limit


class Clock:
    """Monotonic seconds that only move when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_moving_window_allows_amount_requests_in_any_window_and_says_when_the_next_fits() -> None:
    clock = Clock()
    limiter = _RateLimiter(parse_rate_limit("3/minute"), clock)
    for offset in (0.0, 10.0, 20.0):
        clock.now = 1000.0 + offset
        assert limiter.retry_after_seconds("key-a") is None
    clock.now = 1030.0
    assert limiter.retry_after_seconds("key-a") == 30  # the first request leaves the window at 1060
    clock.now = 1059.5
    assert limiter.retry_after_seconds("key-a") == 1  # never less than a second
    clock.now = 1060.0
    assert limiter.retry_after_seconds("key-a") is None
    # Not a fixed window: the requests at 1010 and 1020 still count at 1065.
    clock.now = 1065.0
    assert limiter.retry_after_seconds("key-a") == 5


def test_keys_are_counted_apart() -> None:
    clock = Clock()
    limiter = _RateLimiter(parse_rate_limit("1/second"), clock)
    assert limiter.retry_after_seconds("key-a") is None
    assert limiter.retry_after_seconds("key-a") == 1
    assert limiter.retry_after_seconds("key-b") is None


def test_every_limit_applies_and_a_refused_request_counts_against_none() -> None:
    clock = Clock()
    limiter = _RateLimiter(parse_rate_limit("2/second;3/minute"), clock)
    assert limiter.retry_after_seconds("key-a") is None
    assert limiter.retry_after_seconds("key-a") is None
    assert limiter.retry_after_seconds("key-a") == 1  # over 2/second
    clock.now += 1.0
    assert limiter.retry_after_seconds("key-a") is None  # the refused one did not count
    clock.now += 1.0
    assert limiter.retry_after_seconds("key-a") == 58  # 2/second allows it, 3/minute does not
    clock.now += 58.0
    assert limiter.retry_after_seconds("key-a") is None
