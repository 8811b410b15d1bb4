"""EXACT"""

from __future__ import annotations

import base64
import datetime as dt
import uuid
from collections.abc import Iterable, Iterator
from enum import StrEnum
from typing import Any

import apache_beam as beam
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam import pvalue

from ledger.counters import Counter
from ledger.dead_letters import DeadLetterStage
from ledger.tables import DEAD_LETTER_SCHEMA
from pipelines.transforms.archive_reads import ARCHIVE_COLUMNS, ArchiveReads
from pipelines.transforms.counting import SumCountTables, count_play_table, play_counts_of
from pipelines.transforms.metrics import beam_counter
from pipelines.transforms.periods import Period, in_period
from pipelines.transforms.play_batches import (
    CANONICAL_UUID_REGEX,
    ArrowTableCoder,
    event_keys,
    plain_values,
    shard_runs,
)

__all__ = [
    "DEFAULT_CANDIDATE_BITS",
    "DEFAULT_SHARDS",
    "FirstCopiesInPeriod",
    "FirstCopiesOutput",
]


# Columns that must agree between two copies of one event_id; received_at and message_id may differ.
_CONTENT_COLUMNS = ["user_id", "track_id", "played_at", "ms_played", "territory", "product"]
# What crosses the shuffle: every column but event_id, which travels as its key.
_SHUFFLED_COLUMNS = [name for name in ARCHIVE_COLUMNS if name != "event_id"]
_KEY_COLUMN = "event_key"
_EVENT_KEY = pa.binary(16)


# Hex digits and dashes, all a canonical UUID holds, have the 0x20 bit set in lower case only.
_LOWER_CASE = np.uint64(0x2020202020202020)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
DEFAULT_SHARDS = 16
"""Fewest shards of each event-id shuffle: each is de-duplicated alone, so each sort stays small."""


DEFAULT_CANDIDATE_BITS = 27
"""The repeated-id bitmap has 2**27 bits (16 MiB): 500,000 repeated ids mark 0.4 % of the others."""


class FirstCopiesOutput(StrEnum):
    """The outputs of ``FirstCopiesInPeriod``, as a dict of PCollections."""

    COUNTS = "counts"
    """One ``PlayCounts``: plays and streams per (track, territory, product) of the first copies."""
    DEAD_LETTERS = "dead_letters"
    """Tables of dead-letter rows (``DEAD_LETTER_SCHEMA``) of the period: archived rows whose id is no
    canonical UUID (stage ``validate``), and conflicting later copies (stage ``dedup``), as
    the streaming pipeline records them."""
    COUNTED = "counted"
    """``(counter, count)`` pairs of the period: ``events_decoded`` (usable rows received
    in it), ``events_unique`` and ``events_duplicate``, so ``decoded = unique + duplicate``."""


class _SplitOutput(StrEnum):
    """Branches of ``_SplitCandidatesFn`` and ``_CountFirstCopiesFn``."""

    COUNTS = "counts"
    CANDIDATES = "candidates"
    DEAD_LETTERS = "dead_letters"
    COUNTED = "counted"


_NOT_A_UUID = "event_id: must be a canonical UUID (8-4-4-4-12 hex digits)"
_CONFLICT = "conflicting duplicate: same event_id as an earlier copy, different content"


def _canonical(event_ids: pa.ChunkedArray) -> pa.ChunkedArray | None:
    """Which ids are canonical UUIDs, or ``None`` when all are (the usual case, one regex pass)."""
    canonical = pc.match_substring_regex(event_ids, CANONICAL_UUID_REGEX).fill_null(False)
    return None if pc.all(canonical).as_py() is not False else canonical


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


