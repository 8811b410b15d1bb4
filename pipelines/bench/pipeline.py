"""``playledger bench pipeline``: how fast the royalty pipelines run on this machine.

Streaming, on the direct runner against the Pub/Sub emulator: a backlog of play events
in batched messages is read twice, once by a pipeline that only pulls and decodes (the
transport ceiling) and once by the whole streaming pipeline with de-duplication on;
events per second for each, and the ratio.

Memory: de-duplication runs for ``--memory-minutes`` (10) at a constant rate with a short
horizon, for the resident memory a remembered event id costs and whether resident memory
stays flat once ids expire as fast as they come (``pipelines/bench_memory.py``).

Batch: an archive of generated plays (10 million by default, in Parquet files of
500,000, with 5 % retried copies, half of those with the id in upper case) is recomputed
by the batch pipeline, start-up included, and, on the same files in the same run, by
DuckDB doing the same de-duplication (ids compared in lower case) and aggregation in
SQL; events per second for each, and the ratio. The two must count the same plays.

A benchmark, not a test: it prints what it measured and exits 0 (unless the batch
pipeline and DuckDB disagree, which raises).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import apache_beam as beam
import duckdb
import google.cloud.pubsub_v1 as pubsub_v1
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.gcp.pubsub import ReadFromPubSub
from apache_beam.options.pipeline_options import PipelineOptions
from rich.console import Console
from rich.table import Table

from ingest.archiver.buckets import HOUR, HourBuckets
from ingest.pubsub import emulator_from_env_or_started, ensure_topology
from ledger.catalog import DEFAULT_CATALOG_DIR, Catalog
from ledger.tables import ARCHIVE_DIR, partition_name
from pipelines import batch
from pipelines.bench.memory import bench_dedup_memory, describe
from pipelines.config import PipelineConfig
from pipelines.direct_runner import mend_direct_runner
from pipelines.streaming import build, parquet_sinks
from pipelines.supervisor import Heartbeat
from pipelines.transforms.decode import DecodePlayMessages
from pipelines.transforms.metrics import counters
from schemas.codec import encode_batch
from schemas.topology import PubSubNames

__all__ = ["main"]

START = dt.datetime(2026, 11, 28, tzinfo=dt.UTC)


def _plays(count: int, seed: int, now: dt.datetime) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    tracks = sorted(Catalog.load(DEFAULT_CATALOG_DIR).track_ids)
    territories = ["US", "GB", "SE", "DE", "NO"]
    return [
        {
            "event_id": str(uuid.UUID(int=int(rng.integers(0, 2**63)), version=4)),
            "user_id": f"user-{int(rng.integers(0, 10_000))}",
            "track_id": tracks[int(rng.integers(0, len(tracks)))],
            "played_at": now - dt.timedelta(minutes=3),
            "ms_played": int(rng.integers(0, 300_000)),
            "territory": territories[int(rng.integers(0, len(territories)))],
            "product": "premium" if rng.random() < 0.6 else "free",
            "context": "playlist",
            "bitrate_kbps": 160,
            "offline": False,
            "device": None,
            "received_at": now,
        }
        for _ in range(count)
    ]


def _publish_backlog(topic: str, events: int, per_message: int) -> None:
    publisher = pubsub_v1.PublisherClient()
    now = dt.datetime.now(dt.UTC)
    template = _plays(per_message, 1, now)
    pending = []
    for start in range(0, events, per_message):
        size = min(per_message, events - start)
        # Fresh ids per message; the rest of the content repeats, which decode does not care about.
        plays = [dict(play, event_id=str(uuid.uuid4())) for play in template[:size]]
        message = encode_batch(plays, uuid.uuid4().hex)
        pending.append(publisher.publish(topic, message.data, **message.attributes))
    futures.wait(pending)
    publisher.stop()


def _time_until(result: Any, done: Callable[[dict[str, int]], bool], timeout: float) -> float:
    """Seconds from now until ``done(counters)``; the pipeline is cancelled afterwards."""
    started = time.monotonic()
    try:
        while time.monotonic() - started < timeout:
            if done(counters(result)):
                return time.monotonic() - started
            time.sleep(0.1)
        raise TimeoutError(f"not done in {timeout:g} s: {counters(result)}")
    finally:
        result.cancel()


def bench_streaming(events: int, per_message: int, console: Console) -> tuple[float, float]:
    """(ceiling events/s: pull + decode, end-to-end events/s with de-duplication)."""
    mend_direct_runner()
    with emulator_from_env_or_started():
        # The royalties subscription feeds the whole pipeline, the archive one the ceiling.
        names = PubSubNames.from_env().scratch("bench")
        ensure_topology(names)
        with console.status(f"publishing {events:,} events in messages of {per_message}…"):
            _publish_backlog(names.topic, events, per_message)
        heartbeat = Heartbeat(names.topic, 0.5)
        heartbeat.start()
        try:
            options = PipelineOptions([], streaming=True, runner="BundleBasedDirectRunner")
            with console.status("transport ceiling: pull + decode…"):
                ceiling = beam.Pipeline(options=options)
                _ = (
                    ceiling
                    | ReadFromPubSub(subscription=names.archive, with_attributes=True)
                    | DecodePlayMessages(PipelineConfig().period_seconds)
                )
                seconds = _time_until(ceiling.run(), lambda c: c.get("events_decoded", 0) >= events, 600)
            ceiling_rate = events / seconds
            with (
                console.status("whole streaming pipeline with de-duplication…"),
                tempfile.TemporaryDirectory() as data,
            ):
                full = beam.Pipeline(options=options)
                build(
                    full,
                    ReadFromPubSub(subscription=names.royalties, with_attributes=True),
                    parquet_sinks(data),
                    PipelineConfig(early_firing_seconds=1),
                )
                seconds = _time_until(full.run(), lambda c: c.get("events_unique", 0) >= events, 900)
            full_rate = events / seconds
        finally:
            heartbeat.stopped.set()
    return ceiling_rate, full_rate


def _uuid_strings(rng: np.random.Generator, count: int) -> pa.Array:
    """``count`` random version-4 UUIDs in canonical form, made column-wise (no Python per id)."""
    raw = rng.integers(0, 256, (count, 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    hex_digits = np.frombuffer(b"0123456789abcdef", np.uint8)
    digits = np.empty((count, 32), np.uint8)
    digits[:, 0::2] = hex_digits[raw >> 4]
    digits[:, 1::2] = hex_digits[raw & 0x0F]
    text = np.full((count, 36), ord("-"), np.uint8)
    for start, stop, offset in ((0, 8, 0), (9, 13, 1), (14, 18, 2), (19, 23, 3), (24, 36, 4)):
        text[:, start:stop] = digits[:, start - offset : stop - offset]
    offsets = np.arange(0, 36 * (count + 1), 36, dtype=np.int32)
    return pa.StringArray.from_buffers(count, pa.py_buffer(offsets), pa.py_buffer(text))


def _write_archive(data_dir: Path, events: int, seed: int, rows_per_file: int) -> int:
    """Hourly archive files of ``events`` plays, 5 % of them retried copies; returns the file count.

    A retry reuses the id of an earlier play (in upper case half the time) with other
    content, so every retry is a conflicting duplicate.
    """
    rng = np.random.default_rng(seed)
    tracks = np.array(sorted(Catalog.load(DEFAULT_CATALOG_DIR).track_ids))
    ids = _uuid_strings(rng, events)
    retried = rng.random(events) < 0.05
    upper = retried & (rng.random(events) < 0.5)
    earlier = np.roll(np.arange(events), 1)
    # A retry copies the previous row's id, then half the retries spell it in upper case.
    copied = ids.take(np.where(retried, earlier, np.arange(events)))
    ids = pc.if_else(upper, pc.utf8_upper(copied), copied)
    received = (START.timestamp() * 1e6 + rng.uniform(0, 3600e6, events)).astype("int64")
    numbers = pc.cast(pa.array(rng.integers(0, 10_000, events)), pa.string())
    table = pa.table(
        {
            "event_id": ids,
            "user_id": pc.binary_join_element_wise("user-", numbers, ""),
            "track_id": tracks[rng.integers(0, len(tracks), events)],
            "played_at": pa.array(received - 180_000_000, pa.timestamp("us", tz="UTC")),
            "ms_played": rng.integers(0, 300_000, events),
            "territory": np.array(["US", "GB", "SE", "DE", "NO"])[rng.integers(0, 5, events)],
            "product": np.array(["free", "premium"])[rng.integers(0, 2, events)],
            "received_at": pa.array(received, pa.timestamp("us", tz="UTC")),
            "message_id": pc.binary_join_element_wise(
                "m", pc.cast(pa.array(np.arange(events)), pa.string()), ""
            ),
        }
    )
    folder = data_dir / ARCHIVE_DIR / partition_name("hour", START)
    folder.mkdir(parents=True)
    offsets = range(0, events, rows_per_file)
    for index, offset in enumerate(offsets):
        pq.write_table(table.slice(offset, rows_per_file), folder / f"part-{index}.parquet")
    # Closed as the archiver closes an hour: the recompute is of a final period.
    HourBuckets(data_dir / ARCHIVE_DIR, data_dir / ".tmp" / ARCHIVE_DIR, 0).close(START, START + HOUR)
    return len(offsets)


def bench_batch(events: int, rows_per_file: int, console: Console) -> tuple[float, float]:
    """(batch pipeline events/s, DuckDB events/s) on the same archive files.

    Both must count the same plays and streams per (track, territory, product), or this
    raises ``RuntimeError``: a fast wrong answer is no result. Both may use every core:
    DuckDB runs with its default of a thread per core; the pipeline runs on the
    FnApiRunner's one worker, whose Parquet reads use Arrow's pool of a thread per core.
    """
    end = START + dt.timedelta(hours=1)
    with tempfile.TemporaryDirectory() as data:
        with console.status(f"writing an archive of {events:,} events…"):
            files = _write_archive(Path(data), events, seed=3, rows_per_file=rows_per_file)
        with console.status(f"batch pipeline on {files} files…"):
            started = time.monotonic()
            batch.run(["--data-dir", data, "--period", START.isoformat(), "--period-seconds", "3600"])
            pipeline_rate = events / (time.monotonic() - started)
        with console.status("DuckDB, same de-duplication and aggregation…"):
            started = time.monotonic()
            expected = duckdb.execute(
                f"""
                WITH first_copies AS (
                    SELECT * FROM read_parquet('{data}/{ARCHIVE_DIR}/*/*.parquet')
                    QUALIFY row_number() OVER (
                        PARTITION BY lower(event_id) ORDER BY received_at, message_id
                    ) = 1
                )
                SELECT track_id, territory, product, count(*), sum((ms_played >= 30000)::INTEGER)
                FROM first_copies
                WHERE received_at >= TIMESTAMPTZ '{START.isoformat()}'
                  AND received_at < TIMESTAMPTZ '{end.isoformat()}'
                GROUP BY ALL
                """
            ).fetchall()
            duckdb_rate = events / (time.monotonic() - started)
        counted = duckdb.execute(
            f"SELECT DISTINCT track_id, territory, product, plays, streams "
            f"FROM read_parquet('{data}/{batch.FINAL_LEDGER_DIR}/*/*.parquet')"
        ).fetchall()
        if sorted(counted) != sorted(expected):
            raise RuntimeError("the batch pipeline and DuckDB counted different plays")
    return pipeline_rate, duckdb_rate


def main(argv: Sequence[str] | None = None) -> int:
    """Measure and print; see the module docstring."""
    parser = argparse.ArgumentParser(prog="playledger bench pipeline", description=__doc__.split("\n")[0])
    parser.add_argument("--streaming-events", type=int, default=500_000)
    parser.add_argument("--events-per-message", type=int, default=500)
    parser.add_argument("--batch-events", type=int, default=10_000_000)
    parser.add_argument("--batch-rows-per-file", type=int, default=500_000)
    parser.add_argument("--skip-streaming", action="store_true")
    parser.add_argument("--skip-batch", action="store_true")
    parser.add_argument(
        "--memory-minutes",
        type=float,
        default=10,
        help="how long to run de-duplication at a constant rate for its memory (0: skip)",
    )
    parser.add_argument("--memory-rate", type=int, default=5_000, help="plays a second in the memory run")
    parser.add_argument(
        "--memory-horizon-seconds", type=int, default=120, help="de-duplication horizon of the memory run"
    )
    args = parser.parse_args(argv)
    console = Console()
    table = Table(title=f"playledger pipelines on this machine ({os.cpu_count()} cores)")
    for column in ("run", "events", "events/s", "compared with", "ratio", "target"):
        table.add_column(column, justify="right" if column in ("events", "events/s", "ratio") else "left")
    if not args.skip_streaming:
        ceiling, full = bench_streaming(args.streaming_events, args.events_per_message, console)
        events = f"{args.streaming_events:,}"
        table.add_row("streaming: pull + decode", events, f"{ceiling:,.0f}", "", "", "")
        table.add_row(
            "streaming: whole, dedup on",
            events,
            f"{full:,.0f}",
            "pull + decode",
            f"{full / ceiling:.0%}",
            "≥ 50,000/s and ≥ 60 %",
        )
    if not args.skip_batch:
        pipeline_rate, duckdb_rate = bench_batch(args.batch_events, args.batch_rows_per_file, console)
        events = f"{args.batch_events:,}"
        table.add_row(
            "batch recompute (Beam)",
            events,
            f"{pipeline_rate:,.0f}",
            "DuckDB",
            f"{pipeline_rate / duckdb_rate:.0%}",
            "≥ 1,000,000/s",
        )
        table.add_row("DuckDB, same query", events, f"{duckdb_rate:,.0f}", "", "", "")
    console.print(table)
    if args.memory_minutes > 0:
        report = bench_dedup_memory(
            args.memory_minutes, args.memory_rate, args.memory_horizon_seconds, console
        )
        memory = Table(
            title=f"de-duplication memory: {args.memory_minutes:g} min at {args.memory_rate:,} plays/s, "
            f"horizon {args.memory_horizon_seconds} s"
        )
        memory.add_column("measure")
        memory.add_column("value", justify="right")
        for measure, value in describe(report):
            memory.add_row(measure, value)
        console.print(memory)
    return 0
