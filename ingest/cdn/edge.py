"""A PoP's edge cache and the CDN's counters.

``EdgeCache`` is a least-recently-used cache bounded by bytes (``cachetools.LRUCache``
weighing each segment by its size), so hot tracks stay at the edge and a niche track
is fetched from the origin again. The content is synthetic, so the cache holds only
each segment's size: what it weighs is what matters.

``CdnStats`` counts requests, hits, misses, bytes and time to first byte per PoP and
rendition. Times are kept as a histogram of whole milliseconds, so a CDN that runs for
days keeps a bounded amount of memory and still answers exact percentiles to the ms.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from cachetools import LRUCache

__all__ = ["CdnStats", "EdgeCache", "MillisecondHistogram", "RenditionStats", "SegmentKey"]

SegmentKey = tuple[str, int, int]
"""(track_id, bitrate_kbps, segment index): what an edge caches."""


def _weight(size_bytes: int) -> int:
    return size_bytes


class EdgeCache:
    """An LRU cache of segments, at most ``capacity_bytes`` of them by size."""

    def __init__(self, capacity_bytes: int) -> None:
        if capacity_bytes < 0:
            raise ValueError(f"capacity_bytes must not be negative, got {capacity_bytes}")
        self.capacity_bytes = capacity_bytes
        self._lru: LRUCache[SegmentKey, int] = LRUCache(maxsize=capacity_bytes, getsizeof=_weight)

    def lookup(self, key: SegmentKey) -> bool:
        """Whether ``key`` is at the edge; a hit makes it the most recently used."""
        return self._lru.get(key) is not None

    def admit(self, key: SegmentKey, size_bytes: int) -> None:
        """Keep a segment fetched from the origin, evicting the least recently used."""
        if size_bytes > self.capacity_bytes:
            return  # larger than the whole cache: served, never kept
        self._lru[key] = size_bytes

    @property
    def used_bytes(self) -> int:
        """Bytes of the segments held."""
        return int(self._lru.currsize)

    def __len__(self) -> int:
        return len(self._lru)


@dataclass
class MillisecondHistogram:
    """Durations counted per whole millisecond; exact nearest-rank percentiles."""

    counts: Counter[int] = field(default_factory=Counter)

    def add(self, seconds: float) -> None:
        """Count one duration given in seconds."""
        self.counts[round(seconds * 1000)] += 1

    @property
    def total(self) -> int:
        """How many durations were counted."""
        return sum(self.counts.values())

    def percentile(self, percent: float) -> int | None:
        """The nearest-rank ``percent`` percentile in ms, ``None`` when empty."""
        total = self.total
        if total == 0:
            return None
        rank = max(1, math.ceil(percent / 100 * total))
        seen = 0
        for milliseconds in sorted(self.counts):
            seen += self.counts[milliseconds]
            if seen >= rank:
                return milliseconds
        return max(self.counts)

    def summary(self) -> dict[str, int | None]:
        """Count, and p50, p90, p95, p99 and max in ms."""
        return {
            "count": self.total,
            "p50": self.percentile(50),
            "p90": self.percentile(90),
            "p95": self.percentile(95),
            "p99": self.percentile(99),
            "max": max(self.counts) if self.counts else None,
        }


@dataclass
class RenditionStats:
    """What one PoP served in one rendition."""

    hits: int = 0
    misses: int = 0
    bytes_sent: int = 0
    ttfb: MillisecondHistogram = field(default_factory=MillisecondHistogram)

    def as_json(self) -> dict[str, Any]:
        """The counters as JSON-ready values."""
        requests = self.hits + self.misses
        return {
            "requests": requests,
            "hits": self.hits,
            "misses": self.misses,
            "hit_ratio": round(self.hits / requests, 4) if requests else None,
            "bytes_sent": self.bytes_sent,
            "ttfb_ms": self.ttfb.summary(),
        }


class CdnStats:
    """Counters per PoP and rendition, and their totals."""

    def __init__(self) -> None:
        self._by_pop: dict[str, dict[int, RenditionStats]] = {}

    def _entry(self, pop: str, bitrate_kbps: int) -> RenditionStats:
        return self._by_pop.setdefault(pop, {}).setdefault(bitrate_kbps, RenditionStats())

    def count_request(self, pop: str, bitrate_kbps: int, *, hit: bool) -> None:
        """Count one segment request as a hit or a miss."""
        entry = self._entry(pop, bitrate_kbps)
        if hit:
            entry.hits += 1
        else:
            entry.misses += 1

    def count_first_byte(self, pop: str, bitrate_kbps: int, ttfb_seconds: float) -> None:
        """Record one response's time to first byte."""
        self._entry(pop, bitrate_kbps).ttfb.add(ttfb_seconds)

    def count_bytes(self, pop: str, bitrate_kbps: int, sent: int) -> None:
        """Add body bytes written to a client."""
        self._entry(pop, bitrate_kbps).bytes_sent += sent

    def totals(self) -> RenditionStats:
        """Everything summed over PoPs and renditions."""
        total = RenditionStats()
        for renditions in self._by_pop.values():
            for entry in renditions.values():
                total.hits += entry.hits
                total.misses += entry.misses
                total.bytes_sent += entry.bytes_sent
                total.ttfb.counts.update(entry.ttfb.counts)
        return total

    def per_pop(self) -> dict[str, dict[str, dict[str, Any]]]:
        """``{pop: {bitrate_kbps as text: counters}}``."""
        return {
            pop: {str(kbps): entry.as_json() for kbps, entry in sorted(renditions.items())}
            for pop, renditions in sorted(self._by_pop.items())
        }
