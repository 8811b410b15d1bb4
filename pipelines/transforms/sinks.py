"""Appending panes as Parquet files, and writing a period's final ledger: durable files only.

Beam's ``fileio.WriteToFiles`` swallows a failed rename (it assumes a retried bundle),
which on a missing partition folder loses the pane silently, and ``WriteToParquet`` is
unsafe in streaming. Here every pane becomes one file written through the stored
record's one durable write (``ledger.storage``) or, on a remote file system, Beam's
``FileSystems`` create-then-rename; every failure raises, so the runner retries or the
pipeline fails loudly, and a reader never sees half a file.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from ledger import storage
from ledger.counters import Counter
from ledger.tables import LEDGER_SCHEMA, partition_name
from pipelines.transforms.metrics import beam_counter
from pipelines.transforms.play_batches import ArrowTableCoder

__all__ = [
    "PaneCounters",
    "RequiredSinks",
    "Unwritten",
    "WriteFinalLedger",
    "WritePaneFiles",
    "WritePeriodRows",
    "write_empty_final_period",
    "write_empty_period",
    "write_parquet_atomically",
]


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

    Local paths go through ``ledger.storage``'s durable write; remote ones (``gs://``) are
    written whole under ``temp_dir`` (outside the table, so readers never glob it) and
    renamed into place by Beam's ``FileSystems``.
    """
    if _is_local(final_dir):
        return str(storage.write_parquet_atomically(rows, schema, Path(final_dir), Path(temp_dir), file_stem))
    table = (
        rows.cast(schema) if isinstance(rows, pa.Table) else pa.Table.from_pylist(list(rows), schema=schema)
    )
    name = f"{file_stem}.parquet"
    temp_path = FileSystems.join(temp_dir, f"{uuid.uuid4().hex}-{name}")
    final_path = FileSystems.join(final_dir, name)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    with FileSystems.create(temp_path) as handle:
        handle.write(buffer.getvalue())
    FileSystems.rename([temp_path], [final_path])
    return final_path


class Unwritten(beam.PTransform):
    """A sink that writes nothing and returns its input: a table left to the caller, said explicitly.

    For tests that assert on a pipeline's outputs themselves; a pipeline built without a
    sink for an output fails instead (see ``pipelines.streaming.Sinks``).
    """

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        return rows


class RequiredSinks:
    """Base of a pipeline's sinks (a frozen dataclass of ``beam.PTransform`` fields): every output has one.

    Like Beam's ``ErrorHandler``, which refuses a pipeline whose error output nobody
    consumes: a pipeline without a dead-letter sink would drop dead letters silently. A
    test that asserts on an output itself says so with ``Unwritten()`` (``unwritten()``).
    """

    def __post_init__(self) -> None:
        missing = [field.name for field in dataclasses.fields(self) if getattr(self, field.name) is None]  # type: ignore[arg-type]
        if missing:
            raise ValueError(
                f"no sink for {', '.join(missing)}: every output must be written "
                "(Unwritten() leaves one to the caller, e.g. a test that asserts on it)"
            )

    @classmethod
    def unwritten(cls) -> Self:
        """Every table left in the pipeline for the caller to assert on (tests)."""
        return cls(**{field.name: Unwritten() for field in dataclasses.fields(cls)})  # type: ignore[arg-type]


@dataclass(frozen=True)
class PaneCounters:
    """The counters a table's sink keeps: files and rows written, and optionally a column summed."""

    files: Counter
    rows: Counter
    summed: tuple[str, Counter] | None = None


class _WritePaneFn(beam.DoFn):
    def __init__(self, table_dir: str, temp_dir: str, schema: Any, counters: PaneCounters) -> None:
        self.table_dir = table_dir
        self.temp_dir = temp_dir
        self.schema = schema
        self.counters = counters

    def setup(self) -> None:
        self.files = beam_counter(self.counters.files)
        self.rows = beam_counter(self.counters.rows)
        self.summed = None if self.counters.summed is None else beam_counter(self.counters.summed[1])

    def process(
        self,
        partition_rows: tuple[str, Iterable[list[dict[str, Any]] | pa.Table]],
        pane: Any = beam.DoFn.PaneInfoParam,
    ) -> Iterator[str]:
        partition, parts = partition_rows
        tables = [
            part if isinstance(part, pa.Table) else pa.Table.from_pylist(part, schema=self.schema)
            for part in parts
        ]
        if not tables:
            # An empty pane.
            return
        rows = pa.concat_tables(tables)  # write_parquet_atomically casts to the schema
        if not rows.num_rows:
            return
        # The runner may give no pane index (the direct runner does not): a random
        # suffix keeps every pane's file name unique.
        index = "x" if pane.index is None else str(pane.index)
        path = write_parquet_atomically(
            rows,
            self.schema,
            f"{self.table_dir.rstrip('/')}/{partition}",
            self.temp_dir,
            f"part-{index}-{uuid.uuid4().hex}",
        )
        self.files.inc()
        self.rows.inc(rows.num_rows)
        if self.summed is not None and self.counters.summed is not None:
            self.summed.inc(int(pc.sum(rows[self.counters.summed[0]]).as_py() or 0))
        yield path


