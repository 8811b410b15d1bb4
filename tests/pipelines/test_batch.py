"""Batch recompute from the archive, and its equivalence with the streaming ledger."""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import random
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import apache_beam as beam
import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineResult
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue
from sample_plays import EPOCH, message, play

from ingest.archiver.buckets import HOUR, HourBuckets
from ledger.catalog import DEFAULT_CATALOG_DIR, Catalog
from ledger.tables import FINAL_LEDGER_DIR, partition_name
from ledger.views import open_ledger, run_sql
from pipelines.batch import build, final_sinks
from pipelines.batch import run as batch_run
from pipelines.config import PipelineConfig
from pipelines.streaming import build as build_streaming
from pipelines.streaming import parquet_sinks
from pipelines.transforms.archive_reads import ArchiveReads, ReadArchiveFiles, archive_files
from pipelines.transforms.counting import PlayCounts
from pipelines.transforms.exact_dedup import (
    DEFAULT_CANDIDATE_BITS,
    DEFAULT_SHARDS,
    FirstCopiesInPeriod,
    FirstCopiesOutput,
)
from pipelines.transforms.metrics import counters
from pipelines.transforms.periods import Period

PERIOD_SECONDS = 60
BASE = int(EPOCH.timestamp())


def archive_rows(copies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Archived rows for event copies, as the archiver keeps them (one message each)."""
    return [
        dict(copy, message_id=f"m{index:05d}", batch_id="b", publish_time=copy["received_at"])
        for index, copy in enumerate(copies)
    ]


def write_archive(data_dir: Path, copies: list[dict[str, Any]], row_group_size: int | None = None) -> None:
    """Hourly buckets by receive time, as ``hour=YYYYMMDDTHHMMSSZ/part-*.parquet``."""
    by_hour: dict[dt.datetime, list[dict[str, Any]]] = {}
    for row in archive_rows(copies):
        by_hour.setdefault(row["received_at"].replace(minute=0, second=0, microsecond=0), []).append(row)
    for hour, rows in by_hour.items():
        folder = data_dir / "archive" / partition_name("hour", hour)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"part-{uuid.uuid4().hex}.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)


def totals_of(result: PipelineResult) -> dict[str, int]:
    """The pipeline's playledger counters, summed over steps."""
    return counters(result)


def recompute(
    data_dir: Path, config: PipelineConfig, period: Period, skip_later_row_groups: bool = True
) -> dict[str, int]:
    files = archive_files(str(data_dir), period, dt.timedelta(hours=config.dedup_horizon_hours))
    pipeline = beam.Pipeline(options=PipelineOptions(runner="FnApiRunner"))
    build(
        pipeline,
        ReadArchiveFiles(files, received_before=period.end if skip_later_row_groups else None),
        final_sinks(str(data_dir), period),
        config,
        period,
    )
    result = pipeline.run()
    result.wait_until_finish()
    return totals_of(result)


def test_first_copies_conflicts_and_period_bounds(tmp_path: Path) -> None:
    catalog = Catalog.load(DEFAULT_CATALOG_DIR)
    track = sorted(catalog.track_ids)[0]
    first = play(track, received_second=10)
    retry = dict(first, received_at=EPOCH + dt.timedelta(seconds=20))
    conflict = dict(
        first, received_at=EPOCH + dt.timedelta(seconds=30), ms_played=5_000
    )  # same id, other content
    before = play(track, received_second=-30)  # in the horizon before the period: read, never counted
    before_retry = dict(before, received_at=EPOCH + dt.timedelta(seconds=5))  # its retry lands in the period
    after = play(track, received_second=PERIOD_SECONDS + 1)  # next period
    write_archive(tmp_path, [first, retry, conflict, before, before_retry, after])
    config = PipelineConfig(period_seconds=PERIOD_SECONDS, early_firing_seconds=5)
    period = Period(EPOCH, EPOCH + dt.timedelta(seconds=PERIOD_SECONDS))
    totals = recompute(tmp_path, config, period)
    assert totals["events_unique"] == 1  # only `first`
    assert totals["events_duplicate"] == 3  # retry, conflict, before_retry
    assert totals["events_conflict"] == 1
    rows = run_sql(open_ledger(tmp_path), "SELECT sum(plays), sum(streams), count(*) FROM ledger_final").rows
    holders = len(catalog.splits_for(track) or ())
    assert rows == [(holders, holders, holders)]


def test_ids_that_differ_only_in_letter_case_are_one_event(tmp_path: Path) -> None:
    catalog = Catalog.load(DEFAULT_CATALOG_DIR)
    track = sorted(catalog.track_ids)[0]
    lower = play(track, received_second=10, event_id="0b0f8f3e-6f1a-4f43-9a53-3f1f0d1f9a01")
    lower_retry = dict(
        lower, event_id=lower["event_id"].upper(), received_at=EPOCH + dt.timedelta(seconds=20)
    )
    # Upper case first, then a lower-case copy with other content: the first counts, the other conflicts.
    upper = play(track, received_second=15, ms_played=5_000, event_id="0B0F8F3E-6F1A-4F43-9A53-3F1F0D1F9AFF")
    upper_conflict = dict(
        upper,
        event_id=upper["event_id"].lower(),
        received_at=EPOCH + dt.timedelta(seconds=25),
        ms_played=90_000,
    )
    mixed = play(track, received_second=30, event_id="0b0F8f3E-6f1A-4f43-9A53-3f1F0d1F9a02")
    mixed_retry = dict(
        mixed, event_id=mixed["event_id"].swapcase(), received_at=EPOCH + dt.timedelta(seconds=40)
    )
    # Row groups of two rows: each is a table of its own, as a large file's are.
    write_archive(tmp_path, [lower, lower_retry, upper, upper_conflict, mixed, mixed_retry], row_group_size=2)
    config = PipelineConfig(period_seconds=PERIOD_SECONDS, early_firing_seconds=5)
    totals = recompute(tmp_path, config, Period(EPOCH, EPOCH + dt.timedelta(seconds=PERIOD_SECONDS)))
    assert totals["events_unique"] == 3
    assert totals["events_duplicate"] == 3
    assert totals["events_conflict"] == 1
    holders = len(catalog.splits_for(track) or ())
    rows = run_sql(open_ledger(tmp_path), "SELECT sum(plays), sum(streams) FROM ledger_final").rows
    assert rows == [(3 * holders, 2 * holders)]  # the upper-case first copy was short: no stream


def test_later_buckets_are_read_only_where_they_can_hold_the_periods_plays(tmp_path: Path) -> None:
    catalog = Catalog.load(DEFAULT_CATALOG_DIR)
    track = sorted(catalog.track_ids)[0]
    period = Period(EPOCH, EPOCH + dt.timedelta(seconds=PERIOD_SECONDS))
    first = play(track, received_second=10)
    retry = dict(first, received_at=EPOCH + dt.timedelta(seconds=30))  # the period's duplicate
    write_archive(tmp_path, [first, retry])
    # Two hours on, a bucket of two row groups. The first was all received after the
    # period: skipped unread. The second holds a play received in the period but
    # archived late, so it is read, with a copy of `first` beside it that is no
    # duplicate of this period.
    later = EPOCH + dt.timedelta(hours=2)
    late = play(track, received_second=20)
    rows = [
        dict(first, received_at=later),
        play(track, received_second=2 * 3600 + 5),
        late,
        dict(first, received_at=later + dt.timedelta(seconds=9)),
    ]
    folder = tmp_path / "archive" / partition_name("hour", later)
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(archive_rows(rows)), folder / "part-late.parquet", row_group_size=2)
    config = PipelineConfig(period_seconds=PERIOD_SECONDS, early_firing_seconds=5)
    query = "SELECT rights_holder_id, track_id, plays, streams, amount_micros FROM ledger_final ORDER BY ALL"

    every_group = recompute(tmp_path, config, period, skip_later_row_groups=False)
    ledger_from_every_group = run_sql(open_ledger(tmp_path), query).rows
    skipping = recompute(tmp_path, config, period)
    assert run_sql(open_ledger(tmp_path), query).rows == ledger_from_every_group
    holders = len(catalog.splits_for(track) or ())
    assert sum(row[2] for row in ledger_from_every_group) == 2 * holders  # `first` and `late`
    for totals in (every_group, skipping):
        assert (totals["events_unique"], totals["events_duplicate"]) == (2, 1)
        assert totals.get("events_conflict", 0) == 0
    assert (every_group["archived_rows_read"], every_group.get("archived_row_groups_skipped", 0)) == (6, 0)
    # Skipped in both reads, the ids' and the rows'.
    assert (skipping["archived_rows_read"], skipping["archived_row_groups_skipped"]) == (4, 2)


