"""DDEX DSR export: ``playledger ledger dsr --month M --rights-holder ID [--out DIR]``.

Writes one rights holder's month, from the standing close (``close_current``), as a
Digital Sales Report flat file in the DDEX DSR **Basic Audio profile, version 1.2**, as
``schemas/BasicAudioProfile/1.2/BasicAudioProfile.xsd`` and ``constants.py`` of DDEX's
``ddexnet/dsrf`` define it: tab-separated cells, ``|`` between repeated values, ``\\``
escaping those characters, no comment lines, every optional cell present (empty), in
this order:

- ``HEAD`` (16 cells): ``MessageVersion`` ``dsrf/3.0``, ``Profile`` ``BasicAudioProfile``,
  ``ProfileVersion`` ``1.2``, the usage period, sender (this service) and recipient (the
  rights holder) party ids;
- summary records per territory: ``SY01.01`` (15 cells, ``SubscriptionModel``: the
  ``premium`` product) and ``SY02.02`` (22 cells, ``AdvertisementSupportedModel``: the
  ``free`` product), ``UseType`` ``OnDemandStream``, ``Usages`` the streams and
  ``NetRevenue`` the rights holder's amount in that market (``SY02.02`` also as
  ``AllocatedUsages``/``AllocatedRevenue``/``AllocatedNetRevenue``);
- one block per track with streams: ``RE01`` (15 cells, the release with its ICPN),
  ``AS01.01`` (12 cells, the sound recording with its ISRC) and a usage record per market,
  ``SU01`` (12 cells, subscription: ``Usages``) or ``SU02`` (10 cells, ad-supported:
  ``NumberOfStreams``) pointing at its summary record; Basic Audio 1.2 carries money in
  the summary records only, so the amounts sum there;
- ``FOOT`` (6 cells): lines in file and report (HEAD and FOOT included), summary records,
  blocks in file and report.

The file is named ``DSR_<recipient>_<sender>_<service>_<YYYY-MM>_<territory>_1of1_<created>.tsv``
(recipient first, territory ``multi`` when more than one), as dsrf's file-name validator
requires. Identifiers Basic Audio needs and the catalog lacks (DDEX party ids, ISRCs,
ICPNs) come from the catalog's optional ``isrc``, ``icpn`` and ``ddex_party_id`` columns
(``fixtures/catalog/generate.py`` fills them); a catalog without them gets identifiers
derived deterministically from its ids by ``identifiers``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections import defaultdict
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

from ledger.finance.statement import build_statement
from ledger.storage import write_bytes_atomically
from ledger.views import open_ledger

__all__ = ["FIELD_COUNTS", "SENDER_PARTY_ID", "SERVICE", "escape_cell", "identifiers", "write_dsr"]

SENDER_PARTY_ID = "PADPIDAPLAYLEDGER"
SENDER_NAME = "playledger"
SERVICE = "Streaming"
FIELD_COUNTS = {
    "HEAD": 16,
    "SY01.01": 15,
    "SY02.02": 22,
    "RE01": 15,
    "AS01.01": 12,
    "SU01": 12,
    "SU02": 10,
    "FOOT": 6,
}
"""Cells per record type in Basic Audio 1.2 (one per element of the record's XSD sequence)."""
_MICRO = Decimal("0.000001")


def escape_cell(value: str) -> str:
    """A cell value with dsrf's escape character before ``\\``, tab and ``|``."""
    return re.sub(r"([\\\t|])", r"\\\1", value).replace("\n", " ")


def _digits(text: str, count: int) -> str:
    return str(int(hashlib.sha256(text.encode()).hexdigest(), 16) % 10**count).zfill(count)


def identifiers(track_id: str, rights_holder_id: str) -> dict[str, str]:
    """Deterministic DDEX identifiers: ISRC and ICPN of a track, party id of a rights holder."""
    return {
        "isrc": "QZPLD" + _digits("isrc:" + track_id, 7),
        "icpn": _digits("icpn:" + track_id, 13),
        "party_id": "PADPIDA" + re.sub(r"[^A-Za-z0-9]", "", rights_holder_id),
    }


def _amount(amount_micros: int) -> str:
    return str((Decimal(amount_micros) * _MICRO).quantize(_MICRO))


def _duration(duration_ms: int) -> str:
    minutes, seconds = divmod(duration_ms // 1000, 60)
    return f"PT{minutes}M{seconds}S"


def write_dsr(
    data_dir: Path | str,
    month: str,
    rights_holder_id: str,
    out_dir: Path,
    *,
    created: dt.datetime | None = None,
) -> Path:
    """Write the rights holder's DSR for ``month`` under ``out_dir``; return its path."""
    data = Path(data_dir).resolve()
    statement = build_statement(data, month, rights_holder_id)
    if not statement.lines:
        raise ValueError(f"rights holder {rights_holder_id} has no lines in the {month} close")
    moment = (created or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).replace(microsecond=0)
    connection = open_ledger(data)
    holder_columns = [row[0] for row in connection.execute("DESCRIBE rights_holders").fetchall()]
    recipient = identifiers("", rights_holder_id)["party_id"]
    if "ddex_party_id" in holder_columns:
        found = connection.execute(
            "SELECT ddex_party_id FROM rights_holders WHERE rights_holder_id = ?", [rights_holder_id]
        ).fetchall()
        recipient = found[0][0] if found and found[0][0] else recipient
    year, number = int(month[:4]), int(month[5:])
    first = dt.date(year, number, 1)
    last = dt.date(year + (number == 12), number % 12 + 1, 1) - dt.timedelta(days=1)
    track_columns = [row[0] for row in connection.execute("DESCRIBE tracks").fetchall()]
    ids_sql = ", ".join(c if c in track_columns else "''" for c in ("isrc", "icpn"))
    catalog = {
        track_id: (title, artist, duration_ms, isrc, icpn)
        for track_id, title, artist, duration_ms, isrc, icpn in connection.execute(
            f"SELECT track_id, title, artist, duration_ms, {ids_sql} FROM tracks"
        ).fetchall()
    }
    records: list[Sequence[str]] = [
        [
            "HEAD", "dsrf/3.0", "BasicAudioProfile", "1.2", f"{recipient}-{month}-{moment:%Y%m%dT%H%M%S}",
            moment.strftime("%Y-%m-%dT%H:%M:%SZ"), "1", "1", first.isoformat(), last.isoformat(),
            SENDER_PARTY_ID, SENDER_NAME, SERVICE, recipient, statement.name, "",
        ]
    ]  # fmt: skip
    summary_ids: dict[tuple[str, str], str] = {}
    for index, market in enumerate(statement.markets, start=1):
        territory, product = market["territory"], market["product"]
        summary_id = f"SR{index}"
        summary_ids[(territory, product)] = summary_id
        amount = _amount(market["amount_micros"])
        streams = str(market["streams"])
        if product == "premium":
            records.append(
                [
                    "SY01.01",
                    summary_id,
                    "",
                    "",
                    "SubscriptionModel",
                    "OnDemandStream",
                    territory,
                    "",
                    streams,
                    "",
                    statement.currency,
                    amount,
                    "",
                    "",
                    "",
                ]
            )
        else:
            records.append(
                [
                    "SY02.02",
                    summary_id,
                    "",
                    "",
                    "AdvertisementSupportedModel",
                    "OnDemandStream",
                    territory,
                    SERVICE,
                    streams,
                    "",
                    statement.currency,
                    amount,
                    statement.name,
                    recipient,
                    streams,
                    amount,
                    amount,
                    "",
                    "Music",
                    "",
                    "",
                    "",
                ]
            )
    summaries = len(records) - 1
    by_track: dict[str, list[dict[str, object]]] = defaultdict(list)
    for line in statement.lines:
        if int(line["streams"]) > 0:
            by_track[str(line["track_id"])].append(line)
    for block_number, (track_id, lines) in enumerate(sorted(by_track.items()), start=1):
        block = f"BL{block_number}"
        title, artist, duration_ms, isrc, icpn = catalog.get(track_id, (track_id, "", 0, "", ""))
        ids = identifiers(track_id, rights_holder_id)
        ids["isrc"], ids["icpn"] = isrc or ids["isrc"], icpn or ids["icpn"]
        release, resource = f"RE{block_number}", f"RS{block_number}"
        records.append(
            [
                "RE01",
                block,
                release,
                track_id,
                "",
                "",
                ids["icpn"],
                artist or "Unknown",
                "",
                title,
                "",
                "Single",
                "",
                "",
                "",
            ]
        )
        records.append(
            [
                "AS01.01",
                block,
                resource,
                track_id,
                ids["isrc"],
                title,
                "",
                artist or "Unknown",
                "",
                _duration(int(duration_ms)) if duration_ms else "",
                "SoundRecording",
                "",
            ]
        )
        for transaction, line in enumerate(lines, start=1):
            summary_id = summary_ids[(str(line["territory"]), str(line["product"]))]
            streams = str(line["streams"])
            sale = f"{block}-{transaction}"
            if line["product"] == "premium":
                records.append(
                    [
                        "SU01",
                        block,
                        summary_id,
                        sale,
                        release,
                        resource,
                        "true",
                        "false",
                        streams,
                        "0",
                        "",
                        "",
                    ]
                )
            else:
                records.append(["SU02", block, summary_id, sale, release, resource, "true", streams, "", ""])
    lines_in_file = len(records) + 1
    blocks = len(by_track)
    records.append(["FOOT", str(lines_in_file), str(lines_in_file), str(summaries), str(blocks), str(blocks)])
    for record in records:
        if len(record) != FIELD_COUNTS[record[0]]:
            raise AssertionError(
                f"{record[0]} has {len(record)} cells, Basic Audio 1.2 has {FIELD_COUNTS[record[0]]}"
            )
    territories = sorted({market["territory"] for market in statement.markets})
    territory = territories[0] if len(territories) == 1 else "multi"
    name = f"DSR_{recipient}_{SENDER_PARTY_ID}_{SERVICE}_{month}_{territory}_1of1_{moment:%Y%m%dT%H%M%S}.tsv"
    text = "".join("\t".join(escape_cell(cell) for cell in record) + "\n" for record in records)
    return write_bytes_atomically(text.encode(), out_dir / name, out_dir / ".tmp")
