"""The month close: ``playledger ledger close --data-dir DIR --month 2026-11 --revenue FILE``.

The revenue file (CSV, ``month,territory,product,royalty_pool_micros,currency``) gives
each market's pool for the month; ``ledger.finance.prorata`` divides it (the rule is
written there and in the README). Only final data closes: every accounting period of
the month must have a final ledger (``playledger pipeline batch``) whose archive hours
are all closed, a ``reconcile`` verdict of ``balanced`` that still describes its files,
and a passing ``validate`` verdict of ``ledger_final`` that covers the period's final
ledger file as it is now. Otherwise the close refuses, naming each period and what it
lacks. ``--provisional`` computes the same from what exists (final ledgers, else the
streaming ledger), marked PROVISIONAL, and writes nothing.

A close is frozen: ``DIR/closes/month=YYYY-MM/v1/`` holds ``lines.parquet`` (per rights
holder, track, territory and product: streams and amount) and ``manifest.json`` (every
input with its SHA-256, the verdicts used, the markets' pools and denominators, the code
version). A version folder is built aside and renamed into place whole, and never
rewritten. Closing again with the same inputs writes nothing and says so; with changed
inputs it writes ``v2`` (``v3``, ...) holding the adjustments against what the earlier
versions add up to, so the sum over versions is always the latest close.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import importlib.metadata
import json
import os
import re
import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pycountry

from ledger.allocation import UNMATCHED
from ledger.catalog import (
    DEFAULT_CATALOG_DIR,
    PRODUCTS,
    RATES_FILE,
    RIGHTS_HOLDERS_FILE,
    SPLITS_FILE,
    TRACKS_FILE,
    Catalog,
)
from ledger.finance.prorata import UNALLOCATED, CloseLine, divide_market
from ledger.storage import fsync_dir, make_durable_dir, write_json_atomically, write_parquet_atomically
from ledger.tables import ARCHIVE_DIR, CLOSED_MARKER, FINAL_LEDGER_DIR, LEDGER_DIR, floor_hour, partition_name
from ledger.verdicts import FileStamp, latest_verdict

__all__ = [
    "CLOSES_DIR",
    "CLOSE_LINES_SCHEMA",
    "UNALLOCATED",
    "UNMATCHED",
    "CloseRefused",
    "CloseResult",
    "Market",
    "close_month",
    "code_version",
    "compute_close",
    "final_ledger_file",
    "month_periods",
    "read_revenue",
]

CLOSES_DIR = "closes"
LINES_FILE = "lines.parquet"
MANIFEST_FILE = "manifest.json"
REVENUE_COLUMNS = ("month", "territory", "product", "royalty_pool_micros", "currency")
_MONTH = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])")
_DIGITS = re.compile(r"[0-9]+")
_MAX_REASONS_SHOWN = 40

CLOSE_LINES_SCHEMA = pa.schema(
    [
        pa.field("month", pa.string(), nullable=False),
        pa.field("version", pa.int32(), nullable=False),
        pa.field("rights_holder_id", pa.string(), nullable=False),
        pa.field("track_id", pa.string(), nullable=False),
        pa.field("territory", pa.string(), nullable=False),
        pa.field("product", pa.string(), nullable=False),
        pa.field("streams", pa.int64(), nullable=False),
        pa.field("amount_micros", pa.int64(), nullable=False),
        pa.field("currency", pa.string(), nullable=False),
    ]
)
"""One line of a close version: in ``v1`` the close itself, in later versions an adjustment (a delta)."""


class CloseRefused(ValueError):
    """The month cannot close (yet): every reason, each naming its period or market."""

    def __init__(self, month: str, reasons: Sequence[str]) -> None:
        self.reasons = list(reasons)
        shown = self.reasons[:_MAX_REASONS_SHOWN]
        if len(self.reasons) > len(shown):
            shown.append(
                f"... and {len(self.reasons) - len(shown)} more (CloseRefused.reasons holds them all)"
            )
        super().__init__(
            f"month {month} cannot close ({len(self.reasons)} problem(s)):\n  " + "\n  ".join(shown)
        )


@dataclass(frozen=True, slots=True)
class Market:
    """One market's pool from the revenue file."""

    territory: str
    product: str
    pool_micros: int
    currency: str


