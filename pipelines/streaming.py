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

import argparse
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import apache_beam as beam
from apache_beam.io.gcp.pubsub import ReadFromPubSub
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.utils.timestamp import Duration

from ingest.pubsub import PubSubNames
from ledger.catalog import Catalog
from ledger.tables import DEAD_LETTER_SCHEMA, DEAD_LETTERS_DIR, LEDGER_DIR, LEDGER_SCHEMA
from pipelines.config import PipelineConfig
from pipelines.direct_runner import DIRECT_RUNNERS, mend_direct_runner_metrics
from pipelines.supervisor import COUNTERS_FILE, SupervisorSettings, supervise
from pipelines.transforms import (
    AggregateLedger,
    AttributeRoyalties,
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


@dataclass(frozen=True)
class PipelineOutputs:
    """The named outputs of ``build``, for tests to assert on."""

    ledger_rows: beam.PCollection
    dead_letters: beam.PCollection
    duplicates: beam.PCollection


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
        ),
    )


def build(p: beam.Pipeline, source: beam.PTransform, sinks: Sinks, config: PipelineConfig) -> PipelineOutputs:
    """Wire the streaming royalty pipeline onto ``p``, reading ``PubsubMessage``s from ``source``."""
    catalog = Catalog.load(config.catalog_dir)
    lateness = Duration(seconds=config.allowed_lateness_hours * 3600)

    messages = p | "ReadPlays" >> source
    decoded = messages | "DecodePlays" >> DecodePlayMessages()
    deduped = decoded[DecodeOutput.EVENTS.value] | "DedupByEventId" >> DedupByEventId(
        config.dedup_horizon_hours
    )
    catalog_view = beam.pvalue.AsSingleton(p | "LoadCatalog" >> beam.Create([catalog]))
    parts = deduped[DedupOutput.UNIQUE.value] | "AttributeRoyalties" >> AttributeRoyalties(
        catalog_view, config.min_stream_ms
    )
    ledger_rows = parts | "AggregateLedger" >> AggregateLedger(
        config.period_seconds, config.early_firing_seconds, config.allowed_lateness_hours
    )
    dead_letters = decoded[DecodeOutput.DEAD_LETTERS.value] | "WindowDeadLetters" >> append_window(
        config.dead_letter_window_seconds, config.early_firing_seconds, lateness
    )
    if sinks.ledger is not None:
        _ = ledger_rows | "WriteLedger" >> sinks.ledger
    if sinks.dead_letters is not None:
        _ = dead_letters | "WriteDeadLetters" >> sinks.dead_letters
    return PipelineOutputs(ledger_rows, dead_letters, deduped[DedupOutput.DUPLICATES.value])


def _parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="playledger pipeline stream", description=__doc__.split("\n")[0])
    names = PubSubNames()
    parser.add_argument("--data-dir", required=True, help="where ledger/ and dead_letters/ are appended")
    parser.add_argument("--subscription", default=names.royalties)
    parser.add_argument("--topic", default=names.topic, help="topic that heartbeats are published to")
    parser.add_argument(
        "--heartbeat-seconds",
        type=float,
        default=1.0,
        help="publish a heartbeat this often so an idle direct-runner source keeps firing panes (0: off)",
    )
    parser.add_argument("--drain-timeout-seconds", type=float, default=120.0)
    defaults = PipelineConfig()
    parser.add_argument("--period-seconds", type=int, default=defaults.period_seconds)
    parser.add_argument("--early-firing-seconds", type=int, default=defaults.early_firing_seconds)
    parser.add_argument("--allowed-lateness-hours", type=int, default=defaults.allowed_lateness_hours)
    parser.add_argument("--dedup-horizon-hours", type=int, default=defaults.dedup_horizon_hours)
    parser.add_argument("--min-stream-ms", type=int, default=defaults.min_stream_ms)
    parser.add_argument("--catalog-dir", default=str(defaults.catalog_dir))
    return parser.parse_known_args(argv)


def _config_from_args(args: argparse.Namespace) -> PipelineConfig:
    return PipelineConfig(
        period_seconds=args.period_seconds,
        early_firing_seconds=args.early_firing_seconds,
        allowed_lateness_hours=args.allowed_lateness_hours,
        dedup_horizon_hours=args.dedup_horizon_hours,
        min_stream_ms=args.min_stream_ms,
        catalog_dir=args.catalog_dir,
    )


def run(argv: Sequence[str] | None = None) -> int:
    """Run the streaming pipeline until SIGINT/SIGTERM, then write out what it read."""
    args, beam_args = _parse_args(argv)
    config = _config_from_args(args)
    options = PipelineOptions(beam_args, streaming=True, save_main_session=False)
    if options.view_as(StandardOptions).runner is None:
        # Named explicitly: the default DirectRunner first tries to download another runner.
        options.view_as(StandardOptions).runner = "BundleBasedDirectRunner"
    if options.view_as(StandardOptions).runner in DIRECT_RUNNERS:
        mend_direct_runner_metrics()
    pipeline = beam.Pipeline(options=options)
    build(
        pipeline,
        ReadFromPubSub(subscription=args.subscription, with_attributes=True),
        parquet_sinks(args.data_dir),
        config,
    )
    result = pipeline.run()
    return supervise(
        result,
        SupervisorSettings(
            topic=args.topic,
            heartbeat_seconds=args.heartbeat_seconds,
            drain_timeout_seconds=args.drain_timeout_seconds,
            early_firing_seconds=config.early_firing_seconds,
            counters_path=None if "://" in args.data_dir else Path(args.data_dir) / COUNTERS_FILE,
        ),
    )
