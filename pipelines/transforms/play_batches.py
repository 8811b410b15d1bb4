"""Play events as Arrow record batches: many events travel the pipeline together.

A Pub/Sub message carries up to 500 events; handling them one Python dict at a time
costs more than the transport does. Here a message becomes one ``pa.RecordBatch`` in
``PLAY_SCHEMA`` (and the decode step joins a bundle's batches of one period into one),
so every per-event step is a column operation:

- ``decode_plays``: Avro → a batch of the valid events + the invalid ones with reasons;
- ``split_by_period``: one batch per accounting period, so a batch has one event time;
- ``event_keys`` / ``content_fingerprints`` / ``shard_of``: what de-duplication needs.

Validation stays the contract's (``schemas.validation``): a column check finds the rows
that certainly pass, and only the others go through the per-event rules, which give the
reasons.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from functools import cache
from typing import Any

import apache_beam as beam
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ledger.tables import ARCHIVE_SCHEMA
from schemas.codec import DecodeError, decode_batch, event_field_names
from schemas.validation import (
    BITRATES_KBPS,
    CANONICAL_UUID_PATTERN,
    MAX_ID_CHARS,
    MAX_MS_PLAYED,
    check_decoded_event,
    enum_symbols,
    territory_codes,
)

__all__ = [
    "CANONICAL_UUID_REGEX",
    "CONTENT_COLUMNS",
    "PLAY_SCHEMA",
    "ArrowBatchCoder",
    "ArrowTableCoder",
    "DecodedPlays",
    "content_fingerprints",
    "decode_plays",
    "event_keys",
    "plain_values",
    "shard_of",
    "shard_runs",
    "split_by_period",
]

PLAY_SCHEMA = pa.schema([ARCHIVE_SCHEMA.field(name) for name in event_field_names()])
"""A batch of play events: the ``PlayEvent`` fields, as the archive stores them."""

CONTENT_COLUMNS = ("user_id", "track_id", "played_at", "ms_played", "territory", "product")
"""What two copies of one event must agree on (the batch recompute compares the same)."""

_TIMESTAMP_FIELDS = ("played_at", "received_at")
CANONICAL_UUID_REGEX = f"^(?:{CANONICAL_UUID_PATTERN.pattern})$"
"""The contract's UUID rule, anchored, for Arrow's regex kernels."""
# datetime's range, in microseconds since the epoch: a timestamp outside it is no date.
_MIN_MICROS = -62_135_596_800_000_000
_MAX_MICROS = 253_402_300_799_999_999


class DecodedPlays:
    """One message decoded: the valid events as a batch, the invalid ones with reasons."""

    __slots__ = ("invalid", "valid")

    def __init__(self, valid: pa.RecordBatch, invalid: list[tuple[dict[str, Any], list[str]]]) -> None:
        self.valid = valid
        self.invalid = invalid


@cache
def _territories() -> pa.Array:
    return pa.array(sorted(territory_codes()))


def _identifier_ok(column: pa.Array) -> np.ndarray:
    # Printable ASCII, at most MAX_ID_CHARS, not only spaces: certainly a non-blank identifier.
    return (
        _true(pc.ascii_is_printable(column))
        & (_numbers(pc.binary_length(column)) <= MAX_ID_CHARS)
        & (_numbers(pc.binary_length(pc.ascii_trim_whitespace(column))) > 0)
    )


def _true(mask: pa.Array) -> np.ndarray:
    filled: np.ndarray = pc.fill_null(mask, False).to_numpy(zero_copy_only=False)
    return filled


def _numbers(values: pa.Array) -> np.ndarray:
    filled: np.ndarray = pc.fill_null(values, 0).to_numpy(zero_copy_only=False)
    return filled


def _certainly_valid(batch: pa.RecordBatch) -> np.ndarray:
    """Rows that pass every rule of ``check_decoded_event``; the rest need the per-event check.

    Each test here is at least as strict as its rule (a row it refuses may still be
    valid), so the per-event rules keep the last word.
    """
    ms_played = batch["ms_played"].to_numpy()
    device = batch["device"]
    return (
        _true(pc.match_substring_regex(batch["event_id"], CANONICAL_UUID_REGEX))
        & _identifier_ok(batch["user_id"])
        & _identifier_ok(batch["track_id"])
        & (ms_played >= 0)
        & (ms_played <= MAX_MS_PLAYED)
        & _true(pc.is_in(batch["territory"], value_set=_territories()))
        & _true(pc.is_in(batch["product"], value_set=pa.array(enum_symbols("product"))))
        & _true(pc.is_in(batch["context"], value_set=pa.array(enum_symbols("context"))))
        & _true(pc.is_in(batch["bitrate_kbps"], value_set=pa.array(sorted(BITRATES_KBPS), pa.int32())))
        & (
            _true(pc.is_null(device))
            | (_true(pc.ascii_is_printable(device)) & (_numbers(pc.binary_length(device)) <= MAX_ID_CHARS))
        )
    )


def decode_plays(data: bytes, attributes: Mapping[str, str]) -> DecodedPlays:
    """Decode one message; raise ``DecodeError`` (the whole message is bad) as ``decode_batch`` does."""
    events = decode_batch(data, attributes, timestamps_as_micros=True)
    for name in _TIMESTAMP_FIELDS:
        for event in events:
            if not _MIN_MICROS <= event[name] <= _MAX_MICROS:
                raise DecodeError(f"payload is not a v1 event batch: {name} {event[name]} µs is no date-time")
    # Arrow takes the microseconds as they are for its timestamp columns.
    batch = pa.RecordBatch.from_pylist(events, schema=PLAY_SCHEMA)
    keep = _certainly_valid(batch)
    if keep.all():
        return DecodedPlays(batch, [])
    doubtful = np.flatnonzero(~keep)
    invalid = []
    for row, event in zip(doubtful, batch.take(pa.array(doubtful)).to_pylist(), strict=True):
        errors = check_decoded_event(event)
        if errors:
            invalid.append((event, errors))
        else:
            keep[row] = True
    # One filter keeps the message's order: the first copy of an id in it stays first.
    return DecodedPlays(batch.filter(pa.array(keep)), invalid)


def split_by_period(batch: pa.RecordBatch, period_seconds: int) -> Iterator[tuple[int, pa.RecordBatch]]:
    """``(earliest received_at in µs, rows)`` per accounting period the batch's rows fall in."""
    if batch.num_rows == 0:
        return
    received = batch["received_at"].cast(pa.int64()).to_numpy()
    periods = received // (period_seconds * 1_000_000)
    if periods.min() == periods.max():
        yield int(received.min()), batch
        return
    order = np.argsort(periods, kind="stable")
    sorted_periods = periods[order]
    bounds = np.flatnonzero(np.diff(sorted_periods)) + 1
    for rows in np.split(order, bounds):
        yield int(received[rows].min()), batch.take(pa.array(rows))