@dataclass
class CloseResult:
    """What a close computed, and what it wrote (``version`` None when nothing was written)."""

    month: str
    lines: list[CloseLine]
    markets: dict[tuple[str, str], Market]
    market_streams: dict[tuple[str, str], int]
    provisional: bool
    version: int | None = None
    unchanged: bool = False
    path: Path | None = None
    adjustments: int = 0
    inputs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total_micros(self) -> int:
        return sum(line.amount_micros for line in self.lines)


def _month_bounds(month: str) -> tuple[dt.datetime, dt.datetime]:
    if not _MONTH.fullmatch(month):
        raise ValueError(f"--month must look like 2026-11, got {month!r}")
    year, number = int(month[:4]), int(month[5:])
    start = dt.datetime(year, number, 1, tzinfo=dt.UTC)
    end = dt.datetime(year + (number == 12), number % 12 + 1, 1, tzinfo=dt.UTC)
    return start, end


def month_periods(month: str, period_seconds: int = 3600) -> list[dt.datetime]:
    """The accounting periods' starts of ``month`` (UTC), ``period_seconds`` apart."""
    if period_seconds <= 0 or 86_400 % period_seconds:
        raise ValueError(f"period_seconds must divide a day, got {period_seconds}")
    start, end = _month_bounds(month)
    step = dt.timedelta(seconds=period_seconds)
    periods = []
    while start < end:
        periods.append(start)
        start += step
    return periods


def read_revenue(path: Path, month: str) -> dict[tuple[str, str], Market]:
    """The month's pools per (territory, product); ``ValueError`` listing every problem (line each)."""
    problems: list[str] = []
    markets: dict[tuple[str, str], Market] = {}
    lines: dict[tuple[str, str], int] = {}
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, [])
        if tuple(header) != REVENUE_COLUMNS:
            raise ValueError(f"{path}:1: header must be {','.join(REVENUE_COLUMNS)}, got {','.join(header)}")
        for fields in reader:
            where = f"{path}:{reader.line_num}"
            if not fields:
                continue
            if len(fields) != len(REVENUE_COLUMNS):
                problems.append(f"{where}: expected {len(REVENUE_COLUMNS)} fields, got {len(fields)}")
                continue
            row_month, territory, product, pool, currency = fields
            if row_month != month:
                problems.append(f"{where}: month {row_month!r} is not the month being closed ({month})")
            if (
                len(territory) != 2
                or not territory.isupper()
                or pycountry.countries.get(alpha_2=territory) is None
            ):
                problems.append(f"{where}: territory must be an ISO 3166-1 alpha-2 code, got {territory!r}")
            if product not in PRODUCTS:
                problems.append(f"{where}: product must be one of {'|'.join(PRODUCTS)}, got {product!r}")
            if not _DIGITS.fullmatch(pool):
                problems.append(f"{where}: royalty_pool_micros must be a non-negative integer, got {pool!r}")
            if (
                len(currency) != 3
                or not currency.isupper()
                or pycountry.currencies.get(alpha_3=currency) is None
            ):
                problems.append(f"{where}: currency must be an ISO 4217 code, got {currency!r}")
            key = (territory, product)
            if key in lines:
                problems.append(
                    f"{where}: second pool for {territory} {product} (first on line {lines[key]})"
                )
                continue
            lines[key] = reader.line_num
            if _DIGITS.fullmatch(pool):
                markets[key] = Market(territory, product, int(pool), currency)
    if problems:
        raise ValueError(f"invalid revenue file {path}:\n  " + "\n  ".join(problems))
    return markets


def _period_hours(start: dt.datetime, period_seconds: int) -> list[dt.datetime]:
    hours, hour = [], floor_hour(start)
    end = start + dt.timedelta(seconds=period_seconds)
    while hour < end:
        hours.append(hour)
        hour += dt.timedelta(hours=1)
    return hours


def final_ledger_file(data_dir: Path, period_start: dt.datetime) -> Path:
    """Where ``playledger pipeline batch`` writes a period's final ledger."""
    return data_dir / FINAL_LEDGER_DIR / partition_name("period", period_start) / "ledger.parquet"


