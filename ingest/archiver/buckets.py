"""Hour buckets of the archive: which folder a row goes to, and when a folder closes.

The archive is ``<data-dir>/archive/hour=<YYYYMMDDTHH0000Z>/part-*.parquet``, one
folder per hour of the gateway's ``received_at`` (UTC). Hour ``H`` stays open until
``H + 1 h + grace``; then the archiver writes ``_CLOSED`` into its folder and never
writes there again. A row whose hour is closed goes into the hour that is open now and
is *skewed*: its ``bucket_hour`` is later than the hour of its ``received_at``.

Hours are closed contiguously: from the oldest open folder on, every hour that is due
gets a folder with a ``_CLOSED`` marker, an empty one if nothing arrived in it, so
"``hour=H/_CLOSED`` exists" is the one test a reader needs for "hour ``H`` is final".

Every file is written under a temp folder outside the archive, fsynced, renamed into
place, and its folder fsynced; new folders are fsynced into their parents too, so a
file the archiver has acknowledged messages for survives a power cut.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from ledger.storage import make_durable_dir, write_json_atomically, write_parquet_atomically
from ledger.tables import ARCHIVE_SCHEMA, BUCKET_COLUMN, CLOSED_MARKER, floor_hour, partition_name

__all__ = ["HOUR", "HourBuckets"]

LOG = logging.getLogger(__name__)

HOUR = dt.timedelta(hours=1)
_FOLDER_TIME = "%Y%m%dT%H%M%SZ"


def _folder_hour(name: str) -> dt.datetime | None:
    prefix = f"{BUCKET_COLUMN}="
    if not name.startswith(prefix):
        return None
    try:
        return dt.datetime.strptime(name[len(prefix) :], _FOLDER_TIME).replace(tzinfo=dt.UTC)
    except ValueError:
        return None


class HourBuckets:
    """The archive's hour folders: routing, durable part files, and closing.

    One archiver writes a data directory's archive at a time; this object is its
    memory of which hours are open or closed, loaded from the folders at start.
    """

    def __init__(self, archive_dir: Path, temp_dir: Path, grace_seconds: int) -> None:
        if grace_seconds < 0:
            raise ValueError("grace_seconds must not be negative")
        self.archive_dir = archive_dir
        self.temp_dir = temp_dir
        self.grace = dt.timedelta(seconds=grace_seconds)
        self.open_hours: set[dt.datetime] = set()
        self.closed_hours: set[dt.datetime] = set()
        self._load()

    def _load(self) -> None:
        if not self.archive_dir.is_dir():
            return
        for folder in self.archive_dir.iterdir():
            hour = _folder_hour(folder.name) if folder.is_dir() else None
            if hour is None:
                LOG.warning("not an hour bucket, left alone: %s", folder)
                continue
            if (folder / CLOSED_MARKER).exists():
                self.closed_hours.add(hour)
            else:
                self.open_hours.add(hour)

    def folder(self, hour: dt.datetime) -> Path:
        """The folder of the bucket starting at ``hour``."""
        return self.archive_dir / partition_name(BUCKET_COLUMN, hour)

    def is_closed(self, hour: dt.datetime, now: dt.datetime) -> bool:
        """Whether the bucket of ``hour`` is past its grace period (or marked closed)."""
        return hour in self.closed_hours or hour + HOUR + self.grace <= now

    def open_hour(self, now: dt.datetime) -> dt.datetime:
        """The hour that takes late arrivals: the current one, unless a marker says otherwise."""
        hour = floor_hour(now)
        # Only a clock that went backwards after a close can make the current hour closed.
        while hour in self.closed_hours:
            hour += HOUR
        return hour

    def route(self, received_at: dt.datetime, now: dt.datetime) -> tuple[dt.datetime, bool]:
        """``(bucket_hour, skewed)`` for a row received at ``received_at``, written at ``now``."""
        hour = floor_hour(received_at)
        if self.is_closed(hour, now):
            return self.open_hour(now), True
        return hour, False

    def write_part(self, hour: dt.datetime, rows: Sequence[dict[str, Any]], archived_at: dt.datetime) -> Path:
        """Write ``rows`` as one new, durable part file in the open bucket of ``hour``."""
        folder = self.folder(hour)
        if hour in self.closed_hours or (folder / CLOSED_MARKER).exists():
            # Routing never sends a row here; refuse rather than change a closed hour.
            raise RuntimeError(f"bucket {folder.name} is closed and immutable")
        make_durable_dir(folder)
        self.open_hours.add(hour)
        stem = f"part-{archived_at.astimezone(dt.UTC).strftime('%Y%m%dT%H%M%S%fZ')}-{uuid.uuid4().hex[:12]}"
        return write_parquet_atomically(rows, ARCHIVE_SCHEMA, folder, self.temp_dir, stem)

    def due_hours(self, now: dt.datetime) -> list[dt.datetime]:
        """Hours to close at ``now``: every due open folder and the empty hours between."""
        last_due = floor_hour(now - self.grace) - HOUR
        if self.open_hours:
            first = min(self.open_hours)
        elif self.closed_hours:
            first = max(self.closed_hours) + HOUR
        else:
            return []
        due: list[dt.datetime] = []
        hour = first
        while hour <= last_due:
            if hour not in self.closed_hours:
                due.append(hour)
            hour += HOUR
        return due

    def close(self, hour: dt.datetime, now: dt.datetime) -> Path:
        """Close one bucket: write its ``_CLOSED`` manifest atomically; return the marker's path."""
        folder = self.folder(hour)
        # The manifest lets an auditor check later that the folder is what was closed.
        files = {part.name: pq.read_metadata(part).num_rows for part in sorted(folder.glob("*.parquet"))}
        manifest = {
            "bucket_hour": hour.isoformat(),
            "closed_at": now.astimezone(dt.UTC).isoformat(),
            "grace_seconds": int(self.grace.total_seconds()),
            "files": files,
            "rows": sum(files.values()),
        }
        marker = folder / CLOSED_MARKER
        write_json_atomically(manifest, marker, self.temp_dir)
        self.open_hours.discard(hour)
        self.closed_hours.add(hour)
        LOG.info("closed bucket %s: %d files, %d rows", folder.name, len(files), manifest["rows"])
        return marker

    def close_due(self, now: dt.datetime) -> list[dt.datetime]:
        """Close every bucket due at ``now``; return their hours."""
        due = self.due_hours(now)
        for hour in due:
            self.close(hour, now)
        return due
