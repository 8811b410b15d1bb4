"""The supervisor: a failed step fails loudly, a stop drains what was read, what is still unwritten."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_stream import TestStream

from ledger.counters import Counter, load_counters
from pipelines.supervisor import SupervisorSettings, _Supervisor, supervise, unwritten


def _explode(value: int) -> int:
    if value == 3:
        raise RuntimeError("a step that fails on element 3")
    return value


def test_a_failed_step_returns_non_zero() -> None:
    stream = TestStream().add_elements([1, 2, 3, 4]).advance_watermark_to_infinity()
    pipeline = beam.Pipeline(options=PipelineOptions(streaming=True, runner="BundleBasedDirectRunner"))
    _ = pipeline | stream | beam.Map(_explode)
    result = pipeline.run()
    settings = SupervisorSettings(topic="unused", heartbeat_seconds=0, drain_timeout_seconds=10)
    assert supervise(result, settings) == 1


class _Counter:
    """One committed counter as Beam's metrics query gives it."""

    def __init__(self, name: str, value: int) -> None:
        self.key = SimpleNamespace(metric=SimpleNamespace(name=name))
        self.committed = value
        self.attempted = value


class FakeResult:
    """A stand-in for a running pipeline's ``PipelineResult``: counters set by the test, never finishing.

    A fake because what is under test is the supervisor's arithmetic and its stop
    decision, which a real runner makes slow and timing-dependent to reach.
    """

    def __init__(self, totals: dict[str, int]) -> None:
        self.totals = dict(totals)
        self.cancelled = threading.Event()

    def metrics(self) -> Any:
        totals = self.totals
        return SimpleNamespace(
            query=lambda _filter: {"counters": [_Counter(name, value) for name, value in totals.items()]}
        )

    def wait_until_finish(self, duration: int | None = None) -> str:
        self.cancelled.wait()
        return "CANCELLED"

    def cancel(self) -> None:
        self.cancelled.set()


EVERYTHING_WRITTEN: dict[str, int] = {
    Counter.EVENTS_UNIQUE: 10,
    Counter.PLAYS: 10,
    Counter.ATTRIBUTED_PARTS: 25,
    Counter.LEDGER_PLAYS_WRITTEN: 25,
    Counter.MESSAGES_UNDECODABLE: 1,
    Counter.EVENTS_INVALID: 2,
    Counter.EVENTS_CONFLICT: 1,
    Counter.DEAD_LETTERS_ROWS_WRITTEN: 4,
}


def test_unwritten_counts_plays_parts_and_dead_letters_not_yet_written() -> None:
    assert unwritten({}) == (0, 0)
    assert unwritten(EVERYTHING_WRITTEN) == (0, 0)
    # Three plays de-duplicated but not yet counted by a pane, and a pane's five parts
    # attributed but not yet in a file; one conflict not yet dead-lettered.
    behind: dict[str, int] = {
        **EVERYTHING_WRITTEN,
        Counter.EVENTS_UNIQUE: 13,
        Counter.LEDGER_PLAYS_WRITTEN: 20,
        Counter.EVENTS_CONFLICT: 2,
    }
    assert unwritten(behind) == (3 + 5, 1)


def test_drain_stops_once_everything_read_is_written_and_settled() -> None:
    result: Any = FakeResult({**EVERYTHING_WRITTEN, Counter.HEARTBEATS: 7})
    supervisor = _Supervisor(
        result, SupervisorSettings(topic="unused", heartbeat_seconds=0, early_firing_seconds=1)
    )
    assert supervisor.drain() == 0


def test_drain_times_out_when_parts_stay_unwritten() -> None:
    result: Any = FakeResult({**EVERYTHING_WRITTEN, Counter.LEDGER_PLAYS_WRITTEN: 24})
    settings = SupervisorSettings(topic="unused", heartbeat_seconds=0, drain_timeout_seconds=1.5)
    assert _Supervisor(result, settings).drain() == 2


def test_a_signal_drains_saves_counters_and_cancels(tmp_path: Path) -> None:
    result: Any = FakeResult(EVERYTHING_WRITTEN)
    saved = tmp_path / "metrics" / "pipeline_counters.json"
    settings = SupervisorSettings(
        topic="unused", heartbeat_seconds=0, early_firing_seconds=1, counters_path=saved
    )
    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()
    assert supervise(result, settings) == 0
    assert result.cancelled.is_set()
    assert load_counters(saved) == {str(name): value for name, value in EVERYTHING_WRITTEN.items()}
