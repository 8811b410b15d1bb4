"""Month close speed: ``playledger bench close`` against DuckDB doing the same division in SQL.

Writes a month of 30 x 24 hourly final-ledger periods for ``--tracks`` tracks (default
5,000) and ``--rights-holders`` rights holders (default 60) into a temporary catalog and
data directory, then times ``ledger.finance.close.compute_close`` (reading every period
file, counting each track's streams per market, dividing every market's pool by the
two-level largest-remainder rule) against one DuckDB query doing the same two-level
division with window functions over the same files. Both must give the same micro-units
per line; the ratio (ours / DuckDB) is printed, the target is within 2x::

    playledger bench close
    playledger bench close --tracks 500 --periods 48     # a quick look
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import random
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console

from ledger.catalog import Catalog
from ledger.finance.close import compute_close, final_ledger_file
from ledger.tables import LEDGER_SCHEMA

__all__ = ["main"]

TERRITORIES = ("SE", "NO", "DE", "US", "GB", "FR", "BR", "JP")
PRODUCTS = ("free", "premium")

SQL_CLOSE = """
WITH per_holder AS (
    SELECT period_start, territory, product, track_id, rights_holder_id, sum(streams) AS streams
    FROM read_parquet({files}) GROUP BY ALL
), per_track AS (
    SELECT territory, product, track_id, CAST(sum(streams) AS HUGEINT) AS streams FROM (
        SELECT period_start, territory, product, track_id, max(streams) AS streams
        FROM per_holder GROUP BY ALL
    ) GROUP BY ALL
), shares AS (
    SELECT t.*, CAST(p.royalty_pool_micros AS HUGEINT) AS pool,
           CAST(p.royalty_pool_micros AS HUGEINT) * t.streams
               // sum(t.streams) OVER (PARTITION BY t.territory, t.product) AS base,
           CAST(p.royalty_pool_micros AS HUGEINT) * t.streams
               % sum(t.streams) OVER (PARTITION BY t.territory, t.product) AS remainder
    FROM per_track t JOIN read_csv({revenue}) p USING (territory, product)
), parts AS (
    SELECT territory, product, track_id, streams,
           base + CASE WHEN row_number() OVER (
                               PARTITION BY territory, product ORDER BY remainder DESC, track_id)
                       <= pool - sum(base) OVER (PARTITION BY territory, product) THEN 1 ELSE 0 END AS part
    FROM shares
), holder_shares AS (
    SELECT parts.*, s.rights_holder_id,
           part * s.share_bps // 10000 AS amount, part * s.share_bps % 10000 AS remainder
    FROM parts JOIN read_csv({splits}) s USING (track_id)
)
SELECT rights_holder_id, track_id, territory, product,
       CAST(amount + CASE WHEN row_number() OVER (
                PARTITION BY territory, product, track_id ORDER BY remainder DESC, rights_holder_id)
            <= part - sum(amount) OVER (PARTITION BY territory, product, track_id)
            THEN 1 ELSE 0 END AS BIGINT)