class _KeyByPartitionFn(beam.DoFn):
    """Rows (a dict, or a table of them) → ``(partition, rows in it)``."""

    def __init__(self, column: str, time_column: str, seconds: int) -> None:
        self.column = column
        self.time_column = time_column
        self.seconds = seconds

    def partition(self, at: dt.datetime) -> str:
        floored = dt.datetime.fromtimestamp(int(at.timestamp()) // self.seconds * self.seconds, dt.UTC)
        return partition_name(self.column, floored)

    def process(self, element: dict[str, Any] | pa.Table) -> Iterator[tuple[str, Any]]:
        if isinstance(element, dict):
            yield self.partition(element[self.time_column]), [element]
            return
        times = element[self.time_column]
        for at in pc.unique(times).to_pylist():
            yield self.partition(at), element.filter(pc.equal(times, at))


class WritePaneFiles(beam.PTransform):
    """Append each pane's rows as Parquet files under ``table_dir/<column>=<period>/``.

    Elements are rows (dicts), or Arrow tables of rows (a pane's ledger rows travel together).

    ``time_column`` picks the row's partition, floored to ``partition_seconds`` (a
    period's start, or e.g. 60 for minutes); files are written to ``temp_dir`` (keep it
    outside ``table_dir``) and renamed into place; ``counters`` names what the sink counts.
    Returns the paths written.
    """

    def __init__(
        self,
        table_dir: str,
        temp_dir: str,
        schema: Any,
        partition_column: str,
        time_column: str,
        counters: PaneCounters,
        partition_seconds: int = 1,
    ) -> None:
        super().__init__()
        if not table_dir or not temp_dir:
            raise ValueError("table_dir and temp_dir are required")
        if partition_seconds <= 0:
            raise ValueError("partition_seconds must be positive")
        if time_column not in schema.names:
            raise ValueError(f"time_column {time_column!r} is not in the schema")
        self.table_dir = table_dir
        self.temp_dir = temp_dir
        self.schema = schema
        self.partition_column = partition_column
        self.time_column = time_column
        self.counters = counters
        self.partition_seconds = partition_seconds

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        return (
            rows
            | "KeyByPartition"
            >> beam.ParDo(_KeyByPartitionFn(self.partition_column, self.time_column, self.partition_seconds))
            | "GroupPane" >> beam.GroupByKey()
            | "WriteFile"
            >> beam.ParDo(_WritePaneFn(self.table_dir, self.temp_dir, self.schema, self.counters))
        )


# Rows cross the shuffle as Arrow IPC bytes, uncompressed.
_TABLES = ArrowTableCoder()


def _tables_by_period(rows: pa.Table) -> Iterator[tuple[str, bytes]]:
    """A table of ledger rows → ``(period partition, its rows as Arrow IPC)`` per period among them."""
    starts = rows["period_start"]
    for start in pc.unique(starts).to_pylist():
        yield partition_name("period", start), _TABLES.encode(rows.filter(pc.equal(starts, start)))


class _WritePeriodFn(beam.DoFn):
    def __init__(self, table_dir: str, temp_dir: str) -> None:
        self.table_dir = table_dir
        self.temp_dir = temp_dir
        self.rows = beam_counter(Counter.LEDGER_FINAL_ROWS_WRITTEN)

    def process(self, period_tables: tuple[str, Iterable[bytes]]) -> Iterator[str]:
        partition, payloads = period_tables
        ordered = pa.concat_tables(_TABLES.decode(payload) for payload in payloads).sort_by(
            [(name, "ascending") for name in ("rights_holder_id", "track_id", "territory", "product")]
        )
        # One file per period under a fixed name: a recompute replaces it whole, atomically.
        path = write_parquet_atomically(
            ordered, LEDGER_SCHEMA, f"{self.table_dir}/{partition}", self.temp_dir, "ledger"
        )
        self.rows.inc(ordered.num_rows)
        yield path


def write_empty_period(
    table_dir: str, temp_dir: str, period_start: dt.datetime, schema: pa.Schema, file_stem: str
) -> str:
    """A period's file of no rows, replacing any earlier one: "recomputed, nothing"."""
    return write_parquet_atomically(
        schema.empty_table(),
        schema,
        f"{table_dir.rstrip('/')}/{partition_name('period', period_start)}",
        temp_dir,
        file_stem,
    )


def write_empty_final_period(table_dir: str, temp_dir: str, period_start: dt.datetime) -> str:
    """A period's final ledger of no rows, replacing any earlier one: "recomputed, zero"."""
    return write_empty_period(table_dir, temp_dir, period_start, LEDGER_SCHEMA, "ledger")


class _WritePeriodRowsFn(beam.DoFn):
    def __init__(
        self, final_dir: str, temp_dir: str, schema: pa.Schema, file_stem: str, rows_counter: Counter
    ) -> None:
        self.final_dir = final_dir
        self.temp_dir = temp_dir
        self.schema = schema
        self.file_stem = file_stem
        self.rows = beam_counter(rows_counter)

    def process(self, keyed_rows: tuple[str, Iterable[dict[str, Any] | pa.Table]]) -> Iterator[str]:
        dicts: list[dict[str, Any]] = []
        tables: list[pa.Table] = []
        for element in keyed_rows[1]:
            if isinstance(element, pa.Table):
                tables.append(element.cast(self.schema))
            else:
                dicts.append(element)
        rows = pa.concat_tables([pa.Table.from_pylist(dicts, schema=self.schema), *tables])
        # A stable order, so a recompute of unchanged input writes the same rows in the same order.
        order = [name for name in ("counter", "stage", "event_id", "reason") if name in self.schema.names]
        rows = rows.sort_by([(name, "ascending") for name in order])
        path = write_parquet_atomically(rows, self.schema, self.final_dir, self.temp_dir, self.file_stem)
        self.rows.inc(rows.num_rows)
        yield path


class WritePeriodRows(beam.PTransform):
    """A period's rows (dicts or tables of ``schema``) → ``<table_dir>/period=<start>/<file_stem>.parquet``.

    For the tables a recompute writes beside its final ledger (its dead letters and
    counters): the file is replaced whole by a recompute of the period, never appended to. A run that writes
    no rows writes no file; its caller writes an empty one (``write_empty_period``) so an
    earlier recompute's rows do not stand.
    """

    def __init__(
        self,
        table_dir: str,
        temp_dir: str,
        period_start: dt.datetime,
        schema: pa.Schema,
        file_stem: str,
        rows_counter: Counter,
    ) -> None:
        super().__init__()
        self.final_dir = f"{table_dir.rstrip('/')}/{partition_name('period', period_start)}"
        self.temp_dir = temp_dir.rstrip("/")
        self.schema = schema
        self.file_stem = file_stem
        self.rows_counter = rows_counter

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        return (
            rows
            | "KeyByPeriod" >> beam.WithKeys(self.final_dir)
            | "GatherPeriod" >> beam.GroupByKey()
            | "WriteFile"
            >> beam.ParDo(
                _WritePeriodRowsFn(
                    self.final_dir, self.temp_dir, self.schema, self.file_stem, self.rows_counter
                )
            )
        )


class WriteFinalLedger(beam.PTransform):
    """A period's ledger rows → ``<table_dir>/period=<start>/ledger.parquet``, replaced whole.

    Elements are Arrow tables of rows (``AttributeCounts`` gives one per pane).
    """

    def __init__(self, table_dir: str, temp_dir: str) -> None:
        super().__init__()
        self.table_dir = table_dir.rstrip("/")
        self.temp_dir = temp_dir.rstrip("/")

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        return (
            rows
            | "TablePerPeriod" >> beam.FlatMap(_tables_by_period)
            | "GatherPeriod" >> beam.GroupByKey()
            | "WriteFile" >> beam.ParDo(_WritePeriodFn(self.table_dir, self.temp_dir))
        )
