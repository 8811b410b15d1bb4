"""Durable, atomic Parquet files: write a temp file outside the table, then rename.

Beam's ``fileio.WriteToFiles`` swallows a failed rename (it assumes a retried bundle),
which on a missing partition folder loses the pane silently. Here every failure raises,
so the runner retries or the pipeline fails loudly; a reader never sees half a file.
"""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from ingest.durable import fsync_dir

__all__ = ["write_parquet_atomically"]


def _is_local(path: str) -> bool:
    return "://" not in path


def write_parquet_atomically(
    rows: Sequence[dict[str, Any]] | pa.Table,
    schema: pa.Schema,
    final_dir: str,
    temp_dir: str,
    file_stem: str,
) -> str:
    """Write ``rows`` (dicts, or an Arrow table) as one Parquet file in ``final_dir``; return its path.

    The file is written under ``temp_dir`` (which must be outside the table so readers
    never glob it), flushed to disk, and renamed into place.
    """
    if isinstance(rows, pa.Table):
        table = rows.cast(schema)
    else:
        table = pa.Table.from_pylist(list(rows), schema=schema)
    name = f"{file_stem}.parquet"
    temp_path = FileSystems.join(temp_dir, f"{uuid.uuid4().hex}-{name}")
    final_path = FileSystems.join(final_dir, name)
    if _is_local(final_dir):
        Path(temp_dir).mkdir(parents=True, exist_ok=True)
        Path(final_dir).mkdir(parents=True, exist_ok=True)
        with open(temp_path, "wb") as handle:
            pq.write_table(table, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_path, final_path)
        fsync_dir(Path(final_dir))
        return final_path
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    with FileSystems.create(temp_path) as handle:
        handle.write(buffer.getvalue())
    FileSystems.rename([temp_path], [final_path])
    return final_path
