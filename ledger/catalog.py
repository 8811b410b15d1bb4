"""The royalty catalog: tracks, rights holders, splits and per-stream rates.

A catalog is a directory of four CSVs with headers (contract v1)::

    tracks.csv          track_id,title,artist,duration_ms[,isrc,icpn]
    rights_holders.csv  rights_holder_id,name,role[,ddex_party_id]  role: label|publisher|distributor
    splits.csv          track_id,rights_holder_id,share_bps   10,000 bps per track
    rates.csv           territory,product,rate_micros,currency territory '*' is the fallback

The bracketed columns are optional (older catalogs load without them; an empty cell is
allowed): the DDEX identifiers a DSR export needs, ``isrc`` (``CCXXXYYNNNNN``), ``icpn``
(12 to 14 digits) of the track's release, and ``ddex_party_id`` (``PADPIDA...``).

``Catalog.load`` checks everything a ledger depends on before a single play is priced,
and reports every problem it finds (file and line each) in one ``ValueError``, so a
finance analyst fixing a spreadsheet sees the whole list at once. A loaded ``Catalog``
is immutable and picklable, so a pipeline can capture it in a DoFn or pass it as a side
input.
"""

from __future__ import annotations

import csv
import re
from collections.abc import KeysView, Mapping
from dataclasses import dataclass
from pathlib import Path

import pycountry

__all__ = [
    "DEFAULT_CATALOG_DIR",
    "FALLBACK_TERRITORY",
    "PRODUCTS",
    "RATES_FILE",
    "RIGHTS_HOLDERS_FILE",
    "ROLES",
    "SHARE_BPS_TOTAL",
    "SPLITS_FILE",
    "TRACKS_FILE",
    "Catalog",
    "RightsHolder",
    "Split",
    "Track",
]

DEFAULT_CATALOG_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "catalog"

TRACKS_FILE = "tracks.csv"
RIGHTS_HOLDERS_FILE = "rights_holders.csv"
SPLITS_FILE = "splits.csv"
RATES_FILE = "rates.csv"

SHARE_BPS_TOTAL = 10_000
FALLBACK_TERRITORY = "*"
PRODUCTS: tuple[str, ...] = ("free", "premium")
ROLES: tuple[str, ...] = ("label", "publisher", "distributor")

_COLUMNS: dict[str, tuple[str, ...]] = {
    TRACKS_FILE: ("track_id", "title", "artist", "duration_ms"),
    RIGHTS_HOLDERS_FILE: ("rights_holder_id", "name", "role"),
    SPLITS_FILE: ("track_id", "rights_holder_id", "share_bps"),
    RATES_FILE: ("territory", "product", "rate_micros", "currency"),
}
_OPTIONAL_COLUMNS: dict[str, tuple[str, ...]] = {
    TRACKS_FILE: ("isrc", "icpn"),
    RIGHTS_HOLDERS_FILE: ("ddex_party_id",),
}
_IDENTIFIERS = {
    "isrc": re.compile(r"[A-Z]{2}[A-Z0-9]{3}[0-9]{7}"),
    "icpn": re.compile(r"[0-9]{12,14}"),
    "ddex_party_id": re.compile(r"PADPIDA[A-Za-z0-9]+"),
}
# ASCII digits only: int() also takes "+5", " 5", "5_000" and non-ASCII digits.
_NON_NEGATIVE_INT = re.compile(r"[0-9]+")
_MAX_PROBLEMS_SHOWN = 50


@dataclass(frozen=True, slots=True)
class Track:
    """A recording in the catalog."""

    track_id: str
    title: str
    artist: str
    duration_ms: int
    isrc: str = ""
    icpn: str = ""


@dataclass(frozen=True, slots=True)
class RightsHolder:
    """A party that is paid: a label, a publisher or a distributor."""

    rights_holder_id: str
    name: str
    role: str
    ddex_party_id: str = ""


@dataclass(frozen=True, slots=True)
class Split:
    """One rights holder's share of a track, in basis points (10,000 = the whole)."""

    rights_holder_id: str
    share_bps: int


