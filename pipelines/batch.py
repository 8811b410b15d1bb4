"""Batch royalties: one period's final ledger, recomputed exactly from the archive.

Reads the archive's hourly Parquet buckets that can hold the period's plays (and, over
the dedup horizon before it, earlier copies of them) twice, as Arrow tables. Later
buckets hold the period's plays only if they were archived late: of those, only row
groups whose ``received_at`` statistics start before the period's end are read.

1. The event ids alone. Each id's lower-case spelling (ids that differ only in letter
   case are one event) is hashed to 64 bits; the hashes are shuffled into shards, and
   every hash seen more than once sets its bit in a bitmap, a side input of step 2.
2. The rows. An id whose bit is clear occurs once in everything read: its row is the
   first and only copy, counted where it was read if it was received in the period. Only
   the other rows (every copy of a repeated id, and the few whose bit another id set) are
   keyed by their 16 UUID bytes and shuffled, as Arrow IPC, into shards that keep the
   first received copy of each event exactly (ties broken by message id) and count
   duplicates and conflicts.

So the shuffles carry 8 bytes a row plus the rows of repeated ids, not every row. Plays
and streams per (track, territory, product) are counted column-wise, one table per
archive table and per shard, and summed by a combine of Arrow tables. The sums are
attributed with the same transform as the streaming pipeline, and the period's final
ledger is written to ``<data-dir>/ledger_final/period=<start>/ledger.parquet``,
replacing an earlier recompute of the same period whole. The streaming ledger stays the
provisional one.

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
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from apache_beam import pvalue
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.runner import PipelineResult

from ingest.archive_buckets import CLOSED_MARKER, floor_hour
from ledger.catalog import Catalog
from ledger.tables import ARCHIVE_DIR, ARCHIVE_SCHEMA, FINAL_LEDGER_DIR, LEDGER_SCHEMA, partition_name
from pipelines.config import PipelineConfig
from pipelines.files import write_parquet_atomically
from pipelines.options import BatchOptions, RoyaltyOptions, options_help
from pipelines.play_batches import CANONICAL_UUID_REGEX, ArrowTableCoder, event_keys, plain_values, shard_runs
from pipelines.supervisor import counters
from pipelines.transforms import (
    METRICS_NAMESPACE,
    PLAY_COUNTS_SCHEMA,
    PLAY_GROUP_COLUMNS,
    AttributeCounts,
    count_play_table,
    play_counts_of,
)

__all__ = [
    "DEFAULT_CANDIDATE_BITS",
    "DEFAULT_SHARDS",
    "FINAL_LEDGER_DIR",
    "ArchiveReads",
    "FirstCopiesInPeriod",
    "Period",
    "ReadArchiveFiles",
    "SumCountTables",
    "WriteFinalLedger",
    "archive_files",
    "batch_shards",
    "build",
    "open_hours",
    "period_hours",
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
# Read as Parquet stores them, dictionary-encoded: no string a row to build, and grouped by code.
_DICTIONARY_COLUMNS = PLAY_GROUP_COLUMNS
# Hex digits and dashes, all a canonical UUID holds, have the 0x20 bit set in lower case only.
_LOWER_CASE = np.uint64(0x2020202020202020)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
DEFAULT_SHARDS = 16
"""Fewest shards of each event-id shuffle: each is de-duplicated alone, so each sort stays small."""


def batch_shards(config: PipelineConfig) -> int:
    """Shards of the recompute's shuffles: ``--dedup-shards`` (64 on Dataflow), at least ``DEFAULT_SHARDS``.

    On Dataflow a shard is a unit of parallel work and holds its share of the period's
    id hashes in memory, so the batch spreads as wide as the streaming state; locally,
    where the streaming job keeps one shard, smaller sorts still pay.
    """
    return max(DEFAULT_SHARDS, config.dedup_shards)


DEFAULT_CANDIDATE_BITS = 27
"""The repeated-id bitmap has 2**27 bits (16 MiB): 500,000 repeated ids mark 0.4 % of the others."""


class ArchiveReads(StrEnum):
    """The two reads of the archive that ``FirstCopiesInPeriod`` takes, as a dict of PCollections."""

    EVENT_IDS = "event_ids"
    """Tables of the ``event_id`` column alone."""
    ROWS = "rows"
    """Tables of every column the recompute needs."""


class _SplitOutput(StrEnum):
    """Branches of ``_SplitCandidatesFn``."""

    COUNTS = "counts"
    CANDIDATES = "candidates"


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
    in a later bucket, so every bucket from the horizon on is listed and rows are filtered
    by ``received_at``. ``ReadArchiveFiles`` skips, by their statistics, the row groups of
    later buckets that hold no row received before the period's end.
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


def period_hours(period: Period) -> list[str]:
    """The archive's hour folders that receive the period's plays (``hour=YYYYMMDDTHHMMSSZ``)."""
    hours = []
    hour = floor_hour(period.start)
    while hour < period.end:
        hours.append(partition_name("hour", hour))
        hour += dt.timedelta(hours=1)
    return hours


def open_hours(data_dir: str, period: Period) -> list[str]:
    """The period's hour folders without their ``_CLOSED`` marker: plays may still be archived into them."""
    base = f"{data_dir.rstrip('/')}/{ARCHIVE_DIR}"
    return [
        folder
        for folder in period_hours(period)
        if not FileSystems.exists(f"{base}/{folder}/{CLOSED_MARKER}")
    ]


