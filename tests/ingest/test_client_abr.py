"""Adaptive bitrate: the throughput estimate, each rule of the rendition choice, and playback."""

from __future__ import annotations

import random

import pytest

from ingest.client.abr import AbrPolicy, ThroughputEstimator
from ingest.client.network import NetworkKind, NetworkSchedule, NetworkSpell
from ingest.client.playback import Head, stream_play

POLICY = AbrPolicy()  # 96/160/320 kbps, 10 s segments, plan with 70 % of the estimate


def measured(kbps: float, transfers: int = 8) -> ThroughputEstimator:
    estimator = ThroughputEstimator()
    for _ in range(transfers):
        estimator.sample(1.0, int(kbps * 125))
    return estimator


def test_the_estimate_is_the_default_until_measured_and_ignores_tiny_transfers() -> None:
    estimator = ThroughputEstimator(default_kbps=1_000)
    estimator.sample(0.001, 2_000)  # 2 kB mostly measures latency, not throughput
    assert estimator.estimate_kbps() == 1_000 and estimator.samples == 0
    estimator.sample(1.0, 250_000)
    assert estimator.estimate_kbps() == pytest.approx(2_000)


def test_the_estimate_drops_at_once_and_recovers_with_caution() -> None:
    estimator = measured(10_000)
    estimator.sample(1.0, 1_000 * 125)  # one slow transfer at 1,000 kbit/s
    dropped = estimator.estimate_kbps()
    assert dropped < 7_500  # the fast average (2 s half-life) pulls the estimate down at once
    estimator.sample(1.0, 10_000 * 125)
    assert dropped < estimator.estimate_kbps() < 10_000  # the slow average holds it back


@pytest.mark.parametrize(
    ("estimate_kbps", "expected"),
    [(50_000, 320), (1_500, 160), (800, 96), (100, 96)],
)
def test_a_start_takes_the_highest_rendition_well_within_the_estimate(
    estimate_kbps: float, expected: int
) -> None:
    assert POLICY.choose_start(estimate_kbps, head_ms=3_000) == expected


def test_a_start_steps_down_when_the_next_segment_would_not_arrive_before_the_head_plays_out() -> None:
    # Half of 1,500 kbit/s sustains 320 by rate, but a 10 s segment at 320 takes 3 s at
    # 70 % of 1,500: more than 80 % of a 3 s head; at 160 it takes 1.5 s.
    assert POLICY.choose_start(1_500, head_ms=3_000) == 160
    assert POLICY.choose_start(1_500, head_ms=8_000) == 320


def test_below_the_panic_level_it_takes_the_lowest_rendition_whatever_the_estimate() -> None:
    assert POLICY.choose(320, 100_000, buffer_ms=1_500, segments_since_switch=10) == 96


def test_it_steps_down_at_once_when_the_estimate_no_longer_sustains_the_rendition() -> None:
    # 70 % of 300 is 210: 320 is not sustained, 160 is.
    assert POLICY.choose(320, 300, buffer_ms=25_000, segments_since_switch=0) == 160


def test_it_steps_down_when_the_next_segment_would_drain_the_buffer() -> None:
    # 320 is sustained by rate (70 % of 600 = 420), but a segment takes 7.6 s: more than 80 % of 8 s.
    assert POLICY.choose(320, 600, buffer_ms=8_000, segments_since_switch=5) == 160


def test_it_steps_up_one_rendition_only_with_margin_buffer_and_after_holding() -> None:
    plenty = 100_000
    assert POLICY.choose(96, plenty, buffer_ms=20_000, segments_since_switch=2) == 160  # one step, not two
    assert POLICY.choose(96, plenty, buffer_ms=20_000, segments_since_switch=1) == 96  # held too briefly
    assert POLICY.choose(96, plenty, buffer_ms=8_000, segments_since_switch=5) == 96  # buffer too low


