"""The archiver against the real emulator: hour buckets, dead letters, closing, crashes.

Messages are made with the project's codec and published to a test's own topic; the
archive is read back as an auditor would, through the DuckDB ``archive`` view, and as
Parquet files. Bucket time is driven by a test clock and by choosing ``received_at``
values, never by sleeping; the crash test kills a real ``playledger archive`` process
with SIGKILL while a publisher keeps publishing.
"""

from __future__ import annotations

import base64
import collections
import datetime as dt
import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import google.cloud.pubsub_v1 as pubsub_v1
import polling
import pyarrow.parquet as pq
import pytest
from google.api_core import exceptions as gexc

from ingest.archiver.service import (
    COUNTERS_FILE,
    TEMP_DIR,
    Archiver,
    ArchiverSettings,
    load_archiver_counters,
)
from ledger.tables import ARCHIVE_SCHEMA, CLOSED_MARKER
from ledger.views import open_ledger, run_sql
from schemas.codec import (
    ATTR_BATCH_ID,
    ATTR_KIND,
    ATTR_SCHEMA_VERSION,
    KIND_HEARTBEAT,
    encode_batch,
    event_field_names,
)
from schemas.topology import PubSubNames

pytestmark = pytest.mark.emulator

ACK_DEADLINE_SECONDS = 10  # the shortest real Pub/Sub allows: redelivery after a crash is quick
DEADLINE_SECONDS = 60.0
GRACE_SECONDS = 600
DAY = dt.datetime(2026, 11, 28, tzinfo=dt.UTC)


def at(hour: int, minute: int = 0, second: int = 0) -> dt.datetime:
    return DAY.replace(hour=hour, minute=minute, second=second)


class SetClock:
    """A UTC clock the test sets."""

    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def play(received_at: dt.datetime, **changes: Any) -> dict[str, Any]:
    """A valid decoded play event received at ``received_at``."""
    event: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "user_id": "user-archive",
        "track_id": "T00042",
        "played_at": received_at - dt.timedelta(minutes=4),
        "ms_played": 185_000,
        "territory": "SE",
        "product": "premium",
        "context": "playlist",
        "bitrate_kbps": 320,
        "offline": False,
        "device": "android",
        "received_at": received_at,
    }
    event.update(changes)
    return event


def publish(publisher: pubsub_v1.PublisherClient, topic: str, events: list[dict[str, Any]]) -> str:
    """Publish ``events`` as one codec message; return its message id."""
    batch = encode_batch(events, uuid.uuid4().hex)
    message_id: str = publisher.publish(topic, batch.data, **batch.attributes).result(timeout=30)
    return message_id


def publish_raw(publisher: pubsub_v1.PublisherClient, topic: str, data: bytes, **attributes: str) -> str:
    message_id: str = publisher.publish(topic, data, **attributes).result(timeout=30)
    return message_id


@pytest.fixture
def publisher(pubsub_emulator: str) -> Iterator[pubsub_v1.PublisherClient]:
    client = pubsub_v1.PublisherClient()
    yield client
    client.stop()


def make_subscription(names: PubSubNames, ack_deadline_seconds: int) -> str:
    """An archive subscription of the test's topic with its own ack deadline."""
    subscription = f"projects/{names.project}/subscriptions/{names.archive_id}-{ack_deadline_seconds}s"
    subscriber = pubsub_v1.SubscriberClient()
    try:
        subscriber.create_subscription(
            request={"name": subscription, "topic": names.topic, "ack_deadline_seconds": ack_deadline_seconds}
        )
    finally:
        subscriber.close()
    return subscription


@pytest.fixture
def archive_subscription(pubsub_names: PubSubNames) -> str:
    return make_subscription(pubsub_names, ACK_DEADLINE_SECONDS)


def settings(data_dir: Path, subscription: str, **changes: Any) -> ArchiverSettings:
    values: dict[str, Any] = {"grace_seconds": GRACE_SECONDS, "flush_seconds": 0.2, **changes}
    return ArchiverSettings(data_dir=data_dir, subscription=subscription, **values)


