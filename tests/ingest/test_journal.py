"""The receipt journal: durable appends, hourly sealing to Parquet, and crash recovery.

Time is driven: sealing decisions read the journal's injected clock, never the wall.
The ``receipts`` view reads back what auditors would see.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ingest.gateway.journal import JournalError, ReceiptJournal
from ledger.receipts import open_receipt_files, sealed_receipt_files
from ledger.tables import RECEIPT_SCHEMA
from ledger.views import open_ledger, run_sql

SIX = datetime(2026, 11, 28, 6, tzinfo=UTC)
SEVEN = SIX + timedelta(hours=1)
GRACE = 15.0


class Clock:
    """A settable clock for the journal's sealing decisions."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now.timestamp()


def event_ids(prefix: str, count: int) -> list[str]:
    return [f"{prefix:0>8}-0000-4000-8000-{index:012d}" for index in range(count)]


def receipts_view(data_dir: Path) -> list[tuple[str, str, datetime, str]]:
    rows = run_sql(open_ledger(data_dir), "SELECT * FROM receipts ORDER BY event_id").rows
    return [(row[0], row[1], row[2], row[3]) for row in rows]


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    event_loop = asyncio.new_event_loop()
    yield event_loop
    event_loop.close()


def test_receipts_are_on_disk_when_record_returns(tmp_path: Path, loop: asyncio.AbstractEventLoop) -> None:
    journal = ReceiptJournal(tmp_path, GRACE, clock=Clock(SIX + timedelta(minutes=30)))
    received_at = SIX + timedelta(minutes=30, microseconds=123)

    async def scenario() -> None:
        await journal.start()
        await journal.record("b" * 32, received_at, "1234", event_ids("1", 2))
        [open_file] = open_receipt_files(tmp_path)
        assert open_file.read_text().splitlines() == [
            f'{{"event_id":"{event_ids("1", 2)[0]}","batch_id":"{"b" * 32}",'
            '"received_at":"2026-11-28T06:30:00.000123Z","message_id":"1234"}',
            f'{{"event_id":"{event_ids("1", 2)[1]}","batch_id":"{"b" * 32}",'
            '"received_at":"2026-11-28T06:30:00.000123Z","message_id":"1234"}',
        ]
        assert open_file.name.startswith("receipts-20261128T060000Z-")
        assert receipts_view(tmp_path) == [
            (event_id, "b" * 32, received_at, "1234") for event_id in event_ids("1", 2)
        ]
        await journal.close()

    loop.run_until_complete(scenario())


def test_concurrent_records_all_land_once(tmp_path: Path, loop: asyncio.AbstractEventLoop) -> None:
    journal = ReceiptJournal(tmp_path, GRACE, clock=Clock(SIX))

    async def scenario() -> None:
        await journal.start()
        await asyncio.gather(
            *(
                journal.record(
                    f"{batch:032x}", SIX + timedelta(seconds=batch), str(batch), event_ids(str(batch), 10)
                )
                for batch in range(200)
            )
        )
        await journal.close()

    loop.run_until_complete(scenario())
    rows = receipts_view(tmp_path)
    assert len(rows) == 2000 == len({row[0] for row in rows})
    assert open_receipt_files(tmp_path) == []
    [sealed] = sealed_receipt_files(tmp_path)
    assert pq.read_schema(sealed).equals(RECEIPT_SCHEMA)


