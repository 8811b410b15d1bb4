"""Settling a stopped local run: hours closed, periods recomputed, reconciled, verdicts kept."""

from __future__ import annotations

import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from sample_plays import EPOCH, play

from ledger.catalog import DEFAULT_CATALOG_DIR, Catalog
from ledger.tables import ARCHIVE_DIR, CLOSED_MARKER, FINAL_LEDGER_DIR, floor_hour, partition_name
from ledger.verdicts import latest_verdict
from pipelines.local.settle import settle


def test_settle_closes_recomputes_and_reconciles_every_period(tmp_path: Path) -> None:
    track = sorted(Catalog.load(DEFAULT_CATALOG_DIR).track_ids)[0]
    events = [play(track, received_second=second) for second in (10, 20, 3600 + 5)]
    for number, event in enumerate(events):
        hour = floor_hour(event["received_at"])
        row = dict(
            event,
            message_id=f"m{number}",
            batch_id="b",
            publish_time=event["received_at"],
            bucket_hour=hour,
            archived_at=event["received_at"],
        )
        folder = tmp_path / ARCHIVE_DIR / partition_name("hour", hour)
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist([row]), folder / f"part-{uuid.uuid4().hex}.parquet")

    settled = settle(tmp_path, report_name="test")

    hours = [EPOCH, floor_hour(events[2]["received_at"])]
    assert settled.periods == hours
    assert all(
        (tmp_path / ARCHIVE_DIR / partition_name("hour", hour) / CLOSED_MARKER).is_file() for hour in hours
    )
    assert all(
        (tmp_path / FINAL_LEDGER_DIR / partition_name("period", hour) / "ledger.parquet").is_file()
        for hour in hours
    )
    assert settled.status == "balanced", [result.summary() for result in settled.reconciled]
    assert (settled.report_dir / "report.html").is_file()
    for hour in hours:
        verdict = latest_verdict(tmp_path, "reconcile", {"period_start": hour.isoformat()})
        assert verdict is not None and verdict.passed and verdict.still_current()
