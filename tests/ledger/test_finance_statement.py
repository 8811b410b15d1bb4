"""Statements agree with the close to the micro-unit, and the HTML page works offline in a real browser."""

from __future__ import annotations

import csv
import datetime as dt
from decimal import Decimal
from pathlib import Path

import pytest
from offline_browser import offline_page
from test_finance_close import DAY, MONTH, MONTH_START, final_month, write_revenue

from ledger.finance.close import close_month
from ledger.finance.statement import build_statement, rights_holders_closed, write_statement


@pytest.fixture
def closed_twice(tmp_path: Path) -> Path:
    catalog, revenue = final_month(tmp_path)
    close_month(tmp_path, MONTH, revenue, catalog_dir=catalog, period_seconds=DAY)
    write_revenue(revenue, {("SE", "premium"): 123_456_789 + 1_001})
    close_month(tmp_path, MONTH, revenue, catalog_dir=catalog, period_seconds=DAY)
    return tmp_path


def test_statements_add_up_to_the_close(closed_twice: Path, tmp_path: Path) -> None:
    holders = rights_holders_closed(closed_twice, MONTH)
    assert holders == ["RH1", "RH2"]
    total = Decimal(0)
    for holder in holders:
        statement = build_statement(closed_twice, MONTH, holder)
        assert statement.version == 2 and statement.name == holder and statement.role == "label"
        assert statement.adjustments, "the second close adjusted every holder"
        csv_path, html_path = write_statement(statement, tmp_path / "out")
        with csv_path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert sum(Decimal(row["amount"]) for row in rows) * 1_000_000 == statement.amount_micros
        total += sum(Decimal(row["amount"]) for row in rows)
        assert "<script" not in html_path.read_text()
    assert total * 1_000_000 == 123_456_789 + 1_001


def test_an_unknown_rights_holder_is_an_error(closed_twice: Path) -> None:
    with pytest.raises(ValueError, match="rights holder NOBODY"):
        build_statement(closed_twice, MONTH, "NOBODY")
    with pytest.raises(ValueError, match="month 2026-10 is not closed"):
        build_statement(closed_twice, "2026-10", "RH1")


def test_the_statement_page_renders_offline_with_its_totals(closed_twice: Path, tmp_path: Path) -> None:
    statement = build_statement(closed_twice, MONTH, "RH1")
    _, html_path = write_statement(statement, tmp_path / "out")
    with offline_page(html_path) as seen:
        total_text = seen.page.locator("#total").inner_text()
        bars = seen.page.locator("svg rect").count()
        visible = seen.page.locator("#total").is_visible()
    errors, blocked = seen.errors, seen.blocked
    whole, fraction = divmod(statement.amount_micros, 1_000_000)
    assert f"{whole:,}.{fraction:06d} USD" in total_text
    assert visible and bars == 1
    assert errors == [] and blocked == []
    assert dt.datetime.now(dt.UTC) > MONTH_START
