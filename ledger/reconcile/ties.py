"""The five ties of a period, computed in DuckDB over the stored files, in exact integers.

The reconciler shares no code with the pipelines: it takes the first copy of each
``lower(event_id)`` by ``(received_at, message_id)`` over the whole archive, reprices the
period's first copies from the catalog CSVs in plain SQL (rate for (territory, product),
else ('*', product); largest-remainder split, ties by ascending ``rights_holder_id``;
an unknown track whole to ``UNMATCHED``), and compares the result with ``ledger_final``
per rights holder, track, territory and product. Money stays BIGINT/HUGEINT micro-units.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from ledger.catalog import DEFAULT_CATALOG_DIR, RATES_FILE, SPLITS_FILE
from ledger.receipts import open_receipt_files, sealed_receipt_files
from ledger.tables import (
    ARCHIVE_DIR,
    ARCHIVE_SCHEMA,
    CLOSED_MARKER,
    COUNTERS_DIR,
    COUNTERS_SCHEMA,
    DEAD_LETTER_SCHEMA,
    DEAD_LETTERS_DIR,
    FINAL_LEDGER_DIR,
    LEDGER_DIR,
    LEDGER_SCHEMA,
    RECEIPT_SCHEMA,
    partition_name,
)

__all__ = ["PeriodReconciliation", "ReconcileInputError", "StoredRecord", "reconcile_periods"]

UNMATCHED = "UNMATCHED"
_HOUR = dt.timedelta(hours=1)


class ReconcileInputError(ValueError):
    """A stored file could not be read; the message names it."""


@dataclass
class StoredRecord:
    """The files a reconciliation reads, listed once, each checked readable."""

    data_dir: Path
    archive: list[Path]
    ledger_final: list[Path]
    ledger: list[Path]
    counters: list[Path]
    dead_letters: list[Path]
    receipts_sealed: list[Path]
    receipts_open: list[Path]
    closed_markers: dict[dt.datetime, Path]
    catalog: list[Path]

    @classmethod
    def of(cls, data_dir: Path, catalog_dir: Path) -> StoredRecord:
        data = data_dir.resolve()

        def parquet(folder: str) -> list[Path]:
            return sorted((data / folder).glob("*/*.parquet"))

        markers: dict[dt.datetime, Path] = {}
        for marker in sorted((data / ARCHIVE_DIR).glob(f"hour=*/{CLOSED_MARKER}")):
            hour = dt.datetime.strptime(marker.parent.name, "hour=%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
            markers[hour] = marker
        record = cls(
            data_dir=data,
            archive=parquet(ARCHIVE_DIR),
            ledger_final=parquet(FINAL_LEDGER_DIR),
            ledger=parquet(LEDGER_DIR),
            counters=parquet(COUNTERS_DIR),
            dead_letters=parquet(DEAD_LETTERS_DIR),
            receipts_sealed=sealed_receipt_files(data),
            receipts_open=open_receipt_files(data),
            closed_markers=markers,
            catalog=[catalog_dir.resolve() / SPLITS_FILE, catalog_dir.resolve() / RATES_FILE],
        )
        record.check_readable()
        return record

    def parquet_files(self) -> list[Path]:
        return [
            *self.archive,
            *self.ledger_final,
            *self.ledger,
            *self.counters,
            *self.dead_letters,
            *self.receipts_sealed,
        ]

    def check_readable(self) -> None:
        """``ReconcileInputError`` naming the first file that is no readable Parquet (or is missing)."""
        for path in self.parquet_files():
            try:
                pq.read_metadata(path)
            except (OSError, pa.ArrowException) as error:
                raise ReconcileInputError(f"{path}: not a readable Parquet file ({error})") from None
        for path in self.catalog:
            if not path.is_file():
                raise ReconcileInputError(f"{path}: catalog file is missing")
        for path in self.closed_markers.values():
            try:
                json.loads(path.read_text())
            except (OSError, ValueError) as error:
                raise ReconcileInputError(
                    f"{path}: not a readable {CLOSED_MARKER} manifest ({error})"
                ) from None

    def files_of_period(self, start: dt.datetime, end: dt.datetime) -> list[Path]:
        """Every file a period's reconciliation read (tables are read whole; markers of its hours)."""
        hours = [path for hour, path in self.closed_markers.items() if start <= hour < end]
        return sorted(
            {*self.parquet_files(), *self.receipts_open, *self.catalog, *hours},
        )


