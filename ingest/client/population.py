"""Who listens: a seeded population of listener profiles.

Listener ``n`` of seed ``s`` is the same person in a population of 10 or of 10,000:
each profile draws from a random stream of its own (``listener_rng``). Territories are
weighted like a streaming service's markets, including some that have no rate of their
own in the catalog (priced at its ``*`` fallback); premium listeners can play their
downloads while offline, free ones cannot.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from ingest.client.world import MusicWorld

__all__ = ["TERRITORIES", "ListenerProfile", "build_population", "listener_rng"]

# (territory, weight, UTC offset in minutes): markets a service like ours has, with the
# local offset their devices stamp on played_at (standard time; daylight saving ignored).
TERRITORIES: tuple[tuple[str, float, int], ...] = (
    ("US", 26, -300),
    ("BR", 10, -180),
    ("GB", 8, 0),
    ("DE", 8, 60),
    ("MX", 6, -360),
    ("FR", 6, 60),
    ("IN", 6, 330),
    ("JP", 5, 540),
    ("SE", 4, 60),
    ("CA", 4, -300),
    ("NO", 3, 60),
    ("NL", 3, 60),
    ("AU", 3, 600),
    ("ES", 3, 60),
    ("IT", 3, 60),
    ("PL", 2, 60),
)
PREMIUM_SHARE = 0.46
DEVICES: tuple[tuple[str, float], ...] = (("android", 0.45), ("ios", 0.35), ("web", 0.08), ("desktop", 0.12))
INACTIVE_SHARE = 0.15  # listeners who play nothing on a given day
MEDIAN_SESSIONS_PER_DAY = 2.2
TRAVELLER_SHARE = 0.1  # listeners with a long offline period (a flight, no data abroad) each day


@dataclass(frozen=True)
class ListenerProfile:
    """One simulated listener: where, on which plan and device, how much, and on which networks."""

    index: int
    user_id: str
    territory: str
    utc_offset_minutes: int
    product: str
    device: str
    sessions_per_day: float
    favourite_artists: tuple[str, ...]
    daily_mix: tuple[str, ...]
    home_wifi_kbps: float
    has_5g: bool
    traveller: bool
    download_kbps: int  # the quality of the downloads a premium listener plays offline

    @property
    def can_play_offline(self) -> bool:
        """Only premium listeners keep downloads to play without a network."""
        return self.product == "premium"


def listener_rng(seed: int, index: int, stream: str) -> random.Random:
    """The random stream ``stream`` of listener ``index``, independent of every other listener."""
    return random.Random(f"{seed}:listener:{index}:{stream}")


def _profile(world: MusicWorld, seed: int, index: int) -> ListenerProfile:
    rng = listener_rng(seed, index, "profile")
    territory, _, offset = rng.choices(TERRITORIES, weights=[weight for _, weight, _ in TERRITORIES])[0]
    favourite_tracks = world.distinct_popular(rng, 5)
    favourite_artists = tuple(dict.fromkeys(world.artist_of[track_id] for track_id in favourite_tracks))
    # A daily mix: the favourites' albums and popular tracks, in an order that is this listener's.
    mix = {track_id: None for artist in favourite_artists for track_id in world.albums[artist].track_ids}
    mix.update(dict.fromkeys(world.distinct_popular(rng, 30)))
    daily_mix = list(mix)
    rng.shuffle(daily_mix)
    active = rng.random() >= INACTIVE_SHARE
    return ListenerProfile(
        index=index,
        user_id=f"sim-{index:06d}",
        territory=territory,
        utc_offset_minutes=offset,
        product="premium" if rng.random() < PREMIUM_SHARE else "free",
        device=rng.choices([name for name, _ in DEVICES], weights=[weight for _, weight in DEVICES])[0],
        sessions_per_day=MEDIAN_SESSIONS_PER_DAY * math.exp(rng.gauss(0, 0.6)) if active else 0.0,
        favourite_artists=favourite_artists,
        daily_mix=tuple(daily_mix[:40]),
        # Home broadband: median ~25 Mbit/s, a long tail of poor connections.
        home_wifi_kbps=max(1_500.0, 25_000 * math.exp(rng.gauss(0, 0.9))),
        has_5g=rng.random() < 0.55,
        traveller=rng.random() < TRAVELLER_SHARE,
        download_kbps=rng.choice((160, 320)),
    )


def build_population(world: MusicWorld, seed: int, users: int) -> list[ListenerProfile]:
    """``users`` listener profiles for ``seed``."""
    if users < 0:
        raise ValueError(f"users must not be negative, got {users}")
    return [_profile(world, seed, index) for index in range(users)]
