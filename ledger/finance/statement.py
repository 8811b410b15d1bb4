"""Royalty statements: ``playledger ledger statement --month M [--rights-holder ID | --all] [--out DIR]``.

One statement per rights holder and month, from the month's standing close
(``close_current``: every version added up): who (name, role), the close version, the
totals, a summary per territory and product (streams, share of the market's pool,
amount), the lines per track, and the adjustments later versions made. Written as CSV
(the lines, exact decimal amounts) and as a printable, self-contained HTML page
(``templates/statement.html.j2``, with a small inline SVG chart of amount by territory).
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import jinja2

from ledger.finance.close import CLOSES_DIR, MANIFEST_FILE
from ledger.storage import write_bytes_atomically
from ledger.views import open_ledger

__all__ = ["Statement", "build_statement", "format_micros", "rights_holders_closed", "write_statement"]

_MICRO = Decimal("0.000001")
_CHART_WIDTH = 320


def format_micros(amount_micros: int) -> str:
    """Micro-units as an exact decimal with thousands separators, e.g. ``1,234.000567``."""
    sign = "-" if amount_micros < 0 else ""
    whole, fraction = divmod(abs(amount_micros), 1_000_000)
    return f"{sign}{whole:,}.{fraction:06d}"


@dataclass
class Statement:
    """One rights holder's statement for one month."""

    month: str
    version: int
    rights_holder_id: str
    name: str
    role: str
    currency: str
    streams: int
    amount_micros: int
    markets: list[dict[str, Any]] = field(default_factory=list)
    lines: list[dict[str, Any]] = field(default_factory=list)
    adjustments: list[dict[str, Any]] = field(default_factory=list)


def _latest_manifest(data_dir: Path, month: str) -> dict[str, Any]:
    folder = data_dir / CLOSES_DIR / f"month={month}"
    versions = sorted(
        (int(path.parent.name[1:]), path)
        for path in folder.glob(f"v*/{MANIFEST_FILE}")
        if path.parent.name[1:].isdigit()
    )
    if not versions:
        raise ValueError(f"month {month} is not closed in {data_dir} (run `playledger ledger close` first)")
    manifest: dict[str, Any] = json.loads(versions[-1][1].read_text())
    return manifest


def rights_holders_closed(data_dir: Path, month: str) -> list[str]:
    """Every account with a line in the month's standing close (``UNMATCHED``, ``UNALLOCATED`` included)."""
    _latest_manifest(data_dir, month)
    rows = open_ledger(data_dir).execute(
        "SELECT DISTINCT rights_holder_id FROM close_current WHERE month = ? ORDER BY 1", [month]
    )
    return [holder for (holder,) in rows.fetchall()]


