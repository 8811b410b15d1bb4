"""DuckDB views over the Parquet ledger, for analysts and auditors.

``open_ledger(data_dir)`` returns an in-memory DuckDB connection with these views:

- ``ledger``: every delta row the pipeline appended (contract columns, plus ``amount``
  as DECIMAL(38,6), the pane that wrote it and when). Balances are sums.
- ``balances``: per period, rights holder and currency: plays, streams, amount.
- ``dead_letters``: what the pipeline could not decode or validate, with the reason.

Before the first file exists each view is empty rather than an error. The connection
is read-only in effect: it may read only the data directory's tables, and ``run_sql``
accepts only statements that read.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from ledger.tables import DEAD_LETTER_SCHEMA, DEAD_LETTERS_DIR, LEDGER_DIR, LEDGER_SCHEMA

__all__ = ["QueryResult", "ReadOnlyQueryError", "open_ledger", "run_sql"]

_READ_STATEMENTS = {duckdb.StatementType.SELECT}


class ReadOnlyQueryError(ValueError):
    """A statement that would change something, refused by ``run_sql``."""


def _table_source(
    connection: duckdb.DuckDBPyConnection, directory: Path, empty_name: str, schema: pa.Schema
) -> tuple[str, list[str]]:
    """SQL for one table's files as they are now, and the files it reads."""
    files = [path.as_posix() for path in sorted(directory.glob("*/*.parquet"))]
    if files:
        listed = ", ".join("'" + path.replace("'", "''") + "'" for path in files)
        return f"read_parquet([{listed}], hive_partitioning = false, union_by_name = true)", files
    # A glob that matches nothing is an error in DuckDB: an empty table of the same shape instead.
    connection.register(empty_name, schema.empty_table())
    return empty_name, []


def open_ledger(data_dir: Path | str) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the ``ledger``, ``balances`` and ``dead_letters`` views."""
    data = Path(data_dir).resolve()
    connection = duckdb.connect(":memory:")
    ledger_source, ledger_files = _table_source(connection, data / LEDGER_DIR, "_ledger_empty", LEDGER_SCHEMA)
    dead_source, dead_files = _table_source(
        connection, data / DEAD_LETTERS_DIR, "_dead_letters_empty", DEAD_LETTER_SCHEMA
    )
    connection.execute(
        f"""
        CREATE VIEW ledger AS
        SELECT period_start, period_end, rights_holder_id, track_id, territory, product,
               plays, streams, amount_micros,
               CAST(CAST(amount_micros AS DECIMAL(38, 0)) * CAST(0.000001 AS DECIMAL(38, 6))
                    AS DECIMAL(38, 6)) AS amount,
               currency, pane_timing, written_at
        FROM {ledger_source}
        """
    )
    connection.execute(
        """
        CREATE VIEW balances AS
        SELECT period_start, rights_holder_id, currency,
               CAST(sum(plays) AS BIGINT) AS plays,
               CAST(sum(streams) AS BIGINT) AS streams,
               CAST(sum(amount_micros) AS BIGINT) AS amount_micros,
               CAST(sum(amount) AS DECIMAL(38, 6)) AS amount
        FROM ledger
        GROUP BY ALL
        """
    )
    connection.execute(f"CREATE VIEW dead_letters AS SELECT * FROM {dead_source}")
    # Only the files the views were made of may be opened, and no new path can be written.
    connection.execute("SET allowed_paths = ?", [ledger_files + dead_files])
    connection.execute("SET enable_external_access = false")
    connection.execute("SET lock_configuration = true")
    return connection


class QueryResult:
    """Column names and rows of one query."""

    def __init__(self, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> None:
        self.columns = list(columns)
        self.rows = list(rows)


def _is_plain_explain(connection: duckdb.DuckDBPyConnection, query: str) -> bool:
    """EXPLAIN of a query that reads; EXPLAIN ANALYZE runs its statement, so it is not one."""
    words = query.strip().split(None, 2)
    if len(words) < 2 or words[0].upper() != "EXPLAIN" or words[1].upper() == "ANALYZE":
        return False
    inner = connection.extract_statements(query.strip()[len(words[0]) :])
    return len(inner) == 1 and inner[0].type in _READ_STATEMENTS


def run_sql(connection: duckdb.DuckDBPyConnection, sql: str) -> QueryResult:
    """Run read-only SQL (one or more statements); return the last statement's result."""
    statements = connection.extract_statements(sql)
    if not statements:
        raise ReadOnlyQueryError("no SQL statement given")
    for statement in statements:
        if statement.type not in _READ_STATEMENTS and not _is_plain_explain(connection, statement.query):
            raise ReadOnlyQueryError(
                f"only queries that read are allowed here, not {statement.type.name}: "
                f"{statement.query.strip()[:80]}"
            )
    relation = None
    for statement in statements:
        relation = connection.execute(statement.query)
    assert relation is not None
    columns = [column[0] for column in relation.description or []]
    return QueryResult(columns, relation.fetchall())
