"""``playledger ledger db --data-dir DIR [--out FILE]``: a DuckDB database file for analysts' tools.

The file (default ``DIR/playledger.duckdb``) holds the views of ``ledger sql`` (``ledger``,
``ledger_final``, ``balances``, ``counters``, ``dead_letters``, ``receipts``, ``archive``),
the closes (``closes``, ``close_current``) and the catalog (``tracks``, ``rights_holders``,
``splits``, ``rates``), as views over the data directory's folders by absolute glob, not
over a list of files: a file added later shows up in the next query, and a folder with no
file yet gives an empty view of the right columns (``allow_empty`` and a typed empty table
stored in the file) rather than DuckDB's "no files found" error. The ``duckdb`` CLI,
DBeaver or a notebook opens it as it is. ``receipts`` here reads the sealed hours only
(the open NDJSON hour is the gateway's working file).
"""

from __future__ import annotations

import os
from pathlib import Path

import duckdb
import pyarrow as pa

from ledger.catalog import DEFAULT_CATALOG_DIR
from ledger.finance.close import CLOSE_LINES_SCHEMA, CLOSES_DIR, LINES_FILE
from ledger.finance.views import closed_catalog_dir
from ledger.storage import fsync_dir, make_durable_dir
from ledger.tables import (
    ARCHIVE_DIR,
    ARCHIVE_SCHEMA,
    COUNTERS_DIR,
    COUNTERS_SCHEMA,
    DEAD_LETTER_SCHEMA,
    DEAD_LETTERS_DIR,
    FINAL_LEDGER_DIR,
    JOURNAL_DIR,
    LEDGER_DIR,
    LEDGER_SCHEMA,
    RECEIPT_SCHEMA,
)

__all__ = ["DATABASE_FILE", "VIEWS", "write_database"]

