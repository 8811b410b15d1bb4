"""An independent reference for the contract's royalty rules: what the demo and the tests check against.

Written from DESIGN.md ("Contract (v1)", Allocation) alone: it reads the catalog CSVs
with the ``csv`` module and divides money with exact fractions, sharing no code with
``ledger/``, so a test that compares the pipeline's ledger with these balances checks
the implementation against the contract rather than against itself.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, NamedTuple

__all__ = ["MIN_STREAM_MS", "UNMATCHED", "Balance", "ReferenceCatalog", "expected_balances", "split_micros"]

MIN_STREAM_MS = 30_000
UNMATCHED = "UNMATCHED"
BPS_WHOLE = 10_000


class Balance(NamedTuple):
    """What one rights holder is owed: plays and streams counted, micro-units earned."""

    plays: int
    streams: int
    amount_micros: int


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        return list(csv.DictReader(handle))


@dataclass(frozen=True)
class ReferenceCatalog:
    """Splits (track → rights holder → bps) and rates ((territory, product) → micros) from the CSVs."""

    splits: Mapping[str, Mapping[str, int]]
    rates_micros: Mapping[tuple[str, str], int]
    currency: str

    @classmethod
    def read(cls, directory: Path) -> ReferenceCatalog:
        splits: dict[str, dict[str, int]] = {}
        for row in _rows(directory / "splits.csv"):
            splits.setdefault(row["track_id"], {})[row["rights_holder_id"]] = int(row["share_bps"])
        rates = _rows(directory / "rates.csv")
        (currency,) = {row["currency"] for row in rates}
        return cls(
            splits=splits,
            rates_micros={(row["territory"], row["product"]): int(row["rate_micros"]) for row in rates},
            currency=currency,
        )

    def gross_micros(self, territory: str, product: str) -> int:
        """The rate for (territory, product), else ('*', product)."""
        return self.rates_micros.get((territory, product), self.rates_micros[("*", product)])


def split_micros(gross_micros: int, shares_bps: Mapping[str, int]) -> dict[str, int]:
    """Floor of each exact share, then one micro-unit each to the largest remainders (ties: by id)."""
    exact = {holder: Fraction(gross_micros * bps, BPS_WHOLE) for holder, bps in shares_bps.items()}
    parts = {holder: math.floor(share) for holder, share in exact.items()}
    left_over = gross_micros - sum(parts.values())
    by_remainder = sorted(exact, key=lambda holder: (-(exact[holder] - parts[holder]), holder))
    for holder in by_remainder[:left_over]:
        parts[holder] += 1
    assert sum(parts.values()) == gross_micros
    return parts


def expected_balances(
    catalog: ReferenceCatalog, accepted: Iterable[Mapping[str, Any]], min_stream_ms: int = MIN_STREAM_MS
) -> dict[str, Balance]:
    """Balances per rights holder of the events a gateway accepted, in the order it accepted them.

    The first copy of an ``event_id`` counts and later copies are ignored; a play of at
    least ``min_stream_ms`` (the contract's 30 s unless configured) is a stream and earns
    its gross; every holder of the track counts the play; a track missing from the
    catalog puts everything on ``UNMATCHED``.
    """
    plays: dict[str, int] = {}
    streams: dict[str, int] = {}
    amounts: dict[str, int] = {}
    seen: set[str] = set()
    for event in accepted:
        if event["event_id"] in seen:
            continue
        seen.add(event["event_id"])
        is_stream = event["ms_played"] >= min_stream_ms
        gross = catalog.gross_micros(event["territory"], event["product"]) if is_stream else 0
        shares = catalog.splits.get(event["track_id"], {UNMATCHED: BPS_WHOLE})
        for holder, amount in split_micros(gross, shares).items():
            plays[holder] = plays.get(holder, 0) + 1
            streams[holder] = streams.get(holder, 0) + int(is_stream)
            amounts[holder] = amounts.get(holder, 0) + amount
    return {holder: Balance(plays[holder], streams[holder], amounts[holder]) for holder in plays}