def build_statement(data_dir: Path | str, month: str, rights_holder_id: str) -> Statement:
    """The statement of ``rights_holder_id`` for ``month``; ``ValueError`` if either is unknown."""
    data = Path(data_dir).resolve()
    manifest = _latest_manifest(data, month)
    pools = {(m["territory"], m["product"]): int(m["pool_micros"]) for m in manifest["markets"]}
    connection = open_ledger(data)
    who = connection.execute(
        "SELECT name, role FROM rights_holders WHERE rights_holder_id = ?", [rights_holder_id]
    ).fetchall()
    lines = connection.execute(
        """
        SELECT c.track_id, coalesce(t.title, ''), c.territory, c.product, c.streams, c.amount_micros,
               c.currency
        FROM close_current AS c LEFT JOIN tracks AS t USING (track_id)
        WHERE c.month = ? AND c.rights_holder_id = ?
        ORDER BY c.territory, c.product, c.track_id
        """,
        [month, rights_holder_id],
    ).fetchall()
    if not lines and not who:
        raise ValueError(
            f"rights holder {rights_holder_id} is neither in the catalog nor in the {month} close"
        )
    adjustments = connection.execute(
        """
        SELECT version, track_id, territory, product, streams, amount_micros, currency FROM closes
        WHERE month = ? AND rights_holder_id = ? AND version > 1
        ORDER BY version, territory, product, track_id
        """,
        [month, rights_holder_id],
    ).fetchall()
    name, role = who[0] if who else (rights_holder_id, "suspense")
    markets: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    statement = Statement(
        month=month,
        version=int(manifest["version"]),
        rights_holder_id=rights_holder_id,
        name=name,
        role=role,
        currency=lines[0][6] if lines else "",
        streams=0,
        amount_micros=0,
    )
    for track_id, title, territory, product, streams, amount_micros, currency in lines:
        markets[(territory, product)][0] += streams
        markets[(territory, product)][1] += amount_micros
        statement.streams += streams
        statement.amount_micros += amount_micros
        statement.lines.append(
            {
                "track_id": track_id,
                "title": title,
                "territory": territory,
                "product": product,
                "streams": streams,
                "amount_micros": amount_micros,
                "amount": format_micros(amount_micros),
                "currency": currency,
            }
        )
    for (territory, product), (streams, amount_micros) in sorted(markets.items()):
        pool = pools.get((territory, product), 0)
        share = Decimal(amount_micros * 100) / Decimal(pool) if pool else Decimal(0)
        statement.markets.append(
            {
                "territory": territory,
                "product": product,
                "streams": streams,
                "pool": format_micros(pool),
                "share_percent": f"{share.quantize(Decimal('0.0001'))}",
                "amount_micros": amount_micros,
                "amount": format_micros(amount_micros),
            }
        )
    for version, track_id, territory, product, streams, amount_micros, currency in adjustments:
        statement.adjustments.append(
            {
                "version": version,
                "track_id": track_id,
                "territory": territory,
                "product": product,
                "streams": streams,
                "amount": format_micros(amount_micros),
                "currency": currency,
            }
        )
    return statement


def _chart(statement: Statement) -> list[dict[str, Any]]:
    """Bars of amount by territory, widths in whole pixels from integer micro-units."""
    by_territory: dict[str, int] = defaultdict(int)
    for market in statement.markets:
        by_territory[market["territory"]] += market["amount_micros"]
    largest = max((abs(amount) for amount in by_territory.values()), default=0)
    return [
        {
            "territory": territory,
            "y": 24 * index,
            "width": (abs(amount) * _CHART_WIDTH // largest) if largest else 0,
            "amount": format_micros(amount),
        }
        for index, (territory, amount) in enumerate(sorted(by_territory.items()))
    ]


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("ledger.finance", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
    )


def write_statement(statement: Statement, out_dir: Path) -> tuple[Path, Path]:
    """Write ``statement`` as CSV and HTML under ``out_dir``; return both paths."""
    stem = f"statement_{statement.month}_{statement.rights_holder_id}"
    header = "month,version,rights_holder_id,track_id,title,territory,product,streams,amount,currency"
    rows = [header.split(",")]
    for line in statement.lines:
        amount = (Decimal(line["amount_micros"]) * _MICRO).quantize(_MICRO)
        head = [statement.month, str(statement.version), statement.rights_holder_id, line["track_id"]]
        tail = [line["title"], line["territory"], line["product"], str(line["streams"]), str(amount)]
        rows.append([*head, *tail, line["currency"]])
    text = io.StringIO()
    csv.writer(text).writerows(rows)
    csv_path = write_bytes_atomically(text.getvalue().encode(), out_dir / f"{stem}.csv", out_dir / ".tmp")
    html = (
        _environment()
        .get_template("statement.html.j2")
        .render(
            statement=statement,
            total=format_micros(statement.amount_micros),
            chart=_chart(statement),
            chart_width=_CHART_WIDTH,
        )
    )
    html_path = write_bytes_atomically(html.encode(), out_dir / f"{stem}.html", out_dir / ".tmp")
    return csv_path, html_path
