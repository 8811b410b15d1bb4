"""Running a streaming pipeline on the direct runner: watch it, keep it moving, stop it whole.

The direct runner cannot drain, leaves a failed pipeline RUNNING and lets an idle
Pub/Sub pull block for 30 s. ``supervise`` makes up for all three: a thread waits on
the pipeline to see a failure, heartbeats keep the source pulling so panes fire on
time, and a stop waits until every part that was attributed is in the ledger
(counters), unchanged over a few trigger periods, before it cancels the pipeline.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from typing import Annotated, Any, ClassVar

import msgspec
from apache_beam.runners.runner import PipelineResult

from ledger.counters import Counter, save_counters
from pipelines.transforms.metrics import counters
from schemas.settings import PositiveInt, PositiveNumber, Settings

__all__ = [
    "Heartbeat",
    "SupervisorSettings",
    "supervise",
]

LOG = logging.getLogger(__name__)


class SupervisorSettings(Settings, frozen=True, kw_only=True):
    """How to watch one pipeline run."""

    setting_kind: ClassVar[str] = "supervisor"

    topic: str
    heartbeat_seconds: Annotated[float, msgspec.Meta(ge=0, description="must be 0 (off) or more")] = 1.0
    drain_timeout_seconds: PositiveNumber = 120.0
    early_firing_seconds: PositiveInt = 5
    counters_path: Path | None = None


def unwritten(totals: dict[str, int]) -> tuple[int, int]:
    """(plays not yet in the ledger, dead letters not yet written), from the counters.

    A unique play is first counted when de-duplicated, then by the pane that counts it
    (``plays``), then once per rights holder when its rows are written.
    """
    plays = totals.get(Counter.EVENTS_UNIQUE, 0) - totals.get(Counter.PLAYS, 0)
    parts = totals.get(Counter.ATTRIBUTED_PARTS, 0) - totals.get(Counter.LEDGER_PLAYS_WRITTEN, 0)
    dead = (
        totals.get(Counter.MESSAGES_UNDECODABLE, 0)
        + totals.get(Counter.EVENTS_INVALID, 0)
        + totals.get(Counter.EVENTS_CONFLICT, 0)
        - totals.get(Counter.DEAD_LETTERS_ROWS_WRITTEN, 0)
    )
    return plays + parts, dead


class Heartbeat(threading.Thread):
    """Publishes an empty heartbeat message every ``interval`` seconds until stopped."""

    def __init__(self, topic: str, interval: float) -> None:
        super().__init__(name="heartbeat", daemon=True)
        self.topic = topic
        self.interval = interval
        self.stopped = threading.Event()

    def run(self) -> None:
        import google.cloud.pubsub_v1 as pubsub_v1

        from schemas.codec import ATTR_KIND, KIND_HEARTBEAT

        publisher = pubsub_v1.PublisherClient()
        try:
            while not self.stopped.wait(self.interval):
                try:
                    publisher.publish(self.topic, b"", **{ATTR_KIND: KIND_HEARTBEAT}).result(timeout=10)
                except Exception as error:  # a missed heartbeat only delays panes
                    LOG.warning("heartbeat not published: %s", error)
        finally:
            publisher.stop()


class _Supervisor:
    def __init__(self, result: PipelineResult, settings: SupervisorSettings) -> None:
        self.result = result
        self.settings = settings
        self.stop = threading.Event()
        self.failure: list[BaseException] = []

    def watch(self) -> None:
        try:
            self.result.wait_until_finish()
        except BaseException as error:
            self.failure.append(error)
        self.stop.set()

    def on_signal(self, signum: int, _frame: Any) -> None:
        LOG.info("signal %s: writing out what was read, then stopping", signum)
        self.stop.set()

    def run(self) -> int:
        settings = self.settings
        heartbeat = (
            Heartbeat(settings.topic, settings.heartbeat_seconds) if settings.heartbeat_seconds else None
        )
        if heartbeat is not None:
            heartbeat.start()
        threading.Thread(target=self.watch, name="pipeline-watch", daemon=True).start()
        if settings.counters_path is not None:
            threading.Thread(
                target=_save_counters_until,
                args=(self.result, settings.counters_path, self.stop),
                name="counters",
                daemon=True,
            ).start()
        LOG.info("pipeline running")
        try:
            self.stop.wait()
            if self.failure:
                LOG.error("pipeline failed: %s", self.failure[0])
                return 1
            code = self.drain()
            if settings.counters_path is not None:
                save_counters(counters(self.result), settings.counters_path)
            # Cancel while heartbeats still flow: an idle pull would hold the cancel for 30 s.
            try:
                self.result.cancel()
            except Exception as error:
                LOG.warning("cancel: %s", error)
            return code
        finally:
            if heartbeat is not None:
                heartbeat.stopped.set()

    def drain(self) -> int:
        deadline = time.monotonic() + self.settings.drain_timeout_seconds
        settle = max(3.0, 2.5 * self.settings.early_firing_seconds)
        previous: dict[str, int] | None = None
        stable_since = time.monotonic()
        while time.monotonic() < deadline and not self.failure:
            # Heartbeats keep counting while idle; everything else settles once drained.
            totals = {
                name: value for name, value in counters(self.result).items() if name != Counter.HEARTBEATS
            }
            if totals != previous:
                previous, stable_since = totals, time.monotonic()
            elif unwritten(totals) == (0, 0) and time.monotonic() - stable_since >= settle:
                LOG.info("drained: %s", totals)
                return 0
            time.sleep(0.5)
        if self.failure:
            LOG.error("pipeline failed while draining: %s", self.failure[0])
            return 1
        parts, dead = unwritten(previous or {})
        LOG.error("stopped before everything read was written: %d ledger parts, %d dead letters", parts, dead)
        return 2


def supervise(result: PipelineResult, settings: SupervisorSettings) -> int:
    """Watch a running pipeline until it fails (1) or SIGINT/SIGTERM; then write out and cancel.

    Returns 0 when everything read was written, 2 when the drain timed out.
    """
    supervisor = _Supervisor(result, settings)
    previous = {
        signum: signal.signal(signum, supervisor.on_signal) for signum in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        return supervisor.run()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _save_counters_until(result: PipelineResult, path: Path, stop: threading.Event) -> None:
    while not stop.wait(1.0):
        try:
            save_counters(counters(result), path)
        except Exception as error:  # counters are a convenience; the pipeline goes on
            LOG.warning("counters not saved: %s", error)
