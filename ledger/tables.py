"""Arrow schemas of the Parquet tables the pipelines append and the ledger reads.

The ledger is an append-only journal of delta rows: each window pane of the pipeline
appends new files under ``<data-dir>/ledger/period=<YYYYMMDDTHHMMSSZ>/``; balances are
sums. Dead letters go the same way under ``<data-dir>/dead_letters/``.
"""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

__all__ = [
    "DEAD_LETTERS_DIR",
    "DEAD_LETTER_SCHEMA",
    "LEDGER_DIR",
    "LEDGER_SCHEMA",
    "partition_name",
]

LEDGER_DIR = "ledger"
DEAD_LETTERS_DIR = "dead_letters"

_TS = pa.timestamp("us", tz="UTC")

LEDGER_SCHEMA = pa.schema(
    [
        pa.field("period_start", _TS, nullable=False),
        pa.field("period_end", _TS, nullable=False),
        pa.field("rights_holder_id", pa.string(), nullable=False),
        pa.field("track_id", pa.string(), nullable=False),
        pa.field("territory", pa.string(), nullable=False),
        pa.field("product", pa.string(), nullable=False),
        pa.field("plays", pa.int64(), nullable=False),
        pa.field("streams", pa.int64(), nullable=False),
        pa.field("amount_micros", pa.int64(), nullable=False),
        pa.field("currency", pa.string(), nullable=False),
        pa.field("pane_timing", pa.string(), nullable=False),
        pa.field("written_at", _TS, nullable=False),
    ]
)

DEAD_LETTER_SCHEMA = pa.schema(
    [
        pa.field("dead_at", _TS, nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("event_id", pa.string()),
        pa.field("batch_id", pa.string()),
        pa.field("payload_base64", pa.string(), nullable=False),
        pa.field("attributes_json", pa.string(), nullable=False),
    ]
)


def partition_name(column: str, start: dt.datetime) -> str:
    """Hive partition folder for a period starting at ``start`` (UTC), e.g. ``period=20261128T070000Z``."""
    return f"{column}={start.astimezone(dt.UTC).strftime('%Y%m%dT%H%M%SZ')}"
