"""Exact de-duplication by ``event_id`` within a horizon: keyed state and an event-time timer."""

from __future__ import annotations

from collections.abc import Iterator
from enum import StrEnum
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam import pvalue
from apache_beam.coders import VarIntCoder
from apache_beam.transforms import userstate, window
from apache_beam.utils.timestamp import Timestamp

from ledger.counters import Counter
from ledger.dead_letters import DeadLetterStage, dead_letter, event_json
from pipelines.transforms.metrics import beam_counter
from pipelines.transforms.play_batches import (
    content_fingerprints,
    event_keys,
    shard_of,
    shard_runs,
)
from pipelines.transforms.remembered_ids import (
    EXPIRES,
    MAX_CHUNKS,
    RememberedIdsCoder,
    chunk_of,
    find,
    key_halves,
    merge,
    unexpired,
)


class DedupOutput(StrEnum):
    """Branches of ``DedupByEventId``."""

    UNIQUE = "unique"
    DUPLICATES = "duplicates"
    CONFLICTS = "conflicts"


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
    """Checks one shard's batches against the ids it remembers (see ``remembered_ids``)."""

    RECENT = userstate.BagStateSpec("recent", RememberedIdsCoder())
    RUNS = userstate.BagStateSpec("runs", RememberedIdsCoder())
    SETTLED = userstate.ReadModifyWriteStateSpec("settled", RememberedIdsCoder())
    PRUNE_AT = userstate.ReadModifyWriteStateSpec("prune_at", VarIntCoder())
    PRUNE = userstate.TimerSpec("prune", userstate.TimeDomain.WATERMARK)

    def __init__(self, horizon_seconds: int) -> None:
        self.horizon_seconds = horizon_seconds

    def setup(self) -> None:
        self.unique = beam_counter(Counter.EVENTS_UNIQUE)
        self.duplicates = beam_counter(Counter.EVENTS_DUPLICATE)
        self.conflicts = beam_counter(Counter.EVENTS_CONFLICT)
        self.remembered = beam_counter(Counter.DEDUP_IDS_REMEMBERED)
        self.forgotten = beam_counter(Counter.DEDUP_IDS_FORGOTTEN)

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
                        DeadLetterStage.DEDUP,
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