@dataclass(frozen=True, repr=False)
class Catalog:
    """An immutable, validated catalog. Build it with ``Catalog.load``.

    The constructor does not validate; it exists for ``load`` and for pickling.
    ``splits`` maps each track to its splits sorted by ``rights_holder_id``;
    ``rates_micros`` maps ``(territory, product)`` to the gross per stream.
    """

    currency: str
    tracks: Mapping[str, Track]
    rights_holders: Mapping[str, RightsHolder]
    splits: Mapping[str, tuple[Split, ...]]
    rates_micros: Mapping[tuple[str, str], int]

    @classmethod
    def load(cls, path: Path | str) -> Catalog:
        """Load and validate the catalog CSVs in directory ``path``.

        Raises ``ValueError`` listing every problem found, each as ``<file>:<line>: reason``:
        missing files, unknown or missing columns, malformed values, duplicate keys,
        splits that do not sum to 10,000 bps, references to unknown tracks or rights
        holders, more than one currency, or a product without a ``*`` fallback rate.
        """
        return _CatalogLoader(Path(path)).load()

    @property
    def track_ids(self) -> KeysView[str]:
        """The ids of all tracks in the catalog (set-like, in file order)."""
        return self.tracks.keys()

    def splits_for(self, track_id: str) -> tuple[Split, ...] | None:
        """The splits of ``track_id`` sorted by ``rights_holder_id``, or None for an unknown track."""
        return self.splits.get(track_id)

    def gross_micros(self, territory: str, product: str) -> int:
        """The gross of one stream: the rate for (territory, product), else ('*', product).

        Raises ``KeyError`` when neither exists, that is, for a product the catalog has no rate for.
        """
        rate = self.rates_micros.get((territory, product))
        if rate is None:
            rate = self.rates_micros.get((FALLBACK_TERRITORY, product))
        if rate is None:
            raise KeyError(f"no rate for territory {territory!r}, product {product!r} and no fallback")
        return rate

    def __repr__(self) -> str:
        return (
            f"Catalog(currency={self.currency!r}, tracks={len(self.tracks)}, "
            f"rights_holders={len(self.rights_holders)}, rates={len(self.rates_micros)})"
        )


@dataclass(frozen=True, slots=True)
class _Row:
    path: Path
    line: int
    values: dict[str, str]

    def where(self) -> str:
        return f"{self.path}:{self.line}"


