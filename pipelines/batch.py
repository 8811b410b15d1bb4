"""Batch royalties: one period's final ledger, recomputed exactly from the archive.

Reads the archive's hourly Parquet buckets that can hold the period's plays (and, over
the dedup horizon before it, earlier copies of them), keeps the first received copy of
every ``event_id`` exactly, counts plays and streams per (track, territory, product)
column-wise in Arrow, attributes them with the same transform as the streaming
pipeline, and writes the period's final ledger to
``<data-dir>/ledger_final/period=<start>/ledger.parquet``, replacing an earlier
recompute of the same period whole. The streaming ledger stays the provisional one.

Locally, on Beam's FnApiRunner::

    playledger pipeline batch --data-dir data --period 2026-11-28T07:00:00Z --period-seconds 3600

On Dataflow, with the workers built from this project::

    playledger pipeline batch --data-dir gs://BUCKET/playledger --period 2026-11-28T07:00:00Z \\
        --runner DataflowRunner --project PROJECT --region REGION \\
        --temp_location gs://BUCKET/tmp --setup_file ./pyproject.toml
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.parquetio import ReadAllFromParquetBatched
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.transforms.combiners import TupleCombineFn

from ledger.catalog import Catalog
from ledger.tables import ARCHIVE_DIR, FINAL_LEDGER_DIR, LEDGER_SCHEMA, partition_name
from pipelines.config import PipelineConfig
from pipelines.files import write_parquet_atomically
from pipelines.options import BatchOptions, RoyaltyOptions, options_help
from pipelines.transforms import METRICS_NAMESPACE, AttributeCounts, PlayGroup

__all__ = [
    "FINAL_LEDGER_DIR",
    "FirstCopiesInPeriod",
    "Period",
    "WriteFinalLedger",
    "archive_files",
    "build",
    "run",
]

LOG = logging.getLogger(__name__)

# The columns the recompute needs; the archive holds more.
_COLUMNS = [
    "event_id",
    "track_id",
    "territory",
    "product",
    "ms_played",
    "received_at",
    "message_id",
    "user_id",
    "played_at",
]
# Columns that must agree between two copies of one event_id; received_at and message_id may differ.
_CONTENT_COLUMNS = ["user_id", "track_id", "played_at", "ms_played", "territory", "product"]
_SHARD_CHARS = 1  # event ids are UUIDs: the first hex digit spreads them over 16 shards


@dataclass(frozen=True)
class Period:
    """One accounting period, [start, end) in UTC, aligned to the pipeline's fixed windows."""

    start: dt.datetime
    end: dt.datetime

    @classmethod
    def starting(cls, text: str, period_seconds: int) -> Period:
        """Parse an RFC 3339 start; ``ValueError`` unless it starts a period of ``period_seconds``."""
        try:
            start = dt.datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(
                f"--period must be an RFC 3339 time like 2026-11-28T07:00:00Z, got {text!r}"
            ) from None
        if start.tzinfo is None:
            raise ValueError(f"--period needs a UTC offset: {text!r}")
        start = start.astimezone(dt.UTC)
        if int(start.timestamp()) % period_seconds or start.microsecond:
            raise ValueError(
                f"{text} does not start a period of {period_seconds} s (periods start at the epoch)"
            )
        return cls(start, start + dt.timedelta(seconds=period_seconds))


def archive_files(data_dir: str, period: Period, horizon: dt.timedelta) -> list[str]:
    """Archive files that can hold a copy of a play received in ``period`` or within ``horizon`` before.

    Buckets are hours of receive time; a row that arrived after its hour was closed sits
    in a later bucket, so every bucket from the horizon on is read and rows are filtered
    by ``received_at``.
    """
    base = f"{data_dir.rstrip('/')}/{ARCHIVE_DIR}"
    first = partition_name("hour", (period.start - horizon).replace(minute=0, second=0, microsecond=0))
    matches = FileSystems.match([f"{base}/hour=*/*.parquet"])[0].metadata_list
    files = []
    for metadata in matches:
        folder = metadata.path.rstrip("/").split("/")[-2]
        if folder >= first:  # hour=YYYYMMDDTHHMMSSZ sorts as time
            files.append(metadata.path)
    return sorted(files)


def _counter(name: str) -> Any:
    return Metrics.counter(METRICS_NAMESPACE, name)


def _to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue())


def _from_ipc(payloads: Iterable[bytes]) -> pa.Table:
    return pa.concat_tables(pa.ipc.open_stream(payload).read_all() for payload in payloads)


