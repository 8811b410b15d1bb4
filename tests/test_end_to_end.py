"""The whole demo path through the real CLI: ``playledger up``, HTTP, ``playledger ledger sql``.

``up`` runs as a child process against the session's emulator (in a Pub/Sub project of
its own, with the contract's topic and subscription names), with its gateway on a free
port. Seeded, generated plays (streams and short plays, several territories including
one priced by the ``*`` fallback, both products, unknown tracks, client retries and
malformed events) are posted over HTTP; the ledger is read back with the real CLI and
must match balances computed independently (``reference_royalties``) to the micro-unit,
before and after a SIGTERM shuts the stack down.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from polling import poll

from ingest.processes import stop_process
from ingest.pubsub import free_port
from ledger.catalog import DEFAULT_CATALOG_DIR
from pipelines.local.reference_royalties import UNMATCHED, Balance, ReferenceCatalog, expected_balances

REPO = Path(__file__).resolve().parents[1]
DEADLINE_SECONDS = 60.0
SEED = 20261128
UNIQUE_PLAYS = 270
BATCHES = 6
TERRITORIES = ("US", "GB", "SE", "BR", "JP", "NO")
FALLBACK_TERRITORY = "NO"  # no row of its own in rates.csv: priced at ('*', product)
UNKNOWN_TRACKS = ("T-UNKNOWN-1", "T-UNKNOWN-2")
BALANCES_SQL = (
    "SELECT rights_holder_id, sum(plays) plays, sum(streams) streams, sum(amount_micros) amount_micros "
    "FROM ledger GROUP BY ALL"
)


def playledger(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real CLI to completion."""
    return subprocess.run(
        [sys.executable, "-m", "pipelines.local.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def ledger_balances(data_dir: Path) -> dict[str, Balance]:
    completed = playledger("ledger", "sql", "--data-dir", str(data_dir), "--format", "json", BALANCES_SQL)
    assert completed.returncode == 0, completed.stderr
    return {
        row["rights_holder_id"]: Balance(int(row["plays"]), int(row["streams"]), int(row["amount_micros"]))
        for row in json.loads(completed.stdout)
    }


# ---- generated traffic ----------------------------------------------------------------------


@dataclass(frozen=True)
class Malformed:
    """An invalid event and the one field the gateway must name in its reason."""

    event: dict[str, Any]
    field: str


@dataclass
class Batch:
    """One request: its events in order, which of them are valid, and the malformed ones by index."""

    events: list[dict[str, Any]] = field(default_factory=list)
    valid: list[dict[str, Any]] = field(default_factory=list)
    malformed: dict[int, Malformed] = field(default_factory=dict)


@dataclass
class Traffic:
    """The requests to send, every distinct valid play, and how many copies were resent."""

    batches: list[Batch]
    unique: list[dict[str, Any]]
    resent: int


def generate_traffic(catalog: ReferenceCatalog, seed: int) -> Traffic:
    """Seeded plays in ``BATCHES`` requests, with retries of earlier plays and malformed events mixed in."""
    rng = random.Random(seed)
    tracks = sorted(catalog.splits)[:40]

    def event_id() -> str:
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))

    def play(index: int) -> dict[str, Any]:
        short = rng.random() < 0.2
        return {
            "event_id": event_id(),
            "user_id": f"user-{rng.randrange(40)}",
            # Every 50th play is of a track the catalog does not know.
            "track_id": UNKNOWN_TRACKS[index // 50 % 2] if index % 50 == 7 else rng.choice(tracks),
            "played_at": f"2026-11-{rng.randrange(1, 28):02d}T{rng.randrange(24):02d}:00:00+01:00",
            # 29,999 ms is a play, 30,000 a stream: both edges occur.
            "ms_played": rng.randrange(0, 30_000) if short else rng.randrange(30_000, 400_000),
            "territory": rng.choice(TERRITORIES),
            "product": rng.choice(("free", "premium")),
            "context": rng.choice(("album", "playlist", "daily_mix", "radio", "search", "other")),
            "bitrate_kbps": rng.choice((96, 160, 320)),
            "offline": rng.random() < 0.1,
            "device": rng.choice(("android-14", "ios-18", None)),
        }

    unique = [play(index) for index in range(UNIQUE_PLAYS)]
    unique[3]["ms_played"], unique[4]["ms_played"] = 29_999, 30_000
    per_batch = -(-UNIQUE_PLAYS // BATCHES)
    batches = [Batch() for _ in range(BATCHES)]
    resent = 0
    for number, batch in enumerate(batches):
        fresh = unique[number * per_batch : (number + 1) * per_batch]
        # Clients retry plays from earlier requests whose replies they lost (~5 % of the traffic).
        retries = rng.sample(unique[: number * per_batch], 3) if number else []
        resent += len(retries)
        kinds = [
            Malformed({k: v for k, v in play(0).items() if k != "user_id"}, "user_id"),
            Malformed({**play(0), "ms_played": "31000"}, "ms_played"),
            Malformed({**play(0), "shuffle": True}, "shuffle"),
            Malformed({**play(0), "territory": "XX"}, "territory"),
        ]
        malformed = [kinds[(2 * number) % 4], kinds[(2 * number + 1) % 4]]
        batch.valid = fresh + [dict(retry) for retry in retries]
        rng.shuffle(batch.valid)
        batch.events = list(batch.valid)
        for bad in malformed:
            batch.events.insert(rng.randrange(len(batch.events) + 1), bad.event)
        positions = {id(event): index for index, event in enumerate(batch.events)}
        batch.malformed = {positions[id(bad.event)]: bad for bad in malformed}
    return Traffic(batches, unique, resent)


# ---- the stack -------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux /proc): ``up`` starts its parts in sessions of their own."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL for ``process`` and the parts it started, if still running."""
    if process.poll() is not None:
        return
    parts = _children(process.pid)
    stop_process(process, 30)
    for pid in parts:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@dataclass
class Stack:
    process: subprocess.Popen[bytes]
    data_dir: Path
    log: Path
    url: str
    api_key: str = ""

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])


