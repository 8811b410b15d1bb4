"""Batch royalties: one period's final ledger, recomputed exactly from the archive.

Reads the archive's hourly Parquet buckets that can hold the period's plays (and, over
the dedup horizon before it, earlier copies of them) as Arrow tables, keys every row by
the value of its ``event_id`` UUID (so ids that differ only in letter case are one
event), and shuffles the rows into shards by that key, as compressed Arrow IPC. Each
shard keeps the first received copy of every event exactly (ties broken by message id),
counts duplicates and conflicts, and counts plays and streams per (track, territory,
product) column-wise; one table of counts per shard is summed by a combine of Arrow
tables. The sums are attributed with the same transform as the streaming pipeline, and
the period's final ledger is written to
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
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.parquetio import ReadAllFromParquetBatched
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from ledger.catalog import Catalog
from ledger.tables import ARCHIVE_DIR, FINAL_LEDGER_DIR, LEDGER_SCHEMA, partition_name
from pipelines.config import PipelineConfig
from pipelines.files import write_parquet_atomically
from pipelines.options import BatchOptions, RoyaltyOptions, options_help
from pipelines.play_batches import event_keys
from pipelines.transforms import METRICS_NAMESPACE, AttributeCounts, PlayCounts

__all__ = [
    "DEFAULT_SHARDS",
    "FINAL_LEDGER_DIR",
    "FirstCopiesInPeriod",
    "Period",
    "ReadArchiveFiles",
    "SumCountTables",
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
# What crosses the shuffle: every column but event_id, which travels as its key.
_SHUFFLED_COLUMNS = [name for name in _COLUMNS if name != "event_id"]
_KEY_COLUMN = "event_key"
_EVENT_KEY = pa.binary(16)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: spreads similar keys over shards
# LZ4: a third fewer bytes through the shuffle, for less CPU than the runner spends copying them.
_IPC_OPTIONS = pa.ipc.IpcWriteOptions(compression="lz4")
_GROUP_COLUMNS = ["track_id", "territory", "product"]
_COUNTS_SCHEMA = pa.schema(
    [
        pa.field("track_id", pa.string()),
        pa.field("territory", pa.string()),
        pa.field("product", pa.string()),
        pa.field("plays", pa.int64()),
        pa.field("streams", pa.int64()),
    ]
)
DEFAULT_SHARDS = 64
"""Shards of the event-id shuffle: each is de-duplicated alone, so each hash table stays small."""


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


def _event_keys(event_ids: pa.ChunkedArray) -> pa.Array:
    """Canonical UUID strings → their 16 bytes as a fixed-width column, as the streaming dedup keys them."""
    keys = event_keys(event_ids)
    return pa.FixedSizeBinaryArray.from_buffers(_EVENT_KEY, len(keys), [None, pa.py_buffer(keys)])


def _shard_numbers(keys: pa.Array, shards: int) -> np.ndarray:
    """Each key's shard in ``[0, shards)``: equal keys always share one."""
    halves = np.frombuffer(keys.buffers()[1], np.uint64, len(keys) * 2, keys.offset * 16).reshape(-1, 2)
    # Both halves: v1 and v7 UUIDs keep their varying bits in different ones.
    mixed = halves[:, 0] ^ halves[:, 1]
    mixed *= _GOLDEN
    return ((mixed >> np.uint64(32)) % np.uint64(shards)).astype(np.uint16)


def _to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=_IPC_OPTIONS) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue())


def _from_ipc(payloads: Iterable[bytes]) -> pa.Table:
    return pa.concat_tables(pa.ipc.open_stream(payload).read_all() for payload in payloads)


class _ShardFn(beam.DoFn):
    """A table of archived rows → ``(shard, rows of that shard)``, so each shard sees all copies of an id.

    The string ``event_id`` is replaced by its 16 UUID bytes (``ValueError`` if an id is
    no canonical UUID: the archive holds validated events only, so that means damage),
    and rows cross the shuffle as Arrow IPC bytes: compact, and cheap to write and read.
    """

    def __init__(self, shards: int) -> None:
        self.shards = shards
        self.read = _counter("archived_rows_read")

    def process(self, table: pa.Table) -> Iterator[tuple[int, bytes]]:
        self.read.inc(table.num_rows)
        if table.num_rows == 0:
            return
        keys = _event_keys(table["event_id"])
        rows = table.select(_SHUFFLED_COLUMNS).append_column(_KEY_COLUMN, keys)
        shard = _shard_numbers(keys, self.shards)
        order = np.argsort(shard, kind="stable")
        ends = np.cumsum(np.bincount(shard, minlength=self.shards))
        rows = rows.take(order)
        start = 0
        for number, end in enumerate(ends.tolist()):
            if end > start:
                yield number, _to_ipc(rows.slice(start, end - start))
            start = end


