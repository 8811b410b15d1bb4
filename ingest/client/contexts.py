"""Where a play comes from: an album, a playlist, a daily mix, a radio station or a search.

A context is a queue in play order (a shuffled playlist is shuffled once, when the
listener presses shuffle, so the order is known in advance) and the position playing
now. ``continuation`` is what plays next if the listener lets it: the next track in
the queue, and when an album, playlist or mix runs out, autoplay's radio station seeded
by the last track. A played event's ``context`` is the context's contract name; a play
by autoplay is a ``radio`` play.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from ingest.client.world import MusicWorld

__all__ = ["ContextKind", "PlaybackContext", "continuation", "radio_context"]


class ContextKind(StrEnum):
    """The contract's ``context`` values a listener can start from."""

    ALBUM = "album"
    PLAYLIST = "playlist"
    DAILY_MIX = "daily_mix"
    RADIO = "radio"
    SEARCH = "search"


@dataclass(frozen=True)
class PlaybackContext:
    """A queue in play order and the position of the track playing now."""

    kind: ContextKind
    queue: tuple[str, ...]
    position: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.position < len(self.queue):
            raise ValueError(f"position {self.position} is outside a queue of {len(self.queue)}")

    @property
    def track_id(self) -> str:
        """The track playing now."""
        return self.queue[self.position]


def radio_context(world: MusicWorld, seed_track_id: str) -> PlaybackContext:
    """The station seeded by ``seed_track_id``, at its first track."""
    return PlaybackContext(ContextKind.RADIO, world.radio_queue(seed_track_id))


def continuation(context: PlaybackContext, world: MusicWorld) -> PlaybackContext | None:
    """What plays next when the listener does nothing; ``None`` after a search play.

    A search play stops when it ends: the listener came for that track and picks the next.
    """
    if context.kind is ContextKind.SEARCH:
        return None
    if context.position + 1 < len(context.queue):
        return replace(context, position=context.position + 1)
    # Out of tracks: autoplay (or, on radio, the station carrying on from its last track).
    return radio_context(world, context.track_id)