def _sql_list(paths: Sequence[Path]) -> str:
    return "[" + ", ".join("'" + path.as_posix().replace("'", "''") + "'" for path in paths) + "]"


def _view(connection: duckdb.DuckDBPyConnection, name: str, files: list[Path], schema: pa.Schema) -> None:
    if files:
        connection.execute(
            f"CREATE VIEW {name} AS SELECT * FROM read_parquet({_sql_list(files)}, "
            "hive_partitioning = false, union_by_name = true)"
        )
    else:
        connection.register(f"_{name}_empty", schema.empty_table())
        connection.execute(f"CREATE VIEW {name} AS SELECT * FROM _{name}_empty")


def _connect(record: StoredRecord, catalog_dir: Path) -> duckdb.DuckDBPyConnection:
    connection = duckdb.connect(":memory:")
    _view(connection, "archive", record.archive, ARCHIVE_SCHEMA)
    _view(connection, "ledger_final", record.ledger_final, LEDGER_SCHEMA)
    _view(connection, "ledger", record.ledger, LEDGER_SCHEMA)
    _view(connection, "counters", record.counters, COUNTERS_SCHEMA)
    _view(connection, "dead_letters", record.dead_letters, DEAD_LETTER_SCHEMA)
    columns = "event_id, batch_id, received_at, message_id"
    parts = []
    if record.receipts_sealed:
        parts.append(
            f"SELECT {columns} FROM read_parquet({_sql_list(record.receipts_sealed)}, "
            "hive_partitioning = false)"
        )
    if record.receipts_open:
        # A torn last line of a gateway killed mid-write was never answered 200: it reads as NULLs.
        parts.append(
            f"SELECT {columns} FROM read_json({_sql_list(record.receipts_open)}, "
            "format = 'newline_delimited', "
            "columns = {event_id: 'VARCHAR', batch_id: 'VARCHAR', received_at: 'TIMESTAMPTZ', "
            "message_id: 'VARCHAR'}, ignore_errors = true) WHERE event_id IS NOT NULL "
            "AND message_id IS NOT NULL AND received_at IS NOT NULL"
        )
    if not parts:
        connection.register("_receipts_empty", RECEIPT_SCHEMA.empty_table())
        parts.append(f"SELECT {columns} FROM _receipts_empty")
    connection.execute(f"CREATE VIEW receipts AS {' UNION ALL '.join(parts)}")
    catalog = catalog_dir.resolve()
    connection.execute(
        "CREATE TABLE splits AS SELECT track_id, rights_holder_id, CAST(share_bps AS BIGINT) AS share_bps "
        f"FROM read_csv('{(catalog / SPLITS_FILE).as_posix()}', header = true, all_varchar = true)"
    )
    connection.execute(
        "CREATE TABLE rates AS SELECT territory, product, "
        "CAST(rate_micros AS BIGINT) AS rate_micros, currency "
        f"FROM read_csv('{(catalog / RATES_FILE).as_posix()}', header = true, all_varchar = true)"
    )
    return connection


def _period_sql(column: str, period_seconds: int) -> str:
    """The epoch-aligned start of the period ``column`` (a timestamp) falls in."""
    step = period_seconds * 1_000_000
    return f"make_timestamptz((epoch_us({column}) // {step}) * {step})"


