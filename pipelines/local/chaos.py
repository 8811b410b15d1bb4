"""``playledger chaos``: a seeded simulation while the gateway, pipeline and archiver are SIGKILLed.

    playledger chaos --data-dir DIR --seed N [--users 30] [--duration 30m] [--speed 60]

Starts one Pub/Sub emulator (``ingest.pubsub``) and, as separate processes of this
command, the gateway, the streaming pipeline, the archiver and the CDN stub; runs
``playledger simulate`` against them with lost acknowledgements (its outbox keeps
retrying); and meanwhile kills each of the gateway, the pipeline and the archiver with
SIGKILL at a seeded random moment and starts it again after a short pause (the restart
an operator of a local stack expects: the part comes back, and says so in the log).
Then it stops everything in the order that loses nothing, closes every archive hour,
recomputes every period (``playledger pipeline batch``) and reconciles them.

It passes (exit 0) only when the final ledger equals the simulator's ground truth per
rights holder to the micro-unit and ``reconcile`` says ``balanced`` for every period.
It prints the numbers: events, kills, lost, doubled, provisional shortfall.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import random
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pyarrow.parquet as pq

from ingest.archiver.buckets import HourBuckets
from ingest.processes import stop_process
from ingest.pubsub import Emulator, ensure_topology, free_port
from ledger.allocation import attribute_play
from ledger.catalog import DEFAULT_CATALOG_DIR, Catalog
from ledger.reconcile.command import overall_status, write_report
from ledger.reconcile.ties import reconcile_periods
from ledger.tables import ARCHIVE_DIR
from ledger.views import open_ledger, run_sql
from schemas.topology import PubSubNames

__all__ = ["ChaosResult", "main", "run_chaos"]

LOG = logging.getLogger(__name__)

KILLED_PARTS = ("gateway", "pipeline", "archiver")


@dataclass
class ChaosResult:
    """What a chaos run did and found."""

    events: int = 0
    kills: dict[str, int] = field(default_factory=dict)
    lost_plays: int = 0
    doubled_plays: int = 0
    differing_holders: list[str] = field(default_factory=list)
    provisional_shortfall_plays: int = 0
    reconcile_status: str = ""
    passed: bool = False


class _Part:
    """One child process of the run, restartable."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.log: IO[bytes] = (log_dir / f"{name}.log").open("ab")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pipelines.local.cli", *self.args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self, timeout: float = 120.0) -> None:
        if self.process is not None:
            stop_process(self.process, timeout)
        self.log.close()


def _wait_healthy(url: str, deadline_seconds: float = 60.0) -> None:
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer /healthz within {deadline_seconds:g} s")


def _unarchived_receipts(data_dir: Path) -> int:
    """Receipts whose event is in no archived row yet."""
    rows = run_sql(
        open_ledger(data_dir),
        "SELECT count(*) FROM receipts r ANTI JOIN archive a ON lower(a.event_id) = lower(r.event_id)",
    ).rows
    return int(rows[0][0])


def _wait_archived(data_dir: Path, deadline_seconds: float) -> None:
    deadline = time.monotonic() + deadline_seconds
    while (waiting := _unarchived_receipts(data_dir)) and time.monotonic() < deadline:
        LOG.info("chaos: %d receipts not archived yet (redelivery after the ack deadline)", waiting)
        time.sleep(2.0)


def _truth_balances(truth: Path, catalog: Catalog, min_stream_ms: int) -> dict[str, tuple[int, int]]:
    """(plays, amount_micros) per rights holder of the plays the simulator really made."""
    balances: dict[str, tuple[int, int]] = {}
    for play in pq.read_table(truth).to_pylist():
        for part in attribute_play(
            catalog, play["track_id"], play["territory"], play["product"], play["ms_played"] >= min_stream_ms
        ):
            plays, micros = balances.get(part.rights_holder_id, (0, 0))
            balances[part.rights_holder_id] = (plays + 1, micros + part.amount_micros)
    return balances


