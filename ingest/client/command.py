"""``playledger simulate``: the command line of a simulation.

Against a running ``playledger up --data-dir data``::

    playledger simulate --data-dir data --users 1000 --duration 24h --speed 1000 \\
        --seed 7 --truth truth.parquet

builds the listeners of ``--seed``, runs ``--duration`` of their listening on a clock
``--speed`` times faster than the wall clock (a day in under two minutes at 1000) with
real fetches from the CDN and real posts to the gateway, and exits 0 once every event it
made has been acknowledged or rejected by the gateway. ``--truth`` writes one Parquet
row per play made; the summary at the end says what happened on the way.

The outbox is a temporary file unless ``--outbox`` names one; a run that is killed
leaves it behind, and the same command with the same ``--outbox``, ``--seed`` and
``--start`` delivers what is left and makes no play twice.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import os
import random
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from ingest.client.simulate import (
    DEFAULT_CDN_URL,
    DEFAULT_GATEWAY_URL,
    SimulationFailed,
    SimulationSettings,
    run_simulation,
)
from ledger.catalog import DEFAULT_CATALOG_DIR

__all__ = ["main", "parse_duration", "resolve_api_key", "settings_from_args"]

LOG = logging.getLogger(__name__)

API_KEY_FILE = "local-api-key"
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400}


def parse_duration(text: str) -> float:
    """Seconds in ``90``, ``90s``, ``45m``, ``6h`` or ``1d``."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(f"a duration like 90s, 45m, 6h or 1d, got {text!r}")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def resolve_api_key(api_key: str | None, data_dir: Path | None, environ: dict[str, str]) -> str:
    """``--api-key``, else the key ``playledger up`` wrote to ``data_dir``, else ``PLAYLEDGER_API_KEYS``."""
    if api_key:
        return api_key
    if data_dir is not None:
        key_file = data_dir / API_KEY_FILE
        try:
            return key_file.read_text().strip()
        except OSError as error:
            raise ValueError(f"cannot read the API key from {key_file}: {error.strerror}") from None
    keys = sorted(key.strip() for key in environ.get("PLAYLEDGER_API_KEYS", "").split(",") if key.strip())
    if keys:
        return keys[0]
    raise ValueError("no API key: pass --api-key, or --data-dir of a running `playledger up`")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="playledger simulate",
        description="Simulate listeners: real CDN fetches, real posts to the gateway, and a ground truth.",
    )
    parser.add_argument("--gateway-url", default=DEFAULT_GATEWAY_URL)
    parser.add_argument("--cdn-url", default=DEFAULT_CDN_URL)
    parser.add_argument(
        "--api-key", help="default: DATA_DIR/local-api-key, else the first of PLAYLEDGER_API_KEYS"
    )
    parser.add_argument("--data-dir", type=Path, help="the data directory of a running `playledger up`")
    parser.add_argument("--users", type=int, default=100, help="listeners (default 100)")
    parser.add_argument("--duration", default="1h", help="simulated span: 90s, 45m, 6h, 1d (default 1h)")
    parser.add_argument(
        "--seed", type=int, help="the same seed makes the same plays (default: random, printed)"
    )
    parser.add_argument(
        "--speed", type=float, default=60.0, help="simulated seconds per wall second (default 60)"
    )
    parser.add_argument("--start", help="RFC 3339 start of the simulated span (default: duration before now)")
    parser.add_argument("--truth", type=Path, help="write the ground truth to this Parquet file")
    parser.add_argument("--outbox", type=Path, help="the outbox file (default: a temporary one)")
    parser.add_argument("--summary-json", type=Path, help="also write the summary as JSON here")
    parser.add_argument("--catalog", type=Path, default=DEFAULT_CATALOG_DIR, help="catalog directory")
    parser.add_argument(
        "--drop-ack-share",
        type=float,
        default=0.01,
        help="fault switch: share of acknowledgements lost, so duplicates reach the gateway (default 0.01)",
    )
    parser.add_argument(
        "--no-prefetch", action="store_true", help="never prefetch (to compare start-up latency)"
    )
    parser.add_argument("--batch-size", type=int, default=100, help="events per request (default 100)")
    parser.add_argument("--senders", type=int, default=4, help="requests in flight (default 4)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def settings_from_args(args: argparse.Namespace, environ: dict[str, str]) -> tuple[SimulationSettings, bool]:
    """Settings from parsed arguments, and whether the outbox is a temporary one."""
    duration = parse_duration(args.duration)
    if args.start:
        start = dt.datetime.fromisoformat(args.start.replace("Z", "+00:00"))
    else:
        now = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
        start = now - dt.timedelta(seconds=duration)  # the span ends now: no plays from the future
    temporary = args.outbox is None
    outbox = args.outbox or Path(tempfile.mkdtemp(prefix="playledger-simulate-")) / "outbox.sqlite3"
    settings = SimulationSettings(
        gateway_url=args.gateway_url,
        cdn_url=args.cdn_url,
        api_key=resolve_api_key(args.api_key, args.data_dir, environ),
        users=args.users,
        duration_seconds=duration,
        seed=args.seed if args.seed is not None else random.SystemRandom().randrange(1_000_000),
        speed=args.speed,
        start=start,
        outbox_path=outbox,
        truth_path=args.truth,
        summary_json_path=args.summary_json,
        catalog_dir=args.catalog,
        drop_ack_share=args.drop_ack_share,
        prefetch=not args.no_prefetch,
        batch_size=args.batch_size,
        senders=args.senders,
        progress=not args.no_progress,
    )
    return settings, temporary


def main(argv: Sequence[str] | None = None) -> int:
    """``playledger simulate``: 0 once every event was acknowledged or rejected."""
    args = _parser().parse_args(argv)
    try:
        settings, temporary_outbox = settings_from_args(args, dict(os.environ))
    except ValueError as error:
        LOG.error("simulation not started: %s", error)
        return 2
    LOG.info(
        "simulating %d listeners for %g h from %s (seed %d, speed %g); outbox %s",
        settings.users,
        settings.duration_seconds / 3600,
        settings.start.isoformat(),
        settings.seed,
        settings.speed,
        settings.outbox_path,
    )
    console = Console()
    if not console.is_terminal:
        console = Console(width=120)  # a log or a pipe: do not wrap the summary at 80 columns
    resume = (
        f"undelivered events stay in %s: rerun the same command with --outbox %s --seed %d "
        f"--start {settings.start.isoformat()} to deliver them and make the remaining plays"
    )
    try:
        summary = asyncio.run(run_simulation(settings, Console(stderr=True)))
    except (SimulationFailed, ValueError) as error:
        LOG.error("%s", error)
        LOG.error(resume, settings.outbox_path, settings.outbox_path, settings.seed)
        return 1
    except KeyboardInterrupt:
        LOG.error("interrupted; " + resume, settings.outbox_path, settings.outbox_path, settings.seed)
        return 130
    summary.render(console)
    if settings.summary_json_path is not None:
        settings.summary_json_path.write_text(json.dumps(summary.as_json(), indent=1) + "\n")
    if summary.outbox_pending:
        return 1
    if temporary_outbox:
        shutil.rmtree(settings.outbox_path.parent, ignore_errors=True)
    return 0