FROM holder_shares
"""


def _write_catalog(folder: Path, tracks: int, holders: int, rng: random.Random) -> None:
    folder.mkdir(parents=True)
    holder_ids = [f"RH{n:03d}" for n in range(holders)]
    with (folder / "tracks.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["track_id", "title", "artist", "duration_ms"])
        writer.writerows([f"T{n:05d}", f"Track {n}", "Artist", 200_000] for n in range(tracks))
    with (folder / "rights_holders.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["rights_holder_id", "name", "role"])
        writer.writerows([holder, holder, "label"] for holder in holder_ids)
    with (folder / "splits.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["track_id", "rights_holder_id", "share_bps"])
        for n in range(tracks):
            chosen = sorted(rng.sample(holder_ids, rng.randint(1, 3)))
            cuts = sorted(rng.sample(range(1, 10_000), len(chosen) - 1))
            edges = [0, *cuts, 10_000]
            writer.writerows([f"T{n:05d}", h, edges[i + 1] - edges[i]] for i, h in enumerate(chosen))
    with (folder / "rates.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["territory", "product", "rate_micros", "currency"])
        writer.writerows([["*", "free", 1000, "USD"], ["*", "premium", 4000, "USD"]])


def _write_month(data: Path, catalog: Catalog, periods: int, per_period: int, rng: random.Random) -> None:
    start = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    track_ids = sorted(catalog.track_ids)
    for index in range(periods):
        period_start = start + dt.timedelta(hours=index)
        columns: dict[str, list[object]] = {name: [] for name in LEDGER_SCHEMA.names}
        for track_id in rng.sample(track_ids, min(per_period, len(track_ids))):
            territory, product = rng.choice(TERRITORIES), rng.choice(PRODUCTS)
            streams = rng.randint(1, 40)
            for split in catalog.splits[track_id]:
                for name, value in (
                    ("period_start", period_start),
                    ("period_end", period_start + dt.timedelta(hours=1)),
                    ("rights_holder_id", split.rights_holder_id),
                    ("track_id", track_id),
                    ("territory", territory),
                    ("product", product),
                    ("plays", streams),
                    ("streams", streams),
                    ("amount_micros", 0),
                    ("currency", "USD"),
                    ("pane_timing", "ON_TIME"),
                    ("written_at", period_start),
                ):
                    columns[name].append(value)
        path = final_ledger_file(data, period_start)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pydict(columns, schema=LEDGER_SCHEMA), path)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 when both sides agree to the micro-unit."""
    parser = argparse.ArgumentParser(prog="playledger bench close", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracks", type=int, default=5_000)
    parser.add_argument("--rights-holders", type=int, default=60)
    parser.add_argument("--periods", type=int, default=30 * 24, help="hourly periods (default a month)")
    parser.add_argument("--tracks-per-period", type=int, default=1_000)
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args(argv)
    console = Console()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="bench-close-") as temp:
        root = Path(temp)
        _write_catalog(root / "catalog", args.tracks, args.rights_holders, rng)
        catalog = Catalog.load(root / "catalog")
        _write_month(root / "data", catalog, args.periods, args.tracks_per_period, rng)
        revenue = root / "revenue.csv"
        with revenue.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["month", "territory", "product", "royalty_pool_micros", "currency"])
            for territory in TERRITORIES:
                for product in PRODUCTS:
                    writer.writerow(["2026-11", territory, product, rng.randint(10**9, 10**12), "USD"])
        files = sorted((root / "data" / "ledger_final").glob("period=*/ledger.parquet"))
        rows = sum(pq.ParquetFile(path).metadata.num_rows for path in files)

        began = time.perf_counter()
        result, _, _ = compute_close(
            root / "data", "2026-11", revenue, catalog=catalog, provisional=True, period_seconds=3600
        )
        ours = time.perf_counter() - began

        listed = "[" + ", ".join(f"'{path.as_posix()}'" for path in files) + "]"
        query = SQL_CLOSE.format(
            files=listed,
            revenue=f"'{revenue.as_posix()}'",
            splits=f"'{(root / 'catalog' / 'splits.csv').as_posix()}'",
        )
        began = time.perf_counter()
        relation = duckdb.sql(query)
        assert relation is not None
        theirs_rows = relation.fetchall()
        theirs = time.perf_counter() - began

    ours_lines = {
        (line.rights_holder_id, line.track_id, line.territory, line.product): line.amount_micros
        for line in result.lines
    }
    theirs_lines = {tuple(row[:4]): int(row[4]) for row in theirs_rows}
    agree = ours_lines == theirs_lines
    console.print(
        f"{len(files)} periods, {rows:,} final-ledger rows, {args.tracks:,} tracks, "
        f"{args.rights_holders} rights holders, {len(ours_lines):,} close lines"
    )
    console.print(f"playledger close: {ours:.2f} s   DuckDB SQL: {theirs:.2f} s   ratio {ours / theirs:.2f}x")
    console.print("the same micro-units per line" if agree else "[red]the two closes differ[/red]")
    return 0 if agree else 1


if __name__ == "__main__":
    raise SystemExit(main())
