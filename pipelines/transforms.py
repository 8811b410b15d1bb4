"""The royalty transforms both pipelines are built from.

Each step is a small DoFn wrapped in a named composite; every fallible step has a
dead-letter output and a counter per branch, so reconciliation can balance them::

    messages ─ DecodePlayMessages ─┬─ plays ─ DedupByEventId ─┬─ unique ─ AggregateLedger
                                   └─ dead letters            ├─ duplicates
                                                              └─ conflicts (dead letters)
    AggregateLedger: window by received_at ─ CountPlays ─ AttributeCounts ─ ledger rows

Plays travel as Arrow record batches (``pipelines.play_batches``), a bundle's events of
one period together, so the per-event work is column operations rather than Python per
element.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from collections.abc import Callable, Iterable, Iterator
from enum import StrEnum
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam import pvalue
from apache_beam.coders import VarIntCoder
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.metrics import Metrics
from apache_beam.transforms import trigger, userstate, window
from apache_beam.transforms.combiners import LiftedCombinePerKey
from apache_beam.utils.timestamp import Duration, Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from ledger.allocation import UNMATCHED, attribute_play
from ledger.catalog import Catalog
from ledger.tables import LEDGER_SCHEMA, partition_name
from pipelines.files import write_parquet_atomically
from pipelines.play_batches import (
    content_fingerprints,
    decode_plays,
    event_keys,
    plain_values,
    shard_of,
    shard_runs,
    split_by_period,
)
from pipelines.remembered_ids import (
    EXPIRES,
    MAX_CHUNKS,
    RememberedIdsCoder,
    chunk_of,
    find,
    key_halves,
    merge,
    unexpired,
)
from schemas.codec import ATTR_BATCH_ID, ATTR_KIND, KIND_HEARTBEAT, DecodeError

__all__ = [
    "METRICS_NAMESPACE",
    "PLAY_COUNTS_SCHEMA",
    "PLAY_GROUP_COLUMNS",
    "AggregateLedger",
    "AttributeCounts",
    "CountBranches",
    "CountPlays",
    "CountPlaysFn",
    "DecodeOutput",
    "DecodePlayMessages",
    "DedupByEventId",
    "DedupOutput",
    "PlayCounts",
    "PlayGroup",
    "WritePaneFiles",
    "append_window",
    "combine_per_key",
    "count_play_table",
    "count_plays",
    "dead_letter",
    "event_json",
    "play_counts_of",
]

METRICS_NAMESPACE = "playledger"


class DecodeOutput(StrEnum):
    """Branches of ``DecodePlayMessages``."""

    EVENTS = "events"
    DEAD_LETTERS = "dead_letters"


class DedupOutput(StrEnum):
    """Branches of ``DedupByEventId``."""

    UNIQUE = "unique"
    DUPLICATES = "duplicates"
    CONFLICTS = "conflicts"


def _counter(name: str) -> Any:
    # DoFns make their counters in ``setup``: a runner that copies a DoFn by pickling it
    # (the direct runner does, for every bundle) then copies none of them.
    return Metrics.counter(METRICS_NAMESPACE, name)


def _json_default(value: object) -> str:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def event_json(event: dict[str, Any]) -> bytes:
    """A decoded event as canonical JSON (sorted keys, ISO times): a dead letter's payload."""
    return json.dumps(event, default=_json_default, sort_keys=True).encode()


def dead_letter(
    stage: str,
    reason: str,
    payload: bytes,
    attributes: dict[str, str],
    event_id: str | None = None,
) -> dict[str, Any]:
    """A dead-letter row: why, where, and the raw payload to replay or inspect."""
    return {
        "dead_at": dt.datetime.now(dt.UTC),
        "stage": stage,
        "reason": reason,
        "event_id": event_id,
        "batch_id": attributes.get(ATTR_BATCH_ID),
        "payload_base64": base64.b64encode(payload).decode("ascii"),
        "attributes_json": json.dumps(attributes, sort_keys=True),
    }


