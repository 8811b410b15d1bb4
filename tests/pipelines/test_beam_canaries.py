"""Canaries for the next Beam upgrade: Beam's own behaviour that our code works around.

These assert Beam, not playledger, so they are marked ``beam_canary`` and reported apart
from our tests. Each one failing after an upgrade means Beam changed: the workaround it
names may have become unnecessary (or wrong), so re-read it before trusting the counters.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

pytestmark = pytest.mark.beam_canary

# Run in a child process: the mend, once applied, patches Beam for the rest of the process.
_UNMENDED_COUNTERS = textwrap.dedent(
    """
    import apache_beam as beam
    from apache_beam.metrics import Metrics
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.testing.test_stream import TestStream

    class CountFn(beam.DoFn):
        def __init__(self):
            self.seen = Metrics.counter("canary", "seen")

        def process(self, element):
            self.seen.inc()

    stream = TestStream()
    for second in range(12):  # each add_elements is its own bundle
        stream = stream.add_elements([second, second]).advance_watermark_to(second + 1)
    p = beam.Pipeline(options=PipelineOptions(streaming=True, runner="BundleBasedDirectRunner"))
    _ = p | stream.advance_watermark_to_infinity() | beam.ParDo(CountFn())
    result = p.run()
    result.wait_until_finish()
    counters = result.metrics().query(MetricsFilter().with_name("seen"))["counters"]
    print(sum(counter.committed for counter in counters))
    """
)


def test_the_unmended_streaming_direct_runner_still_loses_all_but_the_last_bundles_counters() -> None:
    # Why pipelines.direct_runner.mend_direct_runner_metrics exists (24 elements were counted).
    done = subprocess.run(
        [sys.executable, "-c", _UNMENDED_COUNTERS], capture_output=True, text=True, timeout=120, check=True
    )
    assert int(done.stdout.split()[-1]) < 24


def test_beam_still_only_logs_a_flag_it_does_not_know() -> None:
    # Why pipelines.options.refuse_unknown_flags exists: Beam runs on with its defaults.
    options = PipelineOptions(["--runner=FnApiRunner", "--no-such-flag=1"])
    assert options.view_as(StandardOptions).runner == "FnApiRunner"
    assert "no_such_flag" not in options.get_all_options(retain_unknown_options=False)
