"""Predictive prefetch: which track's first seconds to download while a track plays.

The guess is what the context plays next if the listener lets it (``continuation``):
the next track number on an album, the next track of a playlist in its (possibly
shuffled) play order, the next of a daily mix or of a radio station's queue, and the
autoplay station's first track when an album or playlist runs out. After a search play
nothing is prefetched: the listener picks the next track themselves, so a guess would
mostly spend their data for nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from ingest.client.contexts import ContextKind, PlaybackContext, continuation
from ingest.client.world import MusicWorld

__all__ = ["Prefetched", "next_likely_track"]


def next_likely_track(context: PlaybackContext, world: MusicWorld) -> str | None:
    """The track to prefetch while ``context.track_id`` plays, or ``None``."""
    if context.kind is ContextKind.SEARCH:
        return None
    following = continuation(context, world)
    return following.track_id if following is not None else None


@dataclass(frozen=True)
class Prefetched:
    """A track's first seconds, held by the player from ``ready_at`` (simulated seconds)."""

    track_id: str
    bitrate_kbps: int
    audio_ms: int
    ready_at: float

    def serves(self, track_id: str, start: float) -> bool:
        """Whether a start of ``track_id`` at ``start`` can play from this prefetch at once."""
        return self.track_id == track_id and self.ready_at <= start