def test_an_hour_is_sealed_once_it_ended_and_the_grace_passed(
    tmp_path: Path, loop: asyncio.AbstractEventLoop
) -> None:
    clock = Clock(SEVEN - timedelta(seconds=1))
    sealed: list[int] = []
    journal = ReceiptJournal(tmp_path, GRACE, clock=clock, on_sealed=lambda path, rows: sealed.append(rows))

    async def scenario() -> None:
        await journal.start()
        await journal.record("a" * 32, SEVEN - timedelta(seconds=1), "1", event_ids("a", 3))
        await journal.maintain()
        assert (journal.open_files(), journal.lag_seconds()) == (1, 0.0)

        clock.now = SEVEN + timedelta(seconds=5)  # hour over, publishes may still be in flight
        await journal.record("c" * 32, SEVEN - timedelta(microseconds=1), "2", event_ids("c", 1))
        await journal.maintain()
        assert (journal.open_files(), journal.lag_seconds()) == (1, 5.0)
        assert sealed_receipt_files(tmp_path) == []

        clock.now = SEVEN + timedelta(seconds=GRACE)
        await journal.maintain()
        assert sealed == [4]
        assert (journal.open_files(), journal.lag_seconds()) == (0, 0.0)

        # A receipt for an hour already sealed: a new file of that hour, sealed in turn.
        await journal.record("d" * 32, SEVEN - timedelta(seconds=2), "3", event_ids("d", 1))
        clock.now += timedelta(seconds=1)
        await journal.maintain()
        assert sealed == [4, 1]
        await journal.close()

    loop.run_until_complete(scenario())
    files = sealed_receipt_files(tmp_path)
    assert [path.parent.name for path in files] == ["hour=20261128T060000Z"] * 2
    assert all(
        path.name.endswith(suffix)
        for path, suffix in zip(files, ("-0001.parquet", "-0002.parquet"), strict=True)
    )
    assert len(receipts_view(tmp_path)) == 5
    assert not list((tmp_path / "journal" / "tmp").iterdir())


def write_orphan(data_dir: Path, name: str, lines: list[str], tail: bytes = b"") -> Path:
    folder = data_dir / "journal" / "open"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes("".join(f"{line}\n" for line in lines).encode() + tail)
    return path


def receipt_line(event_id: str, message_id: str = "9") -> str:
    return (
        f'{{"event_id":"{event_id}","batch_id":"{"e" * 32}",'
        f'"received_at":"2026-11-28T07:10:00.000000Z","message_id":"{message_id}"}}'
    )


def test_a_file_left_by_a_killed_gateway_is_sealed_without_its_torn_line(
    tmp_path: Path, loop: asyncio.AbstractEventLoop
) -> None:
    ids = event_ids("e", 3)
    orphan = write_orphan(
        tmp_path,
        "receipts-20261128T070000Z-host-1-abcdef-0001.ndjson",
        [receipt_line(event_id) for event_id in ids],
        tail=b'{"event_id":"' + ids[0].encode()[:10],
    )
    # Before sealing the view skips the torn line too.
    assert [row[0] for row in receipts_view(tmp_path)] == ids
    journal = ReceiptJournal(tmp_path, GRACE, clock=Clock(SEVEN + timedelta(minutes=10)))

    async def scenario() -> None:
        await journal.start()
        await journal.maintain()
        await journal.close()

    loop.run_until_complete(scenario())
    assert not orphan.exists()
    [sealed] = sealed_receipt_files(tmp_path)
    assert sealed.name == "receipts-20261128T070000Z-host-1-abcdef-0001.parquet"
    assert pq.read_table(sealed).column("event_id").to_pylist() == ids