def _gate_period(data_dir: Path, start: dt.datetime, period_seconds: int) -> tuple[list[str], list[Path]]:
    """What one period lacks to close (empty when nothing), and the verdict records it rests on."""
    iso = start.isoformat()
    final = final_ledger_file(data_dir, start)
    if not final.is_file():
        return [f"period {iso}: no final ledger (run `playledger pipeline batch --period {iso}`)"], []
    lacks: list[str] = []
    used: list[Path] = []
    open_hours = [
        partition_name("hour", hour)
        for hour in _period_hours(start, period_seconds)
        if not (data_dir / ARCHIVE_DIR / partition_name("hour", hour) / CLOSED_MARKER).is_file()
    ]
    if open_hours:
        lacks.append(f"period {iso}: archive hour(s) not closed: {', '.join(open_hours)}")
    reconcile = latest_verdict(data_dir, "reconcile", {"period_start": iso})
    if reconcile is None:
        lacks.append(f"period {iso}: no reconcile verdict")
    else:
        used.append(Path(reconcile.path))
        if reconcile.status != "balanced" or not reconcile.passed:
            lacks.append(f"period {iso}: reconcile verdict is {reconcile.status}, not balanced")
        elif not reconcile.still_current():
            lacks.append(f"period {iso}: reconcile verdict is stale (files changed since)")
    validation = latest_verdict(data_dir, "validate", {"table": FINAL_LEDGER_DIR, "period_start": iso})
    if validation is None:
        lacks.append(f"period {iso}: no validate verdict of {FINAL_LEDGER_DIR}")
    else:
        used.append(Path(validation.path))
        if not validation.passed:
            lacks.append(f"period {iso}: validate verdict is {validation.status}")
        elif not validation.covers([final]):
            lacks.append(f"period {iso}: validate verdict does not cover the final ledger as it is now")
    return lacks, used


def _sql_list(paths: Sequence[Path]) -> str:
    return "[" + ", ".join("'" + path.as_posix().replace("'", "''") + "'" for path in paths) + "]"


def _streams_by_market(files: Sequence[Path]) -> dict[tuple[str, str], dict[str, int]]:
    """``S[t, m]``: per market, each track's streams, counted once per play (not once per rights holder).

    Every rights holder row of a play carries its stream, so per period a track's streams
    are its largest per-holder sum (all holders of a track have the same within a period).
    """
    result: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
    if not files:
        return result
    rows = duckdb.sql(
        f"""
        SELECT territory, product, track_id, CAST(sum(streams) AS HUGEINT) AS streams FROM (
            SELECT period_start, territory, product, track_id, max(streams) AS streams FROM (
                SELECT period_start, territory, product, track_id, rights_holder_id, sum(streams) AS streams
                FROM read_parquet({_sql_list(files)}, hive_partitioning = false, union_by_name = true)
                GROUP BY ALL
            ) GROUP BY ALL
        ) GROUP BY ALL HAVING sum(streams) <> 0
        """
    )
    assert rows is not None
    for territory, product, track_id, streams in rows.fetchall():
        result[(territory, product)][track_id] = int(streams)
    return result


def _annual_streams(data_dir: Path, month: str) -> tuple[dict[str, int], list[Path]]:
    """Each track's streams over the final ledgers of the 12 months up to the end of ``month``; the files."""
    _, end = _month_bounds(month)
    start = end.replace(year=end.year - 1)
    files = [
        path
        for path in sorted((data_dir / FINAL_LEDGER_DIR).glob("period=*/ledger.parquet"))
        if start <= dt.datetime.strptime(path.parent.name[7:], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC) < end
    ]
    totals: dict[str, int] = defaultdict(int)
    for market in _streams_by_market(files).values():
        for track_id, streams in market.items():
            totals[track_id] += streams
    return totals, files


def _source_files(data_dir: Path, periods: Sequence[dt.datetime], provisional: bool) -> list[Path]:
    files: list[Path] = []
    for start in periods:
        final = final_ledger_file(data_dir, start)
        if final.is_file():
            files.append(final)
        elif provisional:
            files.extend(sorted((data_dir / LEDGER_DIR / partition_name("period", start)).glob("*.parquet")))
    return files


