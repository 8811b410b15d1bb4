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
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.io.gcp.pubsub import ReadFromPubSub
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.runner import PipelineResult
from apache_beam.utils.timestamp import Duration

from ingest.pubsub import PubSubNames
from ledger.catalog import Catalog
from ledger.tables import DEAD_LETTER_SCHEMA, DEAD_LETTERS_DIR, LEDGER_DIR, LEDGER_SCHEMA
from pipelines.config import PipelineConfig
from pipelines.direct_runner import DIRECT_RUNNERS, mend_direct_runner_metrics
from pipelines.transforms import (
    METRICS_NAMESPACE,
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
    "counters",
    "load_counters",
    "parquet_sinks",
    "run",
    "supervise",
]

LOG = logging.getLogger(__name__)

COUNTERS_FILE = "metrics/pipeline_counters.json"


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


def counters(result: PipelineResult) -> dict[str, int]:
    """The pipeline's committed counters, summed over steps."""
    totals: dict[str, int] = {}
    query = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
    for counter in query["counters"]:
        value = counter.attempted if counter.committed is None else counter.committed
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + int(value or 0)
    return totals


def unwritten(totals: dict[str, int]) -> tuple[int, int]:
    """(attributed parts not yet in the ledger, dead letters not yet written)."""
    parts = totals.get("attributed_parts", 0) - totals.get("ledger_plays_written", 0)
    dead = (
        totals.get("messages_undecodable", 0)
        + totals.get("events_invalid", 0)
        - totals.get("dead_letters_rows_written", 0)
    )
    return parts, dead


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


class _Heartbeat(threading.Thread):
    """Publishes an empty heartbeat message every ``interval`` seconds until stopped."""

    def __init__(self, topic: str, interval: float) -> None:
        super().__init__(name="heartbeat", daemon=True)
        self.topic = topic
        self.interval = interval
        self.stopped = threading.Event()

    def run(self) -> None:
        import google.cloud.pubsub_v1 as pubsub_v1

        from schemas.codec import ATTR_KIND, KIND_HEARTBEAT

        publisher = pubsub_v1.PublisherClient()
        try:
            while not self.stopped.wait(self.interval):
                try:
                    publisher.publish(self.topic, b"", **{ATTR_KIND: KIND_HEARTBEAT}).result(timeout=10)
                except Exception as error:  # a missed heartbeat only delays panes
                    LOG.warning("heartbeat not published: %s", error)
        finally:
            publisher.stop()


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
    counters_path = None if "://" in args.data_dir else Path(args.data_dir) / COUNTERS_FILE
    return supervise(
        result,
        args.heartbeat_seconds,
        args.topic,
        args.drain_timeout_seconds,
        config.early_firing_seconds,
        counters_path,
    )


def supervise(
    result: PipelineResult,
    heartbeat_seconds: float,
    topic: str,
    drain_timeout_seconds: float,
    early_firing_seconds: int,
    counters_path: Path | None = None,
) -> int:
    """Watch a running pipeline; on SIGINT/SIGTERM write out what it read, then cancel it.

    The direct runner cannot drain and leaves a failed pipeline RUNNING, so a thread
    waits on it to see a failure, and a stop waits until every part that was attributed
    is in the ledger (counters), unchanged over a few trigger periods. While it runs,
    the counters are saved to ``counters_path`` every second for local tools to read.
    """
    stop = threading.Event()
    failure: list[BaseException] = []

    def watch() -> None:
        try:
            result.wait_until_finish()
        except BaseException as error:
            failure.append(error)
        stop.set()

    def on_signal(signum: int, _frame: Any) -> None:
        LOG.info("signal %s: writing out what was read, then stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    heartbeat = _Heartbeat(topic, heartbeat_seconds) if heartbeat_seconds > 0 else None
    if heartbeat is not None:
        heartbeat.start()
    threading.Thread(target=watch, name="pipeline-watch", daemon=True).start()
    if counters_path is not None:
        threading.Thread(
            target=_save_counters_until, args=(result, counters_path, stop), name="counters", daemon=True
        ).start()
    LOG.info("pipeline running")
    stop.wait()
    if failure:
        LOG.error("pipeline failed: %s", failure[0])
        if heartbeat is not None:
            heartbeat.stopped.set()
        return 1
    code = _drain(result, drain_timeout_seconds, early_firing_seconds, failure)
    if counters_path is not None:
        save_counters(counters(result), counters_path)
    # Cancel while heartbeats still flow: an idle pull would hold the cancel for 30 s.
    try:
        result.cancel()
    except Exception as error:
        LOG.warning("cancel: %s", error)
    if heartbeat is not None:
        heartbeat.stopped.set()
    return code


def save_counters(totals: dict[str, int], path: Path) -> None:
    """Write counters as JSON atomically (temp file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_suffix(".tmp")
    temp.write_text(json.dumps(totals, sort_keys=True, indent=1))
    os.replace(temp, path)


def load_counters(data_dir: Path) -> dict[str, int]:
    """The counters a local pipeline last saved under ``data_dir`` (empty before the first save)."""
    try:
        loaded: dict[str, int] = json.loads((data_dir / COUNTERS_FILE).read_text())
    except FileNotFoundError:
        return {}
    return loaded


def _save_counters_until(result: PipelineResult, path: Path, stop: threading.Event) -> None:
    while not stop.wait(1.0):
        try:
            save_counters(counters(result), path)
        except Exception as error:  # counters are a convenience; the pipeline goes on
            LOG.warning("counters not saved: %s", error)


def _drain(
    result: PipelineResult, timeout: float, early_firing_seconds: int, failure: list[BaseException]
) -> int:
    deadline = time.monotonic() + timeout
    settle = max(3.0, 2.5 * early_firing_seconds)
    previous: dict[str, int] | None = None
    stable_since = time.monotonic()
    while time.monotonic() < deadline and not failure:
        # Heartbeats keep counting while idle; everything else settles once drained.
        totals = {name: value for name, value in counters(result).items() if name != "heartbeats"}
        if totals != previous:
            previous, stable_since = totals, time.monotonic()
        elif unwritten(totals) == (0, 0) and time.monotonic() - stable_since >= settle:
            LOG.info("drained: %s", totals)
            return 0
        time.sleep(0.5)
    if failure:
        LOG.error("pipeline failed while draining: %s", failure[0])
        return 1
    parts, dead = unwritten(previous or {})
    LOG.error("stopped before everything read was written: %d ledger parts, %d dead letters", parts, dead)
    return 2