def test_the_batch_command_warns_of_open_hours_and_says_what_it_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    catalog = Catalog.load(DEFAULT_CATALOG_DIR)
    track = sorted(catalog.track_ids)[0]
    first = play(track, received_second=10)
    conflict = dict(first, received_at=EPOCH + dt.timedelta(seconds=30), ms_played=5_000)
    in_second_hour = play(track, received_second=3600 + 5)
    after = play(track, received_second=7200 + 5)  # the next period's first hour, open too
    write_archive(tmp_path, [first, conflict, play(track, received_second=40), in_second_hour, after])
    argv = ["--data-dir", str(tmp_path), "--period", EPOCH.isoformat(), "--period-seconds", "7200"]
    caplog.set_level(logging.INFO, logger="pipelines.batch")
    buckets = HourBuckets(tmp_path / "archive", tmp_path / ".tmp" / "archive", 0)

    def said(level: int) -> list[str]:
        return [
            record.getMessage()
            for record in caplog.records
            if record.name == "pipelines.batch" and record.levelno == level
        ]

    assert batch_run(argv) == 0
    (warning,) = said(logging.WARNING)
    assert warning.startswith(
        "not closed yet: hour=20261101T000000Z, hour=20261101T010000Z (2 of the period's 2 hours)"
    )
    period = partition_name("period", EPOCH)
    # The next period's hour is listed but skipped, in both reads, by its statistics.
    assert said(logging.INFO)[-1] == (
        "recomputed 2026-11-01T00:00:00+00:00 … 2026-11-01T02:00:00+00:00: plays counted 3, duplicates 1 "
        "(conflicting 1), archived rows read 4 (row-group reads skipped 2), final ledger rows "
        f"{len(catalog.splits_for(track) or ())} in {tmp_path}/{FINAL_LEDGER_DIR}/{period}"
    )

    caplog.clear()
    buckets.close(EPOCH, EPOCH + 2 * HOUR)
    assert batch_run(argv) == 0
    (warning,) = said(logging.WARNING)
    assert warning.startswith("not closed yet: hour=20261101T010000Z (1 of the period's 2 hours)")

    caplog.clear()
    buckets.close(EPOCH + HOUR, EPOCH + 2 * HOUR)
    assert batch_run(argv) == 0
    assert said(logging.WARNING) == []  # the next period's hour, still open, is none of its business
    assert said(logging.INFO)[-1].startswith("recomputed 2026-11-01T00:00:00+00:00")


