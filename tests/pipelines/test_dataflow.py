"""Dataflow readiness, offline: both jobs translate for DataflowRunner with ``dry_run``.

The workers' package is built from this project (``--setup_file pyproject.toml``), as a
real deploy would; nothing reaches Google Cloud.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.io.gcp.pubsub import ReadFromPubSub
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineState

from pipelines import batch, streaming
from pipelines.config import DATAFLOW_DEDUP_SHARDS
from pipelines.options import RoyaltyOptions, StreamingOptions

REPO = Path(__file__).resolve().parents[2]
BUCKET = "gs://playledger-dry-run"


def dataflow_options(*flags: str) -> PipelineOptions:
    return PipelineOptions(
        [
            "--runner=DataflowRunner",
            "--project=playledger-prod",
            "--region=europe-west1",
            f"--temp_location={BUCKET}/tmp",
            f"--setup_file={REPO / 'pyproject.toml'}",
            "--dry_run=True",
            f"--data-dir={BUCKET}/data",
            *flags,
        ]
    )


def beam_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What Beam warned of while a job was built: mixed windowing, a DoFn it distrusts."""
    return [
        record.getMessage()[:200]
        for record in caplog.records
        if record.name.startswith("apache_beam.transforms") and record.levelno >= logging.WARNING
    ]


def step_names(pipeline: beam.Pipeline) -> set[str]:
    return {transform.unique_name for transform in pipeline.to_runner_api().components.transforms.values()}


def test_the_streaming_job_translates_for_dataflow(caplog: pytest.LogCaptureFixture) -> None:
    options = dataflow_options("--streaming", "--period-seconds=86400", "--early-firing-seconds=30")
    config = options.view_as(RoyaltyOptions).config()
    assert (config.period_seconds, config.early_firing_seconds) == (86400, 30)
    assert config.dedup_shards == DATAFLOW_DEDUP_SHARDS  # many workers: the state spread over many keys
    pipeline = beam.Pipeline(options=options)
    streaming.build(
        pipeline,
        ReadFromPubSub(subscription=options.view_as(StreamingOptions).subscription, with_attributes=True),
        streaming.parquet_sinks(f"{BUCKET}/data"),
        config,
    )
    assert {"ReadPlays", "DecodePlays", "DedupByEventId", "AggregateLedger", "WriteLedger"} <= step_names(
        pipeline
    )
    assert beam_warnings(caplog) == []
    assert pipeline.run().state == PipelineState.DONE


def test_the_batch_job_translates_for_dataflow(caplog: pytest.LogCaptureFixture) -> None:
    options = dataflow_options("--period=2026-11-28T00:00:00Z", "--period-seconds=86400")
    config = options.view_as(RoyaltyOptions).config()
    period = batch.Period.starting("2026-11-28T00:00:00Z", config.period_seconds)
    assert period.end - period.start == dt.timedelta(days=1)
    pipeline = beam.Pipeline(options=options)
    batch.build(
        pipeline,
        batch.ReadArchiveFiles([f"{BUCKET}/data/archive/hour=20261128T000000Z/part-0.parquet"]),
        batch.final_sinks(f"{BUCKET}/data", period),
        config,
        period,
    )
    assert {
        "ReadArchive",
        "FirstCopiesInPeriod",
        "AttributeCounts",
        "WriteFinalLedger",
        "WriteDeadLetters",
        "CountBranches",
        "WriteCounters",
    } <= step_names(pipeline)
    assert beam_warnings(caplog) == []
    assert pipeline.run().state == PipelineState.DONE


@pytest.mark.parametrize(
    ("flags", "shards"),
    [
        ([], 1),  # no runner named: the direct runner, which runs one key at a time
        (["--runner=BundleBasedDirectRunner"], 1),
        (["--runner=DataflowRunner"], DATAFLOW_DEDUP_SHARDS),
        (["--runner=DataflowRunner", "--dedup-shards=8"], 8),
        (["--dedup-shards=3"], 3),
        (["--dedup-shards=100"], 100),
    ],
)
def test_dedup_shards_default_by_runner(flags: list[str], shards: int) -> None:
    options = PipelineOptions(["--data-dir=data", *flags])
    config = options.view_as(RoyaltyOptions).config()
    assert config.dedup_shards == shards
    # The batch's shuffles spread as wide, and never narrower than its local default.
    assert batch.batch_shards(config) == max(shards, batch.DEFAULT_SHARDS)


def test_zero_dedup_shards_is_refused() -> None:
    with pytest.raises(ValueError, match="dedup_shards must be a positive integer"):
        PipelineOptions(["--data-dir=data", "--dedup-shards=0"]).view_as(RoyaltyOptions).config()
