"""``playledger demo``: the whole path, end to end, on local defaults, in about a minute.

Starts the local stack in a temporary data directory, sends a few thousand generated
plays through the HTTP gateway (with resent duplicates, plays under 30 s, unknown
tracks and malformed events among them), waits until the ledger holds every accepted
play, prints the balance of every rights holder next to what the plays sent should
earn, and a one-line summary; then closes the archive's hours, recomputes every period
and ends with the reconcile verdict of its own run.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console
from rich.table import Table
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

from ledger.catalog import DEFAULT_CATALOG_DIR, FALLBACK_TERRITORY, Catalog
from ledger.counters import PIPELINE_COUNTERS_FILE, load_counters
from ledger.views import open_ledger, run_sql
from pipelines.config import PipelineConfig
from pipelines.local.reference_royalties import ReferenceCatalog, expected_balances
from pipelines.local.settle import Settled, settle
from pipelines.local.stack import LocalStack, StackSettings

__all__ = ["Traffic", "generate_traffic", "run_demo"]

BATCH_SIZE = 100
CONCURRENCY = 4
CONTEXTS = ("album", "playlist", "daily_mix", "radio", "search", "other")
# Territories with no rate of their own, so the catalog's '*' fallback is exercised.
FALLBACK_TERRITORIES = ("NO", "AU", "NL")


@dataclass
class Traffic:
    """What the demo sends: batches of JSON events, and what they should add up to."""

    batches: list[list[dict[str, Any]]]
    unique_plays: list[dict[str, Any]]
    resent: int
    malformed: int
    sent: int = field(init=False)

    def __post_init__(self) -> None:
        self.sent = sum(len(batch) for batch in self.batches)


def _malformed(rng: random.Random, valid: dict[str, Any]) -> dict[str, Any]:
    broken = dict(valid, event_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)))
    kind = rng.randrange(5)
    if kind == 0:
        del broken["track_id"]
    elif kind == 1:
        broken["ms_played"] = "forty seconds"
    elif kind == 2:
        broken["territory"] = "se"
    elif kind == 3:
        broken["mood"] = "happy"  # unknown field
    else:
        broken["played_at"] = "yesterday"
    return broken


def generate_traffic(catalog: Catalog, plays: int, seed: int, now: dt.datetime) -> Traffic:
    """Deterministic plays for ``seed``: popular tracks more often, ~22 % under 30 s,
    ~3 % unknown tracks, ~5 % resent later with the same ``event_id``, ~1 % malformed."""
    rng = random.Random(seed)
    tracks = sorted(catalog.track_ids)
    popularity = [1 / (rank + 1) ** 0.8 for rank in range(len(tracks))]
    territories = sorted({t for t, _ in catalog.rates_micros if t != FALLBACK_TERRITORY}) + list(
        FALLBACK_TERRITORIES
    )
    users = [
        (f"user-{n:04d}", rng.choice(territories), "premium" if rng.random() < 0.6 else "free")
        for n in range(max(1, plays // 15))
    ]
    unique: list[dict[str, Any]] = []
    for _ in range(plays):
        user_id, territory, product = rng.choice(users)
        if rng.random() < 0.03:
            track_id, duration_ms = f"X{rng.randrange(10_000):05d}", 200_000
        else:
            track_id = rng.choices(tracks, popularity)[0]
            duration_ms = catalog.tracks[track_id].duration_ms
        skipped = rng.random() < 0.22
        low, high = (1_000, 30_000) if skipped else (30_000, max(30_001, duration_ms))
        ms_played = rng.randrange(low, high)
        offline = rng.random() < 0.05
        ago = dt.timedelta(days=rng.uniform(0.5, 3)) if offline else dt.timedelta(minutes=rng.uniform(1, 60))
        unique.append(
            {
                "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "user_id": user_id,
                "track_id": track_id,
                "played_at": (now - ago).isoformat(timespec="milliseconds"),
                "ms_played": ms_played,
                "territory": territory,
                "product": product,
                "context": rng.choice(CONTEXTS),
                "bitrate_kbps": rng.choice((96, 160, 320)),
                "offline": offline,
                "device": rng.choice(("android", "ios", "web", None)),
            }
        )
    batches = [unique[i : i + BATCH_SIZE] for i in range(0, len(unique), BATCH_SIZE)]
    resent = malformed = 0
    for index, play in enumerate(unique):
        if rng.random() < 0.05:  # a retry after a lost acknowledgement: a later batch, same event
            later = rng.randrange(min(index // BATCH_SIZE + 1, len(batches) - 1), len(batches))
            batches[later].append(dict(play))
            resent += 1
        if rng.random() < 0.01:
            batches[rng.randrange(len(batches))].append(_malformed(rng, play))
            malformed += 1
    return Traffic(batches, unique, resent, malformed)


class _Unavailable(Exception):
    """The gateway answered 503: retry the same batch later."""


async def _send(url: str, api_key: str, batches: Sequence[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """POST every batch; retry a 503 with backoff; return each batch's reply, in order."""
    headers = {"Authorization": f"Bearer {api_key}"}
    semaphore = asyncio.Semaphore(CONCURRENCY)
    # Sent in order of batch (a few at a time) so a resent duplicate arrives after its original.
    async with aiohttp.ClientSession(headers=headers) as session:

        async def post(batch: list[dict[str, Any]]) -> dict[str, Any]:
            async with semaphore:
                async for attempt in AsyncRetrying(
                    stop=stop_after_delay(60),
                    wait=wait_exponential_jitter(initial=0.2, max=5),
                    retry=retry_if_exception_type(_Unavailable),
                    reraise=True,
                ):
                    with attempt:
                        async with session.post(f"{url}/v1/events", json={"events": batch}) as response:
                            if response.status == 503:
                                raise _Unavailable(await response.text())
                            if response.status != 200:
                                body = await response.text()
                                raise RuntimeError(f"gateway answered {response.status}: {body}")
                            reply: dict[str, Any] = await response.json()
                            return reply
                raise AssertionError("unreachable")

        replies: list[dict[str, Any]] = []
        for start in range(0, len(batches), CONCURRENCY):
            replies += await asyncio.gather(*(post(b) for b in batches[start : start + CONCURRENCY]))
        return replies