def drive(archiver: Archiver, done: Callable[[], bool], what: str, seconds: float = DEADLINE_SECONDS) -> None:
    """Run the archiver's loop until ``done()``; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not done():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}; counters {archiver.counters}")
        archiver.poll_once()


def poll(condition: Callable[[], bool], what: str, seconds: float = DEADLINE_SECONDS) -> None:
    """Check ``condition`` every 0.2 s until it holds; fail after ``seconds`` (``polling.poll``)."""
    polling.poll(condition, bool, what, seconds=seconds, interval=0.2)


def archive_rows(data_dir: Path, columns: str = "*") -> list[dict[str, Any]]:
    """The ``archive`` view as an auditor sees it through DuckDB."""
    result = run_sql(open_ledger(data_dir), f"SELECT {columns} FROM archive")
    return [dict(zip(result.columns, row, strict=True)) for row in result.rows]


def part_files(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "archive").glob("hour=*/*.parquet"))


def nothing_redelivered(subscription: str, seconds: float) -> bool:
    """Whether no message comes back within ``seconds``: everything was acknowledged."""
    subscriber = pubsub_v1.SubscriberClient()
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            try:
                response = subscriber.pull(
                    request={"subscription": subscription, "max_messages": 10}, timeout=3
                )
            except gexc.DeadlineExceeded:
                continue
            if response.received_messages:
                return False
        return True
    finally:
        subscriber.close()


def test_archive_schema_holds_every_play_event_field_then_the_envelope() -> None:
    fields = list(event_field_names())
    assert ARCHIVE_SCHEMA.names[: len(fields)] == fields
    assert ARCHIVE_SCHEMA.names[len(fields) :] == [
        "message_id",
        "batch_id",
        "publish_time",
        "bucket_hour",
        "archived_at",
    ]


def test_archive_view_is_empty_and_typed_before_the_first_file(tmp_path: Path) -> None:
    connection = open_ledger(tmp_path)
    assert run_sql(connection, "SELECT count(*) FROM archive").rows == [(0,)]
    types = {row[0]: row[1] for row in run_sql(connection, "DESCRIBE archive").rows}
    assert types["ms_played"] == "BIGINT"
    assert types["bitrate_kbps"] == "INTEGER"
    assert types["offline"] == "BOOLEAN"
    assert types["bucket_hour"] == types["received_at"] == "TIMESTAMP WITH TIME ZONE"


@pytest.mark.parametrize(
    "changes",
    [
        {"subscription": "archive"},
        {"grace_seconds": -1},
        {"grace_seconds": 1.5},
        {"flush_seconds": 0},
        {"max_buffered_events": 0},
        {"max_messages_per_pull": 1001},
        {"pull_timeout_seconds": -1.0},
        {"ack_deadline_seconds": 0},
    ],
)
def test_bad_settings_are_refused(tmp_path: Path, changes: dict[str, Any]) -> None:
    values: dict[str, Any] = {"data_dir": tmp_path, "subscription": "projects/p/subscriptions/s", **changes}
    with pytest.raises(ValueError):
        ArchiverSettings(**values)


def test_events_land_in_their_hour_buckets_and_bad_input_is_dead_lettered(
    tmp_path: Path,
    pubsub_names: PubSubNames,
    archive_subscription: str,
    publisher: pubsub_v1.PublisherClient,
) -> None:
    topic = pubsub_names.topic
    early = [play(at(9, 40)), play(at(9, 50)), play(at(9, 59, 59)), play(at(9, 0))]
    late = [play(at(10, 0)), play(at(10, 1)), play(at(10, 4, 30))]
    straddling = [play(at(9, 58)), play(at(10, 2)), play(at(9, 59)), play(at(10, 3))]
    good_of_mixed = play(at(10, 3))
    invalid = play(at(10, 3), bitrate_kbps=100)
    published = {
        publish(publisher, topic, early): early,
        publish(publisher, topic, late): late,
        publish(publisher, topic, straddling): straddling,
        publish(publisher, topic, [good_of_mixed, invalid]): [good_of_mixed],
    }
    publish_raw(publisher, topic, b"", **{ATTR_KIND: KIND_HEARTBEAT})
    publish_raw(publisher, topic, b"not an avro batch", **{ATTR_SCHEMA_VERSION: "1", ATTR_BATCH_ID: "b-junk"})

    data_dir = tmp_path / "data"
    clock = SetClock(at(10, 5))
    with Archiver(settings(data_dir, archive_subscription), clock=clock) as archiver:
        drive(archiver, lambda: archiver.counters.acked == 6, "six messages acknowledged")

    # Each event is in the folder of its received_at hour, exactly.
    archive = data_dir / "archive"
    assert sorted(path.name for path in archive.iterdir()) == [
        "hour=20261128T090000Z",
        "hour=20261128T100000Z",
    ]
    assert not list(archive.glob(f"*/{CLOSED_MARKER}"))
    expected = {event["event_id"]: event for events in published.values() for event in events}
    in_folder: dict[str, set[str]] = collections.defaultdict(set)
    for path in part_files(data_dir):
        rows = pq.read_table(path).to_pylist()
        # One part file per bucket and flush: a file's rows share their bucket and flush time.
        assert {row["bucket_hour"] for row in rows} == {
            dt.datetime.strptime(path.parent.name, "hour=%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
        }
        assert {row["archived_at"] for row in rows} == {clock.now}
        in_folder[path.parent.name] |= {row["event_id"] for row in rows}
    assert in_folder == {
        "hour=20261128T090000Z": {e["event_id"] for e in expected.values() if e["received_at"].hour == 9},
        "hour=20261128T100000Z": {e["event_id"] for e in expected.values() if e["received_at"].hour == 10},
    }

    # Through DuckDB: every event whole, once, with its Pub/Sub envelope; heartbeats not at all.
    rows = archive_rows(data_dir)
    assert len(rows) == len(expected) == 12
    message_of = {
        event["event_id"]: message_id for message_id, events in published.items() for event in events
    }
    for row in rows:
        event = expected[row["event_id"]]
        assert {name: row[name] for name in event} == event
        assert row["message_id"] == message_of[row["event_id"]]
        assert row["batch_id"] and row["publish_time"] is not None
        assert row["bucket_hour"] == row["received_at"].replace(minute=0, second=0, microsecond=0)

    dead = run_sql(
        open_ledger(data_dir),
        "SELECT stage, reason, event_id, batch_id, payload_base64 FROM dead_letters "
        "ORDER BY event_id NULLS FIRST",
    ).rows
    assert [(stage, event_id) for stage, _, event_id, _, _ in dead] == [
        ("archive", None),
        ("archive", invalid["event_id"]),
    ]
    assert "not a v1 event batch" in dead[0][1]
    assert dead[0][3] == "b-junk"
    assert base64.b64decode(dead[0][4]) == b"not an avro batch"
    assert dead[1][1] == "bitrate_kbps: must be one of 96|160|320, got 100"
    assert json.loads(base64.b64decode(dead[1][4]))["event_id"] == invalid["event_id"]
    assert [path.parent.name for path in (data_dir / "dead_letters").glob("*/*.parquet")] == [
        "minute=20261128T100500Z"
    ]

    counters = json.loads((data_dir / COUNTERS_FILE).read_text())
    assert counters == {
        "messages_pulled": 6,
        "messages_redelivered": 0,
        "heartbeats": 1,
        "messages_undecodable": 1,
        "events_invalid": 1,
        "events_archived": 12,
        "dead_letters": 2,
        "skewed": 0,
        "files_written": len(part_files(data_dir)),
        "dead_letter_files_written": counters["dead_letter_files_written"],
        "buckets_closed": 0,
        "lease_extensions": 0,
        "acked": 6,
    }
    assert not list((data_dir / TEMP_DIR).iterdir())
    # Acknowledged, heartbeat and junk included: nothing comes back after the ack deadline.
    assert nothing_redelivered(archive_subscription, ACK_DEADLINE_SECONDS + 2)


def test_a_closed_bucket_is_immutable_and_late_arrivals_are_skewed_into_the_open_hour(
    tmp_path: Path,
    pubsub_names: PubSubNames,
    archive_subscription: str,
    publisher: pubsub_v1.PublisherClient,
) -> None:
    topic = pubsub_names.topic
    data_dir = tmp_path / "data"
    archive = data_dir / "archive"
    hour_9, hour_10, hour_11, hour_12 = (archive / f"hour=20261128T{h:02d}0000Z" for h in (9, 10, 11, 12))
    clock = SetClock(at(10, 5))
    on_time = [play(at(9, 30)), play(at(10, 2))]
    publish(publisher, topic, on_time)
    with Archiver(settings(data_dir, archive_subscription), clock=clock) as archiver:
        drive(archiver, lambda: archiver.counters.acked == 1, "the on-time message")
        assert hour_9.is_dir() and hour_10.is_dir()
        assert not (hour_9 / CLOSED_MARKER).exists()

        # 10:10 is 09:00 + 1 h + 600 s of grace: hour 9 closes, hour 10 stays open.
        clock.now = at(10, 10)
        drive(archiver, lambda: archiver.counters.buckets_closed == 1, "hour 9 closed")
        manifest = json.loads((hour_9 / CLOSED_MARKER).read_text())
        closed_files = sorted(path.name for path in hour_9.glob("*.parquet"))
        assert manifest["bucket_hour"] == "2026-11-28T09:00:00+00:00"
        assert sorted(manifest["files"]) == closed_files and manifest["rows"] == 1
        assert not (hour_10 / CLOSED_MARKER).exists()

        late_for_9 = play(at(9, 45))
        publish(publisher, topic, [late_for_9])
        drive(archiver, lambda: archiver.counters.acked == 2, "the late arrival")
        assert archiver.counters.skewed == 1

        # 11:15: hour 10 is past its grace too; an arrival for it goes into hour 11.
        clock.now = at(11, 15)
        late_for_10 = play(at(10, 50))
        publish(publisher, topic, [late_for_10])
        drive(archiver, lambda: archiver.counters.acked == 3, "the arrival for hour 10")
        assert (hour_10 / CLOSED_MARKER).exists()
        assert archiver.counters.skewed == 2 and archiver.counters.buckets_closed == 2

        # 14:00: hours 11 and 12 are due; 12 had no arrivals and is closed empty; 13 is not due.
        clock.now = at(14)
        drive(archiver, lambda: archiver.counters.buckets_closed == 4, "hours 11 and 12 closed")
        assert (hour_11 / CLOSED_MARKER).exists() and (hour_12 / CLOSED_MARKER).exists()
        assert not list(hour_12.glob("*.parquet"))
        assert not (archive / "hour=20261128T130000Z").exists()

    # A restarted archiver takes the markers as given, even with a clock back before 11:10.
    clock.now = at(11, 5)
    late_again = play(at(10, 59))
    publish(publisher, topic, [late_again])
    with Archiver(settings(data_dir, archive_subscription), clock=clock) as restarted:
        drive(restarted, lambda: restarted.counters.acked == 4, "the arrival after the restart")
        assert restarted.counters.skewed == 3  # counters carry on over restarts

    assert sorted(path.name for path in hour_9.glob("*.parquet")) == closed_files  # never touched again
    rows = {row["event_id"]: row for row in archive_rows(data_dir)}
    assert len(rows) == 5
    for event, bucket in ((late_for_9, at(10)), (late_for_10, at(11)), (late_again, at(13))):
        row = rows[event["event_id"]]
        assert row["received_at"] == event["received_at"]
        assert row["bucket_hour"] == bucket
    for event in on_time:
        assert rows[event["event_id"]]["bucket_hour"] == event["received_at"].replace(minute=0)


def test_rows_durable_but_not_acknowledged_are_archived_again_whole(
    tmp_path: Path,
    pubsub_names: PubSubNames,
    archive_subscription: str,
    publisher: pubsub_v1.PublisherClient,
    record_property: Callable[[str, object], None],
) -> None:
    topic = pubsub_names.topic
    data_dir = tmp_path / "data"
    now = dt.datetime.now(dt.UTC)
    before_crash = {publish(publisher, topic, [play(now), play(now)]): 2 for _ in range(3)}
    crashed = Archiver(settings(data_dir, archive_subscription, flush_seconds=3600)).start()
    drive(crashed, lambda: len(crashed.held) == 3, "three messages held")
    ack_ids = crashed.write_held()  # durable on disk ...
    crashed.close()  # ... and the process dies before acknowledging
    # The ack deadline of the dead process runs out now instead of in 10 s.
    subscriber = pubsub_v1.SubscriberClient()
    subscriber.modify_ack_deadline(
        request={"subscription": archive_subscription, "ack_ids": ack_ids, "ack_deadline_seconds": 0}
    )
    subscriber.close()
    after = publish(publisher, topic, [play(now)])

    with Archiver(settings(data_dir, archive_subscription)) as restarted:
        drive(restarted, lambda: restarted.counters.acked == 4, "redelivered and new messages")

    rows = archive_rows(data_dir, "event_id, message_id, archived_at")
    copies = collections.Counter(row["message_id"] for row in rows)
    assert copies == {**{message_id: 2 * 2 for message_id in before_crash}, after: 1}
    per_event = collections.Counter(row["event_id"] for row in rows)
    duplicated = sum(count - 1 for count in per_event.values())
    assert duplicated == 6 and set(per_event.values()) == {1, 2}
    # Each copy is a whole message written by one flush, never a part of one.
    for message_id in before_crash:
        flushes = collections.Counter(row["archived_at"] for row in rows if row["message_id"] == message_id)
        assert sorted(flushes.values()) == [2, 2]
    record_property("duplicated_rows", duplicated)


def test_a_slow_flush_extends_leases_instead_of_being_redelivered(
    tmp_path: Path, pubsub_names: PubSubNames, publisher: pubsub_v1.PublisherClient
) -> None:
    # The emulator allows a 3 s deadline (real Pub/Sub: 10 s at least), so a 6 s flush period outlasts it.
    subscription = make_subscription(pubsub_names, 3)
    now = dt.datetime.now(dt.UTC)
    publish(publisher, pubsub_names.topic, [play(now)])
    publish(publisher, pubsub_names.topic, [play(now)])
    data_dir = tmp_path / "data"
    with Archiver(settings(data_dir, subscription, flush_seconds=6, pull_timeout_seconds=1.0)) as archiver:
        drive(archiver, lambda: archiver.counters.acked == 2, "both messages after one slow flush")
    counters = load_archiver_counters(data_dir)
    assert counters.lease_extensions >= 2
    assert counters.messages_redelivered == 0
    assert counters.events_archived == 2


class Publishing(threading.Thread):
    """Publishes a codec message of ``events_per_message`` fresh events every ``interval`` s."""

    def __init__(self, topic: str, events_per_message: int = 20, interval: float = 0.02) -> None:
        super().__init__(name="publishing", daemon=True)
        self.topic = topic
        self.events_per_message = events_per_message
        self.interval = interval
        self.stopped = threading.Event()
        self.messages: dict[str, list[str]] = {}
        self.failure: BaseException | None = None

    def run(self) -> None:
        publisher = pubsub_v1.PublisherClient()
        try:
            while not self.stopped.wait(self.interval):
                events = [play(dt.datetime.now(dt.UTC)) for _ in range(self.events_per_message)]
                message_id = publish(publisher, self.topic, events)
                self.messages[message_id] = [event["event_id"] for event in events]
        except BaseException as error:
            self.failure = error
        finally:
            publisher.stop()


def test_kill_9_mid_stream_loses_nothing_and_duplicates_only_whole_messages(
    tmp_path: Path,
    pubsub_names: PubSubNames,
    archive_subscription: str,
    record_property: Callable[[str, object], None],
) -> None:
    data_dir = tmp_path / "data"
    command = [
        sys.executable,
        "-m",
        "pipelines.local.cli",
        "archive",
        "--data-dir",
        str(data_dir),
        "--subscription",
        archive_subscription,
        "--flush-seconds",
        "0.5",
    ]
    log = (tmp_path / "archiver.log").open("ab")
    publishing = Publishing(pubsub_names.topic)
    first = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    second: subprocess.Popen[bytes] | None = None
    try:
        publishing.start()
        poll(lambda: len(part_files(data_dir)) >= 4, "the first archiver to write a few flushes")
        first.send_signal(signal.SIGKILL)
        assert first.wait(timeout=10) == -signal.SIGKILL
        published_at_kill = len(publishing.messages)
        rows_at_kill = len(archive_rows(data_dir, "event_id"))

        second = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        poll(lambda: len(publishing.messages) >= published_at_kill + 50, "publishing across the restart")
        publishing.stopped.set()
        publishing.join(timeout=30)
        assert publishing.failure is None
        published = {event_id for event_ids in publishing.messages.values() for event_id in event_ids}

        # What the killed process held unacknowledged comes back after its 10 s ack deadline.
        poll(
            lambda: published <= {row["event_id"] for row in archive_rows(data_dir, "event_id")},
            "every published event in the archive",
        )
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=30) == 0
    finally:
        publishing.stopped.set()
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
        log.close()

    rows = archive_rows(data_dir, "event_id, message_id")
    per_event = collections.Counter(row["event_id"] for row in rows)
    assert set(per_event) == published  # nothing lost, nothing invented
    # A message archived twice is archived whole twice: every event of it has the same count.
    for message_id, event_ids in publishing.messages.items():
        counts = {per_event[event_id] for event_id in event_ids}
        assert len(counts) == 1, f"message {message_id} archived in part: {counts}"
        assert sum(1 for row in rows if row["message_id"] == message_id) == len(event_ids) * counts.pop()
    duplicated_rows = len(rows) - len(per_event)
    duplicated_messages = sum(1 for event_ids in publishing.messages.values() if per_event[event_ids[0]] > 1)
    counters = load_archiver_counters(data_dir)
    assert counters.events_archived <= len(rows)  # rows written just before the kill were never counted
    assert not list((data_dir / TEMP_DIR).iterdir())
    report = (
        f"crash test: published {len(published)} events in {len(publishing.messages)} messages "
        f"({published_at_kill} before the kill, {rows_at_kill} rows archived then); "
        f"archived {len(rows)} rows; duplicated {duplicated_rows} rows "
        f"in {duplicated_messages} whole messages"
    )
    print(report)
    record_property("crash_report", report)
