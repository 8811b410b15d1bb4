"""Prefetch: what each context predicts will play next, and when a prefetch serves a start."""

from __future__ import annotations

import pytest

from ingest.client.contexts import ContextKind, PlaybackContext, continuation, radio_context
from ingest.client.prefetch import Prefetched, next_likely_track
from ingest.client.world import MusicWorld
from ledger.catalog import DEFAULT_CATALOG_DIR, Catalog


@pytest.fixture(scope="module")
def world() -> MusicWorld:
    return MusicWorld.build(Catalog.load(DEFAULT_CATALOG_DIR), seed=11)


def an_album(world: MusicWorld, tracks: int) -> tuple[str, ...]:
    return next(album.track_ids for album in world.albums.values() if len(album.track_ids) >= tracks)


def test_on_an_album_it_is_the_next_track_number(world: MusicWorld) -> None:
    album = an_album(world, 3)
    assert next_likely_track(PlaybackContext(ContextKind.ALBUM, album, 0), world) == album[1]
    assert next_likely_track(PlaybackContext(ContextKind.ALBUM, album, 1), world) == album[2]


def test_after_the_last_track_of_an_album_it_is_autoplay_radio(world: MusicWorld) -> None:
    album = an_album(world, 2)
    last = PlaybackContext(ContextKind.ALBUM, album, len(album) - 1)
    autoplay = world.radio_queue(album[-1])
    assert next_likely_track(last, world) == autoplay[0]
    following = continuation(last, world)
    assert following is not None and (following.kind, following.track_id) == (ContextKind.RADIO, autoplay[0])


def test_on_a_shuffled_playlist_it_is_the_next_in_shuffled_order(world: MusicWorld) -> None:
    shuffled = tuple(reversed(world.playlists[0]))  # the player fixed the order when shuffle was pressed
    assert next_likely_track(PlaybackContext(ContextKind.PLAYLIST, shuffled, 0), world) == shuffled[1]


def test_on_a_daily_mix_it_is_the_next_recommendation(world: MusicWorld) -> None:
    mix = world.playlists[1][:10]
    assert next_likely_track(PlaybackContext(ContextKind.DAILY_MIX, mix, 4), world) == mix[5]


def test_on_radio_it_is_the_next_in_the_station_queue_the_same_for_every_listener(world: MusicWorld) -> None:
    station = radio_context(world, world.by_popularity[0])
    assert next_likely_track(station, world) == station.queue[1]
    assert world.radio_queue(world.by_popularity[0]) == MusicWorld.build(
        Catalog.load(DEFAULT_CATALOG_DIR), seed=11
    ).radio_queue(world.by_popularity[0])
    assert world.by_popularity[0] not in station.queue  # a station never plays its seed


def test_after_a_search_nothing_is_prefetched(world: MusicWorld) -> None:
    assert next_likely_track(PlaybackContext(ContextKind.SEARCH, (world.by_popularity[3],)), world) is None


def test_a_prefetch_serves_only_its_track_and_only_once_downloaded() -> None:
    prefetched = Prefetched("T00007", 160, 3_000, ready_at=100.0)
    assert prefetched.serves("T00007", start=100.0)
    assert not prefetched.serves("T00007", start=99.9)  # still downloading: a normal start
    assert not prefetched.serves("T00008", start=200.0)  # the listener chose something else
