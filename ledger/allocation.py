"""Dividing a stream's money among its rights holders, exactly (contract v1, Allocation).

Each rights holder gets ``floor(gross * share_bps / 10000)`` micro-units; the micro-units
left over go one each to the largest fractional remainders, ties broken by ascending
``rights_holder_id`` (the largest-remainder, or Hamilton, method). The parts therefore
always sum to the gross, to the micro-unit. Integer arithmetic only: a holder's
fractional remainder, in ten-thousandths of a micro-unit, is ``gross * share_bps % 10000``.

A play of a track the catalog does not know is not dropped: its whole gross goes to the
suspense account ``UNMATCHED``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from ledger.catalog import SHARE_BPS_TOTAL, Catalog, Split

__all__ = ["UNMATCHED", "Attribution", "allocate_micros", "attribute_play"]

UNMATCHED = "UNMATCHED"


class Attribution(NamedTuple):
    """The part of one play that belongs to one rights holder (or to ``UNMATCHED``)."""

    rights_holder_id: str
    amount_micros: int
    currency: str


def allocate_micros(gross_micros: int, splits: Sequence[Split]) -> list[tuple[str, int]]:
    """Divide ``gross_micros`` among ``splits`` by largest remainder.

    Returns ``(rights_holder_id, amount_micros)`` pairs sorted by ``rights_holder_id``,
    one per split, whose amounts sum exactly to ``gross_micros``.

    Raises ``ValueError`` for a negative gross, no splits, a share that is not positive,
    a rights holder listed twice, or shares that do not sum to 10,000 bps.
    """
    if gross_micros < 0:
        raise ValueError(f"gross_micros must be >= 0, got {gross_micros}")
    if not splits:
        raise ValueError("splits must not be empty")
    if any(split.share_bps <= 0 for split in splits):
        raise ValueError(f"every share_bps must be > 0, got {[split.share_bps for split in splits]}")
    holder_ids = sorted(split.rights_holder_id for split in splits)
    if len(set(holder_ids)) != len(holder_ids):
        raise ValueError(f"a rights holder appears more than once in {holder_ids}")
    total_bps = sum(split.share_bps for split in splits)
    if total_bps != SHARE_BPS_TOTAL:
        raise ValueError(f"shares must sum to {SHARE_BPS_TOTAL} bps, got {total_bps}")

    ordered = sorted(splits, key=lambda split: split.rights_holder_id)
    amounts: list[int] = []
    remainders: list[int] = []
    for split in ordered:
        amount, remainder = divmod(gross_micros * split.share_bps, SHARE_BPS_TOTAL)
        amounts.append(amount)
        remainders.append(remainder)
    # Each remainder is < 10,000, so fewer units are left than there are non-zero
    # remainders: a holder whose share divides evenly never receives an extra unit.
    left_over = gross_micros - sum(amounts)
    # ``ordered`` is sorted by id and sorted() is stable, so equal remainders stay in id order.
    by_remainder = sorted(range(len(ordered)), key=lambda index: -remainders[index])
    for index in by_remainder[:left_over]:
        amounts[index] += 1
    return [(split.rights_holder_id, amount) for split, amount in zip(ordered, amounts, strict=True)]


def attribute_play(
    catalog: Catalog, track_id: str, territory: str, product: str, is_stream: bool
) -> list[Attribution]:
    """Attribute one de-duplicated play to rights holders.

    A stream is priced at the catalog's gross for (territory, product), falling back to
    ('*', product), and divided by ``allocate_micros``. A play that is not a stream earns
    nothing, but each rights holder still gets a row (amount 0) so plays are counted.
    A track missing from the catalog yields one ``UNMATCHED`` row carrying the whole gross.

    Raises ``KeyError`` when the catalog has no rate for the product, stream or not, so a
    bad product is caught on every play rather than only on the ones that earn.
    """
    gross_micros = catalog.gross_micros(territory, product)
    amount_micros = gross_micros if is_stream else 0
    splits = catalog.splits_for(track_id)
    if splits is None:
        return [Attribution(UNMATCHED, amount_micros, catalog.currency)]
    return [
        Attribution(rights_holder_id, amount, catalog.currency)
        for rights_holder_id, amount in allocate_micros(amount_micros, splits)
    ]