def compute_close(
    data_dir: Path,
    month: str,
    revenue_file: Path,
    *,
    catalog: Catalog,
    provisional: bool = False,
    min_annual_streams: int = 0,
    period_seconds: int = 3600,
) -> tuple[CloseResult, list[Path], list[Path]]:
    """Compute the month's close (writes nothing): the result, the ledger files read, the verdicts used.

    The ledger files returned are every file read (with eligibility on, the earlier
    months' final ledgers too). Raises ``CloseRefused`` naming every period that lacks
    what a close needs (unless ``provisional``) and every market with streams but no pool.
    """
    if min_annual_streams < 0:
        raise ValueError(f"--min-annual-streams must be >= 0, got {min_annual_streams}")
    markets = read_revenue(revenue_file, month)
    periods = month_periods(month, period_seconds)
    reasons: list[str] = []
    verdict_files: list[Path] = []
    if not provisional:
        for start in periods:
            lacks, used = _gate_period(data_dir, start, period_seconds)
            reasons.extend(lacks)
            verdict_files.extend(used)
    files = _source_files(data_dir, periods, provisional)
    streams = _streams_by_market(files)
    for territory, product in sorted(set(streams) - set(markets)):
        total = sum(streams[(territory, product)].values())
        reasons.append(f"market {territory} {product}: {total} streams but no pool in {revenue_file}")
    if reasons:
        raise CloseRefused(month, reasons)
    eligible: dict[str, int] | None = None
    if min_annual_streams:
        eligible, annual_files = _annual_streams(data_dir, month)
        # The earlier months' final ledgers decide eligibility: they are inputs too.
        files = files + sorted(set(annual_files) - set(files))
    lines: list[CloseLine] = []
    market_streams: dict[tuple[str, str], int] = {}
    for key in sorted(markets):
        market_tracks = streams.get(key, {})
        if eligible is not None:
            market_tracks = {
                t: s for t, s in market_tracks.items() if eligible.get(t, 0) >= min_annual_streams
            }
        market_streams[key] = sum(market_tracks.values())
        lines.extend(divide_market(key[0], key[1], markets[key].pool_micros, market_tracks, catalog.splits))
    result = CloseResult(month, lines, markets, market_streams, provisional)
    return result, files, verdict_files


def _sha256(path: Path) -> str:
    return FileStamp.of(path).sha256


def code_version() -> str:
    """The distribution's version and a digest of the code that computes a close."""
    try:
        version = importlib.metadata.version("playledger")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    digest = hashlib.sha256()
    here = Path(__file__).resolve().parent
    for source in [*sorted(here.glob("*.py")), here.parent / "allocation.py"]:
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    return f"{version}+{digest.hexdigest()[:16]}"


def _version_dirs(month_dir: Path) -> list[tuple[int, Path]]:
    found = []
    for path in month_dir.glob("v*"):
        if path.name[1:].isdigit() and (path / MANIFEST_FILE).is_file():
            found.append((int(path.name[1:]), path))
    return sorted(found)


def _key(line: Mapping[str, Any]) -> tuple[str, str, str, str, str]:
    return (line["rights_holder_id"], line["track_id"], line["territory"], line["product"], line["currency"])


