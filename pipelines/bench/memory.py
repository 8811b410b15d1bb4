"""De-duplication memory: bytes per remembered event id, and resident memory over a long run.

Plays are published to the emulator at a constant rate from a process of their own
(fresh ids received now, and a share of retries of ids sent a little earlier) while the
streaming pipeline's decode and de-duplication run on the direct runner with a short
horizon; this process's resident memory (the pipeline's alone) is sampled throughout.
Until the first ids expire nothing is forgotten, so the growth over that stretch
divided by the ids remembered is the cost of one remembered id. After the horizon (and
the minute the pruning waits for) as many ids are forgotten as are remembered, so
resident memory should stay flat: the slope over the rest of the run says whether it
does.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing
import random
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apache_beam as beam
import google.cloud.pubsub_v1 as pubsub_v1
import numpy as np
from apache_beam.io.gcp.pubsub import ReadFromPubSub
from apache_beam.options.pipeline_options import PipelineOptions
from rich.console import Console

from ingest.pubsub import emulator_from_env_or_started, ensure_topology
from pipelines.direct_runner import mend_direct_runner
from pipelines.supervisor import Heartbeat
from pipelines.transforms.decode import DecodeOutput, DecodePlayMessages
from pipelines.transforms.dedup import PRUNE_SECONDS, DedupByEventId, DedupOutput
from pipelines.transforms.metrics import counters
from pipelines.transforms.remembered_ids import BYTES_PER_ID
from schemas.codec import encode_batch
from schemas.topology import PubSubNames

__all__ = ["MemoryReport", "bench_dedup_memory"]

_BYTES_PER_KB = 1024  # /proc gives VmRSS in kB


def resident_bytes() -> int:
    """This process's resident set size (Linux ``/proc``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * _BYTES_PER_KB
    raise RuntimeError("no VmRSS in /proc/self/status")


@dataclass
class MemoryReport:
    """What the run measured; times are seconds since the pipeline started."""

    rate: float
    horizon_seconds: int
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (t, rss, unique so far)
    remembered: list[int] = field(default_factory=list)  # ids in the state at each sample
    published: int = 0
    retries: int = 0
    unique: int = 0
    duplicates: int = 0
    remembered_at_end: int = 0

    def bytes_per_id(self) -> float:
        """Resident growth per id remembered while nothing had expired yet (least squares).

        The first 30 s are left out: the runner's own start-up allocations land there.
        """
        filling = [
            (sample[1], held)
            for sample, held in zip(self.samples, self.remembered, strict=True)
            if 30 <= sample[0] <= self.horizon_seconds
        ]
        if len(filling) < 3:
            return float("nan")
        rss = np.array([rss for rss, _ in filling], dtype=np.float64)
        ids = np.array([held for _, held in filling], dtype=np.float64)
        slope, _ = np.polyfit(ids, rss, 1)
        return float(slope)

    def steady(self) -> list[tuple[float, int, int]]:
        """Samples once expiry keeps pace: past the horizon, the prune minute and a margin."""
        settled_after = self.horizon_seconds + PRUNE_SECONDS + 60
        return [s for s in self.samples if s[0] >= settled_after]

    def steady_slope_mib_per_minute(self) -> float:
        """Least-squares slope of resident memory over the steady samples."""
        steady = self.steady()
        if len(steady) < 3:
            return float("nan")
        times = np.array([s[0] for s in steady]) / 60
        rss = np.array([s[1] for s in steady]) / 2**20
        slope, _ = np.polyfit(times, rss, 1)
        return float(slope)


def _publish_at_rate(
    topic: str,
    rate: int,
    per_message: int,
    retry_share: float,
    stop: Any,
    published: Any,
    retries: Any,
) -> None:
    """Publish ``rate`` plays a second in messages of ``per_message``, a share of them retries.

    Runs in a process of its own, so the pipeline's resident memory is measured alone.
    Retries copy ids from the last ~10 s, well within any horizon the bench uses. Every
    publish is awaited before the process ends: one that failed ends it with an error.
    """
    publisher = pubsub_v1.PublisherClient()
    rng = random.Random(1)
    template = {
        "user_id": "user-1",
        "track_id": "T1",
        "ms_played": 120_000,
        "territory": "SE",
        "product": "premium",
        "context": "playlist",
        "bitrate_kbps": 160,
        "offline": False,
        "device": None,
    }
    recent: list[str] = []
    recent_size = rate * 10
    fresh = 0
    interval = per_message / rate
    next_at = time.monotonic()
    sent = []
    try:
        while not stop.is_set():
            now = dt.datetime.now(dt.UTC)
            plays = []
            for _ in range(per_message):
                retry = bool(recent) and rng.random() < retry_share
                if retry:
                    event_id = rng.choice(recent)
                    retries.value += 1
                else:
                    event_id = str(uuid.uuid4())
                    if len(recent) < recent_size:
                        recent.append(event_id)
                    else:
                        recent[fresh % recent_size] = event_id
                    fresh += 1
                plays.append({**template, "event_id": event_id, "played_at": now, "received_at": now})
            message = encode_batch(plays, uuid.uuid4().hex)
            sent.append(publisher.publish(topic, message.data, **message.attributes))
            published.value += len(plays)
            next_at += interval
            stop.wait(max(0.0, next_at - time.monotonic()))
        for future in sent:
            future.result(timeout=60)
    finally:
        publisher.stop()


