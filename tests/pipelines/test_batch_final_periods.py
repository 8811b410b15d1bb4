"""The batch command always leaves a final period it recomputed, and refuses a period never archived."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sample_plays import EPOCH, play

from ledger.catalog import DEFAULT_CATALOG_DIR, Catalog
from ledger.tables import ARCHIVE_DIR, FINAL_LEDGER_DIR, floor_hour, partition_name
from ledger.views import open_ledger, run_sql
from pipelines.local.cli import main

ARGV = ["--period", EPOCH.isoformat(), "--period-seconds", "3600"]


def archive(data_dir: Path, received_seconds: list[int], track: str) -> None:
    """One archived copy per play, in its receive hour's bucket, as the archiver keeps them."""
    for second in received_seconds:
        event = play(track, received_second=second)
        row = dict(event, message_id=f"m{second}", batch_id="b", publish_time=event["received_at"])
        folder = data_dir / ARCHIVE_DIR / partition_name("hour", floor_hour(event["received_at"]))
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist([row]), folder / f"part-{uuid.uuid4().hex}.parquet")


def final_rows(data_dir: Path) -> int:
    return pq.read_table(
        data_dir / FINAL_LEDGER_DIR / partition_name("period", EPOCH) / "ledger.parquet"
    ).num_rows


def test_a_recompute_that_counts_nothing_replaces_the_period_with_an_empty_one(tmp_path: Path) -> None:
    track = sorted(Catalog.load(DEFAULT_CATALOG_DIR).track_ids)[0]
    archive(tmp_path, [10, 3600 + 5], track)  # one play in the period, one in the next hour
    assert main(["pipeline", "batch", "--data-dir", str(tmp_path), *ARGV]) == 0
    assert final_rows(tmp_path) > 0
    # The period's only hour goes (say, archived to the wrong directory and moved away): a
    # recompute now counts nothing, and must not leave the earlier rows standing.
    shutil.rmtree(tmp_path / ARCHIVE_DIR / partition_name("hour", EPOCH))
    assert main(["pipeline", "batch", "--data-dir", str(tmp_path), *ARGV]) == 0
    assert final_rows(tmp_path) == 0
    assert run_sql(open_ledger(tmp_path), "SELECT count(*) FROM balances").rows == [(0,)]


def test_a_period_with_no_archived_hour_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert main(["pipeline", "batch", "--data-dir", str(tmp_path), *ARGV]) == 2
    assert "no archived hour for the period starting 2026-11-01T00:00:00+00:00" in caplog.text
    assert not (tmp_path / FINAL_LEDGER_DIR).exists()  # no "recomputed, zero" for a period never seen