def _counter(name: str) -> Any:
    return Metrics.counter(METRICS_NAMESPACE, name)


def _one_chunk(column: pa.ChunkedArray) -> pa.Array:
    """The column as one array; a single chunk as it is (``combine_chunks`` would copy it)."""
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def _id_hashes(event_ids: pa.ChunkedArray) -> np.ndarray:
    """A 64-bit hash (``uint64``) of each id's lower-case spelling: one for both spellings of a UUID.

    Raises ``ValueError`` unless every id is 36 characters long, as a canonical UUID is.
    """
    ids = _one_chunk(event_ids)
    count = len(ids)
    if count == 0:
        return np.empty(0, np.uint64)
    offsets = np.frombuffer(ids.buffers()[1], np.int32, count + 1, ids.offset * 4)
    if ids.null_count or not (np.diff(offsets) == 36).all():
        raise ValueError("event ids must be canonical UUIDs")
    # 36 bytes an id: four 8-byte words and a 4-byte tail, read where Arrow keeps them.
    data, start = ids.buffers()[2], int(offsets[0])
    words = np.ndarray((count, 4), np.uint64, buffer=data, offset=start, strides=(36, 8))
    tail = np.ndarray((count,), np.uint32, buffer=data, offset=start + 32, strides=(36,))
    hashes = (tail | np.uint32(0x20202020)).astype(np.uint64)
    for column in range(4):
        hashes ^= words[:, column] | _LOWER_CASE
        hashes *= _GOLDEN
        hashes ^= hashes >> np.uint64(29)
    # murmur3's finalizer: every bit of the id reaches every bit of the hash, which picks
    # the shard (low bits) and the bitmap bit (high bits).
    hashes ^= hashes >> np.uint64(33)
    hashes *= np.uint64(0xFF51AFD7ED558CCD)
    hashes ^= hashes >> np.uint64(33)
    hashes *= np.uint64(0xC4CEB9FE1A85EC53)
    hashes ^= hashes >> np.uint64(33)
    return hashes


def _shard_of(hashes: np.ndarray, shards: int) -> np.ndarray:
    """Each id hash's shard in ``[0, shards)``: copies of one event always share one."""
    shard: np.ndarray = (hashes % np.uint64(shards)).astype(np.uint16)
    return shard


def _bit_numbers(hashes: np.ndarray, bits: int) -> np.ndarray:
    bit_numbers: np.ndarray = hashes >> np.uint64(64 - bits)
    return bit_numbers


def _marked(hashes: np.ndarray, bitmap: bytes, bits: int) -> np.ndarray:
    """Whether each hash's bit is set in ``bitmap``."""
    numbers = _bit_numbers(hashes, bits)
    flags = np.frombuffer(bitmap, np.uint8)
    bytes_of = flags[numbers >> np.uint64(3)]
    marked: np.ndarray = np.bitwise_and(bytes_of >> (numbers & np.uint64(7)).astype(np.uint8), 1).astype(bool)
    return marked


