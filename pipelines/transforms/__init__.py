"""The royalty transforms both pipelines are built from.

Each step is a small DoFn wrapped in a named composite; every fallible step has a
dead-letter output and a counter per branch (``ledger.counters.Counter``), so
reconciliation can balance them::

    messages ─ DecodePlayMessages ─┬─ plays ─ DedupByEventId ─┬─ unique ─ AggregateLedger
                                   └─ dead letters            ├─ duplicates
                                                              └─ conflicts (dead letters)
    AggregateLedger: window by received_at ─ CountPlays ─ AttributeCounts ─ ledger rows

Plays travel as Arrow record batches (``play_batches``), a bundle's events of one period
together, so the per-event work is column operations rather than Python per element.

Modules: ``decode``, ``dedup`` (with ``remembered_ids``), ``counting``, ``windows``,
``attribution``, ``branches`` (counter rows), ``sinks`` (Parquet panes and the final
ledger), and for the batch recompute ``archive_reads`` and ``exact_dedup``; ``metrics``
makes Beam counters from ``Counter`` names and sums a run's.
"""