class _ShardIdHashesFn(beam.DoFn):
    """A table of event ids → ``(shard, their hashes as uint64 bytes)``: 8 bytes a row to shuffle."""

    def __init__(self, shards: int) -> None:
        self.shards = shards

    def process(self, table: pa.Table) -> Iterator[tuple[int, bytes]]:
        # An id that is no canonical UUID is left out of both reads alike (the rows' read
        # dead-letters it), so it can neither count nor make a counted row a later copy.
        canonical = _canonical(table["event_id"]) if table.num_rows else None
        if canonical is not None:
            table = table.filter(canonical)
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
    ``(shard, Arrow IPC bytes)``, keyed by its 16 UUID bytes. A row whose id is no
    canonical UUID (the archive holds validated events only, so that means damage) is a
    dead letter if it was received in the period, and is read no further.
    """

    def __init__(self, period: Period, min_stream_ms: int, shards: int, candidate_bits: int) -> None:
        self.period = period
        self.min_stream_ms = min_stream_ms
        self.shards = shards
        self.candidate_bits = candidate_bits
        self.read = beam_counter(Counter.ARCHIVED_ROWS_READ)
        self.unique = beam_counter(Counter.EVENTS_UNIQUE)
        self.shuffled = beam_counter(Counter.ARCHIVED_ROWS_SHUFFLED)
        self.invalid = beam_counter(Counter.EVENTS_INVALID)

    def process(self, table: pa.Table, bitmap: bytes) -> Iterator[Any]:
        self.read.inc(table.num_rows)
        if table.num_rows == 0:
            return
        canonical = _canonical(table["event_id"])
        if canonical is not None:
            yield from self._dead_letters(table.filter(pc.invert(canonical)))
            table = table.filter(canonical)
        hashes = _id_hashes(table["event_id"])
        candidate = _marked(hashes, bitmap, self.candidate_bits)
        received_in_period = in_period(table["received_at"], self.period)
        counted = ~candidate & received_in_period
        unique = int(np.count_nonzero(counted))
        self.unique.inc(unique)
        yield pvalue.TaggedOutput(
            _SplitOutput.COUNTED.value,
            (str(Counter.EVENTS_DECODED), int(np.count_nonzero(received_in_period))),
        )
        yield pvalue.TaggedOutput(_SplitOutput.COUNTED.value, (str(Counter.EVENTS_UNIQUE), unique))
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

    def _dead_letters(self, malformed: pa.Table) -> Iterator[pvalue.TaggedOutput]:
        """Rows whose id is no canonical UUID → one table of dead letters, of those received in the period."""
        rows = malformed.filter(pa.array(in_period(malformed["received_at"], self.period)))
        self.invalid.inc(rows.num_rows)
        if rows.num_rows:
            ids = rows["event_id"].to_pylist()
            reasons = [f"{_NOT_A_UUID}, got {event_id!r}" for event_id in ids]
            yield pvalue.TaggedOutput(
                _SplitOutput.DEAD_LETTERS.value,
                _dead_letter_table(DeadLetterStage.VALIDATE, reasons, ids, rows),
            )


class _CountFirstCopiesFn(beam.DoFn):
    """One shard's candidate rows → plays and streams per group of the first copies received in the period."""

    def __init__(self, period: Period, min_stream_ms: int) -> None:
        self.period = period
        self.min_stream_ms = min_stream_ms
        self.unique = beam_counter(Counter.EVENTS_UNIQUE)
        self.duplicates = beam_counter(Counter.EVENTS_DUPLICATE)
        self.conflicts = beam_counter(Counter.EVENTS_CONFLICT)

    def process(self, shard_payloads: tuple[int, Iterable[bytes]]) -> Iterator[Any]:
        _, payloads = shard_payloads
        rows = _from_ipc(payloads)
        if rows.num_rows == 0:
            return
        first, later = self._first_copies(rows)
        counted = first & in_period(rows["received_at"], self.period)
        unique = int(np.count_nonzero(counted))
        self.unique.inc(unique)
        yield pvalue.TaggedOutput(_SplitOutput.COUNTED.value, (str(Counter.EVENTS_UNIQUE), unique))
        yield from later
        yield count_play_table(rows, self.min_stream_ms, counted)

    def _first_copies(self, rows: pa.Table) -> tuple[np.ndarray, list[Any]]:
        """Whether each row is the first received copy of its event id (ties broken by message id),
        and what the later copies received in the period add: their count, and a dead letter each
        for those that conflict."""
        # Keys as small integers by hashing: most ids have one copy and need no sort at all.
        id_numbers = pc.dictionary_encode(rows[_KEY_COLUMN].combine_chunks()).indices.to_numpy()
        first = np.bincount(id_numbers)[id_numbers] == 1
        repeated = np.flatnonzero(~first)
        if len(repeated) == 0:
            return first, []
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
        return first, self._later_copies(copies, head)

    def _later_copies(self, copies: pa.Table, head: np.ndarray) -> list[Any]:
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
        later_in_period = in_period(later_copies["received_at"], self.period)
        duplicates = int(np.count_nonzero(later_in_period))
        self.duplicates.inc(duplicates)
        outputs: list[Any] = [
            pvalue.TaggedOutput(_SplitOutput.COUNTED.value, (str(Counter.EVENTS_DUPLICATE), duplicates))
        ]
        differs = ~same.fill_null(False).to_numpy(zero_copy_only=False)
        conflicting = later_in_period & differs
        self.conflicts.inc(int(np.count_nonzero(conflicting)))
        if conflicting.any():
            # Counted once (the first copy), and each disagreement kept for a human.
            outputs.append(
                pvalue.TaggedOutput(
                    _SplitOutput.DEAD_LETTERS.value,
                    _conflicts(later_copies.filter(pa.array(conflicting))),
                )
            )
        return outputs


