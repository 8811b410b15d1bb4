"""Beam counters named by ``ledger.counters.Counter``, and a run's totals."""

from __future__ import annotations

from typing import Any

from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.runner import PipelineResult

from ledger.counters import Counter

__all__ = ["METRICS_NAMESPACE", "beam_counter", "counters"]

METRICS_NAMESPACE = "playledger"


def beam_counter(name: Counter) -> Any:
    """The pipeline's Beam counter ``name``.

    DoFns make their counters in ``setup``: a runner that copies a DoFn by pickling it
    (the direct runner does, for every bundle) then copies none of them.
    """
    return Metrics.counter(METRICS_NAMESPACE, str(name))


def counters(result: PipelineResult) -> dict[str, int]:
    """A run's counters summed over steps: committed values, else attempted (a runner may commit none)."""
    totals: dict[str, int] = {}
    query = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
    for counter in query["counters"]:
        value = counter.attempted if counter.committed is None else counter.committed
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + int(value or 0)
    return totals
