"""The CDN stub over HTTP: segments from points of presence, shaped per connection.

``GET /tracks/{track_id}/{bitrate_kbps}/{segment}`` serves one segment (synthetic
bytes, the size its bitrate implies), whole or a single byte ``Range``. The PoP is
chosen by ``?territory=SE`` (as GeoDNS would) or named with ``?pop=sto``. The stub also
plays the client's network, the way a netem box would: a client declares its link in
``X-Sim-Link-Kbps`` and ``X-Sim-Link-Rtt-Ms``, and the response waits for the link's
and the PoP's round trips (plus the origin's on a miss) before the first byte, then
paces the body at the link's rate, so a client on 3G really receives bytes slowly.
Responses say ``X-Cache: HIT|MISS`` and ``X-Served-By: <pop>``; ``GET /stats`` returns
hits, misses, bytes and time to first byte per PoP and rendition; ``GET /healthz``
answers 200.

Run it with ``playledger cdn --port 8090`` (``playledger up`` starts one).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from ingest.cdn.edge import CdnStats, EdgeCache
from ingest.cdn.media import RENDITIONS_KBPS, SegmentLayout
from ingest.cdn.pops import PointOfPresence, pop_for_territory, pops_by_name
from ingest.cdn.settings import DEFAULT_CDN_PORT, CdnSettings
from ledger.catalog import DEFAULT_CATALOG_DIR, Catalog

__all__ = [
    "CACHE_HEADER",
    "LINK_KBPS_HEADER",
    "LINK_RTT_HEADER",
    "POP_HEADER",
    "SEGMENT_PATH",
    "create_app",
    "main",
    "serve",
]

LOG = logging.getLogger(__name__)

SEGMENT_PATH = "/tracks/{track_id}/{bitrate_kbps}/{segment}"
CACHE_HEADER = "X-Cache"
POP_HEADER = "X-Served-By"
LINK_KBPS_HEADER = "X-Sim-Link-Kbps"
LINK_RTT_HEADER = "X-Sim-Link-Rtt-Ms"

# Synthetic audio: one 64 KiB block, sliced for every write.
_FILL = bytes(range(256)) * 256
# A paced write carries about this much time's worth of bytes: fine enough that a
# slow link trickles, coarse enough that a fast one is not a storm of tiny writes.
_PACING_QUANTUM_SECONDS = 0.02
_MIN_WRITE_BYTES = 1460

_STATE: web.AppKey[_CdnState] = web.AppKey("cdn_state")


@dataclass
class _CdnState:
    settings: CdnSettings
    layout: SegmentLayout
    durations_ms: Mapping[str, int]
    pops: dict[str, PointOfPresence]
    edges: dict[str, EdgeCache]
    stats: CdnStats


@dataclass(frozen=True)
class _Link:
    """The client's declared access network: rate (None: unshaped) and round trip."""

    kbps: float | None
    rtt_ms: float


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def _link_of(request: web.Request) -> _Link | str:
    """The link a client declares in its headers, or why the headers are wrong."""
    try:
        kbps = float(request.headers[LINK_KBPS_HEADER]) if LINK_KBPS_HEADER in request.headers else None
        rtt_ms = float(request.headers.get(LINK_RTT_HEADER, "0"))
    except ValueError:
        return f"{LINK_KBPS_HEADER} and {LINK_RTT_HEADER} must be numbers"
    if (kbps is not None and not kbps > 0) or not 0 <= rtt_ms < 60_000:
        return f"{LINK_KBPS_HEADER} must be > 0 and {LINK_RTT_HEADER} between 0 and 60000"
    return _Link(kbps, rtt_ms)


def _pop_of(state: _CdnState, request: web.Request) -> PointOfPresence | None:
    name = request.query.get("pop")
    if name is not None:
        return state.pops.get(name)
    return pop_for_territory(state.pops, request.query.get("territory"), state.settings.default_pop)


async def _send_paced(response: web.StreamResponse, length: int, kbps: float | None) -> int:
    """Write ``length`` synthetic bytes no faster than ``kbps``; return the bytes written."""
    loop = asyncio.get_running_loop()
    if kbps is None:
        for offset in range(0, length, len(_FILL)):
            await response.write(_FILL[: min(len(_FILL), length - offset)])
        return length
    bytes_per_second = kbps * 125.0
    quantum = min(len(_FILL), max(_MIN_WRITE_BYTES, int(bytes_per_second * _PACING_QUANTUM_SECONDS)))
    started = loop.time()
    sent = 0
    while sent < length:
        size = min(quantum, length - sent)
        await response.write(_FILL[:size])
        sent += size
        # Pace against the start, not the previous write, so sleep overshoot does not add up.
        delay = started + sent / bytes_per_second - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
    return sent


