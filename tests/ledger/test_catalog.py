"""Tests for the catalog loader and for the fixture catalog generator."""

from __future__ import annotations

import collections
import csv
import dataclasses
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from ledger.catalog import (
    DEFAULT_CATALOG_DIR,
    FALLBACK_TERRITORY,
    PRODUCTS,
    ROLES,
    Catalog,
    RightsHolder,
    Split,
)

CATALOG_FILES = ("tracks.csv", "rights_holders.csv", "splits.csv", "rates.csv")

SMALL_CATALOG = {
    "tracks.csv": (
        "track_id,title,artist,duration_ms\n"
        "T1,First Song,Some Artist,200000\n"
        "T2,Second Song,Other Artist,31000\n"
    ),
    "rights_holders.csv": (
        "rights_holder_id,name,role\n"
        "RH1,A Label,label\n"
        "RH2,A Publisher,publisher\n"
        "RH3,A Distributor,distributor\n"
    ),
    "splits.csv": (
        "track_id,rights_holder_id,share_bps\n"
        "T1,RH2,3333\n"
        "T1,RH1,6667\n"
        "T2,RH1,7000\n"
        "T2,RH2,2500\n"
        "T2,RH3,500\n"
    ),
    "rates.csv": (
        "territory,product,rate_micros,currency\n"
        "US,premium,4137,USD\n"
        "US,free,1291,USD\n"
        "*,premium,2417,USD\n"
        "*,free,703,USD\n"
    ),
}


def write_catalog(directory: Path, **replacements: str) -> Path:
    """Write SMALL_CATALOG into ``directory``, with files replaced by keyword (``splits="..."``)."""
    directory.mkdir(parents=True, exist_ok=True)
    for file_name, text in SMALL_CATALOG.items():
        (directory / file_name).write_text(replacements.get(file_name.removesuffix(".csv"), text))
    return directory


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.load(DEFAULT_CATALOG_DIR)


# --- loading a good catalog -------------------------------------------------------------


def test_load_small_catalog(tmp_path: Path) -> None:
    small = Catalog.load(write_catalog(tmp_path))

    assert small.currency == "USD"
    assert set(small.track_ids) == {"T1", "T2"}
    assert small.rights_holders["RH3"] == RightsHolder("RH3", "A Distributor", "distributor")
    # Sorted by rights_holder_id whatever the file order.
    assert small.splits_for("T1") == (Split("RH1", 6667), Split("RH2", 3333))
    assert small.splits_for("T404") is None


def test_gross_uses_territory_rate_then_fallback(tmp_path: Path) -> None:
    small = Catalog.load(write_catalog(tmp_path))

    assert small.gross_micros("US", "premium") == 4137
    assert small.gross_micros("US", "free") == 1291
    assert small.gross_micros("NZ", "premium") == 2417
    assert small.gross_micros("NZ", "free") == 703


def test_gross_raises_key_error_without_rate_or_fallback(tmp_path: Path) -> None:
    small = Catalog.load(write_catalog(tmp_path))

    with pytest.raises(KeyError, match="family"):
        small.gross_micros("US", "family")


def test_catalog_is_immutable_and_picklable(catalog: Catalog) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        catalog.currency = "EUR"  # type: ignore[misc]

    restored = pickle.loads(pickle.dumps(catalog))

    assert restored == catalog
    assert restored.splits_for("T00001") == catalog.splits_for("T00001")
    assert restored.gross_micros("US", "premium") == catalog.gross_micros("US", "premium")


def test_catalog_survives_beam_pickler(catalog: Catalog) -> None:
    pickler = pytest.importorskip("apache_beam.internal.pickler")

    assert pickler.loads(pickler.dumps(catalog)) == catalog


def test_load_accepts_columns_in_any_order_and_a_byte_order_mark(tmp_path: Path) -> None:
    rates = "\ufeffcurrency,rate_micros,product,territory\nUSD,2417,premium,*\nUSD,703,free,*\n"

    small = Catalog.load(write_catalog(tmp_path, rates=rates))

    assert small.gross_micros("JP", "premium") == 2417


# --- rejecting a bad catalog ------------------------------------------------------------


