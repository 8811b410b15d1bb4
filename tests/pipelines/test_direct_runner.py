"""The direct runner, mended: counters keep counting and let go of finished bundles; no empty bundles."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import apache_beam as beam
import pytest
from apache_beam.metrics import Metrics
from apache_beam.metrics.execution import MetricsContainer
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import window
from apache_beam.transforms.window import TimestampedValue

from pipelines.direct_runner import mend_direct_runner, mend_direct_runner_metrics


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


_BUNDLES_STARTED: list[str] = []


class _EverythingToMainFn(beam.DoFn):
    def process(self, element: int) -> Iterator[int]:
        yield element  # the "never" output gets nothing, bundle after bundle


class _RecordBundlesFn(beam.DoFn):
    def __init__(self, name: str) -> None:
        self.name = name

    def start_bundle(self) -> None:
        _BUNDLES_STARTED.append(self.name)

    def process(self, element: int) -> Iterator[int]:
        yield element


def test_empty_bundles_are_dropped_and_watermarks_still_close_windows() -> None:
    mend_direct_runner()
    _BUNDLES_STARTED.clear()
    stream = TestStream()
    for second in range(30):
        stream = stream.add_elements([TimestampedValue(second, second)]).advance_watermark_to(second + 1)
    pipeline = beam.Pipeline(options=PipelineOptions(streaming=True, runner="BundleBasedDirectRunner"))
    outputs = (
        pipeline
        | stream.advance_watermark_to_infinity()
        | beam.ParDo(_EverythingToMainFn()).with_outputs("never", main="main")
    )
    _ = outputs.never | "AfterNever" >> beam.ParDo(_RecordBundlesFn("never"))
    sums = (
        outputs.main
        | "AfterMain" >> beam.ParDo(_RecordBundlesFn("main"))
        | beam.WindowInto(window.FixedWindows(10))
        | beam.CombineGlobally(sum).without_defaults()
    )
    assert_that(sums, equal_to([sum(range(10)), sum(range(10, 20)), sum(range(20, 30))]))
    pipeline.run().wait_until_finish()
    assert "never" not in _BUNDLES_STARTED
    assert 0 < _BUNDLES_STARTED.count("main") <= 30


def test_a_beam_other_than_the_mended_minor_is_refused_at_start() -> None:
    from pipelines.direct_runner import MENDED_BEAM, UnmendedBeamError, check_beam_version

    major, minor = MENDED_BEAM
    check_beam_version(f"{major}.{minor}.0")
    check_beam_version(f"{major}.{minor}.3rc1")
    for other in (f"{major}.{minor + 1}.0", f"{major}.{minor - 1}.2", f"{major + 1}.0.0", "dev"):
        with pytest.raises(UnmendedBeamError, match="apache-beam"):
            check_beam_version(other)
