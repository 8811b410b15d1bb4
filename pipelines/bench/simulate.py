"""``playledger bench simulate``: how many listeners and events per second the simulator sustains.

Runs one simulation with the clock unleashed (no waiting: every listener plays as fast
as its real CDN fetches allow) against a local stack it starts itself (emulator,
gateway, pipeline, archiver and CDN, on free ports, in a temporary directory), or
against a running one named by ``--gateway-url``, ``--cdn-url`` and ``--data-dir``::

    playledger bench simulate --users 20000 --duration 1h

and reports plays, CDN fetches and acknowledged events per wall second, the CPU the
simulator itself used, and what that means in listeners: how many it could keep up with
in real time (speed 1), and how long a day of ``--users`` listeners takes.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import resource
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ingest.client.command import parse_duration, resolve_api_key
from ingest.client.simulate import (
    DEFAULT_CDN_URL,
    DEFAULT_GATEWAY_URL,
    SimulationFailed,
    SimulationSettings,
    run_simulation,
)
from ingest.client.summary import SimulationSummary
from ingest.pubsub import free_port

__all__ = ["main"]

LOG = logging.getLogger(__name__)

UNLEASHED_SPEED = 1e9  # simulated seconds per wall second: never wait for the clock
DAY_SECONDS = 86_400


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _report(summary: SimulationSummary, cpu_seconds: float, users: int, console: Console) -> None:
    player, sender = summary.player, summary.sender
    listening = summary.listeners_wall_seconds
    listener_seconds_per_second = users * summary.simulated_seconds / listening
    table = Table(
        title=f"bench simulate: {users:,} listeners x {summary.simulated_seconds / 3600:g} h, clock unleashed"
    )
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [
        ("plays (events made)", f"{player.plays:,}"),
        ("listening phase, wall", f"{listening:.1f} s"),
        ("whole run incl. delivery, wall", f"{summary.wall_seconds:.1f} s"),
        ("plays made per second", f"{player.plays / listening:,.0f}"),
        ("CDN fetches per second (real HTTP)", f"{player.cdn_requests / listening:,.0f}"),
        ("events acknowledged per second", f"{sender.accepted / summary.wall_seconds:,.0f}"),
        ("simulator CPU", f"{cpu_seconds:.1f} s ({cpu_seconds / summary.wall_seconds:.0%} of one core)"),
        ("events per simulator CPU second", f"{player.plays / cpu_seconds:,.0f}"),
        ("listeners sustained in real time (speed 1)", f"{listener_seconds_per_second:,.0f}"),
        (
            f"a day of {users:,} listeners takes",
            f"{users * DAY_SECONDS / listener_seconds_per_second:,.0f} s "
            f"(speed {listener_seconds_per_second / users:,.0f})",
        ),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)


async def _bench(settings: SimulationSettings) -> tuple[SimulationSummary, float]:
    cpu_before = _cpu_seconds()
    summary = await run_simulation(settings)
    return summary, _cpu_seconds() - cpu_before


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="playledger bench simulate",
        description="Measure the listeners and events per second the simulator sustains on this machine.",
    )
    # Many listeners over a short span: enough plays in flight at once to find the machine's
    # limit, rather than the network time of the slowest listener's long day.
    parser.add_argument("--users", type=int, default=20_000, help="listeners (default 20000)")
    parser.add_argument("--duration", default="1h", help="simulated span (default 1h)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--gateway-url", help=f"a running gateway (e.g. {DEFAULT_GATEWAY_URL}); default: start a stack"
    )
    parser.add_argument("--cdn-url", default=None, help=f"with --gateway-url (default {DEFAULT_CDN_URL})")
    parser.add_argument("--data-dir", type=Path, help="with --gateway-url: where its local-api-key is")
    parser.add_argument("--api-key")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``playledger bench simulate``: print the simulator's throughput on this machine."""
    from pipelines.local.stack import LocalStack, StackError, StackSettings

    args = _parser().parse_args(argv)
    console = Console() if Console().is_terminal else Console(width=120)
    workdir = Path(tempfile.mkdtemp(prefix="playledger-bench-"))
    stack: LocalStack | None = None
    try:
        if args.gateway_url:
            gateway_url, cdn_url = args.gateway_url, args.cdn_url or DEFAULT_CDN_URL
            api_key = resolve_api_key(args.api_key, args.data_dir, {})
        else:
            with console.status("starting a local stack (emulator, gateway, pipeline, archiver, CDN)…"):
                stack = LocalStack(
                    StackSettings(
                        data_dir=workdir / "data",
                        gateway_port=free_port(),
                        cdn_port=free_port(),
                        log_dir=workdir / "logs",
                    )
                ).start()
            gateway_url, cdn_url, api_key = stack.gateway_url, stack.cdn_url, stack.api_key
        duration = parse_duration(args.duration)
        settings = SimulationSettings(
            gateway_url=gateway_url,
            cdn_url=cdn_url,
            api_key=api_key,
            users=args.users,
            duration_seconds=duration,
            seed=args.seed,
            speed=UNLEASHED_SPEED,
            start=dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(seconds=duration),
            outbox_path=workdir / "outbox.sqlite3",
            drop_ack_share=0.0,
            progress=False,
        )
        with console.status(f"simulating {args.users:,} listeners flat out…"):
            summary, cpu_seconds = asyncio.run(_bench(settings))
    except (SimulationFailed, StackError, ValueError) as error:
        LOG.error("bench failed: %s (files in %s)", error, workdir)
        return 1
    finally:
        if stack is not None:
            stack.stop()
    _report(summary, cpu_seconds, args.users, console)
    shutil.rmtree(workdir, ignore_errors=True)
    return 0
