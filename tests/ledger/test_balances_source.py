"""``balances`` and ``plays`` show each period from its final ledger where one exists, else provisional."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ledger.tables import FINAL_LEDGER_DIR, LEDGER_DIR, LEDGER_SCHEMA, partition_name
from ledger.views import open_ledger, run_sql

FIRST = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
SECOND = FIRST + dt.timedelta(hours=1)


def write(data_dir: Path, table: str, start: dt.datetime, rows: list[tuple[str, str, int, int]]) -> None:
    """Rows ``(rights holder, track, plays, amount_micros)`` as one file of ``table``'s period folder."""
    folder = data_dir / table / partition_name("period", start)
    folder.mkdir(parents=True, exist_ok=True)
    records = [
        {
            "period_start": start,
            "period_end": start + dt.timedelta(hours=1),
            "rights_holder_id": holder,
            "track_id": track,
            "territory": "SE",
            "product": "premium",
            "plays": plays,
            "streams": plays,
            "amount_micros": micros,
            "currency": "USD",
            "pane_timing": "ON_TIME",
            "written_at": start,
        }
        for holder, track, plays, micros in rows
    ]
    pq.write_table(
        pa.Table.from_pylist(records, schema=LEDGER_SCHEMA),
        folder / f"part-{len(list(folder.iterdir()))}.parquet",
    )


def balances(data_dir: Path) -> list[tuple[object, ...]]:
    sql = "SELECT period_start, rights_holder_id, plays, amount_micros, source FROM balances ORDER BY 1, 2"
    return run_sql(open_ledger(data_dir), sql).rows


def test_a_final_period_replaces_its_provisional_rows_and_says_so(tmp_path: Path) -> None:
    # The streaming ledger counted a restart's copies again in the first period: 5 plays, not 3.
    write(tmp_path, LEDGER_DIR, FIRST, [("RH_A", "T1", 5, 500)])
    write(tmp_path, LEDGER_DIR, SECOND, [("RH_A", "T1", 2, 200)])
    assert balances(tmp_path) == [
        (FIRST, "RH_A", 5, 500, "PROVISIONAL"),
        (SECOND, "RH_A", 2, 200, "PROVISIONAL"),
    ]
    write(tmp_path, FINAL_LEDGER_DIR, FIRST, [("RH_A", "T1", 3, 300)])
    assert balances(tmp_path) == [
        (FIRST, "RH_A", 3, 300, "FINAL"),
        (SECOND, "RH_A", 2, 200, "PROVISIONAL"),
    ]


def test_a_recompute_that_counted_nothing_shows_a_final_zero(tmp_path: Path) -> None:
    write(tmp_path, LEDGER_DIR, FIRST, [("RH_A", "T1", 4, 400)])
    write(tmp_path, FINAL_LEDGER_DIR, FIRST, [])  # recomputed: nothing in the period counts
    assert balances(tmp_path) == []
    connection = open_ledger(tmp_path)
    assert run_sql(connection, "SELECT count(*) FROM ledger").rows == [(1,)]  # still there, not shown


def test_plays_counts_each_play_once_not_once_per_rights_holder(tmp_path: Path) -> None:
    # T1 has two holders (3 plays each in the rows), T2 one; the provisional pane comes in two deltas.
    write(
        tmp_path, LEDGER_DIR, FIRST, [("RH_A", "T1", 2, 200), ("RH_B", "T1", 2, 100), ("RH_A", "T2", 1, 10)]
    )
    write(tmp_path, LEDGER_DIR, FIRST, [("RH_A", "T1", 1, 100), ("RH_B", "T1", 1, 50)])
    connection = open_ledger(tmp_path)
    assert run_sql(connection, "SELECT sum(plays) FROM ledger").rows == [(7,)]  # plays times holders
    assert run_sql(connection, "SELECT track_id, plays, streams, source FROM plays ORDER BY 1").rows == [
        ("T1", 3, 3, "PROVISIONAL"),
        ("T2", 1, 1, "PROVISIONAL"),
    ]
    write(tmp_path, FINAL_LEDGER_DIR, FIRST, [("RH_A", "T1", 2, 200), ("RH_B", "T1", 2, 100)])
    assert run_sql(open_ledger(tmp_path), "SELECT track_id, plays, source FROM plays").rows == [
        ("T1", 2, "FINAL")
    ]
