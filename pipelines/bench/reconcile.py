"""``playledger bench reconcile``: reconciling one period against DuckDB's plain anti-join.

Writes one closed archive hour of ``--events`` generated plays (10 million by default, in
Parquet files of 500,000, every column of ``ARCHIVE_SCHEMA``; 5 % are resent copies,
half with the id in upper case) and a receipt per archived row in the journal, then
times, on the same files in the same run:

- ``playledger reconcile``'s ties for that period (``reconcile_periods``: first copies,
  duplicates, conflicts, re-deliveries, repricing, receipts ↔ archive), and
- DuckDB's plain anti-join of receipts and archive (receipts whose event id and
  message id are in no archived row), the least any completeness check must do.

It prints both times and their ratio (target: within 2x, and under 60 s). A benchmark,
not a test: it exits 0 unless the reconciler finds a receipt missing that the
anti-join did not, or the reverse (a fast wrong answer is no result).
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from ingest.archiver.buckets import HOUR, HourBuckets
from ledger.catalog import DEFAULT_CATALOG_DIR, Catalog
from ledger.reconcile.ties import reconcile_periods
from ledger.tables import ARCHIVE_DIR, ARCHIVE_SCHEMA, JOURNAL_DIR, RECEIPT_SCHEMA, partition_name
from pipelines.bench.pipeline import _uuid_strings

__all__ = ["bench_reconcile", "main"]

START = dt.datetime(2026, 11, 28, tzinfo=dt.UTC)


def write_record(data_dir: Path, events: int, seed: int, rows_per_file: int) -> int:
    """A closed archive hour of ``events`` rows and their receipts; returns the archive's file count."""
    rng = np.random.default_rng(seed)
    tracks = np.array(sorted(Catalog.load(DEFAULT_CATALOG_DIR).track_ids))
    ids = _uuid_strings(rng, events)
    retried = rng.random(events) < 0.05
    upper = retried & (rng.random(events) < 0.5)
    copied = ids.take(np.where(retried, np.roll(np.arange(events), 1), np.arange(events)))
    ids = pc.if_else(upper, pc.utf8_upper(copied), copied)
    received = np.sort((START.timestamp() * 1e6 + rng.uniform(0, 3600e6, events)).astype("int64"))
    stamp = pa.array(received, pa.timestamp("us", tz="UTC"))
    messages = pc.binary_join_element_wise("m", pc.cast(pa.array(np.arange(events) // 100), pa.string()), "")
    users = pc.binary_join_element_wise(
        "user-", pc.cast(pa.array(rng.integers(0, 10_000, events)), pa.string()), ""
    )
    table = pa.table(
        {
            "event_id": ids,
            "user_id": users,
            "track_id": tracks[rng.integers(0, len(tracks), events)],
            "played_at": pa.array(received - 180_000_000, pa.timestamp("us", tz="UTC")),
            "ms_played": rng.integers(0, 300_000, events),
            "territory": np.array(["US", "GB", "SE", "DE", "NO"])[rng.integers(0, 5, events)],
            "product": np.array(["free", "premium"])[rng.integers(0, 2, events)],
            "context": pa.array(np.full(events, "album")),
            "bitrate_kbps": pa.array(np.full(events, 160, np.int32)),
            "offline": pa.array(np.zeros(events, bool)),
            "device": pa.nulls(events, pa.string()),
            "received_at": stamp,
            "message_id": messages,
            "batch_id": messages,
            "publish_time": stamp,
            "bucket_hour": pa.array(
                np.full(events, int(START.timestamp() * 1e6)), pa.timestamp("us", tz="UTC")
            ),
            "archived_at": stamp,
        },
        schema=ARCHIVE_SCHEMA,
    )
    folder = data_dir / ARCHIVE_DIR / partition_name("hour", START)
    folder.mkdir(parents=True)
    offsets = range(0, events, rows_per_file)
    for index, offset in enumerate(offsets):
        pq.write_table(table.slice(offset, rows_per_file), folder / f"part-{index}.parquet")
    HourBuckets(data_dir / ARCHIVE_DIR, data_dir / ".tmp" / ARCHIVE_DIR, 0).close(START, START + HOUR)
    receipts = pa.table(
        {"event_id": ids, "batch_id": messages, "received_at": stamp, "message_id": messages},
        schema=RECEIPT_SCHEMA,
    )
    journal = data_dir / JOURNAL_DIR / partition_name("hour", START)
    journal.mkdir(parents=True)
    pq.write_table(receipts, journal / "receipts-bench-0000.parquet")
    return len(offsets)


def bench_reconcile(events: int, rows_per_file: int, console: Console) -> tuple[float, float, int]:
    """(reconcile seconds, anti-join seconds, archived rows) on the same files."""
    with tempfile.TemporaryDirectory() as data:
        data_dir = Path(data)
        with console.status(f"writing an archive and receipts of {events:,} events…"):
            write_record(data_dir, events, seed=5, rows_per_file=rows_per_file)
        with console.status("DuckDB's plain anti-join of receipts and archive…"):
            started = time.monotonic()
            ((missing_by_join,),) = duckdb.execute(
                f"""
                SELECT count(*) FROM read_parquet('{data}/{JOURNAL_DIR}/*/*.parquet') r
                ANTI JOIN read_parquet('{data}/{ARCHIVE_DIR}/*/*.parquet') a
                  ON a.event_id = r.event_id AND a.message_id = r.message_id
                """
            ).fetchall()
            join_seconds = time.monotonic() - started
        with console.status("reconciling the period…"):
            started = time.monotonic()
            (result,) = reconcile_periods(data_dir, periods=[START])
            reconcile_seconds = time.monotonic() - started
    if result.numbers["missing_from_archive"] != missing_by_join or result.numbers["archived"] != events:
        raise RuntimeError(
            f"reconcile and the anti-join disagree: {result.numbers['missing_from_archive']} vs "
            f"{missing_by_join} missing, {result.numbers['archived']} of {events} archived"
        )
    return reconcile_seconds, join_seconds, events


def main(argv: Sequence[str] | None = None) -> int:
    """``playledger bench reconcile``."""
    parser = argparse.ArgumentParser(prog="playledger bench reconcile", description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000, help="archived events (default 10M)")
    parser.add_argument("--rows-per-file", type=int, default=500_000)
    args = parser.parse_args(argv)
    console = Console()
    reconcile_seconds, join_seconds, events = bench_reconcile(args.events, args.rows_per_file, console)
    table = Table("step", "seconds", "events/s", title=f"one period of {events:,} archived events")
    table.add_row(
        "playledger reconcile (all five ties)",
        f"{reconcile_seconds:.2f}",
        f"{events / reconcile_seconds:,.0f}",
    )
    table.add_row(
        "DuckDB anti-join receipts ↔ archive", f"{join_seconds:.2f}", f"{events / join_seconds:,.0f}"
    )
    console.print(table)
    ratio = reconcile_seconds / join_seconds
    met = "met" if ratio <= 2 and reconcile_seconds < 60 else "not met"
    console.print(f"ratio reconcile / anti-join: {ratio:.2f}x (target <= 2x, and under 60 s: {met})")
    return 0
