"""A seeded simulation against a real ``playledger up``: the ledger equals the ground truth.

``up`` runs as a child process on the session's emulator (in a Pub/Sub project of its
own) with its gateway and CDN on free ports. ``playledger simulate`` runs as another,
with real fetches from that CDN and real posts to that gateway, acknowledgements lost
on purpose so duplicates reach the pipeline. Once the ledger has caught up, its streams
and amounts per rights holder must equal those computed from the truth file alone with
the contract's allocation rule (``reference_royalties``, which shares no code with
``ledger/``), and the pipeline must have dropped exactly the duplicates that were sent.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from polling import poll

from ingest.processes import stop_process
from ingest.pubsub import free_port
from ledger.catalog import DEFAULT_CATALOG_DIR
from pipelines.local.reference_royalties import Balance, ReferenceCatalog, expected_balances

REPO = Path(__file__).resolve().parents[1]
DEADLINE_SECONDS = 90.0
SEED = 20261128


@dataclass
class Up:
    process: subprocess.Popen[bytes]
    data_dir: Path
    log: Path
    gateway_url: str
    cdn_url: str

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.fixture
def up(pubsub_emulator: str, tmp_path: Path) -> Iterator[Up]:
    """``playledger up`` on the session's emulator, gateway and CDN answering."""
    data_dir = tmp_path / "data"
    gateway_port, cdn_port = free_port(), free_port()
    env = {**os.environ, "PUBSUB_EMULATOR_HOST": pubsub_emulator}
    env.pop("PLAYLEDGER_API_KEYS", None)
    env["PLAYLEDGER_PROJECT"] = f"playledger-sim-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "up.log"
    command = [sys.executable, "-m", "pipelines.local.cli", "up", "--data-dir", str(data_dir)]
    command += [
        "--gateway-port",
        str(gateway_port),
        "--cdn-port",
        str(cdn_port),
        "--early-firing-seconds",
        "1",
    ]
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT
        )
    running = Up(process, data_dir, log, f"http://127.0.0.1:{gateway_port}", f"http://127.0.0.1:{cdn_port}")
    try:

        def ready() -> bool:
            assert process.poll() is None, f"up exited with {process.returncode}:\n{running.log_tail()}"
            return _answers(running.gateway_url) and _answers(running.cdn_url)

        poll(ready, bool, "gateway and CDN /healthz")
        yield running
    finally:
        stop_process(process, 60)


def ledger_balances(data_dir: Path) -> dict[str, Balance]:
    sql = (
        "SELECT rights_holder_id, sum(plays) plays, sum(streams) streams, sum(amount_micros) amount_micros "
        "FROM ledger GROUP BY ALL"
    )
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.local.cli",
            "ledger",
            "sql",
            "--data-dir",
            str(data_dir),
            "--format",
            "json",
            sql,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return {
        row["rights_holder_id"]: Balance(int(row["plays"]), int(row["streams"]), int(row["amount_micros"]))
        for row in json.loads(completed.stdout)
    }