def bench_dedup_memory(
    minutes: float, rate: int, horizon_seconds: int, console: Console, per_message: int = 500
) -> MemoryReport:
    """Run decode + de-duplication for ``minutes`` at ``rate`` plays a second; see the module docstring."""
    mend_direct_runner()
    report = MemoryReport(rate=rate, horizon_seconds=horizon_seconds)
    with emulator_from_env_or_started():
        names = PubSubNames.from_env().scratch("bench-memory")
        ensure_topology(names)
        pipeline = beam.Pipeline(
            options=PipelineOptions([], streaming=True, runner="BundleBasedDirectRunner")
        )
        decoded = (
            pipeline
            | "ReadPlays" >> ReadFromPubSub(subscription=names.royalties, with_attributes=True)
            | "DecodePlays" >> DecodePlayMessages(3600)
        )
        deduped = decoded[DecodeOutput.EVENTS.value] | "DedupByEventId" >> DedupByEventId(horizon_seconds, 4)
        _ = (
            (deduped[DedupOutput.UNIQUE.value], deduped[DedupOutput.DUPLICATES.value])
            | "Together" >> beam.Flatten()
            | "Rows" >> beam.Map(lambda batch: batch.num_rows)
        )
        heartbeat = Heartbeat(names.topic, 0.5)
        spawn = multiprocessing.get_context("spawn")
        stop, published, retries = spawn.Event(), spawn.Value("q", 0), spawn.Value("q", 0)
        publisher = spawn.Process(
            target=_publish_at_rate,
            args=(names.topic, rate, per_message, 0.05, stop, published, retries),
            name="constant-rate-publisher",
        )
        result: Any = pipeline.run()
        heartbeat.start()
        publisher.start()
        started = time.monotonic()
        try:
            with console.status(f"de-duplication memory: {minutes:g} min at {rate:,} plays/s…") as status:
                while (elapsed := time.monotonic() - started) < minutes * 60:
                    seen = counters(result)
                    report.samples.append((elapsed, resident_bytes(), seen.get("events_unique", 0)))
                    report.remembered.append(
                        seen.get("dedup_ids_remembered", 0) - seen.get("dedup_ids_forgotten", 0)
                    )
                    status.update(
                        f"de-duplication memory: {elapsed / 60:.1f} of {minutes:g} min, "
                        f"RSS {report.samples[-1][1] / 2**20:,.0f} MiB, "
                        f"{report.samples[-1][2]:,} unique plays"
                    )
                    time.sleep(5)
        finally:
            stop.set()
            heartbeat.stopped.set()
            publisher.join(timeout=90)
            if publisher.is_alive():  # still waiting on publishes: stopped, not left publishing
                publisher.terminate()
                publisher.join()
            report.published, report.retries = published.value, retries.value
            seen = counters(result)
            report.unique = seen.get("events_unique", 0)
            report.duplicates = seen.get("events_duplicate", 0)
            report.remembered_at_end = seen.get("dedup_ids_remembered", 0) - seen.get(
                "dedup_ids_forgotten", 0
            )
            result.cancel()
    if publisher.exitcode == -signal.SIGTERM:
        raise RuntimeError("the load generator did not finish within 90 s of the run's end, and was stopped")
    if publisher.exitcode != 0:
        raise RuntimeError(f"the load generator failed (exit code {publisher.exitcode}): see its error above")
    return report


def _min_max(values: list[int]) -> str:
    return f"{min(values):,} / {max(values):,}"


def describe(report: MemoryReport) -> list[tuple[str, str]]:
    """The report as (measure, value) rows for a table."""
    steady = report.steady()
    mib = 2**20
    rows = [
        (
            "plays published / unique / duplicate",
            f"{report.published:,} / {report.unique:,} / {report.duplicates:,}",
        ),
        ("retries published", f"{report.retries:,}"),
        ("horizon", f"{report.horizon_seconds} s (+ up to {PRUNE_SECONDS} s until pruned)"),
        ("ids remembered at the end", f"{report.remembered_at_end:,}"),
        ("state per remembered id", f"{BYTES_PER_ID} B"),
        ("resident growth per remembered id (filling)", f"{report.bytes_per_id():,.0f} B"),
    ]
    if steady:
        rss = [s[1] for s in steady]
        rows += [
            (
                "steady samples",
                f"{len(steady)} from {steady[0][0] / 60:.1f} min to {steady[-1][0] / 60:.1f} min",
            ),
            ("steady RSS min / max", f"{min(rss) / mib:,.0f} / {max(rss) / mib:,.0f} MiB"),
            ("ids held once steady, min / max", _min_max(report.remembered[-len(steady) :])),
            ("steady RSS slope", f"{report.steady_slope_mib_per_minute():+.2f} MiB/min"),
        ]
    return rows
