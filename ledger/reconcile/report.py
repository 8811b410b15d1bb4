"""``report.html``: one self-contained page an auditor reads, verdict first (Jinja2, inline SVG)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jinja2

from ledger.reconcile.ties import PeriodReconciliation

__all__ = ["render_report"]

_ENVIRONMENT = jinja2.Environment(
    loader=jinja2.PackageLoader("ledger.reconcile", "templates"),
    autoescape=jinja2.select_autoescape(["html", "j2"]),
    undefined=jinja2.StrictUndefined,
)


def micros_text(micros: int | None) -> str:
    """Integer micro-units as a decimal amount, exactly (no float on the way)."""
    if micros is None:
        return "n/a"
    sign = "-" if micros < 0 else ""
    whole, fraction = divmod(abs(int(micros)), 1_000_000)
    return f"{sign}{whole:,}.{fraction:06d}"


def _funnel(numbers: dict[str, Any]) -> list[dict[str, Any]]:
    """Bars of the event funnel: received → archived → unique → streams (widths in % of the largest)."""
    steps = [
        ("received (receipts)", int(numbers["receipts"])),
        ("archived rows", int(numbers["archived"])),
        ("unique plays (first copies)", int(numbers["first_copies"])),
        ("in the final ledger", int(numbers["final_plays"])),
        ("streams (earn money)", int(numbers["streams"])),
    ]
    largest = max([value for _, value in steps] + [1])
    return [
        {"label": label, "value": value, "width": round(400 * value / largest, 1)} for label, value in steps
    ]


def _timeliness(result: PeriodReconciliation) -> list[dict[str, Any]]:
    """Bars of the seconds from each hour's end to its ``_CLOSED`` (0 height for an hour not closed)."""
    closed = [hour.get("seconds_after_hour_end", 0.0) for hour in result.hours]
    largest = max([abs(value) for value in closed] + [1.0])
    return [
        {**hour, "height": round(120 * abs(hour.get("seconds_after_hour_end", 0.0)) / largest, 1)}
        for hour in result.hours
    ]


def render_report(results: Sequence[PeriodReconciliation], status: str) -> str:
    """The whole page as text."""
    periods = [
        {
            "result": result,
            "numbers": result.summary(),
            "funnel": _funnel(result.summary()),
            "timeliness": _timeliness(result),
        }
        for result in results
    ]
    return _ENVIRONMENT.get_template("report.html.j2").render(
        status=status, periods=periods, micros=micros_text
    )
