"""Local runner set-up: the direct runner, named explicitly, with its metrics mended.

Beam 2.77's direct runner creates a new ``MetricsContainer`` for every bundle, but each
worker thread's ``StateSampler`` caches the ``ScopedState`` of a step together with
the container of that step's *first* bundle. Counters incremented in later bundles land
in that old container, which is never read again, so a long-running streaming pipeline
reports only its first bundle per step and thread. ``mend_direct_runner_metrics``
gives every bundle a sampler of its own, so its states carry its own container; the
drain logic of ``playledger up`` and the demo depend on counters that keep counting.
(Evicting the stale state from the thread's sampler instead is not enough: the sampler
also appends every state it makes to an index list it never shrinks, so each bundle's
container would stay alive for good, and a streaming pipeline's memory would grow by
every bundle it runs.)

The direct runner also inspects every method signature of a DoFn at the start of every
bundle, to find its state and timers (``get_dofn_specs``) and its arguments
(``get_function_arguments``): a few milliseconds per step and bundle, more than a whole
batch of plays costs to process. And it hands every output bundle to every consumer,
empty or not: a step with three outputs, one of them busy, makes every step below the
other two run a bundle of nothing each time, and a ``Flatten`` of seven branches feeds
seven bundles per input bundle to what follows it. Each costs the runner's whole
per-bundle work (a pickled copy of the DoFn, state and watermark bookkeeping).

``mend_direct_runner`` adds, on top of the metrics mend, a cache of DoFn specs and
arguments per DoFn class, and drops empty output bundles before they are committed.
Dropping them changes no output and no watermark: an empty bundle holds nothing back,
timers are delivered on their own, and bundles feeding a side input are left alone.
"""

from __future__ import annotations

import types
from typing import Any

import apache_beam
from apache_beam.runners.direct import evaluation_context, executor, transform_evaluator
from apache_beam.runners.worker import statesampler
from apache_beam.transforms import core, userstate
from apache_beam.utils import counters

__all__ = [
    "DIRECT_RUNNERS",
    "MENDED_BEAM",
    "UnmendedBeamError",
    "check_beam_version",
    "mend_direct_runner",
    "mend_direct_runner_metrics",
]

MENDED_BEAM = (2, 77)
"""The Beam minor release whose direct-runner internals these mends were written against."""


class UnmendedBeamError(RuntimeError):
    """The installed Beam is not the release the direct-runner mends patch."""


def check_beam_version(version: str = apache_beam.__version__) -> None:
    """Refuse any Beam but ``MENDED_BEAM``: its internals may differ, and counters would silently lie."""
    try:
        found = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        found = ()
    if found != MENDED_BEAM:
        wanted = ".".join(map(str, MENDED_BEAM))
        raise UnmendedBeamError(
            f"apache-beam {version} is installed, but the direct-runner mends in {__name__} patch "
            f"Beam {wanted}.x internals; install apache-beam=={wanted}.* (pyproject pins it) or "
            "re-check each mend against the new release before widening the pin"
        )


DIRECT_RUNNERS = frozenset({"DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner"})

_ORIGINAL_TRANSFORM_CALL = executor.TransformExecutor.call


def _call_with_own_sampler(self: Any, thread_sampler: Any) -> None:
    # The sampler is only a tracker here (the direct runner never starts its sampling
    # thread): a fresh one costs a few microseconds, and goes with its bundle.
    sampler = statesampler.StateSampler("", counters.CounterFactory())
    statesampler.set_current_tracker(sampler)
    try:
        _ORIGINAL_TRANSFORM_CALL(self, sampler)
    finally:
        statesampler.set_current_tracker(thread_sampler)


def mend_direct_runner_metrics() -> None:
    """Make the direct runner count every bundle (idempotent; harmless on other runners)."""
    check_beam_version()
    setattr(executor.TransformExecutor, "call", _call_with_own_sampler)  # noqa: B010 (mypy: method-assign)


_ORIGINAL_GET_DOFN_SPECS = userstate.get_dofn_specs
_SPECS_BY_CLASS: dict[type, tuple[frozenset[Any], frozenset[Any]]] = {}


def _get_dofn_specs(dofn: Any) -> tuple[set[Any], set[Any]]:
    # The specs come from the class's method defaults, unless the instance carries
    # methods of its own (a wrapped callable): those are inspected every time.
    if any(isinstance(value, types.MethodType) for value in vars(dofn).values()):
        state_specs, timer_specs = _ORIGINAL_GET_DOFN_SPECS(dofn)
        return set(state_specs), set(timer_specs)
    cached = _SPECS_BY_CLASS.get(type(dofn))
    if cached is None:
        state_specs, timer_specs = _ORIGINAL_GET_DOFN_SPECS(dofn)
        cached = _SPECS_BY_CLASS[type(dofn)] = (frozenset(state_specs), frozenset(timer_specs))
    return set(cached[0]), set(cached[1])


_ORIGINAL_GET_FUNCTION_ARGUMENTS = core.get_function_arguments
_ARGUMENTS_BY_CLASS: dict[tuple[type, str], tuple[list[str], list[Any]]] = {}


def _get_function_arguments(obj: Any, func: str) -> tuple[list[str], list[Any]]:
    # A method defined by the class has the same signature on every instance; a wrapped
    # callable (``_inspect_<func>``, or a method set on the instance) is asked every time.
    if hasattr(obj, f"_inspect_{func}") or func in vars(obj):
        args, defaults = _ORIGINAL_GET_FUNCTION_ARGUMENTS(obj, func)
        return args, defaults
    key = (type(obj), func)
    cached = _ARGUMENTS_BY_CLASS.get(key)
    if cached is None:
        cached = _ARGUMENTS_BY_CLASS[key] = _ORIGINAL_GET_FUNCTION_ARGUMENTS(obj, func)
    return list(cached[0]), list(cached[1])


_ORIGINAL_HANDLE_RESULT = evaluation_context.EvaluationContext.handle_result


def _handle_result_without_empty_bundles(
    self: Any, completed_bundle: Any, completed_timers: Any, result: Any
) -> Any:
    bundles = result.uncommitted_output_bundles
    if bundles and not any(bundle.pcollection in self._pcollection_to_views for bundle in bundles):
        result.uncommitted_output_bundles = [bundle for bundle in bundles if bundle.has_elements()]
    return _ORIGINAL_HANDLE_RESULT(self, completed_bundle, completed_timers, result)


def mend_direct_runner() -> None:
    """The metrics mend, DoFn specs and arguments looked up once per class, and no empty bundles.

    Idempotent; it changes only the direct runner.
    """
    mend_direct_runner_metrics()
    setattr(evaluation_context.EvaluationContext, "handle_result", _handle_result_without_empty_bundles)  # noqa: B010
    setattr(core, "get_function_arguments", _get_function_arguments)  # noqa: B010
    setattr(userstate, "get_dofn_specs", _get_dofn_specs)  # noqa: B010 (mypy: assignment to a module function)
    setattr(transform_evaluator, "get_dofn_specs", _get_dofn_specs)  # noqa: B010
