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
    from pipelines.local.stack import LocalStack, StackError, StackSettings

    cdn_port = {} if args.cdn_port is None else {"cdn_port": args.cdn_port}
    stack = LocalStack(
        StackSettings(
            data_dir=Path(args.data_dir),
            gateway_port=args.gateway_port,
            pipeline_args=tuple(extra),
            **cdn_port,
        )
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
        "playledger is up: POST %s/v1/events (API key in %s); CDN on %s; ledger under %s. Ctrl-C stops it.",
        stack.gateway_url,
        stack.data_dir / "local-api-key",
        stack.cdn_url,
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
    from pipelines.local.demo import run_demo

    return run_demo(events=args.events, seed=args.seed, keep_dir=Path(args.keep) if args.keep else None)


def _cmd_gateway(args: argparse.Namespace, extra: list[str]) -> int:
    from ingest.gateway.app import GatewayStartError, serve
    from ingest.gateway.logs import configure_json_logging
    from ingest.gateway.settings import GatewaySettings

    configure_json_logging(args.verbose)
    options = ["host", "port", "data_dir", "max_events", "max_body_bytes", "rate_limit"]
    options += ["max_in_flight_publishes", "publish_timeout_seconds", "keys_poll_seconds"]
    overrides = {name: getattr(args, name) for name in options if getattr(args, name) is not None}
    try:
        settings = GatewaySettings.from_env(**overrides)
    except ValueError as error:
        LOG.error("gateway not started: %s", error)
        return 2
    try:
        serve(settings)
    except GatewayStartError as error:
        LOG.error("gateway not started: %s", error)
        return 2
    return 0


def _cmd_pipeline_stream(args: argparse.Namespace, extra: list[str]) -> int:
    from pipelines.direct_runner import UnmendedBeamError
    from pipelines.streaming import run

    try:
        return run(extra)
    except (ValueError, UnmendedBeamError) as error:
        LOG.error("pipeline not started: %s", error)
        return 2


def _cmd_pipeline_batch(args: argparse.Namespace, extra: list[str]) -> int:
    from pipelines.batch import run

    try:
        return run(extra)
    except ValueError as error:
        LOG.error("pipeline not started: %s", error)
        return 2


def _cmd_archive(args: argparse.Namespace, extra: list[str]) -> int:
    from ingest.archiver.service import ArchiverSettings, run_archiver
    from schemas.topology import PubSubNames

    names = PubSubNames.from_env()
    subscription = args.subscription or names.archive
    if not subscription.startswith("projects/"):
        subscription = f"projects/{names.project}/subscriptions/{subscription}"
    try:
        settings = ArchiverSettings(
            data_dir=Path(args.data_dir),
            subscription=subscription,
            grace_seconds=args.grace_seconds,
            flush_seconds=args.flush_seconds,
            max_buffered_events=args.max_buffered_events,
        )
    except ValueError as error:
        LOG.error("archiver not started: %s", error)
        return 2
    return run_archiver(settings)


def _cmd_cdn(args: argparse.Namespace, extra: list[str]) -> int:
    from ingest.cdn.server import main as cdn_main

    return cdn_main(extra)


def _cmd_simulate(args: argparse.Namespace, extra: list[str]) -> int:
    from ingest.client.command import main as simulate_main

    return simulate_main(extra)


def _cmd_bench_simulate(args: argparse.Namespace, extra: list[str]) -> int:
    from pipelines.bench.simulate import main as bench_main

    return bench_main(extra)


def _cmd_bench_pipeline(args: argparse.Namespace, extra: list[str]) -> int:
    from pipelines.bench.pipeline import main as bench_pipeline_main

    return bench_pipeline_main(extra)


def _cmd_bench_close(args: argparse.Namespace, extra: list[str]) -> int:
    from pipelines.bench.close import main as bench_close_main

    return bench_close_main(extra)


def _cmd_bench_reconcile(args: argparse.Namespace, extra: list[str]) -> int:
    from pipelines.bench.reconcile import main as bench_reconcile_main

    return bench_reconcile_main(extra)


def _cmd_bench_gateway(args: argparse.Namespace, extra: list[str]) -> int:
    from pipelines.bench.gateway import main as bench_gateway_main

    return bench_gateway_main(extra)


def _json_value(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return str(value)  # exact: a float would round money
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return value


def _cmd_reconcile(args: argparse.Namespace, extra: list[str]) -> int:
    from ledger.reconcile.command import run

    return run(args)


def _cmd_chaos(args: argparse.Namespace, extra: list[str]) -> int:
    from pipelines.local.chaos import main as chaos_main

    return chaos_main(extra)


def _cmd_ledger_sql(args: argparse.Namespace, extra: list[str]) -> int:
    from ledger.views import ReadOnlyQueryError, open_ledger, run_sql

    if not Path(args.data_dir).is_dir():
        # Otherwise every view is empty and the query "succeeds" with 0 rows.
        LOG.error("no data directory %s: give the --data-dir that `playledger up` wrote", args.data_dir)
        return 2
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


def _cmd_ledger_close(args: argparse.Namespace, extra: list[str]) -> int:
    from ledger.finance.command import run

    return run(args)


def _cmd_ledger_statement(args: argparse.Namespace, extra: list[str]) -> int:
    from ledger.finance.command import run_statement

    return run_statement(args)


def _cmd_ledger_dsr(args: argparse.Namespace, extra: list[str]) -> int:
    from ledger.finance.command import run_dsr

    return run_dsr(args)


def _cmd_ledger_db(args: argparse.Namespace, extra: list[str]) -> int:
    from ledger.finance.command import run_db

    return run_db(args)


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
        help="run the local stack (emulator, gateway, pipeline, archiver, CDN stub) until Ctrl-C",
        description="Run the local stack in the foreground. Unknown flags (e.g. --period-seconds 60) "
        "go to the streaming pipeline.",
    )
    up.add_argument("--data-dir", required=True)
    up.add_argument("--gateway-port", type=_port, default=8080)
    up.add_argument("--cdn-port", type=_port, help="the CDN stub's port (default 8090)")
    up.set_defaults(handler=_cmd_up, takes_extra=True)

    demo = commands.add_parser("demo", help="send generated plays through the stack and print balances")
    demo.add_argument("--events", type=int, default=3000, help="unique plays to send (default 3000)")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--keep", metavar="DIR", help="keep the data in DIR instead of a temporary directory")
    demo.set_defaults(handler=_cmd_demo, takes_extra=False)

    gateway = commands.add_parser(
        "gateway",
        help="run the ingestion gateway (keys from PLAYLEDGER_API_KEYS or PLAYLEDGER_API_KEYS_FILE)",
        description="Run the ingestion gateway; see runbooks/gateway.md. Unset options keep their defaults.",
    )
    gateway.add_argument("--host", default="127.0.0.1")
    gateway.add_argument("--port", type=int, default=8080)
    gateway.add_argument("--data-dir", required=True, help="the receipt journal goes to DATA_DIR/journal/")
    gateway.add_argument("--max-events", type=int, help="events per request (default 500)")
    gateway.add_argument("--max-body-bytes", type=int, help="bytes per request (default 1048576)")
    gateway.add_argument("--rate-limit", help="requests per API key, e.g. '1000/second' (the default)")
    gateway.add_argument("--max-in-flight-publishes", type=int, help="default 100; 503 beyond")
    gateway.add_argument("--publish-timeout-seconds", type=float, help="default 10; 503 after")
    gateway.add_argument("--keys-poll-seconds", type=float, help="key file poll (default 1; 0: SIGHUP only)")
    gateway.set_defaults(handler=_cmd_gateway, takes_extra=False)

    pipeline = commands.add_parser("pipeline", help="run a royalty pipeline")
    pipelines = pipeline.add_subparsers(dest="pipeline", required=True, metavar="PIPELINE")
    stream = pipelines.add_parser(
        "stream",
        add_help=False,
        help="the streaming pipeline (see `playledger pipeline stream --help`)",
    )
    stream.set_defaults(handler=_cmd_pipeline_stream, takes_extra=True)
    batch = pipelines.add_parser(
        "batch",
        add_help=False,
        help="recompute a period's final ledger from the archive (see `playledger pipeline batch --help`)",
    )
    batch.set_defaults(handler=_cmd_pipeline_batch, takes_extra=True)

    archive = commands.add_parser(
        "archive",
        help="archive every play event in hourly Parquet buckets (see runbooks/archive.md)",
    )
    archive.add_argument("--data-dir", required=True, help="buckets go to DATA_DIR/archive/hour=.../")
    archive.add_argument("--subscription", help="id or full name (default: the contract's `archive`)")
    archive.add_argument("--grace-seconds", type=int, default=600, help="close an hour N s after it ends")
    archive.add_argument("--flush-seconds", type=float, default=2.0, help="write and acknowledge this often")
    archive.add_argument("--max-buffered-events", type=int, default=50_000, help="flush early at this many")
    archive.set_defaults(handler=_cmd_archive, takes_extra=False)

    cdn = commands.add_parser(
        "cdn", add_help=False, help="run the CDN stub (see `playledger cdn --help`; `up` starts one)"
    )
    cdn.set_defaults(handler=_cmd_cdn, takes_extra=True)

    simulate = commands.add_parser(
        "simulate",
        add_help=False,
        help="simulate listeners against the gateway and the CDN (see `playledger simulate --help`)",
    )
    simulate.set_defaults(handler=_cmd_simulate, takes_extra=True)

    bench = commands.add_parser("bench", help="measure how fast a part runs on this machine")
    benches = bench.add_subparsers(dest="bench", required=True, metavar="PART")
    bench_simulate = benches.add_parser(
        "simulate",
        add_help=False,
        help="listeners and events/s the simulator sustains (see `playledger bench simulate --help`)",
    )
    bench_simulate.set_defaults(handler=_cmd_bench_simulate, takes_extra=True)
    bench_gateway = benches.add_parser(
        "gateway",
        add_help=False,
        help="gateway events/s and latency vs. its no-HTTP ceiling (see `playledger bench gateway --help`)",
    )
    bench_gateway.set_defaults(handler=_cmd_bench_gateway, takes_extra=True)
    bench_pipeline = benches.add_parser(
        "pipeline",
        add_help=False,
        help="streaming and batch events/s vs. transport and DuckDB (`playledger bench pipeline --help`)",
    )
    bench_pipeline.set_defaults(handler=_cmd_bench_pipeline, takes_extra=True)
    bench_close = benches.add_parser(
        "close",
        add_help=False,
        help="month close vs. DuckDB doing the same division (`playledger bench close --help`)",
    )
    bench_close.set_defaults(handler=_cmd_bench_close, takes_extra=True)
    bench_reconcile = benches.add_parser(
        "reconcile",
        add_help=False,
        help="reconciling a period vs. DuckDB's anti-join of receipts and archive (`--help`)",
    )
    bench_reconcile.set_defaults(handler=_cmd_bench_reconcile, takes_extra=True)

    ledger = commands.add_parser("ledger", help="query the ledger")
    ledgers = ledger.add_subparsers(dest="ledger", required=True, metavar="ACTION")
    sql = ledgers.add_parser(
        "sql",
        help=(
            "run read-only SQL over the views: balances, plays, ledger, ledger_final, counters, "
            "dead_letters, receipts, archive; closes, close_current; the catalog's tracks, "
            "rights_holders, splits, rates (README: The ledger)"
        ),
    )
    sql.add_argument("--data-dir", required=True, help="the data directory `playledger up` wrote; must exist")
    sql.add_argument(
        "--format", choices=("table", "csv", "json"), default="table", help="output format (default: table)"
    )
    sql.add_argument("sql", help='e.g. "SELECT * FROM balances ORDER BY amount DESC"')
    sql.set_defaults(handler=_cmd_ledger_sql, takes_extra=False)
    from ledger.finance.command import add_arguments as add_close_arguments
    from ledger.finance.command import add_db_arguments, add_dsr_arguments, add_statement_arguments

    close = ledgers.add_parser(
        "close", help="close a month: divide each market's pool by stream share, frozen"
    )
    add_close_arguments(close)
    close.set_defaults(handler=_cmd_ledger_close, takes_extra=False)
    statement = ledgers.add_parser(
        "statement", help="a closed month's statement per rights holder: CSV and HTML"
    )
    add_statement_arguments(statement)
    statement.set_defaults(handler=_cmd_ledger_statement, takes_extra=False)
    dsr = ledgers.add_parser(
        "dsr", help="a closed month as a DDEX DSR Basic Audio 1.2 file for one rights holder"
    )
    add_dsr_arguments(dsr)
    dsr.set_defaults(handler=_cmd_ledger_dsr, takes_extra=False)
    db = ledgers.add_parser(
        "db", help="write a DuckDB database file with every view, for the duckdb CLI or DBeaver"
    )
    add_db_arguments(db)
    db.set_defaults(handler=_cmd_ledger_db, takes_extra=False)

    from ledger.reconcile.command import add_arguments as reconcile_arguments

    reconcile = commands.add_parser(
        "reconcile", help="tie receipts, archive and ledgers per period; exit 0 balanced, 1, 3 incomplete"
    )
    reconcile_arguments(reconcile)
    reconcile.set_defaults(handler=_cmd_reconcile, takes_extra=False)
    chaos = commands.add_parser(
        "chaos",
        add_help=False,
        help="a simulation under SIGKILLs, then reconcile (`playledger chaos --help`)",
    )
    chaos.set_defaults(handler=_cmd_chaos, takes_extra=True)
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
