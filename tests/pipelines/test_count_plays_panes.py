"""CountPlaysFn counts a pane's batches together and survives the empty panes of the direct runner."""

from __future__ import annotations

from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.combiners import TupleCombineFn
from sample_plays import message, play

from pipelines.transforms.counting import CountPlaysFn, count_plays
from pipelines.transforms.play_batches import decode_plays


def batch_of(*plays: dict[str, Any]) -> Any:
    msg = message(*plays)
    return decode_plays(msg.data, dict(msg.attributes)).valid


def test_batches_are_counted_together_as_one() -> None:
    first = batch_of(play("T1"), play("T1", ms_played=1_000), play("T2", territory="DE"))
    second = batch_of(play("T1"), play("T2", territory="DE", product="free"))
    combine = CountPlaysFn(min_stream_ms=30_000)
    accumulator = combine.add_input(combine.add_input(combine.create_accumulator(), first), second)
    merged = combine.merge_accumulators([accumulator, combine.add_input(combine.create_accumulator(), first)])
    assert combine.extract_output(merged) == {
        ("T1", "SE", "premium"): (5, 3),
        ("T2", "DE", "premium"): (2, 2),
        ("T2", "DE", "free"): (1, 1),
    }
    assert count_plays(first, 30_000) == {("T1", "SE", "premium"): (2, 1), ("T2", "DE", "premium"): (1, 1)}


def test_an_empty_pane_counts_nothing_instead_of_failing() -> None:
    combine = CountPlaysFn(min_stream_ms=30_000)
    assert combine.extract_output(combine.merge_accumulators([])) == {}
    assert combine.extract_output(combine.add_input(combine.create_accumulator(), batch_of())) == {}
    # The direct runner merges a group's accumulators even when the group is empty, as a
    # pane fired with nothing new in it is; TupleCombineFn raises StopIteration there.
    try:
        TupleCombineFn(sum, sum).merge_accumulators([])
    except StopIteration:
        pass
    else:
        raise AssertionError("TupleCombineFn merges an empty list now")
    options = PipelineOptions(runner="BundleBasedDirectRunner")
    with TestPipeline(options=options) as pipeline:
        groups = pipeline | beam.Create(
            [("empty", []), ("full", [batch_of(play("T1")), batch_of(play("T1", ms_played=10))])]
        ).with_output_types(beam.typehints.KV[Any, Any])
        assert_that(
            groups | beam.CombineValues(CountPlaysFn(min_stream_ms=30_000)),
            equal_to([("empty", {}), ("full", {("T1", "SE", "premium"): (2, 1)})]),
        )
