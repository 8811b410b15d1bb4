"""One listener's player: performs the planned plays on the simulated clock.

For each play the player waits for the simulated moment the listener presses play,
then:

- offline (a long offline period): plays the download; no network at all;
- online: starts at once from a prefetch of this very track, if one is ready (an
  instant start); otherwise waits for a network if it is in a tunnel and fetches the
  first seconds from the CDN for real (the start-up latency is that wait plus the
  fetch); a few seconds in, it prefetches the first seconds of the next likely track
  for real; the rest of the play streams against the network schedule (``playback``).

When the play ends it becomes an event in the outbox, due when the device next has a
network. Network delays never move the listening schedule, so the plays stay those of
the seed; they are measured and reported instead.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from ingest.client.abr import AbrPolicy, ThroughputEstimator
from ingest.client.cdn_client import CdnClient
from ingest.client.clock import SimClock
from ingest.client.network import NetworkSchedule
from ingest.client.outbox import Outbox, PlayRecord
from ingest.client.playback import Head, stream_play
from ingest.client.population import ListenerProfile, listener_rng
from ingest.client.prefetch import Prefetched
from ingest.client.sessions import STREAM_MS, PlannedPlay
from ingest.client.summary import PlayerStats

__all__ = ["Player", "PlayerEnvironment", "PlayerSettings", "play_event", "played_at_text"]


@dataclass(frozen=True)
class PlayerSettings:
    """How the player starts tracks and prefetches."""

    head_ms: int = 3_000  # audio a start needs before playback, and what a prefetch fetches
    prefetch_after_ms: int = 5_000  # how far into a play the next likely track is prefetched
    prefetch: bool = True


@dataclass
class PlayerEnvironment:
    """What every player in a simulation shares."""

    clock: SimClock
    cdn: CdnClient
    outbox: Outbox
    stats: PlayerStats
    policy: AbrPolicy
    settings: PlayerSettings
    durations_ms: dict[str, int]
    seed: int
    simulation_end: float


def played_at_text(played_at_ms: int, utc_offset_minutes: int) -> str:
    """RFC 3339 with the device's local offset, to the millisecond."""
    zone = dt.timezone(dt.timedelta(minutes=utc_offset_minutes))
    return dt.datetime.fromtimestamp(played_at_ms / 1000, tz=zone).isoformat(timespec="milliseconds")


def play_event(
    play: PlannedPlay, profile: ListenerProfile, bitrate_kbps: int
) -> tuple[PlayRecord, dict[str, object]]:
    """A play as the ground truth records it, and as the v1 contract's JSON event."""
    played_at_ms = round(play.started_at * 1000)
    record = PlayRecord(
        play.event_id,
        play.user_id,
        play.track_id,
        played_at_ms,
        play.ms_played,
        profile.territory,
        profile.product,
        play.offline,
    )
    event: dict[str, object] = {
        "event_id": play.event_id,
        "user_id": play.user_id,
        "track_id": play.track_id,
        "played_at": played_at_text(played_at_ms, profile.utc_offset_minutes),
        "ms_played": play.ms_played,
        "territory": profile.territory,
        "product": profile.product,
        "context": play.context.value,
        "bitrate_kbps": bitrate_kbps,
        "offline": play.offline,
        "device": profile.device,
    }
    return record, event