_TIES_SQL = """
CREATE TEMP TABLE pairs AS
SELECT lower(event_id) AS id, message_id, count(*) AS copies,
       -- A message archived twice is the same bytes twice: any copy stands for it.
       min(struct_pack(received_at, message_id, user_id, track_id, played_at, ms_played, territory, product))
           AS copy,
       count(*) FILTER (bucket_hour > date_trunc('hour', received_at)) AS skewed
FROM archive GROUP BY ALL;

-- The first copy of an event: the least (received_at, message_id), the struct's first fields.
CREATE TEMP TABLE events AS
SELECT id, min(copy) AS first, count(*) AS messages FROM pairs GROUP BY id;

CREATE TEMP TABLE later_copies AS
SELECT {period_of_copy} AS period_start,
       row(p.copy.user_id, p.copy.track_id, p.copy.played_at, p.copy.ms_played, p.copy.territory,
           p.copy.product)
       = row(e.first.user_id, e.first.track_id, e.first.played_at, e.first.ms_played,
             e.first.territory, e.first.product) AS same_content
FROM pairs p JOIN events e ON e.id = p.id AND e.messages > 1
WHERE p.message_id <> e.first.message_id;

CREATE TEMP TABLE archive_counts AS
WITH by_pairs AS (
    SELECT {period_of_copy} AS period_start, sum(copies) AS archived, sum(copies - 1) AS redeliveries,
           sum(skewed) AS skewed
    FROM pairs p GROUP BY 1
), by_events AS (
    SELECT {period_of_first} AS period_start, count(*) AS first_copies,
           count(*) FILTER (e.first.ms_played >= {min_stream_ms}) AS streams
    FROM events e GROUP BY 1
), by_later AS (
    SELECT period_start, count(*) FILTER (same_content) AS resent,
           count(*) FILTER (NOT same_content) AS conflicts
    FROM later_copies GROUP BY 1
)
SELECT period_start, coalesce(archived, 0) AS archived, coalesce(redeliveries, 0) AS redeliveries,
       coalesce(skewed, 0) AS skewed, coalesce(first_copies, 0) AS first_copies,
       coalesce(streams, 0) AS streams, coalesce(resent, 0) AS resent, coalesce(conflicts, 0) AS conflicts
FROM by_pairs FULL JOIN by_events USING (period_start) FULL JOIN by_later USING (period_start);

CREATE TEMP TABLE play_groups AS
SELECT {period_of_first} AS period_start, e.first.track_id AS track_id, e.first.territory AS territory,
       e.first.product AS product, count(*) AS plays,
       count(*) FILTER (e.first.ms_played >= {min_stream_ms}) AS streams
FROM events e GROUP BY ALL;

CREATE TEMP TABLE priced AS
SELECT g.*, coalesce(exact.rate_micros, fallback.rate_micros) AS gross_micros,
       coalesce(exact.currency, fallback.currency) AS currency
FROM play_groups g
LEFT JOIN rates exact ON exact.territory = g.territory AND exact.product = g.product
LEFT JOIN rates fallback ON fallback.territory = '*' AND fallback.product = g.product;

CREATE TEMP TABLE allocation AS
WITH parts AS (
    SELECT p.track_id, p.gross_micros, s.rights_holder_id,
           (CAST(p.gross_micros AS HUGEINT) * s.share_bps) // 10000 AS floor_micros,
           (CAST(p.gross_micros AS HUGEINT) * s.share_bps) % 10000 AS remainder
    FROM (SELECT DISTINCT track_id, gross_micros FROM priced WHERE gross_micros IS NOT NULL) p
    JOIN splits s USING (track_id)
), ranked AS (
    SELECT *, p.gross_micros - sum(floor_micros) OVER (PARTITION BY track_id, gross_micros) AS left_over,
           row_number() OVER (PARTITION BY track_id, gross_micros
                              ORDER BY remainder DESC, rights_holder_id) AS place
    FROM parts p
)
SELECT track_id, gross_micros, rights_holder_id,
       floor_micros + CASE WHEN place <= left_over THEN 1 ELSE 0 END AS per_stream_micros
FROM ranked;

CREATE TEMP TABLE repriced AS
SELECT p.period_start, coalesce(a.rights_holder_id, '{unmatched}') AS rights_holder_id,
       p.track_id, p.territory, p.product, p.plays, p.streams,
       CAST(coalesce(a.per_stream_micros, p.gross_micros) * p.streams AS HUGEINT) AS amount_micros
FROM priced p
LEFT JOIN allocation a ON a.track_id = p.track_id AND a.gross_micros = p.gross_micros
WHERE p.gross_micros IS NOT NULL;

CREATE TEMP TABLE final_rows AS
SELECT period_start, rights_holder_id, track_id, territory, product,
       CAST(sum(plays) AS HUGEINT) AS plays, CAST(sum(streams) AS HUGEINT) AS streams,
       CAST(sum(amount_micros) AS HUGEINT) AS amount_micros, max(written_at) AS written_at
FROM ledger_final GROUP BY ALL;

CREATE TEMP TABLE provisional_rows AS
SELECT period_start, rights_holder_id, track_id, territory, product,
       CAST(sum(plays) AS HUGEINT) AS plays, CAST(sum(streams) AS HUGEINT) AS streams,
       CAST(sum(amount_micros) AS HUGEINT) AS amount_micros
FROM ledger GROUP BY ALL;

CREATE TEMP TABLE money_diff AS
SELECT coalesce(r.period_start, f.period_start) AS period_start,
       coalesce(r.rights_holder_id, f.rights_holder_id) AS rights_holder_id,
       coalesce(r.track_id, f.track_id) AS track_id,
       coalesce(r.territory, f.territory) AS territory,
       coalesce(r.product, f.product) AS product,
       coalesce(r.plays, 0) AS expected_plays, coalesce(f.plays, 0) AS found_plays,
       coalesce(r.streams, 0) AS expected_streams, coalesce(f.streams, 0) AS found_streams,
       coalesce(r.amount_micros, 0) AS expected_micros, coalesce(f.amount_micros, 0) AS found_micros
FROM repriced r
FULL OUTER JOIN final_rows f
  ON r.period_start = f.period_start AND r.rights_holder_id = f.rights_holder_id
 AND r.track_id = f.track_id AND r.territory = f.territory AND r.product = f.product;
"""


