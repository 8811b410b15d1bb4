"""Reading the archive for a recompute: the files that can hold a period's plays, as Arrow tables."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from enum import StrEnum

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from apache_beam.io.filesystems import FileSystems

from ledger.counters import Counter
from ledger.tables import ARCHIVE_DIR, ARCHIVE_SCHEMA, CLOSED_MARKER, floor_hour, partition_name
from pipelines.transforms.counting import PLAY_GROUP_COLUMNS
from pipelines.transforms.metrics import beam_counter
from pipelines.transforms.periods import Period

__all__ = [
    "ARCHIVE_COLUMNS",
    "ArchiveReads",
    "ReadArchiveFiles",
    "archive_files",
    "open_hours",
    "period_hours",
]


# The columns the recompute needs; the archive holds more.
ARCHIVE_COLUMNS = [
    "event_id",
    "track_id",
    "territory",
    "product",
    "ms_played",
    "received_at",
    "message_id",
    "user_id",
    "played_at",
]


# Read as Parquet stores them, dictionary-encoded: no string a row to build, and grouped by code.
_DICTIONARY_COLUMNS = PLAY_GROUP_COLUMNS


class ArchiveReads(StrEnum):
    """The two reads of the archive that ``FirstCopiesInPeriod`` takes, as a dict of PCollections."""

    EVENT_IDS = "event_ids"
    """Tables of the ``event_id`` column alone."""
    ROWS = "rows"
    """Tables of every column the recompute needs."""


def archive_files(data_dir: str, period: Period, horizon: dt.timedelta) -> list[str]:
    """Archive files that can hold a copy of a play received in ``period`` or within ``horizon`` before.

    Buckets are hours of receive time; a row that arrived after its hour was closed sits
    in a later bucket, so every bucket from the horizon on is listed and rows are filtered
    by ``received_at``. ``ReadArchiveFiles`` skips, by their statistics, the row groups of
    later buckets that hold no row received before the period's end.
    """
    base = f"{data_dir.rstrip('/')}/{ARCHIVE_DIR}"
    first = partition_name("hour", (period.start - horizon).replace(minute=0, second=0, microsecond=0))
    matches = FileSystems.match([f"{base}/hour=*/*.parquet"])[0].metadata_list
    files = []
    for metadata in matches:
        folder = metadata.path.rstrip("/").split("/")[-2]
        if folder >= first:  # hour=YYYYMMDDTHHMMSSZ sorts as time
            files.append(metadata.path)
    return sorted(files)


def period_hours(period: Period) -> list[str]:
    """The archive's hour folders that receive the period's plays (``hour=YYYYMMDDTHHMMSSZ``)."""
    hours = []
    hour = floor_hour(period.start)
    while hour < period.end:
        hours.append(partition_name("hour", hour))
        hour += dt.timedelta(hours=1)
    return hours


def open_hours(data_dir: str, period: Period) -> list[str]:
    """The period's hour folders without their ``_CLOSED`` marker: plays may still be archived into them."""
    base = f"{data_dir.rstrip('/')}/{ARCHIVE_DIR}"
    return [
        folder
        for folder in period_hours(period)
        if not FileSystems.exists(f"{base}/{folder}/{CLOSED_MARKER}")
    ]


class _ReadRowGroupsFn(beam.DoFn):
    """An archive file → one Arrow table per row group, of ``columns``.

    ``dictionary_columns`` come dictionary-encoded, as Parquet stores them: no string per
    row to build, and a group-by over their codes instead of their text. With
    ``received_before``, a row group whose statistics say every row was received at or
    after it is skipped unread: no such row can be counted, nor make a counted row a
    later copy. Both reads skip the same groups, since they read the same statistics.
    """

    def __init__(
        self,
        columns: Sequence[str],
        dictionary_columns: Sequence[str] = (),
        received_before: dt.datetime | None = None,
    ) -> None:
        self.columns = list(columns)
        self.dictionary_columns = list(dictionary_columns)
        self.received_before = received_before

    def setup(self) -> None:
        self.skipped = beam_counter(Counter.ARCHIVED_ROW_GROUPS_SKIPPED)
        self.format = ds.ParquetFileFormat(
            read_options=ds.ParquetReadOptions(dictionary_columns=set(self.dictionary_columns))
        )
        # Arrow prunes row groups by their statistics; rows of a kept group are all read.
        self.keep = (
            None
            if self.received_before is None
            else pc.field("received_at")
            < pa.scalar(self.received_before, ARCHIVE_SCHEMA.field("received_at").type)
        )

    def process(self, path: str) -> Iterator[pa.Table]:
        with FileSystems.open(path) as handle:
            fragment = self.format.make_fragment(pa.PythonFile(handle, mode="r"))
            groups = fragment.split_by_row_group(self.keep)
            self.skipped.inc(fragment.num_row_groups - len(groups))
            for group in groups:
                yield group.to_table(columns=self.columns)


class ReadArchiveFiles(beam.PTransform):
    """The given archive files, read twice: their event ids, then the rows the recompute counts.

    Both as Arrow tables, one per row group, in a dict keyed by ``ArchiveReads``: the ids
    alone tell ``FirstCopiesInPeriod`` which rows need a shuffle at all. With
    ``received_before`` (the period's end), row groups received wholly at or after it are
    skipped by their statistics.
    """

    def __init__(self, files: Sequence[str], received_before: dt.datetime | None = None) -> None:
        super().__init__()
        self.files = list(files)
        self.received_before = received_before

    def expand(self, p: beam.pvalue.PBegin) -> dict[str, beam.PCollection]:
        # One listing per read: a step waiting for the ids' result must not share a stage with their read.
        return {
            ArchiveReads.EVENT_IDS: p
            | "ListFilesForIds" >> beam.Create(self.files)
            | "ReadEventIds"
            >> beam.ParDo(_ReadRowGroupsFn(["event_id"], (), self.received_before)).with_output_types(
                pa.Table
            ),
            ArchiveReads.ROWS: p
            | "ListFilesForRows" >> beam.Create(self.files)
            | "ReadRows"
            >> beam.ParDo(
                _ReadRowGroupsFn(ARCHIVE_COLUMNS, _DICTIONARY_COLUMNS, self.received_before)
            ).with_output_types(pa.Table),
        }