class _CountFirstCopiesFn(beam.DoFn):
    """All rows of one shard → plays and streams per group of the first copies received in the period."""

    def __init__(self, period: Period, min_stream_ms: int) -> None:
        self.period = period
        self.min_stream_ms = min_stream_ms
        self.unique = _counter("events_unique")
        self.duplicates = _counter("events_duplicate")
        self.conflicts = _counter("events_conflict")

    def process(self, shard_payloads: tuple[int, Iterable[bytes]]) -> Iterator[pa.Table]:
        _, payloads = shard_payloads
        rows = _from_ipc(payloads)
        if rows.num_rows == 0:
            return
        received = rows["received_at"]
        start = pa.scalar(self.period.start, type=received.type)
        end = pa.scalar(self.period.end, type=received.type)
        in_period = pc.and_(pc.greater_equal(received, start), pc.less(received, end))
        counted = self._first_copies(rows) & in_period.fill_null(False).to_numpy()
        self.unique.inc(int(np.count_nonzero(counted)))
        yield _count_plays(rows, counted, self.min_stream_ms)

    def _first_copies(self, rows: pa.Table) -> np.ndarray:
        """Whether each row is the first received copy of its event id (ties broken by message id)."""
        # Keys as small integers by hashing: most ids have one copy and need no sort at all.
        id_numbers = pc.dictionary_encode(rows[_KEY_COLUMN].combine_chunks()).indices.to_numpy()
        first = np.bincount(id_numbers)[id_numbers] == 1
        repeated = np.flatnonzero(~first)
        if len(repeated) == 0:
            return first
        ids = id_numbers[repeated]
        copies = rows.take(repeated)
        order = pc.sort_indices(
            pa.table({"id": ids, "received_at": copies["received_at"], "message_id": copies["message_id"]}),
            sort_keys=[("id", "ascending"), ("received_at", "ascending"), ("message_id", "ascending")],
        ).to_numpy()
        copies = copies.take(order)
        ids = ids[order]
        # Sorted by id: a row starts a new id where it differs from the row before it.
        head = np.empty(len(ids), dtype=bool)
        head[0] = True
        np.not_equal(ids[1:], ids[:-1], out=head[1:])
        first[repeated[order[head]]] = True
        self._count_later_copies(copies, head)
        return first

    def _count_later_copies(self, copies: pa.Table, head: np.ndarray) -> None:
        """Copies sorted by id, first copy first → duplicates, and conflicts among them."""
        later = ~head
        later_copies = copies.filter(pa.array(later))
        # Each later copy against its id's first copy: a difference in content is a
        # conflict, counted once (the first copy counts), never merged.
        their_heads = copies.take(np.flatnonzero(head)[np.cumsum(head)[later] - 1])
        same = pa.array(np.ones(later_copies.num_rows, dtype=bool))
        for column in _CONTENT_COLUMNS:
            same = pc.and_(same, pc.equal(later_copies[column], their_heads[column]))
        self.duplicates.inc(later_copies.num_rows)
        self.conflicts.inc(later_copies.num_rows - pc.sum(same).as_py())


def _count_plays(rows: pa.Table, counted: np.ndarray, min_stream_ms: int) -> pa.Table:
    """Plays and streams per (track_id, territory, product) among the rows marked ``counted``."""
    is_stream = pc.greater_equal(rows["ms_played"], min_stream_ms).fill_null(False).to_numpy()
    summed = (
        rows.select(_GROUP_COLUMNS)
        .append_column("plays", pa.array(counted.astype(np.int64)))
        .append_column("streams", pa.array((counted & is_stream).astype(np.int64)))
        .group_by(_GROUP_COLUMNS)
        .aggregate([("plays", "sum"), ("streams", "sum")])
    )
    counts = pa.table(
        [*(summed[name] for name in _GROUP_COLUMNS), summed["plays_sum"], summed["streams_sum"]],
        schema=_COUNTS_SCHEMA,
    )
    return counts.filter(pc.greater(counts["plays"], 0))


class SumCountTables(beam.CombineFn):
    """Tables of ``plays`` and ``streams`` per group → one table of their sums per group.

    One element per shard instead of one per group: the sums are Arrow group-bys.
    """

    def create_accumulator(self) -> list[pa.Table]:
        return []

    def add_input(self, accumulator: list[pa.Table], counts: pa.Table) -> list[pa.Table]:
        accumulator.append(counts)
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[list[pa.Table]]) -> list[pa.Table]:
        tables = [table for accumulator in accumulators for table in accumulator]
        return [_sum_counts(tables)] if tables else []

    def compact(self, accumulator: list[pa.Table]) -> list[pa.Table]:
        return [_sum_counts(accumulator)] if len(accumulator) > 1 else accumulator

    def extract_output(self, accumulator: list[pa.Table]) -> pa.Table:
        return _sum_counts(accumulator)


