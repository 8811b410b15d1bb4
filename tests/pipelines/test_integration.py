"""Gateway → Pub/Sub → streaming pipeline → Parquet ledger, in one process, on the real emulator.

The gateway app is served over real HTTP from a background event loop, the streaming
pipeline runs on the BundleBasedDirectRunner reading the test's own subscription, and
the ledger it appends is read back through the DuckDB views. Expected balances come
from ``reference_royalties``, which shares no code with ``ledger/``.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.io.gcp.pubsub import ReadFromPubSub
from apache_beam.options.pipeline_options import PipelineOptions
from served_gateway import RunningGateway

from ingest.gateway.app import EventPublisher, GatewaySettings, create_app
from ledger.catalog import DEFAULT_CATALOG_DIR
from ledger.counters import PIPELINE_COUNTERS_FILE, load_counters
from ledger.views import open_ledger, run_sql
from pipelines.config import PipelineConfig
from pipelines.direct_runner import mend_direct_runner
from pipelines.local.reference_royalties import UNMATCHED, Balance, ReferenceCatalog, expected_balances
from pipelines.streaming import build, parquet_sinks
from pipelines.supervisor import SupervisorSettings, supervise, unwritten
from pipelines.transforms.metrics import counters
from schemas.topology import PubSubNames

pytestmark = pytest.mark.emulator

API_KEY = "integration-key-5d1e9c2a"
DEADLINE_SECONDS = 60.0
HEARTBEAT_SECONDS = 0.5


def post(port: int, events: list[dict[str, Any]]) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/events",
        data=json.dumps({"events": events}).encode(),
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=20) as response:
        assert response.status == 200
        reply: dict[str, Any] = json.load(response)
        return reply


def event(
    track_id: str, ms_played: int = 185_000, territory: str = "US", product: str = "premium"
) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "user_id": "user-integration",
        "track_id": track_id,
        "played_at": "2026-11-28T07:00:00+01:00",
        "ms_played": ms_played,
        "territory": territory,
        "product": product,
        "context": "album",
        "bitrate_kbps": 320,
        "offline": False,
        "device": "test-rig",
    }


def ledger_parts(data_dir: Path) -> int:
    """Attributed parts in the ledger so far (each part counts one play)."""
    [(plays,)] = run_sql(open_ledger(data_dir), "SELECT coalesce(sum(plays), 0) FROM ledger").rows
    return int(plays)


def ledger_balances(data_dir: Path) -> dict[str, Balance]:
    result = run_sql(
        open_ledger(data_dir),
        "SELECT rights_holder_id, sum(plays), sum(streams), sum(amount_micros) FROM ledger GROUP BY ALL",
    )
    return {row[0]: Balance(int(row[1]), int(row[2]), int(row[3])) for row in result.rows}


@pytest.fixture
def gateway(pubsub_names: PubSubNames, tmp_path: Path) -> Iterator[RunningGateway]:
    publisher = EventPublisher(pubsub_names.topic, timeout_seconds=10)
    settings = GatewaySettings(
        api_keys=frozenset({API_KEY}), port=0, names=pubsub_names, data_dir=tmp_path / "gateway"
    )
    try:
        with RunningGateway(create_app(settings, publisher)) as running:
            yield running
    finally:
        publisher.close()


def test_plays_posted_over_http_land_in_the_ledger_exactly(
    gateway: RunningGateway, pubsub_names: PubSubNames, tmp_path: Path
) -> None:
    catalog = ReferenceCatalog.read(DEFAULT_CATALOG_DIR)
    tracks = sorted(catalog.splits)[:3]
    assert ("NO", "premium") not in catalog.rates_micros, "NO must use the '*' fallback rate"
    first_batch = [
        event(tracks[0]),
        event(tracks[0], territory="GB", product="free"),
        event(tracks[1], territory="SE"),
        event(tracks[2], territory="NO"),  # no NO rate: ('*', premium)
        event(tracks[1], ms_played=29_999),  # not a stream: counted, earns nothing
    ]
    second_batch = [
        event("T-NOT-IN-CATALOG", territory="BR"),  # suspense
        first_batch[2],  # a client retry: same event_id, counted once
        event(tracks[2], ms_played=30_000, product="free"),  # exactly 30 s is a stream
    ]
    expected_first = expected_balances(catalog, first_batch)
    expected = expected_balances(catalog, first_batch + second_batch)
    assert expected[UNMATCHED] == Balance(1, 1, catalog.rates_micros[("BR", "premium")])
    unique_plays = len(first_batch) + len(second_batch) - 1

    mend_direct_runner()
    pipeline = beam.Pipeline(options=PipelineOptions(streaming=True, runner="BundleBasedDirectRunner"))
    build(
        pipeline,
        ReadFromPubSub(subscription=pubsub_names.royalties, with_attributes=True),
        parquet_sinks(str(tmp_path)),
        PipelineConfig(period_seconds=3600, early_firing_seconds=1, catalog_dir=DEFAULT_CATALOG_DIR),
    )
    result = pipeline.run()
    deadline = time.monotonic() + DEADLINE_SECONDS
    supervised = threading.Event()  # set once supervise() returned: the pipeline stopped
    failures: list[BaseException] = []

    def wait_for_ledger(decoded: int, balances: dict[str, Balance]) -> dict[str, int]:
        """Poll until ``decoded`` events were read and the ledger holds every part of ``balances``."""
        parts = sum(balance.plays for balance in balances.values())
        totals: dict[str, int] = {}
        while time.monotonic() < deadline and not supervised.is_set():
            totals = counters(result)
            if totals.get("events_decoded") == decoded and ledger_parts(tmp_path) >= parts:
                return totals
            time.sleep(0.5)
        pytest.fail(f"the ledger did not get {parts} parts in time (or the pipeline stopped); {totals}")

    def send_check_and_stop() -> None:
        """Drive the running pipeline, then stop it as an operator does: SIGTERM."""
        try:
            reply = post(gateway.port, first_batch)
            assert (reply["accepted"], reply["rejected"]) == (len(first_batch), []), reply
            wait_for_ledger(len(first_batch), expected_first)
            assert ledger_balances(tmp_path) == expected_first

            # The retry arrives once its first copy is already in the ledger, in a later pane.
            reply = post(gateway.port, second_batch)
            assert (reply["accepted"], reply["rejected"]) == (len(second_batch), []), reply
            totals = wait_for_ledger(len(first_batch) + len(second_batch), expected)
            assert ledger_balances(tmp_path) == expected

            assert totals["events_duplicate"] == 1
            assert totals["events_unique"] == totals["plays"] == unique_plays
            assert totals["streams"] == unique_plays - 1
            assert totals["plays_unmatched"] == 1
            connection = open_ledger(tmp_path)
            assert run_sql(connection, "SELECT count(*) FROM dead_letters").rows == [(0,)]
            assert run_sql(connection, "SELECT DISTINCT currency FROM ledger").rows == [(catalog.currency,)]
            files = list((tmp_path / "ledger").glob("period=*/*.parquet"))
            assert len(files) >= 2, "each pane appends its own files to the hive-partitioned ledger"
        except BaseException as error:
            failures.append(error)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    driver = threading.Thread(target=send_check_and_stop, name="driver", daemon=True)
    driver.start()
    # The pipeline's own supervision, as `playledger pipeline stream` runs it: heartbeats,
    # counters saved, and on SIGTERM a drain of everything read, then a cancel.
    code = supervise(
        result,
        SupervisorSettings(
            topic=pubsub_names.topic,
            heartbeat_seconds=HEARTBEAT_SECONDS,
            drain_timeout_seconds=30,
            early_firing_seconds=1,
            counters_path=tmp_path / PIPELINE_COUNTERS_FILE,
        ),
    )
    supervised.set()
    driver.join(timeout=DEADLINE_SECONDS)
    if failures:
        raise failures[0]
    assert code == 0, "the drain found plays read but not written"
    saved = load_counters(tmp_path / PIPELINE_COUNTERS_FILE)
    assert (saved["events_unique"], saved["events_duplicate"]) == (unique_plays, 1)
    assert unwritten(saved) == (0, 0)
