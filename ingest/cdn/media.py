"""Renditions and segment layout: what the CDN serves and what the player asks for.

A track of ``duration_ms`` is cut into segments of ``segment_ms`` (the last one
shorter), each served in every rendition at a constant bitrate, so a segment's size is
its audio length times the bitrate: 10 s at 160 kbps is 200,000 bytes. The CDN stub
and the reference player both size segments here, as an HLS playlist would tell them,
so a play needs no manifest request.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.validation import BITRATES_KBPS

__all__ = ["DEFAULT_SEGMENT_MS", "RENDITIONS_KBPS", "SegmentLayout", "bytes_for_ms"]

RENDITIONS_KBPS: tuple[int, ...] = tuple(sorted(BITRATES_KBPS))
"""The renditions, lowest first: the contract's ``bitrate_kbps`` values."""

DEFAULT_SEGMENT_MS = 10_000


def bytes_for_ms(bitrate_kbps: int, audio_ms: int) -> int:
    """Bytes of ``audio_ms`` of audio at a constant ``bitrate_kbps`` (kbit/s times ms, over 8)."""
    return bitrate_kbps * audio_ms // 8


@dataclass(frozen=True)
class SegmentLayout:
    """How tracks are cut into segments of ``segment_ms`` of audio."""

    segment_ms: int = DEFAULT_SEGMENT_MS

    def __post_init__(self) -> None:
        if self.segment_ms <= 0:
            raise ValueError(f"segment_ms must be positive, got {self.segment_ms}")

    def count(self, duration_ms: int) -> int:
        """Segments of a track of ``duration_ms`` (the last may be shorter)."""
        return max(1, -(-duration_ms // self.segment_ms))

    def audio_ms(self, duration_ms: int, index: int) -> int:
        """Audio in segment ``index``; ``IndexError`` outside the track."""
        if not 0 <= index < self.count(duration_ms):
            raise IndexError(f"segment {index} is outside a track of {duration_ms} ms")
        return min(self.segment_ms, duration_ms - index * self.segment_ms)

    def size_bytes(self, duration_ms: int, bitrate_kbps: int, index: int) -> int:
        """Bytes of segment ``index`` in the ``bitrate_kbps`` rendition."""
        return bytes_for_ms(bitrate_kbps, self.audio_ms(duration_ms, index))
