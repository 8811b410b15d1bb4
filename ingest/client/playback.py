"""A play after its first seconds: segment by segment, with buffer, ABR and rebuffers.

The first seconds of every play are fetched from the CDN for real (or were prefetched).
The rest of the play is streamed against the listener's network schedule instead:
downloading every segment for real would move about 75 GB for a day of 1,000
listeners, far beyond what a compressed day on one machine can carry. Each segment
takes the spell's round trip plus its size over the spell's downlink (with per-segment
noise), waits out tunnels, and feeds the same throughput estimator and ABR policy the
real fetches do. Playback drains the buffer meanwhile; when it runs dry before a
segment arrives, that is a rebuffer. The player keeps up to ``buffer_target_ms`` ahead.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from ingest.cdn.media import bytes_for_ms
from ingest.client.abr import AbrPolicy, ThroughputEstimator
from ingest.client.network import NetworkSchedule

__all__ = ["Head", "PlaybackOutcome", "stream_play"]

BUFFER_TARGET_MS = 30_000
THROUGHPUT_NOISE_SIGMA = 0.25


@dataclass(frozen=True)
class Head:
    """The start of a play already in the buffer: its rendition and audio length."""

    bitrate_kbps: int
    audio_ms: int


@dataclass
class PlaybackOutcome:
    """What streaming one play took."""

    rebuffers: int = 0
    stall_ms: float = 0.0
    switches: int = 0
    segments: int = 0
    audio_ms_by_kbps: dict[int, float] = field(default_factory=dict)

    @property
    def main_kbps(self) -> int:
        """The rendition most of the play was heard in (the higher one on a tie)."""
        return max(self.audio_ms_by_kbps.items(), key=lambda item: (item[1], item[0]))[0]


def stream_play(
    *,
    audio_starts_at: float,
    ms_played: int,
    duration_ms: int,
    head: Head,
    schedule: NetworkSchedule,
    estimator: ThroughputEstimator,
    policy: AbrPolicy,
    noise: random.Random,
    buffer_target_ms: int = BUFFER_TARGET_MS,
) -> PlaybackOutcome:
    """Stream a play whose audio starts at ``audio_starts_at`` (simulated seconds) from ``head``."""
    outcome = PlaybackOutcome(audio_ms_by_kbps={head.bitrate_kbps: float(min(head.audio_ms, ms_played))})
    moment = audio_starts_at
    played = 0.0
    buffered = float(min(head.audio_ms, duration_ms))
    current = head.bitrate_kbps
    since_switch = 0
    while played < ms_played and buffered < duration_ms:
        level = buffered - played
        if level >= buffer_target_ms:
            idle = min(level - buffer_target_ms + 1.0, ms_played - played)
            played += idle
            moment += idle / 1000
            continue
        kbps = policy.choose(current, estimator.estimate_kbps(), level, since_switch)
        if kbps != current:
            outcome.switches += 1
            current, since_switch = kbps, 0
        else:
            since_switch += 1
        segment_end = min((math.floor(buffered / policy.segment_ms) + 1) * policy.segment_ms, duration_ms)
        chunk_ms = segment_end - buffered
        size = bytes_for_ms(kbps, round(chunk_ms))
        wait = schedule.next_online(moment) - moment
        spell = schedule.at(moment + wait)
        transfer = size * 8 / 1000 / (spell.downlink_kbps * math.exp(noise.gauss(0, THROUGHPUT_NOISE_SIGMA)))
        estimator.sample(transfer, size)
        elapsed_ms = (wait + spell.rtt_ms / 1000 + transfer) * 1000
        remaining = ms_played - played
        if level >= min(elapsed_ms, remaining):
            played += min(elapsed_ms, remaining)
        else:
            outcome.rebuffers += 1  # the buffer ran dry before the segment arrived
            outcome.stall_ms += elapsed_ms - level
            played = buffered
        moment += elapsed_ms / 1000
        heard = max(0.0, min(segment_end, ms_played) - min(buffered, ms_played))
        outcome.audio_ms_by_kbps[kbps] = outcome.audio_ms_by_kbps.get(kbps, 0.0) + heard
        buffered = segment_end
        outcome.segments += 1
    return outcome
