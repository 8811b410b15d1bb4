"""``playledger bench gateway``: the gateway's throughput and latency, next to its ceiling.

Two measurements in one run, against the same Pub/Sub (the emulator named by
``PUBSUB_EMULATOR_HOST``, else one started for the run) and the same events:

1. **The ceiling**: what the gateway's work costs without HTTP. ``--connections``
   concurrent workers in this process read a request body of ``--batch-events`` events
   (the very bytes the load generator posts) with the gateway's own ``read_batch``,
   which decodes and validates it, then encode it and publish it, awaiting Pub/Sub's
   confirmation, in a loop.
2. **The gateway**: ``playledger gateway`` runs as its own process (journal, auth, rate
   limiter, metrics and all) and this process loads it over loopback with
   ``--connections`` keep-alive connections, each posting a batch and waiting for the
   200 before posting the next.

Both processes tune the garbage collector the same way once started
(``tune_garbage_collector``), so the ceiling is the same work under the same process
settings, minus HTTP, authentication, rate limiting, the receipt journal and the
metrics. JSON decoding is in both: the gateway validates a body as it decodes it.

The phases alternate for ``--rounds`` rounds (the gateway keeps running), so a
neighbour's load or the emulator's JIT warming up weighs on both alike; each phase
warms up before it is measured, for ``--seconds`` in all. It prints events/s, p50/p99
latency per batch, and the gateway's ratio to the ceiling. The target on the 2-core
reference machine is at least 80 % of the ceiling with p99 under 100 ms.

The topic has no subscriptions: the bench measures publishing, not the emulator's
storage of messages nobody reads. The load generator writes prebuilt HTTP/1.1 requests
on raw asyncio streams instead of using an HTTP client library: on two cores the load
generator's own CPU comes out of the gateway's, so it must cost as little as possible
(the way ``wrk`` does it).

    playledger bench gateway [--connections 32] [--batch-events 100] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import google.cloud.pubsub_v1 as pubsub_v1
import orjson
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

from ingest.gateway.app import EVENTS_PATH, read_batch, tune_garbage_collector
from ingest.gateway.publisher import EventPublisher
from ingest.gateway.settings import DEFAULT_MAX_EVENTS
from ingest.processes import stop_process
from ingest.pubsub import emulator_from_env_or_started, free_port
from schemas.codec import encode_batch
from schemas.topology import PubSubNames

__all__ = ["PhaseResult", "main"]

_API_KEY = f"bench-{uuid.uuid4().hex}"
_TERRITORIES = ("SE", "US", "GB", "BR", "JP", "DE")
_TARGET_RATIO = 0.80
_TARGET_P99_MS = 100.0


@dataclass
class _Sample:
    """What one measured stretch of one phase saw."""

    latencies: list[float]
    events: int
    batches: int
    failures: int
    seconds: float


@dataclass(frozen=True)
class PhaseResult:
    """What one phase measured, over all its rounds."""

    name: str
    events: int
    batches: int
    seconds: float
    p50_ms: float
    p99_ms: float
    failures: int

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    @classmethod
    def of(cls, name: str, samples: Sequence[_Sample]) -> PhaseResult:
        """Pool the rounds: total events over total time, percentiles over every batch."""
        latencies = [latency for sample in samples for latency in sample.latencies]
        return cls(
            name,
            sum(sample.events for sample in samples),
            sum(sample.batches for sample in samples),
            sum(sample.seconds for sample in samples),
            _percentile(latencies, 0.5),
            _percentile(latencies, 0.99),
            sum(sample.failures for sample in samples),
        )


def _percentile(latencies: list[float], fraction: float) -> float:
    """The ``fraction`` percentile of ``latencies`` (seconds), in milliseconds."""
    if not latencies:
        return float("nan")
    if len(latencies) == 1:
        return latencies[0] * 1000
    return statistics.quantiles(latencies, n=1000, method="inclusive")[int(fraction * 1000) - 1] * 1000


def _batches(count: int, batch_events: int) -> list[list[dict[str, Any]]]:
    """``count`` distinct batches of valid plays, as a client builds them before encoding."""
    played_at = datetime.now(UTC).replace(microsecond=0).isoformat()
    batches = []
    for batch in range(count):
        batches.append(
            [
                {
                    "event_id": str(uuid.uuid4()),
                    "user_id": f"user-{(batch * batch_events + index) % 50_000}",
                    "track_id": f"T{index % 997:05d}",
                    "played_at": played_at,
                    "ms_played": 30_000 + index * 1_000,
                    "territory": _TERRITORIES[index % len(_TERRITORIES)],
                    "product": "premium" if index % 3 else "free",
                    "context": "playlist",
                    "bitrate_kbps": 160,
                    "offline": False,
                    "device": "bench",
                }
                for index in range(batch_events)
            ]
        )
    return batches


async def _run_workers(
    connections: int,
    warmup_seconds: float,
    seconds: float,
    one_batch: Callable[[int, int], Coroutine[Any, Any, tuple[int, bool]]],
) -> _Sample:
    """Run ``connections`` workers in a closed loop, measuring only after the warm-up."""
    sample = _Sample([], 0, 0, 0, seconds)
    loop = asyncio.get_running_loop()
    measure_from = loop.time() + warmup_seconds
    measure_until = measure_from + seconds

    async def worker(number: int) -> None:
        sequence = number
        while loop.time() < measure_until:
            started = time.perf_counter()
            events, ok = await one_batch(number, sequence)
            finished = time.perf_counter()
            sequence += connections
            if loop.time() < measure_from:
                continue
            if ok:
                sample.latencies.append(finished - started)
                sample.events += events
                sample.batches += 1
            else:
                sample.failures += 1

    await asyncio.gather(*(worker(number) for number in range(connections)))
    return sample


async def _ceiling(
    names: PubSubNames, bodies: list[bytes], connections: int, warmup: float, seconds: float
) -> _Sample:
    """Validate + encode + publish, no HTTP, ``connections`` at a time."""
    publisher = EventPublisher(names.topic, timeout_seconds=30)
    try:

        async def one_batch(worker: int, sequence: int) -> tuple[int, bool]:
            body = bodies[sequence % len(bodies)]
            accepted, rejected = read_batch(body, datetime.now(UTC), DEFAULT_MAX_EVENTS)
            assert not rejected
            accepted_count, encoded = len(accepted), encode_batch(accepted, uuid.uuid4().hex)
            del accepted  # before the wait for Pub/Sub, as the gateway does
            await publisher.publish(encoded)
            return accepted_count, True

        return await _run_workers(connections, warmup, seconds, one_batch)
    finally:
        await asyncio.to_thread(publisher.close)


def _body(batch: list[dict[str, Any]]) -> bytes:
    return orjson.dumps({"events": batch})


def _request(port: int, body: bytes) -> bytes:
    head = (
        f"POST {EVENTS_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {_API_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _load(
    port: int, bodies: list[bytes], batch_events: int, connections: int, warmup: float, seconds: float
) -> _Sample:
    """Post prebuilt requests on ``connections`` keep-alive connections, one in flight on each."""
    requests = [_request(port, body) for body in bodies]
    accepted_marker = f'"accepted":{batch_events},'.encode()
    streams = [await asyncio.open_connection("127.0.0.1", port) for _ in range(connections)]

    async def one_batch(worker: int, sequence: int) -> tuple[int, bool]:
        reader, writer = streams[worker]
        index = sequence % len(requests)
        writer.write(requests[index])
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        body = await reader.readexactly(length)
        ok = head[9:12] == b"200" and accepted_marker in body
        return batch_events, ok

    try:
        return await _run_workers(connections, warmup, seconds, one_batch)
    finally:
        for _, writer in streams:
            writer.close()


def _run(coroutine: Coroutine[Any, Any, _Sample]) -> _Sample:
    """Run on uvloop when installed, as the gateway does, so both phases share a loop kind."""
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(coroutine)


@contextlib.contextmanager
def _gateway_process(names: PubSubNames, data_dir: Path, connections: int, log: Path) -> Any:
    """``playledger gateway`` as its own process, ready; stopped with SIGTERM afterwards."""
    port = free_port()
    env = {**os.environ, "PLAYLEDGER_API_KEYS": _API_KEY, "PLAYLEDGER_PROJECT": names.project}
    env.pop("PLAYLEDGER_API_KEYS_FILE", None)
    command = [
        sys.executable,
        "-m",
        "pipelines.local.cli",
        "gateway",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
    ]
    # The bench measures the gateway's ceiling, not a rate limit or the in-flight bound.
    command += ["--rate-limit", "1000000/second", "--max-in-flight-publishes", str(max(100, 2 * connections))]
    with log.open("wb") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        for attempt in Retrying(
            stop=stop_after_delay(60),
            wait=wait_fixed(0.2),
            retry=retry_if_exception_type(OSError),
            reraise=True,
        ):
            with attempt:
                if process.poll() is not None:
                    raise RuntimeError(
                        f"the gateway exited with {process.returncode}: {log.read_text()[-2000:]}"
                    )
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
                    response.read()
        yield port, process
    finally:
        stop_process(process, 60)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="playledger bench gateway",
        description="Measure the gateway over loopback against its no-HTTP ceiling (runbooks/gateway.md).",
    )
    parser.add_argument("--connections", type=int, default=32, help="concurrent connections/workers (32)")
    parser.add_argument("--batch-events", type=int, default=100, help="events per request (100)")
    parser.add_argument("--seconds", type=float, default=12.0, help="measured seconds per phase (12)")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the two phases (3)")
    parser.add_argument("--warmup-seconds", type=float, default=3.0, help="unmeasured seconds first (3)")
    parser.add_argument(
        "--distinct-batches", type=int, default=1000, help="distinct batches to cycle through"
    )
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    return parser


def _line(result: PhaseResult, what: str) -> str:
    return (
        f"{what:<46} {result.events_per_second:>10,.0f} events/s   p50 {result.p50_ms:6.1f} ms   "
        f"p99 {result.p99_ms:6.1f} ms   ({result.batches:,} batches, {result.failures} failed)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its figures; 0 if every batch succeeded, else 1."""
    args = _parser().parse_args(argv)
    for name in ("connections", "batch_events", "distinct_batches", "rounds"):
        if getattr(args, name) < 1:
            _parser().error(f"--{name.replace('_', '-')} must be at least 1")
    if args.batch_events > DEFAULT_MAX_EVENTS:
        _parser().error(f"--batch-events: the gateway takes at most {DEFAULT_MAX_EVENTS} events a request")
    if args.seconds <= 0 or args.warmup_seconds < 0:
        _parser().error("--seconds must be positive and --warmup-seconds not negative")
    bodies = [_body(batch) for batch in _batches(args.distinct_batches, args.batch_events)]
    # The gateway tunes its collector once started: the ceiling's process gets the same.
    tune_garbage_collector()
    with (
        emulator_from_env_or_started() as emulator_host,
        tempfile.TemporaryDirectory(prefix="bench-") as temp,
    ):
        names = PubSubNames(project=f"playledger-bench-{uuid.uuid4().hex[:8]}")
        publisher_admin = pubsub_v1.PublisherClient()
        try:
            publisher_admin.create_topic(request={"name": names.topic})
        finally:
            publisher_admin.transport.close()
        ceiling_samples: list[_Sample] = []
        gateway_samples: list[_Sample] = []
        slice_seconds = args.seconds / args.rounds
        with _gateway_process(names, Path(temp) / "data", args.connections, Path(temp) / "gateway.log") as (
            port,
            _,
        ):
            # Alternate the phases, so a neighbour's load or the emulator warming up
            # weighs on both alike instead of on whichever ran at the time.
            for round_number in range(args.rounds):
                warmup = args.warmup_seconds if round_number == 0 else min(1.0, args.warmup_seconds)
                ceiling_samples.append(_run(_ceiling(names, bodies, args.connections, warmup, slice_seconds)))
                gateway_samples.append(
                    _run(_load(port, bodies, args.batch_events, args.connections, warmup, slice_seconds))
                )
        ceiling = PhaseResult.of("ceiling", ceiling_samples)
        gateway = PhaseResult.of("gateway", gateway_samples)
    ratio = gateway.events_per_second / ceiling.events_per_second if ceiling.events_per_second else 0.0
    met = ratio >= _TARGET_RATIO and gateway.p99_ms < _TARGET_P99_MS
    if args.json:
        print(
            json.dumps(
                {
                    "ceiling": {**asdict(ceiling), "events_per_second": ceiling.events_per_second},
                    "gateway": {**asdict(gateway), "events_per_second": gateway.events_per_second},
                    "ratio": ratio,
                    "target_met": met,
                }
            )
        )
    else:
        print(
            f"gateway bench: {args.connections} connections, {args.batch_events}-event batches, "
            f"{args.seconds:g} s per phase in {args.rounds} alternating rounds, "
            f"{args.warmup_seconds:g} s warm-up, Pub/Sub at {emulator_host}, {os.cpu_count()} CPUs"
        )
        print(_line(ceiling, "ceiling (decode + validate + encode + publish, no HTTP)"))
        print(_line(gateway, "gateway (separate process, HTTP over loopback)"))
        print(
            f"ratio to ceiling {ratio:.1%} (target >= {_TARGET_RATIO:.0%}), p99 {gateway.p99_ms:.1f} ms "
            f"(target < {_TARGET_P99_MS:g} ms): {'target met' if met else 'target NOT met'}"
        )
    return 0 if ceiling.failures == 0 and gateway.failures == 0 else 1