def first_copy_counts(copies: list[dict[str, Any]], period: Period, min_stream_ms: int) -> PlayCounts:
    """The contract, one copy at a time: the first received copy of an id (in any case) counts."""
    first: dict[str, dict[str, Any]] = {}
    for row in sorted(archive_rows(copies), key=lambda row: (row["received_at"], row["message_id"])):
        first.setdefault(row["event_id"].lower(), row)
    counts: PlayCounts = {}
    for row in first.values():
        if period.start <= row["received_at"] < period.end:
            group = (row["track_id"], row["territory"], row["product"])
            plays, streams = counts.get(group, (0, 0))
            counts[group] = (plays + 1, streams + (row["ms_played"] >= min_stream_ms))
    return counts


def in_period_of(copy: dict[str, Any], period: Period) -> bool:
    """Whether a copy was received in ``period``."""
    return bool(period.start <= copy["received_at"] < period.end)


def later_copies_in_period(copies: list[dict[str, Any]], period: Period) -> tuple[int, int]:
    """The contract's duplicates and conflicts of ``period``: later copies received in it.

    A later copy conflicts when its content differs from its id's first copy.
    """
    content = ("user_id", "track_id", "played_at", "ms_played", "territory", "product")
    first: dict[str, dict[str, Any]] = {}
    duplicates = conflicts = 0
    for row in sorted(archive_rows(copies), key=lambda row: (row["received_at"], row["message_id"])):
        head = first.setdefault(row["event_id"].lower(), row)
        if head is not row and period.start <= row["received_at"] < period.end:
            duplicates += 1
            conflicts += any(row[name] != head[name] for name in content)
    return duplicates, conflicts