def _conflicts(copies: pa.Table) -> pa.Table:
    """Conflicting later copies as shuffled (ids as 16 bytes) → their dead letters, as the stream has them."""
    ids = [str(uuid.UUID(bytes=key)) for key in copies[_KEY_COLUMN].to_pylist()]
    rows = copies.drop_columns([_KEY_COLUMN]).add_column(0, "event_id", pa.array(ids, pa.string()))
    return _dead_letter_table(DeadLetterStage.DEDUP, [_CONFLICT] * len(ids), ids, rows)


def _dead_letter_table(
    stage: DeadLetterStage, reasons: list[str], event_ids: list[str], rows: pa.Table
) -> pa.Table:
    """Dead letters of ``rows`` (archived rows: each its payload, as canonical JSON), one table.

    Built a column at a time, not a ``dead_letter`` dict a row: a recompute dead-letters
    every conflicting copy of its period, and Python objects per row cost it most of that.
    Times are ISO 8601 in UTC, as ``event_json`` writes them.
    """
    columns = []
    for name in rows.column_names:
        column = rows[name]
        if pa.types.is_timestamp(column.type):
            # Arrow writes a microsecond timestamp's seconds with six decimals.
            column = pc.binary_join_element_wise(
                pc.strftime(column, format="%Y-%m-%dT%H:%M:%S"), "+00:00", ""
            )
        columns.append(column.to_pylist())
    names = rows.column_names
    payloads = [
        base64.b64encode(orjson.dumps(dict(zip(names, values, strict=True)), option=orjson.OPT_SORT_KEYS))
        for values in zip(*columns, strict=True)
    ]
    message_ids = rows["message_id"].to_pylist()
    count = rows.num_rows
    return pa.table(
        {
            "dead_at": pa.array([dt.datetime.now(dt.UTC)] * count, DEAD_LETTER_SCHEMA.field("dead_at").type),
            "stage": pa.array([str(stage)] * count, pa.string()),
            "reason": pa.array(reasons, pa.string()),
            "event_id": pa.array(event_ids, pa.string()),
            "batch_id": pa.nulls(count, pa.string()),
            "payload_base64": pa.array(payloads, pa.binary()).cast(pa.string()),
            "attributes_json": pa.array(
                [orjson.dumps({"message_id": message_id}).decode() for message_id in message_ids], pa.string()
            ),
        },
        schema=DEAD_LETTER_SCHEMA,
    )


class FirstCopiesInPeriod(beam.PTransform):
    """The archive's two reads (``ArchiveReads``) → plays counted per group, each event id once, exactly;
    and the period's dead letters and branch counts (a dict keyed by ``FirstCopiesOutput``).

    The first received copy of an ``event_id`` counts (ids that differ only in letter
    case are one event; ties broken by message id), and only if it was received in
    ``period``; later copies are duplicates, and a later copy with different content is
    also a conflict. Ids seen once are counted where they are read; the rows of the others
    are shuffled into ``shards`` by event id (which ids repeat is found first, by a shuffle
    of id hashes into as many shards and a bitmap of ``2**candidate_bits`` bits). The
    counts are summed into one ``PlayCounts``: ``(plays, streams)`` per (track_id,
    territory, product).

    Ids must be canonical UUIDs, as the archiver validated them: a row with any other id
    is left out of both reads, and is a dead letter (stage ``validate``) of the period it
    was received in; the rest of the period is counted as if it were not there.
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

    def expand(self, archive: dict[str, beam.PCollection]) -> dict[str, beam.PCollection]:
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
        ).with_outputs(
            _SplitOutput.CANDIDATES.value,
            _SplitOutput.DEAD_LETTERS.value,
            _SplitOutput.COUNTED.value,
            main=_SplitOutput.COUNTS.value,
        )
        first_copies = (
            split[_SplitOutput.CANDIDATES.value]
            | "GatherShard" >> beam.GroupByKey()
            | "CountFirstCopies"
            >> beam.ParDo(_CountFirstCopiesFn(self.period, self.min_stream_ms)).with_outputs(
                _SplitOutput.DEAD_LETTERS.value, _SplitOutput.COUNTED.value, main=_SplitOutput.COUNTS.value
            )
        )
        counts = (
            (split[_SplitOutput.COUNTS.value], first_copies[_SplitOutput.COUNTS.value])
            | "AllCounts" >> beam.Flatten()
            | "SumCounts" >> beam.CombineGlobally(SumCountTables()).without_defaults()
            | "AsPlayCounts" >> beam.Map(play_counts_of)
        )
        both = (split, first_copies)
        return {
            FirstCopiesOutput.COUNTS: counts,
            FirstCopiesOutput.DEAD_LETTERS: [part[_SplitOutput.DEAD_LETTERS.value] for part in both]
            | "AllDeadLetters" >> beam.Flatten(),
            FirstCopiesOutput.COUNTED: [part[_SplitOutput.COUNTED.value] for part in both]
            | "AllCounted" >> beam.Flatten(),
        }
