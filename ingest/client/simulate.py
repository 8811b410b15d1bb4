"""A simulation run: the listeners of a seed play while the sender delivers their events.

``run_simulation`` builds the population of ``SimulationSettings.seed`` (profiles,
network schedules, planned plays), starts the simulated clock, runs one ``Player`` per
listener and the outbox's ``Sender`` side by side (with a progress bar), and returns
once every event is acknowledged or rejected, with the ground truth written and the
``SimulationSummary``. ``ingest.client.command`` is its command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_fixed

from ingest.cdn.media import SegmentLayout
from ingest.cdn.settings import DEFAULT_CDN_PORT
from ingest.client.abr import AbrPolicy
from ingest.client.cdn_client import CdnClient, CdnError
from ingest.client.clock import SimClock
from ingest.client.network import generate_schedule
from ingest.client.outbox import Outbox
from ingest.client.player import Player, PlayerEnvironment, PlayerSettings
from ingest.client.population import build_population, listener_rng
from ingest.client.sender import DeliveryFailed, Sender, SenderSettings
from ingest.client.sessions import plan_plays
from ingest.client.summary import PlayerStats, SimulationSummary
from ingest.client.truth import write_truth
from ingest.client.world import MusicWorld
from ledger.catalog import DEFAULT_CATALOG_DIR, Catalog

__all__ = [
    "DEFAULT_CDN_URL",
    "DEFAULT_GATEWAY_URL",
    "SimulationFailed",
    "SimulationSettings",
    "run_simulation",
]

LOG = logging.getLogger(__name__)

DEFAULT_GATEWAY_URL = "http://127.0.0.1:8080"
DEFAULT_CDN_URL = f"http://127.0.0.1:{DEFAULT_CDN_PORT}"


class SimulationFailed(RuntimeError):
    """The simulation could not finish: the CDN or the gateway failed it."""


def _first_failure(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first leaf of a task group's failures (what went wrong, rather than the group)."""
    first = group.exceptions[0]
    return _first_failure(first) if isinstance(first, BaseExceptionGroup) else first


@dataclass(frozen=True, kw_only=True)
class SimulationSettings:
    """One simulation: who, how long, how fast, against what, and where its files go."""

    gateway_url: str = DEFAULT_GATEWAY_URL
    cdn_url: str = DEFAULT_CDN_URL
    api_key: str
    users: int = 100
    duration_seconds: float = 3600.0
    seed: int = 0
    speed: float = 60.0
    start: dt.datetime
    outbox_path: Path
    truth_path: Path | None = None
    summary_json_path: Path | None = None
    catalog_dir: Path = DEFAULT_CATALOG_DIR
    drop_ack_share: float = 0.01
    prefetch: bool = True
    batch_size: int = 100
    senders: int = 4
    progress: bool = True

    def __post_init__(self) -> None:
        if self.users < 0:
            raise ValueError(f"--users must not be negative, got {self.users}")
        if self.duration_seconds <= 0 or self.speed <= 0:
            raise ValueError("--duration and --speed must be positive")
        if self.start.tzinfo is None:
            raise ValueError("--start must carry a UTC offset")


async def _wait_until_healthy(session: aiohttp.ClientSession, name: str, url: str, seconds: float) -> None:
    try:
        async for attempt in AsyncRetrying(
            stop=stop_after_delay(seconds),
            wait=wait_fixed(0.2),
            retry=retry_if_exception_type((aiohttp.ClientError, TimeoutError)),
            reraise=True,
        ):
            with attempt:
                async with session.get(
                    f"{url.rstrip('/')}/healthz", timeout=aiohttp.ClientTimeout(total=2)
                ) as reply:
                    reply.raise_for_status()
    except (aiohttp.ClientError, TimeoutError) as error:
        raise SimulationFailed(
            f"the {name} at {url} does not answer /healthz ({error}); is `playledger up` running?"
        ) from None


async def _show_progress(
    progress: Progress,
    clock: SimClock,
    settings: SimulationSettings,
    stats: PlayerStats,
    sender: Sender,
    done: asyncio.Event,
) -> None:
    task = progress.add_task("listening", total=settings.duration_seconds)
    while not done.is_set():
        elapsed = min(settings.duration_seconds, clock.now() - clock.start)
        progress.update(
            task,
            completed=elapsed,
            description=(
                f"{elapsed / 3600:5.1f} h of {settings.duration_seconds / 3600:g} h · "
                f"plays {stats.plays:,} · "
                f"acked {sender.stats.accepted:,} · outbox {sender.outbox.pending():,} · "
                f"instant starts {stats.instant_starts:,}/{stats.streamed_starts:,}"
            ),
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), timeout=0.25)


