"""The streaming pipeline's composites under driven event time (TestStream)."""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path
from typing import Any

import apache_beam as beam
import duckdb
import pyarrow as pa
import pytest
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to, equal_to_per_window
from apache_beam.transforms.window import IntervalWindow, TimestampedValue
from sample_plays import EPOCH, message, play

from ledger.views import open_ledger, run_sql
from pipelines.config import PipelineConfig
from pipelines.streaming import Sinks, build, parquet_sinks
from pipelines.transforms.decode import DecodeOutput, DecodePlayMessages
from pipelines.transforms.sinks import Unwritten
from schemas.codec import ATTR_KIND, KIND_HEARTBEAT

PERIOD = 60
BASE = int(EPOCH.timestamp())


def rows(batch: pa.RecordBatch | pa.Table) -> list[dict[str, Any]]:
    """A batch of plays, or a table of ledger rows, as dicts."""
    return batch.to_pylist()


def streaming_pipeline() -> TestPipeline:
    options = PipelineOptions(streaming=True, runner="BundleBasedDirectRunner")
    return TestPipeline(options=options, blocking=True)


def config(catalog: Path) -> PipelineConfig:
    # TestStream's frozen clock never fires a processing-time trigger for late data: a pane per late play.
    # Four de-duplication shards, as on a runner with workers: copies of one id must meet whatever
    # the shard count (one test below runs on a single shard, the direct runner's default).
    return PipelineConfig(
        period_seconds=PERIOD,
        early_firing_seconds=5,
        late_firing_seconds=0,
        dedup_shards=4,
        catalog_dir=catalog,
    )


def summary(row: dict[str, Any]) -> tuple[Any, ...]:
    """What a ledger row says, without the write time."""
    return (
        row["rights_holder_id"],
        row["track_id"],
        row["plays"],
        row["streams"],
        row["amount_micros"],
        row["pane_timing"],
    )


def period(index: int) -> IntervalWindow:
    return IntervalWindow(BASE + index * PERIOD, BASE + (index + 1) * PERIOD)


def at(second: float, msg: PubsubMessage) -> TimestampedValue:
    return TimestampedValue(msg, BASE + second)


def test_a_bundles_messages_go_on_as_one_batch_per_period_in_the_order_they_came() -> None:
    first, second = play("T1", received_second=10), play("T2", received_second=5)
    next_period = play("T1", received_second=PERIOD + 1)
    stream = (
        TestStream()
        .advance_watermark_to(BASE)
        .add_elements([at(10, message(first)), at(11, message(second, next_period))])  # one bundle
        .add_elements([at(12, message(play("T3", received_second=12)))])  # the next bundle
        .advance_watermark_to_infinity()
    )
    with streaming_pipeline() as p:
        decoded = p | stream | DecodePlayMessages(PERIOD)
        batches = decoded[DecodeOutput.EVENTS.value] | beam.Map(
            lambda batch, at_time=beam.DoFn.TimestampParam: (
                tuple(batch["track_id"].to_pylist()),
                at_time.micros // 1_000_000 - BASE,  # the earliest receive time in the batch
            )
        )
        assert_that(batches, equal_to([(("T1", "T2"), 5), (("T1",), PERIOD + 1), (("T3",), 12)]))


