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

Beside it, as the streaming pipeline keeps them and replaced whole the same way: the
period's dead letters (``dead_letters_final/``: archived rows whose id is no UUID,
conflicting copies) and its branch counters (``counters_final/``: ``events_decoded =
events_unique + events_duplicate``, ``events_invalid``, ``events_conflict``, rows
written), counted by the same ``CountBranches`` transform. A damaged row is a dead
letter with its reason; it never fails the period.

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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.runner import PipelineResult
from apache_beam.transforms.window import TimestampedValue

from ledger.catalog import Catalog
from ledger.counters import Counter as CounterName
from ledger.tables import (
    ARCHIVE_DIR,
    CLOSED_MARKER,
    COUNTERS_SCHEMA,
    DEAD_LETTER_SCHEMA,
    FINAL_COUNTERS_DIR,
    FINAL_DEAD_LETTERS_DIR,
    FINAL_LEDGER_DIR,
    partition_name,
)
from pipelines.config import PipelineConfig
from pipelines.options import BatchOptions, RoyaltyOptions, options_help, refuse_unknown_flags
from pipelines.transforms.archive_reads import ReadArchiveFiles, archive_files, open_hours, period_hours
from pipelines.transforms.attribution import AttributeCounts
from pipelines.transforms.branches import CountBranches, CountRows, as_is, count_dead_letter_table
from pipelines.transforms.exact_dedup import FirstCopiesInPeriod, FirstCopiesOutput
from pipelines.transforms.metrics import counters
from pipelines.transforms.periods import Period
from pipelines.transforms.sinks import (
    RequiredSinks,
    WriteFinalLedger,
    WritePeriodRows,
    write_empty_final_period,
    write_empty_period,
)

__all__ = [
    "DEFAULT_SHARDS",
    "FinalSinks",
    "RecomputeOutputs",
    "batch_shards",
    "build",
    "final_sinks",
    "run",
]

LOG = logging.getLogger(__name__)

DEFAULT_SHARDS = 16
"""Fewest shards of each event-id shuffle: each is de-duplicated alone, so each sort stays small."""


def batch_shards(config: PipelineConfig) -> int:
    """Shards of the recompute's shuffles: ``--dedup-shards`` (64 on Dataflow), at least ``DEFAULT_SHARDS``.

    On Dataflow a shard is a unit of parallel work and holds its share of the period's
    id hashes in memory, so the batch spreads as wide as the streaming state; locally,
    where the streaming job keeps one shard, smaller sorts still pay.
    """
    return max(DEFAULT_SHARDS, config.dedup_shards)


@dataclass(frozen=True)
class FinalSinks(RequiredSinks):
    """Where a recompute's tables go: every output has a sink, or the build fails (as ``streaming.Sinks``)."""

    ledger: beam.PTransform
    dead_letters: beam.PTransform
    counters: beam.PTransform


def final_sinks(data_dir: str, period: Period) -> FinalSinks:
    """The period's final ledger, dead letters and counters as Parquet under ``data_dir``.

    Each is one file per period, replaced whole by a recompute of the period.
    """
    base = data_dir.rstrip("/")
    return FinalSinks(
        ledger=WriteFinalLedger(f"{base}/{FINAL_LEDGER_DIR}", f"{base}/.tmp/{FINAL_LEDGER_DIR}"),
        dead_letters=WritePeriodRows(
            f"{base}/{FINAL_DEAD_LETTERS_DIR}",
            f"{base}/.tmp/{FINAL_DEAD_LETTERS_DIR}",
            period.start,
            DEAD_LETTER_SCHEMA,
            "dead_letters",
            CounterName.DEAD_LETTERS_ROWS_WRITTEN,
        ),
        counters=WritePeriodRows(
            f"{base}/{FINAL_COUNTERS_DIR}",
            f"{base}/.tmp/{FINAL_COUNTERS_DIR}",
            period.start,
            COUNTERS_SCHEMA,
            "counters",
            CounterName.COUNTERS_ROWS_WRITTEN,
        ),
    )


@dataclass(frozen=True)
class RecomputeOutputs:
    """The named outputs of ``build``, for tests to assert on."""

    ledger_rows: beam.PCollection  # Arrow tables of final ledger rows (LEDGER_SCHEMA)
    dead_letters: beam.PCollection  # Arrow tables of dead-letter rows (DEAD_LETTER_SCHEMA)
    counters: beam.PCollection  # counter rows (COUNTERS_SCHEMA), one pane for the period


class _AtFn(beam.DoFn):
    """Every element stamped with one time: a recompute's outputs all count in its period."""

    def __init__(self, at: dt.datetime) -> None:
        self.at = at.timestamp()

    def process(self, element: Any) -> Iterator[TimestampedValue]:
        yield TimestampedValue(element, self.at)