def close_month(
    data_dir: Path | str,
    month: str,
    revenue_file: Path | str,
    *,
    catalog_dir: Path | str = DEFAULT_CATALOG_DIR,
    provisional: bool = False,
    min_annual_streams: int = 0,
    period_seconds: int = 3600,
) -> CloseResult:
    """Close ``month`` (see the module docstring); a provisional close writes nothing."""
    data = Path(data_dir).resolve()
    revenue = Path(revenue_file).resolve()
    catalog_path = Path(catalog_dir).resolve()
    catalog = Catalog.load(catalog_path)
    result, files, verdict_files = compute_close(
        data,
        month,
        revenue,
        catalog=catalog,
        provisional=provisional,
        min_annual_streams=min_annual_streams,
        period_seconds=period_seconds,
    )
    if provisional:
        return result
    inputs = (
        [{"role": "final_ledger", "path": str(p), "sha256": _sha256(p)} for p in files]
        + [
            {"role": "catalog", "path": str(catalog_path / name), "sha256": _sha256(catalog_path / name)}
            for name in (TRACKS_FILE, RIGHTS_HOLDERS_FILE, SPLITS_FILE, RATES_FILE)
        ]
        + [{"role": "revenue", "path": str(revenue), "sha256": _sha256(revenue)}]
    )
    # The verdicts are named in the manifest but not in the fingerprint: a check run again on
    # the same files does not change the money.
    fingerprint_source = {
        "month": month,
        "min_annual_streams": min_annual_streams,
        "period_seconds": period_seconds,
        "inputs": sorted((item["role"], Path(item["path"]).name, item["sha256"]) for item in inputs),
    }
    fingerprint = hashlib.sha256(json.dumps(fingerprint_source, sort_keys=True).encode()).hexdigest()
    result.inputs = inputs
    month_dir = data / CLOSES_DIR / f"month={month}"
    versions = _version_dirs(month_dir)
    if versions:
        latest_number, latest_dir = versions[-1]
        manifest = json.loads((latest_dir / MANIFEST_FILE).read_text())
        if manifest.get("fingerprint") == fingerprint:
            result.version, result.unchanged, result.path = latest_number, True, latest_dir
            return result

    new_lines: dict[tuple[str, str, str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    for line in result.lines:
        currency = result.markets[(line.territory, line.product)].currency
        entry = new_lines[(line.rights_holder_id, line.track_id, line.territory, line.product, currency)]
        entry[0] += line.streams
        entry[1] += line.amount_micros
    standing: dict[tuple[str, str, str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    for _, version_dir in versions:
        for row in pq.read_table(version_dir / LINES_FILE).to_pylist():
            entry = standing[_key(row)]
            entry[0] += row["streams"]
            entry[1] += row["amount_micros"]
    number = versions[-1][0] + 1 if versions else 1
    rows = []
    for key in sorted(set(new_lines) | set(standing)):
        streams = new_lines.get(key, [0, 0])[0] - standing.get(key, [0, 0])[0]
        amount = new_lines.get(key, [0, 0])[1] - standing.get(key, [0, 0])[1]
        if number > 1 and streams == 0 and amount == 0:
            continue
        holder, track, territory, product, currency = key
        rows.append(
            {
                "month": month,
                "version": number,
                "rights_holder_id": holder,
                "track_id": track,
                "territory": territory,
                "product": product,
                "streams": streams,
                "amount_micros": amount,
                "currency": currency,
            }
        )
    manifest = {
        "month": month,
        "version": number,
        "kind": "close" if number == 1 else "adjustment",
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
        "code_version": code_version(),
        "fingerprint": fingerprint,
        "min_annual_streams": min_annual_streams,
        "period_seconds": period_seconds,
        "catalog_dir": str(catalog_path),
        "inputs": inputs,
        "verdicts": [{"path": str(p), "sha256": _sha256(p)} for p in verdict_files],
        "markets": [
            {
                "territory": market.territory,
                "product": market.product,
                "pool_micros": market.pool_micros,
                "currency": market.currency,
                "eligible_streams": result.market_streams[key],
                "unallocated": result.market_streams[key] == 0,
            }
            for key, market in sorted(result.markets.items())
        ],
        "lines": len(rows),
    }
    # Built aside, renamed into place whole: a reader never sees a version without its manifest.
    temp_root = data / CLOSES_DIR / ".tmp"
    staging = temp_root / f"{month}-v{number}-{uuid.uuid4().hex[:8]}"
    make_durable_dir(staging)
    write_parquet_atomically(
        rows, CLOSE_LINES_SCHEMA, staging, temp_root, LINES_FILE.removesuffix(".parquet")
    )
    write_json_atomically(manifest, staging / MANIFEST_FILE, temp_root)
    make_durable_dir(month_dir)
    final_dir = month_dir / f"v{number}"
    if final_dir.exists():
        raise FileExistsError(f"{final_dir} already exists: another close ran at the same time")
    os.rename(staging, final_dir)
    fsync_dir(month_dir)
    result.version, result.path, result.adjustments = number, final_dir, len(rows) if number > 1 else 0
    return result
