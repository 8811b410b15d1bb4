"""Arrow schemas of the Parquet tables the pipelines append and the ledger reads.

The stored record, as every part reads and writes it (this module is its one description):

- ``ledger/period=<YYYYMMDDTHHMMSSZ>/``: the streaming pipeline's delta rows, one or more
  files per window pane (``LEDGER_SCHEMA``); balances are sums.
- ``ledger_final/period=…/ledger.parquet``: a period recomputed from the archive (same schema).
- ``counters/period=…/``: what each pipeline branch counted per period (``COUNTERS_SCHEMA``).
- ``dead_letters/minute=…/``: what could not be used, with the reason (``DEAD_LETTER_SCHEMA``).
- ``counters_final/period=…/counters.parquet`` and ``dead_letters_final/period=…/dead_letters.parquet``:
  a recompute's counters and dead letters of its period (same schemas), replaced whole with
  its final ledger.
- ``archive/hour=<YYYYMMDDTHH0000Z>/``: every event the archiver received, with its
  Pub/Sub envelope (``ARCHIVE_SCHEMA``); ``CLOSED_MARKER`` in an hour's folder says the
  hour is final (see ``runbooks/archive.md``).
- ``journal/``: the gateway's receipts (``RECEIPT_SCHEMA``; layout in ``ledger.receipts``).
- ``verdicts/<kind>/``: stored verdicts of checks (``ledger.verdicts``).
"""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

__all__ = [
    "ARCHIVE_DIR",
    "ARCHIVE_SCHEMA",
    "BUCKET_COLUMN",
    "CLOSED_MARKER",
    "COUNTERS_DIR",
    "COUNTERS_SCHEMA",
    "DEAD_LETTERS_DIR",
    "DEAD_LETTER_SCHEMA",
    "FINAL_COUNTERS_DIR",
    "FINAL_DEAD_LETTERS_DIR",
    "FINAL_LEDGER_DIR",
    "JOURNAL_DIR",
    "LEDGER_DIR",
    "LEDGER_SCHEMA",
    "RECEIPT_SCHEMA",
    "VERDICTS_DIR",
    "floor_hour",
    "partition_name",
]

LEDGER_DIR = "ledger"
# The batch recompute's final ledger: one file per period, replaced whole by a recompute.
FINAL_LEDGER_DIR = "ledger_final"
DEAD_LETTERS_DIR = "dead_letters"
FINAL_DEAD_LETTERS_DIR = "dead_letters_final"
FINAL_COUNTERS_DIR = "counters_final"
ARCHIVE_DIR = "archive"
JOURNAL_DIR = "journal"
VERDICTS_DIR = "verdicts"

BUCKET_COLUMN = "hour"
"""The archive's hive partition column: ``archive/hour=<YYYYMMDDTHH0000Z>/``."""
CLOSED_MARKER = "_CLOSED"
"""Written into an archive hour's folder once nothing more will be archived into it: the hour is final."""

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

# Elements per pipeline branch per period, appended as deltas like the ledger.
COUNTERS_DIR = "counters"
COUNTERS_SCHEMA = pa.schema(
    [
        pa.field("period_start", _TS, nullable=False),
        pa.field("period_end", _TS, nullable=False),
        pa.field("counter", pa.string(), nullable=False),
        pa.field("value", pa.int64(), nullable=False),
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


ARCHIVE_SCHEMA = pa.schema(
    [
        # The PlayEvent fields, as the codec decodes them (enums as strings).
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("track_id", pa.string(), nullable=False),
        pa.field("played_at", _TS, nullable=False),
        pa.field("ms_played", pa.int64(), nullable=False),
        pa.field("territory", pa.string(), nullable=False),
        pa.field("product", pa.string(), nullable=False),
        pa.field("context", pa.string(), nullable=False),
        pa.field("bitrate_kbps", pa.int32(), nullable=False),
        pa.field("offline", pa.bool_(), nullable=False),
        pa.field("device", pa.string()),
        pa.field("received_at", _TS, nullable=False),
        # The Pub/Sub envelope: a crash can archive a message twice, always whole and
        # with the same message_id, so duplicates can be told from client retries.
        pa.field("message_id", pa.string(), nullable=False),
        pa.field("batch_id", pa.string()),
        pa.field("publish_time", _TS, nullable=False),
        # The hour folder the row is in: the hour of received_at, or a later open hour
        # when that one was already closed (a skewed row).
        pa.field("bucket_hour", _TS, nullable=False),
        pa.field("archived_at", _TS, nullable=False),
    ]
)
"""One row per archived play event; see ``runbooks/archive.md``."""


RECEIPT_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("batch_id", pa.string(), nullable=False),
        pa.field("received_at", _TS, nullable=False),
        pa.field("message_id", pa.string(), nullable=False),
    ]
)
"""One receipt of the gateway's journal: which event, in which batch, received when, as which message."""


def floor_hour(moment: dt.datetime) -> dt.datetime:
    """The start (UTC) of the hour ``moment`` falls in."""
    return moment.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)


def partition_name(column: str, start: dt.datetime) -> str:
    """Hive partition folder for a period starting at ``start`` (UTC), e.g. ``period=20261128T070000Z``."""
    return f"{column}={start.astimezone(dt.UTC).strftime('%Y%m%dT%H%M%SZ')}"