def as_read(table: pa.Table) -> pa.Table:
    """``table`` as a read may give it: group columns dictionary-encoded, a dictionary a chunk."""
    middle = table.num_rows // 2
    halves = [table.slice(0, middle), table.slice(middle)]
    for name in ("track_id", "territory", "product"):
        halves = [
            half.set_column(half.schema.get_field_index(name), name, pc.dictionary_encode(half[name]))
            for half in halves
        ]
    return pa.concat_tables(halves)


@pytest.mark.parametrize(
    ("shards", "candidate_bits"), [(DEFAULT_SHARDS, DEFAULT_CANDIDATE_BITS), (3, 3), (1, 3)]
)
def test_first_copies_are_exact_however_many_rows_are_candidates(shards: int, candidate_bits: int) -> None:
    # 2**3 bitmap bits: nearly every id seen once shares a bit with a repeated one, and is
    # shuffled as a candidate; the counts must not change.
    copies, _ = generated_copies(seed=5)
    retries = [
        index
        for index in range(1, len(copies))
        if copies[index]["event_id"] in {c["event_id"] for c in copies[:index]}
    ]
    for number, index in enumerate(retries):
        if number % 3 == 0:
            copies[index] = dict(copies[index], event_id=copies[index]["event_id"].upper())
        if number % 4 == 0:
            copies[index] = dict(copies[index], ms_played=copies[index]["ms_played"] + 1)  # a conflict
    rows = pa.Table.from_pylist(archive_rows(copies))
    tables = [as_read(rows.slice(start, 97)) for start in range(0, rows.num_rows, 97)]
    period = Period(EPOCH, EPOCH + dt.timedelta(seconds=PERIOD_SECONDS))
    expected = first_copy_counts(copies, period, 30_000)
    pipeline = beam.Pipeline(options=PipelineOptions(runner="FnApiRunner"))
    archive = {
        ArchiveReads.EVENT_IDS: pipeline
        | "Ids" >> beam.Create([table.select(["event_id"]) for table in tables]),
        ArchiveReads.ROWS: pipeline | "Rows" >> beam.Create(tables),
    }
    outputs = archive | FirstCopiesInPeriod(period, 30_000, shards=shards, candidate_bits=candidate_bits)
    assert_that(outputs[FirstCopiesOutput.COUNTS], equal_to([expected]))
    duplicates, conflicts = later_copies_in_period(copies, period)
    # Each conflicting copy of the period is a dead letter, as the streaming pipeline records it.
    assert_that(
        outputs[FirstCopiesOutput.DEAD_LETTERS]
        | "Rows1" >> beam.FlatMap(pa.Table.to_pylist)
        | beam.Map(lambda row: (row["stage"], row["reason"])),
        equal_to(
            [("dedup", "conflicting duplicate: same event_id as an earlier copy, different content")]
            * conflicts
        ),
        label="ConflictsAreDeadLetters",
    )
    assert_that(
        outputs[FirstCopiesOutput.COUNTED] | beam.CombinePerKey(sum),
        equal_to(
            [
                ("events_decoded", sum(1 for copy in copies if in_period_of(copy, period))),
                ("events_unique", sum(plays for plays, _ in expected.values())),
                ("events_duplicate", duplicates),
            ]
        ),
        label="CountedBalances",
    )
    result = pipeline.run()
    result.wait_until_finish()
    totals = totals_of(result)
    assert totals["events_unique"] == sum(plays for plays, _ in expected.values())
    assert 0 < conflicts < duplicates < len(retries)  # copies outside the period are not this period's
    assert (totals["events_duplicate"], totals.get("events_conflict", 0)) == (duplicates, conflicts)
    # Only ids seen more than once (and those sharing a bitmap bit with one) are shuffled.
    repeats = Counter(copy["event_id"].lower() for copy in copies)
    rows_of_repeated_ids = sum(count for count in repeats.values() if count > 1)
    if candidate_bits == DEFAULT_CANDIDATE_BITS:
        assert totals["archived_rows_shuffled"] == rows_of_repeated_ids
    else:
        assert rows_of_repeated_ids <= totals["archived_rows_shuffled"] <= len(copies)


