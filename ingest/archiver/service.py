"""The archiver: every play event from the ``archive`` subscription, in hourly Parquet buckets.

A loop of synchronous pulls. Each message is decoded and checked (``archive_messages``)
and held, unacknowledged. Every ``flush_seconds``, or as soon as ``max_buffered_events``
are held, the held events are written as one new Parquet part file per hour bucket
(``ingest.archiver.buckets``), bad input as dead-letter files, and only once those files are
durable are the messages acknowledged. Then due buckets are closed and the counters
saved. So a crash (even ``kill -9``) loses nothing: a message not yet acknowledged is
delivered again after its ack deadline. A message written but not yet acknowledged when
the process died is archived twice, whole and with the same ``message_id``; the batch
recompute de-duplicates by ``event_id``.

Run it with ``playledger archive --data-dir DIR``; SIGTERM or SIGINT writes out and
acknowledges what is held, then exits 0. See ``runbooks/archive.md``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar

import google.cloud.pubsub_v1 as pubsub_v1
import msgspec
from google.api_core import exceptions as gexc
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from ingest.archiver.buckets import HourBuckets
from ingest.archiver.messages import HeldMessage, hold_message
from ledger.counters import save_counters
from ledger.storage import make_durable_dir, write_parquet_atomically
from ledger.tables import ARCHIVE_DIR, DEAD_LETTER_SCHEMA, DEAD_LETTERS_DIR, partition_name
from schemas.settings import PositiveNumber, Settings

__all__ = [
    "COUNTERS_FILE",
    "Archiver",
    "ArchiverCounters",
    "ArchiverSettings",
    "load_archiver_counters",
    "run_archiver",
]

LOG = logging.getLogger(__name__)

COUNTERS_FILE = "metrics/archiver_counters.json"
TEMP_DIR = ".tmp/archiver"  # outside archive/ and dead_letters/, so no reader globs it
_ACK_CHUNK = 1000  # ack ids per request: well under Pub/Sub's request size limit
_TRANSIENT = (
    gexc.ServiceUnavailable,
    gexc.InternalServerError,
    gexc.Aborted,
    gexc.DeadlineExceeded,
    gexc.Unknown,
)
_RETRY_SECONDS = 60.0


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class ArchiverSettings(Settings, frozen=True, kw_only=True):
    """Where the archive goes, what feeds it, and how often it is flushed and closed.

    ``ack_deadline_seconds`` ``None`` takes the subscription's own deadline; held
    messages get their deadline extended before it can run out, so a slow flush does
    not cause a redelivery.
    """

    setting_kind: ClassVar[str] = "archiver"

    data_dir: Path
    subscription: Annotated[
        str,
        msgspec.Meta(
            pattern="^projects/[^/]+/subscriptions/[^/]+$",
            description="must be projects/<project>/subscriptions/<id>",
        ),
    ]
    grace_seconds: Annotated[int, msgspec.Meta(ge=0, description="must not be negative")] = 600
    flush_seconds: PositiveNumber = 2.0
    max_buffered_events: Annotated[int, msgspec.Meta(gt=0, description="must be positive")] = 50_000
    max_messages_per_pull: Annotated[
        int, msgspec.Meta(ge=1, le=1000, description="must be between 1 and 1000")
    ] = 100
    pull_timeout_seconds: PositiveNumber = 2.0
    ack_deadline_seconds: (
        Annotated[int, msgspec.Meta(ge=1, le=600, description="must be between 1 and 600")] | None
    ) = None


@dataclass
class ArchiverCounters:
    """Counters on every branch, cumulative over restarts of one data directory.

    Once everything pulled is flushed, ``acked == messages_pulled`` and
    ``dead_letters == messages_undecodable + events_invalid``.
    """

    messages_pulled: int = 0
    messages_redelivered: int = 0
    heartbeats: int = 0
    messages_undecodable: int = 0
    events_invalid: int = 0
    events_archived: int = 0
    dead_letters: int = 0
    skewed: int = 0
    files_written: int = 0
    dead_letter_files_written: int = 0
    buckets_closed: int = 0
    lease_extensions: int = 0
    acked: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters by name, as saved."""
        return dataclasses.asdict(self)


def load_archiver_counters(data_dir: Path) -> ArchiverCounters:
    """The counters the archiver last saved under ``data_dir`` (zeros before the first save)."""
    try:
        saved: dict[str, Any] = json.loads((Path(data_dir) / COUNTERS_FILE).read_text())
    except FileNotFoundError:
        return ArchiverCounters()
    known = {f.name for f in dataclasses.fields(ArchiverCounters)}
    return ArchiverCounters(**{name: int(value) for name, value in saved.items() if name in known})