class Player:
    """The reference player of one listener."""

    def __init__(
        self,
        profile: ListenerProfile,
        schedule: NetworkSchedule,
        plays: Iterable[PlannedPlay],
        environment: PlayerEnvironment,
    ) -> None:
        self.profile = profile
        self.schedule = schedule
        self.plays = plays
        self.env = environment
        self.estimator = ThroughputEstimator()
        self._noise = listener_rng(environment.seed, profile.index, "throughput-noise")
        self._prefetched: Prefetched | None = None

    async def run(self) -> None:
        """Perform every planned play, in order."""
        active = False
        for play in self.plays:
            if not active:
                self.env.stats.listeners_active += 1
                active = True
            await self.env.clock.sleep_until(play.started_at)
            if play.offline:
                bitrate_kbps = self.profile.download_kbps
                self._prefetched = None
            else:
                bitrate_kbps = await self._stream(play)
            await self.env.clock.sleep_until(play.ended_at)
            self._record(play, bitrate_kbps)

    async def _stream(self, play: PlannedPlay) -> int:
        stats, settings, policy = self.env.stats, self.env.settings, self.env.policy
        prefetched, self._prefetched = self._prefetched, None
        if prefetched is not None and prefetched.serves(play.track_id, play.started_at):
            head = Head(prefetched.bitrate_kbps, prefetched.audio_ms)
            startup_seconds = 0.0
            stats.instant_starts += 1
        else:
            wait = self.schedule.next_online(play.started_at) - play.started_at
            bitrate_kbps = policy.choose_start(self.estimator.estimate_kbps(), settings.head_ms)
            result = await self.env.cdn.fetch_head(
                play.track_id,
                play.duration_ms,
                bitrate_kbps,
                settings.head_ms,
                self.profile.territory,
                self.schedule.at(play.started_at + wait),
            )
            stats.count_fetch(result)
            self.estimator.sample(result.transfer_seconds, result.size_bytes)
            head = Head(bitrate_kbps, settings.head_ms)
            startup_seconds = wait + result.total_seconds
            stats.startup_fetched.add(startup_seconds)
        stats.streamed_starts += 1
        stats.startup_all.add(startup_seconds)
        audio_starts_at = play.started_at + startup_seconds
        await self._prefetch_next(play, audio_starts_at)
        outcome = stream_play(
            audio_starts_at=audio_starts_at,
            ms_played=play.ms_played,
            duration_ms=play.duration_ms,
            head=head,
            schedule=self.schedule,
            estimator=self.estimator,
            policy=policy,
            noise=self._noise,
        )
        stats.bitrate_switches += outcome.switches
        stats.rebuffers += outcome.rebuffers
        stats.stall_seconds += outcome.stall_ms / 1000
        return outcome.main_kbps

    async def _prefetch_next(self, play: PlannedPlay, audio_starts_at: float) -> None:
        """While ``play`` plays, fetch the first seconds of the track likely to follow."""
        settings = self.env.settings
        if not settings.prefetch or play.next_likely is None or play.ms_played < settings.prefetch_after_ms:
            return  # nothing to guess, or skipped before the prefetch would have started
        moment = audio_starts_at + settings.prefetch_after_ms / 1000
        link = self.schedule.at(moment)
        if not link.online:
            return
        await self.env.clock.sleep_until(moment)
        bitrate_kbps = self.env.policy.choose_start(self.estimator.estimate_kbps(), settings.head_ms)
        result = await self.env.cdn.fetch_head(
            play.next_likely,
            self.env.durations_ms[play.next_likely],
            bitrate_kbps,
            settings.head_ms,
            self.profile.territory,
            link,
        )
        self.env.stats.count_fetch(result)
        self.env.stats.prefetches += 1
        self.estimator.sample(result.transfer_seconds, result.size_bytes)
        self._prefetched = Prefetched(
            play.next_likely, bitrate_kbps, settings.head_ms, moment + result.total_seconds
        )

    def _record(self, play: PlannedPlay, bitrate_kbps: int) -> None:
        record, event = play_event(play, self.profile, bitrate_kbps)
        # Due when the device next has a network; every device is back online when the span ends.
        deliver_after = max(
            play.ended_at, min(self.schedule.next_online(play.ended_at), self.env.simulation_end)
        )
        stats = self.env.stats
        if not self.env.outbox.record(record, event, recorded_at=play.ended_at, deliver_after=deliver_after):
            stats.plays_already_recorded += 1
            return
        stats.plays += 1
        stats.plays_under_30s += play.ms_played < STREAM_MS
        stats.plays_offline += play.offline
