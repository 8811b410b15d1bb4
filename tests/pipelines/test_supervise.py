"""A failed step makes the pipeline's supervisor fail loudly instead of hanging RUNNING."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_stream import TestStream

from pipelines.supervisor import SupervisorSettings, supervise


def _explode(value: int) -> int:
    if value == 3:
        raise RuntimeError("a step that fails on element 3")
    return value


def test_a_failed_step_returns_non_zero() -> None:
    stream = TestStream().add_elements([1, 2, 3, 4]).advance_watermark_to_infinity()
    pipeline = beam.Pipeline(options=PipelineOptions(streaming=True, runner="BundleBasedDirectRunner"))
    _ = pipeline | stream | beam.Map(_explode)
    result = pipeline.run()
    settings = SupervisorSettings(topic="unused", heartbeat_seconds=0, drain_timeout_seconds=10)
    assert supervise(result, settings) == 1
