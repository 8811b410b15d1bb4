"""Tests for largest-remainder allocation and for attributing plays to rights holders."""

from __future__ import annotations

import pytest

from ledger.allocation import UNMATCHED, Attribution, allocate_micros, attribute_play
from ledger.catalog import DEFAULT_CATALOG_DIR, Catalog, Split


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.load(DEFAULT_CATALOG_DIR)


def splits(*pairs: tuple[str, int]) -> list[Split]:
    return [Split(rights_holder_id, share_bps) for rights_holder_id, share_bps in pairs]


def assert_largest_remainder(gross_micros: int, given: list[Split], parts: list[tuple[str, int]]) -> None:
    """Check ``parts`` against the contract without re-implementing it.

    Every part is its floor or floor + 1, the parts sum to the gross, and no holder that
    got the extra unit has a smaller remainder (or an equal remainder and a larger id)
    than a holder that did not.
    """
    share = {split.rights_holder_id: split.share_bps for split in given}
    assert [holder for holder, _ in parts] == sorted(share)
    assert sum(amount for _, amount in parts) == gross_micros
    rounded_up: list[tuple[int, str]] = []
    kept_down: list[tuple[int, str]] = []
    for holder, amount in parts:
        floor, remainder = divmod(gross_micros * share[holder], 10_000)
        assert amount in (floor, floor + 1)
        (rounded_up if amount == floor + 1 else kept_down).append((-remainder, holder))
    if rounded_up and kept_down:
        assert max(rounded_up) < min(kept_down)


# --- hand-worked examples ---------------------------------------------------------------


def test_leftover_unit_goes_to_largest_remainder() -> None:
    # 4137 x 5000 / 10000 = 2068.5; x 3000 -> 1241.1; x 2000 -> 827.4. Floors 4136, one left: A.
    parts = allocate_micros(4137, splits(("A", 5000), ("B", 3000), ("C", 2000)))

    assert parts == [("A", 2069), ("B", 1241), ("C", 827)]


def test_largest_remainder_need_not_be_largest_share() -> None:
    # 7 x 6000 -> 4.2; x 2500 -> 1.75; x 1500 -> 1.05. Floors 6, one left: B (0.75).
    parts = allocate_micros(7, splits(("A", 6000), ("B", 2500), ("C", 1500)))

    assert parts == [("A", 4), ("B", 2), ("C", 1)]


def test_tie_is_broken_by_ascending_rights_holder_id() -> None:
    # 1 x 5000 -> 0.5 each: one unit, equal remainders, RH001 wins whatever the input order.
    parts = allocate_micros(1, splits(("RH002", 5000), ("RH001", 5000)))

    assert parts == [("RH001", 1), ("RH002", 0)]


def test_remainder_outranks_id_and_id_breaks_the_remaining_tie() -> None:
    # 2 x 3334 -> 0.6668 (RH003); 2 x 3333 -> 0.6666 (RH001, RH002). Two units left:
    # RH003 by remainder, then RH001 over RH002 by id.
    parts = allocate_micros(2, splits(("RH003", 3334), ("RH002", 3333), ("RH001", 3333)))

    assert parts == [("RH001", 1), ("RH002", 0), ("RH003", 1)]


def test_exact_division_leaves_nothing_over() -> None:
    parts = allocate_micros(10_000, splits(("L", 6250), ("P", 3750)))

    assert parts == [("L", 6250), ("P", 3750)]


def test_zero_gross_and_single_holder() -> None:
    assert allocate_micros(0, splits(("B", 4999), ("A", 5001))) == [("A", 0), ("B", 0)]
    assert allocate_micros(4137, splits(("A", 10_000))) == [("A", 4137)]