_HEX = np.full(256, 255, np.uint8)
_HEX[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10, dtype=np.uint8)
_HEX[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16, dtype=np.uint8)
_HEX[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16, dtype=np.uint8)
_UUID_HEX_POSITIONS = np.array([i for i in range(36) if i not in (8, 13, 18, 23)])


def event_keys(event_ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Canonical UUID strings (either case) → their 16 bytes (``S16``): the de-duplication key.

    Two spellings of one UUID are one event. Raises ``ValueError`` on anything else
    (validation refuses such ids before de-duplication sees them).
    """
    if isinstance(event_ids, pa.ChunkedArray):
        event_ids = event_ids.combine_chunks()
    count = len(event_ids)
    if count == 0:
        return np.empty(0, "S16")
    lengths = pc.binary_length(event_ids).to_numpy(zero_copy_only=False)
    if event_ids.null_count or not (lengths == 36).all():
        raise ValueError("event ids must be canonical UUIDs")
    # Every id is 36 bytes long, so the data buffer is one fixed-width block.
    offsets = np.frombuffer(event_ids.buffers()[1], np.int32, count + 1, event_ids.offset * 4)
    data = np.frombuffer(event_ids.buffers()[2], np.uint8, count * 36, offsets[0])
    digits = _HEX[data.reshape(count, 36)[:, _UUID_HEX_POSITIONS]]
    if (digits == 255).any():
        raise ValueError("event ids must be canonical UUIDs")
    packed = (digits[:, 0::2] << 4) | digits[:, 1::2]
    return np.ascontiguousarray(packed).view("S16").reshape(count)


def content_fingerprints(batch: pa.RecordBatch) -> np.ndarray:
    """A 64-bit digest (``uint64``) per row of what two copies of an event must agree on.

    pandas' ``hash_pandas_object`` (SipHash with a fixed key: the same in every process
    and release) of three columns: the text columns joined into one string per row, and
    the two number columns. The user id goes first, prefixed by its length;
    territory and product are codes without the separator; so no two contents join alike.
    """
    text = pc.binary_join_element_wise(
        pc.cast(pc.binary_length(batch["user_id"]), pa.string()),
        batch["user_id"],
        batch["track_id"],
        batch["territory"],
        batch["product"],
        "\x1f",
    )
    columns = pd.DataFrame(
        {
            "text": text.to_numpy(zero_copy_only=False),
            "played_at": batch["played_at"].cast(pa.int64()).to_numpy(),
            "ms_played": batch["ms_played"].to_numpy(),
        }
    )
    digests: np.ndarray = pd.util.hash_pandas_object(columns, index=False, categorize=False).to_numpy()
    return digests


def shard_of(keys: np.ndarray, shards: int) -> np.ndarray:
    """Each key's de-duplication shard in ``[0, shards)``: its last 8 bytes modulo ``shards``."""
    low = np.frombuffer(keys.tobytes(), ">u8").reshape(-1, 2)[:, 1] if len(keys) else np.empty(0, ">u8")
    return (low % np.uint64(shards)).astype(np.int64)


