"""Local runner set-up: the direct runner, named explicitly, with its metrics mended.

Beam 2.77's direct runner creates a new ``MetricsContainer`` for every bundle, but each
worker thread's ``StateSampler`` caches the ``ScopedState`` of a step together with
the container of that step's *first* bundle. Counters incremented in later bundles land
in that old container, which is never read again, so a long-running streaming pipeline
reports only its first bundle per step and thread. ``mend_direct_runner_metrics``
drops the cached state when a bundle brings a different container; the drain logic of
``playledger up`` and the demo depend on counters that keep counting.
"""

from __future__ import annotations

from typing import Any

from apache_beam.runners.worker import statesampler
from apache_beam.utils.counters import CounterName

__all__ = ["DIRECT_RUNNERS", "mend_direct_runner_metrics"]

DIRECT_RUNNERS = frozenset({"DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner"})

_ORIGINAL_SCOPED_STATE = statesampler.StateSampler.scoped_state


def _scoped_state(
    self: Any, name_context: Any, state_name: str, io_target: Any = None, metrics_container: Any = None
) -> Any:
    if metrics_container is not None:
        if not isinstance(name_context, statesampler.common.NameContext):
            name_context = statesampler.common.NameContext(name_context)
        counter_name = CounterName(
            state_name + "-msecs",
            stage_name=self._prefix,
            step_name=name_context.metrics_name(),
            io_target=io_target,
        )
        cached = self._states_by_name.get(counter_name)
        if cached is not None and cached.metrics_container is not metrics_container:
            del self._states_by_name[counter_name]
    return _ORIGINAL_SCOPED_STATE(self, name_context, state_name, io_target, metrics_container)


def mend_direct_runner_metrics() -> None:
    """Make the direct runner count every bundle (idempotent; harmless on other runners)."""
    setattr(statesampler.StateSampler, "scoped_state", _scoped_state)  # noqa: B010 (mypy: method-assign)
