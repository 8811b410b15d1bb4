"""The .duckdb file: the same views, empty before any file, and seeing files added after it was written."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
from test_finance_close import DAY, MONTH, MONTH_START, final_month, write_final_ledger

from ledger.finance.close import close_month
from ledger.finance.database import VIEWS, write_database
from ledger.views import open_ledger


def test_an_empty_data_dir_gives_empty_typed_views(tmp_path: Path) -> None:
    path = write_database(tmp_path)
    assert path == tmp_path.resolve() / "playledger.duckdb"
    with duckdb.connect(str(path), read_only=True) as connection:
        for view in VIEWS:
            connection.execute(f"SELECT * FROM {view}").fetchall()
        assert connection.execute("SELECT count(*) FROM ledger").fetchall() == [(0,)]
        names = [row[0] for row in connection.execute("DESCRIBE closes").fetchall()]
        assert names[:4] == ["month", "version", "kind", "rights_holder_id"]


def test_the_file_agrees_with_ledger_sql_and_sees_later_files(tmp_path: Path) -> None:
    catalog, revenue = final_month(tmp_path)
    close_month(tmp_path, MONTH, revenue, catalog_dir=catalog, period_seconds=DAY)
    path = write_database(tmp_path, tmp_path / "out" / "finance.duckdb")
    query = (
        "SELECT rights_holder_id, CAST(sum(amount_micros) AS BIGINT) FROM close_current GROUP BY 1 ORDER BY 1"
    )
    expected = open_ledger(tmp_path).execute(query).fetchall()
    with duckdb.connect(str(path), read_only=True) as connection:
        assert connection.execute(query).fetchall() == expected
        assert connection.execute("SELECT count(*) FROM rights_holders").fetchall() == [(2,)]
        before = connection.execute("SELECT count(*) FROM ledger_final").fetchall()[0][0]
    write_final_ledger(
        tmp_path, MONTH_START + dt.timedelta(days=40), {("SE", "free"): {"T1": 1}}, {"T1": {"RH1": 10_000}}
    )
    with duckdb.connect(str(path), read_only=True) as connection:
        assert connection.execute("SELECT count(*) FROM ledger_final").fetchall() == [(before + 1,)]
