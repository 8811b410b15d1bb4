"""The recompute dead-letters a damaged archived row and counts the rest; its counters balance, once a run."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sample_plays import EPOCH, play

from ledger.catalog import DEFAULT_CATALOG_DIR, Catalog
from ledger.tables import ARCHIVE_DIR, floor_hour, partition_name
from ledger.views import open_ledger, run_sql
from pipelines.batch import FinalSinks
from pipelines.local.cli import main
from pipelines.transforms.sinks import Unwritten

ARGV = ["--period", EPOCH.isoformat(), "--period-seconds", "3600"]
BAD_ID = "0b0d8d38-4c3e-4b8a-9a86-5f3f1c4e2a1g"  # a UUID's length, one letter no hex digit


def archive(data_dir: Path, events: list[dict[str, Any]]) -> Path:
    """The events as one archive file in the first one's hour bucket; its path."""
    rows = [
        dict(event, message_id=f"m{number}", batch_id="b", publish_time=event["received_at"])
        for number, event in enumerate(events)
    ]
    folder = data_dir / ARCHIVE_DIR / partition_name("hour", floor_hour(events[0]["received_at"]))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"part-{uuid.uuid4().hex}.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def recompute(data_dir: Path) -> None:
    assert main(["pipeline", "batch", "--data-dir", str(data_dir), *ARGV]) == 0


def test_a_damaged_row_is_a_dead_letter_and_the_counters_view_covers_the_recompute(tmp_path: Path) -> None:
    catalog = Catalog.load(DEFAULT_CATALOG_DIR)
    track = sorted(catalog.track_ids)[0]
    first = play(track, received_second=10)
    retry = dict(first, received_at=EPOCH + dt.timedelta(seconds=20))
    conflict = dict(first, received_at=EPOCH + dt.timedelta(seconds=30), ms_played=1_000)
    damaged = play(track, received_second=40, event_id=BAD_ID)
    other = play(track, received_second=50)
    path = archive(tmp_path, [first, retry, conflict, damaged, other])

    recompute(tmp_path)
    recompute(tmp_path)  # again: the period's tables are replaced, never appended to
    connection = open_ledger(tmp_path)
    holders = len(catalog.splits_for(track) or ())
    assert run_sql(connection, "SELECT sum(plays) FROM ledger_final").rows == [(2 * holders,)]
    assert run_sql(
        connection,
        "SELECT stage, event_id, source FROM dead_letters ORDER BY stage",
    ).rows == [("dedup", first["event_id"], "FINAL"), ("validate", BAD_ID, "FINAL")]
    counted = dict(
        run_sql(
            connection, "SELECT counter, sum(value) FROM counters WHERE source = 'FINAL' GROUP BY ALL"
        ).rows
    )
    final_rows = run_sql(connection, "SELECT count(*) FROM ledger_final").rows[0][0]
    assert counted == {
        "events_decoded": 4,  # the usable rows received in the period
        "events_unique": 2,
        "events_duplicate": 2,
        "events_invalid": 1,
        "events_conflict": 1,
        "ledger_final_rows_written": final_rows,
    }
    assert run_sql(connection, "SELECT DISTINCT period_start FROM counters").rows == [(EPOCH,)]

    # The row repaired (written again without it): the dead letter does not outlive it.
    path.unlink()
    archive(tmp_path, [first, retry, other])
    recompute(tmp_path)
    assert run_sql(open_ledger(tmp_path), "SELECT count(*) FROM dead_letters").rows == [(0,)]
    assert run_sql(
        open_ledger(tmp_path),
        "SELECT sum(value) FROM counters WHERE source = 'FINAL' AND counter = 'events_invalid'",
    ).rows == [(None,)]


def test_a_recompute_without_a_dead_letter_sink_is_refused() -> None:
    with pytest.raises(ValueError, match="no sink for dead_letters"):
        FinalSinks(ledger=Unwritten(), dead_letters=None, counters=Unwritten())  # type: ignore[arg-type]
    assert all(isinstance(sink, Unwritten) for sink in vars(FinalSinks.unwritten()).values())
