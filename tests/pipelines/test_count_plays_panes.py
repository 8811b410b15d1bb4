"""CountPlays survives the empty panes a processing-time trigger can fire on the direct runner."""

from __future__ import annotations

from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.combiners import TupleCombineFn

from pipelines.transforms import SumPlaysAndStreams


def test_an_empty_pane_sums_to_zero_instead_of_failing() -> None:
    combine = SumPlaysAndStreams()
    assert combine.merge_accumulators([]) == (0, 0)
    accumulator = combine.add_input(combine.add_input(combine.create_accumulator(), (1, 1)), (1, 0))
    assert combine.extract_output(combine.merge_accumulators([accumulator, (3, 2)])) == (5, 3)


def test_the_direct_runner_combines_an_empty_group_that_tuple_combine_fn_cannot() -> None:
    # The direct runner merges a group's accumulators even when the group is empty, as a
    # pane fired with nothing new in it is; TupleCombineFn then raises StopIteration.
    try:
        TupleCombineFn(sum, sum).merge_accumulators([])
    except StopIteration:
        pass
    else:
        raise AssertionError("TupleCombineFn merges an empty list now: SumPlaysAndStreams may be unneeded")
    options = PipelineOptions(runner="BundleBasedDirectRunner")
    with TestPipeline(options=options) as pipeline:
        groups = pipeline | beam.Create(
            [(("T1", "SE", "premium"), []), (("T2", "SE", "free"), [(1, 1), (1, 0)])]
        ).with_output_types(beam.typehints.KV[Any, Any])
        assert_that(
            groups | beam.CombineValues(SumPlaysAndStreams()),
            equal_to([(("T1", "SE", "premium"), (0, 0)), (("T2", "SE", "free"), (2, 1))]),
        )
