"""Counter names: one Enum for the pipelines' metrics, the supervisor's drain and the ``counters`` view.

Each branch of a pipeline counts its elements under one of these names, as a Beam metric
(summed by the supervisor while the pipeline runs, saved to ``metrics/``) and, for the
names in ``TABLE_COUNTERS``, as delta rows of the ``counters`` table per period, which
reconciliation balances: per period ``events_decoded = events_unique +
events_duplicate``, and every dead letter counted under the stage that refused it.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path

from ledger.storage import write_json_atomically

__all__ = [
    "PIPELINE_COUNTERS_FILE",
    "TABLE_COUNTERS",
    "Counter",
    "load_counters",
    "save_counters",
]


class Counter(StrEnum):
    """Every counter a royalty pipeline keeps, by the name it is stored under."""

    MESSAGES_READ = "messages_read"
    HEARTBEATS = "heartbeats"
    MESSAGES_UNDECODABLE = "messages_undecodable"
    """Pub/Sub messages that are no batch of play events (dead-lettered at stage ``decode``)."""
    EVENTS_DECODED = "events_decoded"
    """Valid play events read: ``events_unique + events_duplicate``."""
    EVENTS_INVALID = "events_invalid"
    """Events that break the contract (dead-lettered at stage ``validate``)."""
    EVENTS_UNIQUE = "events_unique"
    """First copies of an ``event_id``: the plays that count."""
    EVENTS_DUPLICATE = "events_duplicate"
    """Later copies of an ``event_id`` (counted once, by the first copy)."""
    EVENTS_CONFLICT = "events_conflict"
    """Later copies whose content differs from the first (also duplicates; dead-lettered at ``dedup``)."""
    DEDUP_IDS_REMEMBERED = "dedup_ids_remembered"
    DEDUP_IDS_FORGOTTEN = "dedup_ids_forgotten"
    PLAYS = "plays"
    """Unique plays counted by the ledger's panes."""
    STREAMS = "streams"
    PLAYS_QUALIFIED = "plays_qualified"
    """Plays long enough to be streams."""
    PLAYS_UNMATCHED = "plays_unmatched"
    """Plays of tracks the catalog lacks (money to suspense, ``UNMATCHED``)."""
    PLAYS_LATE = "plays_late"
    """Plays counted in a pane after their period's window closed."""
    ATTRIBUTED_PARTS = "attributed_parts"
    """Plays times rights holders attributed: what the ledger's ``plays`` column sums to once written."""
    LEDGER_FILES_WRITTEN = "ledger_files_written"
    LEDGER_ROWS_WRITTEN = "ledger_rows_written"
    LEDGER_PLAYS_WRITTEN = "ledger_plays_written"
    """The ``plays`` column summed over ledger rows written (plays times rights holders)."""
    DEAD_LETTERS_FILES_WRITTEN = "dead_letters_files_written"
    DEAD_LETTERS_ROWS_WRITTEN = "dead_letters_rows_written"
    COUNTERS_FILES_WRITTEN = "counters_files_written"
    COUNTERS_ROWS_WRITTEN = "counters_rows_written"
    LEDGER_FINAL_ROWS_WRITTEN = "ledger_final_rows_written"
    ARCHIVED_ROWS_READ = "archived_rows_read"
    ARCHIVED_ROWS_SHUFFLED = "archived_rows_shuffled"
    ARCHIVED_ROW_GROUPS_SKIPPED = "archived_row_groups_skipped"


TABLE_COUNTERS = (
    Counter.EVENTS_DECODED,
    Counter.EVENTS_UNIQUE,
    Counter.EVENTS_DUPLICATE,
    Counter.EVENTS_CONFLICT,
    Counter.EVENTS_INVALID,
    Counter.MESSAGES_UNDECODABLE,
    Counter.PLAYS_QUALIFIED,
    Counter.PLAYS_UNMATCHED,
    Counter.PLAYS_LATE,
    Counter.LEDGER_ROWS_WRITTEN,
)
"""The counters written as rows of the ``counters`` table, per period."""

PIPELINE_COUNTERS_FILE = "metrics/pipeline_counters.json"
"""Where a local streaming pipeline saves its counters, under the data directory."""


def save_counters(totals: dict[str, int], path: Path) -> None:
    """Write counters as JSON, durably and atomically."""
    write_json_atomically(totals, path, path.parent / ".tmp")


def load_counters(path: Path) -> dict[str, int]:
    """Counters saved at ``path`` (empty before the first save)."""
    try:
        loaded: dict[str, int] = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    return loaded
