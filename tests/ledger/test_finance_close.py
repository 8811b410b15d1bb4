"""The month close against an independent reference of the two-level rule, its gates and its versions."""

from __future__ import annotations

import csv
import datetime as dt
import json
import tempfile
from collections import defaultdict
from fractions import Fraction
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.catalog import Catalog
from ledger.finance.close import CloseRefused, close_month, compute_close, final_ledger_file
from ledger.storage import write_bytes_atomically
from ledger.tables import ARCHIVE_DIR, CLOSED_MARKER, LEDGER_SCHEMA, partition_name
from ledger.verdicts import record_verdict
from ledger.views import open_ledger

MONTH = "2026-11"
DAY = 86_400
MONTH_START = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


# --- an independent reference: exact fractions, ranked by hand, no shared code ----------


def reference_close(
    pools: dict[tuple[str, str], int],
    streams: dict[tuple[str, str], dict[str, int]],
    splits: dict[str, dict[str, int]],
) -> dict[tuple[str, str, str, str], int]:
    """(holder, track, territory, product) -> micros, by the rule as the issue states it."""
    out: dict[tuple[str, str, str, str], int] = defaultdict(int)
    for (territory, product), pool in pools.items():
        tracks = {t: s for t, s in streams.get((territory, product), {}).items() if s > 0}
        total = sum(tracks.values())
        if total == 0:
            out[("UNALLOCATED", "", territory, product)] += pool
            continue
        exact = {t: Fraction(pool * s, total) for t, s in tracks.items()}
        parts = {t: int(x) for t, x in exact.items()}
        ranked = sorted(tracks, key=lambda t: (-(exact[t] - parts[t]), t))
        for t in ranked[: pool - sum(parts.values())]:
            parts[t] += 1
        for t, part in parts.items():
            if t not in splits:
                out[("UNMATCHED", t, territory, product)] += part
                continue
            share = {h: Fraction(part * bps, 10_000) for h, bps in splits[t].items()}
            amounts = {h: int(x) for h, x in share.items()}
            ranked_holders = sorted(share, key=lambda h: (-(share[h] - amounts[h]), h))
            for h in ranked_holders[: part - sum(amounts.values())]:
                amounts[h] += 1
            for h, amount in amounts.items():
                out[(h, t, territory, product)] += amount
    return dict(out)


# --- building a data directory -------------------------------------------------------


