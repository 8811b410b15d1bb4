"""The CDN stub over real HTTP: sizes per rendition, ranges, HIT/MISS per PoP, LRU, shaping, stats."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from ingest.cdn.server import CACHE_HEADER, LINK_KBPS_HEADER, LINK_RTT_HEADER, POP_HEADER, create_app
from ingest.cdn.settings import CdnSettings

DURATIONS_MS = {"T1": 95_448, "T2": 200_000, "T3": 120_000}


@asynccontextmanager
async def cdn(**settings: Any) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    """The CDN stub on a free port, and a client session for it."""
    server = TestServer(create_app(CdnSettings(port=0, **settings), DURATIONS_MS), port=0)
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            yield str(server.make_url("")).rstrip("/"), session
    finally:
        await server.close()


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(test())


async def get(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], int, float]:
    started = time.perf_counter()
    async with session.get(url, headers=headers or {}) as response:
        body = await response.read()
        return response.status, dict(response.headers), len(body), time.perf_counter() - started


def test_each_rendition_serves_the_bytes_its_bitrate_implies() -> None:
    async def scenario() -> None:
        async with cdn() as (base, session):
            for kbps, size in ((96, 120_000), (160, 200_000), (320, 400_000)):
                status, headers, length, _ = await get(session, f"{base}/tracks/T1/{kbps}/0")
                assert (status, length, int(headers["Content-Length"])) == (200, size, size)
            status, _, length, _ = await get(session, f"{base}/tracks/T1/160/9")  # the last, 5,448 ms
            assert (status, length) == (200, 108_960)

    run(scenario)


def test_unknown_tracks_renditions_and_segments_are_404_and_bad_ranges_416() -> None:
    async def scenario() -> None:
        async with cdn() as (base, session):
            for path in ("tracks/NOPE/160/0", "tracks/T1/128/0", "tracks/T1/160/10", "tracks/T1/160/-1"):
                status, _, _, _ = await get(session, f"{base}/{path}")
                assert status == 404, path
            status, headers, _, _ = await get(session, f"{base}/tracks/T1/96/0", {"Range": "bytes=200000-"})
            assert status == 416 and headers["Content-Range"] == "bytes */120000"
            status, _, _, _ = await get(session, f"{base}/tracks/T1/96/0?pop=nowhere")
            assert status == 400

    run(scenario)


def test_a_range_returns_206_with_just_those_bytes() -> None:
    async def scenario() -> None:
        async with cdn() as (base, session):
            status, headers, length, _ = await get(
                session, f"{base}/tracks/T2/320/0", {"Range": "bytes=0-119999"}
            )
            assert (status, length) == (206, 120_000)
            assert headers["Content-Range"] == "bytes 0-119999/400000"

    run(scenario)


def test_second_request_at_a_pop_is_a_hit_and_a_miss_pays_the_origin_round_trip() -> None:
    async def scenario() -> None:
        async with cdn(origin_fetch_ms=100) as (base, session):
            url = f"{base}/tracks/T2/160/0?territory=SE"
            _, first, _, miss_seconds = await get(session, url, {"Range": "bytes=0-999"})
            _, second, _, hit_seconds = await get(session, url, {"Range": "bytes=0-999"})
            assert (first[CACHE_HEADER], second[CACHE_HEADER]) == ("MISS", "HIT")
            assert first[POP_HEADER] == second[POP_HEADER] == "sto"
            # Stockholm's origin round trip (95 ms) plus the origin's 100 ms, on the miss only.
            assert miss_seconds >= 0.195 > hit_seconds
            _, elsewhere, _, _ = await get(session, f"{base}/tracks/T2/160/0?territory=JP")
            assert (elsewhere[POP_HEADER], elsewhere[CACHE_HEADER]) == (
                "nrt",
                "MISS",
            )  # each PoP has its own cache
            _, fallback, _, _ = await get(session, f"{base}/tracks/T3/96/0?territory=ZW")
            assert fallback[POP_HEADER] == "iad"

    run(scenario)


def test_a_small_edge_keeps_the_hot_segment_and_refetches_the_niche_one() -> None:
    async def scenario() -> None:
        # Room for two 120,000-byte segments at 96 kbps.
        async with cdn(edge_cache_bytes=250_000, origin_fetch_ms=0) as (base, session):
            caches = []
            for track_id in ("T1", "T2", "T1", "T3", "T1", "T2"):
                _, headers, _, _ = await get(
                    session, f"{base}/tracks/{track_id}/96/0?pop=iad", {"Range": "bytes=0-0"}
                )
                caches.append(headers[CACHE_HEADER])
            assert caches == ["MISS", "MISS", "HIT", "MISS", "HIT", "MISS"]

    run(scenario)


def test_a_slow_link_really_receives_bytes_slowly() -> None:
    async def scenario() -> None:
        async with cdn() as (base, session):
            url = f"{base}/tracks/T3/160/0?pop=iad"
            ranged = {"Range": "bytes=0-49999"}
            _, _, fast_length, fast = await get(session, url, ranged)
            slow_headers = {**ranged, LINK_KBPS_HEADER: "400", LINK_RTT_HEADER: "150"}
            _, _, slow_length, slow = await get(session, url, slow_headers)
            assert fast_length == slow_length == 50_000
            # 50,000 bytes at 400 kbit/s take 1 s; the link's round trip adds 150 ms.
            assert 1.0 <= slow < 2.5
            assert fast < 0.5

    run(scenario)


def test_stats_count_hits_misses_and_ttfb_per_pop_and_rendition() -> None:
    async def scenario() -> None:
        async with cdn() as (base, session):
            for _ in range(3):
                await get(session, f"{base}/tracks/T1/320/0?territory=GB", {"Range": "bytes=0-9"})
            await get(session, f"{base}/tracks/T1/96/0?territory=US", {"Range": "bytes=0-9"})
            async with session.get(f"{base}/stats") as response:
                stats = await response.json()
            london = stats["pops"]["lon"]["renditions"]["320"]
            assert (london["requests"], london["hits"], london["misses"]) == (3, 2, 1)
            assert london["ttfb_ms"]["count"] == 3 and london["ttfb_ms"]["max"] >= 75  # the miss: origin RTT
            assert stats["pops"]["iad"]["renditions"]["96"]["misses"] == 1
            assert stats["pops"]["lon"]["cache"]["used_bytes"] == 400_000
            assert (stats["totals"]["requests"], stats["totals"]["hits"]) == (4, 2)

    run(scenario)
