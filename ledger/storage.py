"""The one durable write: a temp file outside the table, fsynced, renamed into place, folder fsynced.

Every writer of the stored record goes through ``durable_file`` (the pipelines' Parquet
panes, the final ledger, the archiver's buckets and ``_CLOSED`` markers, the gateway's
sealed receipt hours, saved counters), so a reader never sees half a file and a file
that was renamed into place survives a crash, its name included. Standard library and
pyarrow only: the gateway and the archiver use it without importing Beam.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

__all__ = [
    "durable_file",
    "fsync_dir",
    "make_durable_dir",
    "write_bytes_atomically",
    "write_json_atomically",
    "write_parquet_atomically",
]


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (new files, renames) durable."""
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def make_durable_dir(path: Path) -> None:
    """Create ``path`` and any missing parents, each fsynced into its parent."""
    missing: list[Path] = []
    current = path
    while not current.exists():
        missing.append(current)
        current = current.parent
    for folder in reversed(missing):
        folder.mkdir(exist_ok=True)
        fsync_dir(folder.parent)


@contextmanager
def durable_file(final_path: Path, temp_dir: Path | None = None) -> Iterator[IO[bytes]]:
    """A binary file that appears at ``final_path`` whole, durably, once the block ends.

    Written under ``temp_dir`` (default: the final folder's ``.tmp`` sibling; keep it
    outside any folder readers glob), flushed and fsynced, renamed into place and the
    folder fsynced. If the block raises, the temp file is removed and nothing appears.
    The folders are created (and made durable) as needed: a rename into a missing folder
    must never fail silently.
    """
    temp_dir = final_path.parent.parent / ".tmp" if temp_dir is None else temp_dir
    temp_dir.mkdir(parents=True, exist_ok=True)
    make_durable_dir(final_path.parent)
    temp_path = temp_dir / f"{uuid.uuid4().hex}-{final_path.name}"
    try:
        with temp_path.open("wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_path, final_path)
    except BaseException:
        temp_path.unlink(missing_ok=True)
        raise
    fsync_dir(final_path.parent)


def write_bytes_atomically(data: bytes, final_path: Path, temp_dir: Path | None = None) -> Path:
    """Write ``data`` to ``final_path`` through ``durable_file``; return the path."""
    with durable_file(final_path, temp_dir) as handle:
        handle.write(data)
    return final_path


def write_json_atomically(value: Mapping[str, Any], final_path: Path, temp_dir: Path | None = None) -> Path:
    """Write ``value`` as indented, key-sorted JSON through ``durable_file``; return the path."""
    text = json.dumps(value, indent=1, sort_keys=True, default=str) + "\n"
    return write_bytes_atomically(text.encode(), final_path, temp_dir)


def write_parquet_atomically(
    rows: Sequence[dict[str, Any]] | pa.Table,
    schema: pa.Schema,
    final_dir: Path,
    temp_dir: Path,
    file_stem: str,
) -> Path:
    """Write ``rows`` (dicts, or an Arrow table cast to ``schema``) as ``final_dir/<file_stem>.parquet``."""
    table = (
        rows.cast(schema) if isinstance(rows, pa.Table) else pa.Table.from_pylist(list(rows), schema=schema)
    )
    final_path = final_dir / f"{file_stem}.parquet"
    with durable_file(final_path, temp_dir) as handle:
        pq.write_table(table, handle)
    return final_path
