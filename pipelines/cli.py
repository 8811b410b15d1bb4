"""``playledger``: one command whose subcommands start every part of the system."""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import decimal
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]

LOG = logging.getLogger("playledger")


def _configure_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Beam and the Google clients narrate every bundle and retry at INFO.
    for noisy in ("apache_beam", "google", "urllib3", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _cmd_up(args: argparse.Namespace, extra: list[str]) -> int:
    from pipelines.stack import LocalStack, StackError, StackSettings

    stack = LocalStack(
        StackSettings(data_dir=Path(args.data_dir), gateway_port=args.gateway_port, pipeline_args=extra)
    )
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stack.start()
    except StackError as error:
        LOG.error("%s", error)
        return 1
    LOG.info(
        "playledger is up: POST %s/v1/events (API key in %s); ledger under %s. Ctrl-C stops it.",
        stack.gateway_url,
        stack.data_dir / "local-api-key",
        stack.data_dir / "ledger",
    )
    failed = False
    while not stop.wait(1.0):
        try:
            stack.check()
        except StackError as error:
            LOG.error("%s: stopping everything", error)
            failed = True
            break
    status = stack.stop()
    LOG.info("playledger stopped")
    return 1 if failed else status


def _cmd_demo(args: argparse.Namespace, extra: list[str]) -> int:
    from pipelines.demo import run_demo

    return run_demo(events=args.events, seed=args.seed, keep_dir=Path(args.keep) if args.keep else None)


def _cmd_gateway(args: argparse.Namespace, extra: list[str]) -> int:
    from ingest.gateway import serve
    from ingest.settings import GatewaySettings

    try:
        settings = GatewaySettings.from_env(host=args.host, port=args.port)
    except ValueError as error:
        LOG.error("gateway not started: %s", error)
        return 2
    serve(settings)
    return 0


def _cmd_pipeline_stream(args: argparse.Namespace, extra: list[str]) -> int:
    from pipelines.streaming import run

    try:
        return run(extra)
    except ValueError as error:
        LOG.error("pipeline not started: %s", error)
        return 2


def _json_value(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return str(value)  # exact: a float would round money
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return value


def _cmd_ledger_sql(args: argparse.Namespace, extra: list[str]) -> int:
    from ledger.views import ReadOnlyQueryError, open_ledger, run_sql

    try:
        result = run_sql(open_ledger(args.data_dir), args.sql)
    except ReadOnlyQueryError as error:
        LOG.error("%s", error)
        return 2
    except Exception as error:  # duckdb's errors say what is wrong with the SQL
        LOG.error("query failed: %s", error)
        return 1
    if args.format == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(result.columns)
        writer.writerows([[_json_value(v) for v in row] for row in result.rows])
    elif args.format == "json":
        rows = [{c: _json_value(v) for c, v in zip(result.columns, row, strict=True)} for row in result.rows]
        json.dump(rows, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(*result.columns)
        for row in result.rows:
            table.add_row(*("NULL" if v is None else str(_json_value(v)) for v in row))
        Console().print(table)
        Console(stderr=True).print(f"{len(result.rows)} row(s)")
    return 0


def _port(text: str) -> int:
    port = int(text)
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port between 1 and 65535, got {port}")
    return port


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="playledger", description="Play events in, an exact royalty ledger out."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser(
        "up",
        help="run the local stack (emulator, gateway, pipeline) until Ctrl-C",
        description="Run the local stack in the foreground. Unknown flags (e.g. --period-seconds 60) "
        "go to the streaming pipeline.",
    )
    up.add_argument("--data-dir", required=True)
    up.add_argument("--gateway-port", type=_port, default=8080)
    up.set_defaults(handler=_cmd_up, takes_extra=True)

    demo = commands.add_parser("demo", help="send generated plays through the stack and print balances")
    demo.add_argument("--events", type=int, default=3000, help="unique plays to send (default 3000)")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--keep", metavar="DIR", help="keep the data in DIR instead of a temporary directory")
    demo.set_defaults(handler=_cmd_demo, takes_extra=False)

    gateway = commands.add_parser("gateway", help="run the ingestion gateway (keys from PLAYLEDGER_API_KEYS)")
    gateway.add_argument("--host", default="127.0.0.1")
    gateway.add_argument("--port", type=int, default=8080)
    gateway.set_defaults(handler=_cmd_gateway, takes_extra=False)

    pipeline = commands.add_parser("pipeline", help="run a royalty pipeline")
    pipelines = pipeline.add_subparsers(dest="pipeline", required=True, metavar="PIPELINE")
    stream = pipelines.add_parser(
        "stream",
        add_help=False,
        help="the streaming pipeline (see `playledger pipeline stream --help`)",
    )
    stream.set_defaults(handler=_cmd_pipeline_stream, takes_extra=True)

    ledger = commands.add_parser("ledger", help="query the ledger")
    ledgers = ledger.add_subparsers(dest="ledger", required=True, metavar="ACTION")
    sql = ledgers.add_parser(
        "sql",
        help="run read-only SQL over the views ledger, balances, dead_letters",
    )
    sql.add_argument("--data-dir", required=True)
    sql.add_argument("--format", choices=("table", "csv", "json"), default="table")
    sql.add_argument("sql", help='e.g. "SELECT * FROM balances ORDER BY amount DESC"')
    sql.set_defaults(handler=_cmd_ledger_sql, takes_extra=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``playledger`` command."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not args.takes_extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    _configure_logging(args.verbose)
    status: int = args.handler(args, extra)
    return status


if __name__ == "__main__":
    sys.exit(main())
