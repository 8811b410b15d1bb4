"""The CDN stub's settings: one typed, frozen class, checked when it is made."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ingest.cdn.media import DEFAULT_SEGMENT_MS
from ingest.cdn.pops import DEFAULT_POP, DEFAULT_POPS, PointOfPresence, pops_by_name
from ledger.catalog import DEFAULT_CATALOG_DIR

__all__ = ["DEFAULT_CDN_PORT", "CdnSettings"]

DEFAULT_CDN_PORT = 8090


@dataclass(frozen=True, kw_only=True)
class CdnSettings:
    """Where the CDN listens, what it serves, and how its edges and origin behave.

    ``edge_cache_bytes`` is each PoP's cache size; ``origin_fetch_ms`` is the origin's
    own service time, added to the PoP's round trip to it on every miss.
    """

    host: str = "127.0.0.1"
    port: int = DEFAULT_CDN_PORT
    catalog_dir: Path = DEFAULT_CATALOG_DIR
    segment_ms: int = DEFAULT_SEGMENT_MS
    edge_cache_bytes: int = 64 * 1024 * 1024
    origin_fetch_ms: float = 25.0
    pops: tuple[PointOfPresence, ...] = DEFAULT_POPS
    default_pop: str = DEFAULT_POP

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, got {self.port}")
        if self.segment_ms <= 0:
            raise ValueError(f"segment_ms must be positive, got {self.segment_ms}")
        if self.edge_cache_bytes < 0:
            raise ValueError(f"edge_cache_bytes must not be negative, got {self.edge_cache_bytes}")
        if self.origin_fetch_ms < 0:
            raise ValueError(f"origin_fetch_ms must not be negative, got {self.origin_fetch_ms}")
        if self.default_pop not in pops_by_name(self.pops):
            raise ValueError(f"default_pop {self.default_pop!r} is not one of the PoPs")
