"""The player's on-disk outbox: every play is an event here until the gateway takes it.

One SQLite file (stdlib ``sqlite3``) in WAL mode holds two tables written in one
transaction per play: ``plays``, the journal of every play the population made (the
ground truth), and ``outbox``, the events not yet acknowledged, each with its JSON
exactly as it is sent every time (so ``event_id`` never changes across retries).
A committed play survives ``kill -9``: WAL with ``synchronous=NORMAL`` loses nothing
when the process dies (only an operating-system crash could roll back the last
commits, and paying an fsync per play is not worth it for a simulator).

An event leaves the outbox only when the gateway's 200 reply settles it: accepted
(deleted) or rejected (deleted and kept in ``rejected`` with the reasons). Before each
send its ``in_doubt`` mark is set: if the process dies or the reply is lost, the next
send of that event may be a duplicate, and is counted as one.

A play already in the journal is not recorded again, so rerunning an interrupted
simulation with the same seed and start over the same file makes no play twice.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Outbox", "PendingEvent", "PlayRecord"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS plays (
    event_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    track_id TEXT NOT NULL,
    played_at_ms INTEGER NOT NULL,
    ms_played INTEGER NOT NULL,
    territory TEXT NOT NULL,
    product TEXT NOT NULL,
    offline INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    payload TEXT NOT NULL,
    recorded_at REAL NOT NULL,
    deliver_after REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    in_doubt INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (deliver_after, seq);
CREATE TABLE IF NOT EXISTS rejected (
    event_id TEXT PRIMARY KEY,
    payload TEXT NOT NULL,
    errors TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class PlayRecord:
    """A play as the ground truth records it (``played_at_ms``: epoch milliseconds, UTC)."""

    event_id: str
    user_id: str
    track_id: str
    played_at_ms: int
    ms_played: int
    territory: str
    product: str
    offline: bool


@dataclass(frozen=True)
class PendingEvent:
    """An event waiting in the outbox.

    ``recorded_at`` is when the play ended and ``deliver_after`` when the device next
    had a network (simulated epoch seconds); ``in_doubt``: an earlier send may have
    reached the gateway.
    """

    seq: int
    event_id: str
    payload: str
    recorded_at: float
    deliver_after: float
    attempts: int
    in_doubt: bool

    @property
    def waited_for_network(self) -> bool:
        """Whether the event was buffered while the device was offline."""
        return self.deliver_after > self.recorded_at


class Outbox:
    """The outbox and play journal in the SQLite file at ``path`` (created if missing)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: every write below opens its own explicit transaction.
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=10000")
        with self._transaction():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def record(
        self, play: PlayRecord, event: dict[str, object], recorded_at: float, deliver_after: float
    ) -> bool:
        """Journal ``play`` and queue ``event`` in one transaction; False if it was recorded before."""
        with self._transaction():
            inserted = self._db.execute(
                "INSERT OR IGNORE INTO plays VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    play.event_id,
                    play.user_id,
                    play.track_id,
                    play.played_at_ms,
                    play.ms_played,
                    play.territory,
                    play.product,
                    int(play.offline),
                ),
            ).rowcount
            if inserted:
                self._db.execute(
                    "INSERT INTO outbox (event_id, payload, recorded_at, deliver_after) VALUES (?, ?, ?, ?)",
                    (play.event_id, json.dumps(event, separators=(",", ":")), recorded_at, deliver_after),
                )
        return bool(inserted)

    def due(self, now: float, limit: int, exclude: Collection[str] = ()) -> list[PendingEvent]:
        """Up to ``limit`` events deliverable at ``now``, oldest first, skipping ``exclude``."""
        rows = self._db.execute(
            "SELECT seq, event_id, payload, recorded_at, deliver_after, attempts, in_doubt FROM outbox "
            "WHERE deliver_after <= ? ORDER BY seq LIMIT ?",
            (now, limit + len(exclude)),
        ).fetchall()
        events = [
            PendingEvent(seq, event_id, payload, recorded_at, deliver_after, attempts, bool(in_doubt))
            for seq, event_id, payload, recorded_at, deliver_after, attempts, in_doubt in rows
            if event_id not in exclude
        ]
        return events[:limit]

    def mark_sending(self, event_ids: Sequence[str]) -> None:
        """Before a send: count the attempt and mark the events in doubt until it is settled."""
        with self._transaction():
            self._db.executemany(
                "UPDATE outbox SET attempts = attempts + 1, in_doubt = 1 WHERE event_id = ?",
                [(event_id,) for event_id in event_ids],
            )

    def clear_doubt(self, event_ids: Sequence[str]) -> None:
        """The gateway certainly did not take these (refused connection, 503): not in doubt."""
        with self._transaction():
            self._db.executemany(
                "UPDATE outbox SET in_doubt = 0 WHERE event_id = ?", [(event_id,) for event_id in event_ids]
            )

    def settle(self, accepted: Iterable[str], rejected: Iterable[tuple[PendingEvent, list[str]]]) -> None:
        """After a 200: remove the accepted events, and the rejected ones with their reasons."""
        with self._transaction():
            self._db.executemany(
                "DELETE FROM outbox WHERE event_id = ?", [(event_id,) for event_id in accepted]
            )
            for event, errors in rejected:
                self._db.execute("DELETE FROM outbox WHERE event_id = ?", (event.event_id,))
                self._db.execute(
                    "INSERT OR REPLACE INTO rejected VALUES (?, ?, ?)",
                    (event.event_id, event.payload, json.dumps(errors)),
                )

    def pending(self) -> int:
        """Events not yet settled."""
        count: int = self._db.execute("SELECT count(*) FROM outbox").fetchone()[0]
        return count

    def plays(self) -> Iterator[PlayRecord]:
        """Every play in the journal, by ``played_at``."""
        cursor = self._db.execute(
            "SELECT event_id, user_id, track_id, played_at_ms, ms_played, territory, product, offline "
            "FROM plays ORDER BY played_at_ms, event_id"
        )
        for event_id, user_id, track_id, played_at_ms, ms_played, territory, product, offline in cursor:
            yield PlayRecord(
                event_id, user_id, track_id, played_at_ms, ms_played, territory, product, bool(offline)
            )

    def rejected_count(self) -> int:
        """Events the gateway rejected, ever, in this file."""
        count: int = self._db.execute("SELECT count(*) FROM rejected").fetchone()[0]
        return count

    def close(self) -> None:
        """Close the file (every write is already committed)."""
        self._db.close()
