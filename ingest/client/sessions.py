"""What each listener plays: sessions in contexts, with realistic skips, over the simulated span.

A listener's plays depend only on the seed (their own random stream, the world and
their network schedule), never on timing or on the network's measured behaviour, so
``--seed`` makes the ground truth reproducible and the player can be killed and rerun.

- Sessions arrive as a Poisson process whose rate follows the listener's local time of
  day (quiet at night, peaks on the commute and in the evening).
- A session starts in a context (album, playlist, daily mix, radio, search) and lets
  it continue (``continuation``), except that the listener sometimes jumps to another
  track, and after a search usually searches again.
- Skips depend on the context: many plays end before 30 s (radio most, search least),
  some stop midway, most complete.
- Offline (a long offline period) only premium listeners play, from their downloads;
  a free listener's session ends when the network goes. A stream that is playing when
  the network goes stops once its buffer has played out.
"""

from __future__ import annotations

import itertools
import math
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from ingest.client.contexts import ContextKind, PlaybackContext, continuation, radio_context
from ingest.client.network import DAY_SECONDS, NetworkKind, NetworkSchedule
from ingest.client.population import ListenerProfile
from ingest.client.prefetch import next_likely_track
from ingest.client.world import MusicWorld

__all__ = ["SKIP_SHARES", "PlannedPlay", "ms_played_for", "plan_plays"]

# Relative session rate per local hour, midnight first.
DIURNAL_WEIGHTS = (
    0.6, 0.35, 0.2, 0.15, 0.15, 0.25, 0.6, 1.2, 1.6, 1.3, 1.1, 1.1,
    1.2, 1.2, 1.1, 1.2, 1.4, 1.7, 1.8, 1.7, 1.6, 1.4, 1.1, 0.8,
)  # fmt: skip
START_CONTEXTS: tuple[tuple[ContextKind, float], ...] = (
    (ContextKind.ALBUM, 0.20),
    (ContextKind.PLAYLIST, 0.33),
    (ContextKind.DAILY_MIX, 0.17),
    (ContextKind.RADIO, 0.15),
    (ContextKind.SEARCH, 0.15),
)
# (share of plays skipped before 30 s, share stopped after 30 s but before the end) per context.
SKIP_SHARES: dict[ContextKind, tuple[float, float]] = {
    ContextKind.ALBUM: (0.12, 0.10),
    ContextKind.PLAYLIST: (0.22, 0.13),
    ContextKind.DAILY_MIX: (0.28, 0.12),
    ContextKind.RADIO: (0.35, 0.12),
    ContextKind.SEARCH: (0.08, 0.15),
}
MEAN_PLAYS_PER_SESSION = 8.0
MAX_PLAYS_PER_SESSION = 60
JUMP_SHARE = 0.08  # the listener picks another track than the one the context would play
SEARCH_AGAIN_SHARE = 0.7
SESSION_GAP_SECONDS = 60.0
STREAM_MS = 30_000
BUFFERED_WHEN_OFFLINE_MS = 10_000


@dataclass(frozen=True)
class PlannedPlay:
    """One play a listener makes: what, from where, when, for how long, online or not."""

    event_id: str
    user_id: str
    track_id: str
    context: ContextKind
    started_at: float  # simulated epoch seconds: when the listener pressed play
    ms_played: int
    duration_ms: int
    offline: bool
    next_likely: str | None  # what the player prefetches while this plays

    @property
    def ended_at(self) -> float:
        """When the play ended, in simulated epoch seconds."""
        return self.started_at + self.ms_played / 1000


def ms_played_for(kind: ContextKind, duration_ms: int, rng: random.Random) -> int:
    """How long one play of a ``duration_ms`` track lasts in context ``kind``."""
    early, midway = SKIP_SHARES[kind]
    draw = rng.random()
    if draw < early:
        # Most early skips come within the first seconds: a beta skewed towards zero.
        return int(min(duration_ms, STREAM_MS) * rng.betavariate(0.9, 2.2))
    if draw < early + midway and duration_ms > STREAM_MS + 1_000:
        return rng.randrange(STREAM_MS, int(duration_ms * 0.95) + 1)
    return duration_ms


def _poisson(rng: random.Random, mean: float) -> int:
    if mean > 30:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, count, product = math.exp(-mean), 0, rng.random()
    while product > limit:
        count += 1
        product *= rng.random()
    return count