def write_csv(path: Path, header: str, rows: list[tuple[object, ...]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header.split(","))
        writer.writerows(rows)


def write_catalog(folder: Path, splits: dict[str, dict[str, int]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    holders = sorted({h for parts in splits.values() for h in parts})
    write_csv(
        folder / "tracks.csv", "track_id,title,artist,duration_ms", [(t, t, "A", 200000) for t in splits]
    )
    write_csv(folder / "rights_holders.csv", "rights_holder_id,name,role", [(h, h, "label") for h in holders])
    write_csv(
        folder / "splits.csv",
        "track_id,rights_holder_id,share_bps",
        [(t, h, bps) for t, parts in splits.items() for h, bps in parts.items()],
    )
    write_csv(
        folder / "rates.csv",
        "territory,product,rate_micros,currency",
        [("*", "free", 1000, "USD"), ("*", "premium", 4000, "USD")],
    )
    return folder


def write_revenue(path: Path, pools: dict[tuple[str, str], int]) -> Path:
    write_csv(
        path,
        "month,territory,product,royalty_pool_micros,currency",
        [(MONTH, t, p, pool, "USD") for (t, p), pool in sorted(pools.items())],
    )
    return path


def write_final_ledger(
    data_dir: Path,
    period_start: dt.datetime,
    streams: dict[tuple[str, str], dict[str, int]],
    splits: dict[str, dict[str, int]],
) -> Path:
    rows = []
    for (territory, product), tracks in streams.items():
        for track_id, count in tracks.items():
            for holder in splits.get(track_id, {"UNMATCHED": 10_000}):
                rows.append(
                    {
                        "period_start": period_start,
                        "period_end": period_start + dt.timedelta(seconds=DAY),
                        "rights_holder_id": holder,
                        "track_id": track_id,
                        "territory": territory,
                        "product": product,
                        "plays": count,
                        "streams": count,
                        "amount_micros": 0,
                        "currency": "USD",
                        "pane_timing": "ON_TIME",
                        "written_at": period_start,
                    }
                )
    path = final_ledger_file(data_dir, period_start)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=LEDGER_SCHEMA), path)
    return path


def make_period_final(data_dir: Path, period_start: dt.datetime, final: Path) -> None:
    """Close the period's archive hours and record a balanced reconcile and a passing validate."""
    for hour in range(24):
        folder = data_dir / ARCHIVE_DIR / partition_name("hour", period_start + dt.timedelta(hours=hour))
        write_bytes_atomically(b"", folder / CLOSED_MARKER)
    iso = period_start.isoformat()
    record_verdict(
        data_dir, "reconcile", scope={"period_start": iso}, passed=True, status="balanced", files=[final]
    )
    record_verdict(
        data_dir,
        "validate",
        scope={"table": "ledger_final", "period_start": iso},
        passed=True,
        status="passed",
        files=[final],
    )


def split_streams(
    total: dict[tuple[str, str], dict[str, int]], days: int
) -> list[dict[tuple[str, str], dict[str, int]]]:
    """Spread each track's month streams over ``days`` periods (deterministically)."""
    periods: list[dict[tuple[str, str], dict[str, int]]] = [defaultdict(dict) for _ in range(days)]
    for market, tracks in total.items():
        for track_id, count in tracks.items():
            for day in range(days):
                share = count // days + (1 if day < count % days else 0)
                if share:
                    periods[day][market][track_id] = share
    return periods


# --- the rule against the reference --------------------------------------------------

MARKETS = [("SE", "premium"), ("SE", "free"), ("US", "premium"), ("DE", "free")]


@st.composite
def months(draw: st.DrawFn) -> tuple[dict, dict, dict]:
    track_count = draw(st.integers(1, 12))
    holder_pool = [f"RH{n:02d}" for n in range(6)]
    splits: dict[str, dict[str, int]] = {}
    for n in range(track_count):
        holders = draw(st.lists(st.sampled_from(holder_pool), min_size=1, max_size=4, unique=True))
        cuts = sorted(
            draw(
                st.lists(
                    st.integers(1, 9_999), min_size=len(holders) - 1, max_size=len(holders) - 1, unique=True
                )
            )
        )
        edges = [0, *cuts, 10_000]
        splits[f"T{n:03d}"] = {h: edges[i + 1] - edges[i] for i, h in enumerate(sorted(holders))}
    tracks = [*splits, "X-UNKNOWN-1", "X-UNKNOWN-2"]
    streams: dict[tuple[str, str], dict[str, int]] = {}
    pools: dict[tuple[str, str], int] = {}
    for market in MARKETS:
        chosen = draw(st.lists(st.sampled_from(tracks), max_size=8, unique=True))
        streams[market] = {t: draw(st.integers(1, 5_000)) for t in chosen}
        pools[market] = draw(st.one_of(st.integers(0, 50), st.integers(0, 10**13)))
    return pools, streams, splits


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(months())
def test_close_equals_the_independent_reference(month: tuple[dict, dict, dict]) -> None:
    pools, streams, splits = month
    with tempfile.TemporaryDirectory() as temp:
        data = Path(temp)
        catalog = write_catalog(data / "catalog", splits)
        for day, period_streams in enumerate(split_streams(streams, 3)):
            write_final_ledger(data, MONTH_START + dt.timedelta(days=day), period_streams, splits)
        result = close_month(
            data,
            MONTH,
            write_revenue(data / "revenue.csv", pools),
            catalog_dir=catalog,
            provisional=True,
            period_seconds=DAY,
        )
    got: dict[tuple[str, str, str, str], int] = defaultdict(int)
    for line in result.lines:
        got[(line.rights_holder_id, line.track_id, line.territory, line.product)] += line.amount_micros
    assert dict(got) == reference_close(pools, streams, splits)
    assert result.total_micros == sum(pools.values())


def test_a_tie_goes_to_the_smaller_track_id(tmp_path: Path) -> None:
    splits = {"T1": {"RH1": 10_000}, "T2": {"RH1": 10_000}, "T3": {"RH2": 10_000}}
    catalog = write_catalog(tmp_path / "catalog", splits)
    write_final_ledger(tmp_path, MONTH_START, {("SE", "premium"): {"T3": 1, "T2": 1, "T1": 1}}, splits)
    result = close_month(
        tmp_path,
        MONTH,
        write_revenue(tmp_path / "revenue.csv", {("SE", "premium"): 5}),
        catalog_dir=catalog,
        provisional=True,
        period_seconds=DAY,
    )
    assert {line.track_id: line.amount_micros for line in result.lines} == {"T1": 2, "T2": 2, "T3": 1}


def test_unmatched_goes_to_suspense_and_an_empty_market_is_unallocated(tmp_path: Path) -> None:
    splits = {"T1": {"RH1": 5_000, "RH2": 5_000}}
    catalog = write_catalog(tmp_path / "catalog", splits)
    write_final_ledger(tmp_path, MONTH_START, {("SE", "premium"): {"T1": 3, "GHOST": 1}}, splits)
    result = close_month(
        tmp_path,
        MONTH,
        write_revenue(tmp_path / "revenue.csv", {("SE", "premium"): 1_000_001, ("US", "free"): 7}),
        catalog_dir=catalog,
        provisional=True,
        period_seconds=DAY,
    )
    lines = {
        (line.rights_holder_id, line.track_id, line.territory): line.amount_micros for line in result.lines
    }
    # T1 gets 750,000.75 -> 750,001 (largest remainder), GHOST 250,000.25 -> 250,000.
    assert lines == {
        ("RH1", "T1", "SE"): 375_001,
        ("RH2", "T1", "SE"): 375_000,
        ("UNMATCHED", "GHOST", "SE"): 250_000,
        ("UNALLOCATED", "", "US"): 7,
    }


def test_streams_without_a_pool_are_refused_naming_the_market(tmp_path: Path) -> None:
    splits = {"T1": {"RH1": 10_000}}
    catalog = write_catalog(tmp_path / "catalog", splits)
    write_final_ledger(
        tmp_path, MONTH_START, {("SE", "premium"): {"T1": 3}, ("NO", "free"): {"T1": 2}}, splits
    )
    with pytest.raises(CloseRefused, match="market NO free: 2 streams but no pool"):
        close_month(
            tmp_path,
            MONTH,
            write_revenue(tmp_path / "revenue.csv", {("SE", "premium"): 10}),
            catalog_dir=catalog,
            provisional=True,
            period_seconds=DAY,
        )


def test_eligibility_leaves_small_tracks_out_of_the_denominator(tmp_path: Path) -> None:
    splits = {"BIG": {"RH1": 10_000}, "SMALL": {"RH2": 10_000}}
    catalog = write_catalog(tmp_path / "catalog", splits)
    # SMALL has 900 streams this month and 50 in October: 950 < 1,000 over 12 months.
    write_final_ledger(tmp_path, MONTH_START, {("SE", "premium"): {"BIG": 3_000, "SMALL": 900}}, splits)
    write_final_ledger(
        tmp_path, MONTH_START - dt.timedelta(days=20), {("SE", "premium"): {"SMALL": 50}}, splits
    )
    revenue = write_revenue(tmp_path / "revenue.csv", {("SE", "premium"): 1_000})
    common = {"catalog_dir": catalog, "provisional": True, "period_seconds": DAY}
    ineligible = close_month(tmp_path, MONTH, revenue, min_annual_streams=1_000, **common)  # type: ignore[arg-type]
    assert {line.track_id: line.amount_micros for line in ineligible.lines} == {"BIG": 1_000}
    # The October file tips SMALL over a threshold of 950.
    eligible = close_month(tmp_path, MONTH, revenue, min_annual_streams=950, **common)  # type: ignore[arg-type]
    assert {line.track_id: line.amount_micros for line in eligible.lines} == {"BIG": 769, "SMALL": 231}
    # The October file decided eligibility, so it is an input of the close.
    _, files, _ = compute_close(
        tmp_path, MONTH, revenue, catalog=Catalog.load(catalog), provisional=True, min_annual_streams=950,
        period_seconds=DAY,
    )  # fmt: skip
    assert final_ledger_file(tmp_path, MONTH_START - dt.timedelta(days=20)) in files


# --- gates and versions --------------------------------------------------------------

SPLITS = {"T1": {"RH1": 7_000, "RH2": 3_000}, "T2": {"RH2": 10_000}}


def final_month(data: Path) -> tuple[Path, Path]:
    catalog = write_catalog(data / "catalog", SPLITS)
    for day in range(30):
        start = MONTH_START + dt.timedelta(days=day)
        final = write_final_ledger(data, start, {("SE", "premium"): {"T1": 2 + day % 3, "T2": 1}}, SPLITS)
        make_period_final(data, start, final)
    return catalog, write_revenue(data / "revenue.csv", {("SE", "premium"): 123_456_789})


def test_close_refuses_naming_each_period_and_what_it_lacks(tmp_path: Path) -> None:
    catalog, revenue = final_month(tmp_path)
    day = dt.timedelta(days=1)
    final_ledger_file(tmp_path, MONTH_START + 2 * day).unlink()
    (tmp_path / ARCHIVE_DIR / "hour=20261104T050000Z" / CLOSED_MARKER).unlink()
    record_verdict(
        tmp_path,
        "reconcile",
        scope={"period_start": (MONTH_START + 4 * day).isoformat()},
        passed=False,
        status="unbalanced",
        files=[final_ledger_file(tmp_path, MONTH_START + 4 * day)],
        recorded_at=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5),
    )
    # A period recomputed after its validation: the verdict no longer covers the file.
    rewritten = MONTH_START + 6 * day
    write_final_ledger(tmp_path, rewritten, {("SE", "premium"): {"T1": 99}}, SPLITS)
    with pytest.raises(CloseRefused) as refused:
        close_month(tmp_path, MONTH, revenue, catalog_dir=catalog, period_seconds=DAY)
    reasons = refused.value.reasons
    assert any("2026-11-03T00:00:00+00:00: no final ledger" in reason for reason in reasons)
    assert any(
        "2026-11-04T00:00:00+00:00: archive hour(s) not closed: hour=20261104T050000Z" in r for r in reasons
    )
    assert any("2026-11-05T00:00:00+00:00: reconcile verdict is unbalanced" in reason for reason in reasons)
    assert any("2026-11-07T00:00:00+00:00: reconcile verdict is stale" in reason for reason in reasons)
    assert any("2026-11-07T00:00:00+00:00: validate verdict does not cover" in reason for reason in reasons)
    assert len(reasons) == 5
    assert not (tmp_path / "closes").exists()


