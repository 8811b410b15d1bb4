"""Typed settings of the royalty pipelines, validated when they are made."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ledger.catalog import DEFAULT_CATALOG_DIR

__all__ = ["DATAFLOW_DEDUP_SHARDS", "PipelineConfig"]

DATAFLOW_DEDUP_SHARDS = 64
"""De-duplication shards on a runner with many workers, unless ``--dedup-shards`` says otherwise."""


@dataclass(frozen=True)
class PipelineConfig:
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

    period_seconds: int = 3600
    early_firing_seconds: int = 5
    late_firing_seconds: int = 5
    allowed_lateness_hours: int = 7 * 24
    dedup_horizon_hours: int = 24
    dedup_shards: int = 1
    min_stream_ms: int = 30_000
    dead_letter_window_seconds: int = 60
    catalog_dir: Path = field(default=DEFAULT_CATALOG_DIR)

    def __post_init__(self) -> None:
        for name in (
            "period_seconds",
            "early_firing_seconds",
            "dedup_horizon_hours",
            "dedup_shards",
            "dead_letter_window_seconds",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("allowed_lateness_hours", "min_stream_ms", "late_firing_seconds"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if self.early_firing_seconds >= self.period_seconds:
            raise ValueError("early_firing_seconds must be shorter than period_seconds")
        object.__setattr__(self, "catalog_dir", Path(self.catalog_dir))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> PipelineConfig:
        """Build from a mapping (parsed flags or a file); an unknown key is an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown pipeline setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**dict(values))
