"""``playledger reconcile``: tie a data directory's periods, write the report, record the verdicts.

    playledger reconcile --data-dir data [--period START | --from START --to END]
        [--period-seconds N] [--min-stream-ms N] [--out DIR] [--format text|json]

Writes ``summary.json`` and ``exceptions.csv`` under ``--out`` (default
``DIR/reports/reconcile/<period>/`` for one period, ``DIR/reports/reconcile/all/`` for
several), records one verdict per period (kind ``reconcile``), and exits 0 when every
period balances, 1 when any is unbalanced, 3 when any is incomplete (and none
unbalanced), 2 on bad usage or unreadable input.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ledger.catalog import DEFAULT_CATALOG_DIR
from ledger.storage import write_bytes_atomically, write_json_atomically
from ledger.verdicts import record_verdict

if TYPE_CHECKING:
    from ledger.reconcile.ties import PeriodReconciliation

__all__ = ["EXIT_BALANCED", "EXIT_INCOMPLETE", "EXIT_UNBALANCED", "EXIT_USAGE", "add_arguments", "run"]

LOG = logging.getLogger(__name__)

EXIT_BALANCED = 0
EXIT_UNBALANCED = 1
EXIT_USAGE = 2
EXIT_INCOMPLETE = 3
EXCEPTION_COLUMNS = ("period", "check", "event_id", "rights_holder_id", "expected", "found")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``playledger reconcile``."""
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--period", help="one period's start, e.g. 2026-11-28T07:00:00Z")
    parser.add_argument("--from", dest="start", help="first period start (with --to)")
    parser.add_argument("--to", dest="end", help="periods starting before this time (with --from)")
    parser.add_argument("--period-seconds", type=int, default=3600, help="period length (default 3600)")
    parser.add_argument("--min-stream-ms", type=int, default=30_000, help="a stream lasts this long")
    parser.add_argument("--catalog", type=Path, default=DEFAULT_CATALOG_DIR, help="catalog directory")
    parser.add_argument("--out", type=Path, help="report folder (default DATA_DIR/reports/reconcile/...)")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.add_argument("--no-html", action="store_true", help="skip report.html")


def _time(text: str, option: str) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{option} must be an RFC 3339 time like 2026-11-28T07:00:00Z, got {text!r}"
        ) from None
    if moment.tzinfo is None:
        raise ValueError(f"{option} needs a UTC offset: {text!r}")
    return moment.astimezone(dt.UTC)


def _aligned(moment: dt.datetime, period_seconds: int, option: str) -> dt.datetime:
    if int(moment.timestamp()) % period_seconds or moment.microsecond:
        raise ValueError(f"{option} {moment.isoformat()} does not start a period of {period_seconds} s")
    return moment


def periods_of(args: argparse.Namespace) -> list[dt.datetime] | None:
    """The period starts the arguments name (``None``: every period with data); ``ValueError`` if bad."""
    if args.period_seconds <= 0:
        raise ValueError("--period-seconds must be positive")
    if args.period and (args.start or args.end):
        raise ValueError("give --period or --from/--to, not both")
    if args.period:
        return [_aligned(_time(args.period, "--period"), args.period_seconds, "--period")]
    if bool(args.start) != bool(args.end):
        raise ValueError("--from and --to go together")
    if args.start:
        first = _aligned(_time(args.start, "--from"), args.period_seconds, "--from")
        end = _time(args.end, "--to")
        if end <= first:
            raise ValueError("--to must be after --from")
        starts = []
        while first < end:
            starts.append(first)
            first += dt.timedelta(seconds=args.period_seconds)
        return starts
    return None


def overall_status(results: Sequence[PeriodReconciliation]) -> str:
    """``unbalanced`` if any period is, else ``incomplete`` if any is, else ``balanced``."""
    statuses = {result.status for result in results}
    if "unbalanced" in statuses:
        return "unbalanced"
    if "incomplete" in statuses or not results:
        return "incomplete"
    return "balanced"


def exit_status(status: str) -> int:
    return {"balanced": EXIT_BALANCED, "unbalanced": EXIT_UNBALANCED}.get(status, EXIT_INCOMPLETE)


