"""Stored verdicts of checks: what a check found, and on exactly which files.

A check that a later step gates on (``reconcile`` for a period, ``validate`` for a
table) records its verdict under ``<data-dir>/verdicts/<kind>/`` as one JSON file per
run, stamped with every file it read (path, size, modification time, SHA-256). A later
step (the month close) then asks for the latest verdict of a scope and whether it still
describes the files as they are now: a file changed, removed or added since means the
verdict no longer holds, whatever it said.

Kinds and scopes in use: ``reconcile`` with ``{"period_start": <ISO time>}`` (status
``balanced``, ``unbalanced`` or ``incomplete``); ``validate`` with ``{"table": <name>,
"period_start": <ISO time or "*">}`` (status ``passed`` or ``failed``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ledger.storage import write_json_atomically
from ledger.tables import VERDICTS_DIR

__all__ = ["FileStamp", "Verdict", "latest_verdict", "record_verdict", "stamp_files"]

_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileStamp:
    """One file as a check read it."""

    path: str
    size: int
    mtime_ns: int
    sha256: str

    @classmethod
    def of(cls, path: Path) -> FileStamp:
        """Stamp ``path`` as it is now (``OSError`` if it cannot be read)."""
        resolved = path.resolve()
        digest = hashlib.sha256()
        with resolved.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
        stat = resolved.stat()
        return cls(str(resolved), stat.st_size, stat.st_mtime_ns, digest.hexdigest())

    def still_current(self) -> bool:
        """Whether the file exists now with the same size, modification time and content."""
        path = Path(self.path)
        try:
            stat = path.stat()
        except FileNotFoundError:
            return False
        if stat.st_size != self.size:
            return False
        if stat.st_mtime_ns == self.mtime_ns:
            return True
        # Touched but perhaps not changed (a copy, a restore): the content decides.
        return FileStamp.of(path).sha256 == self.sha256


def stamp_files(paths: Iterable[Path]) -> list[FileStamp]:
    """Stamps of ``paths``, sorted by path."""
    return sorted((FileStamp.of(path) for path in paths), key=lambda stamp: stamp.path)


@dataclass(frozen=True)
class Verdict:
    """One stored run of a check."""

    kind: str
    scope: dict[str, str]
    passed: bool
    status: str
    recorded_at: str
    files: list[FileStamp] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    path: str = ""

    def still_current(self) -> bool:
        """Whether every file the check read is still as it was then."""
        return all(stamp.still_current() for stamp in self.files)

    def covers(self, paths: Iterable[Path]) -> bool:
        """Whether the check read exactly ``paths`` (the files a caller would use now), each unchanged."""
        wanted = {str(path.resolve()) for path in paths}
        if wanted != {stamp.path for stamp in self.files}:
            return False
        return self.still_current()


def _verdict_dir(data_dir: Path, kind: str) -> Path:
    if not kind or "/" in kind or kind.startswith("."):
        raise ValueError(f"not a verdict kind: {kind!r}")
    return data_dir / VERDICTS_DIR / kind


def record_verdict(
    data_dir: Path,
    kind: str,
    *,
    scope: Mapping[str, str],
    passed: bool,
    status: str,
    files: Sequence[Path],
    details: Mapping[str, Any] | None = None,
    recorded_at: dt.datetime | None = None,
) -> Path:
    """Store one run's verdict, stamped with the files it read; return the record's path."""
    moment = (recorded_at or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    record = {
        "kind": kind,
        "scope": dict(scope),
        "passed": bool(passed),
        "status": status,
        "recorded_at": moment.isoformat(),
        "files": [asdict(stamp) for stamp in stamp_files(files)],
        "details": dict(details or {}),
    }
    name = f"{moment.strftime('%Y%m%dT%H%M%S%fZ')}-{uuid.uuid4().hex[:8]}.json"
    folder = _verdict_dir(data_dir, kind)
    return write_json_atomically(record, folder / name, data_dir / VERDICTS_DIR / ".tmp")


def _load(path: Path) -> Verdict:
    record = json.loads(path.read_text())
    return Verdict(
        kind=record["kind"],
        scope={str(key): str(value) for key, value in record["scope"].items()},
        passed=bool(record["passed"]),
        status=str(record["status"]),
        recorded_at=str(record["recorded_at"]),
        files=[FileStamp(**stamp) for stamp in record.get("files", [])],
        details=dict(record.get("details", {})),
        path=str(path),
    )


def latest_verdict(data_dir: Path, kind: str, scope: Mapping[str, str]) -> Verdict | None:
    """The newest stored verdict of ``kind`` whose scope is exactly ``scope``, or ``None``.

    A record that cannot be read is a ``ValueError`` naming it: a damaged verdict must not
    pass for a missing one.
    """
    wanted = {str(key): str(value) for key, value in scope.items()}
    folder = _verdict_dir(data_dir, kind)
    # Names start with the UTC time they were recorded: newest last.
    for path in sorted(folder.glob("*.json"), reverse=True):
        try:
            verdict = _load(path)
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ValueError(f"unreadable verdict {path}: {error}") from error
        if verdict.scope == wanted:
            return verdict
    return None