def test_provisional_computes_without_gates_and_writes_nothing(tmp_path: Path) -> None:
    catalog, revenue = final_month(tmp_path)
    final_ledger_file(tmp_path, MONTH_START).unlink()
    result = close_month(tmp_path, MONTH, revenue, catalog_dir=catalog, provisional=True, period_seconds=DAY)
    assert result.provisional and result.version is None
    assert result.total_micros == 123_456_789
    assert not (tmp_path / "closes").exists()


def test_close_is_frozen_a_same_close_is_a_no_op_and_a_changed_one_adjusts(tmp_path: Path) -> None:
    catalog, revenue = final_month(tmp_path)
    first = close_month(tmp_path, MONTH, revenue, catalog_dir=catalog, period_seconds=DAY)
    assert first.version == 1 and first.path == tmp_path.resolve() / "closes" / "month=2026-11" / "v1"
    manifest = json.loads((first.path / "manifest.json").read_text())
    roles = {item["role"] for item in manifest["inputs"]}
    assert roles == {"final_ledger", "catalog", "revenue"}
    assert len(manifest["verdicts"]) == 60 and manifest["code_version"]
    v1_bytes = (first.path / "lines.parquet").read_bytes()

    again = close_month(tmp_path, MONTH, revenue, catalog_dir=catalog, period_seconds=DAY)
    assert again.unchanged and again.version == 1
    assert sorted(p.name for p in (tmp_path / "closes" / "month=2026-11").iterdir()) == ["v1"]

    write_revenue(revenue, {("SE", "premium"): 123_456_789 + 1_000})
    second = close_month(tmp_path, MONTH, revenue, catalog_dir=catalog, period_seconds=DAY)
    assert second.version == 2 and second.adjustments > 0
    assert (first.path / "lines.parquet").read_bytes() == v1_bytes

    connection = open_ledger(tmp_path)
    adjustments = connection.sql(
        "SELECT CAST(sum(amount_micros) AS BIGINT) FROM closes WHERE version = 2"
    ).fetchall()
    assert adjustments == [(1_000,)]
    current = connection.sql(
        "SELECT version, rights_holder_id, CAST(sum(amount_micros) AS BIGINT) "
        "FROM close_current GROUP BY ALL ORDER BY 2"
    ).fetchall()
    expected: dict[str, int] = defaultdict(int)
    for line in second.lines:
        expected[line.rights_holder_id] += line.amount_micros
    assert current == [(2, holder, amount) for holder, amount in sorted(expected.items())]
    assert sum(amount for _, _, amount in current) == 123_457_789
    names = connection.sql("SELECT rights_holder_id, name, role FROM rights_holders ORDER BY 1").fetchall()
    assert names == [("RH1", "RH1", "label"), ("RH2", "RH2", "label")]