def plain_values(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """A dictionary-encoded column as plain values; any other as it is."""
    if pa.types.is_dictionary(column.type):
        return column.cast(column.type.value_type)
    return column


def shard_runs(shard: np.ndarray, shards: int) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """The order that sorts rows by shard, and ``(shard, start, stop)`` of each non-empty run in it."""
    order = np.argsort(shard, kind="stable")
    sizes = np.bincount(shard, minlength=shards)
    stops = np.cumsum(sizes)
    return order, [
        (int(number), int(stops[number] - sizes[number]), int(stops[number]))
        for number in np.flatnonzero(sizes)
    ]


class ArrowBatchCoder(beam.coders.Coder):
    """Record batches as the Arrow IPC stream format: what a runner ships between workers.

    The size a runner samples for its metrics is the batch's buffers, not an encoding:
    Beam's fallback would pickle a whole batch just to measure it.
    """

    def encode(self, value: pa.RecordBatch) -> bytes:
        return _ipc_bytes(value.schema, [value])

    def decode(self, encoded: bytes) -> pa.RecordBatch:
        table = pa.ipc.open_stream(encoded).read_all()
        return (
            table.combine_chunks().to_batches()[0]
            if table.num_rows
            else pa.RecordBatch.from_pylist([], table.schema)
        )

    def estimate_size(self, value: pa.RecordBatch) -> int:
        return int(value.nbytes)

    def is_deterministic(self) -> bool:
        return True

    def to_type_hint(self) -> Any:
        return pa.RecordBatch


class ArrowTableCoder(beam.coders.Coder):
    """Arrow tables as the IPC stream format, sized by their buffers (see ``ArrowBatchCoder``)."""

    def encode(self, value: pa.Table) -> bytes:
        return _ipc_bytes(value.schema, value.to_batches())

    def decode(self, encoded: bytes) -> pa.Table:
        return pa.ipc.open_stream(encoded).read_all()

    def estimate_size(self, value: pa.Table) -> int:
        return int(value.nbytes)

    def is_deterministic(self) -> bool:
        return True

    def to_type_hint(self) -> Any:
        return pa.Table


def _ipc_bytes(schema: pa.Schema, batches: list[pa.RecordBatch]) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as writer:
        for batch in batches:
            writer.write_batch(batch)
    return bytes(sink.getvalue())


beam.coders.registry.register_coder(pa.RecordBatch, ArrowBatchCoder)
beam.coders.registry.register_coder(pa.Table, ArrowTableCoder)
