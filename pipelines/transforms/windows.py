"""The accounting windows: fixed periods of receive time whose panes are appended as deltas."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.transforms import trigger, window
from apache_beam.utils.timestamp import Duration

PANE_TIMING = {
    beam.utils.windowed_value.PaneInfoTiming.EARLY: "EARLY",
    beam.utils.windowed_value.PaneInfoTiming.ON_TIME: "ON_TIME",
    beam.utils.windowed_value.PaneInfoTiming.LATE: "LATE",
    beam.utils.windowed_value.PaneInfoTiming.UNKNOWN: "UNKNOWN",
}


def append_window(
    window_seconds: int,
    firing_seconds: int,
    allowed_lateness: Duration,
    late_firing_seconds: int | None = None,
) -> beam.WindowInto:
    """Fixed windows whose panes are deltas, for tables that are appended to.

    Early panes fill the table while the window is open; late data is batched into delta
    panes every ``late_firing_seconds`` (default: ``firing_seconds``) rather than one tiny
    pane per element; 0 fires a pane per late element.
    """
    late_seconds = firing_seconds if late_firing_seconds is None else late_firing_seconds
    late = trigger.AfterProcessingTime(late_seconds) if late_seconds > 0 else trigger.AfterCount(1)
    return beam.WindowInto(
        window.FixedWindows(window_seconds),
        trigger=trigger.AfterWatermark(early=trigger.AfterProcessingTime(firing_seconds), late=late),
        accumulation_mode=trigger.AccumulationMode.DISCARDING,
        allowed_lateness=allowed_lateness,
    )