@pytest.mark.parametrize(
    ("replacements", "expected"),
    [
        pytest.param(
            {
                "splits": "track_id,rights_holder_id,share_bps\nT1,RH1,6667\nT1,RH2,3332\n"
                "T2,RH1,7000\nT2,RH2,2500\nT2,RH3,500\n"
            },
            r"splits\.csv:2: shares of track T1 sum to 9999 bps, expected 10000 \(lines 2, 3\)",
            id="split-sum",
        ),
        pytest.param(
            {"splits": SMALL_CATALOG["splits.csv"].replace("T2,RH3,500", "T2,RH9,500")},
            r"splits\.csv:6: rights holder RH9 is not in rights_holders\.csv",
            id="unknown-rights-holder",
        ),
        pytest.param(
            {"splits": SMALL_CATALOG["splits.csv"] + "T9,RH1,10000\n"},
            r"splits\.csv:7: track T9 is not in tracks\.csv",
            id="unknown-track",
        ),
        pytest.param(
            {
                "splits": SMALL_CATALOG["splits.csv"]
                .replace("T2,RH3,500", "T2,RH3,0")
                .replace("T2,RH2,2500", "T2,RH2,3000")
            },
            r"splits\.csv:6: share_bps must be a positive integer, got '0'",
            id="zero-share",
        ),
        pytest.param(
            {"splits": SMALL_CATALOG["splits.csv"] + "T1,RH2,1\n"},
            r"splits\.csv:7: duplicate split for track T1, rights holder RH2 \(first on line 2\)",
            id="duplicate-split",
        ),
        pytest.param(
            {"tracks": SMALL_CATALOG["tracks.csv"] + "T3,Lonely Song,Nobody,1000\n"},
            r"tracks\.csv:4: track T3 has no rows in splits\.csv",
            id="track-without-splits",
        ),
        pytest.param(
            {"tracks": "track_id,title,artist,duration_ms,genre\nT1,A,B,1,X\nT2,C,D,2,Y\n"},
            r"tracks\.csv:1: bad header: unknown column\(s\) 'genre'",
            id="unknown-header",
        ),
        pytest.param(
            {"rights_holders": "rights_holder_id,name\nRH1,A\nRH2,B\nRH3,C\n"},
            r"rights_holders\.csv:1: bad header: missing column\(s\) role",
            id="missing-header",
        ),
        pytest.param({"rates": ""}, r"rates\.csv:1: no header", id="empty-file"),
        pytest.param(
            {"rights_holders": SMALL_CATALOG["rights_holders.csv"].replace("distributor\n", "aggregator\n")},
            r"rights_holders\.csv:4: role must be one of label\|publisher\|distributor, got 'aggregator'",
            id="unknown-role",
        ),
        pytest.param(
            {"rates": SMALL_CATALOG["rates.csv"].replace("US,free,1291", "US,free,-1291")},
            r"rates\.csv:3: rate_micros must be a non-negative integer, got '-1291'",
            id="negative-rate",
        ),
        pytest.param(
            {"rates": SMALL_CATALOG["rates.csv"].replace("US,free,1291", "US,free,1291.5")},
            r"rates\.csv:3: rate_micros must be a non-negative integer, got '1291\.5'",
            id="fractional-rate",
        ),
        pytest.param(
            {"rates": SMALL_CATALOG["rates.csv"].replace("US,free,1291,USD", "US,free,1291,EUR")},
            r"rates\.csv:3: currency EUR differs from USD on line 2; a catalog has exactly one currency",
            id="two-currencies",
        ),
        pytest.param(
            {"rates": SMALL_CATALOG["rates.csv"].replace("*,free,703,USD\n", "")},
            r"rates\.csv: no '\*' fallback rate for product free",
            id="missing-fallback",
        ),
        pytest.param(
            {"rates": SMALL_CATALOG["rates.csv"] + "us,free,1,USD\n"},
            r"rates\.csv:6: territory must be an upper-case ISO 3166-1 alpha-2 code",
            id="bad-territory",
        ),
        pytest.param(
            {"rates": SMALL_CATALOG["rates.csv"] + "GB,family,1,USD\n"},
            r"rates\.csv:6: product must be one of free\|premium, got 'family'",
            id="bad-product",
        ),
        pytest.param(
            {"rates": SMALL_CATALOG["rates.csv"] + "US,free,1,USD\n"},
            r"rates\.csv:6: duplicate rate for territory US, product free \(first on line 3\)",
            id="duplicate-rate",
        ),
        pytest.param(
            {"tracks": SMALL_CATALOG["tracks.csv"] + "T3,Extra\n"},
            r"tracks\.csv:4: expected 4 fields, got 2",
            id="short-row",
        ),
        pytest.param(
            {"tracks": SMALL_CATALOG["tracks.csv"].replace("T2,", " T2,")},
            r"tracks\.csv:3: empty or space-padded value in track_id",
            id="padded-id",
        ),
    ],
)
def test_load_rejects_bad_catalog(tmp_path: Path, replacements: dict[str, str], expected: str) -> None:
    directory = write_catalog(tmp_path, **replacements)

    with pytest.raises(ValueError, match=expected):
        Catalog.load(directory)


