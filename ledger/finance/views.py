"""DuckDB views of the month closes and of the catalog, registered into ``ledger.views.open_ledger``.

- ``closes``: every line of every close version (``v1`` the close, later versions the
  adjustments against the versions before), with ``month``, ``version``, ``kind``
  (``close``|``adjustment``), ``rights_holder_id`` (``UNMATCHED`` and ``UNALLOCATED``
  included), ``track_id``, ``territory``, ``product``, ``streams``, ``amount_micros``,
  ``amount`` (DECIMAL(38,6)) and ``currency``.
- ``close_current``: per month, what all its versions add up to, labelled with the
  latest version: the month's standing close.
- ``tracks``, ``rights_holders``, ``splits``, ``rates``: the catalog's CSVs (the one the
  data directory was closed with, else the fixtures catalog). Beware: ``ledger`` has
  one row per rights holder of a play, so ``sum(plays)`` over it counts a play once per
  rights holder; count a track's plays from one holder's rows, or divide by holder count.
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pyarrow as pa

from ledger.catalog import DEFAULT_CATALOG_DIR, RATES_FILE, RIGHTS_HOLDERS_FILE, SPLITS_FILE, TRACKS_FILE
from ledger.finance.close import CLOSE_LINES_SCHEMA, CLOSES_DIR, LINES_FILE, MANIFEST_FILE

__all__ = ["close_line_files", "closed_catalog_dir", "register"]

_CATALOG_VIEWS = {
    "tracks": (TRACKS_FILE, "* REPLACE (CAST(duration_ms AS BIGINT) AS duration_ms)"),
    "rights_holders": (RIGHTS_HOLDERS_FILE, "*"),
    "splits": (SPLITS_FILE, "* REPLACE (CAST(share_bps AS INTEGER) AS share_bps)"),
    "rates": (RATES_FILE, "* REPLACE (CAST(rate_micros AS BIGINT) AS rate_micros)"),
}


def _quoted(path: Path) -> str:
    return "'" + path.as_posix().replace("'", "''") + "'"


def close_line_files(data_dir: Path) -> list[Path]:
    """Every finished close version's lines file (a version without its manifest is not one)."""
    return [
        path
        for path in sorted((data_dir / CLOSES_DIR).glob(f"month=*/v*/{LINES_FILE}"))
        if (path.parent / MANIFEST_FILE).is_file()
    ]


def closed_catalog_dir(data_dir: Path) -> Path | None:
    """The catalog the latest close of the data directory was made with, if any."""
    manifests = sorted(
        (data_dir / CLOSES_DIR).glob(f"month=*/v*/{MANIFEST_FILE}"),
        key=lambda path: (
            path.parent.parent.name,
            int(path.parent.name[1:]) if path.parent.name[1:].isdigit() else 0,
        ),
    )
    for manifest in reversed(manifests):
        folder = json.loads(manifest.read_text()).get("catalog_dir")
        if folder and Path(folder).is_dir():
            return Path(folder)
    return None


def register(
    connection: duckdb.DuckDBPyConnection, data_dir: Path, catalog_dir: Path | None = None
) -> list[str]:
    """Create the close and catalog views on ``connection``; return the files they read."""
    files = close_line_files(data_dir)
    if files:
        source = f"read_parquet([{', '.join(map(_quoted, files))}], hive_partitioning = false)"
    else:
        connection.register("_closes_empty", pa.Table.from_pylist([], schema=CLOSE_LINES_SCHEMA))
        source = "_closes_empty"
    connection.execute(
        f"""
        CREATE VIEW closes AS
        SELECT month, version, CASE WHEN version = 1 THEN 'close' ELSE 'adjustment' END AS kind,
               rights_holder_id, track_id, territory, product, streams, amount_micros,
               CAST(CAST(amount_micros AS DECIMAL(38, 0)) * CAST(0.000001 AS DECIMAL(38, 6))
                    AS DECIMAL(38, 6)) AS amount,
               currency
        FROM {source}
        """
    )
    # From the folders, not the lines: a version whose adjustments are all zero has no line.
    versions = pa.table(
        {
            "month": pa.array(
                [path.parent.parent.name.removeprefix("month=") for path in files], pa.string()
            ),
            "version": pa.array([int(path.parent.name[1:]) for path in files], pa.int32()),
        }
    )
    connection.register("_close_versions", versions)
    connection.execute(
        """
        CREATE VIEW close_current AS
        SELECT month, latest.version, rights_holder_id, track_id, territory, product,
               CAST(sum(streams) AS BIGINT) AS streams,
               CAST(sum(amount_micros) AS BIGINT) AS amount_micros,
               CAST(sum(amount) AS DECIMAL(38, 6)) AS amount,
               currency
        FROM closes JOIN (SELECT month, max(version) AS version FROM _close_versions GROUP BY month) AS latest
             USING (month)
        GROUP BY month, latest.version, rights_holder_id, track_id, territory, product, currency
        HAVING sum(streams) <> 0 OR sum(amount_micros) <> 0
        """
    )
    catalog = (catalog_dir or closed_catalog_dir(data_dir) or DEFAULT_CATALOG_DIR).resolve()
    readable = [path.as_posix() for path in files]
    for view, (file_name, columns) in _CATALOG_VIEWS.items():
        path = catalog / file_name
        connection.execute(
            f"CREATE VIEW {view} AS SELECT {columns} FROM read_csv({_quoted(path)}, header = true, "
            "all_varchar = true)"
        )
        readable.append(path.as_posix())
    return readable