DATABASE_FILE = "playledger.duckdb"
_AMOUNT = "CAST(CAST(amount_micros AS DECIMAL(38, 0)) * CAST(0.000001 AS DECIMAL(38, 6)) AS DECIMAL(38, 6))"
_SOURCES: dict[str, tuple[str, pa.Schema]] = {
    "_ledger_files": (f"{LEDGER_DIR}/*/*.parquet", LEDGER_SCHEMA),
    "_ledger_final_files": (f"{FINAL_LEDGER_DIR}/*/*.parquet", LEDGER_SCHEMA),
    "_counters_files": (f"{COUNTERS_DIR}/*/*.parquet", COUNTERS_SCHEMA),
    "_dead_letters_files": (f"{DEAD_LETTERS_DIR}/*/*.parquet", DEAD_LETTER_SCHEMA),
    "_receipts_files": (f"{JOURNAL_DIR}/hour=*/*.parquet", RECEIPT_SCHEMA),
    "_archive_files": (f"{ARCHIVE_DIR}/*/*.parquet", ARCHIVE_SCHEMA),
    "_closes_files": (f"{CLOSES_DIR}/month=*/v*/{LINES_FILE}", CLOSE_LINES_SCHEMA),
}
VIEWS = (
    "ledger",
    "ledger_final",
    "balances",
    "counters",
    "dead_letters",
    "receipts",
    "archive",
    "closes",
    "close_current",
    "tracks",
    "rights_holders",
    "splits",
    "rates",
)


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def write_database(data_dir: Path | str, out_file: Path | str | None = None) -> Path:
    """Write the database file (replacing an earlier one whole); return its path."""
    data = Path(data_dir).resolve()
    target = Path(out_file).resolve() if out_file else data / DATABASE_FILE
    make_durable_dir(target.parent)
    temp = target.with_name(f".{target.name}.tmp")
    temp.unlink(missing_ok=True)
    catalog = (closed_catalog_dir(data) or DEFAULT_CATALOG_DIR).resolve()
    connection = duckdb.connect(str(temp))
    try:
        for source, (pattern, schema) in _SOURCES.items():
            empty = f"{source}_empty"
            connection.register("_arrow_empty", schema.empty_table())
            connection.execute(f"CREATE TABLE {empty} AS SELECT * FROM _arrow_empty")
            connection.unregister("_arrow_empty")
            columns = ", ".join(f'"{name}"' for name in schema.names)
            glob = _quoted((data / pattern).as_posix())
            connection.execute(
                f"""
                CREATE VIEW {source} AS SELECT {columns} FROM (
                    SELECT * FROM read_parquet({glob}, allow_empty = true, union_by_name = true,
                                               hive_partitioning = false)
                    UNION ALL BY NAME SELECT * FROM {empty}
                )
                """
            )
        ledger_columns = (
            "period_start, period_end, rights_holder_id, track_id, territory, product, plays, streams, "
            f"amount_micros, {_AMOUNT} AS amount, currency, pane_timing, written_at"
        )
        connection.execute(f"CREATE VIEW ledger AS SELECT {ledger_columns} FROM _ledger_files")
        connection.execute(f"CREATE VIEW ledger_final AS SELECT {ledger_columns} FROM _ledger_final_files")
        connection.execute(
            """
            CREATE VIEW balances AS
            SELECT period_start, rights_holder_id, currency,
                   CAST(sum(plays) AS BIGINT) AS plays, CAST(sum(streams) AS BIGINT) AS streams,
                   CAST(sum(amount_micros) AS BIGINT) AS amount_micros,
                   CAST(sum(amount) AS DECIMAL(38, 6)) AS amount
            FROM ledger GROUP BY ALL
            """
        )
        for view in ("counters", "dead_letters", "receipts", "archive"):
            connection.execute(f"CREATE VIEW {view} AS SELECT * FROM _{view}_files")
        connection.execute(
            f"""
            CREATE VIEW closes AS
            SELECT month, version, CASE WHEN version = 1 THEN 'close' ELSE 'adjustment' END AS kind,
                   rights_holder_id, track_id, territory, product, streams, amount_micros,
                   {_AMOUNT} AS amount, currency
            FROM _closes_files
            """
        )
        closes_glob = _quoted((data / _SOURCES["_closes_files"][0]).as_posix())
        connection.execute(
            f"""
            CREATE VIEW close_current AS
            SELECT month, latest.version, rights_holder_id, track_id, territory, product,
                   CAST(sum(streams) AS BIGINT) AS streams,
                   CAST(sum(amount_micros) AS BIGINT) AS amount_micros,
                   CAST(sum(amount) AS DECIMAL(38, 6)) AS amount, currency
            FROM closes JOIN (
                SELECT regexp_extract(file, 'month=([0-9-]+)/v([0-9]+)/', 1) AS month,
                       max(CAST(regexp_extract(file, 'month=([0-9-]+)/v([0-9]+)/', 2) AS INTEGER)) AS version
                FROM glob({closes_glob}) GROUP BY 1
            ) AS latest USING (month)
            GROUP BY month, latest.version, rights_holder_id, track_id, territory, product, currency
            HAVING sum(streams) <> 0 OR sum(amount_micros) <> 0
            """
        )
        catalog_views = {
            "tracks": ("tracks.csv", "* REPLACE (CAST(duration_ms AS BIGINT) AS duration_ms)"),
            "rights_holders": ("rights_holders.csv", "*"),
            "splits": ("splits.csv", "* REPLACE (CAST(share_bps AS INTEGER) AS share_bps)"),
            "rates": (
                "rates.csv",
                "* REPLACE (CAST(rate_micros AS BIGINT) AS rate_micros)",
            ),
        }
        for view, (file_name, columns) in catalog_views.items():
            path = _quoted((catalog / file_name).as_posix())
            connection.execute(
                f"CREATE VIEW {view} AS SELECT {columns} "
                f"FROM read_csv({path}, header = true, all_varchar = true)"
            )
        connection.execute("CHECKPOINT")
    finally:
        connection.close()
    os.replace(temp, target)
    Path(f"{temp}.wal").unlink(missing_ok=True)
    fsync_dir(target.parent)
    return target
