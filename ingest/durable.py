"""Durable local files: fsync a folder so new names and renames survive a crash.

Used by every writer that renames a finished file into place (the pipelines' Parquet
writer, the archiver, the gateway's receipt journal). Standard library only, so the
gateway can use it without importing Beam.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["fsync_dir", "make_durable_dir"]


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
