"""Counters per pipeline branch and period, written as delta rows like the ledger."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.transforms.window import FixedWindows
from apache_beam.utils.timestamp import Duration

from ledger.counters import Counter
from ledger.dead_letters import DeadLetterStage
from pipelines.transforms.counting import combine_per_key
from pipelines.transforms.windows import PANE_TIMING, append_window


class _ToCounterRowFn(beam.DoFn):
    def process(
        self,
        named_count: tuple[str, int],
        window: Any = beam.DoFn.WindowParam,
        pane: Any = beam.DoFn.PaneInfoParam,
    ) -> Iterator[dict[str, Any]]:
        counter, value = named_count
        if value == 0:
            # An empty pane: nothing counted. (A comment after ``return`` would make
            # Beam's lint take it for a returned value beside ``yield``.)
            return
        yield {
            "period_start": window.start.to_utc_datetime(has_tz=True),
            "period_end": window.end.to_utc_datetime(has_tz=True),
            "counter": counter,
            "value": value,
            "pane_timing": PANE_TIMING.get(pane.timing, "UNKNOWN"),
            "written_at": dt.datetime.now(dt.UTC),
        }


class _NamedCountsFn(beam.DoFn):
    """A branch's elements → their ``(counter, count)`` pairs, by the branch's function.

    A DoFn rather than ``FlatMap``: the direct runner pickles every step for every
    bundle, and ``FlatMap``'s wrapper pickles several times the function's size.
    """

    def __init__(self, namer: Callable[[Any], Iterable[tuple[str, int]]]) -> None:
        self.namer = namer

    def process(self, element: Any) -> Iterable[tuple[str, int]]:
        return self.namer(element)


class CountBranches(beam.PTransform):
    """Named branches of the pipeline → counter rows per period (deltas, like the ledger).

    Each branch has a function from an element to its ``(counter, count)`` pairs: a batch
    of plays counts its rows, a dead letter counts one under its stage's counter. An
    element counts in the period of its timestamp (a batch's ``received_at``; an
    undecodable message's publish time; a pane's end), so reconciliation can balance a
    period: ``decoded = unique + duplicate``, and so on.
    """

    def __init__(
        self,
        branches: dict[str, Any],
        period_seconds: int,
        early_firing_seconds: int,
        allowed_lateness_hours: int,
        late_firing_seconds: int | None = None,
        *,
        one_pane: bool = False,
    ) -> None:
        super().__init__()
        if not branches:
            raise ValueError("at least one branch to count")
        self.branches = branches
        self.window = (
            period_seconds,
            early_firing_seconds,
            Duration(seconds=allowed_lateness_hours * 3600),
            late_firing_seconds,
        )
        self.one_pane = one_pane

    @classmethod
    def of_batch(cls, branches: dict[str, Any], period_seconds: int) -> CountBranches:
        """Branches of a bounded run, all counted in one pane per period (the batch recompute's)."""
        return cls(branches, period_seconds, 1, 0, one_pane=True)

    def expand(self, pcolls: dict[str, beam.PCollection]) -> beam.PCollection:
        # Each branch is windowed by period before they are flattened: the branches come
        # windowed differently (the ledger's panes, or the global window), and Flatten
        # wants its inputs windowed alike. An element's period is its timestamp's either way.
        # One WindowInto for all: Beam's triggers compare equal only to themselves.
        by_period = (
            # Bounded input: the watermark jumps to the end, one on-time pane per period.
            beam.WindowInto(FixedWindows(self.window[0])) if self.one_pane else append_window(*self.window)
        )
        named = [
            pcoll
            | f"Name{name}" >> beam.ParDo(_NamedCountsFn(self.branches[name]))
            | f"WindowByPeriod{name}" >> by_period
            for name, pcoll in pcolls.items()
        ]
        return (
            named
            | "AllBranches" >> beam.Flatten()
            | "SumPerCounter" >> combine_per_key(beam.CombineFn.from_callable(sum))
            | "ToCounterRow" >> beam.ParDo(_ToCounterRowFn())
        )


@dataclass(frozen=True)
class CountRows:
    """A branch function: a batch or table → its rows under one counter.

    A small class, not a closure: a runner that copies a step by pickling it (the direct
    runner does, for every bundle) then pickles a name, not code.
    """

    counter: Counter

    def __call__(self, rows: pa.RecordBatch | pa.Table) -> list[tuple[str, int]]:
        return [(str(self.counter), rows.num_rows)]


def as_is(named_count: tuple[str, int]) -> list[tuple[str, int]]:
    """A branch function for elements that already are ``(counter, count)`` pairs."""
    return [named_count]


DEAD_LETTER_COUNTERS = {
    DeadLetterStage.DECODE: Counter.MESSAGES_UNDECODABLE,
    DeadLetterStage.VALIDATE: Counter.EVENTS_INVALID,
    DeadLetterStage.DEDUP: Counter.EVENTS_CONFLICT,
    DeadLetterStage.ARCHIVE: Counter.EVENTS_INVALID,
}
"""The counter a dead letter counts under, by the stage that refused it."""


def count_dead_letter(row: dict[str, Any]) -> list[tuple[str, int]]:
    """A branch function: one dead letter → one, under its stage's counter."""
    return [(str(DEAD_LETTER_COUNTERS[DeadLetterStage(row["stage"])]), 1)]


def count_dead_letter_table(rows: pa.Table) -> list[tuple[str, int]]:
    """A branch function: a table of dead letters → each under its stage's counter."""
    return [
        (str(DEAD_LETTER_COUNTERS[DeadLetterStage(stage["values"])]), stage["counts"])
        for stage in pc.value_counts(rows["stage"]).to_pylist()
    ]
