"""Play counts → ledger rows: each stream's money divided among its track's rights holders."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.utils.timestamp import Duration

from ledger.allocation import UNMATCHED, attribute_play
from ledger.catalog import Catalog
from ledger.counters import Counter
from ledger.tables import LEDGER_SCHEMA
from pipelines.transforms.counting import CountPlays, PlayCounts
from pipelines.transforms.metrics import beam_counter
from pipelines.transforms.windows import PANE_TIMING, append_window


class _AttributeCountsFn(beam.DoFn):
    def __init__(self, period: tuple[dt.datetime, dt.datetime] | None) -> None:
        self.period = period

    def setup(self) -> None:
        self.plays = beam_counter(Counter.PLAYS)
        self.streams = beam_counter(Counter.STREAMS)
        self.unmatched = beam_counter(Counter.PLAYS_UNMATCHED)
        self.parts = beam_counter(Counter.ATTRIBUTED_PARTS)

    def process(
        self,
        counts: PlayCounts,
        catalog: Catalog,
        window: Any = beam.DoFn.WindowParam,
        pane: Any = beam.DoFn.PaneInfoParam,
    ) -> Iterator[pa.Table]:
        if self.period is not None:
            period_start, period_end = self.period
            timing = "FINAL"
        else:
            period_start = window.start.to_utc_datetime(has_tz=True)
            period_end = window.end.to_utc_datetime(has_tz=True)
            timing = PANE_TIMING.get(pane.timing, "UNKNOWN")
        written_at = dt.datetime.now(dt.UTC)
        columns: dict[str, list[Any]] = {name: [] for name in LEDGER_SCHEMA.names}
        for (track_id, territory, product), (plays, streams) in counts.items():
            if plays == 0:
                continue
            self.plays.inc(plays)
            self.streams.inc(streams)
            # Each stream of the group earns the same parts; a play that is no stream earns none.
            per_stream = attribute_play(catalog, track_id, territory, product, True)
            if per_stream and per_stream[0].rights_holder_id == UNMATCHED:
                self.unmatched.inc(plays)
            self.parts.inc(plays * len(per_stream))
            for part in per_stream:
                columns["rights_holder_id"].append(part.rights_holder_id)
                columns["track_id"].append(track_id)
                columns["territory"].append(territory)
                columns["product"].append(product)
                columns["plays"].append(plays)
                columns["streams"].append(streams)
                columns["amount_micros"].append(part.amount_micros * streams)
                columns["currency"].append(part.currency)
        count = len(columns["track_id"])
        if not count:
            return
        columns["period_start"] = [period_start] * count
        columns["period_end"] = [period_end] * count
        columns["pane_timing"] = [timing] * count
        columns["written_at"] = [written_at] * count
        yield pa.table(columns, schema=LEDGER_SCHEMA)


class AttributeCounts(beam.PTransform):
    """A pane's play counts (``PlayCounts``) → that pane's ledger rows, as one Arrow table.

    One row per rights holder of each group's track. Streams earn the catalog rate for
    (territory, product), else the ``*`` rate, split by the contract's largest-remainder
    rule; every holder of the track counts the plays. An unknown track goes whole to
    ``UNMATCHED``. The period is the window's (streaming: each pane is a delta) unless
    ``period`` is given (batch: final rows). Rows travel as one table (``LEDGER_SCHEMA``)
    per pane: a pane can touch every track of the catalog, and one element per row costs
    more than the rows.
    """

    def __init__(
        self, catalog: beam.pvalue.AsSideInput, period: tuple[dt.datetime, dt.datetime] | None = None
    ) -> None:
        super().__init__()
        if period is not None and not period[0] < period[1]:
            raise ValueError("period must start before it ends")
        self.catalog = catalog
        self.period = period

    def expand(self, counts: beam.PCollection) -> beam.PCollection:
        return counts | "Attribute" >> beam.ParDo(
            _AttributeCountsFn(self.period), self.catalog
        ).with_output_types(pa.Table)


class AggregateLedger(beam.PTransform):
    """Unique plays → ledger delta rows per period (fixed windows of ``received_at``).

    Panes discard what they emitted, so each row is a delta and balances are sums.
    Returns ``(ledger_rows, outcomes)``: the rows, and ``(counter, count)`` pairs per pane
    for ``CountBranches``: plays that qualified as streams, plays of tracks the catalog
    lacks (``UNMATCHED``), and plays that arrived after their period closed (late).
    """

    def __init__(
        self,
        catalog: beam.pvalue.AsSideInput,
        period_seconds: int,
        early_firing_seconds: int,
        allowed_lateness_hours: int,
        min_stream_ms: int,
        late_firing_seconds: int | None = None,
    ) -> None:
        super().__init__()
        if period_seconds <= 0 or early_firing_seconds <= 0:
            raise ValueError("period_seconds and early_firing_seconds must be positive")
        if allowed_lateness_hours < 0:
            raise ValueError("allowed_lateness_hours must not be negative")
        self.catalog = catalog
        self.period_seconds = period_seconds
        self.early_firing_seconds = early_firing_seconds
        self.allowed_lateness = Duration(seconds=allowed_lateness_hours * 3600)
        self.min_stream_ms = min_stream_ms
        self.late_firing_seconds = late_firing_seconds

    def expand(self, events: beam.PCollection) -> tuple[beam.PCollection, beam.PCollection]:
        counts = (
            events
            | "WindowByPeriod"
            >> append_window(
                self.period_seconds,
                self.early_firing_seconds,
                self.allowed_lateness,
                self.late_firing_seconds,
            )
            | "CountPlays" >> CountPlays(self.min_stream_ms)
        )
        ledger_rows = counts | "AttributeCounts" >> AttributeCounts(self.catalog)
        outcomes = counts | "CountOutcomes" >> beam.ParDo(_OutcomeCountsFn(), self.catalog)
        return ledger_rows, outcomes


class _OutcomeCountsFn(beam.DoFn):
    """A pane's ``PlayCounts`` → ``(counter, count)`` pairs: qualified, unmatched and late plays."""

    def process(
        self,
        counts: PlayCounts,
        catalog: Catalog,
        pane: Any = beam.DoFn.PaneInfoParam,
    ) -> Iterator[tuple[str, int]]:
        qualified = unmatched = plays_in_pane = 0
        for (track_id, territory, product), (plays, streams) in counts.items():
            qualified += streams
            plays_in_pane += plays
            if (
                plays
                and attribute_play(catalog, track_id, territory, product, True)[0].rights_holder_id
                == UNMATCHED
            ):
                unmatched += plays
        if qualified:
            yield "plays_qualified", qualified
        if unmatched:
            yield "plays_unmatched", unmatched
        if plays_in_pane and pane.timing == beam.utils.windowed_value.PaneInfoTiming.LATE:
            yield "plays_late", plays_in_pane