class _ShardFn(beam.DoFn):
    """A table of archived rows → ``(shard, rows of that shard)``, so each shard sees all copies of an id.

    Rows cross the shuffle as Arrow IPC bytes: compact, and cheap to write and read.
    """

    def __init__(self) -> None:
        self.read = _counter("archived_rows_read")

    def process(self, table: pa.Table) -> Iterator[tuple[str, bytes]]:
        table = table.select(_COLUMNS)
        self.read.inc(table.num_rows)
        shards = pc.utf8_lower(pc.utf8_slice_codeunits(table["event_id"], 0, _SHARD_CHARS))
        for shard in pc.unique(shards).to_pylist():
            yield shard, _to_ipc(table.filter(pc.equal(shards, shard)))


class _FirstCopiesFn(beam.DoFn):
    """All rows of one shard → the first received copy of each event id, if it falls in the period."""

    def __init__(self, period: Period, min_stream_ms: int) -> None:
        self.period = period
        self.min_stream_ms = min_stream_ms
        self.unique = _counter("events_unique")
        self.duplicates = _counter("events_duplicate")
        self.conflicts = _counter("events_conflict")

    def process(self, shard_payloads: tuple[str, Iterable[bytes]]) -> Iterator[pa.Table]:
        _, payloads = shard_payloads
        rows = _from_ipc(payloads)
        if rows.num_rows == 0:
            return
        # Ids as small integers, so the sort compares numbers, not 36-character strings.
        id_numbers = pc.dictionary_encode(rows["event_id"]).combine_chunks().indices
        order = pc.sort_indices(
            pa.table(
                {"id": id_numbers, "received_at": rows["received_at"], "message_id": rows["message_id"]}
            ),
            sort_keys=[("id", "ascending"), ("received_at", "ascending"), ("message_id", "ascending")],
        )
        rows = rows.take(order)
        ids = id_numbers.take(order)
        # Sorted by id: a row starts a new id where it differs from the row before it.
        first = pa.concat_arrays([pa.array([True]), pc.not_equal(ids.slice(1), ids.slice(0, len(ids) - 1))])
        first_copies = rows.filter(first)
        if first_copies.num_rows < rows.num_rows:
            self._count_copies(rows, first)
        received = first_copies["received_at"]
        start = pa.scalar(self.period.start, type=received.type)
        end = pa.scalar(self.period.end, type=received.type)
        in_period = first_copies.filter(pc.and_(pc.greater_equal(received, start), pc.less(received, end)))
        self.unique.inc(in_period.num_rows)
        if in_period.num_rows:
            yield in_period

    def _count_copies(self, rows: pa.Table, first: pa.Array) -> None:
        # Each row's copy number within its id: the first copies are the group heads.
        group = pc.subtract(pc.cumulative_sum(pc.cast(first, pa.int64())), 1)
        heads = rows.filter(first)
        later = pc.invert(first)
        later_rows = rows.filter(later)
        later_heads = heads.take(group.filter(later))
        # A later copy whose content differs from its first is a conflict: counted once
        # (the first copy counts), never merged.
        same = pa.array([True] * later_rows.num_rows)
        for column in _CONTENT_COLUMNS:
            same = pc.and_(same, pc.equal(later_rows[column], later_heads[column]))
        self.duplicates.inc(later_rows.num_rows)
        self.conflicts.inc(later_rows.num_rows - pc.sum(same).as_py())


class _CountGroupsFn(beam.DoFn):
    """First copies → ``((track_id, territory, product), (plays, streams))`` counted column-wise."""

    def __init__(self, min_stream_ms: int) -> None:
        self.min_stream_ms = min_stream_ms

    def process(self, plays: pa.Table) -> Iterator[tuple[PlayGroup, tuple[int, int]]]:
        is_stream = pc.cast(pc.greater_equal(plays["ms_played"], self.min_stream_ms), pa.int64())
        counted = (
            plays.select(["track_id", "territory", "product"])
            .append_column("is_stream", is_stream)
            .group_by(["track_id", "territory", "product"])
            .aggregate([("is_stream", "count"), ("is_stream", "sum")])
        )
        for row in counted.to_pylist():
            yield (
                (row["track_id"], row["territory"], row["product"]),
                (row["is_stream_count"], row["is_stream_sum"]),
            )


class FirstCopiesInPeriod(beam.PTransform):
    """Archived row tables → plays counted per group, each event id counted once, exactly.

    The first received copy of an ``event_id`` counts (ties broken by message id), and
    only if it was received in ``period``; later copies are duplicates, and a later copy
    with different content is also a conflict.
    """

    def __init__(self, period: Period, min_stream_ms: int) -> None:
        super().__init__()
        if min_stream_ms < 0:
            raise ValueError("min_stream_ms must not be negative")
        self.period = period
        self.min_stream_ms = min_stream_ms

    def expand(self, tables: beam.PCollection) -> beam.PCollection:
        return (
            tables
            | "ShardByEventId" >> beam.ParDo(_ShardFn())
            | "GatherShard" >> beam.GroupByKey()
            | "FirstCopies" >> beam.ParDo(_FirstCopiesFn(self.period, self.min_stream_ms))
            | "CountPerGroup" >> beam.ParDo(_CountGroupsFn(self.min_stream_ms))
            | "SumGroups" >> beam.CombinePerKey(TupleCombineFn(sum, sum))
        )