def test_garbage_after_a_power_loss_is_skipped_line_by_line(
    tmp_path: Path, loop: asyncio.AbstractEventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    ids = event_ids("f", 2)
    write_orphan(
        tmp_path,
        "receipts-20261128T070000Z-host-2-abcdef-0001.ndjson",
        [receipt_line(ids[0]), "\x00" * 40, receipt_line(ids[1])],
    )
    journal = ReceiptJournal(tmp_path, GRACE, clock=Clock(SEVEN))

    async def scenario() -> None:
        await journal.start()
        await journal.maintain()
        await journal.close()

    loop.run_until_complete(scenario())
    assert [row[0] for row in receipts_view(tmp_path)] == ids
    assert "skipped 1 line(s) that are not receipts" in caplog.text


def test_a_file_a_live_gateway_holds_is_left_alone(tmp_path: Path, loop: asyncio.AbstractEventLoop) -> None:
    held = write_orphan(
        tmp_path, "receipts-20261128T060000Z-host-3-abcdef-0001.ndjson", [receipt_line(event_ids("a", 1)[0])]
    )
    descriptor = os.open(held, os.O_RDWR)
    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as its (live) gateway does
    journal = ReceiptJournal(tmp_path, GRACE, clock=Clock(SEVEN + timedelta(seconds=30)))
    try:

        async def scenario() -> None:
            await journal.start()
            await journal.maintain()
            assert held.exists()
            assert (journal.open_files(), journal.lag_seconds()) == (1, 30.0)
            fcntl.flock(descriptor, fcntl.LOCK_UN)  # that gateway died
            await journal.maintain()
            assert (journal.open_files(), journal.lag_seconds()) == (0, 0.0)
            await journal.close()

        loop.run_until_complete(scenario())
    finally:
        os.close(descriptor)
    assert not held.exists()
    assert len(sealed_receipt_files(tmp_path)) == 1


def test_a_crash_between_rename_and_removal_counts_each_receipt_once(tmp_path: Path) -> None:
    ids = event_ids("b", 2)
    name = "receipts-20261128T070000Z-host-4-abcdef-0001"
    write_orphan(tmp_path, f"{name}.ndjson", [receipt_line(event_id) for event_id in ids])
    sealed_dir = tmp_path / "journal" / "hour=20261128T070000Z"
    sealed_dir.mkdir(parents=True)
    pq.write_table(
        pa.Table.from_pylist(
            [{"event_id": i, "batch_id": "e" * 32, "received_at": SEVEN, "message_id": "9"} for i in ids],
            schema=RECEIPT_SCHEMA,
        ),
        sealed_dir / f"{name}.parquet",
    )
    assert [row[0] for row in receipts_view(tmp_path)] == ids


def test_an_unusable_data_dir_fails_at_start(tmp_path: Path, loop: asyncio.AbstractEventLoop) -> None:
    blocked = tmp_path / "data"
    blocked.mkdir()
    (blocked / "journal").write_text("a file where the journal folder should be")
    journal = ReceiptJournal(blocked, GRACE)
    with pytest.raises(JournalError, match=r"cannot use .*journal for the receipt journal"):
        loop.run_until_complete(journal.start())


def test_the_receipts_view_is_empty_before_any_file(tmp_path: Path) -> None:
    connection = open_ledger(tmp_path)
    assert run_sql(connection, "SELECT count(*) FROM receipts").rows == [(0,)]
    types = {row[0]: row[1] for row in run_sql(connection, "DESCRIBE receipts").rows}
    assert types == {
        "event_id": "VARCHAR",
        "batch_id": "VARCHAR",
        "received_at": "TIMESTAMP WITH TIME ZONE",
        "message_id": "VARCHAR",
    }


def test_ids_that_need_escaping_still_make_valid_lines(
    tmp_path: Path, loop: asyncio.AbstractEventLoop
) -> None:
    journal = ReceiptJournal(tmp_path, GRACE, clock=Clock(SIX))
    odd = ['with "quotes"', "back\\slash", "tab\there", "naïve"]

    async def scenario() -> None:
        await journal.start()
        await journal.record("a" * 32, SIX, '"7"', odd)
        await journal.close()

    loop.run_until_complete(scenario())
    rows = receipts_view(tmp_path)
    assert sorted(row[0] for row in rows) == sorted(odd)
    assert {row[3] for row in rows} == {'"7"'}


def test_after_a_slow_sync_bursts_go_through_the_writer_thread_until_syncs_are_fast(
    tmp_path: Path, loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A disk whose first sync is slow (a stand-in: real syncs run, the first one is made to
    # take 0.2 s), then fast; the bound is generous for a shared test machine.
    journal = ReceiptJournal(tmp_path, GRACE, clock=Clock(SIX), sync_on_loop_seconds=0.05)
    real_fdatasync = os.fdatasync
    synced_on: list[str] = []

    def fdatasync(descriptor: int) -> None:
        real_fdatasync(descriptor)
        synced_on.append(threading.current_thread().name)
        if len(synced_on) == 1:
            time.sleep(0.2)

    monkeypatch.setattr("ingest.gateway.journal.os.fdatasync", fdatasync)
    loop_thread = threading.current_thread().name

    async def scenario() -> None:
        await journal.start()
        await journal.record("0" * 32, SIX, "0", event_ids("0", 1))
        assert synced_on == [loop_thread]
        assert not journal._sync_on_loop  # that sync was slow: bursts go to the writer now
        await asyncio.gather(
            *(journal.record(f"{n:032x}", SIX, str(n), event_ids(str(n), 5)) for n in range(1, 21))
        )
        assert synced_on[1] != loop_thread  # the burst went through the writer thread
        assert journal._sync_on_loop  # where the sync was fast: back on the loop
        before = len(synced_on)
        await journal.record("f" * 32, SIX, "99", event_ids("f", 1))
        assert synced_on[before:] == [loop_thread]
        await journal.close()

    loop.run_until_complete(scenario())
    assert len(receipts_view(tmp_path)) == 102