def summary_of(results: Sequence[PeriodReconciliation]) -> dict[str, Any]:
    """The machine-readable verdict (``summary.json``)."""
    return {"periods": [result.summary() for result in results], "status": overall_status(results)}


def _exceptions_csv(results: Sequence[PeriodReconciliation]) -> bytes:
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, EXCEPTION_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for result in results:
        writer.writerows(result.exceptions)
    return buffer.getvalue().encode()


def write_report(results: Sequence[PeriodReconciliation], out: Path, *, html: bool = True) -> dict[str, Path]:
    """``summary.json``, ``exceptions.csv`` (and ``report.html``) under ``out``; their paths."""
    written = {
        "summary": write_json_atomically(summary_of(results), out / "summary.json", out / ".tmp"),
        "exceptions": write_bytes_atomically(_exceptions_csv(results), out / "exceptions.csv", out / ".tmp"),
    }
    if html:
        from ledger.reconcile.report import render_report

        written["report"] = write_bytes_atomically(
            render_report(results, overall_status(results)).encode(), out / "report.html", out / ".tmp"
        )
    return written


def record_verdicts(data_dir: Path, results: Sequence[PeriodReconciliation]) -> list[Path]:
    """One ``reconcile`` verdict per period, stamped with every file read for it."""
    return [
        record_verdict(
            data_dir,
            "reconcile",
            scope={"period_start": result.period_start.isoformat()},
            passed=result.status == "balanced",
            status=result.status,
            files=result.files,
            details=result.summary(),
        )
        for result in results
    ]


def _print_text(results: Sequence[PeriodReconciliation], status: str, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]reconcile: {status.upper()}[/bold] ({len(results)} period(s); report in {out})")
    shown = (
        "receipts",
        "missing_from_archive",
        "archived",
        "first_copies",
        "duplicates",
        "conflicts",
        "redeliveries",
        "dead_lettered",
        "streams",
        "final_plays",
        "final_amount_micros",
        "repriced_amount_micros",
        "provisional_amount_micros",
        "provisional_shortfall_plays",
        "completeness_percent",
        "skew_percent",
        "unexplained",
    )
    for result in results:
        numbers = result.summary()
        table = Table("tie", "value", title=f"{numbers['period_start']}: {numbers['status']}")
        for key in shown:
            table.add_row(key, str(numbers[key]))
        console.print(table)
    for result in results:
        for line in result.not_checked + result.explanations:
            console.print(f"{result.period_start.isoformat()}: {line}")
        for exception in result.exceptions[:20]:
            subject = exception["event_id"] or exception["rights_holder_id"]
            console.print(
                f"{exception['period']}: {exception['check']} {subject}"
                f" expected {exception['expected']}, found {exception['found']}"
            )


def run(args: argparse.Namespace) -> int:
    """``playledger reconcile``; the exit status says the verdict (see the module docstring)."""
    # Imported here: building the CLI's parser must not load DuckDB.
    from ledger.reconcile.ties import ReconcileInputError, reconcile_periods

    try:
        periods = periods_of(args)
        if not args.data_dir.is_dir():
            raise ValueError(f"no data directory {args.data_dir}")
        results = reconcile_periods(
            args.data_dir,
            periods=periods,
            period_seconds=args.period_seconds,
            min_stream_ms=args.min_stream_ms,
            catalog_dir=args.catalog,
        )
    except (ValueError, ReconcileInputError) as error:
        LOG.error("reconcile: %s", error)
        return EXIT_USAGE
    status = overall_status(results)
    label = results[0].period_start.strftime("%Y%m%dT%H%M%SZ") if len(results) == 1 else "all"
    out = args.out or args.data_dir / "reports" / "reconcile" / label
    write_report(results, out, html=not args.no_html)
    record_verdicts(args.data_dir, results)
    if args.format == "json":
        json.dump(summary_of(results), sys.stdout, indent=1, default=str)
        sys.stdout.write("\n")
    else:
        _print_text(results, status, out)
    return exit_status(status)