def test_hysteresis_keeps_the_rendition_between_the_down_and_up_thresholds() -> None:
    # Down below 160 / 0.7 = 229 kbit/s; up above 320 x 1.3 / 0.7 = 594 kbit/s. In between: stay.
    for estimate_kbps in (240, 400, 590):
        assert POLICY.choose(160, estimate_kbps, buffer_ms=30_000, segments_since_switch=9) == 160
    assert POLICY.choose(160, 600, buffer_ms=30_000, segments_since_switch=9) == 320
    assert POLICY.choose(160, 220, buffer_ms=30_000, segments_since_switch=9) == 96


def constant(kbps: float, rtt_ms: float = 30) -> NetworkSchedule:
    return NetworkSchedule([NetworkSpell(NetworkKind.WIFI, 0, 10**9, kbps, rtt_ms)])


def test_a_fast_network_plays_at_the_top_rendition_without_switching_or_stalling() -> None:
    estimator = measured(30_000)
    outcome = stream_play(
        audio_starts_at=0,
        ms_played=240_000,
        duration_ms=240_000,
        head=Head(320, 3_000),
        schedule=constant(30_000),
        estimator=estimator,
        policy=POLICY,
        noise=random.Random(1),
    )
    assert (outcome.switches, outcome.rebuffers, outcome.main_kbps) == (0, 0, 320)
    assert sum(outcome.audio_ms_by_kbps.values()) == 240_000


def test_a_known_slow_network_plays_a_low_rendition_and_never_stalls() -> None:
    estimator = measured(300)
    head_kbps = POLICY.choose_start(estimator.estimate_kbps(), head_ms=3_000)
    outcome = stream_play(
        audio_starts_at=0,
        ms_played=200_000,
        duration_ms=200_000,
        head=Head(head_kbps, 3_000),
        schedule=constant(300, rtt_ms=200),  # 3G at 300 kbit/s: 320 cannot be sustained
        estimator=estimator,
        policy=POLICY,
        noise=random.Random(2),
    )
    assert (head_kbps, outcome.rebuffers) == (96, 0)
    assert outcome.main_kbps == 96


def test_a_sudden_drop_stalls_only_while_the_estimate_adapts_then_quality_gives_way() -> None:
    outcome = stream_play(
        audio_starts_at=0,
        ms_played=200_000,
        duration_ms=200_000,
        head=Head(320, 3_000),
        schedule=constant(300, rtt_ms=200),  # measured at 3,000 kbit/s, the network is now 300
        estimator=measured(3_000),
        policy=POLICY,
        noise=random.Random(2),
    )
    assert 1 <= outcome.rebuffers <= 2  # the segments in flight before the estimate caught up
    assert outcome.switches >= 1
    assert outcome.audio_ms_by_kbps[96] >= 0.8 * 200_000


def test_a_tunnel_longer_than_the_buffer_stalls_playback_once() -> None:
    schedule = NetworkSchedule(
        [
            NetworkSpell(NetworkKind.FOUR_G, 0, 60, 20_000, 40),
            NetworkSpell(NetworkKind.TUNNEL, 60, 150, 0, 0),  # 90 s without network
            NetworkSpell(NetworkKind.FOUR_G, 150, 10**9, 20_000, 40),
        ]
    )
    outcome = stream_play(
        audio_starts_at=0,
        ms_played=240_000,
        duration_ms=240_000,
        head=Head(320, 3_000),
        schedule=schedule,
        estimator=measured(20_000),
        policy=POLICY,
        noise=random.Random(3),
    )
    assert outcome.rebuffers == 1
    assert 20_000 < outcome.stall_ms < 90_000  # the tunnel, less the 30 s that were buffered


def test_a_skipped_play_downloads_only_up_to_its_buffer() -> None:
    outcome = stream_play(
        audio_starts_at=0,
        ms_played=4_000,
        duration_ms=240_000,
        head=Head(160, 3_000),
        schedule=constant(30_000),
        estimator=measured(30_000),
        policy=POLICY,
        noise=random.Random(4),
    )
    assert outcome.segments <= 4
    assert sum(outcome.audio_ms_by_kbps.values()) == 4_000
