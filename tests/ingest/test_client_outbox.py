"""The outbox: a play is journaled and queued in one transaction, and leaves only when settled."""

from __future__ import annotations

import json
from pathlib import Path

from ingest.client.outbox import Outbox, PlayRecord


def play(number: int) -> tuple[PlayRecord, dict[str, object]]:
    event_id = f"00000000-0000-4000-8000-{number:012d}"
    record = PlayRecord(
        event_id, "sim-000001", "T00001", 1_790_000_000_000 + number, 45_000, "SE", "premium", False
    )
    return record, {"event_id": event_id, "ms_played": 45_000}


def test_a_play_is_journaled_and_queued_once_however_often_it_is_recorded(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    record, event = play(1)
    assert outbox.record(record, event, recorded_at=10.0, deliver_after=10.0)
    assert not outbox.record(record, event, recorded_at=10.0, deliver_after=10.0)  # a rerun of the same seed
    assert outbox.pending() == 1
    assert list(outbox.plays()) == [record]
    (pending,) = outbox.due(now=10.0, limit=10)
    assert json.loads(pending.payload) == event and not pending.in_doubt


def test_an_event_is_due_only_once_the_device_has_a_network(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    outbox.record(*play(1), recorded_at=10.0, deliver_after=10.0)
    outbox.record(*play(2), recorded_at=20.0, deliver_after=500.0)  # played in a tunnel
    assert [event.event_id for event in outbox.due(now=100.0, limit=10)] == [play(1)[0].event_id]
    later = outbox.due(now=500.0, limit=10)
    assert len(later) == 2 and later[1].waited_for_network
    assert outbox.due(now=500.0, limit=10, exclude={play(1)[0].event_id}) == [later[1]]


def test_settling_removes_accepted_and_keeps_rejected_aside_but_the_journal_stays(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    for number in range(3):
        outbox.record(*play(number), recorded_at=0.0, deliver_after=0.0)
    first, second, third = outbox.due(now=0.0, limit=10)
    outbox.settle([first.event_id, third.event_id], [(second, ["track_id: unknown"])])
    assert outbox.pending() == 0
    assert outbox.rejected_count() == 1
    assert len(list(outbox.plays())) == 3


def test_a_send_marks_events_in_doubt_until_the_gateway_certainly_did_not_take_them(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    outbox.record(*play(1), recorded_at=0.0, deliver_after=0.0)
    event_id = play(1)[0].event_id
    outbox.mark_sending([event_id])
    (pending,) = outbox.due(now=0.0, limit=1)
    assert (pending.attempts, pending.in_doubt) == (1, True)
    outbox.clear_doubt([event_id])
    (pending,) = outbox.due(now=0.0, limit=1)
    assert (pending.attempts, pending.in_doubt) == (1, False)


def test_what_was_recorded_is_there_when_the_file_is_opened_again(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    first = Outbox(path)
    first.record(*play(1), recorded_at=0.0, deliver_after=0.0)
    # No close: a committed play does not wait for one (the kill -9 test proves it across processes).
    second = Outbox(path)
    assert second.pending() == 1 and len(list(second.plays())) == 1
    first.close()
    second.close()