def _sum_counts(tables: Sequence[pa.Table]) -> pa.Table:
    if not tables:
        return _COUNTS_SCHEMA.empty_table()
    summed = (
        pa.concat_tables(tables).group_by(_GROUP_COLUMNS).aggregate([("plays", "sum"), ("streams", "sum")])
    )
    return pa.table(
        [*(summed[name] for name in _GROUP_COLUMNS), summed["plays_sum"], summed["streams_sum"]],
        schema=_COUNTS_SCHEMA,
    )


def _play_counts(counts: pa.Table) -> PlayCounts:
    columns = [counts[name].to_pylist() for name in _COUNTS_SCHEMA.names]
    return {
        (track_id, territory, product): (plays, streams)
        for track_id, territory, product, plays, streams in zip(*columns, strict=True)
    }


class FirstCopiesInPeriod(beam.PTransform):
    """Archived row tables → plays counted per group, each event id counted once, exactly.

    The first received copy of an ``event_id`` counts (ids that differ only in letter
    case are one event; ties broken by message id), and only if it was received in
    ``period``; later copies are duplicates, and a later copy with different content is
    also a conflict. Rows are shuffled into ``shards`` by event id; the counts of every
    shard are summed into one ``PlayCounts``: ``(plays, streams)`` per (track_id, territory, product).
    """

    def __init__(self, period: Period, min_stream_ms: int, shards: int = DEFAULT_SHARDS) -> None:
        super().__init__()
        if min_stream_ms < 0:
            raise ValueError("min_stream_ms must not be negative")
        if not 1 <= shards <= 65_536:
            raise ValueError("shards must be between 1 and 65,536")
        self.period = period
        self.min_stream_ms = min_stream_ms
        self.shards = shards

    def expand(self, tables: beam.PCollection) -> beam.PCollection:
        return (
            tables
            | "ShardByEventId" >> beam.ParDo(_ShardFn(self.shards))
            | "GatherShard" >> beam.GroupByKey()
            | "CountFirstCopies"
            >> beam.ParDo(_CountFirstCopiesFn(self.period, self.min_stream_ms)).with_output_types(pa.Table)
            | "SumCounts" >> beam.CombineGlobally(SumCountTables()).without_defaults()
            | "AsPlayCounts" >> beam.Map(_play_counts)
        )


def _tables_by_period(rows: pa.Table) -> Iterator[tuple[str, bytes]]:
    """A table of ledger rows → ``(period partition, its rows as Arrow IPC)`` per period among them."""
    starts = rows["period_start"]
    for start in pc.unique(starts).to_pylist():
        yield partition_name("period", start), _to_ipc(rows.filter(pc.equal(starts, start)))


class _WritePeriodFn(beam.DoFn):
    def __init__(self, table_dir: str, temp_dir: str) -> None:
        self.table_dir = table_dir
        self.temp_dir = temp_dir
        self.rows = _counter("ledger_final_rows_written")

    def process(self, period_tables: tuple[str, Iterable[bytes]]) -> Iterator[str]:
        partition, payloads = period_tables
        ordered = _from_ipc(payloads).sort_by(
            [(name, "ascending") for name in ("rights_holder_id", "track_id", "territory", "product")]
        )
        # One file per period under a fixed name: a recompute replaces it whole, atomically.
        path = write_parquet_atomically(
            ordered, LEDGER_SCHEMA, f"{self.table_dir}/{partition}", self.temp_dir, "ledger"
        )
        self.rows.inc(ordered.num_rows)
        yield path


class WriteFinalLedger(beam.PTransform):
    """A period's ledger rows → ``<table_dir>/period=<start>/ledger.parquet``, replaced whole.

    Elements are Arrow tables of rows (``AttributeCounts`` gives one per pane).
    """

    def __init__(self, table_dir: str, temp_dir: str) -> None:
        super().__init__()
        self.table_dir = table_dir.rstrip("/")
        self.temp_dir = temp_dir.rstrip("/")

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        return (
            rows
            | "TablePerPeriod" >> beam.FlatMap(_tables_by_period)
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
            | "ReadParquet" >> ReadAllFromParquetBatched(columns=_COLUMNS).with_output_types(pa.Table)
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