def _chunks(items: Sequence[str]) -> Iterator[list[str]]:
    for start in range(0, len(items), _ACK_CHUNK):
        yield list(items[start : start + _ACK_CHUNK])


class Archiver:
    """Pulls the archive subscription into hour buckets; acknowledges only what is durable.

    ``clock`` gives the UTC time that decides buckets and closing (tests drive it);
    flush cadence and leases use the monotonic clock. Call ``start()`` first.
    """

    def __init__(self, settings: ArchiverSettings, clock: Callable[[], dt.datetime] = _utc_now) -> None:
        self.settings = settings
        self.clock = clock
        self.data_dir = settings.data_dir.resolve()
        self.temp_dir = self.data_dir / TEMP_DIR
        self.counters = ArchiverCounters()
        self.ack_deadline_seconds = settings.ack_deadline_seconds or 0
        self.held: dict[str, HeldMessage] = {}
        self.held_events = 0
        self._buckets: HourBuckets | None = None
        self._subscriber: pubsub_v1.SubscriberClient | None = None
        self._last_flush = time.monotonic()
        self._saved: dict[str, int] | None = None

    def start(self) -> Archiver:
        """Connect, learn the ack deadline, clear stale temp files and load the buckets."""
        self._subscriber = pubsub_v1.SubscriberClient()
        if not self.ack_deadline_seconds:
            subscription = self._subscriber.get_subscription(
                request={"subscription": self.settings.subscription}
            )
            self.ack_deadline_seconds = int(subscription.ack_deadline_seconds)
        # Temp files of a process that died mid-write: never renamed, so never acknowledged.
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        make_durable_dir(self.data_dir / ARCHIVE_DIR)
        self._buckets = HourBuckets(self.data_dir / ARCHIVE_DIR, self.temp_dir, self.settings.grace_seconds)
        self.counters = load_archiver_counters(self.data_dir)
        self._saved = self.counters.as_dict()
        self._last_flush = time.monotonic()
        LOG.info(
            "archiving %s into %s (ack deadline %d s, grace %d s)",
            self.settings.subscription,
            self.data_dir / ARCHIVE_DIR,
            self.ack_deadline_seconds,
            self.settings.grace_seconds,
        )
        return self

    @property
    def subscriber(self) -> pubsub_v1.SubscriberClient:
        if self._subscriber is None:
            raise RuntimeError("Archiver.start() was not called")
        return self._subscriber

    @property
    def buckets(self) -> HourBuckets:
        if self._buckets is None:
            raise RuntimeError("Archiver.start() was not called")
        return self._buckets

    def _retrying(self) -> Retrying:
        return Retrying(
            stop=stop_after_delay(_RETRY_SECONDS),
            wait=wait_exponential(multiplier=0.2, max=5),
            retry=retry_if_exception_type(_TRANSIENT),
            reraise=True,
        )

    def pull(self) -> int:
        """One synchronous pull; hold what it brings. Returns the number of messages."""
        response = None
        for attempt in self._retrying():
            with attempt:
                try:
                    response = self.subscriber.pull(
                        request={
                            "subscription": self.settings.subscription,
                            "max_messages": self.settings.max_messages_per_pull,
                        },
                        timeout=self.settings.pull_timeout_seconds,
                    )
                except gexc.DeadlineExceeded:
                    response = None  # nothing arrived within the timeout
        if response is None:
            return 0
        lease_expires = time.monotonic() + self.ack_deadline_seconds
        for received in response.received_messages:
            self.counters.messages_pulled += 1
            message = received.message
            held = self.held.get(message.message_id)
            if held is not None:
                # Its deadline ran out while held: keep one copy, acknowledge both deliveries.
                self.counters.messages_redelivered += 1
                held.ack_ids.append(received.ack_id)
                held.lease_expires = lease_expires
                continue
            held = hold_message(
                message.message_id,
                received.ack_id,
                bytes(message.data),
                dict(message.attributes),
                message.publish_time,
                lease_expires,
            )
            self.counters.heartbeats += held.heartbeat
            self.counters.messages_undecodable += held.undecodable
            self.counters.events_invalid += len(held.dead_letters) - held.undecodable
            self.held[message.message_id] = held
            self.held_events += len(held.rows)
        return len(response.received_messages)

    def extend_leases(self) -> None:
        """Extend the ack deadline of held messages whose lease could run out before the next look."""
        margin = max(self.ack_deadline_seconds / 2, self.settings.pull_timeout_seconds + 2.0)
        now = time.monotonic()
        expiring = [held for held in self.held.values() if held.lease_expires - now < margin]
        if not expiring:
            return
        ack_ids = [ack_id for held in expiring for ack_id in held.ack_ids]
        for chunk in _chunks(ack_ids):
            for attempt in self._retrying():
                with attempt:
                    self.subscriber.modify_ack_deadline(
                        request={
                            "subscription": self.settings.subscription,
                            "ack_ids": chunk,
                            "ack_deadline_seconds": self.ack_deadline_seconds,
                        }
                    )
        for held in expiring:
            held.lease_expires = now + self.ack_deadline_seconds
        self.counters.lease_extensions += len(ack_ids)

    def flush_due(self) -> bool:
        """Whether the flush period has passed or the held events reached the limit."""
        return (
            time.monotonic() - self._last_flush >= self.settings.flush_seconds
            or self.held_events >= self.settings.max_buffered_events
        )

    def write_held(self) -> list[str]:
        """Write every held row durably; return the ack ids that may now be acknowledged.

        One part file per hour bucket and one dead-letter file per minute, all written
        at the same ``archived_at``. The held messages are released.
        """
        self.extend_leases()
        now = self.clock()
        by_hour: dict[dt.datetime, list[dict[str, Any]]] = {}
        dead_by_minute: dict[dt.datetime, list[dict[str, Any]]] = {}
        for held in self.held.values():
            for row in held.rows:
                bucket_hour, skewed = self.buckets.route(row["received_at"], now)
                self.counters.skewed += skewed
                by_hour.setdefault(bucket_hour, []).append(
                    {**row, "bucket_hour": bucket_hour, "archived_at": now}
                )
            for dead in held.dead_letters:
                # dead_at is when the row became durable, on the archiver's clock.
                dead_by_minute.setdefault(now.replace(second=0, microsecond=0), []).append(
                    {**dead, "dead_at": now}
                )
        for bucket_hour, rows in sorted(by_hour.items()):
            self.buckets.write_part(bucket_hour, rows, now)
            self.counters.files_written += 1
            self.counters.events_archived += len(rows)
        for minute, rows in dead_by_minute.items():
            folder = self.data_dir / DEAD_LETTERS_DIR / partition_name("minute", minute)
            stem = f"part-archive-{now.strftime('%Y%m%dT%H%M%S%fZ')}-{uuid.uuid4().hex[:12]}"
            write_parquet_atomically(rows, DEAD_LETTER_SCHEMA, folder, self.temp_dir, stem)
            self.counters.dead_letter_files_written += 1
            self.counters.dead_letters += len(rows)
        ack_ids = [ack_id for held in self.held.values() for ack_id in held.ack_ids]
        self.held.clear()
        self.held_events = 0
        return ack_ids

    def acknowledge(self, ack_ids: Sequence[str]) -> None:
        """Acknowledge messages whose rows are durable."""
        for chunk in _chunks(ack_ids):
            for attempt in self._retrying():
                with attempt:
                    self.subscriber.acknowledge(
                        request={"subscription": self.settings.subscription, "ack_ids": chunk}
                    )
            self.counters.acked += len(chunk)

    def flush(self) -> None:
        """Write what is held, acknowledge it, close due buckets, save the counters."""
        self.acknowledge(self.write_held())
        closed = self.buckets.close_due(self.clock())
        self.counters.buckets_closed += len(closed)
        self._last_flush = time.monotonic()
        totals = self.counters.as_dict()
        if totals != self._saved:
            save_counters(totals, self.data_dir / COUNTERS_FILE)
            self._saved = totals

    def poll_once(self) -> None:
        """One pull, lease upkeep, and a flush when one is due."""
        self.pull()
        if self.flush_due():
            self.flush()
        else:
            self.extend_leases()

    def run(self, stop: threading.Event) -> None:
        """Pull and flush until ``stop`` is set; then write out and acknowledge what is held."""
        while not stop.is_set():
            self.poll_once()
        self.flush()
        LOG.info("archiver stopped: %s", self.counters.as_dict())

    def close(self) -> None:
        """Close the Pub/Sub client (held messages are left to their ack deadline)."""
        if self._subscriber is not None:
            self._subscriber.close()
            self._subscriber = None

    def __enter__(self) -> Archiver:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def run_archiver(settings: ArchiverSettings) -> int:
    """Run the archiver until SIGTERM/SIGINT, then flush and exit 0 (1 if it failed)."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        LOG.info("signal %s: writing out and acknowledging what is held, then stopping", signum)
        stop.set()

    previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        with Archiver(settings) as archiver:
            archiver.run(stop)
        return 0
    except gexc.NotFound as error:
        LOG.error("archiver not started: %s", error)
        return 2
    except Exception:
        # Unacknowledged messages are delivered again after their ack deadline: nothing is lost.
        LOG.exception("archiver failed")
        return 1
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
