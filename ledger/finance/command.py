"""``playledger ledger close``, ``statement``, ``dsr`` and ``db``: arguments and what an analyst reads.

Exit codes: 0 closed (or already closed with the same inputs, or a provisional run),
2 refused (every reason printed, each naming its period or market), 1 bad input.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

from ledger.catalog import DEFAULT_CATALOG_DIR
from ledger.finance.close import CloseRefused, CloseResult, close_month

__all__ = [
    "add_arguments",
    "add_db_arguments",
    "add_dsr_arguments",
    "add_statement_arguments",
    "run",
    "run_db",
    "run_dsr",
    "run_statement",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``playledger ledger close``."""
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--month", required=True, help="the month to close, e.g. 2026-11")
    parser.add_argument(
        "--revenue",
        required=True,
        type=Path,
        help="CSV month,territory,product,royalty_pool_micros,currency: each market's pool",
    )
    parser.add_argument("--catalog-dir", type=Path, default=DEFAULT_CATALOG_DIR)
    parser.add_argument(
        "--provisional",
        action="store_true",
        help="compute from what exists, without the final-data gates; writes nothing",
    )
    parser.add_argument(
        "--min-annual-streams",
        type=int,
        default=0,
        help="leave out tracks with fewer streams over the 12 months up to the close (default 0: off)",
    )
    parser.add_argument("--period-seconds", type=int, default=3600, help="length of an accounting period")


def _micros(amount_micros: int) -> str:
    sign = "-" if amount_micros < 0 else ""
    whole, fraction = divmod(abs(amount_micros), 1_000_000)
    return f"{sign}{whole:,}.{fraction:06d}"


def _report(result: CloseResult) -> str:
    by_holder: dict[tuple[str, str], int] = defaultdict(int)
    for line in result.lines:
        by_holder[(line.rights_holder_id, result.markets[(line.territory, line.product)].currency)] += (
            line.amount_micros
        )
    out = [f"{'rights_holder_id':<20} {'currency':<8} {'amount':>20}"]
    for (holder, currency), amount in sorted(by_holder.items()):
        out.append(f"{holder:<20} {currency:<8} {_micros(amount):>20}")
    pools = sum(market.pool_micros for market in result.markets.values())
    out.append(f"{len(result.lines)} lines; pools {_micros(pools)}, allocated {_micros(result.total_micros)}")
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    """Run ``playledger ledger close``; the exit code."""
    try:
        result = close_month(
            args.data_dir,
            args.month,
            args.revenue,
            catalog_dir=args.catalog_dir,
            provisional=args.provisional,
            min_annual_streams=args.min_annual_streams,
            period_seconds=args.period_seconds,
        )
    except CloseRefused as refused:
        print(str(refused), file=sys.stderr)
        return 2
    except (OSError, ValueError) as error:
        print(f"close failed: {error}", file=sys.stderr)
        return 1
    if result.provisional:
        print(f"PROVISIONAL close of {result.month} (not final, nothing written)")
    elif result.unchanged:
        print(f"{result.month} is already closed as v{result.version} with the same inputs: nothing written")
    elif result.version == 1:
        print(f"closed {result.month} as v1: {result.path}")
    else:
        print(
            f"closed {result.month} again as v{result.version}: "
            f"{result.adjustments} adjustment line(s) in {result.path}"
        )
    print(_report(result))
    return 0


def add_statement_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``playledger ledger statement``."""
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--month", required=True, help="a closed month, e.g. 2026-11")
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--rights-holder", help="one rights holder id (or UNMATCHED, UNALLOCATED)")
    who.add_argument("--all", action="store_true", help="every account in the month's close")
    parser.add_argument(
        "--out", type=Path, help="folder for the CSV and HTML (default DIR/statements/month=M)"
    )


def run_statement(args: argparse.Namespace) -> int:
    """Run ``playledger ledger statement``: 0 written, 1 unknown month or rights holder."""
    from ledger.finance.statement import build_statement, rights_holders_closed, write_statement

    data_dir = args.data_dir.resolve()
    out_dir = args.out or data_dir / "statements" / f"month={args.month}"
    try:
        holders = rights_holders_closed(data_dir, args.month) if args.all else [args.rights_holder]
        for holder in holders:
            statement = build_statement(data_dir, args.month, holder)
            csv_path, html_path = write_statement(statement, out_dir)
            print(
                f"{holder}: {_micros(statement.amount_micros)} {statement.currency}, "
                f"{statement.streams} streams: {csv_path} {html_path}"
            )
    except ValueError as error:
        print(f"statement failed: {error}", file=sys.stderr)
        return 1
    return 0


def add_dsr_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``playledger ledger dsr``."""
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--month", required=True, help="a closed month, e.g. 2026-11")
    parser.add_argument("--rights-holder", required=True, help="the licensor the report is for")
    parser.add_argument("--out", type=Path, help="folder for the .tsv (default DIR/dsr/month=M)")


def run_dsr(args: argparse.Namespace) -> int:
    """Run ``playledger ledger dsr``: 0 written, 1 unknown month or rights holder."""
    from ledger.finance.dsr import write_dsr

    data_dir = args.data_dir.resolve()
    out_dir = args.out or data_dir / "dsr" / f"month={args.month}"
    try:
        path = write_dsr(data_dir, args.month, args.rights_holder, out_dir)
    except ValueError as error:
        print(f"dsr failed: {error}", file=sys.stderr)
        return 1
    print(path)
    return 0


def add_db_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``playledger ledger db``."""
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--out", type=Path, help="the .duckdb file to write (default DIR/playledger.duckdb)")


def run_db(args: argparse.Namespace) -> int:
    """Run ``playledger ledger db``: 0 written, 1 failed."""
    from ledger.finance.database import write_database

    try:
        print(write_database(args.data_dir, args.out))
    except (OSError, ValueError) as error:
        print(f"db failed: {error}", file=sys.stderr)
        return 1
    return 0