@pytest.mark.parametrize(
    "bad_id",
    ["not-a-uuid", "0b0d8d38-4c3e-4b8a-9a86-5f3f1c4e2a1g"],  # the second has a UUID's length, seen once
)
def test_an_id_that_is_no_uuid_is_a_dead_letter_and_the_rest_of_the_period_counts(bad_id: str) -> None:
    good = play()
    bad = play(event_id=bad_id)
    rows = pa.Table.from_pylist(archive_rows([good, bad]))
    period = Period(EPOCH, EPOCH + dt.timedelta(seconds=PERIOD_SECONDS))
    pipeline = beam.Pipeline(options=PipelineOptions(runner="FnApiRunner"))
    archive = {
        ArchiveReads.EVENT_IDS: pipeline | "Ids" >> beam.Create([rows.select(["event_id"])]),
        ArchiveReads.ROWS: pipeline | "Rows" >> beam.Create([rows]),
    }
    outputs = archive | FirstCopiesInPeriod(period, 30_000)
    assert_that(outputs[FirstCopiesOutput.COUNTS], equal_to([first_copy_counts([good], period, 30_000)]))
    assert_that(
        outputs[FirstCopiesOutput.DEAD_LETTERS]
        | "Rows2" >> beam.FlatMap(pa.Table.to_pylist)
        | beam.Map(
            lambda row: (row["stage"], row["reason"], row["event_id"], json.loads(row["attributes_json"]))
        ),
        equal_to(
            [
                (
                    "validate",
                    f"event_id: must be a canonical UUID (8-4-4-4-12 hex digits), got {bad_id!r}",
                    bad_id,
                    {"message_id": "m00001"},
                )
            ]
        ),
        label="DeadLetter",
    )
    # The payload is the archived row itself, to inspect or repair.
    assert_that(
        outputs[FirstCopiesOutput.DEAD_LETTERS]
        | "Rows3" >> beam.FlatMap(pa.Table.to_pylist)
        | beam.Map(lambda row: json.loads(base64.b64decode(row["payload_base64"]))["track_id"]),
        equal_to([bad["track_id"]]),
        label="Payload",
    )
    result = pipeline.run()
    result.wait_until_finish()
    totals = totals_of(result)
    assert (totals["events_unique"], totals["events_invalid"]) == (1, 1)


def test_first_copies_refuses_bad_settings() -> None:
    period = Period(EPOCH, EPOCH + dt.timedelta(seconds=PERIOD_SECONDS))
    with pytest.raises(ValueError, match="shards"):
        FirstCopiesInPeriod(period, 30_000, shards=0)
    with pytest.raises(ValueError, match="candidate_bits"):
        FirstCopiesInPeriod(period, 30_000, candidate_bits=2)
    with pytest.raises(ValueError, match="min_stream_ms"):
        FirstCopiesInPeriod(period, -1)


def test_period_must_start_a_period() -> None:
    assert Period.starting("2026-11-28T07:00:00Z", 3600).end == dt.datetime(2026, 11, 28, 8, tzinfo=dt.UTC)
    with pytest.raises(ValueError, match="does not start a period"):
        Period.starting("2026-11-28T07:30:00Z", 3600)
    with pytest.raises(ValueError, match="UTC offset"):
        Period.starting("2026-11-28T07:00:00", 3600)


