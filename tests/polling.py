"""Waiting on a condition with a deadline, for tests: poll, never sleep blindly."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import pytest
from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed

DEADLINE_SECONDS = 90.0

T = TypeVar("T")


def poll(
    probe: Callable[[], T],
    done: Callable[[T], bool],
    what: str,
    seconds: float = DEADLINE_SECONDS,
    interval: float = 0.5,
) -> T:
    """Call ``probe`` every ``interval`` seconds until ``done`` holds for its value; fail after ``seconds``.

    The one way tests wait: on a condition, with a deadline, never a blind sleep.
    """
    retrying = Retrying(
        stop=stop_after_delay(seconds),
        wait=wait_fixed(interval),
        retry=retry_if_result(lambda value: not done(value)),
        retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
    )
    value: T = retrying(probe)
    if not done(value):
        pytest.fail(f"{what}: not reached within {seconds:g} s; last value: {value!r}")
    return value