# --- properties -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "given",
    [
        splits(("A", 10_000)),
        splits(("A", 5000), ("B", 5000)),
        splits(("A", 3334), ("B", 3333), ("C", 3333)),
        splits(("A", 1), ("B", 1), ("C", 1), ("D", 1), ("E", 9996)),
        splits(("RH010", 4781), ("RH026", 5219)),
        splits(("E", 1999), ("D", 2001), ("C", 1), ("B", 2999), ("A", 3000)),
    ],
)
def test_parts_sum_to_gross_for_every_gross_up_to_5000(given: list[Split]) -> None:
    for gross_micros in range(5001):
        assert_largest_remainder(gross_micros, given, allocate_micros(gross_micros, given))


def test_parts_sum_to_gross_for_every_fixture_split(catalog: Catalog) -> None:
    grosses = sorted({*range(0, 50), *catalog.rates_micros.values(), 9_999, 10_001, 123_456_789, 2**62})
    for track_id in catalog.track_ids:
        given = list(catalog.splits_for(track_id) or ())
        for gross_micros in grosses:
            assert_largest_remainder(gross_micros, given, allocate_micros(gross_micros, given))


# --- rejected input ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gross_micros", "given", "message"),
    [
        (-1, splits(("A", 10_000)), "gross_micros must be >= 0"),
        (100, [], "splits must not be empty"),
        (100, splits(("A", 5000), ("B", 4999)), "shares must sum to 10000 bps, got 9999"),
        (100, splits(("A", 5000), ("B", 5001)), "shares must sum to 10000 bps, got 10001"),
        (100, splits(("A", 10_001), ("B", -1)), "every share_bps must be > 0"),
        (100, splits(("A", 5000), ("A", 5000)), "appears more than once"),
    ],
)
def test_allocate_rejects_bad_input(gross_micros: int, given: list[Split], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        allocate_micros(gross_micros, given)


# --- attributing plays ------------------------------------------------------------------


def test_stream_of_known_track_is_divided_among_its_holders(catalog: Catalog) -> None:
    splits_of_track = catalog.splits_for("T00001")
    assert splits_of_track is not None

    rows = attribute_play(catalog, "T00001", "US", "premium", is_stream=True)

    gross_micros = catalog.gross_micros("US", "premium")
    assert rows == [
        Attribution(holder, amount, "USD")
        for holder, amount in allocate_micros(gross_micros, splits_of_track)
    ]
    assert sum(row.amount_micros for row in rows) == gross_micros
    assert [row.rights_holder_id for row in rows] == sorted(s.rights_holder_id for s in splits_of_track)


def test_non_stream_gives_every_holder_a_zero_row(catalog: Catalog) -> None:
    splits_of_track = catalog.splits_for("T00002")
    assert splits_of_track is not None

    rows = attribute_play(catalog, "T00002", "GB", "free", is_stream=False)

    assert rows == [Attribution(s.rights_holder_id, 0, "USD") for s in splits_of_track]


def test_unknown_track_goes_to_suspense(catalog: Catalog) -> None:
    gross_micros = catalog.gross_micros("DE", "premium")

    assert attribute_play(catalog, "NOT-IN-CATALOG", "DE", "premium", is_stream=True) == [
        Attribution(UNMATCHED, gross_micros, "USD")
    ]
    assert attribute_play(catalog, "NOT-IN-CATALOG", "DE", "premium", is_stream=False) == [
        Attribution(UNMATCHED, 0, "USD")
    ]


def test_territory_without_rate_uses_fallback(catalog: Catalog) -> None:
    assert ("NZ", "premium") not in catalog.rates_micros
    fallback_micros = catalog.rates_micros[("*", "premium")]

    rows = attribute_play(catalog, "T00003", "NZ", "premium", is_stream=True)
    suspense = attribute_play(catalog, "T99999", "NZ", "premium", is_stream=True)

    assert sum(row.amount_micros for row in rows) == fallback_micros
    assert suspense == [Attribution(UNMATCHED, fallback_micros, "USD")]


def test_unknown_product_raises_key_error(catalog: Catalog) -> None:
    with pytest.raises(KeyError):
        attribute_play(catalog, "T00001", "US", "family", is_stream=False)
