"""The two-level pro-rata rule of the month close, in integer micro-units.

For each market m (territory and product) of the month:

1. ``S[t, m]`` is the number of streams of track ``t`` in market ``m`` in the month's
   final ledger (an ``UNMATCHED`` track's streams count too).
2. The market's pool ``P[m]`` is divided among its tracks in proportion to ``S[t, m]``:
   track ``t`` gets ``floor(P[m] * S[t, m] / sum_t S[t, m])`` micro-units, and the
   micro-units left over go one each to the largest remainders
   ``P[m] * S[t, m] mod sum_t S[t, m]`` (ties: ascending ``track_id``), so the tracks'
   parts sum exactly to ``P[m]``.
3. Each track's part is divided among its rights holders by ``share_bps`` with the
   ledger's own largest-remainder rule (``ledger.allocation.allocate_micros``: ties by
   ascending ``rights_holder_id``); the part of a track the catalog does not know goes
   to the suspense account ``UNMATCHED``.
4. A market with a pool and no (eligible) streams is carried whole as ``UNALLOCATED``;
   a market with streams and no pool is refused by the caller: nothing is dropped.
5. Eligibility (optional): tracks left out by the caller (fewer than N streams over the
   12 months up to the close) are not in ``streams``: their streams leave the
   denominator and the pool keeps its size.

Python ints only: no float ever touches money.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ledger.allocation import UNMATCHED, allocate_micros
from ledger.catalog import Split

__all__ = ["UNALLOCATED", "CloseLine", "divide_market", "divide_pool_micros"]

UNALLOCATED = "UNALLOCATED"
"""The account that carries a market's pool when no eligible track streamed there."""


@dataclass(frozen=True, slots=True)
class CloseLine:
    """One rights holder's part of one track in one market."""

    rights_holder_id: str
    track_id: str
    territory: str
    product: str
    streams: int
    amount_micros: int


def divide_pool_micros(pool_micros: int, streams_by_track: Mapping[str, int]) -> dict[str, int]:
    """Divide ``pool_micros`` among tracks in proportion to their streams, by largest remainder.

    The parts sum exactly to ``pool_micros``; equal remainders favour the smaller ``track_id``.
    Raises ``ValueError`` for a negative pool, negative streams or no streams at all.
    """
    if pool_micros < 0:
        raise ValueError(f"pool_micros must be >= 0, got {pool_micros}")
    if any(streams < 0 for streams in streams_by_track.values()):
        raise ValueError("streams must be >= 0")
    total = sum(streams_by_track.values())
    if total == 0:
        raise ValueError("no streams to divide the pool by")
    track_ids = sorted(streams_by_track)
    parts: dict[str, int] = {}
    remainders: dict[str, int] = {}
    for track_id in track_ids:
        parts[track_id], remainders[track_id] = divmod(pool_micros * streams_by_track[track_id], total)
    left_over = pool_micros - sum(parts.values())
    # track_ids is sorted and sorted() is stable: equal remainders stay in ascending id order.
    for track_id in sorted(track_ids, key=lambda track: -remainders[track])[:left_over]:
        parts[track_id] += 1
    return parts


def divide_market(
    territory: str,
    product: str,
    pool_micros: int,
    streams_by_track: Mapping[str, int],
    splits_by_track: Mapping[str, Sequence[Split]],
) -> list[CloseLine]:
    """Every line of one market: tracks' parts split among rights holders, suspense, or ``UNALLOCATED``.

    ``streams_by_track`` holds the eligible tracks' streams in the market;
    ``splits_by_track`` the catalog's splits (a track without splits goes to ``UNMATCHED``).
    The lines' amounts sum exactly to ``pool_micros``. A rights holder line carries the
    track's streams (each holder of a track is credited with all of its streams).
    """
    streaming = {track: streams for track, streams in streams_by_track.items() if streams > 0}
    if not streaming:
        return [CloseLine(UNALLOCATED, "", territory, product, 0, pool_micros)]
    lines: list[CloseLine] = []
    for track_id, part_micros in sorted(divide_pool_micros(pool_micros, streaming).items()):
        streams = streaming[track_id]
        splits = splits_by_track.get(track_id)
        if not splits:
            lines.append(CloseLine(UNMATCHED, track_id, territory, product, streams, part_micros))
            continue
        for rights_holder_id, amount_micros in allocate_micros(part_micros, splits):
            lines.append(CloseLine(rights_holder_id, track_id, territory, product, streams, amount_micros))
    return lines
