"""``playledger reconcile`` over real stored data: an archive and receipts, the real batch recompute.

The archive is written with ``ARCHIVE_SCHEMA`` and the receipts with ``RECEIPT_SCHEMA``
as the archiver and the gateway lay them out; the final ledger comes from the real
``playledger pipeline batch``. Then the record is tampered with the ways an auditor must
catch (a row removed from the archive, a final-ledger row copied), an hour is left
open, and a provisional ledger short of some plays is set beside the final one.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import random
import shutil
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from offline_browser import offline_page

from ledger.catalog import DEFAULT_CATALOG_DIR, Catalog
from ledger.tables import ARCHIVE_SCHEMA, CLOSED_MARKER, RECEIPT_SCHEMA, partition_name
from ledger.verdicts import latest_verdict
from pipelines.batch import run as batch_run
from pipelines.local.cli import main as playledger

PERIOD = dt.datetime(2026, 11, 28, 7, tzinfo=dt.UTC)
PERIOD_TEXT = "2026-11-28T07:00:00+00:00"
SEED = 11


def _play(rng: random.Random, tracks: list[str], second: int) -> dict[str, Any]:
    received_at = PERIOD + dt.timedelta(seconds=second)
    ms_played = rng.choice((10_000, 29_999, 30_000, 95_000, 200_000))
    return {
        "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "user_id": f"u{rng.randrange(20)}",
        "track_id": "T-UNKNOWN" if second % 37 == 0 else rng.choice(tracks),
        "played_at": received_at - dt.timedelta(milliseconds=ms_played),
        "ms_played": ms_played,
        "territory": rng.choice(("US", "GB", "SE", "NO")),  # NO: priced by the '*' rate
        "product": rng.choice(("free", "premium")),
        "context": "album",
        "bitrate_kbps": 160,
        "offline": False,
        "device": None,
        "received_at": received_at,
    }


def build_record(data_dir: Path, plays: int = 300) -> dict[str, Any]:
    """An hour of archived plays with resent, conflicting and re-delivered copies, their receipts, closed."""
    rng = random.Random(SEED)
    tracks = sorted(Catalog.load(DEFAULT_CATALOG_DIR).track_ids)[:30]
    events = [_play(rng, tracks, 5 + index * 10) for index in range(plays)]
    copies: list[dict[str, Any]] = []
    for number, event in enumerate(events):
        copies.append(dict(event, message_id=f"m{number:05d}"))
    for number, event in enumerate(events[:12]):  # a client resent these (reply lost)
        later = event["received_at"] + dt.timedelta(seconds=3)
        copies.append(dict(event, received_at=later, message_id=f"r{number:05d}"))
    conflict = dict(events[20], received_at=events[20]["received_at"] + dt.timedelta(seconds=4))
    copies.append(dict(conflict, ms_played=1_000, message_id="c00001"))
    redelivered = dict(copies[30])  # the archiver wrote this message twice (killed before its ack)
    rows = [dict(copy, batch_id="b", publish_time=copy["received_at"]) for copy in [*copies, redelivered]]
    for row in rows:
        row["bucket_hour"] = PERIOD
        row["archived_at"] = row["received_at"] + dt.timedelta(seconds=1)
    folder = data_dir / "archive" / partition_name("hour", PERIOD)
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=ARCHIVE_SCHEMA), folder / "part-1.parquet")
    closed_at = PERIOD + dt.timedelta(hours=1, minutes=10)
    (folder / CLOSED_MARKER).write_text(
        json.dumps({"bucket_hour": PERIOD.isoformat(), "closed_at": closed_at.isoformat()})
    )
    # One receipt per message the gateway answered 200 for; one reply failed after publishing.
    receipts = [
        {
            "event_id": c["event_id"],
            "batch_id": "b",
            "received_at": c["received_at"],
            "message_id": c["message_id"],
        }
        for c in copies
        if c["message_id"] != "m00050"
    ]
    journal = data_dir / "journal" / f"hour={PERIOD.strftime('%Y%m%dT%H%M%SZ')}"
    journal.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(receipts, schema=RECEIPT_SCHEMA), journal / "receipts-x-0000.parquet")
    assert batch_run(["--data-dir", str(data_dir), "--period", PERIOD_TEXT]) == 0
    return {"events": events, "copies": copies, "rows": rows}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    data_dir = tmp_path_factory.mktemp("record") / "data"
    return data_dir, build_record(data_dir)


@pytest.fixture
def record(built: tuple[Path, dict[str, Any]], tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """A private copy of the built record, to tamper with."""
    data_dir = tmp_path / "data"
    shutil.copytree(built[0], data_dir)
    return data_dir, built[1]


def reconcile(data_dir: Path, *extra: str) -> tuple[int, dict[str, Any], list[dict[str, str]]]:
    out = data_dir / "out"
    status = playledger(
        ["reconcile", "--data-dir", str(data_dir), "--out", str(out), "--format", "json", *extra]
    )
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
    exceptions = (
        list(csv.DictReader((out / "exceptions.csv").open())) if (out / "exceptions.csv").exists() else []
    )
    return status, summary, exceptions


def test_a_clean_record_balances_and_the_verdict_is_stamped(record: tuple[Path, dict[str, Any]]) -> None:
    data_dir, built = record
    status, summary, exceptions = reconcile(data_dir, "--period", PERIOD_TEXT)
    assert status == 0, summary
    assert summary["status"] == "balanced" and exceptions == []
    (period,) = summary["periods"]
    assert period["receipts"] == len(built["copies"]) - 1
    assert period["archived"] == len(built["rows"])
    assert period["missing_from_archive"] == 0
    assert period["archived_without_receipt"] == 1
    assert period["first_copies"] == len(built["events"]) == period["final_plays"]
    assert (period["resent_copies"], period["conflicts"], period["redeliveries"]) == (12, 1, 1)
    assert period["duplicates"] == 14
    assert period["streams"] == sum(e["ms_played"] >= 30_000 for e in built["events"])
    assert period["final_amount_micros"] == period["repriced_amount_micros"] > 0
    assert period["unmatched_plays"] == sum(e["track_id"] == "T-UNKNOWN" for e in built["events"]) > 0
    assert period["unexplained"] == 0
    verdict = latest_verdict(data_dir, "reconcile", {"period_start": PERIOD_TEXT})
    assert verdict is not None and verdict.passed and verdict.status == "balanced"
    stamped = {Path(stamp.path).name for stamp in verdict.files}
    assert {"part-1.parquet", "ledger.parquet", "receipts-x-0000.parquet", CLOSED_MARKER} <= stamped
    assert verdict.still_current()


def test_an_archived_row_removed_is_unbalanced_naming_the_event(record: tuple[Path, dict[str, Any]]) -> None:
    data_dir, built = record
    path = next((data_dir / "archive").glob("hour=*/part-1.parquet"))
    table = pq.read_table(path)
    victim = built["events"][100]["event_id"]
    pq.write_table(table.filter(pa.compute.not_equal(table["event_id"], victim)), path)
    status, summary, exceptions = reconcile(data_dir)
    assert status == 1 and summary["status"] == "unbalanced"
    missing = [row for row in exceptions if row["check"] == "receipt_missing_from_archive"]
    assert [row["event_id"] for row in missing] == [victim]
    assert summary["periods"][0]["missing_from_archive"] == 1


def test_a_copied_final_ledger_row_is_unbalanced_naming_the_rights_holder(
    record: tuple[Path, dict[str, Any]],
) -> None:
    data_dir, _ = record
    path = next((data_dir / "ledger_final").glob("period=*/ledger.parquet"))
    table = pq.read_table(path)
    earning = table.filter(pa.compute.greater(table["amount_micros"], 0)).slice(0, 1)
    holder = earning["rights_holder_id"][0].as_py()
    pq.write_table(pa.concat_tables([table, earning]), path)
    status, summary, exceptions = reconcile(data_dir)
    assert status == 1 and summary["status"] == "unbalanced"
    named = {row["rights_holder_id"] for row in exceptions if row["check"].startswith("final_ledger_")}
    assert named == {holder}
    amount = next(row for row in exceptions if row["check"] == "final_ledger_amount_micros")
    assert int(amount["found"]) - int(amount["expected"]) == earning["amount_micros"][0].as_py()


def test_an_hour_without_its_closed_marker_is_incomplete(record: tuple[Path, dict[str, Any]]) -> None:
    data_dir, _ = record
    next((data_dir / "archive").glob(f"hour=*/{CLOSED_MARKER}")).unlink()
    status, summary, _ = reconcile(data_dir)
    assert status == 3 and summary["periods"][0]["status"] == "incomplete"
    assert any(CLOSED_MARKER in line for line in summary["periods"][0]["not_checked"])
    verdict = latest_verdict(data_dir, "reconcile", {"period_start": PERIOD_TEXT})
    assert verdict is not None and not verdict.passed


def test_a_period_not_recomputed_is_incomplete(record: tuple[Path, dict[str, Any]]) -> None:
    data_dir, _ = record
    shutil.rmtree(data_dir / "ledger_final")
    status, summary, _ = reconcile(data_dir)
    assert status == 3 and "no final ledger" in summary["periods"][0]["not_checked"][0]


def test_a_short_provisional_ledger_is_explained_with_its_plays(
    record: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """The streaming ledger: the final ledger of the archive minus 7 plays a killed pipeline lost."""
    data_dir, built = record
    lost = {event["event_id"] for event in built["events"][200:207]}
    short = tmp_path / "short"
    (short / "archive").mkdir(parents=True)
    shutil.copytree(
        data_dir / "archive" / partition_name("hour", PERIOD),
        short / "archive" / partition_name("hour", PERIOD),
    )
    path = next((short / "archive").glob("hour=*/part-1.parquet"))
    table = pq.read_table(path)
    keep = pa.compute.invert(pa.compute.is_in(table["event_id"], pa.array(sorted(lost))))
    pq.write_table(table.filter(keep), path)
    assert batch_run(["--data-dir", str(short), "--period", PERIOD_TEXT]) == 0
    target = data_dir / "ledger" / partition_name("period", PERIOD)
    target.mkdir(parents=True)
    shutil.copy(next((short / "ledger_final").glob("period=*/ledger.parquet")), target / "pane-1.parquet")
    status, summary, _ = reconcile(data_dir)
    assert status == 0, summary
    (period,) = summary["periods"]
    assert period["provisional_shortfall_plays"] == 7
    assert (
        period["provisional_amount_micros"] + period["provisional_shortfall_micros"]
        == period["final_amount_micros"]
    )
    assert period["explanations"][0].startswith("streaming ledger short by 7 plays")


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_parquet_file_is_named_without_a_traceback(
    record: tuple[Path, dict[str, Any]], damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir, _ = record
    path = next((data_dir / "archive").glob("hour=*/part-1.parquet"))
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2] if damage == "truncated" else b"not parquet at all")
    status, _, _ = reconcile(data_dir)
    assert status == 2
    assert str(path) in caplog.text and "Traceback" not in caplog.text


@pytest.mark.parametrize(
    "arguments",
    [["--period", "2026-11-28T07:30:00Z"], ["--period", "yesterday"], ["--from", "2026-11-28T07:00:00Z"]],
)
def test_bad_usage_exits_2(record: tuple[Path, dict[str, Any]], arguments: list[str]) -> None:
    status, _, _ = reconcile(record[0], *arguments)
    assert status == 2


def test_from_to_names_every_period_including_empty_ones(record: tuple[Path, dict[str, Any]]) -> None:
    status, summary, _ = reconcile(
        record[0], "--from", "2026-11-28T07:00:00Z", "--to", "2026-11-28T09:00:00Z"
    )
    assert [p["status"] for p in summary["periods"]] == ["balanced", "incomplete"]
    assert status == 3


def test_the_report_page_renders_offline_in_chromium(record: tuple[Path, dict[str, Any]]) -> None:
    """report.html in Debian's chromium, every request but file: and data: refused."""
    data_dir, _ = record
    path = next((data_dir / "ledger_final").glob("period=*/ledger.parquet"))
    table = pq.read_table(path)
    pq.write_table(pa.concat_tables([table, table.slice(0, 1)]), path)  # an exception to show
    status, _, _ = reconcile(data_dir)
    assert status == 1
    page_path = data_dir / "out" / "report.html"
    with offline_page(page_path) as seen:
        page = seen.page
        assert page.locator("#verdict").inner_text() == "Verdict: unbalanced"
        assert page.locator("#verdict").is_visible()
        assert page.locator("svg.funnel rect").count() == 5
        assert page.locator("svg.timeliness rect").count() == 1
        assert page.locator("table.exceptions tr").count() >= 2
    errors, blocked = seen.errors, seen.blocked
    assert errors == [] and blocked == []