def test_load_reports_every_problem_at_once(tmp_path: Path) -> None:
    splits = SMALL_CATALOG["splits.csv"].replace("RH3", "RH8").replace("T1,RH2,3333", "T1,RH9,3333")

    with pytest.raises(ValueError, match=r"\(2 problems\)") as raised:
        Catalog.load(write_catalog(tmp_path, splits=splits))

    assert "rights holder RH8" in str(raised.value)
    assert "rights holder RH9" in str(raised.value)


def test_load_rejects_missing_file_and_directory(tmp_path: Path) -> None:
    write_catalog(tmp_path).joinpath("rates.csv").unlink()

    with pytest.raises(ValueError, match=r"rates\.csv: catalog file is missing"):
        Catalog.load(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        Catalog.load(tmp_path / "nowhere")


# --- the fixture catalog and its generator ----------------------------------------------


def test_generator_is_deterministic(tmp_path: Path) -> None:
    script = DEFAULT_CATALOG_DIR / "generate.py"

    for run in ("first", "second"):
        subprocess.run([sys.executable, str(script), str(tmp_path / run)], check=True, capture_output=True)

    for file_name in CATALOG_FILES:
        committed = (DEFAULT_CATALOG_DIR / file_name).read_bytes()
        assert (tmp_path / "first" / file_name).read_bytes() == committed, (
            f"{file_name} is stale: rerun generate.py"
        )
        assert (tmp_path / "second" / file_name).read_bytes() == committed


def test_fixture_files_are_plain_ascii() -> None:
    for file_name in CATALOG_FILES:
        (DEFAULT_CATALOG_DIR / file_name).read_bytes().decode("ascii")


def test_fixture_tracks_and_rights_holders(catalog: Catalog) -> None:
    assert len(catalog.track_ids) == 500
    assert all(track_id.startswith("T") and len(track_id) == 6 for track_id in catalog.track_ids)
    assert len(catalog.rights_holders) == 60
    roles = collections.Counter(holder.role for holder in catalog.rights_holders.values())
    assert set(roles) == set(ROLES)


def test_fixture_splits_are_label_plus_publishers(catalog: Catalog) -> None:
    non_round = 0
    with_distributor = 0
    for track_id in catalog.track_ids:
        splits = catalog.splits_for(track_id)
        assert splits is not None
        assert 2 <= len(splits) <= 5
        assert sum(split.share_bps for split in splits) == 10_000
        roles = collections.Counter(catalog.rights_holders[split.rights_holder_id].role for split in splits)
        assert roles["label"] == 1, track_id
        assert 1 <= roles["publisher"] <= 3, track_id
        assert roles["distributor"] <= 1, track_id
        with_distributor += roles["distributor"]
        non_round += any(split.share_bps % 100 for split in splits)
    # Splits are deliberately not all round, and some tracks carry a distributor.
    assert non_round > len(catalog.track_ids) // 2
    assert 0 < with_distributor < len(catalog.track_ids)


def test_fixture_rates(catalog: Catalog) -> None:
    rows = read_csv(DEFAULT_CATALOG_DIR / "rates.csv")
    territories = {row["territory"] for row in rows} - {FALLBACK_TERRITORY}

    assert len(territories) >= 8
    for territory in [*territories, FALLBACK_TERRITORY]:
        for product in PRODUCTS:
            assert (territory, product) in catalog.rates_micros
    assert {row["currency"] for row in rows} == {"USD"}
    assert catalog.currency == "USD"
    assert any(rate % 10_000 for rate in catalog.rates_micros.values())
    # Premium pays more than free everywhere, and the US pays more than India.
    for territory in territories:
        assert catalog.gross_micros(territory, "premium") > catalog.gross_micros(territory, "free")
    assert catalog.gross_micros("US", "premium") > catalog.gross_micros("IN", "premium")