def _players(
    settings: SimulationSettings, world: MusicWorld, environment: PlayerEnvironment, begin: float, end: float
) -> list[Player]:
    """One player per listener of the seed, each with its network schedule and planned plays."""
    players = []
    for profile in build_population(world, settings.seed, settings.users):
        schedule = generate_schedule(
            profile, listener_rng(settings.seed, profile.index, "network"), begin, end
        )
        plays = plan_plays(
            profile, world, schedule, listener_rng(settings.seed, profile.index, "plays"), begin, end
        )
        players.append(Player(profile, schedule, plays, environment))
    return players


async def _play_and_deliver(
    players: list[Player],
    sender: Sender,
    clock: SimClock,
    settings: SimulationSettings,
    stats: PlayerStats,
    console: Console,
) -> float:
    """Run every player and the sender until all is delivered; the wall seconds the players took."""
    listening_done = False
    listening_seconds = 0.0
    delivered = asyncio.Event()
    listening_started = time.monotonic()

    async def listen() -> None:
        nonlocal listening_done, listening_seconds
        async with asyncio.TaskGroup() as group:
            for player in players:
                group.create_task(player.run())
        listening_done = True
        listening_seconds = time.monotonic() - listening_started

    async def deliver() -> None:
        await sender.run(clock.now, lambda: listening_done)
        delivered.set()

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not settings.progress,
        transient=True,
    )
    try:
        with progress:
            async with asyncio.TaskGroup() as group:
                group.create_task(listen())
                group.create_task(deliver())
                group.create_task(_show_progress(progress, clock, settings, stats, sender, delivered))
    except ExceptionGroup as failures:
        failure = _first_failure(failures)
        if isinstance(failure, DeliveryFailed | CdnError | aiohttp.ClientError | OSError):
            raise SimulationFailed(str(failure)) from failure
        raise
    return listening_seconds


async def run_simulation(settings: SimulationSettings, console: Console | None = None) -> SimulationSummary:
    """Run one simulation to the end: every event acknowledged or rejected.

    Raises ``SimulationFailed`` when the gateway or the CDN fails it; the outbox keeps
    what was not delivered.
    """
    started = time.monotonic()
    world = MusicWorld.build(Catalog.load(settings.catalog_dir), settings.seed)
    clock = SimClock(settings.start, settings.speed)
    begin, end = clock.start, clock.start + settings.duration_seconds
    stats = PlayerStats(listeners=settings.users)
    outbox = Outbox(settings.outbox_path)
    try:
        async with (
            # Many listeners fetch at once, each on a connection of its own (the CDN shapes per connection).
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=512)) as cdn_session,
            aiohttp.ClientSession() as gateway_session,
        ):
            await _wait_until_healthy(gateway_session, "gateway", settings.gateway_url, 10)
            await _wait_until_healthy(cdn_session, "CDN", settings.cdn_url, 10)
            sender = Sender(
                outbox,
                SenderSettings(
                    gateway_url=settings.gateway_url,
                    api_key=settings.api_key,
                    batch_size=settings.batch_size,
                    concurrency=settings.senders,
                    drop_ack_share=settings.drop_ack_share,
                    fault_seed=settings.seed,
                ),
                gateway_session,
            )
            environment = PlayerEnvironment(
                clock=clock,
                cdn=CdnClient(cdn_session, settings.cdn_url, SegmentLayout()),
                outbox=outbox,
                stats=stats,
                policy=AbrPolicy(),
                settings=PlayerSettings(prefetch=settings.prefetch),
                durations_ms=world.durations_ms,
                seed=settings.seed,
                simulation_end=end,
            )
            players = _players(settings, world, environment, begin, end)
            clock.begin()
            listening_seconds = await _play_and_deliver(
                players, sender, clock, settings, stats, console or Console(stderr=True)
            )
        if settings.truth_path is not None:
            rows = write_truth(outbox.plays(), settings.truth_path)
            LOG.info("ground truth: %d plays in %s", rows, settings.truth_path)
        return SimulationSummary(
            seed=settings.seed,
            start=settings.start,
            simulated_seconds=settings.duration_seconds,
            speed=settings.speed,
            wall_seconds=time.monotonic() - started,
            listeners_wall_seconds=listening_seconds,
            outbox_pending=outbox.pending(),
            player=stats,
            sender=sender.stats,
        )
    finally:
        outbox.close()
