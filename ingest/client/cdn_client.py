"""Real fetches from the CDN stub: a track's first seconds, timed to the first byte.

The player asks for the first ``audio_ms`` of segment 0 with a byte ``Range`` (as a
progressive player does), declares its current network in the link headers so the CDN
paces the bytes accordingly, and measures time to first byte and to the last byte.
Transient connection errors are retried a few times (tenacity); a CDN that keeps
failing is an error of the simulation, not a listener's experience.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from urllib.parse import quote

import aiohttp
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from ingest.cdn.media import SegmentLayout, bytes_for_ms
from ingest.cdn.server import CACHE_HEADER, LINK_KBPS_HEADER, LINK_RTT_HEADER, POP_HEADER
from ingest.client.network import NetworkSpell

__all__ = ["CdnClient", "CdnError", "FetchResult"]

_READ_CHUNK_BYTES = 65_536


class CdnError(RuntimeError):
    """The CDN answered something a player cannot play."""


@dataclass(frozen=True)
class FetchResult:
    """One fetch: bytes received, when the first and the last arrived, HIT or MISS, which PoP."""

    size_bytes: int
    ttfb_seconds: float
    total_seconds: float
    cache_hit: bool
    pop: str

    @property
    def transfer_seconds(self) -> float:
        """From the first byte to the last: what throughput is measured over."""
        return self.total_seconds - self.ttfb_seconds


class CdnClient:
    """Fetches the first seconds of tracks from the CDN at ``base_url``."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, layout: SegmentLayout) -> None:
        self._session = session
        self.base_url = base_url.rstrip("/")
        self.layout = layout

    async def fetch_head(
        self,
        track_id: str,
        duration_ms: int,
        bitrate_kbps: int,
        audio_ms: int,
        territory: str,
        link: NetworkSpell,
    ) -> FetchResult:
        """Fetch the first ``audio_ms`` of ``track_id`` at ``bitrate_kbps`` over ``link``."""
        size = bytes_for_ms(bitrate_kbps, min(audio_ms, self.layout.audio_ms(duration_ms, 0)))
        url = f"{self.base_url}/tracks/{quote(track_id, safe='')}/{bitrate_kbps}/0"
        headers = {
            "Range": f"bytes=0-{size - 1}",
            LINK_KBPS_HEADER: f"{link.downlink_kbps:.0f}",
            LINK_RTT_HEADER: f"{link.rtt_ms:.1f}",
        }
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(3),
                wait=wait_exponential_jitter(initial=0.05, max=1.0),
                retry=retry_if_exception_type((aiohttp.ClientConnectionError, TimeoutError)),
                reraise=True,
            ):
                with attempt:
                    return await self._get(url, headers, territory)
        except (aiohttp.ClientError, TimeoutError) as error:
            raise CdnError(
                f"the CDN at {self.base_url} failed 3 times: {type(error).__name__} {error}"
            ) from None
        raise AssertionError("unreachable")

    async def _get(self, url: str, headers: dict[str, str], territory: str) -> FetchResult:
        started = time.perf_counter()
        async with self._session.get(url, headers=headers, params={"territory": territory}) as response:
            first_byte = time.perf_counter()
            if response.status not in (200, 206):
                raise CdnError(f"CDN answered {response.status} for {url}: {(await response.text())[:200]}")
            received = 0
            async for chunk in response.content.iter_chunked(_READ_CHUNK_BYTES):
                received += len(chunk)
            return FetchResult(
                size_bytes=received,
                ttfb_seconds=first_byte - started,
                total_seconds=time.perf_counter() - started,
                cache_hit=response.headers.get(CACHE_HEADER) == "HIT",
                pop=response.headers.get(POP_HEADER, ""),
            )
