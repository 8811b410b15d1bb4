"""Streaming royalties: Pub/Sub play events → de-duplicated, attributed, Parquet ledger.

Reads batched Avro play events from the ``royalties`` subscription, dead-letters what it
cannot decode or validate, keeps the first copy of each ``event_id`` within the dedup
horizon, attributes each play to rights holders (streams of ≥ 30 s earn the catalog
rate), windows by the gateway's receive time into accounting periods and appends each
pane's totals to ``<data-dir>/ledger/`` as delta rows.

Locally, on Beam's direct runner, against the emulator that ``playledger up`` starts::

    PUBSUB_EMULATOR_HOST=127.0.0.1:8085 playledger pipeline stream --data-dir data \\
        --runner BundleBasedDirectRunner

On Dataflow (``--heartbeat-seconds 0``: Dataflow's source watermark needs no help)::

    playledger pipeline stream --data-dir gs://BUCKET/playledger --heartbeat-seconds 0 \\
        --runner DataflowRunner --project PROJECT --region REGION \\
        --temp_location gs://BUCKET/tmp --staging_location gs://BUCKET/staging
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import apache_beam as beam
from apache_beam.io.gcp.pubsub import ReadFromPubSub
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.utils.timestamp import Duration

from ledger.catalog import Catalog
from ledger.counters import PIPELINE_COUNTERS_FILE, Counter
from ledger.tables import (
    COUNTERS_DIR,
    COUNTERS_SCHEMA,
    DEAD_LETTER_SCHEMA,
    DEAD_LETTERS_DIR,
    LEDGER_DIR,
    LEDGER_SCHEMA,
)
from pipelines.config import PipelineConfig
from pipelines.direct_runner import DIRECT_RUNNERS, mend_direct_runner
from pipelines.options import RoyaltyOptions, StreamingOptions, options_help, refuse_unknown_flags
from pipelines.supervisor import SupervisorSettings, supervise
from pipelines.transforms.attribution import AggregateLedger
from pipelines.transforms.branches import CountBranches, CountRows, as_is, count_dead_letter
from pipelines.transforms.decode import DecodeOutput, DecodePlayMessages
from pipelines.transforms.dedup import DedupByEventId, DedupOutput
from pipelines.transforms.sinks import PaneCounters, RequiredSinks, WritePaneFiles
from pipelines.transforms.windows import append_window

__all__ = [
    "PipelineOutputs",
    "Sinks",
    "build",
    "parquet_sinks",
    "run",
    "supervise",
]

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sinks(RequiredSinks):
    """Where the pipeline's tables go: every output has a sink, or the build fails.

    Like Beam's ``ErrorHandler``, which refuses a pipeline whose error output nobody
    consumes: a pipeline without a dead-letter sink would drop dead letters silently. A
    test that asserts on an output itself says so with ``Unwritten()`` (``Sinks.unwritten()``).
    """

    ledger: beam.PTransform
    dead_letters: beam.PTransform
    counters: beam.PTransform


@dataclass(frozen=True)
class PipelineOutputs:
    """The named outputs of ``build``, for tests to assert on."""

    ledger_rows: beam.PCollection  # one table of ledger rows (LEDGER_SCHEMA) per pane
    dead_letters: beam.PCollection
    duplicates: beam.PCollection  # batches of later copies (pa.RecordBatch)
    counters: beam.PCollection


def parquet_sinks(data_dir: str, temp_dir: str | None = None) -> Sinks:
    """The ledger, dead-letter and counter tables as Parquet under ``data_dir``."""
    base = data_dir.rstrip("/")
    temp = (temp_dir or f"{base}/.tmp").rstrip("/")
    return Sinks(
        ledger=WritePaneFiles(
            f"{base}/{LEDGER_DIR}",
            f"{temp}/ledger",
            LEDGER_SCHEMA,
            partition_column="period",
            time_column="period_start",
            counters=PaneCounters(
                Counter.LEDGER_FILES_WRITTEN,
                Counter.LEDGER_ROWS_WRITTEN,
                ("plays", Counter.LEDGER_PLAYS_WRITTEN),
            ),
        ),
        dead_letters=WritePaneFiles(
            f"{base}/{DEAD_LETTERS_DIR}",
            f"{temp}/dead_letters",
            DEAD_LETTER_SCHEMA,
            partition_column="minute",
            time_column="dead_at",
            counters=PaneCounters(Counter.DEAD_LETTERS_FILES_WRITTEN, Counter.DEAD_LETTERS_ROWS_WRITTEN),
            partition_seconds=60,
        ),
        counters=WritePaneFiles(
            f"{base}/{COUNTERS_DIR}",
            f"{temp}/counters",
            COUNTERS_SCHEMA,
            partition_column="period",
            time_column="period_start",
            counters=PaneCounters(Counter.COUNTERS_FILES_WRITTEN, Counter.COUNTERS_ROWS_WRITTEN),
        ),
    )


def build(p: beam.Pipeline, source: beam.PTransform, sinks: Sinks, config: PipelineConfig) -> PipelineOutputs:
    """Wire the streaming royalty pipeline onto ``p``, reading ``PubsubMessage``s from ``source``."""
    catalog = Catalog.load(config.catalog_dir)
    lateness = Duration(seconds=config.allowed_lateness_hours * 3600)

    messages = p | "ReadPlays" >> source
    decoded = messages | "DecodePlays" >> DecodePlayMessages(config.period_seconds)
    deduped = decoded[DecodeOutput.EVENTS.value] | "DedupByEventId" >> DedupByEventId(
        config.dedup_horizon_hours * 3600, config.dedup_shards
    )
    catalog_view = beam.pvalue.AsSingleton(p | "LoadCatalog" >> beam.Create([catalog]))
    ledger_rows, outcomes = deduped[DedupOutput.UNIQUE.value] | "AggregateLedger" >> AggregateLedger(
        catalog_view,
        config.period_seconds,
        config.early_firing_seconds,
        config.allowed_lateness_hours,
        config.min_stream_ms,
        config.late_firing_seconds,
    )
    dead_letters = (
        (decoded[DecodeOutput.DEAD_LETTERS.value], deduped[DedupOutput.CONFLICTS.value])
        | "GatherDeadLetters" >> beam.Flatten()
        | "WindowDeadLetters"
        >> append_window(
            config.dead_letter_window_seconds,
            config.early_firing_seconds,
            lateness,
            config.late_firing_seconds,
        )
    )
    counted = {
        "decoded": decoded[DecodeOutput.EVENTS.value],
        "dead_letters": decoded[DecodeOutput.DEAD_LETTERS.value],
        "unique": deduped[DedupOutput.UNIQUE.value],
        "duplicate": deduped[DedupOutput.DUPLICATES.value],
        "conflict": deduped[DedupOutput.CONFLICTS.value],
        "outcomes": outcomes,
        "written": ledger_rows,
    }
    counter_rows = counted | "CountBranches" >> CountBranches(
        {
            "decoded": CountRows(Counter.EVENTS_DECODED),
            "dead_letters": count_dead_letter,
            "unique": CountRows(Counter.EVENTS_UNIQUE),
            "duplicate": CountRows(Counter.EVENTS_DUPLICATE),
            "conflict": count_dead_letter,
            "outcomes": as_is,
            "written": CountRows(Counter.LEDGER_ROWS_WRITTEN),
        },
        config.period_seconds,
        config.early_firing_seconds,
        config.allowed_lateness_hours,
        config.late_firing_seconds,
    )
    _ = ledger_rows | "WriteLedger" >> sinks.ledger
    _ = counter_rows | "WriteCounters" >> sinks.counters
    _ = dead_letters | "WriteDeadLetters" >> sinks.dead_letters
    return PipelineOutputs(ledger_rows, dead_letters, deduped[DedupOutput.DUPLICATES.value], counter_rows)


def run(argv: Sequence[str] | None = None) -> int:
    """Run the streaming pipeline until SIGINT/SIGTERM, then write out what it read."""
    argv = list(argv or [])
    if "-h" in argv or "--help" in argv:
        print(
            options_help(
                "playledger pipeline stream", __doc__.split("\n")[0], RoyaltyOptions, StreamingOptions
            )
        )
        return 0
    refuse_unknown_flags(argv)
    options = PipelineOptions(argv, streaming=True, save_main_session=False)
    config = options.view_as(RoyaltyOptions).config()
    streaming = options.view_as(StreamingOptions)
    data_dir: str = options.view_as(RoyaltyOptions).data_dir
    if options.view_as(StandardOptions).runner is None:
        # Named explicitly: the default DirectRunner first tries to download another runner.
        options.view_as(StandardOptions).runner = "BundleBasedDirectRunner"
    if options.view_as(StandardOptions).runner in DIRECT_RUNNERS:
        mend_direct_runner()
    pipeline = beam.Pipeline(options=options)
    build(
        pipeline,
        ReadFromPubSub(subscription=streaming.subscription, with_attributes=True),
        parquet_sinks(data_dir),
        config,
    )
    result = pipeline.run()
    return supervise(
        result,
        SupervisorSettings(
            topic=streaming.topic,
            heartbeat_seconds=streaming.heartbeat_seconds,
            drain_timeout_seconds=streaming.drain_timeout_seconds,
            early_firing_seconds=config.early_firing_seconds,
            counters_path=None if "://" in data_dir else Path(data_dir) / PIPELINE_COUNTERS_FILE,
        ),
    )
