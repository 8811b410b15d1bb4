"""The receipt journal: a durable record of every event the gateway answered 200 for.

For every accepted batch the gateway appends one line per event,
``{"event_id", "batch_id", "received_at", "message_id"}``, to an hourly file and
``fsync``s it *before* it answers 200. Auditors reconcile the ledger against it: an
``event_id`` in the journal was confirmed published by Pub/Sub (``message_id``) and
must be counted by the pipeline exactly once.

The files are laid out as ``ledger.receipts`` describes (``open/`` NDJSON hours still
being written, ``hour=…/`` sealed Parquet hours). ``<instance>`` in a file's name names
one gateway process, so gateways sharing a directory, or a restarted one, never share a file.

**Group commit.** The receipts of every request that reached the journal in one turn of
the event loop are written and ``fdatasync``'ed together: one sync per burst, not per
request. While syncs are fast (under 0.5 ms, as on an idle local SSD) they run on the
event loop itself, which costs less than handing each burst to a thread and back; once a
sync is slower (a slow disk, or a loaded gateway whose bursts carry many receipts),
bursts go to a writer thread so the loop keeps serving requests while the disk syncs,
until syncs are fast again.

**Sealing.** Once an hour has ended (plus a grace period covering the longest publish
that can still be in flight), its file is converted to Parquet: written to ``tmp/``,
``fsync``'ed, renamed into ``hour=…/`` and only then is the NDJSON file removed. A
receipt that arrives for an hour already sealed goes to a new file of that hour. On
shutdown the gateway seals its own files whatever their hour.

**Crashes.** Each gateway holds an exclusive ``flock`` on its open files. A file nobody
holds a lock on was left by a gateway that died (even by ``kill -9``): it is sealed by
the next gateway that looks (at start and every second after). A torn last line
(never acknowledged, since the 200 waits for the sync) is dropped when sealing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import logging
import os
import queue
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from ledger.receipts import OPEN_DIR, TEMP_DIR, hour_label, hour_of_open_file, sealed_path
from ledger.storage import durable_file, fsync_dir
from ledger.tables import JOURNAL_DIR, RECEIPT_SCHEMA

__all__ = ["JournalError", "ReceiptJournal", "hour_start"]

logger = logging.getLogger(__name__)

_HOUR = timedelta(hours=1)
_RETRY_FAILED_SEAL_SECONDS = 60.0


class JournalError(OSError):
    """Receipts could not be made durable; the message says why."""


def hour_start(moment: datetime) -> datetime:
    """The start (UTC) of the hour ``moment`` falls in."""
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    return moment.replace(minute=0, second=0, microsecond=0)


def _receipt_lines(batch_id: str, received_at: datetime, message_id: str, event_ids: Sequence[str]) -> bytes:
    """One NDJSON line per event."""
    if received_at.tzinfo is not UTC:
        received_at = received_at.astimezone(UTC)
    tail = (
        f',"batch_id":{orjson.dumps(batch_id).decode()},"received_at":"{received_at:%Y-%m-%dT%H:%M:%S.%f}Z",'
        f'"message_id":{orjson.dumps(message_id).decode()}}}\n'
    )
    together = " ".join(event_ids)
    if together.isascii() and together.isprintable() and '"' not in together and "\\" not in together:
        # Nothing to escape (event ids are UUIDs): skip a JSON encoder call per event.
        head = '{"event_id":"'
        return (head + ('"' + tail + head).join(event_ids) + '"' + tail).encode() if event_ids else b""
    return b"".join(b'{"event_id":' + orjson.dumps(event_id) + tail.encode() for event_id in event_ids)


def _complete_length(descriptor: int) -> int:
    """Bytes up to and including the last newline: a torn last line was never acknowledged."""
    size = os.fstat(descriptor).st_size
    position = size
    while position > 0:
        start = max(0, position - 65536)
        chunk = os.pread(descriptor, position - start, start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        position = start
    return 0


def _read_receipts_tolerantly(data: bytes) -> tuple[pa.Table, int]:
    """Parse line by line, skipping lines that are not receipts (garbage after a power loss)."""
    rows = []
    skipped = 0
    for line in data.splitlines():
        try:
            row = orjson.loads(line)
            rows.append(
                {
                    "event_id": str(row["event_id"]),
                    "batch_id": str(row["batch_id"]),
                    "received_at": datetime.fromisoformat(row["received_at"]),
                    "message_id": str(row["message_id"]),
                }
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            skipped += 1
    return pa.Table.from_pylist(rows, schema=RECEIPT_SCHEMA), skipped


def _write_receipts(final_path: Path, temp_dir: Path, batches: Iterable[pa.RecordBatch]) -> int:
    """Write ``batches`` as one Parquet file at ``final_path``, durably; the receipts written."""
    rows = 0
    with durable_file(final_path, temp_dir) as handle:
        writer = pq.ParquetWriter(handle, RECEIPT_SCHEMA)
        try:
            for batch in batches:
                table = pa.Table.from_batches([batch]).cast(RECEIPT_SCHEMA)
                writer.write_table(table)
                rows += table.num_rows
        finally:
            writer.close()
    return rows


def _seal_file(journal_dir: Path, open_path: Path, descriptor: int) -> int:
    """Convert one NDJSON receipt file to Parquet atomically, then remove it; receipts written.

    The caller holds the file's lock through ``descriptor``.
    """
    length = _complete_length(descriptor)
    final_path = sealed_path(journal_dir, open_path)
    rows = 0
    if length > 0:
        temp_dir = journal_dir / TEMP_DIR
        with pa.memory_map(str(open_path), "r") as mapped:
            data = mapped.read_buffer(length)
            try:
                reader = pa_json.open_json(
                    pa.BufferReader(data),
                    read_options=pa_json.ReadOptions(block_size=8 << 20),
                    parse_options=pa_json.ParseOptions(
                        explicit_schema=RECEIPT_SCHEMA, unexpected_field_behavior="error"
                    ),
                )
                rows = _write_receipts(final_path, temp_dir, reader)
            except pa.ArrowInvalid:
                # Not one clean receipt per line: keep every line that is one.
                table, skipped = _read_receipts_tolerantly(data.to_pybytes())
                logger.error("sealing %s: skipped %d line(s) that are not receipts", open_path, skipped)
                rows = _write_receipts(final_path, temp_dir, table.to_batches())
    open_path.unlink(missing_ok=True)
    fsync_dir(open_path.parent)
    return rows


# After a sync slower than this, bursts go to the writer thread: under load the loop has
# requests to serve meanwhile, and on a slow disk it must not stall.
_SYNC_ON_LOOP_SECONDS = 0.0005

_Pending = tuple[datetime, bytes, "asyncio.Future[None]"]
"""Receipts waiting to be written: their hour, their lines, and who waits for the sync."""


@dataclass
class _OpenFile:
    """One of this gateway's NDJSON files: locked, appended to, synced."""

    hour: datetime
    path: Path
    descriptor: int
    broken: bool = False