@pytest.fixture
def stack(pubsub_emulator: str, tmp_path: Path) -> Iterator[Stack]:
    """``playledger up`` on the session's emulator, ready to take events."""
    data_dir = tmp_path / "data"
    port = free_port()
    env = {**os.environ, "PUBSUB_EMULATOR_HOST": pubsub_emulator}
    env.pop("PLAYLEDGER_API_KEYS", None)
    # A project of its own: reruns against a long-lived emulator never share a subscription.
    env["PLAYLEDGER_PROJECT"] = f"playledger-e2e-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "up.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pipelines.local.cli",
                "up",
                "--data-dir",
                str(data_dir),
                "--gateway-port",
                str(port),
                "--cdn-port",  # never the default port: another stack may hold it
                str(free_port()),
                "--early-firing-seconds",
                "1",
            ],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    running = Stack(process, data_dir, log, f"http://127.0.0.1:{port}")
    try:

        def healthy() -> bool:
            assert process.poll() is None, f"up exited with {process.returncode}:\n{running.log_tail()}"
            try:
                with urllib.request.urlopen(f"{running.url}/healthz", timeout=1) as response:
                    return bool(response.status == 200)
            except OSError:
                return False

        poll(healthy, bool, "gateway /healthz")
        running.api_key = (data_dir / "local-api-key").read_text().strip()
        yield running
    finally:
        _stop(process)


