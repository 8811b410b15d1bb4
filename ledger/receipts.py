"""The gateway's receipt journal as stored: where its files are and how to list them.

One receipt per event the gateway answered 200 for (``ledger.tables.RECEIPT_SCHEMA``).
Layout under ``<data-dir>/journal/``::

    open/receipts-20261128T070000Z-<instance>-0000.ndjson   hours still being written
    hour=20261128T070000Z/receipts-20261128T070000Z-<instance>-0000.parquet   sealed hours
    tmp/                                                    Parquet being written

The hour is that of the gateway's ``received_at``; ``<instance>`` names one gateway
process. The writer is ``ingest.gateway.journal``; readers (the ``receipts`` view,
reconciliation) list files here.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

from ledger.tables import JOURNAL_DIR

__all__ = [
    "OPEN_DIR",
    "TEMP_DIR",
    "hour_label",
    "hour_of_open_file",
    "open_receipt_files",
    "sealed_path",
    "sealed_receipt_files",
]

OPEN_DIR = "open"
TEMP_DIR = "tmp"
_OPEN_NAME = re.compile(r"receipts-(\d{8}T\d{6}Z)-[A-Za-z0-9_.-]+\.ndjson")


def hour_label(start: datetime) -> str:
    """An hour's label in file and folder names, e.g. ``20261128T070000Z``."""
    return start.strftime("%Y%m%dT%H%M%SZ")


def hour_of_open_file(name: str) -> datetime | None:
    """The hour an open receipt file's name says it holds, or ``None`` for any other name."""
    match = _OPEN_NAME.fullmatch(name)
    if match is None:
        return None
    return datetime.strptime(match.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def sealed_path(journal_dir: Path, open_path: Path) -> Path:
    """Where an open receipt file's Parquet goes once its hour is sealed."""
    hour = hour_of_open_file(open_path.name)
    if hour is None:
        raise ValueError(f"not an open receipt file: {open_path.name}")
    return journal_dir / f"hour={hour_label(hour)}" / f"{open_path.stem}.parquet"


def sealed_receipt_files(data_dir: Path) -> list[Path]:
    """The sealed (Parquet) receipt files under ``data_dir``, sorted."""
    return sorted((data_dir / JOURNAL_DIR).glob("hour=*/*.parquet"))


def open_receipt_files(data_dir: Path) -> list[Path]:
    """The receipt files still being written (NDJSON), sorted, without those already sealed.

    A file is both open and sealed only between the rename of its Parquet and its own
    removal, or after a crash in between; the Parquet then holds the same receipts.
    """
    journal_dir = data_dir / JOURNAL_DIR
    return [
        path
        for path in sorted((journal_dir / OPEN_DIR).glob("receipts-*.ndjson"))
        if hour_of_open_file(path.name) is not None and not sealed_path(journal_dir, path).exists()
    ]