async def _segment(request: web.Request) -> web.StreamResponse:
    state = request.app[_STATE]
    started = asyncio.get_running_loop().time()
    track_id = request.match_info["track_id"]
    duration_ms = state.durations_ms.get(track_id)
    if duration_ms is None:
        return _error(404, f"no such track: {track_id[:64]}")
    try:
        bitrate_kbps, index = int(request.match_info["bitrate_kbps"]), int(request.match_info["segment"])
    except ValueError:
        return _error(404, f"no such segment: {request.path[:128]}")
    if bitrate_kbps not in RENDITIONS_KBPS:
        return _error(404, f"no rendition at {bitrate_kbps} kbps; renditions: {list(RENDITIONS_KBPS)}")
    try:
        size = state.layout.size_bytes(duration_ms, bitrate_kbps, index)
    except IndexError as error:
        return _error(404, str(error))
    pop = _pop_of(state, request)
    if pop is None:
        return _error(400, f"no such PoP; PoPs: {sorted(state.pops)}")
    link = _link_of(request)
    if isinstance(link, str):
        return _error(400, link)
    try:
        first, stop, _ = request.http_range.indices(size)
    except ValueError:
        first, stop = 0, 0
    if first >= stop:
        return _error(416, f"range not satisfiable for {size} bytes", {"Content-Range": f"bytes */{size}"})

    key = (track_id, bitrate_kbps, index)
    hit = state.edges[pop.name].lookup(key)
    state.stats.count_request(pop.name, bitrate_kbps, hit=hit)
    delay_ms = link.rtt_ms + pop.rtt_ms
    if not hit:
        delay_ms += pop.origin_rtt_ms + state.settings.origin_fetch_ms
    await asyncio.sleep(delay_ms / 1000)
    if not hit:
        state.edges[pop.name].admit(key, size)

    partial = request.headers.get("Range") is not None
    response = web.StreamResponse(
        status=206 if partial else 200,
        headers={
            "Content-Type": "audio/mpeg",
            "Accept-Ranges": "bytes",
            "Cache-Control": "public, max-age=31536000, immutable",
            CACHE_HEADER: "HIT" if hit else "MISS",
            POP_HEADER: pop.name,
        },
    )
    if partial:
        response.headers["Content-Range"] = f"bytes {first}-{stop - 1}/{size}"
    response.content_length = stop - first
    await response.prepare(request)
    state.stats.count_first_byte(pop.name, bitrate_kbps, asyncio.get_running_loop().time() - started)
    sent = 0
    try:
        sent = await _send_paced(response, stop - first, link.kbps)
        await response.write_eof()
    except ConnectionResetError:
        LOG.debug("client left during %s", request.path)
    finally:
        state.stats.count_bytes(pop.name, bitrate_kbps, sent)
    return response


async def _stats(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    per_pop = state.stats.per_pop()
    pops: dict[str, Any] = {}
    for name, pop in state.pops.items():
        edge = state.edges[name]
        pops[name] = {
            "city": pop.city,
            "rtt_ms": pop.rtt_ms,
            "origin_rtt_ms": pop.origin_rtt_ms,
            "cache": {
                "capacity_bytes": edge.capacity_bytes,
                "used_bytes": edge.used_bytes,
                "segments": len(edge),
            },
            "renditions": per_pop.get(name, {}),
        }
    totals = state.stats.totals().as_json()
    totals["origin_fetches"] = totals["misses"]
    return web.json_response(
        {
            "segment_ms": state.settings.segment_ms,
            "renditions_kbps": list(RENDITIONS_KBPS),
            "totals": totals,
            "pops": pops,
        }
    )


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def create_app(settings: CdnSettings, durations_ms: Mapping[str, int]) -> web.Application:
    """The CDN stub as an aiohttp application serving tracks of ``durations_ms``."""
    pops = pops_by_name(settings.pops)
    app = web.Application()
    app[_STATE] = _CdnState(
        settings=settings,
        layout=SegmentLayout(settings.segment_ms),
        durations_ms=dict(durations_ms),
        pops=pops,
        edges={name: EdgeCache(settings.edge_cache_bytes) for name in pops},
        stats=CdnStats(),
    )
    app.router.add_get(SEGMENT_PATH, _segment)
    app.router.add_get("/stats", _stats)
    app.router.add_get("/healthz", _healthz)
    return app


def track_durations(catalog_dir: Path) -> dict[str, int]:
    """Every catalog track's duration in ms."""
    catalog = Catalog.load(catalog_dir)
    return {track_id: track.duration_ms for track_id, track in catalog.tracks.items()}


def serve(settings: CdnSettings, on_ready: Callable[[int], None] | None = None) -> None:
    """Run the CDN stub until SIGINT or SIGTERM; ``on_ready`` gets the port bound."""
    asyncio.run(_serve(settings, track_durations(settings.catalog_dir), on_ready))


async def _serve(
    settings: CdnSettings, durations_ms: Mapping[str, int], on_ready: Callable[[int], None] | None
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    # No access log: a simulated population makes thousands of requests a second.
    runner = web.AppRunner(create_app(settings, durations_ms), access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.host, settings.port).start()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        port: int = runner.addresses[0][1]
        LOG.info(
            "CDN stub on http://%s:%d: %d tracks, %d PoPs, %d MiB edge cache each",
            settings.host,
            port,
            len(durations_ms),
            len(settings.pops),
            settings.edge_cache_bytes // (1024 * 1024),
        )
        if on_ready is not None:
            on_ready(port)
        await stop.wait()
        LOG.info("CDN stub stopping")
    finally:
        await runner.cleanup()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="playledger cdn", description="Serve catalog tracks as audio segments from simulated PoPs."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_CDN_PORT)
    parser.add_argument("--catalog", type=Path, default=DEFAULT_CATALOG_DIR, help="catalog directory")
    parser.add_argument("--segment-seconds", type=float, default=10.0)
    parser.add_argument("--edge-cache-mb", type=float, default=64.0, help="each PoP's edge cache (MiB)")
    parser.add_argument("--origin-fetch-ms", type=float, default=25.0, help="origin service time on a miss")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``playledger cdn``: run the CDN stub in the foreground."""
    args = _parser().parse_args(argv)
    try:
        settings = CdnSettings(
            host=args.host,
            port=args.port,
            catalog_dir=args.catalog,
            segment_ms=round(args.segment_seconds * 1000),
            edge_cache_bytes=round(args.edge_cache_mb * 1024 * 1024),
            origin_fetch_ms=args.origin_fetch_ms,
        )
        durations_ms = track_durations(settings.catalog_dir)
    except ValueError as error:
        LOG.error("CDN not started: %s", error)
        return 2
    asyncio.run(_serve(settings, durations_ms, None))
    return 0