def _event_keys(event_ids: pa.ChunkedArray) -> pa.Array:
    """Canonical UUID strings → their 16 bytes as a fixed-width column, as the streaming dedup keys them."""
    keys = event_keys(event_ids)
    return pa.FixedSizeBinaryArray.from_buffers(_EVENT_KEY, len(keys), [None, pa.py_buffer(keys)])


# Rows cross the shuffles as Arrow IPC bytes, uncompressed: with only the rows of repeated
# ids to ship, LZ4 costs more than the copies it saves.
_TABLES = ArrowTableCoder()


def _from_ipc(payloads: Iterable[bytes]) -> pa.Table:
    return pa.concat_tables(_TABLES.decode(payload) for payload in payloads)


def _in_period(received: pa.ChunkedArray, period: Period) -> np.ndarray:
    start = pa.scalar(period.start, type=received.type)
    end = pa.scalar(period.end, type=received.type)
    inside: np.ndarray = (
        pc.and_(pc.greater_equal(received, start), pc.less(received, end)).fill_null(False).to_numpy()
    )
    return inside


class _ShardIdHashesFn(beam.DoFn):
    """A table of event ids → ``(shard, their hashes as uint64 bytes)``: 8 bytes a row to shuffle."""

    def __init__(self, shards: int) -> None:
        self.shards = shards

    def process(self, table: pa.Table) -> Iterator[tuple[int, bytes]]:
        # Every id is checked here, in the pass that reads them all, so a damaged archive
        # fails the same way whichever ids the bitmap later makes candidates.
        canonical = pc.match_substring_regex(table["event_id"], CANONICAL_UUID_REGEX)
        if table.num_rows and not pc.all(canonical.fill_null(False)).as_py():
            raise ValueError("event ids must be canonical UUIDs")
        hashes = _id_hashes(table["event_id"])
        order, runs = shard_runs(_shard_of(hashes, self.shards), self.shards)
        ordered = hashes[order]
        for number, start, stop in runs:
            yield number, ordered[start:stop].tobytes()


def _repeated_hashes(shard_hashes: tuple[int, Iterable[bytes]]) -> Iterator[bytes]:
    """Every id hash of one shard → those seen more than once, as uint64 bytes."""
    _, payloads = shard_hashes
    hashes = np.sort(np.frombuffer(b"".join(payloads), np.uint64))
    repeated = hashes[1:][hashes[1:] == hashes[:-1]]
    if len(repeated):
        yield np.unique(repeated).tobytes()