class _WritePeriodFn(beam.DoFn):
    def __init__(self, table_dir: str, temp_dir: str) -> None:
        self.table_dir = table_dir
        self.temp_dir = temp_dir
        self.rows = _counter("ledger_final_rows_written")

    def process(self, period_rows: tuple[str, Iterable[dict[str, Any]]]) -> Iterator[str]:
        partition, rows = period_rows
        ordered = sorted(
            rows, key=lambda r: (r["rights_holder_id"], r["track_id"], r["territory"], r["product"])
        )
        # One file per period under a fixed name: a recompute replaces it whole, atomically.
        path = write_parquet_atomically(
            ordered, LEDGER_SCHEMA, f"{self.table_dir}/{partition}", self.temp_dir, "ledger"
        )
        self.rows.inc(len(ordered))
        yield path


class WriteFinalLedger(beam.PTransform):
    """A period's ledger rows → ``<table_dir>/period=<start>/ledger.parquet``, replaced whole."""

    def __init__(self, table_dir: str, temp_dir: str) -> None:
        super().__init__()
        self.table_dir = table_dir.rstrip("/")
        self.temp_dir = temp_dir.rstrip("/")

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        return (
            rows
            | "KeyByPeriod" >> beam.Map(lambda row: (partition_name("period", row["period_start"]), row))
            | "GatherPeriod" >> beam.GroupByKey()
            | "WriteFile" >> beam.ParDo(_WritePeriodFn(self.table_dir, self.temp_dir))
        )


def build(
    p: beam.Pipeline,
    source: beam.PTransform,
    sink: beam.PTransform | None,
    config: PipelineConfig,
    period: Period,
) -> beam.PCollection:
    """Wire the batch recompute onto ``p``: ``source`` yields Arrow tables of archived rows."""
    catalog = Catalog.load(config.catalog_dir)
    tables = p | "ReadArchive" >> source
    counts = tables | "FirstCopiesInPeriod" >> FirstCopiesInPeriod(period, config.min_stream_ms)
    catalog_view = beam.pvalue.AsSingleton(p | "LoadCatalog" >> beam.Create([catalog]))
    ledger_rows = counts | "AttributeCounts" >> AttributeCounts(catalog_view, (period.start, period.end))
    if sink is not None:
        _ = ledger_rows | "WriteFinalLedger" >> sink
    return ledger_rows


class ReadArchiveFiles(beam.PTransform):
    """The given archive files as Arrow tables (one per row group)."""

    def __init__(self, files: Sequence[str]) -> None:
        super().__init__()
        self.files = list(files)

    def expand(self, p: beam.pvalue.PBegin) -> beam.PCollection:
        return (
            p
            | "ListFiles" >> beam.Create(self.files)
            | "ReadParquet" >> ReadAllFromParquetBatched(columns=_COLUMNS)
        )


def run(argv: Sequence[str] | None = None) -> int:
    """Recompute one period's final ledger from the archive; 0 on success."""
    argv = list(argv or [])
    if "-h" in argv or "--help" in argv:
        print(options_help("playledger pipeline batch", __doc__.split("\n")[0], RoyaltyOptions, BatchOptions))
        return 0
    options = PipelineOptions(argv, save_main_session=False)
    config = options.view_as(RoyaltyOptions).config()
    data_dir: str = options.view_as(RoyaltyOptions).data_dir
    if not options.view_as(BatchOptions).period:
        raise ValueError("--period is required, e.g. --period 2026-11-28T07:00:00Z")
    period = Period.starting(options.view_as(BatchOptions).period, config.period_seconds)
    if options.view_as(StandardOptions).runner is None:
        # Named explicitly: the default DirectRunner first tries to download another runner.
        options.view_as(StandardOptions).runner = "FnApiRunner"
    files = archive_files(data_dir, period, dt.timedelta(hours=config.dedup_horizon_hours))
    LOG.info("recomputing %s … %s from %d archive files", period.start, period.end, len(files))
    temp = f"{data_dir.rstrip('/')}/.tmp/{FINAL_LEDGER_DIR}"
    pipeline = beam.Pipeline(options=options)
    build(
        pipeline,
        ReadArchiveFiles(files),
        WriteFinalLedger(f"{data_dir.rstrip('/')}/{FINAL_LEDGER_DIR}", temp),
        config,
        period,
    )
    if not files:
        LOG.warning("no archive files for %s: nothing to recompute", period.start)
    pipeline.run().wait_until_finish()
    return 0