@dataclass
class PeriodReconciliation:
    """One period's ties: the numbers of ``summary.json``, the exceptions, and the details behind them."""

    period_start: dt.datetime
    period_end: dt.datetime
    status: str = "balanced"
    numbers: dict[str, Any] = field(default_factory=dict)
    exceptions: list[dict[str, Any]] = field(default_factory=list)
    not_checked: list[str] = field(default_factory=list)
    explanations: list[str] = field(default_factory=list)
    holders: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    hours: list[dict[str, Any]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The period's entry in ``summary.json`` (money as integer micro-units)."""
        return {
            "period_start": self.period_start.isoformat(),
            "period_end": self.period_end.isoformat(),
            "status": self.status,
            **self.numbers,
            "unexplained": len(self.exceptions),
            "not_checked": self.not_checked,
            "explanations": self.explanations,
        }


def _rows(connection: duckdb.DuckDBPyConnection, sql: str, *params: Any) -> list[dict[str, Any]]:
    relation = connection.execute(sql, list(params))
    names = [column[0] for column in relation.description or []]
    return [dict(zip(names, row, strict=True)) for row in relation.fetchall()]


def _int(value: Any) -> int:
    return 0 if value is None else int(value)


def _utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def reconcile_periods(
    data_dir: Path | str,
    *,
    periods: Sequence[dt.datetime] | None = None,
    period_seconds: int = 3600,
    min_stream_ms: int = 30_000,
    catalog_dir: Path | str = DEFAULT_CATALOG_DIR,
    currency_decimals: int = 6,
) -> list[PeriodReconciliation]:
    """Reconcile ``periods`` (their starts; default: every period with data) from the stored record.

    Raises ``ReconcileInputError`` naming a file that cannot be read.
    """
    if period_seconds <= 0:
        raise ValueError("period_seconds must be positive")
    catalog = Path(catalog_dir)
    record = StoredRecord.of(Path(data_dir), catalog)
    try:
        connection = _connect(record, catalog)
        connection.execute("SET TimeZone = 'UTC'")
        for statement in duckdb.extract_statements(
            _TIES_SQL.format(
                period_of_copy=_period_sql("p.copy.received_at", period_seconds),
                period_of_first=_period_sql("e.first.received_at", period_seconds),
                min_stream_ms=int(min_stream_ms),
                unmatched=UNMATCHED,
            )
        ):
            connection.execute(statement)
        return _per_period(connection, record, periods, period_seconds)
    except duckdb.Error as error:
        raise ReconcileInputError(f"the stored record could not be read: {error}") from None


def _per_period(
    connection: duckdb.DuckDBPyConnection,
    record: StoredRecord,
    periods: Sequence[dt.datetime] | None,
    period_seconds: int,
) -> list[PeriodReconciliation]:
    receipt_period = _period_sql("received_at", period_seconds)
    if periods is None:
        found = _rows(
            connection,
            f"""
            SELECT DISTINCT period_start FROM (
                SELECT period_start FROM archive_counts
                UNION SELECT {receipt_period} FROM receipts
                UNION SELECT period_start FROM ledger_final
                UNION SELECT period_start FROM ledger)
            WHERE period_start IS NOT NULL ORDER BY 1
            """,
        )
        starts = [_utc(row["period_start"]) for row in found]
    else:
        starts = [_utc(start) for start in periods]
    # Receipts tied to the archive by event id and message id (both ways in one join); the
    # receipts no archived message holds are then looked up by event id alone.
    connection.execute(
        f"""
        CREATE TEMP TABLE receipt_gaps AS
        SELECT r.event_id, r.message_id, {receipt_period} AS period_start,
               {_period_sql("p.copy.received_at", period_seconds)} AS archived_period, p.copies
        FROM receipts r FULL JOIN pairs p ON p.id = lower(r.event_id) AND p.message_id = r.message_id
        WHERE p.id IS NULL OR r.event_id IS NULL
        """
    )
    connection.execute(
        f"""
        CREATE TEMP TABLE receipt_missing AS
        SELECT g.event_id, g.message_id, g.period_start, e.id IS NOT NULL AS event_archived
        FROM receipt_gaps g LEFT JOIN events e ON e.id = lower(g.event_id)
        WHERE g.event_id IS NOT NULL;
        CREATE TEMP TABLE receipt_counts AS
        SELECT {receipt_period} AS period_start, count(*) AS receipts FROM receipts GROUP BY 1;
        CREATE TEMP TABLE unreceipted AS
        SELECT archived_period AS period_start, sum(copies) AS archived_without_receipt
        FROM receipt_gaps WHERE event_id IS NULL GROUP BY 1;
        """
    )
    results = []
    for start in starts:
        end = start + dt.timedelta(seconds=period_seconds)
        result = PeriodReconciliation(start, end, files=record.files_of_period(start, end))
        _tie_period(connection, record, result)
        results.append(result)
    return results


def _tie_period(
    connection: duckdb.DuckDBPyConnection, record: StoredRecord, result: PeriodReconciliation
) -> None:
    start, end = result.period_start, result.period_end
    period = start.isoformat()
    counts = next(iter(_rows(connection, "SELECT * FROM archive_counts WHERE period_start = ?", start)), {})
    receipt_total = _rows(
        connection, "SELECT coalesce(sum(receipts), 0) AS n FROM receipt_counts WHERE period_start = ?", start
    )[0]["n"]
    missing = _rows(
        connection,
        "SELECT event_id, message_id FROM receipt_missing WHERE period_start = ? AND NOT event_archived "
        "ORDER BY event_id",
        start,
    )
    other_message = _rows(
        connection,
        "SELECT count(*) AS n FROM receipt_missing WHERE period_start = ? AND event_archived",
        start,
    )[0]["n"]
    unreceipted = _rows(connection, "SELECT * FROM unreceipted WHERE period_start = ?", start)
    has_final = bool(
        _rows(connection, "SELECT 1 AS x FROM final_rows WHERE period_start = ? LIMIT 1", start)
    ) or any(path.parent.name == partition_name("period", start) for path in record.ledger_final)
    money = _rows(
        connection,
        """
        SELECT rights_holder_id, sum(expected_plays) AS expected_plays, sum(found_plays) AS found_plays,
               sum(expected_streams) AS expected_streams, sum(found_streams) AS found_streams,
               sum(expected_micros) AS expected_micros, sum(found_micros) AS found_micros,
               count(*) FILTER (expected_plays <> found_plays OR expected_streams <> found_streams
                                OR expected_micros <> found_micros) AS differing_rows
        FROM money_diff WHERE period_start = ? GROUP BY ALL ORDER BY rights_holder_id
        """,
        start,
    )
    provisional = {
        row["rights_holder_id"]: row
        for row in _rows(
            connection,
            "SELECT rights_holder_id, sum(plays) AS plays, sum(streams) AS streams, "
            "sum(amount_micros) AS amount_micros FROM provisional_rows WHERE period_start = ? GROUP BY ALL",
            start,
        )
    }
    unpriced = _rows(
        connection,
        "SELECT territory, product, sum(plays) AS plays FROM priced WHERE period_start = ? "
        "AND gross_micros IS NULL GROUP BY ALL",
        start,
    )
    # Unique plays per ledger: per play group, the plays of its holders agree (one holder's row suffices).
    plays_sql = """
        SELECT coalesce(sum(plays), 0) AS plays, coalesce(sum(streams), 0) AS streams FROM (
            SELECT track_id, territory, product, max(plays) AS plays, max(streams) AS streams
            FROM {table} WHERE period_start = ? GROUP BY ALL)
    """
    final_plays = _rows(connection, plays_sql.format(table="final_rows"), start)[0]
    provisional_plays = _rows(connection, plays_sql.format(table="provisional_rows"), start)[0]
    streaming_counters = {
        row["counter"]: _int(row["value"])
        for row in _rows(
            connection,
            "SELECT counter, sum(value) AS value FROM counters WHERE period_start = ? GROUP BY ALL",
            start,
        )
    }
    dead = _rows(
        connection,
        f"SELECT stage, reason, count(*) AS rows FROM dead_letters "
        f"WHERE {_period_sql('dead_at', int((end - start).total_seconds()))} = ? GROUP BY ALL ORDER BY 1, 2",
        start,
    )
    timing = _rows(
        connection,
        "SELECT max(written_at) AS written_at FROM final_rows WHERE period_start = ?",
        start,
    )[0]

    # Hours of the period: closed (and when), or not.
    hour = start.replace(minute=0, second=0, microsecond=0)
    while hour < end:
        marker = record.closed_markers.get(hour)
        entry: dict[str, Any] = {"hour": hour.isoformat(), "closed": marker is not None}
        if marker is not None:
            closed_at = _utc(dt.datetime.fromisoformat(json.loads(marker.read_text())["closed_at"]))
            entry["closed_at"] = closed_at.isoformat()
            entry["seconds_after_hour_end"] = round((closed_at - (hour + _HOUR)).total_seconds(), 3)
        else:
            result.not_checked.append(f"archive hour {hour.isoformat()} has no {CLOSED_MARKER} marker yet")
        result.hours.append(entry)
        hour += _HOUR
    if not has_final:
        result.not_checked.append(
            "no final ledger for this period: run `playledger pipeline batch --period "
            f"{start.isoformat()}` once its hours are closed"
        )

    for row in missing:
        result.exceptions.append(
            _exception(period, "receipt_missing_from_archive", event_id=row["event_id"], expected=1, found=0)
        )
    for row in unpriced:
        result.exceptions.append(
            _exception(
                period,
                "no_rate",
                event_id=f"{row['territory']}/{row['product']}",
                expected="a rate",
                found=f"{_int(row['plays'])} plays unpriced",
            )
        )
    first_copies = _int(counts.get("first_copies"))
    if has_final:
        for row in money:
            if _int(row["differing_rows"]):
                for check, expected, found in (
                    ("plays", "expected_plays", "found_plays"),
                    ("streams", "expected_streams", "found_streams"),
                    ("amount_micros", "expected_micros", "found_micros"),
                ):
                    if _int(row[expected]) != _int(row[found]):
                        result.exceptions.append(
                            _exception(
                                period,
                                f"final_ledger_{check}",
                                rights_holder_id=row["rights_holder_id"],
                                expected=_int(row[expected]),
                                found=_int(row[found]),
                            )
                        )
        if _int(final_plays["plays"]) != first_copies:
            result.exceptions.append(
                _exception(
                    period,
                    "first_copies_vs_final_plays",
                    expected=first_copies,
                    found=_int(final_plays["plays"]),
                )
            )
    final_amount = sum(_int(row["found_micros"]) for row in money)
    repriced_amount = sum(_int(row["expected_micros"]) for row in money)
    provisional_amount = sum(_int(row["amount_micros"]) for row in provisional.values())
    holders = {row["rights_holder_id"] for row in money} | set(provisional)
    by_holder = {row["rights_holder_id"]: row for row in money}
    for holder in sorted(holders):
        row = by_holder.get(holder, {})
        prov = provisional.get(holder, {})
        result.holders.append(
            {
                "rights_holder_id": holder,
                "repriced_micros": _int(row.get("expected_micros")),
                "final_micros": _int(row.get("found_micros")),
                "provisional_micros": _int(prov.get("amount_micros")),
                "final_plays": _int(row.get("found_plays")),
                "provisional_plays": _int(prov.get("plays")),
            }
        )
    for row in dead:
        result.dead_letters.append(
            {"stage": row["stage"], "reason": row["reason"], "rows": _int(row["rows"])}
        )

    shortfall_plays = _int(final_plays["plays"]) - _int(provisional_plays["plays"])
    shortfall_micros = final_amount - provisional_amount
    if has_final and (shortfall_plays or shortfall_micros):
        result.explanations.append(
            _provisional_words(shortfall_plays, shortfall_micros, streaming_counters, first_copies)
        )
    archived = _int(counts.get("archived"))
    receipts_count = _int(receipt_total)
    result.numbers = {
        "receipts": receipts_count,
        "archived": archived,
        "missing_from_archive": len(missing),
        "receipts_archived_through_another_message": _int(other_message),
        "archived_without_receipt": _int(unreceipted[0]["archived_without_receipt"]) if unreceipted else 0,
        "first_copies": first_copies,
        "duplicates": _int(counts.get("resent"))
        + _int(counts.get("redeliveries"))
        + _int(counts.get("conflicts")),
        "resent_copies": _int(counts.get("resent")),
        "redeliveries": _int(counts.get("redeliveries")),
        "conflicts": _int(counts.get("conflicts")),
        "dead_lettered": sum(row["rows"] for row in result.dead_letters),
        "streams": _int(counts.get("streams")),
        "final_plays": _int(final_plays["plays"]),
        "final_streams": _int(final_plays["streams"]),
        "unmatched_plays": sum(
            _int(row["expected_plays"]) for row in money if row["rights_holder_id"] == UNMATCHED
        ),
        "final_amount_micros": final_amount,
        "repriced_amount_micros": repriced_amount,
        "provisional_amount_micros": provisional_amount,
        "provisional_plays": _int(provisional_plays["plays"]),
        "provisional_shortfall_plays": shortfall_plays,
        "provisional_shortfall_micros": shortfall_micros,
        "streaming_counters": streaming_counters,
        # Receipts whose event is archived, in a period with its final ledger written.
        "completeness_percent": round(100 * (receipts_count - len(missing)) / receipts_count, 4)
        if receipts_count and has_final
        else (0.0 if receipts_count else None),
        "skewed_rows": _int(counts.get("skewed")),
        "skew_percent": round(100 * _int(counts.get("skewed")) / archived, 4) if archived else None,
        "final_written_seconds_after_period_end": round((_utc(timing["written_at"]) - end).total_seconds(), 3)
        if timing["written_at"] is not None
        else None,
    }
    if result.not_checked:
        result.status = "incomplete"
    elif result.exceptions:
        result.status = "unbalanced"
    else:
        result.status = "balanced"


def _exception(
    period: str,
    check: str,
    *,
    event_id: str = "",
    rights_holder_id: str = "",
    expected: Any = "",
    found: Any = "",
) -> dict[str, Any]:
    return {
        "period": period,
        "check": check,
        "event_id": event_id,
        "rights_holder_id": rights_holder_id,
        "expected": expected,
        "found": found,
    }


def _micros_text(micros: int) -> str:
    sign = "-" if micros < 0 else ""
    whole, fraction = divmod(abs(micros), 1_000_000)
    return f"{sign}{whole}.{fraction:06d}"


def _provisional_words(plays: int, micros: int, streaming: dict[str, int], first_copies: int) -> str:
    """The provisional ledger's difference from the final one, in words and numbers."""
    if plays > 0:
        return (
            f"streaming ledger short by {plays:,} plays, {_micros_text(micros)}: events pulled but not "
            "written before a pipeline stop (the direct runner acknowledges on pull); the final ledger "
            f"holds them ({first_copies:,} first copies archived, {streaming.get('events_unique', 0):,} "
            "counted unique by the streaming pipeline)"
        )
    if plays < 0:
        return (
            f"streaming ledger over by {-plays:,} plays, {_micros_text(-micros)}: resent copies counted "
            "again after a pipeline restart forgot its de-duplication state; the final ledger counts each "
            f"event once ({streaming.get('events_duplicate', 0):,} duplicates dropped by the streaming "
            "pipeline)"
        )
    return f"streaming ledger differs by {_micros_text(micros)} with the same plays: priced differently"
