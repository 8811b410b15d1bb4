"""The simulated clock: listening time runs ``speed`` times faster than the wall clock.

Simulated time is seconds since the Unix epoch, as a float. Listeners wait on it
(``sleep_until``) instead of sleeping for real, so a day of listening takes
``86400 / speed`` seconds. Network transfers are not compressed: a fetch that takes
80 ms of wall time is an 80 ms fetch in the simulation too, so measured latencies mean
what they say.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time

__all__ = ["SimClock"]


class SimClock:
    """Simulated epoch seconds: ``start`` at ``begin()``, then ``speed`` times the wall clock."""

    def __init__(self, start: dt.datetime, speed: float) -> None:
        if start.tzinfo is None:
            raise ValueError("start must carry a time zone")
        if not speed > 0:
            raise ValueError(f"speed must be positive, got {speed}")
        self.start = start.timestamp()
        self.speed = speed
        self._wall_start: float | None = None

    def begin(self) -> None:
        """Start the clock at ``start``; before this, ``now()`` is ``start``."""
        self._wall_start = time.monotonic()

    def now(self) -> float:
        """The simulated time, in epoch seconds."""
        if self._wall_start is None:
            return self.start
        return self.start + (time.monotonic() - self._wall_start) * self.speed

    def wall_seconds(self, simulated_seconds: float) -> float:
        """Wall-clock seconds that ``simulated_seconds`` take at this speed."""
        return simulated_seconds / self.speed

    async def sleep_until(self, simulated: float) -> None:
        """Wait until the simulated clock reaches ``simulated``; return at once if it has."""
        ahead = simulated - self.now()
        if ahead > 0:
            await asyncio.sleep(ahead / self.speed)