def test_duplicate_in_a_later_period_is_dropped_and_late_play_is_a_delta(tiny_catalog: Path) -> None:
    first = play("T1", received_second=10)
    retry = dict(first, received_at=EPOCH + dt.timedelta(seconds=70))  # same event_id, next period
    other = play("T2", received_second=75, ms_played=5_000)  # not a stream: counted, earns nothing
    late = play("T1", received_second=20, product="free", territory="DE")
    stream = (
        TestStream()
        .advance_watermark_to(BASE)
        .add_elements([at(10, message(first))])
        .advance_watermark_to(BASE + 65)
        .add_elements([at(70, message(retry, other))])
        .advance_watermark_to(BASE + 200)
        .add_elements([at(201, message(late))])  # period 0 closed: this play is late
        .advance_watermark_to_infinity()
    )
    with streaming_pipeline() as p:
        outputs = build(p, stream, Sinks.unwritten(), config(tiny_catalog))
        assert_that(
            outputs.ledger_rows | "LedgerRows" >> beam.FlatMap(rows) | beam.Map(summary),
            equal_to_per_window(
                {
                    # SE premium 1000 µ: 6667 bps → 666.7, 3333 bps → 333.3; the spare µ goes to RH_A.
                    period(0): [
                        ("RH_A", "T1", 1, 1, 667, "ON_TIME"),
                        ("RH_B", "T1", 1, 1, 333, "ON_TIME"),
                        # The late free play in DE uses the fallback rate 100 µ: 66.67 / 33.33.
                        ("RH_A", "T1", 1, 1, 67, "LATE"),
                        ("RH_B", "T1", 1, 1, 33, "LATE"),
                    ],
                    period(1): [("RH_B", "T2", 1, 0, 0, "ON_TIME")],
                }
            ),
            label="LedgerPerPeriod",
        )
        assert_that(
            outputs.duplicates
            | "DuplicateRows" >> beam.FlatMap(rows)
            | beam.Map(lambda event: event["event_id"]),
            equal_to([first["event_id"]]),
            label="Duplicates",
        )
        assert_that(
            outputs.counters
            | beam.Filter(lambda row: row["counter"].startswith("plays_"))
            | beam.Map(lambda row: (row["counter"], row["value"], row["pane_timing"])),
            equal_to_per_window(
                {
                    period(0): [
                        ("plays_qualified", 1, "ON_TIME"),
                        ("plays_qualified", 1, "LATE"),
                        ("plays_late", 1, "LATE"),
                    ],
                    period(1): [],  # the T2 play was too short to qualify
                }
            ),
            label="Outcomes",
        )


def test_unknown_track_goes_to_suspense(tiny_catalog: Path) -> None:
    unknown = play("NOT-IN-CATALOG", received_second=5)
    stream = TestStream().advance_watermark_to(BASE).add_elements([at(5, message(unknown))])
    with streaming_pipeline() as p:
        outputs = build(p, stream.advance_watermark_to_infinity(), Sinks.unwritten(), config(tiny_catalog))
        assert_that(
            outputs.ledger_rows | "LedgerRows" >> beam.FlatMap(rows) | beam.Map(summary),
            equal_to([("UNMATCHED", "NOT-IN-CATALOG", 1, 1, 1000, "ON_TIME")]),
            label="Suspense",
        )
        assert_that(
            outputs.counters | beam.Map(lambda row: (row["counter"], row["value"])),
            equal_to(
                [
                    ("events_decoded", 1),
                    ("events_unique", 1),
                    ("plays_qualified", 1),
                    ("plays_unmatched", 1),
                    ("ledger_rows_written", 1),
                ]
            ),
            label="CountedUnmatched",
        )


def test_bad_messages_and_invalid_events_are_dead_lettered_beside_good_ones(tiny_catalog: Path) -> None:
    good = play("T2", received_second=3)
    invalid = play("T2", received_second=4, territory="XX", ms_played=-1)
    corrupt = PubsubMessage(b"\x07not avro", {"schema_version": "1", "batch_id": "b-corrupt"})
    unversioned = PubsubMessage(b"", {"batch_id": "b-none"})
    heartbeat = PubsubMessage(b"", {ATTR_KIND: KIND_HEARTBEAT})
    stream = (
        TestStream()
        .advance_watermark_to(BASE)
        .add_elements([at(3, message(good, invalid)), at(3, corrupt), at(3, unversioned), at(3, heartbeat)])
        .advance_watermark_to_infinity()
    )
    with streaming_pipeline() as p:
        outputs = build(p, stream, Sinks.unwritten(), config(tiny_catalog))
        assert_that(
            outputs.ledger_rows | "LedgerRows" >> beam.FlatMap(rows) | beam.Map(summary),
            equal_to([("RH_B", "T2", 1, 1, 1000, "ON_TIME")]),
            label="GoodEventCounted",
        )
        assert_that(
            outputs.dead_letters | beam.Map(reason_summary),
            equal_to(
                [
                    ("validate", invalid["event_id"], ("ms_played", "territory")),
                    ("decode", "b-corrupt", ("payload is not a v1 event batch",)),
                    ("decode", "b-none", ("missing attribute 'schema_version'",)),
                ]
            ),
            label="DeadLetters",
        )


def reason_summary(row: dict[str, Any]) -> tuple[Any, ...]:
    """(stage, event or batch id, the fields a validation names or a decode error's gist)."""
    parts = tuple(sorted(part.split(":")[0] for part in row["reason"].split("; ")))
    return row["stage"], row["event_id"] or row["batch_id"], parts