def _expected_balances(catalog_dir: Path, plays: Sequence[dict[str, Any]]) -> dict[str, tuple[int, int, int]]:
    """What the plays should earn, by the independent reference (no code shared with ``ledger``)."""
    expected = expected_balances(ReferenceCatalog.read(catalog_dir), plays, PipelineConfig().min_stream_ms)
    return {holder: tuple(balance) for holder, balance in expected.items()}  # type: ignore[misc]


def _ledger_balances(data_dir: Path) -> dict[str, tuple[int, int, int]]:
    result = run_sql(
        open_ledger(data_dir),
        "SELECT rights_holder_id, sum(plays), sum(streams), sum(amount_micros) FROM ledger GROUP BY ALL",
    )
    return {row[0]: (int(row[1]), int(row[2]), int(row[3])) for row in result.rows}


def _money(micros: int) -> Decimal:
    return Decimal(micros).scaleb(-6)


def _reconcile(console: Console, data_dir: Path) -> Settled:
    """The auditor's check of the run: hours closed, every period recomputed and reconciled."""
    with console.status("closing the archive's hours, recomputing and reconciling every period…"):
        settled = settle(data_dir, report_name="demo")
    colour = "green" if settled.status == "balanced" else "red"
    periods = ", ".join(period.strftime("%Y-%m-%dT%H:%MZ") for period in settled.periods)
    console.print(
        f"[{colour}]reconcile: {settled.status}[/{colour}] ({len(settled.periods)} period(s): {periods}; "
        f"receipts, archive, final ledger and money tied); report {settled.report_dir / 'report.html'}"
    )
    return settled