def pipeline_counters(data_dir: Path) -> dict[str, int]:
    try:
        counters: dict[str, int] = json.loads((data_dir / "metrics" / "pipeline_counters.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return counters


@pytest.mark.emulator
def test_a_seeded_simulation_against_up_lands_in_the_ledger_exactly_as_its_ground_truth(
    up: Up, tmp_path: Path
) -> None:
    truth_path, summary_path = tmp_path / "truth.parquet", tmp_path / "summary.json"
    simulate = [sys.executable, "-m", "pipelines.local.cli", "simulate", "--data-dir", str(up.data_dir)]
    simulate += ["--gateway-url", up.gateway_url, "--cdn-url", up.cdn_url, "--seed", str(SEED)]
    simulate += ["--users", "80", "--duration", "4h", "--speed", "2400", "--start", "2026-11-27T16:00:00Z"]
    simulate += ["--truth", str(truth_path), "--summary-json", str(summary_path), "--drop-ack-share", "0.08"]
    completed = subprocess.run(simulate, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert completed.returncode == 0, f"{completed.stderr}\n{up.log_tail()}"
    assert "instant starts (prefetch)" in completed.stdout  # the summary

    summary: dict[str, Any] = json.loads(summary_path.read_text())
    truth = pq.read_table(truth_path)
    assert truth.schema.names == [
        "event_id", "user_id", "track_id", "played_at", "ms_played", "territory", "product", "offline"
    ]  # fmt: skip
    assert truth.schema.field("played_at").type == pa.timestamp("ms", tz="UTC")
    plays = truth.to_pylist()
    assert len(plays) == summary["plays"] == len({play["event_id"] for play in plays}) > 100
    assert summary["outbox_pending"] == 0 and summary["sender"]["rejected"] == 0
    assert summary["sender"]["acks_dropped"] > 0 and summary["sender"]["duplicates_sent"] > 0
    assert summary["plays_under_30s"] > 0 and summary["instant_starts"] > 0

    expected = expected_balances(ReferenceCatalog.read(DEFAULT_CATALOG_DIR), plays)
    poll(
        lambda: ledger_balances(up.data_dir), lambda balances: balances == expected, "ledger equals the truth"
    )
    # The counters file is saved every second: it may trail the ledger by a snapshot.
    poll(
        lambda: pipeline_counters(up.data_dir),
        lambda totals: (
            (totals.get("events_unique"), totals.get("events_duplicate"))
            == (len(plays), summary["sender"]["duplicates_sent"])
        ),
        "every play counted once and every duplicate sent dropped by the pipeline",
    )

    with urllib.request.urlopen(f"{up.cdn_url}/stats", timeout=5) as response:
        cdn = json.load(response)
    # The CDN counted exactly the fetches the players made, and as many hits as they saw.
    assert (cdn["totals"]["requests"], cdn["totals"]["hits"]) == (
        summary["cdn_requests"],
        summary["cdn_hits"],
    )

    up.process.send_signal(signal.SIGTERM)
    assert up.process.wait(timeout=DEADLINE_SECONDS) == 0, up.log_tail()
    assert ledger_balances(up.data_dir) == expected
    assert "Traceback" not in up.log.read_text(errors="replace"), up.log_tail()


def outbox_state(outbox: Path) -> tuple[int, int]:
    """(plays journaled, events not yet acknowledged), read while the simulator writes (WAL)."""
    if not outbox.exists():
        return 0, 0
    with contextlib.closing(sqlite3.connect(f"file:{outbox}?mode=ro", uri=True, timeout=5)) as db:
        try:
            plays: int = db.execute("SELECT count(*) FROM plays").fetchone()[0]
            pending: int = db.execute("SELECT count(*) FROM outbox").fetchone()[0]
        except sqlite3.OperationalError:  # the schema is not there yet
            return 0, 0
        return plays, pending


@pytest.mark.emulator
def test_a_simulation_killed_mid_run_and_run_again_loses_nothing_and_counts_nothing_twice(
    up: Up, tmp_path: Path
) -> None:
    outbox, truth_path, summary_path = (
        tmp_path / "outbox.sqlite3",
        tmp_path / "truth.parquet",
        tmp_path / "s.json",
    )
    simulate = [sys.executable, "-m", "pipelines.local.cli", "simulate", "--data-dir", str(up.data_dir)]
    simulate += ["--gateway-url", up.gateway_url, "--cdn-url", up.cdn_url, "--seed", str(SEED + 1)]
    simulate += ["--users", "150", "--duration", "3h", "--speed", "1500", "--start", "2026-11-27T17:00:00Z"]
    simulate += ["--outbox", str(outbox), "--truth", str(truth_path), "--summary-json", str(summary_path)]
    first = subprocess.Popen(simulate, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Killed once some plays were delivered and others were still waiting in the outbox.
        poll(
            lambda: outbox_state(outbox),
            lambda state: state[0] >= 30 and state[0] - state[1] >= 10,
            "plays made and partly delivered before the kill",
            60,
        )
    finally:
        first.kill()  # SIGKILL: no chance to flush or clean up
        first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL, "the first run finished before it could be killed"
    made_before_kill, _ = outbox_state(outbox)

    again = subprocess.run(simulate, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert again.returncode == 0, f"{again.stderr}\n{up.log_tail()}"
    summary: dict[str, Any] = json.loads(summary_path.read_text())
    plays = pq.read_table(truth_path).to_pylist()
    # The rerun made only the plays the killed run had not: none twice, none lost.
    assert summary["plays_already_recorded"] == made_before_kill
    assert len(plays) == made_before_kill + summary["plays"] == len({play["event_id"] for play in plays})
    assert summary["outbox_pending"] == 0

    expected = expected_balances(ReferenceCatalog.read(DEFAULT_CATALOG_DIR), plays)
    poll(
        lambda: ledger_balances(up.data_dir), lambda balances: balances == expected, "ledger equals the truth"
    )
    # The counters file is saved every second: wait for a snapshot taken after the last play.
    poll(
        lambda: pipeline_counters(up.data_dir),
        lambda totals: (
            totals.get("events_unique") == len(plays)
            and totals.get("events_decoded") == len(plays) + totals.get("events_duplicate", 0)
        ),
        "every play counted once, every other copy a duplicate",
    )