def build(
    p: beam.Pipeline,
    source: beam.PTransform,
    sinks: FinalSinks,
    config: PipelineConfig,
    period: Period,
) -> RecomputeOutputs:
    """Wire the batch recompute onto ``p``: ``source`` gives the archive's ``ArchiveReads``, Arrow tables.

    ``sinks`` write the final ledger, the period's dead letters and its counters
    (``final_sinks``; ``FinalSinks.unwritten()`` leaves them to a caller that asserts on
    them): a build without one fails.
    """
    if not isinstance(sinks, FinalSinks):
        raise ValueError("sinks must be FinalSinks (FinalSinks.unwritten() leaves the rows to the caller)")
    catalog = Catalog.load(config.catalog_dir)
    archive = p | "ReadArchive" >> source
    first_copies = archive | "FirstCopiesInPeriod" >> FirstCopiesInPeriod(
        period, config.min_stream_ms, shards=batch_shards(config)
    )
    catalog_view = beam.pvalue.AsSingleton(p | "LoadCatalog" >> beam.Create([catalog]))
    ledger_rows = first_copies[FirstCopiesOutput.COUNTS] | "AttributeCounts" >> AttributeCounts(
        catalog_view, (period.start, period.end)
    )
    dead_letters = first_copies[FirstCopiesOutput.DEAD_LETTERS]
    branches = {
        "counted": first_copies[FirstCopiesOutput.COUNTED],
        "dead_letters": dead_letters,
        "written": ledger_rows,
    }
    counter_rows = {
        name: pcoll | f"InPeriod{name}" >> beam.ParDo(_AtFn(period.start)) for name, pcoll in branches.items()
    } | "CountBranches" >> CountBranches.of_batch(
        {
            "counted": as_is,
            "dead_letters": count_dead_letter_table,
            "written": CountRows(CounterName.LEDGER_FINAL_ROWS_WRITTEN),
        },
        config.period_seconds,
    )
    _ = ledger_rows | "WriteFinalLedger" >> sinks.ledger
    _ = dead_letters | "WriteDeadLetters" >> sinks.dead_letters
    _ = counter_rows | "WriteCounters" >> sinks.counters
    return RecomputeOutputs(ledger_rows, dead_letters, counter_rows)


def run(argv: Sequence[str] | None = None) -> int:
    """Recompute one period's final ledger from the archive; 0 on success."""
    argv = list(argv or [])
    if "-h" in argv or "--help" in argv:
        print(options_help("playledger pipeline batch", __doc__.split("\n")[0], RoyaltyOptions, BatchOptions))
        return 0
    refuse_unknown_flags(argv)
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
    base = data_dir.rstrip("/")
    pipeline = beam.Pipeline(options=options)
    build(
        pipeline,
        ReadArchiveFiles(files, received_before=period.end),
        final_sinks(data_dir, period),
        config,
        period,
    )
    if not files:
        # Nothing was archived for it (a mistyped period, or the wrong data directory):
        # an empty final ledger would claim "recomputed, zero".
        raise ValueError(
            f"no archived hour for the period starting {period.start.isoformat()} under "
            f"{data_dir.rstrip('/')}/{ARCHIVE_DIR}: nothing to recompute"
        )
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
    written = counters(result)
    if not written.get(CounterName.LEDGER_FINAL_ROWS_WRITTEN, 0):
        # Counted nothing: still a final period, of no rows, so balances shows it as final.
        write_empty_final_period(
            f"{base}/{FINAL_LEDGER_DIR}", f"{base}/.tmp/{FINAL_LEDGER_DIR}", period.start
        )
    for table, schema, stem, counter in (
        (FINAL_DEAD_LETTERS_DIR, DEAD_LETTER_SCHEMA, "dead_letters", CounterName.DEAD_LETTERS_ROWS_WRITTEN),
        (FINAL_COUNTERS_DIR, COUNTERS_SCHEMA, "counters", CounterName.COUNTERS_ROWS_WRITTEN),
    ):
        if not written.get(counter, 0):
            # None this time: an earlier recompute's rows must not stand for this one's.
            write_empty_period(f"{base}/{table}", f"{base}/.tmp/{table}", period.start, schema, stem)
    partition = partition_name("period", period.start)
    LOG.info(
        "dead letters %d in %s; counters in %s",
        written.get(CounterName.DEAD_LETTERS_ROWS_WRITTEN, 0),
        f"{base}/{FINAL_DEAD_LETTERS_DIR}/{partition}",
        f"{base}/{FINAL_COUNTERS_DIR}/{partition}",
    )
    LOG.info("%s", _summary(result, period, f"{base}/{FINAL_LEDGER_DIR}"))
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
