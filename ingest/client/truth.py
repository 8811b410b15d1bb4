"""The ground truth: one Parquet row per play the population really made.

Written from the outbox's play journal, so it holds every play recorded, whether or
not its event has reached the gateway yet. This is what the ledger must add up to.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ingest.client.outbox import PlayRecord

__all__ = ["TRUTH_SCHEMA", "write_truth"]

TRUTH_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("track_id", pa.string(), nullable=False),
        pa.field("played_at", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("ms_played", pa.int64(), nullable=False),
        pa.field("territory", pa.string(), nullable=False),
        pa.field("product", pa.string(), nullable=False),
        pa.field("offline", pa.bool_(), nullable=False),
    ]
)


def write_truth(plays: Iterable[PlayRecord], path: Path) -> int:
    """Write ``plays`` to the Parquet file ``path`` (atomically); return the row count."""
    columns: dict[str, list[object]] = {name: [] for name in TRUTH_SCHEMA.names}
    for play in plays:
        columns["event_id"].append(play.event_id)
        columns["user_id"].append(play.user_id)
        columns["track_id"].append(play.track_id)
        columns["played_at"].append(play.played_at_ms)
        columns["ms_played"].append(play.ms_played)
        columns["territory"].append(play.territory)
        columns["product"].append(play.product)
        columns["offline"].append(play.offline)
    table = pa.Table.from_pydict(columns, schema=TRUTH_SCHEMA)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    pq.write_table(table, partial)
    # A reader never sees half a file: write aside, then rename into place.
    os.replace(partial, path)
    return table.num_rows
