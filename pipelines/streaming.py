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
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.gcp.pubsub import ReadFromPubSub
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.utils.timestamp import Duration

from ledger.catalog import Catalog
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
from pipelines.options import RoyaltyOptions, StreamingOptions, options_help
from pipelines.supervisor import COUNTERS_FILE, SupervisorSettings, supervise
from pipelines.transforms import (
    AggregateLedger,
    CountBranches,
    DecodeOutput,
    DecodePlayMessages,
    DedupByEventId,
    DedupOutput,
    WritePaneFiles,
    append_window,
)

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
class Sinks:
    """Where the pipeline's tables go; ``None`` leaves a table to the caller (tests)."""

    ledger: beam.PTransform | None = None
    dead_letters: beam.PTransform | None = None
    counters: beam.PTransform | None = None


@dataclass(frozen=True)
class PipelineOutputs:
    """The named outputs of ``build``, for tests to assert on."""

    ledger_rows: beam.PCollection  # one table of ledger rows (LEDGER_SCHEMA) per pane
    dead_letters: beam.PCollection
    duplicates: beam.PCollection  # batches of later copies (pa.RecordBatch)
    counters: beam.PCollection


def parquet_sinks(data_dir: str, temp_dir: str | None = None) -> Sinks:
    """The ledger and dead-letter tables as Parquet under ``data_dir``."""
    base = data_dir.rstrip("/")
    temp = (temp_dir or f"{base}/.tmp").rstrip("/")
    return Sinks(
        ledger=WritePaneFiles(
            "ledger",
            f"{base}/{LEDGER_DIR}",
            f"{temp}/ledger",
            LEDGER_SCHEMA,
            partition_column="period",
            time_column="period_start",
            sum_column="plays",
        ),
        dead_letters=WritePaneFiles(
            "dead_letters",
            f"{base}/{DEAD_LETTERS_DIR}",
            f"{temp}/dead_letters",
            DEAD_LETTER_SCHEMA,
            partition_column="minute",
            time_column="dead_at",
            partition_seconds=60,
        ),
        counters=WritePaneFiles(
            "counters",
            f"{base}/{COUNTERS_DIR}",
            f"{temp}/counters",
            COUNTERS_SCHEMA,
            partition_column="period",
            time_column="period_start",
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
            "decoded": _CountRows("events_decoded"),
            "dead_letters": _dead_letter_counter,
            "unique": _CountRows("events_unique"),
            "duplicate": _CountRows("events_duplicate"),
            "conflict": _CountOne("events_conflict"),
            "outcomes": _as_is,
            "written": _CountRows("ledger_rows_written"),
        },
        config.period_seconds,
        config.early_firing_seconds,
        config.allowed_lateness_hours,
        config.late_firing_seconds,
    )
    if sinks.ledger is not None:
        _ = ledger_rows | "WriteLedger" >> sinks.ledger
    if sinks.counters is not None:
        _ = counter_rows | "WriteCounters" >> sinks.counters
    if sinks.dead_letters is not None:
        _ = dead_letters | "WriteDeadLetters" >> sinks.dead_letters
    return PipelineOutputs(ledger_rows, dead_letters, deduped[DedupOutput.DUPLICATES.value], counter_rows)


@dataclass(frozen=True)
class _CountRows:
    """A batch or table → its rows under one counter name.

    A small class, not a closure: a runner that copies a step by pickling it (the direct
    runner does, for every bundle) then pickles a name, not code.
    """

    counter: str

    def __call__(self, rows: pa.RecordBatch | pa.Table) -> list[tuple[str, int]]:
        return [(self.counter, rows.num_rows)]


@dataclass(frozen=True)
class _CountOne:
    """Any element → one under one counter name."""

    counter: str

    def __call__(self, _element: Any) -> list[tuple[str, int]]:
        return [(self.counter, 1)]


def _as_is(named_count: tuple[str, int]) -> list[tuple[str, int]]:
    return [named_count]


def _dead_letter_counter(row: dict[str, Any]) -> list[tuple[str, int]]:
    # Undecodable messages and invalid events: one counter per stage that refused them.
    return [("messages_undecodable" if row["stage"] == "decode" else "events_invalid", 1)]


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
            counters_path=None if "://" in data_dir else Path(data_dir) / COUNTERS_FILE,
        ),
    )