def test_the_catalog_loads_for_the_test_months(tmp_path: Path) -> None:
    Catalog.load(write_catalog(tmp_path / "catalog", SPLITS))


def test_the_command_closes_then_says_nothing_changed_and_refuses_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipelines.local.cli import main

    catalog, revenue = final_month(tmp_path)
    argv = ["ledger", "close", "--data-dir", str(tmp_path), "--month", MONTH, "--revenue", str(revenue)]
    argv += ["--catalog-dir", str(catalog), "--period-seconds", str(DAY)]
    assert main(argv) == 0
    assert "closed 2026-11 as v1" in capsys.readouterr().out
    assert main(argv) == 0
    assert "already closed as v1 with the same inputs: nothing written" in capsys.readouterr().out
    assert main([*argv, "--provisional"]) == 0
    assert "PROVISIONAL" in capsys.readouterr().out
    final_ledger_file(tmp_path, MONTH_START).unlink()
    assert main(argv) == 2
    assert "period 2026-11-01T00:00:00+00:00: no final ledger" in capsys.readouterr().err


def test_a_version_without_adjustments_is_still_the_current_one(tmp_path: Path) -> None:
    from ledger.finance.database import write_database

    catalog, revenue = final_month(tmp_path)
    close_month(tmp_path, MONTH, revenue, catalog_dir=catalog, period_seconds=DAY)
    # A title fixed in the catalog: a changed input, the same money.
    tracks = catalog / "tracks.csv"
    tracks.write_text(tracks.read_text().replace("T1,T1,", "T1,Renamed,"))
    second = close_month(tmp_path, MONTH, revenue, catalog_dir=catalog, period_seconds=DAY)
    assert second.version == 2 and second.adjustments == 0
    query = "SELECT DISTINCT version FROM close_current"
    assert open_ledger(tmp_path).execute(query).fetchall() == [(2,)]
    import duckdb

    with duckdb.connect(str(write_database(tmp_path)), read_only=True) as connection:
        assert connection.execute(query).fetchall() == [(2,)]
