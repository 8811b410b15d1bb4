"""The DSR export, parsed back independently: field counts, FOOT counts, sums against the close."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal
from pathlib import Path

import pytest
from test_finance_close import (
    DAY,
    MONTH,
    MONTH_START,
    make_period_final,
    write_catalog,
    write_final_ledger,
    write_revenue,
)

from ledger.finance.close import close_month
from ledger.finance.dsr import write_dsr
from ledger.views import open_ledger

# Cells per record type, counted from dsrf's schemas/BasicAudioProfile/1.2/BasicAudioProfile.xsd.
BASIC_AUDIO_1_2_CELLS = {
    "HEAD": 16,
    "SY01.01": 15,
    "SY02.02": 22,
    "RE01": 15,
    "AS01.01": 12,
    "SU01": 12,
    "SU02": 10,
    "FOOT": 6,
}
# dsrf's file-name rule (parsers/file_name_validators.py):
# DSR_recipient_sender_service_period_territory_xofy_created.tsv
FILE_NAME = re.compile(
    r"DSR_(PADPIDA[A-Za-z0-9]+)_(PADPIDA[A-Za-z0-9]+)_([^_]+)_(\d{4}-\d{2})_(\w{2}|multi)_1of1_(\d{8}T\d{6})\.tsv"
)
SPLITS = {"T1": {"RH1": 7_000, "RH2": 3_000}, "T2": {"RH2": 10_000}, "T3": {"RH1": 10_000}}


def cells(line: str) -> list[str]:
    """Split on tabs not escaped by a backslash, then unescape."""
    return [re.sub(r"\\(.)", r"\1", cell) for cell in re.split(r"(?<!\\)\t", line)]


def test_the_dsr_parses_back_and_agrees_with_the_close(tmp_path: Path) -> None:
    catalog = write_catalog(tmp_path / "catalog", SPLITS)
    streams = {
        ("SE", "premium"): {"T1": 5, "T2": 2},
        ("SE", "free"): {"T1": 3, "T3": 4},
        ("NO", "premium"): {"T3": 1},
    }
    for day in range(30):
        start = MONTH_START + dt.timedelta(days=day)
        make_period_final(tmp_path, start, write_final_ledger(tmp_path, start, streams, SPLITS))
    pools = {("SE", "premium"): 9_000_001, ("SE", "free"): 2_000_003, ("NO", "premium"): 777}
    close_month(
        tmp_path,
        MONTH,
        write_revenue(tmp_path / "revenue.csv", pools),
        catalog_dir=catalog,
        period_seconds=DAY,
    )

    path = write_dsr(
        tmp_path, MONTH, "RH1", tmp_path / "dsr", created=dt.datetime(2026, 12, 3, 9, 30, tzinfo=dt.UTC)
    )
    name = FILE_NAME.fullmatch(path.name)
    assert name is not None, path.name
    assert name.group(1) == "PADPIDARH1" and name.group(4) == MONTH and name.group(5) == "multi"
    text = path.read_text()
    assert text.endswith("\n") and not any(line.startswith("#") for line in text.splitlines())
    records = [cells(line) for line in text.splitlines()]
    for record in records:
        assert len(record) == BASIC_AUDIO_1_2_CELLS[record[0]], record
    kinds = [record[0] for record in records]
    assert kinds[0] == "HEAD" and kinds[-1] == "FOOT"
    head = records[0]
    assert head[2:4] == ["BasicAudioProfile", "1.2"] and head[8:10] == ["2026-11-01", "2026-11-30"]
    assert head[13] == name.group(1) and head[10] == name.group(2) and head[12] == name.group(3)

    summaries = [record for record in records if record[0].startswith("SY")]
    net = sum(Decimal(record[11]) for record in summaries)
    usages = sum(int(record[8]) for record in summaries)
    su_streams = sum(int(r[8]) if r[0] == "SU01" else int(r[7]) for r in records if r[0] in ("SU01", "SU02"))
    expected = (
        open_ledger(tmp_path)
        .execute(
            "SELECT CAST(sum(amount_micros) AS BIGINT), CAST(sum(streams) AS BIGINT) FROM close_current "
            "WHERE month = ? AND rights_holder_id = 'RH1'",
            [MONTH],
        )
        .fetchall()
    )
    assert (net * 1_000_000, usages) == expected[0] and su_streams == usages
    assert {(r[0], r[6]) for r in summaries} == {("SY01.01", "SE"), ("SY02.02", "SE"), ("SY01.01", "NO")}
    summary_ids = {record[1] for record in summaries}
    assert all(r[2] in summary_ids for r in records if r[0] in ("SU01", "SU02"))

    foot = records[-1]
    blocks = {record[1] for record in records if record[0] in ("RE01", "AS01.01", "SU01", "SU02")}
    assert foot[1:] == [
        str(len(records)),
        str(len(records)),
        str(len(summaries)),
        str(len(blocks)),
        str(len(blocks)),
    ]
    assert len(blocks) == 2  # T1 and T3: RH1 holds no part of T2


def test_the_fixture_catalog_carries_ddex_identifiers_and_old_catalogs_still_load(tmp_path: Path) -> None:
    from ledger.catalog import DEFAULT_CATALOG_DIR, Catalog

    catalog = Catalog.load(DEFAULT_CATALOG_DIR)
    track = catalog.tracks["T00001"]
    assert re.fullmatch(r"[A-Z]{2}[A-Z0-9]{3}[0-9]{7}", track.isrc) and re.fullmatch(r"[0-9]{13}", track.icpn)
    assert catalog.rights_holders["RH001"].ddex_party_id.startswith("PADPIDA")
    old = Catalog.load(write_catalog(tmp_path / "old", SPLITS))
    assert old.tracks["T1"].isrc == "" and old.rights_holders["RH1"].ddex_party_id == ""
    bad = tmp_path / "bad"
    write_catalog(bad, SPLITS)
    (bad / "tracks.csv").write_text(
        "track_id,title,artist,duration_ms,isrc,icpn\nT1,a,b,1,NOT-AN-ISRC,\nT2,a,b,1,,\nT3,a,b,1,,\n"
    )
    with pytest.raises(ValueError, match="isrc 'NOT-AN-ISRC' is not a valid isrc"):
        Catalog.load(bad)
