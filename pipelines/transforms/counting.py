"""Plays and streams per (track, territory, product), counted column-wise in Arrow."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.transforms.combiners import LiftedCombinePerKey

from pipelines.transforms.play_batches import (
    plain_values,
)

PlayGroup = tuple[str, str, str]
"""(track_id, territory, product): the plays in one group earn the same per stream."""


def combine_per_key(combine_fn: beam.CombineFn) -> beam.PTransform:
    """``CombinePerKey`` that combines within each bundle before the shuffle, in any windowing.

    Beam's direct runner lifts a combiner only in the global window with the default
    trigger; in our windows every input element would otherwise go through the trigger
    machinery one by one. Combining is associative, so pre-combining a bundle's elements
    per key and window gives the same panes.
    """
    return LiftedCombinePerKey(combine_fn, (), {})


PlayCounts = dict[PlayGroup, tuple[int, int]]
"""``(plays, streams)`` per play group."""


PLAY_GROUP_COLUMNS = ["track_id", "territory", "product"]
PLAY_COUNTS_SCHEMA = pa.schema(
    [
        *(pa.field(name, pa.string()) for name in PLAY_GROUP_COLUMNS),
        pa.field("plays", pa.int64()),
        pa.field("streams", pa.int64()),
    ]
)
"""Plays and streams per play group, as a table (``PLAY_COUNTS_SCHEMA``)."""


def count_play_table(
    plays: pa.RecordBatch | pa.Table, min_stream_ms: int, counted: np.ndarray | None = None
) -> pa.Table:
    """Plays and streams per (track, territory, product) among the rows marked ``counted`` (all).

    Counted column-wise in Arrow. The group columns may be dictionary-encoded (grouped by
    code); the counts are plain strings. Groups with no play counted are left out.
    """
    rows = plays if isinstance(plays, pa.Table) else pa.Table.from_batches([plays])
    if counted is None:
        counted = np.ones(rows.num_rows, bool)
    is_stream = pc.greater_equal(rows["ms_played"], min_stream_ms).fill_null(False).to_numpy()
    summed = (
        # One dictionary per column across chunks: Arrow groups by codes only within one.
        rows.select(PLAY_GROUP_COLUMNS)
        .unify_dictionaries()
        .append_column("plays", pa.array(counted.astype(np.int64)))
        .append_column("streams", pa.array((counted & is_stream).astype(np.int64)))
        .group_by(PLAY_GROUP_COLUMNS, use_threads=False)
        .aggregate([("plays", "sum"), ("streams", "sum")])
    )
    counts = pa.table(
        [
            *(plain_values(summed[name]) for name in PLAY_GROUP_COLUMNS),
            summed["plays_sum"],
            summed["streams_sum"],
        ],
        schema=PLAY_COUNTS_SCHEMA,
    )
    return counts.filter(pc.greater(counts["plays"], 0))


def play_counts_of(counts: pa.Table) -> PlayCounts:
    """A table of ``PLAY_COUNTS_SCHEMA`` as ``PlayCounts``."""
    columns = [counts[name].to_pylist() for name in PLAY_COUNTS_SCHEMA.names]
    return {
        (track_id, territory, product): (plays, streams)
        for track_id, territory, product, plays, streams in zip(*columns, strict=True)
    }


def count_plays(plays: pa.RecordBatch | pa.Table, min_stream_ms: int) -> PlayCounts:
    """Plays and streams per (track, territory, product) of every row."""
    return play_counts_of(count_play_table(plays, min_stream_ms))


class _PendingCounts:
    """A ``CountPlaysFn`` accumulator: counts so far (``PLAY_COUNTS_SCHEMA``), and batches not counted yet."""

    __slots__ = ("batches", "counts")

    def __init__(self, counts: pa.Table | None = None) -> None:
        self.counts: pa.Table | None = counts
        self.batches: list[pa.RecordBatch] = []

    def tables(self) -> list[pa.Table]:
        return [] if self.counts is None else [self.counts]


class CountPlaysFn(beam.CombineFn):
    """Batches of plays → ``PlayCounts``; batches are gathered and counted together in one pass.

    Unlike ``TupleCombineFn`` it merges an empty list of accumulators: the direct runner
    hands a combiner the empty pane a processing-time trigger can fire when a key's
    elements were already emitted (``TupleCombineFn`` then raises ``StopIteration``).
    """

    def __init__(self, min_stream_ms: int) -> None:
        self.min_stream_ms = min_stream_ms

    def create_accumulator(self) -> _PendingCounts:
        return _PendingCounts()

    def add_input(self, accumulator: _PendingCounts, batch: pa.RecordBatch) -> _PendingCounts:
        if batch.num_rows:
            accumulator.batches.append(batch)
        return accumulator

    def compact(self, accumulator: _PendingCounts) -> _PendingCounts:
        if not accumulator.batches:
            return accumulator
        counted = count_play_table(pa.Table.from_batches(accumulator.batches), self.min_stream_ms)
        return _PendingCounts(sum_count_tables([*accumulator.tables(), counted]))

    def merge_accumulators(self, accumulators: Iterable[_PendingCounts]) -> _PendingCounts:
        tables = [table for accumulator in accumulators for table in self.compact(accumulator).tables()]
        return _PendingCounts(sum_count_tables(tables) if tables else None)

    def extract_output(self, accumulator: _PendingCounts) -> PlayCounts:
        return play_counts_of(sum_count_tables(self.compact(accumulator).tables()))


# FlatMap over module functions rather than Map or Values, which wrap the function in
# a lambda: the direct runner pickles every step for every bundle, and a lambda by value.
def _under_one_key(batch: pa.RecordBatch) -> list[tuple[None, pa.RecordBatch]]:
    return [(None, batch)]


def _value(keyed: tuple[Any, PlayCounts]) -> list[PlayCounts]:
    return [keyed[1]]


class CountPlays(beam.PTransform):
    """Batches of unique plays → one ``PlayCounts`` per pane: ``(plays, streams)`` per group.

    A play of at least ``min_stream_ms`` is a stream. Counting before attributing is
    exact: every stream of a group earns the same gross, split the same way. A pane's
    batches are counted together, column-wise; an empty pane counts nothing.
    """

    def __init__(self, min_stream_ms: int) -> None:
        super().__init__()
        if min_stream_ms < 0:
            raise ValueError("min_stream_ms must not be negative")
        self.min_stream_ms = min_stream_ms

    def expand(self, batches: beam.PCollection) -> beam.PCollection:
        return (
            batches
            | "OneKey" >> beam.FlatMap(_under_one_key)
            | "CountPerPane" >> combine_per_key(CountPlaysFn(self.min_stream_ms))
            | "PaneCounts" >> beam.FlatMap(_value)
        )


class SumCountTables(beam.CombineFn):
    """Tables of ``plays`` and ``streams`` per group → one table of their sums per group.

    One element per shard instead of one per group: the sums are Arrow group-bys.
    """

    def create_accumulator(self) -> list[pa.Table]:
        return []

    def add_input(self, accumulator: list[pa.Table], counts: pa.Table) -> list[pa.Table]:
        accumulator.append(counts)
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[list[pa.Table]]) -> list[pa.Table]:
        tables = [table for accumulator in accumulators for table in accumulator]
        return [sum_count_tables(tables)] if tables else []

    def compact(self, accumulator: list[pa.Table]) -> list[pa.Table]:
        return [sum_count_tables(accumulator)] if len(accumulator) > 1 else accumulator

    def extract_output(self, accumulator: list[pa.Table]) -> pa.Table:
        return sum_count_tables(accumulator)


def sum_count_tables(tables: Sequence[pa.Table]) -> pa.Table:
    """Tables of ``PLAY_COUNTS_SCHEMA`` → one table of their sums per group (empty if none)."""
    if not tables:
        return PLAY_COUNTS_SCHEMA.empty_table()
    summed = (
        pa.concat_tables(tables)
        .group_by(PLAY_GROUP_COLUMNS)
        .aggregate([("plays", "sum"), ("streams", "sum")])
    )
    return pa.table(
        [*(summed[name] for name in PLAY_GROUP_COLUMNS), summed["plays_sum"], summed["streams_sum"]],
        schema=PLAY_COUNTS_SCHEMA,
    )
