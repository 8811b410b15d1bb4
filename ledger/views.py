"""DuckDB views over the Parquet ledger, for analysts and auditors.

``open_ledger(data_dir)`` returns an in-memory DuckDB connection with these views:

- ``ledger``: every delta row the pipeline appended (contract columns, plus ``amount``
  as DECIMAL(38,6), the pane that wrote it and when). Balances are sums.
- ``ledger_final``: the batch recompute's final rows per period (``playledger pipeline
  batch``), same columns; the streaming ``ledger`` is provisional until then.
  In both, ``plays`` is plays times rights holders: every holder of a track gets a row
  counting the track's plays, so ``sum(plays)`` over holders counts a play once per holder.
- ``balances``: per period, rights holder and currency: plays, streams, amount, and
  ``source``: ``FINAL`` where the period has a final ledger (a recompute that counted
  nothing leaves an empty one: recomputed, zero), ``PROVISIONAL`` (the streaming
  ``ledger``) otherwise. A period is never shown from both.
- ``plays``: per period and track, from the same source as ``balances``: ``plays`` and
  ``streams`` each play counted once (not once per rights holder), and ``source``.
- ``counters``: elements per pipeline branch per period (``events_decoded``,
  ``events_unique``, ``events_duplicate``, ``events_conflict``, ``events_invalid``,
  ``messages_undecodable``; ``plays_qualified``, ``plays_unmatched``, ``plays_late``,
  ``ledger_rows_written``), delta rows like the ledger: sum them per period to balance
  ``decoded = unique + duplicate``. ``source`` says whose: ``PROVISIONAL`` (the
  streaming pipeline's) or ``FINAL`` (a recompute's, replaced with its final ledger:
  ``events_decoded`` there is the usable archived rows received in the period,
  ``events_invalid`` the damaged ones, ``ledger_final_rows_written``). Each source
  balances on its own: filter or group by it.
- ``dead_letters``: what could not be decoded, validated or counted, with the reason,
  and ``source`` as in ``counters``: the streaming pipeline's and the archiver's
  (``PROVISIONAL``), and a recompute's of its period (``FINAL``: archived rows whose id is
  no UUID, conflicting copies; the stream records its conflicts too, so a conflict
  appears once under each).
- ``receipts``: the gateway's receipt journal, one row per event it answered 200 for
  (``event_id``, ``batch_id``, ``received_at``, ``message_id``), from sealed Parquet hours
  and the hours still open. Reconcile the ledger against it.
- ``archive``: every play event the archiver wrote (``ARCHIVE_SCHEMA``: the event, its
  Pub/Sub envelope and its hour bucket), the record the batch recompute replays.

Before the first file exists each view is empty rather than an error. The connection
is read-only in effect: it may read only the data directory's tables, and ``run_sql``
accepts only statements that read.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from ledger.finance.views import register as register_finance_views
from ledger.receipts import open_receipt_files, sealed_receipt_files
from ledger.tables import (
    ARCHIVE_DIR,
    ARCHIVE_SCHEMA,
    COUNTERS_DIR,
    COUNTERS_SCHEMA,
    DEAD_LETTER_SCHEMA,
    DEAD_LETTERS_DIR,
    FINAL_COUNTERS_DIR,
    FINAL_DEAD_LETTERS_DIR,
    FINAL_LEDGER_DIR,
    LEDGER_DIR,
    LEDGER_SCHEMA,
    RECEIPT_SCHEMA,
)

__all__ = ["QueryResult", "ReadOnlyQueryError", "open_ledger", "run_sql", "view_names"]

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


def _sourced(
    connection: duckdb.DuckDBPyConnection, data: Path, table: str, final_table: str, schema: pa.Schema
) -> tuple[str, list[str]]:
    """A streaming table and its recompute counterpart as one, with a ``source`` column; and the files."""
    streamed, streamed_files = _table_source(connection, data / table, f"_{table}_empty", schema)
    final, final_files = _table_source(connection, data / final_table, f"_{final_table}_empty", schema)
    return (
        f"SELECT *, 'PROVISIONAL' AS source FROM {streamed} "
        f"UNION ALL BY NAME SELECT *, 'FINAL' AS source FROM {final}",
        streamed_files + final_files,
    )


def _sql_list(paths: Sequence[Path]) -> str:
    return "[" + ", ".join("'" + path.as_posix().replace("'", "''") + "'" for path in paths) + "]"


def _receipts_source(connection: duckdb.DuckDBPyConnection, data: Path) -> tuple[str, list[str]]:
    """SQL for the receipt journal as it is now (sealed and open hours), and the files it reads."""
    sealed = sealed_receipt_files(data)
    still_open = open_receipt_files(data)
    columns = "event_id, batch_id, received_at, message_id"
    parts = []
    if sealed:
        parts.append(f"SELECT {columns} FROM read_parquet({_sql_list(sealed)}, hive_partitioning = false)")
    if still_open:
        # A gateway killed mid-write leaves a torn last line (never acknowledged): it reads as NULLs.
        parts.append(
            f"SELECT {columns} FROM read_json({_sql_list(still_open)}, format = 'newline_delimited', "
            "columns = {event_id: 'VARCHAR', batch_id: 'VARCHAR', received_at: 'TIMESTAMPTZ', "
            "message_id: 'VARCHAR'}, ignore_errors = true) "
            "WHERE event_id IS NOT NULL AND batch_id IS NOT NULL AND received_at IS NOT NULL "
            "AND message_id IS NOT NULL"
        )
    if not parts:
        connection.register("_receipts_empty", RECEIPT_SCHEMA.empty_table())
        return f"SELECT {columns} FROM _receipts_empty", []
    return " UNION ALL ".join(parts), [path.as_posix() for path in sealed + still_open]


def _final_periods(final_files: Sequence[str]) -> list[dt.datetime]:
    """The period starts of the final ledger's files, from their ``period=`` folder names."""
    starts = set()
    for path in final_files:
        folder = Path(path).parent.name
        starts.add(
            dt.datetime.strptime(folder.removeprefix("period="), "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
        )
    return sorted(starts)


def open_ledger(data_dir: Path | str) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the views ``ledger``, ``ledger_final``, ``balances``,
    ``plays``, ``counters``, ``dead_letters``, ``receipts`` and ``archive``.

    The views are made of the files present when it is called: open it again to see later ones.
    """
    data = Path(data_dir).resolve()
    connection = duckdb.connect(":memory:")
    ledger_source, ledger_files = _table_source(connection, data / LEDGER_DIR, "_ledger_empty", LEDGER_SCHEMA)
    dead_source, dead_files = _sourced(
        connection, data, DEAD_LETTERS_DIR, FINAL_DEAD_LETTERS_DIR, DEAD_LETTER_SCHEMA
    )
    final_source, final_files = _table_source(
        connection, data / FINAL_LEDGER_DIR, "_ledger_final_empty", LEDGER_SCHEMA
    )
    for view, source in (("ledger", ledger_source), ("ledger_final", final_source)):
        connection.execute(
            f"""
            CREATE VIEW {view} AS
            SELECT period_start, period_end, rights_holder_id, track_id, territory, product,
                   plays, streams, amount_micros,
                   CAST(CAST(amount_micros AS DECIMAL(38, 0)) * CAST(0.000001 AS DECIMAL(38, 6))
                        AS DECIMAL(38, 6)) AS amount,
                   currency, pane_timing, written_at
            FROM {source}
            """
        )
    # A period is final once its folder holds the recompute's file, even one of no rows.
    connection.register(
        "_final_periods",
        pa.table({"period_start": pa.array(_final_periods(final_files), pa.timestamp("us", tz="UTC"))}),
    )
    connection.execute(
        """
        CREATE VIEW _ledger_current AS
        SELECT *, 'FINAL' AS source FROM ledger_final
        UNION ALL BY NAME
        SELECT *, 'PROVISIONAL' AS source FROM ledger
        WHERE period_start NOT IN (SELECT period_start FROM _final_periods)
        """
    )
    connection.execute(
        """
        CREATE VIEW balances AS
        SELECT period_start, rights_holder_id, currency,
               CAST(sum(plays) AS BIGINT) AS plays,
               CAST(sum(streams) AS BIGINT) AS streams,
               CAST(sum(amount_micros) AS BIGINT) AS amount_micros,
               CAST(sum(amount) AS DECIMAL(38, 6)) AS amount,
               source
        FROM _ledger_current
        GROUP BY ALL
        """
    )
    connection.execute(
        """
        CREATE VIEW plays AS
        SELECT period_start, track_id,
               CAST(max(plays) AS BIGINT) AS plays,
               CAST(max(streams) AS BIGINT) AS streams,
               source
        FROM (
            SELECT period_start, track_id, rights_holder_id, source,
                   sum(plays) AS plays, sum(streams) AS streams
            FROM _ledger_current
            GROUP BY ALL
        )
        GROUP BY period_start, track_id, source
        """
    )
    connection.execute(f"CREATE VIEW dead_letters AS {dead_source}")
    receipts_source, receipt_files = _receipts_source(connection, data)
    connection.execute(f"CREATE VIEW receipts AS {receipts_source}")
    archive_source, archive_files = _table_source(
        connection, data / ARCHIVE_DIR, "_archive_empty", ARCHIVE_SCHEMA
    )
    connection.execute(f"CREATE VIEW archive AS SELECT * FROM {archive_source}")
    # Only the files the views were made of may be opened, and no new path can be written.
    counters_source, counter_files = _sourced(
        connection, data, COUNTERS_DIR, FINAL_COUNTERS_DIR, COUNTERS_SCHEMA
    )
    connection.execute(f"CREATE VIEW counters AS {counters_source}")
    readable = ledger_files + final_files + dead_files + receipt_files + archive_files + counter_files
    readable += register_finance_views(connection, data)
    connection.execute("SET allowed_paths = ?", [readable])
    connection.execute("SET enable_external_access = false")
    connection.execute("SET lock_configuration = true")
    return connection


def view_names(data_dir: Path | str) -> list[str]:
    """The views ``open_ledger`` gives over ``data_dir`` (the finance and catalog views included)."""
    rows = open_ledger(data_dir).execute(
        "SELECT view_name FROM duckdb_views() WHERE NOT internal AND NOT starts_with(view_name, '_') "
        "ORDER BY view_name"
    )
    return [row[0] for row in rows.fetchall()]


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
