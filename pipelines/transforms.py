"""The royalty transforms both pipelines are built from.

Each step is a small DoFn wrapped in a named composite; every fallible step has a
dead-letter output and a counter per branch, so reconciliation can balance them::

    messages ─ DecodePlayMessages ─┬─ events ─ DedupByEventId ─┬─ unique ─ AttributeRoyalties
                                   └─ dead letters             └─ duplicates
    ─ AggregateLedger (window by received_at, early/late panes as deltas) ─ ledger rows
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Iterable, Iterator
from enum import StrEnum
from typing import Any

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.coders import BytesCoder
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.metrics import Metrics
from apache_beam.transforms import trigger, userstate, window
from apache_beam.utils.timestamp import Duration, Timestamp

from ledger.allocation import UNMATCHED, attribute_play
from ledger.catalog import Catalog
from ledger.tables import partition_name
from pipelines.files import write_parquet_atomically
from schemas.codec import ATTR_BATCH_ID, ATTR_KIND, KIND_HEARTBEAT, DecodeError, decode_batch
from schemas.validation import check_decoded_event

__all__ = [
    "METRICS_NAMESPACE",
    "AggregateLedger",
    "AttributeCounts",
    "CountBranches",
    "CountPlays",
    "DecodeOutput",
    "DecodePlayMessages",
    "DedupByEventId",
    "DedupOutput",
    "PlayGroup",
    "SumPlaysAndStreams",
    "WritePaneFiles",
    "append_window",
    "dead_letter",
    "event_json",
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
    def __init__(self) -> None:
        self.messages = _counter("messages_read")
        self.heartbeats = _counter("heartbeats")
        self.undecodable = _counter("messages_undecodable")
        self.decoded = _counter("events_decoded")
        self.invalid = _counter("events_invalid")

    def process(self, message: PubsubMessage) -> Iterator[Any]:
        attributes = dict(message.attributes or {})
        if attributes.get(ATTR_KIND) == KIND_HEARTBEAT:
            self.heartbeats.inc()
            return
        self.messages.inc()
        try:
            events = decode_batch(message.data, attributes)
        except DecodeError as error:
            self.undecodable.inc()
            yield pvalue.TaggedOutput(
                DecodeOutput.DEAD_LETTERS.value,
                dead_letter("decode", str(error), message.data, attributes),
            )
            return
        for event in events:
            errors = check_decoded_event(event)
            if errors:
                self.invalid.inc()
                raw = event_json(event)
                yield pvalue.TaggedOutput(
                    DecodeOutput.DEAD_LETTERS.value,
                    dead_letter("validate", "; ".join(errors), raw, attributes, event.get("event_id")),
                )
                continue
            self.decoded.inc()
            # Event time is the gateway's receive time: it assigns the accounting period.
            yield window.TimestampedValue(event, Timestamp.from_utc_datetime(event["received_at"]))


class DecodePlayMessages(beam.PTransform):
    """Pub/Sub messages → play events stamped with ``received_at``, plus dead letters.

    Heartbeat messages (which keep an idle source moving) are counted and dropped.
    Returns a tagged result: ``result[DecodeOutput.EVENTS.value]`` and
    ``result[DecodeOutput.DEAD_LETTERS.value]``.
    """

    def expand(self, messages: beam.PCollection) -> pvalue.DoOutputsTuple:
        return messages | "Decode" >> beam.ParDo(_DecodeFn()).with_outputs(
            DecodeOutput.DEAD_LETTERS.value, main=DecodeOutput.EVENTS.value
        )


def content_fingerprint(event: dict[str, Any]) -> bytes:
    """A stable digest of what a play says, without when the gateway received this copy."""
    content = {name: value for name, value in event.items() if name != "received_at"}
    encoded = json.dumps(content, default=_json_default, sort_keys=True).encode()
    return hashlib.blake2b(encoded, digest_size=16).digest()


class _DedupFn(beam.DoFn):
    FIRST = userstate.ReadModifyWriteStateSpec("first_fingerprint", BytesCoder())
    EXPIRY = userstate.TimerSpec("expiry", userstate.TimeDomain.WATERMARK)

    def __init__(self, horizon: Duration) -> None:
        self.horizon = horizon
        self.unique = _counter("events_unique")
        self.duplicates = _counter("events_duplicate")
        self.conflicts = _counter("events_conflict")

    def process(
        self,
        keyed_event: tuple[str, dict[str, Any]],
        timestamp: Any = beam.DoFn.TimestampParam,
        first: Any = beam.DoFn.StateParam(FIRST),
        expiry: Any = beam.DoFn.TimerParam(EXPIRY),
    ) -> Iterator[Any]:
        _, event = keyed_event
        fingerprint = content_fingerprint(event)
        first_fingerprint = first.read()
        if first_fingerprint is not None:
            self.duplicates.inc()
            yield pvalue.TaggedOutput(DedupOutput.DUPLICATES.value, event)
            if first_fingerprint != fingerprint:
                # Counted once (the first copy), and the disagreement kept for a human.
                self.conflicts.inc()
                raw = event_json(event)
                yield pvalue.TaggedOutput(
                    DedupOutput.CONFLICTS.value,
                    dead_letter(
                        "dedup",
                        "conflicting duplicate: same event_id as an earlier copy, different content",
                        raw,
                        {},
                        event["event_id"],
                    ),
                )
            return
        first.write(fingerprint)
        # The horizon counts from the first copy; later copies do not extend it.
        expiry.set(timestamp + self.horizon)
        self.unique.inc()
        yield event

    @userstate.on_timer(EXPIRY)
    def expire(self, first: Any = beam.DoFn.StateParam(FIRST)) -> None:
        first.clear()


class DedupByEventId(beam.PTransform):
    """Keep the first copy of each ``event_id`` seen within ``dedup_horizon_hours``.

    Modelled on Beam's ``DeduplicatePerKey`` with an event-time timer only, in the
    global window, so a retry that crosses a period boundary is still caught; unlike it,
    duplicates are counted and returned (``DedupOutput.DUPLICATES``), not just dropped.
    """

    def __init__(self, dedup_horizon_hours: int) -> None:
        super().__init__()
        if dedup_horizon_hours <= 0:
            raise ValueError("dedup_horizon_hours must be positive")
        self.horizon = Duration(seconds=dedup_horizon_hours * 3600)

    def expand(self, events: beam.PCollection) -> pvalue.DoOutputsTuple:
        return (
            events
            | "GlobalWindow" >> beam.WindowInto(window.GlobalWindows())
            | "KeyByEventId"
            >> beam.Map(lambda event: (event["event_id"], event)).with_output_types(
                beam.typehints.KV[str, dict[str, Any]]
            )
            | "FirstCopyOnly"
            >> beam.ParDo(_DedupFn(self.horizon)).with_outputs(
                DedupOutput.DUPLICATES.value, DedupOutput.CONFLICTS.value, main=DedupOutput.UNIQUE.value
            )
        )


PlayGroup = tuple[str, str, str]
"""(track_id, territory, product): the plays in one group earn the same per stream."""


def _play_group(min_stream_ms: int) -> Any:
    def keyed(event: dict[str, Any]) -> tuple[PlayGroup, tuple[int, int]]:
        is_stream = int(event["ms_played"] >= min_stream_ms)
        return (event["track_id"], event["territory"], event["product"]), (1, is_stream)

    return keyed


class SumPlaysAndStreams(beam.CombineFn):
    """Sums ``(plays, streams)`` pairs.

    Unlike ``TupleCombineFn(sum, sum)`` it merges an empty list of accumulators: the
    direct runner hands a combiner the empty pane a processing-time trigger can fire
    when a key's elements were already emitted, and ``TupleCombineFn`` then raises
    ``StopIteration`` and fails the pipeline (seen under steady simulated traffic).
    """

    def create_accumulator(self) -> tuple[int, int]:
        return (0, 0)

    def add_input(self, accumulator: tuple[int, int], counts: tuple[int, int]) -> tuple[int, int]:
        return (accumulator[0] + counts[0], accumulator[1] + counts[1])

    def merge_accumulators(self, accumulators: Iterable[tuple[int, int]]) -> tuple[int, int]:
        plays = streams = 0
        for more_plays, more_streams in accumulators:
            plays += more_plays
            streams += more_streams
        return (plays, streams)

    def extract_output(self, accumulator: tuple[int, int]) -> tuple[int, int]:
        return accumulator


class CountPlays(beam.PTransform):
    """Unique plays → ``((track_id, territory, product), (plays, streams))`` per window.

    A play of at least ``min_stream_ms`` is a stream. Counting before attributing is
    exact: every stream of a group earns the same gross, split the same way.
    """

    def __init__(self, min_stream_ms: int) -> None:
        super().__init__()
        if min_stream_ms < 0:
            raise ValueError("min_stream_ms must not be negative")
        self.min_stream_ms = min_stream_ms

    def expand(self, events: beam.PCollection) -> beam.PCollection:
        return (
            events
            | "KeyByPlayGroup" >> beam.Map(_play_group(self.min_stream_ms))
            | "SumPlaysAndStreams" >> beam.CombinePerKey(SumPlaysAndStreams())
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
        self.plays = _counter("plays")
        self.streams = _counter("streams")
        self.unmatched = _counter("plays_unmatched")
        self.parts = _counter("attributed_parts")

    def process(
        self,
        group_counts: tuple[PlayGroup, tuple[int, int]],
        catalog: Catalog,
        window: Any = beam.DoFn.WindowParam,
        pane: Any = beam.DoFn.PaneInfoParam,
    ) -> Iterator[dict[str, Any]]:
        (track_id, territory, product), (plays, streams) = group_counts
        if plays == 0:
            return  # an empty pane (see SumPlaysAndStreams): nothing to count or write
        if self.period is not None:
            period_start, period_end = self.period
            timing = "FINAL"
        else:
            period_start = window.start.to_utc_datetime(has_tz=True)
            period_end = window.end.to_utc_datetime(has_tz=True)
            timing = _PANE_TIMING.get(pane.timing, "UNKNOWN")
        self.plays.inc(plays)
        self.streams.inc(streams)
        # Each stream of the group earns the same parts; a play that is no stream earns none.
        per_stream = attribute_play(catalog, track_id, territory, product, True)
        if per_stream and per_stream[0].rights_holder_id == UNMATCHED:
            self.unmatched.inc(plays)
        written_at = dt.datetime.now(dt.UTC)
        for part in per_stream:
            self.parts.inc(plays)
            yield {
                "period_start": period_start,
                "period_end": period_end,
                "rights_holder_id": part.rights_holder_id,
                "track_id": track_id,
                "territory": territory,
                "product": product,
                "plays": plays,
                "streams": streams,
                "amount_micros": part.amount_micros * streams,
                "currency": part.currency,
                "pane_timing": timing,
                "written_at": written_at,
            }


class AttributeCounts(beam.PTransform):
    """Play counts per group → ledger rows, one per rights holder of the track.

    Streams earn the catalog rate for (territory, product), else the ``*`` rate, split
    by the contract's largest-remainder rule; every holder of the track counts the
    plays. An unknown track goes whole to ``UNMATCHED``. The period is the window's
    (streaming: each pane is a delta) unless ``period`` is given (batch: final rows).
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
        return counts | "Attribute" >> beam.ParDo(_AttributeCountsFn(self.period), self.catalog)


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

    def expand(self, events: beam.PCollection) -> beam.PCollection:
        return (
            events
            | "WindowByPeriod"
            >> append_window(
                self.period_seconds,
                self.early_firing_seconds,
                self.allowed_lateness,
                self.late_firing_seconds,
            )
            | "CountPlays" >> CountPlays(self.min_stream_ms)
            | "AttributeCounts" >> AttributeCounts(self.catalog)
        )