def generated_copies(seed: int) -> tuple[list[dict[str, Any]], list[int]]:
    """Plays over two periods with retries (some across the boundary), short plays, unknown tracks.

    Returns every copy in arrival order, and the indexes of copies that arrive after
    their period closed (late).
    """
    rng = random.Random(seed)
    catalog = Catalog.load(DEFAULT_CATALOG_DIR)
    tracks = [*sorted(catalog.track_ids)[:40], "NOT-IN-CATALOG"]
    territories = ["US", "GB", "SE", "BR", "NO"]
    copies: list[dict[str, Any]] = []
    for _ in range(300):
        second = rng.uniform(0, 2 * PERIOD_SECONDS - 1)
        original = play(
            rng.choice(tracks),
            received_second=second,
            ms_played=rng.choice([5_000, 29_999, 30_000, 200_000]),
            territory=rng.choice(territories),
            product=rng.choice(["free", "premium"]),
        )
        copies.append(original)
        if rng.random() < 0.1:  # a retry, possibly in the next period
            copies.append(
                dict(original, received_at=original["received_at"] + dt.timedelta(seconds=rng.uniform(1, 40)))
            )
    copies.sort(key=lambda copy: copy["received_at"])
    late = sorted(rng.sample(range(len(copies) // 2), 5))  # a few first-period plays reach the pipeline late
    return copies, late


def test_streaming_and_batch_ledgers_agree_for_closed_periods(tmp_path: Path) -> None:
    copies, late = generated_copies(seed=11)
    on_time = [copy for index, copy in enumerate(copies) if index not in late]
    arrivals = [TimestampedValue(message(copy), copy["received_at"].timestamp()) for copy in on_time]
    stream = TestStream().advance_watermark_to(BASE).add_elements(arrivals)
    stream = stream.advance_watermark_to(BASE + 3 * PERIOD_SECONDS)  # both periods closed
    stream = stream.add_elements(
        [TimestampedValue(message(copies[i]), BASE + 3 * PERIOD_SECONDS) for i in late]
    )
    # TestStream's clock never fires a processing-time trigger for late data: a pane per late play.
    config = PipelineConfig(period_seconds=PERIOD_SECONDS, early_firing_seconds=5, late_firing_seconds=0)
    streaming_options = PipelineOptions(streaming=True, runner="BundleBasedDirectRunner")
    with beam.Pipeline(options=streaming_options) as p:
        build_streaming(p, stream.advance_watermark_to_infinity(), parquet_sinks(str(tmp_path)), config)

    # The archive holds every copy the gateway accepted, in arrival order.
    write_archive(tmp_path, copies)
    for index in range(2):
        start = EPOCH + dt.timedelta(seconds=index * PERIOD_SECONDS)
        recompute(tmp_path, config, Period(start, start + dt.timedelta(seconds=PERIOD_SECONDS)))

    def sums(table: str) -> list[tuple[Any, ...]]:
        return duckdb.execute(
            f"SELECT period_start, rights_holder_id, track_id, territory, product, "
            f"sum(plays), sum(streams), sum(amount_micros) "
            f"FROM read_parquet('{tmp_path}/{table}/*/*.parquet') GROUP BY ALL ORDER BY ALL"
        ).fetchall()

    streaming_sums, batch_sums = sums("ledger"), sums(FINAL_LEDGER_DIR)
    assert len(batch_sums) > 100
    assert {row[0] for row in batch_sums} == {EPOCH, EPOCH + dt.timedelta(seconds=PERIOD_SECONDS)}
    assert streaming_sums == batch_sums
    late_rows = duckdb.execute(
        f"SELECT count(*) FROM read_parquet('{tmp_path}/ledger/*/*.parquet') WHERE pane_timing = 'LATE'"
    ).fetchall()
    assert late_rows[0][0] > 0, "the late plays reached the streaming ledger as LATE deltas"
