"""The direct runner's counters keep counting after the first bundle of a step, and let go after."""

from __future__ import annotations

import gc

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.metrics.execution import MetricsContainer
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_stream import TestStream

from pipelines.direct_runner import mend_direct_runner_metrics


class _CountFn(beam.DoFn):
    def __init__(self) -> None:
        self.seen = Metrics.counter("test", "seen")

    def process(self, element: int) -> None:
        self.seen.inc()


def test_counter_sums_every_bundle_of_a_streaming_pipeline() -> None:
    mend_direct_runner_metrics()
    stream = TestStream()
    for second in range(12):  # each add_elements is its own bundle
        stream = stream.add_elements([second, second]).advance_watermark_to(second + 1)
    pipeline = beam.Pipeline(options=PipelineOptions(streaming=True, runner="BundleBasedDirectRunner"))
    _ = pipeline | stream.advance_watermark_to_infinity() | beam.ParDo(_CountFn())
    result = pipeline.run()
    result.wait_until_finish()
    counters = result.metrics().query(MetricsFilter().with_name("seen"))["counters"]
    assert sum(counter.committed for counter in counters) == 24


_LIVE_CONTAINERS: list[int] = []


class _CountContainersFn(beam.DoFn):
    def process(self, element: int) -> None:
        if element % 25 == 0:
            gc.collect()
            _LIVE_CONTAINERS.append(sum(isinstance(o, MetricsContainer) for o in gc.get_objects()))


def test_bundles_do_not_keep_their_metrics_alive() -> None:
    # A streaming pipeline runs bundles for as long as it lives: what a finished bundle
    # counted must be committed and let go, not kept by the worker thread's sampler.
    mend_direct_runner_metrics()
    _LIVE_CONTAINERS.clear()
    stream = TestStream()
    for second in range(150):
        stream = stream.add_elements([second]).advance_watermark_to(second + 1)
    pipeline = beam.Pipeline(options=PipelineOptions(streaming=True, runner="BundleBasedDirectRunner"))
    _ = pipeline | stream.advance_watermark_to_infinity() | beam.ParDo(_CountContainersFn())
    pipeline.run().wait_until_finish()
    assert len(_LIVE_CONTAINERS) == 6
    # Early bundles leave some behind while the runner warms up; after that, none.
    assert _LIVE_CONTAINERS[-1] - _LIVE_CONTAINERS[2] <= 5, _LIVE_CONTAINERS