class _ToCounterRowFn(beam.DoFn):
    def process(
        self,
        named_count: tuple[str, int],
        window: Any = beam.DoFn.WindowParam,
        pane: Any = beam.DoFn.PaneInfoParam,
    ) -> Iterator[dict[str, Any]]:
        counter, value = named_count
        if value == 0:
            return  # an empty pane: nothing counted
        yield {
            "period_start": window.start.to_utc_datetime(has_tz=True),
            "period_end": window.end.to_utc_datetime(has_tz=True),
            "counter": counter,
            "value": value,
            "pane_timing": _PANE_TIMING.get(pane.timing, "UNKNOWN"),
            "written_at": dt.datetime.now(dt.UTC),
        }


class CountBranches(beam.PTransform):
    """Named branches of the pipeline → counter rows per period (deltas, like the ledger).

    Each element of a branch counts once in the period of its timestamp (an event's
    ``received_at``; an undecodable message's publish time), so reconciliation can
    balance a period: ``decoded = unique + duplicate``, and so on. A branch given as a
    function names each element's counter (dead letters count per stage).
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
        keyed = []
        for name, pcoll in pcolls.items():
            namer = self.branches[name]
            keyed.append(pcoll | f"Name{name}" >> beam.Map(lambda element, n=namer: (n(element), 1)))
        return (
            keyed
            | "AllBranches" >> beam.Flatten()
            | "WindowByPeriod" >> append_window(*self.window)
            | "SumPerCounter" >> beam.CombinePerKey(sum)
            | "ToCounterRow" >> beam.ParDo(_ToCounterRowFn())
        )


class _WritePaneFn(beam.DoFn):
    def __init__(
        self, table: str, table_dir: str, temp_dir: str, schema: Any, sum_column: str | None
    ) -> None:
        self.table_dir = table_dir
        self.temp_dir = temp_dir
        self.schema = schema
        self.sum_column = sum_column
        self.files = _counter(f"{table}_files_written")
        self.rows = _counter(f"{table}_rows_written")
        self.summed = _counter(f"{table}_{sum_column}_written") if sum_column else None

    def process(
        self,
        partition_rows: tuple[str, Iterable[dict[str, Any]]],
        pane: Any = beam.DoFn.PaneInfoParam,
    ) -> Iterator[str]:
        partition, rows = partition_rows
        rows = list(rows)
        if not rows:
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
        self.rows.inc(len(rows))
        if self.summed is not None and self.sum_column is not None:
            self.summed.inc(sum(int(row[self.sum_column]) for row in rows))
        yield path


class WritePaneFiles(beam.PTransform):
    """Append each pane's rows as Parquet files under ``table_dir/<column>=<period>/``.

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
        column, time_column, seconds = self.partition_column, self.time_column, self.partition_seconds

        def partition(row: dict[str, Any]) -> str:
            at: dt.datetime = row[time_column]
            floored = dt.datetime.fromtimestamp(int(at.timestamp()) // seconds * seconds, dt.UTC)
            return partition_name(column, floored)

        return (
            rows
            | "KeyByPartition" >> beam.Map(lambda row: (partition(row), row))
            | "GroupPane" >> beam.GroupByKey()
            | "WriteFile"
            >> beam.ParDo(
                _WritePaneFn(self.table, self.table_dir, self.temp_dir, self.schema, self.sum_column)
            )
        )