def run_chaos(
    data_dir: Path,
    seed: int,
    *,
    users: int = 30,
    duration: str = "30m",
    speed: float = 60.0,
    drop_ack_share: float = 0.05,
    archive_deadline_seconds: float = 180.0,
) -> ChaosResult:
    """One chaos run in ``data_dir`` (see the module docstring)."""
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_dir = data_dir / "logs"
    log_dir.mkdir(exist_ok=True)
    rng = random.Random(seed)
    result = ChaosResult(kills=dict.fromkeys(KILLED_PARTS, 0))
    key = f"chaos-{secrets.token_urlsafe(12)}"
    with Emulator() as emulator:
        env = {
            **os.environ,
            "PUBSUB_EMULATOR_HOST": emulator.host,
            "PLAYLEDGER_PROJECT": f"playledger-chaos-{uuid.uuid4().hex[:8]}",
            "PLAYLEDGER_API_KEYS": key,
        }
        env.pop("PLAYLEDGER_API_KEYS_FILE", None)
        previous = os.environ.get("PLAYLEDGER_PROJECT")
        os.environ["PUBSUB_EMULATOR_HOST"] = emulator.host
        os.environ["PLAYLEDGER_PROJECT"] = env["PLAYLEDGER_PROJECT"]
        names = PubSubNames.from_env()
        ensure_topology(names)
        gateway_port, cdn_port = free_port(), free_port()
        data = str(data_dir)
        parts = {
            "pipeline": _Part(
                "pipeline",
                ["pipeline", "stream", "--data-dir", data, "--early-firing-seconds", "1"],
                env,
                log_dir,
            ),
            "archiver": _Part(
                "archiver",
                ["archive", "--data-dir", data, "--subscription", names.archive, "--flush-seconds", "1"],
                env,
                log_dir,
            ),
            "cdn": _Part("cdn", ["cdn", "--port", str(cdn_port)], env, log_dir),
            "gateway": _Part(
                "gateway", ["gateway", "--port", str(gateway_port), "--data-dir", data], env, log_dir
            ),
        }
        try:
            for part in parts.values():
                part.start()
            gateway_url, cdn_url = f"http://127.0.0.1:{gateway_port}", f"http://127.0.0.1:{cdn_port}"
            _wait_healthy(gateway_url)
            _wait_healthy(cdn_url)
            truth = data_dir / "truth.parquet"
            simulator = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "pipelines.local.cli",
                    "simulate",
                    "--gateway-url",
                    gateway_url,
                    "--cdn-url",
                    cdn_url,
                    "--api-key",
                    key,
                    "--users",
                    str(users),
                    "--duration",
                    duration,
                    "--speed",
                    str(speed),
                    "--seed",
                    str(seed),
                    "--truth",
                    str(truth),
                    "--outbox",
                    str(data_dir / "outbox.sqlite3"),
                    "--drop-ack-share",
                    str(drop_ack_share),
                    "--no-progress",
                    "--summary-json",
                    str(data_dir / "simulate-summary.json"),
                ],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=(log_dir / "simulate.log").open("ab"),
                stderr=subprocess.STDOUT,
            )
            # Each part is killed once at a seeded moment, while the simulator sends.
            moments = sorted((rng.uniform(3.0, 25.0), name) for name in KILLED_PARTS)
            started = time.monotonic()
            for moment, name in moments:
                while time.monotonic() - started < moment and simulator.poll() is None:
                    time.sleep(0.1)
                LOG.warning("chaos: SIGKILL the %s at %.1f s; restarting it in 2 s", name, moment)
                parts[name].kill()
                result.kills[name] += 1
                time.sleep(2.0)
                parts[name].start()
                LOG.warning("chaos: the %s was restarted", name)
            if simulator.wait(timeout=600) != 0:
                raise RuntimeError(f"the simulator failed; see {log_dir / 'simulate.log'}")
            # A killed archiver's unacknowledged messages come back only after their ack
            # deadline: wait until the archive holds every receipt's event, then a little more
            # for the pipeline's last panes.
            _wait_archived(data_dir, archive_deadline_seconds)
            time.sleep(5.0)
        finally:
            for name in ("gateway", "cdn", "archiver", "pipeline"):
                parts[name].stop()
            if previous is None:
                os.environ.pop("PLAYLEDGER_PROJECT", None)
            else:
                os.environ["PLAYLEDGER_PROJECT"] = previous
            os.environ.pop("PUBSUB_EMULATOR_HOST", None)
    return _settle(data_dir, truth, result)


def _settle(data_dir: Path, truth: Path, result: ChaosResult) -> ChaosResult:
    """Close every hour, recompute every period, reconcile, and compare with the ground truth."""
    from pipelines.batch import run as batch_run

    now = dt.datetime.now(dt.UTC)
    buckets = HourBuckets(data_dir / ARCHIVE_DIR, data_dir / ".tmp" / "chaos", 0)
    for hour in sorted(buckets.open_hours):
        buckets.close(hour, now)
    connection = open_ledger(data_dir)
    periods = [
        row[0]
        for row in run_sql(
            connection, "SELECT DISTINCT date_trunc('hour', received_at) FROM archive ORDER BY 1"
        ).rows
    ]
    for period in periods:
        batch_run(["--data-dir", str(data_dir), "--period", period.astimezone(dt.UTC).isoformat()])
    catalog = Catalog.load(DEFAULT_CATALOG_DIR)
    expected = _truth_balances(truth, catalog, 30_000)
    result.events = pq.read_metadata(truth).num_rows
    found = {
        row[0]: (int(row[1]), int(row[2]))
        for row in run_sql(
            open_ledger(data_dir),
            "SELECT rights_holder_id, sum(plays), sum(amount_micros) FROM ledger_final GROUP BY 1",
        ).rows
    }
    for holder in sorted(set(expected) | set(found)):
        want, got = expected.get(holder, (0, 0)), found.get(holder, (0, 0))
        if want != got:
            result.differing_holders.append(holder)
        result.lost_plays += max(0, want[0] - got[0])
        result.doubled_plays += max(0, got[0] - want[0])
    reconciled = reconcile_periods(data_dir, periods=[p.astimezone(dt.UTC) for p in periods])
    write_report(reconciled, data_dir / "reports" / "reconcile" / "chaos")
    result.reconcile_status = overall_status(reconciled)
    result.provisional_shortfall_plays = sum(r.numbers["provisional_shortfall_plays"] for r in reconciled)
    result.passed = not result.differing_holders and result.reconcile_status == "balanced"
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """``playledger chaos``: 0 when the final ledger equals the truth and every period balances."""
    parser = argparse.ArgumentParser(prog="playledger chaos", description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--users", type=int, default=30)
    parser.add_argument("--duration", default="30m", help="simulated span (default 30m)")
    parser.add_argument("--speed", type=float, default=60.0)
    args = parser.parse_args(argv)
    result = run_chaos(args.data_dir, args.seed, users=args.users, duration=args.duration, speed=args.speed)
    print(json.dumps(result.__dict__, indent=1))
    return 0 if result.passed else 1


if __name__ == "__main__":
    threading.current_thread().name = "chaos"
    sys.exit(main())