def test_ledger_and_dead_letters_land_as_parquet(tiny_catalog: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    plays = [play("T1", received_second=s) for s in (1, 2, 3)] + [play("T2", received_second=61)]
    corrupt = PubsubMessage(b"junk", {"schema_version": "1", "batch_id": "b-junk"})
    stream = (
        TestStream()
        .advance_watermark_to(BASE)
        .add_elements([at(1, message(*plays[:3])), at(2, corrupt), at(61, message(plays[3]))])
        .advance_watermark_to_infinity()
    )
    with streaming_pipeline() as p:
        build(p, stream, parquet_sinks(str(data_dir)), config(tiny_catalog))
    ledger_files = sorted((data_dir / "ledger").glob("period=*/*.parquet"))
    assert [f.parent.name for f in ledger_files] == ["period=20261101T000000Z", "period=20261101T000100Z"]
    assert not list((data_dir / "ledger").rglob("*.tmp*")), "temp files must stay outside the table"
    balances = duckdb.execute(
        f"SELECT rights_holder_id, sum(plays), sum(streams), sum(amount_micros) "
        f"FROM read_parquet('{data_dir}/ledger/*/*.parquet') GROUP BY ALL ORDER BY ALL"
    ).fetchall()
    assert balances == [("RH_A", 3, 3, 3 * 667), ("RH_B", 4, 4, 3 * 333 + 1000)]
    dead = duckdb.execute(
        f"SELECT stage, batch_id FROM read_parquet('{data_dir}/dead_letters/*/*.parquet')"
    ).fetchall()
    assert dead == [("decode", "b-junk")]
    counters = run_sql(
        open_ledger(data_dir), "SELECT counter, sum(value) FROM counters GROUP BY ALL ORDER BY ALL"
    ).rows
    assert counters == [
        ("events_decoded", 4),
        ("events_unique", 4),
        ("ledger_rows_written", 3),  # T1 has two rights holders, T2 one
        ("messages_undecodable", 1),
        ("plays_qualified", 4),
    ]


def test_dedup_state_expires_after_the_horizon(tiny_catalog: Path) -> None:
    """Within the horizon a copy is a duplicate; past it the state is gone (bounded memory)."""
    first = play("T2", received_second=10)
    within = dict(first, received_at=EPOCH + dt.timedelta(minutes=50))
    beyond = dict(first, received_at=EPOCH + dt.timedelta(hours=1, minutes=5))
    stream = (
        TestStream()
        .advance_watermark_to(BASE)
        .add_elements([at(10, message(first))])
        .advance_watermark_to(BASE + 50 * 60 - 1)
        .add_elements([at(50 * 60, message(within))])
        # Past the first copy + 1 h and the next whole minute: its id is forgotten.
        .advance_watermark_to(BASE + 3600 + 120)
        .add_elements([at(3600 + 300, message(beyond))])
        .advance_watermark_to_infinity()
    )
    one_hour = config(tiny_catalog).replace(dedup_horizon_hours=1)
    with streaming_pipeline() as p:
        outputs = build(p, stream, Sinks.unwritten(), one_hour)
        assert_that(
            outputs.duplicates
            | "DuplicateRows" >> beam.FlatMap(rows)
            | beam.Map(lambda event: event["received_at"]),
            equal_to([within["received_at"]]),
            label="OnlyTheCopyWithinTheHorizon",
        )
        assert_that(
            outputs.ledger_rows
            | "LedgerRows" >> beam.FlatMap(rows)
            | beam.Map(lambda row: (row["period_start"], row["plays"])),
            equal_to([(EPOCH, 1), (EPOCH + dt.timedelta(hours=1, minutes=5), 1)]),
            label="CountedAgainPastTheHorizon",
        )


def test_a_conflicting_duplicate_counts_once_and_is_recorded(tiny_catalog: Path) -> None:
    first = play("T2", received_second=5, ms_played=120_000)
    retry = dict(first, received_at=EPOCH + dt.timedelta(seconds=6))  # same content: a plain duplicate
    conflict = dict(first, received_at=EPOCH + dt.timedelta(seconds=7), ms_played=10_000)
    stream = (
        TestStream()
        .advance_watermark_to(BASE)
        .add_elements([at(5, message(first)), at(6, message(retry)), at(7, message(conflict))])
        .advance_watermark_to_infinity()
    )
    with streaming_pipeline() as p:
        outputs = build(p, stream, Sinks.unwritten(), config(tiny_catalog))
        assert_that(
            outputs.ledger_rows | "LedgerRows" >> beam.FlatMap(rows) | beam.Map(summary),
            equal_to([("RH_B", "T2", 1, 1, 1000, "ON_TIME")]),  # the first copy, once
            label="CountedOnce",
        )
        assert_that(
            outputs.duplicates | "DuplicateRows" >> beam.FlatMap(rows) | beam.Map(lambda e: e["ms_played"]),
            equal_to([120_000, 10_000]),
            label="BothLaterCopiesAreDuplicates",
        )
        assert_that(
            outputs.dead_letters
            | beam.Map(lambda row: (row["stage"], row["event_id"], row["reason"].split(":")[0])),
            equal_to([("dedup", first["event_id"], "conflicting duplicate")]),
            label="ConflictRecorded",
        )


def test_counters_balance_per_period(tiny_catalog: Path) -> None:
    """decoded = unique + duplicate in each period, and refusals are counted where they happened."""
    first = play("T1", received_second=10)
    retry = dict(first, received_at=EPOCH + dt.timedelta(seconds=70))  # a duplicate, counted in period 1
    other = play("T2", received_second=75)
    invalid = play("T2", received_second=80, territory="XX")
    stream = (
        TestStream()
        .advance_watermark_to(BASE)
        .add_elements([at(10, message(first))])
        .add_elements([at(80, message(retry, other, invalid))])
        .advance_watermark_to_infinity()
    )
    with streaming_pipeline() as p:
        outputs = build(p, stream, Sinks.unwritten(), config(tiny_catalog))
        assert_that(
            outputs.counters | beam.Map(lambda row: (row["counter"], row["value"])),
            equal_to_per_window(
                {
                    period(0): [
                        ("events_decoded", 1),
                        ("events_unique", 1),
                        ("plays_qualified", 1),
                        ("ledger_rows_written", 2),
                    ],
                    period(1): [
                        ("events_decoded", 2),
                        ("events_unique", 1),
                        ("events_duplicate", 1),
                        ("events_invalid", 1),
                        ("plays_qualified", 1),
                        ("ledger_rows_written", 1),
                    ],
                }
            ),
        )


def test_dedup_remembers_across_many_batches_and_both_letter_cases(tiny_catalog: Path) -> None:
    """Enough batches to merge the remembered ids into runs and a settled array, on one shard."""
    rng = random.Random(5)
    sent: list[dict[str, Any]] = []
    stream = TestStream().advance_watermark_to(BASE)
    retries = conflicts = 0
    for group in range(12):
        messages = []
        for index in range(10):
            second = group * 2 + index * 0.1
            plays = [play(rng.choice(["T1", "T2"]), received_second=second) for _ in range(4)]
            if sent:
                earlier = rng.choice(sent)
                retry = dict(earlier, received_at=EPOCH + dt.timedelta(seconds=second))
                if index % 3 == 0:
                    retry["event_id"] = retry["event_id"].upper()
                if index % 4 == 0:
                    retry["ms_played"] += 1  # same id, other content: a conflict
                    conflicts += 1
                retries += 1
                plays.append(retry)
            if index == 5:
                plays.append(dict(plays[0]))  # a copy inside the same message
                retries += 1
            sent += [p for p in plays if p["event_id"].islower()][:4]
            messages.append(at(second, message(*plays)))
        stream = stream.add_elements(messages)
    stream = stream.advance_watermark_to_infinity()
    one_shard = config(tiny_catalog).replace(dedup_shards=1)
    with streaming_pipeline() as p:
        outputs = build(p, stream, Sinks.unwritten(), one_shard)
        assert_that(
            outputs.counters | beam.Map(lambda row: (row["counter"], row["value"])),
            equal_to_per_window(
                {
                    period(0): [
                        ("events_decoded", len(sent) + retries),
                        ("events_unique", len(sent)),
                        ("events_duplicate", retries),
                        ("events_conflict", conflicts),
                        ("plays_qualified", len(sent)),
                        ("ledger_rows_written", 3),  # T1 (2 holders) and T2 (1), both SE premium
                    ]
                }
            ),
        )


def test_a_pipeline_without_a_dead_letter_sink_is_refused() -> None:
    # As Beam's ErrorHandler refuses an error output nobody consumes: no silent drop.
    with pytest.raises(ValueError, match="no sink for dead_letters"):
        Sinks(ledger=Unwritten(), dead_letters=None, counters=Unwritten())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no sink for ledger, counters"):
        Sinks(ledger=None, dead_letters=Unwritten(), counters=None)  # type: ignore[arg-type]
