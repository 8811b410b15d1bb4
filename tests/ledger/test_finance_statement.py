"""Statements agree with the close to the micro-unit, and the HTML page works offline in a real browser."""

from __future__ import annotations

import csv
import datetime as dt
from decimal import Decimal
from pathlib import Path

import pytest
from test_finance_close import DAY, MONTH, MONTH_START, final_month, write_revenue

from ledger.finance.close import close_month
from ledger.finance.statement import build_statement, rights_holders_closed, write_statement

CHROMIUM = Path("/usr/bin/chromium")


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


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_the_statement_page_renders_offline_with_its_totals(closed_twice: Path, tmp_path: Path) -> None:
    playwright_api = pytest.importorskip("playwright.sync_api")
    statement = build_statement(closed_twice, MONTH, "RH1")
    _, html_path = write_statement(statement, tmp_path / "out")
    errors: list[str] = []
    blocked: list[str] = []
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--headless=new",
                "--no-sandbox",
                "--disable-background-networking",
                "--disable-component-update",
            ],
        )
        try:
            context = browser.new_context()

            def only_local(route: object) -> None:
                request = route.request  # type: ignore[attr-defined]
                if request.url.startswith(("file:", "data:")):
                    route.continue_()  # type: ignore[attr-defined]
                else:
                    blocked.append(request.url)
                    route.abort()  # type: ignore[attr-defined]

            context.route("**/*", only_local)
            page = context.new_page()
            page.on(
                "console", lambda message: errors.append(message.text) if message.type == "error" else None
            )
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(html_path.as_uri())
            total_text = page.locator("#total").inner_text()
            bars = page.locator("svg rect").count()
            visible = page.locator("#total").is_visible()
        finally:
            browser.close()
    whole, fraction = divmod(statement.amount_micros, 1_000_000)
    assert f"{whole:,}.{fraction:06d} USD" in total_text
    assert visible and bars == 1
    assert errors == [] and blocked == []
    assert dt.datetime.now(dt.UTC) > MONTH_START