class _CatalogLoader:
    """Reads a catalog directory, collecting every problem before it gives up."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.problems: list[str] = []

    def load(self) -> Catalog:
        if not self.directory.is_dir():
            raise ValueError(f"catalog directory {self.directory} does not exist")
        rows = {file_name: self._read(file_name) for file_name in _COLUMNS}
        # A missing file or a bad header makes every later check noise: stop here.
        self._raise_if_problems()
        tracks, track_lines = self._tracks(rows[TRACKS_FILE])
        rights_holders = self._rights_holders(rows[RIGHTS_HOLDERS_FILE])
        splits = self._splits(rows[SPLITS_FILE], tracks, track_lines, rights_holders)
        currency, rates = self._rates(rows[RATES_FILE])
        self._raise_if_problems()
        return Catalog(
            currency=currency,
            tracks=tracks,
            rights_holders=rights_holders,
            splits=splits,
            rates_micros=rates,
        )

    def _raise_if_problems(self) -> None:
        if not self.problems:
            return
        shown = self.problems[:_MAX_PROBLEMS_SHOWN]
        if len(self.problems) > len(shown):
            shown.append(f"... and {len(self.problems) - len(shown)} more")
        count = len(self.problems)
        raise ValueError(
            f"invalid catalog {self.directory} ({count} problem{'s' if count > 1 else ''}):\n  "
            + "\n  ".join(shown)
        )

    def _read(self, file_name: str) -> list[_Row]:
        path = self.directory / file_name
        expected = _COLUMNS[file_name]
        if not path.is_file():
            self.problems.append(f"{path}: catalog file is missing")
            return []
        rows: list[_Row] = []
        # utf-8-sig: spreadsheets save CSVs with a byte-order mark.
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle)
            try:
                header = next(reader, [])
                if not self._header_ok(path, header, expected, _OPTIONAL_COLUMNS.get(file_name, ())):
                    return []
                for fields in reader:
                    # line_num counts physical lines, so a quoted newline keeps the numbering right.
                    row = self._row(path, reader.line_num, header, fields)
                    if row is not None:
                        rows.append(row)
            except UnicodeDecodeError as error:
                self.problems.append(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})")
            except csv.Error as error:
                self.problems.append(f"{path}:{reader.line_num}: unreadable CSV ({error})")
        return rows

    def _header_ok(
        self, path: Path, header: list[str], expected: tuple[str, ...], optional: tuple[str, ...] = ()
    ) -> bool:
        if not header:
            self.problems.append(f"{path}:1: no header; expected {','.join(expected)}")
            return False
        reasons = []
        unknown = [column for column in header if column not in expected and column not in optional]
        missing = [column for column in expected if column not in header]
        duplicated = sorted({column for column in header if header.count(column) > 1})
        if unknown:
            reasons.append(f"unknown column(s) {', '.join(map(repr, unknown))}")
        if missing:
            reasons.append(f"missing column(s) {', '.join(missing)}")
        if duplicated:
            reasons.append(f"duplicated column(s) {', '.join(duplicated)}")
        if reasons:
            self.problems.append(f"{path}:1: bad header: {'; '.join(reasons)}; expected {','.join(expected)}")
            return False
        return True

    def _row(self, path: Path, line: int, header: list[str], fields: list[str]) -> _Row | None:
        if not fields:
            return None
        if len(fields) != len(header):
            self.problems.append(f"{path}:{line}: expected {len(header)} fields, got {len(fields)}")
            return None
        values = dict(zip(header, fields, strict=True))
        bad = [
            column
            for column, value in values.items()
            if (not value and column not in _IDENTIFIERS) or value != value.strip()
        ]
        if bad:
            self.problems.append(f"{path}:{line}: empty or space-padded value in {', '.join(bad)}")
            return None
        malformed = [
            f"{column} {value!r} is not a valid {column}"
            for column, value in values.items()
            if column in _IDENTIFIERS and value and not _IDENTIFIERS[column].fullmatch(value)
        ]
        if malformed:
            self.problems.append(f"{path}:{line}: {'; '.join(malformed)}")
            return None
        return _Row(path, line, values)

    def _int(self, row: _Row, column: str, *, positive: bool = False) -> int | None:
        value = row.values[column]
        if not _NON_NEGATIVE_INT.fullmatch(value) or (positive and int(value) == 0):
            kind = "a positive" if positive else "a non-negative"
            self.problems.append(f"{row.where()}: {column} must be {kind} integer, got {value!r}")
            return None
        return int(value)

    def _tracks(self, rows: list[_Row]) -> tuple[dict[str, Track], dict[str, int]]:
        tracks: dict[str, Track] = {}
        lines: dict[str, int] = {}
        for row in rows:
            track_id = row.values["track_id"]
            if track_id in lines:
                self.problems.append(
                    f"{row.where()}: duplicate track_id {track_id} (first on line {lines[track_id]})"
                )
                continue
            lines[track_id] = row.line
            duration_ms = self._int(row, "duration_ms")
            if duration_ms is not None:
                tracks[track_id] = Track(
                    track_id,
                    row.values["title"],
                    row.values["artist"],
                    duration_ms,
                    row.values.get("isrc", ""),
                    row.values.get("icpn", ""),
                )
        return tracks, lines

    def _rights_holders(self, rows: list[_Row]) -> dict[str, RightsHolder]:
        holders: dict[str, RightsHolder] = {}
        lines: dict[str, int] = {}
        for row in rows:
            rights_holder_id, role = row.values["rights_holder_id"], row.values["role"]
            if rights_holder_id in lines:
                self.problems.append(
                    f"{row.where()}: duplicate rights_holder_id {rights_holder_id} "
                    f"(first on line {lines[rights_holder_id]})"
                )
                continue
            lines[rights_holder_id] = row.line
            if role not in ROLES:
                self.problems.append(f"{row.where()}: role must be one of {'|'.join(ROLES)}, got {role!r}")
            holders[rights_holder_id] = RightsHolder(
                rights_holder_id, row.values["name"], role, row.values.get("ddex_party_id", "")
            )
        return holders

    def _splits(
        self,
        rows: list[_Row],
        tracks: Mapping[str, Track],
        track_lines: Mapping[str, int],
        rights_holders: Mapping[str, RightsHolder],
    ) -> dict[str, tuple[Split, ...]]:
        by_track: dict[str, dict[str, Split]] = {}
        lines: dict[tuple[str, str], int] = {}
        for row in rows:
            track_id, rights_holder_id = row.values["track_id"], row.values["rights_holder_id"]
            key = (track_id, rights_holder_id)
            if key in lines:
                self.problems.append(
                    f"{row.where()}: duplicate split for track {track_id}, rights holder "
                    f"{rights_holder_id} (first on line {lines[key]})"
                )
                continue
            lines[key] = row.line
            if track_id not in track_lines:
                self.problems.append(f"{row.where()}: track {track_id} is not in {TRACKS_FILE}")
            if rights_holder_id not in rights_holders:
                self.problems.append(
                    f"{row.where()}: rights holder {rights_holder_id} is not in {RIGHTS_HOLDERS_FILE}"
                )
            share_bps = self._int(row, "share_bps", positive=True)
            if share_bps is not None:
                by_track.setdefault(track_id, {})[rights_holder_id] = Split(rights_holder_id, share_bps)

        splits_path = self.directory / SPLITS_FILE
        for track_id, holder_splits in by_track.items():
            total = sum(split.share_bps for split in holder_splits.values())
            if total != SHARE_BPS_TOTAL:
                track_split_lines = sorted(lines[(track_id, holder)] for holder in holder_splits)
                self.problems.append(
                    f"{splits_path}:{track_split_lines[0]}: shares of track {track_id} sum to {total} bps, "
                    f"expected {SHARE_BPS_TOTAL} (lines {', '.join(map(str, track_split_lines))})"
                )
        tracks_path = self.directory / TRACKS_FILE
        for track_id, line in track_lines.items():
            if track_id not in by_track:
                self.problems.append(f"{tracks_path}:{line}: track {track_id} has no rows in {SPLITS_FILE}")
        return {
            track_id: tuple(holder_splits[holder] for holder in sorted(holder_splits))
            for track_id, holder_splits in by_track.items()
            if track_id in tracks
        }

    def _rates(self, rows: list[_Row]) -> tuple[str, dict[tuple[str, str], int]]:
        rates: dict[tuple[str, str], int] = {}
        lines: dict[tuple[str, str], int] = {}
        currency: str | None = None
        currency_line = 0
        for row in rows:
            territory, product, row_currency = (row.values[c] for c in ("territory", "product", "currency"))
            key = (territory, product)
            if key in lines:
                self.problems.append(
                    f"{row.where()}: duplicate rate for territory {territory}, product {product} "
                    f"(first on line {lines[key]})"
                )
                continue
            lines[key] = row.line
            if territory != FALLBACK_TERRITORY and (
                len(territory) != 2
                or not territory.isupper()
                or pycountry.countries.get(alpha_2=territory) is None
            ):
                self.problems.append(
                    f"{row.where()}: territory must be an upper-case ISO 3166-1 alpha-2 code "
                    f"or '{FALLBACK_TERRITORY}', got {territory!r}"
                )
            if product not in PRODUCTS:
                self.problems.append(
                    f"{row.where()}: product must be one of {'|'.join(PRODUCTS)}, got {product!r}"
                )
            if currency is None:
                if (
                    len(row_currency) != 3
                    or not row_currency.isupper()
                    or (pycountry.currencies.get(alpha_3=row_currency) is None)
                ):
                    self.problems.append(
                        f"{row.where()}: currency must be an ISO 4217 code, got {row_currency!r}"
                    )
                currency, currency_line = row_currency, row.line
            elif row_currency != currency:
                self.problems.append(
                    f"{row.where()}: currency {row_currency} differs from {currency} "
                    f"on line {currency_line}; a catalog has exactly one currency"
                )
            rate_micros = self._int(row, "rate_micros")
            if rate_micros is not None:
                rates[key] = rate_micros

        rates_path = self.directory / RATES_FILE
        if currency is None:
            self.problems.append(f"{rates_path}: no rates")
        for product in PRODUCTS:
            if (FALLBACK_TERRITORY, product) not in lines:
                self.problems.append(
                    f"{rates_path}: no '{FALLBACK_TERRITORY}' fallback rate for product {product}"
                )
        return currency or "", rates