def _settle(burst: list[_Pending], failures: list[Exception | None]) -> None:
    """On the event loop: tell everyone waiting for a burst whether it is on disk."""
    for (_, _, done), failure in zip(burst, failures, strict=True):
        if done.done():  # the request was cancelled meanwhile
            continue
        if failure is None:
            done.set_result(None)
        else:
            done.set_exception(JournalError(f"receipts not written: {failure}"))


class ReceiptJournal:
    """Hourly receipt files under ``<data_dir>/journal/``, written durably before a 200.

    ``start()`` creates the folders (an unwritable data directory fails here, before the
    gateway listens) and starts the writer thread and sealing; ``record()`` returns once
    the receipts are on disk; ``close()`` writes what is pending and seals this gateway's
    files. ``seal_grace_seconds`` is how long after an hour ends its file stays open for
    receipts of publishes still in flight. A sync slower than ``sync_on_loop_seconds``
    sends the following bursts to the writer thread until one is faster again.
    """

    def __init__(
        self,
        data_dir: Path,
        seal_grace_seconds: float,
        on_sealed: Callable[[Path, int], None] | None = None,
        maintain_every_seconds: float = 1.0,
        clock: Callable[[], float] = time.time,
        sync_on_loop_seconds: float = _SYNC_ON_LOOP_SECONDS,
    ) -> None:
        if seal_grace_seconds < 0:
            raise ValueError(f"seal_grace_seconds must not be negative, got {seal_grace_seconds}")
        self.directory = Path(data_dir) / JOURNAL_DIR
        self._open_dir = self.directory / OPEN_DIR
        self._grace = seal_grace_seconds
        self._on_sealed = on_sealed
        self._maintain_every = maintain_every_seconds
        self._sync_on_loop_seconds = sync_on_loop_seconds
        self._clock = clock
        host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname())[:40] or "host"
        self.instance = f"{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        # The writer thread and the sealing share the open files.
        self._files_lock = threading.Lock()
        self._files: dict[datetime, _OpenFile] = {}
        self._detached: list[_OpenFile] = []  # broken by a failed write: seal, never append
        self._sequence = 0
        self._burst: list[_Pending] = []  # recorded in this turn of the loop, not yet written
        self._sync_on_loop = True
        # Bursts for the writer thread when syncs are slow; None (from close()) ends it.
        self._queue: queue.SimpleQueue[list[_Pending] | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._maintainer: asyncio.Task[None] | None = None
        self._sealer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="journal-sealer")
        self._unsealed_hour_ends: dict[Path, float] = {}
        self._failed_seals: dict[Path, float] = {}
        self._closed = False

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the journal's folders; start the writer thread and sealing in the background."""
        try:
            for folder in (self.directory, self._open_dir, self.directory / TEMP_DIR):
                folder.mkdir(parents=True, exist_ok=True)
            if not os.access(self._open_dir, os.W_OK | os.X_OK):
                raise PermissionError(f"{self._open_dir} is not writable")
        except OSError as error:
            raise JournalError(f"cannot use {self.directory} for the receipt journal: {error}") from None
        self._loop = asyncio.get_running_loop()
        self._writer = threading.Thread(target=self._write_forever, name="journal-writer", daemon=True)
        self._writer.start()
        self._maintainer = self._loop.create_task(self._maintain_forever())

    async def close(self) -> None:
        """Write what is pending, then seal this gateway's files whatever their hour."""
        if self._closed:
            return
        self._closed = True
        if self._maintainer is not None:
            self._maintainer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintainer
        self._flush()
        self._queue.put(None)
        if self._writer is not None:
            await asyncio.to_thread(self._writer.join)
        with self._files_lock:
            files = [*self._files.values(), *self._detached]
            self._files.clear()
            self._detached.clear()
        for open_file in files:
            await self._seal_own(open_file)
        self._sealer.shutdown(wait=True)

    # ---- writing ---------------------------------------------------------------------------

    async def record(
        self, batch_id: str, received_at: datetime, message_id: str, event_ids: Sequence[str]
    ) -> None:
        """Append one receipt per event and return once they are synced to disk.

        Raises ``JournalError`` if they could not be written; the caller must not then
        answer 200.
        """
        if self._closed or self._loop is None:
            raise JournalError("the receipt journal is closed")
        lines = _receipt_lines(batch_id, received_at, message_id, event_ids)
        done: asyncio.Future[None] = self._loop.create_future()
        self._burst.append((hour_start(received_at), lines, done))
        if len(self._burst) == 1:
            # After the callbacks already due: every request recorded meanwhile joins the burst.
            self._loop.call_soon(self._flush)
        await done

    def _flush(self) -> None:
        """On the loop: write and sync the burst here if syncs are fast, else hand it to the writer."""
        burst, self._burst = self._burst, []
        if not burst:
            return
        if self._sync_on_loop:
            _settle(burst, self._write_timed(burst))
        else:
            self._queue.put(burst)

    def _write_timed(self, burst: list[_Pending]) -> list[Exception | None]:
        """Write and sync ``burst``; note whether the sync was fast enough to run on the loop."""
        started = time.perf_counter()
        try:
            with self._files_lock:
                failures = self._write_burst(burst)
        except Exception as error:  # never leave a request waiting on a failed write
            logger.exception("receipt journal write failed")
            failures = [error] * len(burst)
        self._sync_on_loop = time.perf_counter() - started < self._sync_on_loop_seconds
        return failures

    def _write_forever(self) -> None:
        """The writer thread: write and sync the bursts handed over while syncs are slow.

        Bursts queued while one is being synced go out together in the next sync, so the
        syncs per second adapt to the disk instead of to the request rate.
        """
        assert self._loop is not None
        stopping = False
        while not stopping:
            item = self._queue.get()
            burst: list[_Pending] = []
            while True:
                if item is None:
                    stopping = True
                else:
                    burst.extend(item)
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if not burst:
                continue
            failures = self._write_timed(burst)
            try:
                self._loop.call_soon_threadsafe(_settle, burst, failures)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                return

    def _write_burst(self, burst: list[_Pending]) -> list[Exception | None]:
        """Append each hour's lines, then sync each file once (``_files_lock`` held)."""
        by_hour: dict[datetime, list[int]] = {}
        for index, (hour, _, _) in enumerate(burst):
            by_hour.setdefault(hour, []).append(index)
        failures: list[Exception | None] = [None] * len(burst)
        for hour, indexes in by_hour.items():
            try:
                open_file = self._file_for(hour)
                data = b"".join(burst[index][1] for index in indexes)
                view = memoryview(data)
                while view:
                    written = os.write(open_file.descriptor, view)
                    view = view[written:]
                os.fdatasync(open_file.descriptor)
            except OSError as error:
                logger.error("receipt journal write failed for hour %s: %s", hour_label(hour), error)
                broken = self._files.pop(hour, None)
                if broken is not None:
                    # A partial write may have left a torn line: never append after it.
                    broken.broken = True
                    self._detached.append(broken)
                for index in indexes:
                    failures[index] = error
        return failures

    def _file_for(self, hour: datetime) -> _OpenFile:
        existing = self._files.get(hour)
        if existing is not None:
            return existing
        self._sequence += 1
        path = self._open_dir / f"receipts-{hour_label(hour)}-{self.instance}-{self._sequence:04d}.ndjson"
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fsync_dir(self._open_dir)  # the new file's name must survive a crash too
        except OSError:
            os.close(descriptor)
            raise
        open_file = _OpenFile(hour, path, descriptor)
        self._files[hour] = open_file
        return open_file

    # ---- sealing ---------------------------------------------------------------------------

    async def _maintain_forever(self) -> None:
        while True:
            try:
                await self.maintain()
            except Exception:
                logger.exception("receipt journal maintenance failed; retrying")
            await asyncio.sleep(self._maintain_every)

    async def maintain(self) -> None:
        """Seal this gateway's hours that are over and every orphaned file; update the lag."""
        now = self._clock()
        loop = asyncio.get_running_loop()
        # In the sealer thread: taking the files' lock may wait for a sync, the loop must not.
        due = await loop.run_in_executor(self._sealer, self._detach_due, now)
        for open_file in due:
            await self._seal_own(open_file)
        await loop.run_in_executor(self._sealer, self._seal_orphans, now)

    def _detach_due(self, now: float) -> list[_OpenFile]:
        """Take this gateway's files that are due for sealing out of the writer's hands."""
        with self._files_lock:
            due = [
                open_file
                for open_file in self._files.values()
                if (open_file.hour + _HOUR).timestamp() + self._grace <= now
            ]
            for open_file in due:
                del self._files[open_file.hour]
            due.extend(self._detached)
            self._detached.clear()
        return due

    async def _seal_own(self, open_file: _OpenFile) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(
                self._sealer, self._seal_and_report, open_file.path, open_file.descriptor
            )
        except Exception:
            # The file stays in open/; once this gateway has closed it, the orphan sweep retries.
            logger.exception("could not seal %s; it will be retried as an orphan", open_file.path)
        finally:
            os.close(open_file.descriptor)

    def _seal_and_report(self, path: Path, descriptor: int) -> None:
        rows = _seal_file(self.directory, path, descriptor)
        logger.info("sealed %s: %d receipt(s)", sealed_path(self.directory, path), rows)
        if self._on_sealed is not None:
            self._on_sealed(path, rows)

    def _seal_orphans(self, now: float) -> None:
        """In the sealer thread: seal every open file whose writer is gone; note the lag."""
        with self._files_lock:
            own = {open_file.path for open_file in self._files.values()}
        unsealed: dict[Path, float] = {}
        for path in sorted(self._open_dir.glob("receipts-*.ndjson")):
            hour = hour_of_open_file(path.name)
            if hour is None:
                continue
            hour_end = (hour + _HOUR).timestamp()
            if path in own or self._failed_seals.get(path, 0.0) > now:
                unsealed[path] = hour_end
                continue
            try:
                descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # sealed meanwhile by whoever held it
            try:
                try:
                    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    unsealed[path] = hour_end  # a live gateway holds it
                    continue
                if not path.exists():
                    continue
                logger.warning("sealing %s, left open by a gateway that stopped without sealing it", path)
                try:
                    self._seal_and_report(path, descriptor)
                except Exception:
                    logger.exception("could not seal the orphaned %s", path)
                    self._failed_seals[path] = now + _RETRY_FAILED_SEAL_SECONDS
                    unsealed[path] = hour_end
            finally:
                os.close(descriptor)
        self._unsealed_hour_ends = unsealed

    # ---- observation -----------------------------------------------------------------------

    def lag_seconds(self) -> float:
        """Seconds since the oldest hour with an unsealed file ended; 0 if every ended hour is sealed."""
        now = self._clock()
        ended = [end for end in self._unsealed_hour_ends.values() if end <= now]
        return max(0.0, now - min(ended)) if ended else 0.0

    def open_files(self) -> int:
        """Receipt files not yet sealed (as of the last maintenance pass)."""
        return len(self._unsealed_hour_ends)
