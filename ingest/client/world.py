"""The music a simulated population chooses from, built from the catalog and a seed.

Popularity follows a Zipf law over a seeded ranking of the catalog's tracks, so a few
tracks are hot (and stay in the CDN's edge caches) and the long tail is niche. The
catalog has no albums, so each artist's tracks, in catalog order, form one album whose
track numbers are that order. Editorial playlists are drawn by popularity. A radio
station seeded by a track plays that artist, its neighbours in a seeded "similar
artists" ring, and popular tracks; its queue depends only on the world's seed and the
seed track, so the player can know what the station plays next.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ledger.catalog import Catalog

__all__ = ["Album", "MusicWorld"]

ZIPF_EXPONENT = 1.0
PLAYLIST_COUNT = 40
RADIO_QUEUE_LENGTH = 30
# A radio station's share of tracks by the seed artist or a similar one; the rest is popular picks.
RADIO_SIMILAR_SHARE = 0.45
SIMILAR_ARTIST_REACH = 3


@dataclass(frozen=True)
class Album:
    """An artist's album: its tracks in track-number order."""

    album_id: str
    artist: str
    track_ids: tuple[str, ...]


class MusicWorld:
    """Tracks with popularity, albums, playlists and radio stations. Build it with ``build``."""

    def __init__(
        self,
        seed: int,
        durations_ms: Mapping[str, int],
        by_popularity: Sequence[str],
        artist_of: Mapping[str, str],
        playlists: Sequence[tuple[str, ...]],
    ) -> None:
        self.seed = seed
        self.durations_ms = dict(durations_ms)
        self.by_popularity = tuple(by_popularity)
        self.artist_of = dict(artist_of)
        self.playlists = tuple(playlists)
        weights = [1 / (rank + 1) ** ZIPF_EXPONENT for rank in range(len(self.by_popularity))]
        self._cumulative = list(itertools.accumulate(weights))
        tracks_by_artist: dict[str, list[str]] = {}
        for track_id in self.durations_ms:  # catalog order is track-number order
            tracks_by_artist.setdefault(self.artist_of[track_id], []).append(track_id)
        self.albums = {
            artist: Album(f"album-{number:04d}", artist, tuple(tracks))
            for number, (artist, tracks) in enumerate(sorted(tracks_by_artist.items()))
        }
        ring = sorted(self.albums)
        random.Random(f"{seed}:artists").shuffle(ring)
        self._similar_ring = ring
        self._ring_position = {artist: index for index, artist in enumerate(ring)}
        self._radio_queues: dict[str, tuple[str, ...]] = {}

    @classmethod
    def build(cls, catalog: Catalog, seed: int, playlist_count: int = PLAYLIST_COUNT) -> MusicWorld:
        """The world of ``catalog`` for ``seed``: the same seed, the same world."""
        rng = random.Random(f"{seed}:world")
        by_popularity = list(catalog.tracks)
        rng.shuffle(by_popularity)
        world = cls(
            seed,
            {track_id: track.duration_ms for track_id, track in catalog.tracks.items()},
            by_popularity,
            {track_id: track.artist for track_id, track in catalog.tracks.items()},
            playlists=(),
        )
        playlists = [world.distinct_popular(rng, rng.randint(15, 60)) for _ in range(playlist_count)]
        world.playlists = tuple(playlists)
        return world

    def popular_track(self, rng: random.Random) -> str:
        """One track drawn by popularity."""
        return rng.choices(self.by_popularity, cum_weights=self._cumulative)[0]

    def distinct_popular(self, rng: random.Random, count: int) -> tuple[str, ...]:
        """``count`` different tracks drawn by popularity (fewer if the catalog is smaller)."""
        count = min(count, len(self.by_popularity))
        chosen: dict[str, None] = {}
        while len(chosen) < count:
            chosen.setdefault(self.popular_track(rng))
        return tuple(chosen)

    def album_of(self, track_id: str) -> Album:
        """The album ``track_id`` is on."""
        return self.albums[self.artist_of[track_id]]

    def similar_artists(self, artist: str) -> list[str]:
        """``artist`` and its neighbours on the similar-artists ring."""
        position = self._ring_position[artist]
        size = len(self._similar_ring)
        return [
            self._similar_ring[(position + step) % size]
            for step in range(-SIMILAR_ARTIST_REACH, SIMILAR_ARTIST_REACH + 1)
        ]

    def radio_queue(self, seed_track_id: str) -> tuple[str, ...]:
        """What the station seeded by ``seed_track_id`` plays, in order."""
        queue = self._radio_queues.get(seed_track_id)
        if queue is None:
            queue = self._make_radio_queue(seed_track_id)
            self._radio_queues[seed_track_id] = queue
        return queue

    def _make_radio_queue(self, seed_track_id: str) -> tuple[str, ...]:
        rng = random.Random(f"{self.seed}:radio:{seed_track_id}")
        similar = [
            track_id
            for artist in self.similar_artists(self.artist_of[seed_track_id])
            for track_id in self.albums[artist].track_ids
            if track_id != seed_track_id
        ]
        queue: list[str] = []
        attempts = 0
        while len(queue) < RADIO_QUEUE_LENGTH and attempts < RADIO_QUEUE_LENGTH * 20:
            attempts += 1
            pick = (
                rng.choice(similar)
                if similar and rng.random() < RADIO_SIMILAR_SHARE
                else self.popular_track(rng)
            )
            # A station never plays its seed or repeats one of its last ten tracks.
            if pick != seed_track_id and pick not in queue[-10:]:
                queue.append(pick)
        return tuple(queue)
