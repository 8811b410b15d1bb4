"""The simulated population: deterministic by seed, realistic skips, contexts, networks, offline plays."""

from __future__ import annotations

import datetime as dt
import itertools
from collections import Counter
from dataclasses import replace

import pytest

from ingest.client.contexts import ContextKind
from ingest.client.network import NetworkKind, NetworkSchedule, NetworkSpell, generate_schedule
from ingest.client.player import play_event
from ingest.client.population import ListenerProfile, build_population, listener_rng
from ingest.client.sessions import PlannedPlay, plan_plays
from ingest.client.world import MusicWorld
from ledger.catalog import DEFAULT_CATALOG_DIR, Catalog
from schemas.validation import validate_event

START = dt.datetime(2026, 11, 2, tzinfo=dt.UTC).timestamp()
DAY = 86_400.0


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.load(DEFAULT_CATALOG_DIR)


Plan = list[tuple[ListenerProfile, NetworkSchedule, list[PlannedPlay]]]


def plan(catalog: Catalog, seed: int, users: int, days: float = 1.0) -> Plan:
    """Every listener's network and plays for ``seed``, the way ``simulate`` makes them."""
    world = MusicWorld.build(catalog, seed)
    planned = []
    for profile in build_population(world, seed, users):
        end = START + days * DAY
        schedule = generate_schedule(profile, listener_rng(seed, profile.index, "network"), START, end)
        plays = plan_plays(profile, world, schedule, listener_rng(seed, profile.index, "plays"), START, end)
        planned.append((profile, schedule, list(plays)))
    return planned


@pytest.fixture(scope="module")
def day(catalog: Catalog) -> Plan:
    return plan(catalog, seed=42, users=400)


def all_plays(planned: Plan) -> list[PlannedPlay]:
    return [play for _, _, plays in planned for play in plays]


def test_the_same_seed_makes_the_same_plays_and_another_seed_others(catalog: Catalog, day: Plan) -> None:
    again = plan(catalog, seed=42, users=400)
    assert all_plays(again) == all_plays(day)
    assert [schedule.spells for _, schedule, _ in again] == [schedule.spells for _, schedule, _ in day]
    other = all_plays(plan(catalog, seed=43, users=400))
    assert {play.event_id for play in other}.isdisjoint({play.event_id for play in all_plays(day)})


def test_a_listener_is_the_same_person_in_a_small_and_a_large_population(catalog: Catalog, day: Plan) -> None:
    small = plan(catalog, seed=42, users=5)
    assert [(profile, schedule.spells, plays) for profile, schedule, plays in small] == [
        (profile, schedule.spells, plays) for profile, schedule, plays in day[:5]
    ]


def test_a_day_of_plays_has_many_skips_and_mostly_completions(day: Plan) -> None:
    plays = all_plays(day)
    assert 3_000 < len(plays) < 12_000  # 400 listeners, a handful of sessions each
    under_30s = sum(play.ms_played < 30_000 for play in plays) / len(plays)
    complete = sum(play.ms_played == play.duration_ms for play in plays) / len(plays)
    assert 0.15 < under_30s < 0.35
    assert complete > 0.55
    contexts = Counter(play.context for play in plays)
    assert set(contexts) == set(ContextKind)
    assert contexts[ContextKind.RADIO] > contexts[ContextKind.SEARCH] / 2  # autoplay keeps radio busy


def test_plays_of_a_listener_follow_one_another_within_the_span(day: Plan) -> None:
    for _, _, plays in day:
        for before, after in itertools.pairwise(plays):
            assert before.ended_at <= after.started_at
        assert all(START <= play.started_at < START + DAY for play in plays)


def test_only_premium_listeners_play_offline_and_only_while_offline(day: Plan) -> None:
    offline = [
        (profile, schedule, play) for profile, schedule, plays in day for play in plays if play.offline
    ]
    assert offline, "some travellers play their downloads"
    for profile, schedule, play in offline:
        assert profile.product == "premium"
        assert schedule.at(play.started_at).kind is NetworkKind.OFFLINE
        assert play.context not in (ContextKind.RADIO, ContextKind.SEARCH)
    for profile, schedule, plays in day:
        if profile.product == "free":
            assert not any(schedule.at(play.started_at).kind is NetworkKind.OFFLINE for play in plays)


@pytest.mark.parametrize("product", ["premium", "free"])
def test_a_stream_stops_soon_after_the_network_goes_for_hours(catalog: Catalog, product: str) -> None:
    world = MusicWorld.build(catalog, 7)
    # A listener who barely stops listening, on wifi until a flight half an hour in.
    profile = replace(build_population(world, 7, 1)[0], sessions_per_day=2_000, product=product)
    gone = START + 1_800
    schedule = NetworkSchedule(
        [
            NetworkSpell(NetworkKind.WIFI, START, gone, 20_000, 15),
            NetworkSpell(NetworkKind.OFFLINE, gone, gone + 4 * 3600, 0, 0),
        ]
    )
    plays = list(plan_plays(profile, world, schedule, listener_rng(7, 0, "plays"), START, START + 3_600))
    playing = [play for play in plays if play.started_at < gone][-1]  # when the network went
    assert not playing.offline
    assert gone < playing.ended_at <= gone + 10.0  # cut: what was buffered plays out, then it stops
    after = [play for play in plays if play.started_at >= gone]
    if product == "premium":
        assert after and all(play.offline for play in after)  # the downloads carry on
    else:
        assert after == []  # nothing to play without a network


def test_networks_change_over_the_day_with_tunnels_and_long_offline_periods(day: Plan) -> None:
    kinds: Counter[NetworkKind] = Counter()
    for profile, schedule, _ in day:
        spells = schedule.spells
        assert spells[0].start == START and spells[-1].end >= START + DAY
        for before, after in itertools.pairwise(spells):
            assert before.end == after.start
            if after.kind is NetworkKind.TUNNEL:
                assert before.kind in (NetworkKind.FIVE_G, NetworkKind.FOUR_G, NetworkKind.THREE_G)
            if before.kind is NetworkKind.TUNNEL and after.kind is not NetworkKind.OFFLINE:
                assert after.kind in (NetworkKind.FIVE_G, NetworkKind.FOUR_G, NetworkKind.THREE_G)
        kinds.update(spell.kind for spell in spells)
        offline = [spell for spell in spells if spell.kind is NetworkKind.OFFLINE]
        assert len(offline) <= 1 and (not offline or profile.traveller)
        assert all(spell.end - spell.start >= 2 * 3600 for spell in offline)
    assert set(kinds) == set(NetworkKind)
    assert kinds[NetworkKind.TUNNEL] > 0 and kinds[NetworkKind.OFFLINE] > 0


def test_every_play_makes_a_valid_contract_event(day: Plan) -> None:
    for profile, _, plays in day[:60]:
        for play in plays:
            record, event = play_event(play, profile, 160)
            valid, errors = validate_event(event)
            assert valid is not None, errors
            assert valid["played_at"] == dt.datetime.fromtimestamp(record.played_at_ms / 1000, dt.UTC)
            assert str(event["played_at"]).endswith(
                f"{'+' if profile.utc_offset_minutes >= 0 else '-'}"
                f"{abs(profile.utc_offset_minutes) // 60:02d}:{abs(profile.utc_offset_minutes) % 60:02d}"
            )
