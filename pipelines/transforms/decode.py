"""Pub/Sub messages → batches of valid plays (Arrow record batches), and dead letters."""

from __future__ import annotations

from collections.abc import Iterator
from enum import StrEnum
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam import pvalue
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from ledger.counters import Counter
from ledger.dead_letters import DeadLetterStage, dead_letter, event_json
from pipelines.transforms.metrics import beam_counter
from pipelines.transforms.play_batches import (
    decode_plays,
    split_by_period,
)
from schemas.codec import ATTR_KIND, KIND_HEARTBEAT, DecodeError


class DecodeOutput(StrEnum):
    """Branches of ``DecodePlayMessages``."""

    EVENTS = "events"
    DEAD_LETTERS = "dead_letters"


class _DecodeFn(beam.DoFn):
    def __init__(self, period_seconds: int) -> None:
        self.period_seconds = period_seconds

    def start_bundle(self) -> None:
        # (window, period) → [earliest receive time in µs, the bundle's batches of that period]
        self.pending: dict[tuple[Any, int], tuple[int, list[pa.RecordBatch]]] = {}

    def setup(self) -> None:
        self.messages = beam_counter(Counter.MESSAGES_READ)
        self.heartbeats = beam_counter(Counter.HEARTBEATS)
        self.undecodable = beam_counter(Counter.MESSAGES_UNDECODABLE)
        self.decoded = beam_counter(Counter.EVENTS_DECODED)
        self.invalid = beam_counter(Counter.EVENTS_INVALID)

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
                dead_letter(DeadLetterStage.DECODE, str(error), message.data, attributes),
            )
            return
        for event, errors in plays.invalid:
            self.invalid.inc()
            yield pvalue.TaggedOutput(
                DecodeOutput.DEAD_LETTERS.value,
                dead_letter(
                    DeadLetterStage.VALIDATE,
                    "; ".join(errors),
                    event_json(event),
                    attributes,
                    event["event_id"],
                ),
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
