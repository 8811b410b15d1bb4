"""Reconciliation: the stored record tied to itself, per accounting period, in DuckDB.

``reconcile_periods(data_dir, ...)`` reads only the Parquet and JSON files under the data
directory and the catalog CSVs, and ties, per period: receipts ↔ archive (completeness),
archive ↔ final ledger (counting), money repriced independently in SQL ↔ final ledger,
provisional ↔ final ledger (explained), and service levels. See ``runbooks/reconcile.md``.

``ties`` computes them, ``command`` is ``playledger reconcile``, ``report`` draws the page.
"""