class _RepeatedIdBitmap(beam.CombineFn):
    """Hashes of repeated ids (uint64 bytes) → a bitmap of ``2**bits`` bits, each hash's bit set.

    The accumulator is the bitmap itself, so memory stays ``2**bits / 8`` bytes however
    many ids repeat.
    """

    def __init__(self, bits: int) -> None:
        self.bits = bits

    def create_accumulator(self) -> np.ndarray:
        return np.zeros(2**self.bits // 8, np.uint8)

    def add_input(self, flags: np.ndarray, hashes: bytes) -> np.ndarray:
        numbers = _bit_numbers(np.frombuffer(hashes, np.uint64), self.bits)
        np.bitwise_or.at(
            flags, numbers >> np.uint64(3), np.left_shift(1, numbers & np.uint64(7)).astype(np.uint8)
        )
        return flags

    def merge_accumulators(self, accumulators: Iterable[np.ndarray]) -> np.ndarray:
        merged: np.ndarray | None = None
        for flags in accumulators:
            merged = flags if merged is None else np.bitwise_or(merged, flags, out=merged)
        return self.create_accumulator() if merged is None else merged

    def extract_output(self, flags: np.ndarray) -> bytes:
        return flags.tobytes()


class _SplitCandidatesFn(beam.DoFn):
    """A table of archived rows → counts of its rows whose id occurs once, and the other rows by shard.

    A row whose id hash has no bit in the bitmap is the only copy of its event in all
    that was read: counted here if received in the period. Every other row (all copies of
    repeated ids, and the few whose bit another id set) goes to ``CANDIDATES`` as
    ``(shard, Arrow IPC bytes)``, keyed by its 16 UUID bytes (``ValueError`` if its id is
    no canonical UUID: the archive holds validated events only, so that means damage).
    """

    def __init__(self, period: Period, min_stream_ms: int, shards: int, candidate_bits: int) -> None:
        self.period = period
        self.min_stream_ms = min_stream_ms
        self.shards = shards
        self.candidate_bits = candidate_bits
        self.read = _counter("archived_rows_read")
        self.unique = _counter("events_unique")
        self.shuffled = _counter("archived_rows_shuffled")

    def process(self, table: pa.Table, bitmap: bytes) -> Iterator[Any]:
        self.read.inc(table.num_rows)
        if table.num_rows == 0:
            return
        hashes = _id_hashes(table["event_id"])
        candidate = _marked(hashes, bitmap, self.candidate_bits)
        counted = ~candidate & _in_period(table["received_at"], self.period)
        self.unique.inc(int(np.count_nonzero(counted)))
        yield count_play_table(table, self.min_stream_ms, counted)
        positions = np.flatnonzero(candidate)
        self.shuffled.inc(len(positions))
        if len(positions) == 0:
            return
        # One reorder by shard, then a slice per shard.
        order, runs = shard_runs(_shard_of(hashes[positions], self.shards), self.shards)
        rows = table.take(positions[order])
        # Plain strings: each shard's message would otherwise carry every column's whole dictionary.
        rows = pa.table(
            [*(plain_values(rows[name]) for name in _SHUFFLED_COLUMNS), _event_keys(rows["event_id"])],
            names=[*_SHUFFLED_COLUMNS, _KEY_COLUMN],
        )
        for number, start, stop in runs:
            yield pvalue.TaggedOutput(
                _SplitOutput.CANDIDATES.value, (number, _TABLES.encode(rows.slice(start, stop - start)))
            )


class _CountFirstCopiesFn(beam.DoFn):
    """One shard's candidate rows → plays and streams per group of the first copies received in the period."""

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
        counted = self._first_copies(rows) & _in_period(rows["received_at"], self.period)
        self.unique.inc(int(np.count_nonzero(counted)))
        yield count_play_table(rows, self.min_stream_ms, counted)

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
        """Copies sorted by id, first copy first → the period's duplicates, and conflicts among them.

        A later copy counts in the period it was received in, as the streaming counters
        count it; copies received outside the period are read only to find first copies.
        """
        later = ~head
        later_copies = copies.filter(pa.array(later))
        # Each later copy against its id's first copy: a difference in content is a
        # conflict, counted once (the first copy counts), never merged.
        their_heads = copies.take(np.flatnonzero(head)[np.cumsum(head)[later] - 1])
        same = pa.array(np.ones(later_copies.num_rows, dtype=bool))
        for column in _CONTENT_COLUMNS:
            same = pc.and_(same, pc.equal(later_copies[column], their_heads[column]))
        in_period = _in_period(later_copies["received_at"], self.period)
        self.duplicates.inc(int(np.count_nonzero(in_period)))
        differs = ~same.fill_null(False).to_numpy(zero_copy_only=False)
        self.conflicts.inc(int(np.count_nonzero(in_period & differs)))


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
        return PLAY_COUNTS_SCHEMA.empty_table()
    summed = (
        pa.concat_tables(tables)
        .group_by(PLAY_GROUP_COLUMNS)
        .aggregate([("plays", "sum"), ("streams", "sum")])
    )
    return pa.table(
        [*(summed[name] for name in PLAY_GROUP_COLUMNS), summed["plays_sum"], summed["streams_sum"]],
        schema=PLAY_COUNTS_SCHEMA,
    )


class FirstCopiesInPeriod(beam.PTransform):
    """The archive's two reads (``ArchiveReads``) → plays counted per group, each event id once, exactly.

    The first received copy of an ``event_id`` counts (ids that differ only in letter
    case are one event; ties broken by message id), and only if it was received in
    ``period``; later copies are duplicates, and a later copy with different content is
    also a conflict. Ids seen once are counted where they are read; the rows of the others
    are shuffled into ``shards`` by event id (which ids repeat is found first, by a shuffle
    of id hashes into as many shards and a bitmap of ``2**candidate_bits`` bits). The
    counts are summed into one ``PlayCounts``: ``(plays, streams)`` per (track_id,
    territory, product).

    Ids must be canonical UUIDs, as the archiver validated them: any other id fails the
    recompute (``ValueError``), found when the ids are first read, whether or not it has
    a copy.
    """

    def __init__(
        self,
        period: Period,
        min_stream_ms: int,
        shards: int = DEFAULT_SHARDS,
        candidate_bits: int = DEFAULT_CANDIDATE_BITS,
    ) -> None:
        super().__init__()
        if min_stream_ms < 0:
            raise ValueError("min_stream_ms must not be negative")
        if not 1 <= shards <= 65_536:
            raise ValueError("shards must be between 1 and 65,536")
        if not 3 <= candidate_bits <= 32:
            raise ValueError("candidate_bits must be between 3 and 32")
        self.period = period
        self.min_stream_ms = min_stream_ms
        self.shards = shards
        self.candidate_bits = candidate_bits

    def expand(self, archive: dict[str, beam.PCollection]) -> beam.PCollection:
        repeated_ids = (
            archive[ArchiveReads.EVENT_IDS]
            | "ShardIdHashes" >> beam.ParDo(_ShardIdHashesFn(self.shards))
            | "GatherIdHashes" >> beam.GroupByKey()
            | "RepeatedIds" >> beam.FlatMap(_repeated_hashes).with_output_types(bytes)
            | "MarkRepeatedIds" >> beam.CombineGlobally(_RepeatedIdBitmap(self.candidate_bits))
        )
        split = archive[ArchiveReads.ROWS] | "SplitCandidates" >> beam.ParDo(
            _SplitCandidatesFn(self.period, self.min_stream_ms, self.shards, self.candidate_bits),
            pvalue.AsSingleton(repeated_ids),
        ).with_outputs(_SplitOutput.CANDIDATES.value, main=_SplitOutput.COUNTS.value)
        candidate_counts = (
            split[_SplitOutput.CANDIDATES.value]
            | "GatherShard" >> beam.GroupByKey()
            | "CountFirstCopies"
            >> beam.ParDo(_CountFirstCopiesFn(self.period, self.min_stream_ms)).with_output_types(pa.Table)
        )
        return (
            (split[_SplitOutput.COUNTS.value], candidate_counts)
            | "AllCounts" >> beam.Flatten()
            | "SumCounts" >> beam.CombineGlobally(SumCountTables()).without_defaults()
            | "AsPlayCounts" >> beam.Map(play_counts_of)
        )


def _tables_by_period(rows: pa.Table) -> Iterator[tuple[str, bytes]]:
    """A table of ledger rows → ``(period partition, its rows as Arrow IPC)`` per period among them."""
    starts = rows["period_start"]
    for start in pc.unique(starts).to_pylist():
        yield partition_name("period", start), _TABLES.encode(rows.filter(pc.equal(starts, start)))


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
    """Wire the batch recompute onto ``p``: ``source`` gives the archive's ``ArchiveReads``, Arrow tables."""
    catalog = Catalog.load(config.catalog_dir)
    archive = p | "ReadArchive" >> source
    counts = archive | "FirstCopiesInPeriod" >> FirstCopiesInPeriod(
        period, config.min_stream_ms, shards=batch_shards(config)
    )
    catalog_view = beam.pvalue.AsSingleton(p | "LoadCatalog" >> beam.Create([catalog]))
    ledger_rows = counts | "AttributeCounts" >> AttributeCounts(catalog_view, (period.start, period.end))
    if sink is not None:
        _ = ledger_rows | "WriteFinalLedger" >> sink
    return ledger_rows


class _ReadRowGroupsFn(beam.DoFn):
    """An archive file → one Arrow table per row group, of ``columns``.

    ``dictionary_columns`` come dictionary-encoded, as Parquet stores them: no string per
    row to build, and a group-by over their codes instead of their text. With
    ``received_before``, a row group whose statistics say every row was received at or
    after it is skipped unread: no such row can be counted, nor make a counted row a
    later copy. Both reads skip the same groups, since they read the same statistics.
    """

    def __init__(
        self,
        columns: Sequence[str],
        dictionary_columns: Sequence[str] = (),
        received_before: dt.datetime | None = None,
    ) -> None:
        self.columns = list(columns)
        self.dictionary_columns = list(dictionary_columns)
        self.received_before = received_before

    def setup(self) -> None:
        self.skipped = _counter("archived_row_groups_skipped")
        self.format = ds.ParquetFileFormat(
            read_options=ds.ParquetReadOptions(dictionary_columns=set(self.dictionary_columns))
        )
        # Arrow prunes row groups by their statistics; rows of a kept group are all read.
        self.keep = (
            None
            if self.received_before is None
            else pc.field("received_at")
            < pa.scalar(self.received_before, ARCHIVE_SCHEMA.field("received_at").type)
        )

    def process(self, path: str) -> Iterator[pa.Table]:
        with FileSystems.open(path) as handle:
            fragment = self.format.make_fragment(pa.PythonFile(handle, mode="r"))
            groups = fragment.split_by_row_group(self.keep)
            self.skipped.inc(fragment.num_row_groups - len(groups))
            for group in groups:
                yield group.to_table(columns=self.columns)


class ReadArchiveFiles(beam.PTransform):
    """The given archive files, read twice: their event ids, then the rows the recompute counts.

    Both as Arrow tables, one per row group, in a dict keyed by ``ArchiveReads``: the ids
    alone tell ``FirstCopiesInPeriod`` which rows need a shuffle at all. With
    ``received_before`` (the period's end), row groups received wholly at or after it are
    skipped by their statistics.
    """

    def __init__(self, files: Sequence[str], received_before: dt.datetime | None = None) -> None:
        super().__init__()
        self.files = list(files)
        self.received_before = received_before

    def expand(self, p: beam.pvalue.PBegin) -> dict[str, beam.PCollection]:
        # One listing per read: a step waiting for the ids' result must not share a stage with their read.
        return {
            ArchiveReads.EVENT_IDS: p
            | "ListFilesForIds" >> beam.Create(self.files)
            | "ReadEventIds"
            >> beam.ParDo(_ReadRowGroupsFn(["event_id"], (), self.received_before)).with_output_types(
                pa.Table
            ),
            ArchiveReads.ROWS: p
            | "ListFilesForRows" >> beam.Create(self.files)
            | "ReadRows"
            >> beam.ParDo(
                _ReadRowGroupsFn(_COLUMNS, _DICTIONARY_COLUMNS, self.received_before)
            ).with_output_types(pa.Table),
        }


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
        ReadArchiveFiles(files, received_before=period.end),
        WriteFinalLedger(f"{data_dir.rstrip('/')}/{FINAL_LEDGER_DIR}", temp),
        config,
        period,
    )
    if not files:
        LOG.warning("no archive files for %s: nothing to recompute", period.start)
    still_open = open_hours(data_dir, period)
    if still_open:
        LOG.warning(
            "not closed yet: %s (%d of the period's %d hours); plays may still be archived there, "
            "so recompute again once every hour of the period has its %s marker",
            ", ".join(still_open),
            len(still_open),
            len(period_hours(period)),
            CLOSED_MARKER,
        )
    result = pipeline.run()
    result.wait_until_finish()
    LOG.info("%s", _summary(result, period, f"{data_dir.rstrip('/')}/{FINAL_LEDGER_DIR}"))
    return 0


def _summary(result: PipelineResult, period: Period, table_dir: str) -> str:
    """One line on what a recompute counted, from its counters."""
    n = Counter(counters(result))
    return (
        f"recomputed {period.start.isoformat()} … {period.end.isoformat()}: "
        f"plays counted {n['events_unique']:,}, "
        f"duplicates {n['events_duplicate']:,} (conflicting {n['events_conflict']:,}), "
        f"archived rows read {n['archived_rows_read']:,} "
        f"(row-group reads skipped {n['archived_row_groups_skipped']:,}), "
        f"final ledger rows {n['ledger_final_rows_written']:,} "
        f"in {table_dir}/{partition_name('period', period.start)}"
    )