def post(stack: Stack, events: list[dict[str, Any]]) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{stack.url}/v1/events",
        data=json.dumps({"events": events}).encode(),
        headers={"Authorization": f"Bearer {stack.api_key}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        reply: dict[str, Any] = json.load(response)
        return reply


def counters_file(data_dir: Path) -> dict[str, int]:
    try:
        totals: dict[str, int] = json.loads((data_dir / "metrics" / "pipeline_counters.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return totals


# ---- tests -----------------------------------------------------------------------------------


@pytest.mark.emulator
def test_up_ingests_plays_over_http_and_the_ledger_balances_to_the_micro_unit(stack: Stack) -> None:
    catalog = ReferenceCatalog.read(DEFAULT_CATALOG_DIR)
    assert all((FALLBACK_TERRITORY, product) not in catalog.rates_micros for product in ("free", "premium"))
    traffic = generate_traffic(catalog, SEED)
    accepted_in_order = [event for batch in traffic.batches for event in batch.valid]
    expected = expected_balances(catalog, accepted_in_order)
    # The generated mix covers every rule it is meant to exercise.
    unique = traffic.unique
    assert sum(event["ms_played"] < 30_000 for event in unique) in range(35, 75)
    priced = {(event["territory"], event["product"]) for event in unique if event["ms_played"] >= 30_000}
    assert priced == {(territory, product) for territory in TERRITORIES for product in ("free", "premium")}
    assert expected[UNMATCHED].plays == sum(event["track_id"] in UNKNOWN_TRACKS for event in unique) >= 4
    assert traffic.resent == 3 * (BATCHES - 1)
    total_sent = sum(len(batch.events) for batch in traffic.batches)
    assert 280 <= total_sent <= 320

    half = BATCHES // 2
    expected_first_half = expected_balances(catalog, [e for b in traffic.batches[:half] for e in b.valid])
    for number, batch in enumerate(traffic.batches):
        if number == half:
            # Later retries repeat plays already in the ledger: dedup must hold across panes.
            poll(
                lambda: ledger_balances(stack.data_dir),
                lambda balances: balances == expected_first_half,
                "ledger balances of the first half",
            )
        reply = post(stack, batch.events)
        assert reply["accepted"] == len(batch.valid), reply
        assert [entry["index"] for entry in reply["rejected"]] == sorted(batch.malformed), reply
        for entry in reply["rejected"]:
            bad = batch.malformed[entry["index"]]
            assert entry["event_id"] == bad.event["event_id"]
            # One reason, naming the one field that is wrong.
            assert len(entry["errors"]) == 1 and entry["errors"][0].startswith(f"{bad.field}: "), entry

    poll(lambda: ledger_balances(stack.data_dir), lambda balances: balances == expected, "ledger balances")
    decoded = len(accepted_in_order)
    totals = poll(
        lambda: counters_file(stack.data_dir),
        # Plays are counted by the pane that counts them, so they settle with the ledger.
        lambda totals: (
            totals.get("events_decoded") == decoded
            and totals.get("events_duplicate") == traffic.resent
            and totals.get("plays") == len(unique)
        ),
        "pipeline counters",
    )
    assert totals["events_unique"] == totals["plays"] == len(unique)

    stack.process.send_signal(signal.SIGTERM)
    try:
        status = stack.process.wait(timeout=DEADLINE_SECONDS)
    except subprocess.TimeoutExpired:
        pytest.fail(f"up did not stop within {DEADLINE_SECONDS:g} s of SIGTERM:\n{stack.log_tail()}")
    assert status == 0, stack.log_tail()
    assert ledger_balances(stack.data_dir) == expected
    final = counters_file(stack.data_dir)
    assert (final["events_decoded"], final["events_duplicate"]) == (decoded, traffic.resent)
    assert final.get("events_invalid", 0) == final.get("messages_undecodable", 0) == 0
    assert len(list((stack.data_dir / "ledger").glob("period=*/*.parquet"))) >= 2, "one file per pane"
    assert "Traceback" not in stack.log.read_text(errors="replace"), stack.log_tail()


def test_ledger_sql_on_an_empty_data_dir_returns_no_rows(tmp_path: Path) -> None:
    completed = playledger("ledger", "sql", "--data-dir", str(tmp_path), "--format", "json", BALANCES_SQL)
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout) == []


@pytest.mark.parametrize(
    "statement",
    [
        "DELETE FROM ledger",
        "COPY (SELECT 1 AS x) TO '{out}'",
        "EXPLAIN ANALYZE COPY (SELECT 1 AS x) TO '{out}'",  # ANALYZE runs what it explains
        "SELECT 1; CREATE TABLE t AS SELECT 1 AS x",
    ],
)
def test_ledger_sql_refuses_statements_that_write(tmp_path: Path, statement: str) -> None:
    out = tmp_path / "written.csv"
    completed = playledger("ledger", "sql", "--data-dir", str(tmp_path), statement.format(out=out))
    assert completed.returncode != 0
    assert "only queries that read are allowed" in completed.stderr
    assert completed.stdout == ""
    assert not out.exists()
