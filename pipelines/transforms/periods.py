"""Accounting periods: [start, end) of receive time, aligned to the pipeline's fixed windows."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "Period",
    "in_period",
]


@dataclass(frozen=True)
class Period:
    """One accounting period, [start, end) in UTC, aligned to the pipeline's fixed windows."""

    start: dt.datetime
    end: dt.datetime

    @classmethod
    def starting(cls, text: str, period_seconds: int) -> Period:
        """Parse an RFC 3339 start; ``ValueError`` unless it starts a period of ``period_seconds``."""
        try:
            start = dt.datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(
                f"--period must be an RFC 3339 time like 2026-11-28T07:00:00Z, got {text!r}"
            ) from None
        if start.tzinfo is None:
            raise ValueError(f"--period needs a UTC offset: {text!r}")
        start = start.astimezone(dt.UTC)
        if int(start.timestamp()) % period_seconds or start.microsecond:
            raise ValueError(
                f"{text} does not start a period of {period_seconds} s (periods start at the epoch)"
            )
        return cls(start, start + dt.timedelta(seconds=period_seconds))


def in_period(received: pa.ChunkedArray, period: Period) -> np.ndarray:
    start = pa.scalar(period.start, type=received.type)
    end = pa.scalar(period.end, type=received.type)
    inside: np.ndarray = (
        pc.and_(pc.greater_equal(received, start), pc.less(received, end)).fill_null(False).to_numpy()
    )
    return inside
