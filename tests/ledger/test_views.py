"""The DuckDB views: typed and empty before any file, exact over files, and read-only."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ledger.tables import LEDGER_SCHEMA
from ledger.views import ReadOnlyQueryError, open_ledger, run_sql

PERIOD = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def write_ledger_file(data_dir: Path, name: str, rows: list[tuple[str, int, int, int]]) -> None:
    folder = data_dir / "ledger" / "period=20261101T000000Z"
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(
        [
            {
                "period_start": PERIOD,
                "period_end": PERIOD + dt.timedelta(hours=1),
                "rights_holder_id": holder,
                "track_id": "T1",
                "territory": "SE",
                "product": "premium",
                "plays": plays,
                "streams": streams,
                "amount_micros": micros,
                "currency": "USD",
                "pane_timing": "EARLY",
                "written_at": PERIOD,
            }
            for holder, plays, streams, micros in rows
        ],
        schema=LEDGER_SCHEMA,
    )
    pq.write_table(table, folder / name)


def test_views_exist_and_are_empty_before_the_first_file(tmp_path: Path) -> None:
    connection = open_ledger(tmp_path)
    for view in ("ledger", "balances", "dead_letters", "receipts"):
        assert run_sql(connection, f"SELECT count(*) FROM {view}").rows == [(0,)]
    types = dict((row[0], row[1]) for row in run_sql(connection, "DESCRIBE ledger").rows)
    assert types["amount_micros"] == "BIGINT"
    assert types["amount"] == "DECIMAL(38,6)"


def test_balances_are_exact_sums_of_delta_rows(tmp_path: Path) -> None:
    # 2^53 + 1 micro-units: a float would lose the last unit.
    big = 2**53 + 1
    write_ledger_file(tmp_path, "part-a.parquet", [("RH_A", 2, 1, big), ("RH_B", 1, 1, 333)])
    write_ledger_file(tmp_path, "part-b.parquet", [("RH_A", 1, 1, 1)])  # a later pane: a delta
    result = run_sql(
        open_ledger(tmp_path),
        "SELECT rights_holder_id, plays, streams, amount_micros, amount FROM balances ORDER BY 1",
    )
    assert result.columns == ["rights_holder_id", "plays", "streams", "amount_micros", "amount"]
    assert result.rows == [
        ("RH_A", 3, 2, big + 1, Decimal(big + 1).scaleb(-6)),
        ("RH_B", 1, 1, 333, Decimal("0.000333")),
    ]


@pytest.mark.parametrize(
    "statement",
    [
        "CREATE TABLE t AS SELECT 1 AS x",
        "COPY ledger TO '{dir}/ledger/period=20261101T000000Z/injected.parquet'",
        "EXPLAIN ANALYZE COPY ledger TO '{dir}/ledger/period=20261101T000000Z/injected.parquet'",
        "SELECT 1; DROP VIEW ledger",
        "ATTACH '{dir}/other.duckdb'",
        "",
    ],
)
def test_statements_that_write_are_refused(tmp_path: Path, statement: str) -> None:
    write_ledger_file(tmp_path, "part-a.parquet", [("RH_A", 1, 1, 10)])
    connection = open_ledger(tmp_path)
    with pytest.raises(ReadOnlyQueryError):
        run_sql(connection, statement.format(dir=tmp_path))
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["part-a.parquet"]
    assert run_sql(connection, "EXPLAIN SELECT * FROM ledger").rows  # a plain EXPLAIN still works


def test_nothing_outside_the_tables_can_be_read(tmp_path: Path) -> None:
    secret = tmp_path / "secret.csv"
    secret.write_text("a\n1\n")
    with pytest.raises(duckdb.PermissionException):
        run_sql(open_ledger(tmp_path / "data"), f"SELECT * FROM read_csv('{secret}')")