def _session_starts(
    rng: random.Random, count: int, start: float, end: float, offset_minutes: int
) -> list[float]:
    """``count`` times in ``[start, end)``, denser in the listener's busy local hours."""
    slots: list[tuple[float, float]] = []
    weights: list[float] = []
    offset = offset_minutes * 60
    moment = start
    while moment < end:
        local_hour_start = math.floor((moment + offset) / 3600) * 3600
        slot_end = min(end, local_hour_start + 3600 - offset)
        slots.append((moment, slot_end))
        weights.append(DIURNAL_WEIGHTS[int(local_hour_start // 3600) % 24] * (slot_end - moment))
        moment = slot_end
    if not slots:
        return []
    cumulative = list(itertools.accumulate(weights))
    picked = rng.choices(slots, cum_weights=cumulative, k=count)
    return sorted(rng.uniform(low, high) for low, high in picked)


def _start_context(
    profile: ListenerProfile, world: MusicWorld, rng: random.Random, offline: bool
) -> PlaybackContext:
    kinds = [(kind, weight) for kind, weight in START_CONTEXTS]
    if offline:  # downloads only: no station or search without a network
        kinds = [
            (kind, weight) for kind, weight in kinds if kind not in (ContextKind.RADIO, ContextKind.SEARCH)
        ]
    kind = rng.choices([kind for kind, _ in kinds], weights=[weight for _, weight in kinds])[0]
    if kind is ContextKind.ALBUM:
        if profile.favourite_artists and rng.random() < 0.6:
            album = world.albums[rng.choice(profile.favourite_artists)]
        else:
            album = world.album_of(world.popular_track(rng))
        position = 0 if rng.random() < 0.75 else rng.randrange(len(album.track_ids))
        return PlaybackContext(kind, album.track_ids, position)
    if kind is ContextKind.PLAYLIST:
        playlist = list(rng.choice(world.playlists))
        if rng.random() < 0.5:
            rng.shuffle(playlist)  # shuffle: the order is fixed now, so the player knows it
        return PlaybackContext(kind, tuple(playlist))
    if kind is ContextKind.DAILY_MIX:
        return PlaybackContext(kind, profile.daily_mix)
    if kind is ContextKind.RADIO:
        return radio_context(world, world.popular_track(rng))
    return _search(profile, world, rng)


def _search(profile: ListenerProfile, world: MusicWorld, rng: random.Random) -> PlaybackContext:
    if profile.favourite_artists and rng.random() < 0.3:
        track_id = rng.choice(world.albums[rng.choice(profile.favourite_artists)].track_ids)
    else:
        track_id = world.popular_track(rng)
    return PlaybackContext(ContextKind.SEARCH, (track_id,))


def _next_context(
    context: PlaybackContext, profile: ListenerProfile, world: MusicWorld, rng: random.Random
) -> PlaybackContext:
    """What the listener plays next within the session."""
    if context.kind is ContextKind.SEARCH:
        if rng.random() < SEARCH_AGAIN_SHARE:
            return _search(profile, world, rng)
        album = world.album_of(context.track_id)  # "go to album"
        return PlaybackContext(ContextKind.ALBUM, album.track_ids, album.track_ids.index(context.track_id))
    following = continuation(context, world)
    assert following is not None  # only a search play has no continuation
    if rng.random() < JUMP_SHARE:
        if rng.random() < 0.4:
            return _search(profile, world, rng)
        return PlaybackContext(context.kind, context.queue, rng.randrange(len(context.queue)))
    return following


def plan_plays(
    profile: ListenerProfile,
    world: MusicWorld,
    schedule: NetworkSchedule,
    rng: random.Random,
    start: float,
    end: float,
) -> Iterator[PlannedPlay]:
    """Every play ``profile`` starts in ``[start, end)``, in order (the last may end after ``end``)."""
    sessions = _poisson(rng, profile.sessions_per_day * (end - start) / DAY_SECONDS)
    free_from = start
    for session_start in _session_starts(rng, sessions, start, end, profile.utc_offset_minutes):
        moment = max(session_start, free_from)
        offline = schedule.at(moment).kind is NetworkKind.OFFLINE
        if moment >= end or (offline and not profile.can_play_offline):
            continue
        context = _start_context(profile, world, rng, offline)
        plays = min(MAX_PLAYS_PER_SESSION, 1 + int(rng.expovariate(1 / (MEAN_PLAYS_PER_SESSION - 1))))
        for number in range(plays):
            offline = schedule.at(moment).kind is NetworkKind.OFFLINE
            if moment >= end or (offline and not profile.can_play_offline):
                break
            duration_ms = world.durations_ms[context.track_id]
            ms_played = ms_played_for(context.kind, duration_ms, rng)
            network_gone = None if offline else schedule.offline_from(moment, moment + ms_played / 1000)
            if network_gone is not None:
                # The network goes for hours mid-stream: what is buffered plays out, then it stops.
                ms_played = min(ms_played, int((network_gone - moment) * 1000) + BUFFERED_WHEN_OFFLINE_MS)
            yield PlannedPlay(
                event_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                user_id=profile.user_id,
                track_id=context.track_id,
                context=context.kind,
                started_at=moment,
                ms_played=ms_played,
                duration_ms=duration_ms,
                offline=offline,
                next_likely=next_likely_track(context, world),
            )
            # The next track starts as this one stops; a skip takes a moment longer.
            moment += ms_played / 1000 + (rng.uniform(0.3, 2.0) if ms_played < duration_ms else 0.0)
            if number + 1 < plays:
                context = _next_context(context, profile, world, rng)
                if offline and context.kind in (ContextKind.RADIO, ContextKind.SEARCH):
                    break  # nothing downloaded to carry on with
        free_from = moment + SESSION_GAP_SECONDS
