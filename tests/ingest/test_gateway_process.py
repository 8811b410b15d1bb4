"""``playledger gateway`` as an operator runs it: a process of its own, signals, crashes.

Start-up refuses bad config before the port opens; SIGHUP revokes a key; ``kill -9``
during load loses no receipt of an event the client saw a 200 for; SIGTERM during load
finishes what is in flight and seals the journal. Logs are JSON lines with request ids.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import google.cloud.pubsub_v1 as pubsub_v1
import pytest
from gateway_client import API_KEY, OTHER_KEY, play, poll, post_events, pull_event_ids, receipts

from ingest.gateway.keys import key_id
from ingest.pubsub import ensure_topology, free_port
from ledger.receipts import open_receipt_files, sealed_receipt_files
from schemas.topology import PubSubNames

pytestmark = pytest.mark.emulator

REPO = Path(__file__).resolve().parents[2]


@dataclass
class GatewayProcess:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def log_lines(self) -> list[dict[str, Any]]:
        """Every log line so far; each must be a JSON object."""
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        return self.process.wait(timeout=timeout)


def gateway_command(port: int, data_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pipelines.local.cli",
        "gateway",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        *extra,
    ]


def gateway_env(names: PubSubNames | None, **variables: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLAYLEDGER_API_KEYS")}
    env.update(variables)
    if names is not None:
        env["PLAYLEDGER_PROJECT"] = names.project
    return env


@contextlib.contextmanager
def running_gateway(
    names: PubSubNames, data_dir: Path, log: Path, env: dict[str, str], *extra: str
) -> Iterator[GatewayProcess]:
    """``playledger gateway`` publishing to ``names.topic_id``, ready to take events."""
    port = free_port()
    with log.open("ab") as output:
        process = subprocess.Popen(
            [*gateway_command(port, data_dir, *extra)],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    running = GatewayProcess(process, port, log)
    try:

        def healthy() -> bool:
            assert process.poll() is None, f"gateway exited with {process.returncode}:\n{log.read_text()}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
                    return bool(response.status == 200)
            except OSError:
                return False

        poll(healthy, bool, "gateway /healthz", deadline_seconds=30)
        yield running
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture
def topic_names(pubsub_emulator: str) -> PubSubNames:
    """The contract's names in a project of the test's own: the CLI publishes to ``play-events``."""
    names = PubSubNames(project=f"playledger-gw-{uuid.uuid4().hex[:8]}")
    ensure_topology(names)
    return names


@pytest.fixture
def subscriber(pubsub_emulator: str) -> Iterator[pubsub_v1.SubscriberClient]:
    client = pubsub_v1.SubscriberClient()
    yield client
    client.close()


@pytest.mark.parametrize(
    ("case", "variables", "extra", "message"),
    [
        (
            "placeholder key",
            {"PLAYLEDGER_API_KEYS": "changeme"},
            (),
            "API key #1 in PLAYLEDGER_API_KEYS is a placeholder",
        ),
        (
            "bad rate limit",
            {"PLAYLEDGER_API_KEYS": API_KEY},
            ("--rate-limit", "fast"),
            "'fast' is not a rate limit",
        ),
        ("journal not creatable", {"PLAYLEDGER_API_KEYS": API_KEY}, (), "for the receipt journal"),
    ],
)
def test_bad_config_exits_2_with_a_clear_error_before_the_port_opens(
    pubsub_emulator: str,
    tmp_path: Path,
    case: str,
    variables: dict[str, str],
    extra: tuple[str, ...],
    message: str,
) -> None:
    data_dir = tmp_path / "data"
    if case == "journal not creatable":
        # The settings are fine; the journal's folder cannot be made: found before listening.
        data_dir.mkdir()
        (data_dir / "journal").write_text("not a folder")
    port = free_port()
    result = subprocess.run(
        gateway_command(port, data_dir, *extra),
        cwd=REPO,
        env=gateway_env(None, **variables),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    assert [line["level"] for line in lines] == ["ERROR"], lines
    assert lines[0]["message"].startswith("gateway not started: ")
    assert message in lines[0]["message"]
    assert "changeme" not in result.stderr  # a key is never echoed


def test_sighup_revokes_a_key_removed_from_the_file(topic_names: PubSubNames, tmp_path: Path) -> None:
    key_file = tmp_path / "api-keys"
    key_file.write_text(f"# issued 2026-11-28\n{API_KEY}\n{OTHER_KEY}\n")
    env = gateway_env(topic_names, PLAYLEDGER_API_KEYS_FILE=str(key_file))
    other = {"Authorization": f"Bearer {OTHER_KEY}"}
    # Polling off: only the signal can make the change known.
    with running_gateway(
        topic_names, tmp_path / "data", tmp_path / "gateway.log", env, "--keys-poll-seconds", "0"
    ) as gw:
        assert post_events(gw.port, [], other).status == 200
        temp = key_file.with_suffix(".new")
        temp.write_text(f"{API_KEY}\n")
        os.replace(temp, key_file)
        assert post_events(gw.port, [], other).status == 200  # not yet: no SIGHUP
        gw.process.send_signal(signal.SIGHUP)
        poll(
            lambda: post_events(gw.port, [], other).status, lambda status: status == 401, "revoked by SIGHUP"
        )
        refused = post_events(gw.port, [play()], {**other, "X-Request-Id": "audit-7f3a"})
        assert refused.status == 401
        assert refused.headers["x-request-id"] == "audit-7f3a"
        assert post_events(gw.port, []).status == 200
        assert gw.stop() == 0
        lines = gw.log_lines()
    reload = [line for line in lines if line["message"].startswith("API keys reloaded (SIGHUP)")]
    assert len(reload) == 1 and key_id(OTHER_KEY) in reload[0]["message"]
    assert [line["message"] for line in lines if line["request_id"] == "audit-7f3a"] == [
        "401 from 127.0.0.1: invalid API key"
    ]
    assert all(set(line) >= {"time", "level", "logger", "message", "request_id"} for line in lines)
    assert OTHER_KEY not in (tmp_path / "gateway.log").read_text()


@dataclass
class Load:
    """Clients posting batches in a loop until stopped or the gateway goes away."""

    port: int
    clients: int = 4
    batch_events: int = 20
    acknowledged: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        for number in range(self.clients):
            thread = threading.Thread(target=self._client, name=f"load-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _client(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
        try:
            while not self._stop.is_set():
                events = [play() for _ in range(self.batch_events)]
                try:
                    connection.request("POST", "/v1/events", json.dumps({"events": events}).encode(), headers)
                    response = connection.getresponse()
                    body = response.read()
                except (OSError, http.client.HTTPException):
                    return  # the gateway went away: what was not answered 200 was not acknowledged
                if response.status == 200:
                    assert json.loads(body)["accepted"] == self.batch_events
                    with self._lock:
                        self.acknowledged.extend(event["event_id"] for event in events)
                elif response.status != 503:
                    with self._lock:
                        self.errors.append(f"{response.status}: {body[:200]!r}")
        finally:
            connection.close()

    def count(self) -> int:
        with self._lock:
            return len(self.acknowledged)

    def join(self) -> list[str]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)
        assert not self.errors, self.errors
        return list(self.acknowledged)


def test_kill_9_under_load_loses_no_acknowledged_receipt_and_sigterm_drains(
    topic_names: PubSubNames, subscriber: pubsub_v1.SubscriberClient, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    env = gateway_env(topic_names, PLAYLEDGER_API_KEYS=API_KEY)
    with running_gateway(topic_names, data_dir, tmp_path / "first.log", env) as first:
        load = Load(first.port).start()
        poll(load.count, lambda count: count >= 2000, "acknowledged events before the kill")
        first.stop(signal.SIGKILL)
        killed_acknowledged = load.join()
    # The killed gateway could not seal: its hour file is an orphan, read as it is.
    assert open_receipt_files(data_dir)
    journaled = {event_id for event_id, _, _ in receipts(data_dir)}
    missing = set(killed_acknowledged) - journaled
    assert not missing, f"{len(missing)} acknowledged event(s) missing from the journal"

    # A new gateway on the same directory seals the orphan, then drains on SIGTERM under load.
    with running_gateway(topic_names, data_dir, tmp_path / "second.log", env) as second:
        poll(
            lambda: [
                path
                for path in open_receipt_files(data_dir)
                if "-" + str(first.process.pid) + "-" in path.name
            ],
            lambda orphans: not orphans,
            "orphan sealed by the next gateway",
        )
        load = Load(second.port).start()
        poll(load.count, lambda count: count >= 1000, "acknowledged events before SIGTERM")
        assert second.stop(signal.SIGTERM) == 0
        drained_acknowledged = load.join()
        lines = second.log_lines()
    assert "gateway stopped" in [line["message"] for line in lines]
    assert open_receipt_files(data_dir) == []  # everything sealed as Parquet
    assert len(sealed_receipt_files(data_dir)) >= 2
    journal = [event_id for event_id, _, _ in receipts(data_dir)]
    assert len(journal) == len(set(journal)), "an event journaled twice"
    acknowledged = set(killed_acknowledged) | set(drained_acknowledged)
    assert acknowledged <= set(journal)

    published = pull_event_ids(subscriber, topic_names.royalties, expected=len(journal), deadline_seconds=60)
    # Journaled only after Pub/Sub confirmed: every receipt is on the topic, exactly once.
    assert len(published) == len(set(published))
    assert set(journal) <= set(published)
    assert acknowledged <= set(published)