class _DecodeFn(beam.DoFn):
    def __init__(self, period_seconds: int) -> None:
        self.period_seconds = period_seconds

    def start_bundle(self) -> None:
        # (window, period) → [earliest receive time in µs, the bundle's batches of that period]
        self.pending: dict[tuple[Any, int], tuple[int, list[pa.RecordBatch]]] = {}

    def setup(self) -> None:
        self.messages = _counter("messages_read")
        self.heartbeats = _counter("heartbeats")
        self.undecodable = _counter("messages_undecodable")
        self.decoded = _counter("events_decoded")
        self.invalid = _counter("events_invalid")

    def process(self, message: PubsubMessage, in_window: Any = beam.DoFn.WindowParam) -> Iterator[Any]:
        attributes = dict(message.attributes or {})
        if attributes.get(ATTR_KIND) == KIND_HEARTBEAT:
            self.heartbeats.inc()
            return
        self.messages.inc()
        try:
            plays = decode_plays(message.data, attributes)
        except DecodeError as error:
            self.undecodable.inc()
            yield pvalue.TaggedOutput(
                DecodeOutput.DEAD_LETTERS.value,
                dead_letter("decode", str(error), message.data, attributes),
            )
            return
        for event, errors in plays.invalid:
            self.invalid.inc()
            yield pvalue.TaggedOutput(
                DecodeOutput.DEAD_LETTERS.value,
                dead_letter("validate", "; ".join(errors), event_json(event), attributes, event["event_id"]),
            )
        self.decoded.inc(plays.valid.num_rows)
        # Event time is the gateway's receive time: it assigns the accounting period, so
        # a batch is split where a period ends and stamped with its earliest receive time.
        for earliest_micros, rows in split_by_period(plays.valid, self.period_seconds):
            key = (in_window, earliest_micros // (self.period_seconds * 1_000_000))
            earliest, batches = self.pending.get(key, (earliest_micros, []))
            batches.append(rows)
            self.pending[key] = (min(earliest, earliest_micros), batches)

    def finish_bundle(self) -> Iterator[WindowedValue]:
        # A bundle's plays of one period go on as one batch, in the order they came: every
        # step after this one pays its per-element costs once per bundle, not per message.
        for (in_window, _), (earliest_micros, batches) in self.pending.items():
            rows = batches[0] if len(batches) == 1 else pa.concat_batches(batches)
            yield WindowedValue(rows, Timestamp(micros=earliest_micros), (in_window,))
        self.pending = {}


class DecodePlayMessages(beam.PTransform):
    """Pub/Sub messages → batches of valid play events (``pa.RecordBatch``), plus dead letters.

    The events of a bundle's messages travel together, in the order they came, one batch
    per accounting period of ``period_seconds`` (and window of the messages), stamped
    with the earliest ``received_at`` in it; each invalid event and each undecodable
    message is a dead letter. Heartbeat messages (which keep an idle source moving) are
    counted and dropped. Returns a tagged result:
    ``result[DecodeOutput.EVENTS.value]`` and ``result[DecodeOutput.DEAD_LETTERS.value]``.
    """

    def __init__(self, period_seconds: int) -> None:
        super().__init__()
        if period_seconds <= 0:
            raise ValueError("period_seconds must be positive")
        self.period_seconds = period_seconds

    def expand(self, messages: beam.PCollection) -> pvalue.DoOutputsTuple:
        return messages | "Decode" >> beam.ParDo(_DecodeFn(self.period_seconds)).with_outputs(
            DecodeOutput.DEAD_LETTERS.value, main=DecodeOutput.EVENTS.value
        )


class _ShardFn(beam.DoFn):
    """A batch → ``(shard, its rows in that shard)``, order kept, so one key sees every copy of an id."""

    def __init__(self, shards: int) -> None:
        self.shards = shards

    def process(self, batch: pa.RecordBatch) -> Iterator[tuple[int, pa.RecordBatch]]:
        if self.shards == 1:
            yield 0, batch
            return
        order, runs = shard_runs(shard_of(event_keys(batch["event_id"]), self.shards), self.shards)
        if len(runs) == 1:
            yield runs[0][0], batch
            return
        ordered = batch.take(pa.array(order))
        for number, start, stop in runs:
            yield number, ordered.slice(start, stop - start)


PRUNE_SECONDS = 60
"""Remembered ids are forgotten at whole minutes: at least the horizon, at most a minute more."""


def _ceil_to(seconds: np.ndarray, step: int) -> np.ndarray:
    rounded: np.ndarray = -(-seconds // step) * step
    return rounded


class _DedupFn(beam.DoFn):
    """Checks one shard's batches against the ids it remembers (see ``pipelines.remembered_ids``)."""

    RECENT = userstate.BagStateSpec("recent", RememberedIdsCoder())
    RUNS = userstate.BagStateSpec("runs", RememberedIdsCoder())
    SETTLED = userstate.ReadModifyWriteStateSpec("settled", RememberedIdsCoder())
    PRUNE_AT = userstate.ReadModifyWriteStateSpec("prune_at", VarIntCoder())
    PRUNE = userstate.TimerSpec("prune", userstate.TimeDomain.WATERMARK)

    def __init__(self, horizon_seconds: int) -> None:
        self.horizon_seconds = horizon_seconds

    def setup(self) -> None:
        self.unique = _counter("events_unique")
        self.duplicates = _counter("events_duplicate")
        self.conflicts = _counter("events_conflict")
        self.remembered = _counter("dedup_ids_remembered")
        self.forgotten = _counter("dedup_ids_forgotten")

    def process(
        self,
        shard_batch: tuple[int, pa.RecordBatch],
        recent: Any = beam.DoFn.StateParam(RECENT),
        runs: Any = beam.DoFn.StateParam(RUNS),
        settled: Any = beam.DoFn.StateParam(SETTLED),
        prune_at: Any = beam.DoFn.StateParam(PRUNE_AT),
        prune: Any = beam.DoFn.TimerParam(PRUNE),
    ) -> Iterator[Any]:
        _, batch = shard_batch
        keys = event_keys(batch["event_id"])
        fingerprints = content_fingerprints(batch)
        distinct, first_row, row_key = np.unique(keys, return_index=True, return_inverse=True)
        hi, lo = key_halves(distinct)
        recent_chunks = list(recent.read())
        run_chunks = list(runs.read())
        settled_chunk = settled.read()
        remembered = [] if settled_chunk is None else [settled_chunk]
        seen = np.zeros(len(distinct), bool)
        first_fingerprint = fingerprints[first_row]
        for chunk in remembered + run_chunks + recent_chunks:
            found, stored = find(chunk, hi, lo)
            seen |= found
            first_fingerprint = np.where(found, stored, first_fingerprint)
        # A row is new if its id was not remembered and no earlier row of the batch has it.
        new = ~seen[row_key] & (np.arange(batch.num_rows) == first_row[row_key])
        conflict = ~new & (fingerprints != first_fingerprint[row_key])
        new_count = int(new.sum())
        self.unique.inc(new_count)
        if new_count:
            yield batch if new_count == batch.num_rows else batch.filter(pa.array(new))
        if new_count < batch.num_rows:
            self.duplicates.inc(batch.num_rows - new_count)
            yield pvalue.TaggedOutput(DedupOutput.DUPLICATES.value, batch.filter(pa.array(~new)))
        if conflict.any():
            self.conflicts.inc(int(conflict.sum()))
            for event in batch.filter(pa.array(conflict)).to_pylist():
                # Counted once (the first copy), and the disagreement kept for a human.
                yield pvalue.TaggedOutput(
                    DedupOutput.CONFLICTS.value,
                    dead_letter(
                        "dedup",
                        "conflicting duplicate: same event_id as an earlier copy, different content",
                        event_json(event),
                        {},
                        event["event_id"],
                    ),
                )
        if not new_count:
            return
        # The horizon counts from the first copy's receive time; later copies do not extend it.
        received_micros = batch["received_at"].cast(pa.int64()).to_numpy()[first_row[~seen]]
        expires = _ceil_to(received_micros // 1_000_000 + self.horizon_seconds, PRUNE_SECONDS)
        chunk = chunk_of(distinct[~seen], first_fingerprint[~seen], expires)
        self.remembered.inc(chunk.shape[1])
        _remember(chunk, recent, recent_chunks, runs, run_chunks, settled, settled_chunk)
        earliest = int(expires.min())
        pending = prune_at.read()
        if pending is None or earliest < pending:
            prune.set(Timestamp(seconds=earliest))
            prune_at.write(earliest)

    @userstate.on_timer(PRUNE)
    def forget_expired(
        self,
        fired_at: Any = beam.DoFn.TimestampParam,
        recent: Any = beam.DoFn.StateParam(RECENT),
        runs: Any = beam.DoFn.StateParam(RUNS),
        settled: Any = beam.DoFn.StateParam(SETTLED),
        prune_at: Any = beam.DoFn.StateParam(PRUNE_AT),
        prune: Any = beam.DoFn.TimerParam(PRUNE),
    ) -> None:
        now = int(fired_at.micros // 1_000_000)
        kept = []
        before = 0
        for cell in (recent, runs):
            merged = merge(list(cell.read()))
            chunk = unexpired(merged, now)
            before += merged.shape[1]
            cell.clear()
            if chunk.shape[1]:
                cell.add(chunk)
            kept.append(chunk)
        settled_chunk = settled.read()
        if settled_chunk is not None:
            chunk = unexpired(settled_chunk, now)
            before += settled_chunk.shape[1]
            if chunk.shape[1] < settled_chunk.shape[1]:
                settled.write(chunk)
            kept.append(chunk)
        self.forgotten.inc(before - sum(chunk.shape[1] for chunk in kept))
        remaining = [chunk for chunk in kept if chunk.shape[1]]
        if not remaining:
            prune_at.clear()
            return
        earliest = min(int(chunk[EXPIRES].min()) for chunk in remaining)
        prune.set(Timestamp(seconds=earliest))
        prune_at.write(earliest)


def _remember(
    chunk: np.ndarray,
    recent: Any,
    recent_chunks: list[np.ndarray],
    runs: Any,
    run_chunks: list[np.ndarray],
    settled: Any,
    settled_chunk: np.ndarray | None,
) -> None:
    """Add a sorted chunk of new ids, merging a full cell into the next one down."""
    if len(recent_chunks) < MAX_CHUNKS:
        recent.add(chunk)
        return
    recent.clear()
    run = merge([*recent_chunks, chunk])
    if len(run_chunks) < MAX_CHUNKS:
        runs.add(run)
        return
    runs.clear()
    merged = merge([*run_chunks, run])
    size = 0 if settled_chunk is None else settled_chunk.shape[1]
    if 2 * merged.shape[1] >= size:
        # Rewriting the settled array costs its size: only once the runs have grown to half of it.
        settled.write(merged if settled_chunk is None else merge([settled_chunk, merged]))
    else:
        runs.add(merged)


class DedupByEventId(beam.PTransform):
    """Keep the first copy of each ``event_id`` seen within ``dedup_horizon_seconds``.

    Batches of plays → the batches' first copies (``DedupOutput.UNIQUE``), the later
    copies (``DedupOutput.DUPLICATES``) and a dead letter per later copy whose content
    differs from the first (``DedupOutput.CONFLICTS``). Modelled on Beam's
    ``DeduplicatePerKey`` (state plus an event-time timer, in the global window, so a
    retry that crosses a period boundary is still caught), but keyed by a hash of the
    id into ``shards`` and checked a batch at a time: an id is remembered at least
    ``dedup_horizon_seconds`` after its first copy was received, and forgotten by the
    next whole minute once the watermark has passed that.
    """

    def __init__(self, dedup_horizon_seconds: int, shards: int) -> None:
        super().__init__()
        if dedup_horizon_seconds <= 0:
            raise ValueError("dedup_horizon_seconds must be positive")
        if shards <= 0:
            raise ValueError("shards must be positive")
        self.horizon_seconds = dedup_horizon_seconds
        self.shards = shards

    def expand(self, events: beam.PCollection) -> pvalue.DoOutputsTuple:
        if not events.windowing.is_default():
            # Dedup spans periods: one global window, whatever the input's windowing.
            events = events | "GlobalWindow" >> beam.WindowInto(window.GlobalWindows())
        return (
            events
            | "ShardByEventId"
            >> beam.ParDo(_ShardFn(self.shards)).with_output_types(beam.typehints.KV[int, pa.RecordBatch])
            | "FirstCopyOnly"
            >> beam.ParDo(_DedupFn(self.horizon_seconds)).with_outputs(
                DedupOutput.DUPLICATES.value, DedupOutput.CONFLICTS.value, main=DedupOutput.UNIQUE.value
            )
        )


PlayGroup = tuple[str, str, str]
"""(track_id, territory, product): the plays in one group earn the same per stream."""


def combine_per_key(combine_fn: beam.CombineFn) -> beam.PTransform:
    """``CombinePerKey`` that combines within each bundle before the shuffle, in any windowing.

    Beam's direct runner lifts a combiner only in the global window with the default
    trigger; in our windows every input element would otherwise go through the trigger
    machinery one by one. Combining is associative, so pre-combining a bundle's elements
    per key and window gives the same panes.
    """
    return LiftedCombinePerKey(combine_fn, (), {})


PlayCounts = dict[PlayGroup, tuple[int, int]]
"""``(plays, streams)`` per play group."""


PLAY_GROUP_COLUMNS = ["track_id", "territory", "product"]
PLAY_COUNTS_SCHEMA = pa.schema(
    [
        *(pa.field(name, pa.string()) for name in PLAY_GROUP_COLUMNS),
        pa.field("plays", pa.int64()),
        pa.field("streams", pa.int64()),
    ]
)
"""Plays and streams per play group, as a table (``PLAY_COUNTS_SCHEMA``)."""


def count_play_table(
    plays: pa.RecordBatch | pa.Table, min_stream_ms: int, counted: np.ndarray | None = None
) -> pa.Table:
    """Plays and streams per (track, territory, product) among the rows marked ``counted`` (all).

    Counted column-wise in Arrow. The group columns may be dictionary-encoded (grouped by
    code); the counts are plain strings. Groups with no play counted are left out.
    """
    rows = plays if isinstance(plays, pa.Table) else pa.Table.from_batches([plays])
    if counted is None:
        counted = np.ones(rows.num_rows, bool)
    is_stream = pc.greater_equal(rows["ms_played"], min_stream_ms).fill_null(False).to_numpy()
    summed = (
        # One dictionary per column across chunks: Arrow groups by codes only within one.
        rows.select(PLAY_GROUP_COLUMNS)
        .unify_dictionaries()
        .append_column("plays", pa.array(counted.astype(np.int64)))
        .append_column("streams", pa.array((counted & is_stream).astype(np.int64)))
        .group_by(PLAY_GROUP_COLUMNS, use_threads=False)
        .aggregate([("plays", "sum"), ("streams", "sum")])
    )
    counts = pa.table(
        [
            *(plain_values(summed[name]) for name in PLAY_GROUP_COLUMNS),
            summed["plays_sum"],
            summed["streams_sum"],
        ],
        schema=PLAY_COUNTS_SCHEMA,
    )
    return counts.filter(pc.greater(counts["plays"], 0))


def play_counts_of(counts: pa.Table) -> PlayCounts:
    """A table of ``PLAY_COUNTS_SCHEMA`` as ``PlayCounts``."""
    columns = [counts[name].to_pylist() for name in PLAY_COUNTS_SCHEMA.names]
    return {
        (track_id, territory, product): (plays, streams)
        for track_id, territory, product, plays, streams in zip(*columns, strict=True)
    }


def count_plays(plays: pa.RecordBatch | pa.Table, min_stream_ms: int) -> PlayCounts:
    """Plays and streams per (track, territory, product) of every row."""
    return play_counts_of(count_play_table(plays, min_stream_ms))


class _PendingCounts:
    """A ``CountPlaysFn`` accumulator: counts so far, and batches not counted yet."""

    __slots__ = ("batches", "counts")

    def __init__(self, counts: PlayCounts | None = None) -> None:
        self.counts: PlayCounts = counts or {}
        self.batches: list[pa.RecordBatch] = []


class CountPlaysFn(beam.CombineFn):
    """Batches of plays → ``PlayCounts``; batches are gathered and counted together in one pass.

    Unlike ``TupleCombineFn`` it merges an empty list of accumulators: the direct runner
    hands a combiner the empty pane a processing-time trigger can fire when a key's
    elements were already emitted (``TupleCombineFn`` then raises ``StopIteration``).
    """

    def __init__(self, min_stream_ms: int) -> None:
        self.min_stream_ms = min_stream_ms

    def create_accumulator(self) -> _PendingCounts:
        return _PendingCounts()

    def add_input(self, accumulator: _PendingCounts, batch: pa.RecordBatch) -> _PendingCounts:
        if batch.num_rows:
            accumulator.batches.append(batch)
        return accumulator

    def compact(self, accumulator: _PendingCounts) -> _PendingCounts:
        if not accumulator.batches:
            return accumulator
        counted = count_plays(pa.Table.from_batches(accumulator.batches), self.min_stream_ms)
        return _PendingCounts(_sum_counts([accumulator.counts, counted]))

    def merge_accumulators(self, accumulators: Iterable[_PendingCounts]) -> _PendingCounts:
        return _PendingCounts(_sum_counts(self.compact(accumulator).counts for accumulator in accumulators))

    def extract_output(self, accumulator: _PendingCounts) -> PlayCounts:
        return self.compact(accumulator).counts


def _sum_counts(all_counts: Iterable[PlayCounts]) -> PlayCounts:
    summed: PlayCounts = {}
    for counts in all_counts:
        for group, (plays, streams) in counts.items():
            before = summed.get(group)
            summed[group] = (plays, streams) if before is None else (before[0] + plays, before[1] + streams)
    return summed


# FlatMap over module functions rather than Map or Values, which wrap the function in
# a lambda: the direct runner pickles every step for every bundle, and a lambda by value.
def _under_one_key(batch: pa.RecordBatch) -> list[tuple[None, pa.RecordBatch]]:
    return [(None, batch)]


def _value(keyed: tuple[Any, PlayCounts]) -> list[PlayCounts]:
    return [keyed[1]]


class CountPlays(beam.PTransform):
    """Batches of unique plays → one ``PlayCounts`` per pane: ``(plays, streams)`` per group.

    A play of at least ``min_stream_ms`` is a stream. Counting before attributing is
    exact: every stream of a group earns the same gross, split the same way. A pane's
    batches are counted together, column-wise; an empty pane counts nothing.
    """

    def __init__(self, min_stream_ms: int) -> None:
        super().__init__()
        if min_stream_ms < 0:
            raise ValueError("min_stream_ms must not be negative")
        self.min_stream_ms = min_stream_ms

    def expand(self, batches: beam.PCollection) -> beam.PCollection:
        return (
            batches
            | "OneKey" >> beam.FlatMap(_under_one_key)
            | "CountPerPane" >> combine_per_key(CountPlaysFn(self.min_stream_ms))
            | "PaneCounts" >> beam.FlatMap(_value)
        )


_PANE_TIMING = {
    beam.utils.windowed_value.PaneInfoTiming.EARLY: "EARLY",
    beam.utils.windowed_value.PaneInfoTiming.ON_TIME: "ON_TIME",
    beam.utils.windowed_value.PaneInfoTiming.LATE: "LATE",
    beam.utils.windowed_value.PaneInfoTiming.UNKNOWN: "UNKNOWN",
}


class _AttributeCountsFn(beam.DoFn):
    def __init__(self, period: tuple[dt.datetime, dt.datetime] | None) -> None:
        self.period = period

    def setup(self) -> None:
        self.plays = _counter("plays")
        self.streams = _counter("streams")
        self.unmatched = _counter("plays_unmatched")
        self.parts = _counter("attributed_parts")

    def process(
        self,
        counts: PlayCounts,
        catalog: Catalog,
        window: Any = beam.DoFn.WindowParam,
        pane: Any = beam.DoFn.PaneInfoParam,
    ) -> Iterator[pa.Table]:
        if self.period is not None:
            period_start, period_end = self.period
            timing = "FINAL"
        else:
            period_start = window.start.to_utc_datetime(has_tz=True)
            period_end = window.end.to_utc_datetime(has_tz=True)
            timing = _PANE_TIMING.get(pane.timing, "UNKNOWN")
        written_at = dt.datetime.now(dt.UTC)
        columns: dict[str, list[Any]] = {name: [] for name in LEDGER_SCHEMA.names}
        for (track_id, territory, product), (plays, streams) in counts.items():
            if plays == 0:
                continue
            self.plays.inc(plays)
            self.streams.inc(streams)
            # Each stream of the group earns the same parts; a play that is no stream earns none.
            per_stream = attribute_play(catalog, track_id, territory, product, True)
            if per_stream and per_stream[0].rights_holder_id == UNMATCHED:
                self.unmatched.inc(plays)
            self.parts.inc(plays * len(per_stream))
            for part in per_stream:
                columns["rights_holder_id"].append(part.rights_holder_id)
                columns["track_id"].append(track_id)
                columns["territory"].append(territory)
                columns["product"].append(product)
                columns["plays"].append(plays)
                columns["streams"].append(streams)
                columns["amount_micros"].append(part.amount_micros * streams)
                columns["currency"].append(part.currency)
        count = len(columns["track_id"])
        if not count:
            return
        columns["period_start"] = [period_start] * count
        columns["period_end"] = [period_end] * count
        columns["pane_timing"] = [timing] * count
        columns["written_at"] = [written_at] * count
        yield pa.table(columns, schema=LEDGER_SCHEMA)


class AttributeCounts(beam.PTransform):
    """A pane's play counts (``PlayCounts``) → that pane's ledger rows, as one Arrow table.

    One row per rights holder of each group's track. Streams earn the catalog rate for
    (territory, product), else the ``*`` rate, split by the contract's largest-remainder
    rule; every holder of the track counts the plays. An unknown track goes whole to
    ``UNMATCHED``. The period is the window's (streaming: each pane is a delta) unless
    ``period`` is given (batch: final rows). Rows travel as one table (``LEDGER_SCHEMA``)
    per pane: a pane can touch every track of the catalog, and one element per row costs
    more than the rows.
    """

    def __init__(
        self, catalog: beam.pvalue.AsSideInput, period: tuple[dt.datetime, dt.datetime] | None = None
    ) -> None:
        super().__init__()
        if period is not None and not period[0] < period[1]:
            raise ValueError("period must start before it ends")
        self.catalog = catalog
        self.period = period

    def expand(self, counts: beam.PCollection) -> beam.PCollection:
        return counts | "Attribute" >> beam.ParDo(
            _AttributeCountsFn(self.period), self.catalog
        ).with_output_types(pa.Table)


def append_window(
    window_seconds: int,
    firing_seconds: int,
    allowed_lateness: Duration,
    late_firing_seconds: int | None = None,
) -> beam.WindowInto:
    """Fixed windows whose panes are deltas, for tables that are appended to.

    Early panes fill the table while the window is open; late data is batched into delta
    panes every ``late_firing_seconds`` (default: ``firing_seconds``) rather than one tiny
    pane per element; 0 fires a pane per late element.
    """
    late_seconds = firing_seconds if late_firing_seconds is None else late_firing_seconds
    late = trigger.AfterProcessingTime(late_seconds) if late_seconds > 0 else trigger.AfterCount(1)
    return beam.WindowInto(
        window.FixedWindows(window_seconds),
        trigger=trigger.AfterWatermark(early=trigger.AfterProcessingTime(firing_seconds), late=late),
        accumulation_mode=trigger.AccumulationMode.DISCARDING,
        allowed_lateness=allowed_lateness,
    )


class AggregateLedger(beam.PTransform):
    """Unique plays → ledger delta rows per period (fixed windows of ``received_at``).

    Panes discard what they emitted, so each row is a delta and balances are sums.
    Returns ``(ledger_rows, outcomes)``: the rows, and ``(counter, count)`` pairs per pane
    for ``CountBranches``: plays that qualified as streams, plays of tracks the catalog
    lacks (``UNMATCHED``), and plays that arrived after their period closed (late).
    """

    def __init__(
        self,
        catalog: beam.pvalue.AsSideInput,
        period_seconds: int,
        early_firing_seconds: int,
        allowed_lateness_hours: int,
        min_stream_ms: int,
        late_firing_seconds: int | None = None,
    ) -> None:
        super().__init__()
        if period_seconds <= 0 or early_firing_seconds <= 0:
            raise ValueError("period_seconds and early_firing_seconds must be positive")
        if allowed_lateness_hours < 0:
            raise ValueError("allowed_lateness_hours must not be negative")
        self.catalog = catalog
        self.period_seconds = period_seconds
        self.early_firing_seconds = early_firing_seconds
        self.allowed_lateness = Duration(seconds=allowed_lateness_hours * 3600)
        self.min_stream_ms = min_stream_ms
        self.late_firing_seconds = late_firing_seconds

    def expand(self, events: beam.PCollection) -> tuple[beam.PCollection, beam.PCollection]:
        counts = (
            events
            | "WindowByPeriod"
            >> append_window(
                self.period_seconds,
                self.early_firing_seconds,
                self.allowed_lateness,
                self.late_firing_seconds,
            )
            | "CountPlays" >> CountPlays(self.min_stream_ms)
        )
        ledger_rows = counts | "AttributeCounts" >> AttributeCounts(self.catalog)
        outcomes = counts | "CountOutcomes" >> beam.ParDo(_OutcomeCountsFn(), self.catalog)
        return ledger_rows, outcomes


class _OutcomeCountsFn(beam.DoFn):
    """A pane's ``PlayCounts`` → ``(counter, count)`` pairs: qualified, unmatched and late plays."""

    def process(
        self,
        counts: PlayCounts,
        catalog: Catalog,
        pane: Any = beam.DoFn.PaneInfoParam,
    ) -> Iterator[tuple[str, int]]:
        qualified = unmatched = plays_in_pane = 0
        for (track_id, territory, product), (plays, streams) in counts.items():
            qualified += streams
            plays_in_pane += plays
            if (
                plays
                and attribute_play(catalog, track_id, territory, product, True)[0].rights_holder_id
                == UNMATCHED
            ):
                unmatched += plays
        if qualified:
            yield "plays_qualified", qualified
        if unmatched:
            yield "plays_unmatched", unmatched
        if plays_in_pane and pane.timing == beam.utils.windowed_value.PaneInfoTiming.LATE:
            yield "plays_late", plays_in_pane


class _ToCounterRowFn(beam.DoFn):
    def process(
        self,
        named_count: tuple[str, int],
        window: Any = beam.DoFn.WindowParam,
        pane: Any = beam.DoFn.PaneInfoParam,
    ) -> Iterator[dict[str, Any]]:
        counter, value = named_count
        if value == 0:
            # An empty pane: nothing counted. (A comment after ``return`` would make
            # Beam's lint take it for a returned value beside ``yield``.)
            return
        yield {
            "period_start": window.start.to_utc_datetime(has_tz=True),
            "period_end": window.end.to_utc_datetime(has_tz=True),
            "counter": counter,
            "value": value,
            "pane_timing": _PANE_TIMING.get(pane.timing, "UNKNOWN"),
            "written_at": dt.datetime.now(dt.UTC),
        }


class _NamedCountsFn(beam.DoFn):
    """A branch's elements → their ``(counter, count)`` pairs, by the branch's function.

    A DoFn rather than ``FlatMap``: the direct runner pickles every step for every
    bundle, and ``FlatMap``'s wrapper pickles several times the function's size.
    """

    def __init__(self, namer: Callable[[Any], Iterable[tuple[str, int]]]) -> None:
        self.namer = namer

    def process(self, element: Any) -> Iterable[tuple[str, int]]:
        return self.namer(element)


class CountBranches(beam.PTransform):
    """Named branches of the pipeline → counter rows per period (deltas, like the ledger).

    Each branch has a function from an element to its ``(counter, count)`` pairs: a batch
    of plays counts its rows, a dead letter counts one under its stage's counter. An
    element counts in the period of its timestamp (a batch's ``received_at``; an
    undecodable message's publish time; a pane's end), so reconciliation can balance a
    period: ``decoded = unique + duplicate``, and so on.
    """

    def __init__(
        self,
        branches: dict[str, Any],
        period_seconds: int,
        early_firing_seconds: int,
        allowed_lateness_hours: int,
        late_firing_seconds: int | None = None,
    ) -> None:
        super().__init__()
        if not branches:
            raise ValueError("at least one branch to count")
        self.branches = branches
        self.window = (
            period_seconds,
            early_firing_seconds,
            Duration(seconds=allowed_lateness_hours * 3600),
            late_firing_seconds,
        )

    def expand(self, pcolls: dict[str, beam.PCollection]) -> beam.PCollection:
        # Each branch is windowed by period before they are flattened: the branches come
        # windowed differently (the ledger's panes, or the global window), and Flatten
        # wants its inputs windowed alike. An element's period is its timestamp's either way.
        # One WindowInto for all: Beam's triggers compare equal only to themselves.
        by_period = append_window(*self.window)
        named = [
            pcoll
            | f"Name{name}" >> beam.ParDo(_NamedCountsFn(self.branches[name]))
            | f"WindowByPeriod{name}" >> by_period
            for name, pcoll in pcolls.items()
        ]
        return (
            named
            | "AllBranches" >> beam.Flatten()
            | "SumPerCounter" >> combine_per_key(beam.CombineFn.from_callable(sum))
            | "ToCounterRow" >> beam.ParDo(_ToCounterRowFn())
        )


class _WritePaneFn(beam.DoFn):
    def __init__(
        self, table: str, table_dir: str, temp_dir: str, schema: Any, sum_column: str | None
    ) -> None:
        self.table = table
        self.table_dir = table_dir
        self.temp_dir = temp_dir
        self.schema = schema
        self.sum_column = sum_column

    def setup(self) -> None:
        self.files = _counter(f"{self.table}_files_written")
        self.rows = _counter(f"{self.table}_rows_written")
        self.summed = _counter(f"{self.table}_{self.sum_column}_written") if self.sum_column else None

    def process(
        self,
        partition_rows: tuple[str, Iterable[list[dict[str, Any]] | pa.Table]],
        pane: Any = beam.DoFn.PaneInfoParam,
    ) -> Iterator[str]:
        partition, parts = partition_rows
        tables = [
            part if isinstance(part, pa.Table) else pa.Table.from_pylist(part, schema=self.schema)
            for part in parts
        ]
        if not tables:
            # An empty pane.
            return
        rows = pa.concat_tables(tables)  # write_parquet_atomically casts to the schema
        if not rows.num_rows:
            return
        # The runner may give no pane index (the direct runner does not): a random
        # suffix keeps every pane's file name unique.
        index = "x" if pane.index is None else str(pane.index)
        path = write_parquet_atomically(
            rows,
            self.schema,
            f"{self.table_dir.rstrip('/')}/{partition}",
            self.temp_dir,
            f"part-{index}-{uuid.uuid4().hex}",
        )
        self.files.inc()
        self.rows.inc(rows.num_rows)
        if self.summed is not None and self.sum_column is not None:
            self.summed.inc(int(pc.sum(rows[self.sum_column]).as_py() or 0))
        yield path


class _KeyByPartitionFn(beam.DoFn):
    """Rows (a dict, or a table of them) → ``(partition, rows in it)``."""

    def __init__(self, column: str, time_column: str, seconds: int) -> None:
        self.column = column
        self.time_column = time_column
        self.seconds = seconds

    def partition(self, at: dt.datetime) -> str:
        floored = dt.datetime.fromtimestamp(int(at.timestamp()) // self.seconds * self.seconds, dt.UTC)
        return partition_name(self.column, floored)

    def process(self, element: dict[str, Any] | pa.Table) -> Iterator[tuple[str, Any]]:
        if isinstance(element, dict):
            yield self.partition(element[self.time_column]), [element]
            return
        times = element[self.time_column]
        for at in pc.unique(times).to_pylist():
            yield self.partition(at), element.filter(pc.equal(times, at))


class WritePaneFiles(beam.PTransform):
    """Append each pane's rows as Parquet files under ``table_dir/<column>=<period>/``.

    Elements are rows (dicts), or Arrow tables of rows (a pane's ledger rows travel together).

    ``time_column`` picks the row's partition, floored to ``partition_seconds`` (a
    period's start, or e.g. 60 for minutes); files are written to ``temp_dir`` (keep it
    outside ``table_dir``) and renamed into place. Returns the paths written.
    """

    def __init__(
        self,
        table: str,
        table_dir: str,
        temp_dir: str,
        schema: Any,
        partition_column: str,
        time_column: str,
        sum_column: str | None = None,
        partition_seconds: int = 1,
    ) -> None:
        super().__init__()
        if not table_dir or not temp_dir:
            raise ValueError("table_dir and temp_dir are required")
        if partition_seconds <= 0:
            raise ValueError("partition_seconds must be positive")
        if time_column not in schema.names:
            raise ValueError(f"time_column {time_column!r} is not in the schema")
        self.table = table
        self.table_dir = table_dir
        self.temp_dir = temp_dir
        self.schema = schema
        self.partition_column = partition_column
        self.time_column = time_column
        self.sum_column = sum_column
        self.partition_seconds = partition_seconds

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        return (
            rows
            | "KeyByPartition"
            >> beam.ParDo(_KeyByPartitionFn(self.partition_column, self.time_column, self.partition_seconds))
            | "GroupPane" >> beam.GroupByKey()
            | "WriteFile"
            >> beam.ParDo(
                _WritePaneFn(self.table, self.table_dir, self.temp_dir, self.schema, self.sum_column)
            )
        )
