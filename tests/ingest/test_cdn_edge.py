"""The edge cache evicts the least recently used segment by size; counters report exact percentiles."""

from __future__ import annotations

from ingest.cdn.edge import CdnStats, EdgeCache, MillisecondHistogram
from ingest.cdn.media import RENDITIONS_KBPS, SegmentLayout, bytes_for_ms
from schemas.validation import BITRATES_KBPS


def test_segment_sizes_follow_the_bitrate_and_the_last_segment_is_shorter() -> None:
    layout = SegmentLayout(segment_ms=10_000)
    assert RENDITIONS_KBPS == tuple(sorted(BITRATES_KBPS)) == (96, 160, 320)
    assert [layout.size_bytes(95_448, kbps, 0) for kbps in RENDITIONS_KBPS] == [120_000, 200_000, 400_000]
    assert layout.count(95_448) == 10
    assert layout.audio_ms(95_448, 9) == 5_448
    assert layout.size_bytes(95_448, 160, 9) == bytes_for_ms(160, 5_448) == 108_960
    assert sum(layout.size_bytes(95_448, 320, index) for index in range(10)) == bytes_for_ms(320, 95_448)


def test_the_least_recently_used_segment_is_evicted_first() -> None:
    edge = EdgeCache(capacity_bytes=500)
    edge.admit(("T1", 96, 0), 200)
    edge.admit(("T2", 96, 0), 200)
    assert edge.lookup(("T1", 96, 0))  # T1 is now the most recently used
    edge.admit(("T3", 96, 0), 200)  # 600 bytes > 500: the LRU one (T2) goes
    assert edge.lookup(("T1", 96, 0)) and edge.lookup(("T3", 96, 0))
    assert not edge.lookup(("T2", 96, 0))
    assert (edge.used_bytes, len(edge)) == (400, 2)


def test_a_segment_larger_than_the_cache_is_served_but_never_kept() -> None:
    edge = EdgeCache(capacity_bytes=100)
    edge.admit(("T1", 320, 0), 400_000)
    assert not edge.lookup(("T1", 320, 0))
    assert edge.used_bytes == 0


def test_percentiles_are_nearest_rank_to_the_millisecond() -> None:
    histogram = MillisecondHistogram()
    assert histogram.percentile(50) is None
    for milliseconds in range(1, 101):  # 1 ms .. 100 ms
        histogram.add(milliseconds / 1000)
    assert (histogram.percentile(50), histogram.percentile(99), histogram.percentile(100)) == (50, 99, 100)
    assert histogram.summary()["count"] == 100


def test_stats_count_per_pop_and_rendition_and_sum_to_totals() -> None:
    stats = CdnStats()
    stats.count_request("sto", 160, hit=False)
    stats.count_request("sto", 160, hit=True)
    stats.count_request("iad", 96, hit=True)
    stats.count_first_byte("sto", 160, 0.120)
    stats.count_bytes("sto", 160, 60_000)
    per_pop = stats.per_pop()
    assert per_pop["sto"]["160"]["hits"] == per_pop["sto"]["160"]["misses"] == 1
    assert per_pop["sto"]["160"]["ttfb_ms"]["p50"] == 120
    totals = stats.totals()
    assert (totals.hits, totals.misses, totals.bytes_sent) == (2, 1, 60_000)
