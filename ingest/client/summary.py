"""What a simulation did: the player's counters and the end-of-run summary.

Start-up latency is reported twice: over every streamed start (prefetch on, as it
happened, with instant starts at 0 ms) and over the starts that had to fetch (what a
start costs without a prefetch). Time to first byte and the hit ratio are what the
player saw in the CDN's responses.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from ingest.cdn.edge import MillisecondHistogram
from ingest.client.cdn_client import FetchResult
from ingest.client.sender import SenderStats

__all__ = ["PlayerStats", "SimulationSummary"]


@dataclass
class PlayerStats:
    """Counters the listeners keep while they play."""

    listeners: int = 0
    listeners_active: int = 0
    plays: int = 0
    plays_under_30s: int = 0
    plays_offline: int = 0
    plays_already_recorded: int = 0
    streamed_starts: int = 0
    instant_starts: int = 0
    prefetches: int = 0
    bitrate_switches: int = 0
    rebuffers: int = 0
    stall_seconds: float = 0.0
    cdn_requests: int = 0
    cdn_hits: int = 0
    cdn_bytes: int = 0
    startup_all: MillisecondHistogram = field(default_factory=MillisecondHistogram)
    startup_fetched: MillisecondHistogram = field(default_factory=MillisecondHistogram)
    ttfb: MillisecondHistogram = field(default_factory=MillisecondHistogram)

    def count_fetch(self, result: FetchResult) -> None:
        """Count one CDN response."""
        self.cdn_requests += 1
        self.cdn_hits += result.cache_hit
        self.cdn_bytes += result.size_bytes
        self.ttfb.add(result.ttfb_seconds)


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f} %" if whole else "n/a"


def _ms(value: int | None) -> str:
    return "n/a" if value is None else f"{value:,} ms"


@dataclass
class SimulationSummary:
    """One run: its parameters, the player's and the sender's counters, and its timing."""

    seed: int
    start: dt.datetime
    simulated_seconds: float
    speed: float
    wall_seconds: float
    listeners_wall_seconds: float
    outbox_pending: int
    player: PlayerStats
    sender: SenderStats

    def as_json(self) -> dict[str, Any]:
        """Every figure as JSON-ready values (``--summary-json``)."""
        player, sender = self.player, self.sender
        return {
            "seed": self.seed,
            "start": self.start.isoformat(),
            "simulated_seconds": self.simulated_seconds,
            "speed": self.speed,
            "wall_seconds": round(self.wall_seconds, 3),
            "listeners_wall_seconds": round(self.listeners_wall_seconds, 3),
            "listeners": player.listeners,
            "listeners_active": player.listeners_active,
            "plays": player.plays,
            "plays_under_30s": player.plays_under_30s,
            "plays_offline": player.plays_offline,
            "plays_already_recorded": player.plays_already_recorded,
            "outbox_pending": self.outbox_pending,
            "sender": asdict(sender),
            "streamed_starts": player.streamed_starts,
            "instant_starts": player.instant_starts,
            "instant_start_share": _share(player.instant_starts, player.streamed_starts),
            "prefetches": player.prefetches,
            "startup_ms_all": player.startup_all.summary(),
            "startup_ms_fetched": player.startup_fetched.summary(),
            "bitrate_switches": player.bitrate_switches,
            "rebuffers": player.rebuffers,
            "stall_seconds": round(player.stall_seconds, 3),
            "cdn_requests": player.cdn_requests,
            "cdn_hits": player.cdn_hits,
            "cdn_hit_ratio": _share(player.cdn_hits, player.cdn_requests),
            "cdn_bytes": player.cdn_bytes,
            "ttfb_ms": player.ttfb.summary(),
        }

    def render(self, console: Console) -> None:
        """Print the summary table."""
        player, sender = self.player, self.sender
        realised = self.simulated_seconds / self.listeners_wall_seconds if self.listeners_wall_seconds else 0
        table = Table(
            title=(
                f"playledger simulate --seed {self.seed} --start {self.start.isoformat()}: "
                f"{self.simulated_seconds / 3600:g} h simulated in {self.wall_seconds:.1f} s "
                f"(speed {self.speed:g}, achieved {realised:,.0f})"
            ),
            show_header=False,
            title_justify="left",
        )
        table.add_column("figure", style="bold")
        table.add_column("value")
        retry_reasons = ", ".join(
            f"{reason} {count}" for reason, count in sorted(sender.retry_reasons.items())
        )
        rows = [
            ("listeners", f"{player.listeners:,} ({player.listeners_active:,} played)"),
            (
                "plays",
                f"{player.plays:,} ({_percent(player.plays_under_30s, player.plays)} under 30 s, "
                f"{player.plays_offline:,} offline)",
            ),
            (
                "events sent",
                f"{sender.events_sent:,} in {sender.requests:,} requests; {sender.accepted:,} accepted",
            ),
            ("retries", f"{sender.retries:,}" + (f" ({retry_reasons})" if retry_reasons else "")),
            (
                "duplicates sent",
                f"{sender.duplicates_sent:,} ({sender.acks_dropped:,} acknowledgements lost)",
            ),
            ("buffered offline, later delivered", f"{sender.delivered_after_offline:,}"),
            ("rejected by the gateway", f"{sender.rejected:,}"),
            (
                "instant starts (prefetch)",
                f"{_percent(player.instant_starts, player.streamed_starts)} of {player.streamed_starts:,} "
                f"streamed starts ({player.prefetches:,} prefetches)",
            ),
            (
                "start-up latency, with prefetch",
                f"p50 {_ms(player.startup_all.percentile(50))}, p95 {_ms(player.startup_all.percentile(95))}",
            ),
            (
                "start-up latency, without (fetched)",
                f"p50 {_ms(player.startup_fetched.percentile(50))}, "
                f"p95 {_ms(player.startup_fetched.percentile(95))}",
            ),
            ("bitrate switches", f"{player.bitrate_switches:,}"),
            (
                "rebuffer events",
                f"{player.rebuffers:,} ({player.stall_seconds / 60:,.1f} min stalled in all)",
            ),
            (
                "CDN hit ratio",
                f"{_percent(player.cdn_hits, player.cdn_requests)} of {player.cdn_requests:,} requests "
                f"({player.cdn_bytes / 1e6:,.1f} MB)",
            ),
            ("TTFB", f"p50 {_ms(player.ttfb.percentile(50))}, p99 {_ms(player.ttfb.percentile(99))}"),
        ]
        if player.plays_already_recorded:
            rows.append(
                ("plays already in the outbox", f"{player.plays_already_recorded:,} (not sent again)")
            )
        if self.outbox_pending:
            rows.append(("[red]left in the outbox[/red]", f"[red]{self.outbox_pending:,}[/red]"))
        for name, value in rows:
            table.add_row(name, value)
        console.print(table)
