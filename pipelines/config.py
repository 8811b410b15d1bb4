"""Typed settings of the royalty pipelines, validated when they are made."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from ledger.catalog import DEFAULT_CATALOG_DIR
from schemas.settings import NonNegativeInt, PositiveInt, Settings

__all__ = ["DATAFLOW_DEDUP_SHARDS", "PipelineConfig"]

DATAFLOW_DEDUP_SHARDS = 64
"""De-duplication shards on a runner with many workers, unless ``--dedup-shards`` says otherwise."""


class PipelineConfig(Settings, frozen=True, kw_only=True):
    """Windowing, lateness, de-duplication and royalty settings of a pipeline run.

    Late data is gathered into a delta pane every ``late_firing_seconds``; 0 fires a pane
    per late element (tests that drive processing time with ``TestStream`` need that:
    its frozen clock never fires a processing-time trigger after the watermark passed).

    ``allowed_lateness_hours`` defaults to Pub/Sub's longest message retention (7 days):
    the source watermark follows the wall clock, so a backlog read after an outage is
    late, and anything older than the allowed lateness would be dropped by the window.

    ``dedup_shards`` is how many keys the de-duplication state is spread over (by a hash
    of ``event_id``): each shard checks a batch at a time, and shards run in parallel on
    a runner with many workers (Dataflow: a few per worker core, ``DATAFLOW_DEDUP_SHARDS``
    unless told otherwise). The default, one, suits the direct runner: it runs every
    key's bundles one after another in one process, so there a shard only adds bundles
    (four shards cost the streaming pipeline about a fifth of its throughput).
    """

    setting_kind: ClassVar[str] = "pipeline"

    period_seconds: PositiveInt = 3600
    early_firing_seconds: PositiveInt = 5
    late_firing_seconds: NonNegativeInt = 5
    allowed_lateness_hours: NonNegativeInt = 7 * 24
    dedup_horizon_hours: PositiveInt = 24
    dedup_shards: PositiveInt = 1
    min_stream_ms: NonNegativeInt = 30_000
    dead_letter_window_seconds: PositiveInt = 60
    catalog_dir: Path = DEFAULT_CATALOG_DIR

    def check(self) -> None:
        if self.early_firing_seconds >= self.period_seconds:
            raise ValueError("early_firing_seconds must be shorter than period_seconds")