def run_demo(
    events: int = 3000, seed: int = 7, keep_dir: Path | None = None, timeout_seconds: float = 90
) -> int:
    """Run the demo; 0 when the ledger matches what was sent, 1 otherwise."""
    console = Console()
    if not console.is_terminal:
        console = Console(width=120)  # a log or a pipe: don't wrap the table at 80 columns
    if events < 10:
        console.print("[red]--events must be at least 10[/red]")
        return 2
    catalog = Catalog.load(DEFAULT_CATALOG_DIR)
    data_dir = keep_dir or Path(tempfile.mkdtemp(prefix="playledger-demo-"))
    traffic = generate_traffic(catalog, events, seed, dt.datetime.now(dt.UTC))
    settings = StackSettings(
        data_dir=data_dir,
        gateway_port=0,
        cdn_port=0,
        pipeline_args=("--early-firing-seconds", "1"),
        log_dir=data_dir / "logs",
    )
    started = time.monotonic()
    with console.status("starting emulator, gateway and pipeline…"):
        stack = LocalStack(settings).start()
    try:
        with console.status(f"sending {traffic.sent} events to {stack.gateway_url}…"):
            send_started = time.monotonic()
            replies = asyncio.run(_send(stack.gateway_url, stack.api_key, traffic.batches))
            send_seconds = time.monotonic() - send_started
        accepted = sum(reply["accepted"] for reply in replies)
        rejected = [problem for reply in replies for problem in reply["rejected"]]
        accepted_ids = {play["event_id"] for play in traffic.unique_plays}
        expected = _expected_balances(DEFAULT_CATALOG_DIR, traffic.unique_plays)
        expected_parts = sum(plays for plays, _, _ in expected.values())
        deadline = time.monotonic() + timeout_seconds
        ledger: dict[str, tuple[int, int, int]] = {}
        counters: dict[str, int] = {}
        with console.status("waiting for the ledger to hold every accepted play…"):
            while time.monotonic() < deadline:
                stack.check()
                ledger = _ledger_balances(data_dir)
                counters = load_counters(data_dir / PIPELINE_COUNTERS_FILE)
                if (
                    sum(plays for plays, _, _ in ledger.values()) >= expected_parts
                    and counters.get("events_duplicate", 0) >= traffic.resent
                ):
                    break
                time.sleep(0.5)
        caught_up = time.monotonic() - send_started
    finally:
        with console.status("stopping (gateway, then pipeline after it writes out, then emulator)…"):
            stop_status = stack.stop()
    ledger = _ledger_balances(data_dir)
    counters = load_counters(data_dir / PIPELINE_COUNTERS_FILE)

    names = {holder.rights_holder_id: holder for holder in catalog.rights_holders.values()}
    table = Table(title=f"Balances per rights holder ({catalog.currency})", show_footer=True)
    table.add_column("rights holder", footer="total")
    table.add_column("name")
    table.add_column("role")
    table.add_column("plays", justify="right", footer=str(sum(v[0] for v in ledger.values())))
    table.add_column("streams", justify="right", footer=str(sum(v[1] for v in ledger.values())))
    table.add_column("amount", justify="right", footer=str(_money(sum(v[2] for v in ledger.values()))))
    table.add_column("as sent?", justify="center")
    mismatches = 0
    for holder_id in sorted(set(ledger) | set(expected), key=lambda h: -(ledger.get(h, (0, 0, 0))[2])):
        got, want = ledger.get(holder_id, (0, 0, 0)), expected.get(holder_id, (0, 0, 0))
        mismatches += got != want
        holder = names.get(holder_id)
        table.add_row(
            holder_id,
            holder.name if holder else "suspense: track not in catalog",
            holder.role if holder else "",
            str(got[0]),
            str(got[1]),
            str(_money(got[2])),
            "[green]✓[/green]" if got == want else f"[red]✗ expected {want}[/red]",
        )
    console.print(table)
    total = sum(v[2] for v in ledger.values())
    problems = Counter(error.split(":")[0] for problem in rejected for error in problem["errors"])
    console.print(
        f"received {traffic.sent}, accepted {accepted}, rejected {len(rejected)}, "
        f"duplicates dropped {counters.get('events_duplicate', 0)}, streams {counters.get('streams', 0)}, "
        f"total amount {_money(total)} {catalog.currency}"
    )
    console.print(
        f"[dim]rejections by field: {dict(problems)}; {traffic.sent / send_seconds:,.0f} events/s through "
        f"the gateway; ledger caught up {caught_up:.1f} s after the first send; "
        f"{time.monotonic() - started:.1f} s in all; query it: playledger ledger sql --data-dir {data_dir} "
        f'"SELECT * FROM balances"[/dim]'
    )
    settled = _reconcile(console, data_dir)
    ok = (
        settled.status == "balanced"
        and mismatches == 0
        and accepted == len(accepted_ids) + traffic.resent
        and len(rejected) == traffic.malformed
        and counters.get("events_duplicate", 0) == traffic.resent
        and stop_status == 0
    )
    if not ok:
        console.print(
            f"[red]the ledger does not match what was sent: {mismatches} rights holder(s) differ, "
            f"duplicates dropped {counters.get('events_duplicate', 0)} of {traffic.resent} resent, "
            f"stack stopped with status {stop_status}, reconcile {settled.status} "
            f"(report {settled.report_dir / 'report.html'}); logs in {data_dir / 'logs'}[/red]"
        )
        return 1
    console.print("[green]the ledger matches what was sent, to the micro-unit[/green]")
    return 0
