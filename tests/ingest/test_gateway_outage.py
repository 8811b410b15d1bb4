"""Back-pressure: a Pub/Sub outage mid-run is 503 with ``Retry-After``, and the load is shed.

The outage is real: the test starts an emulator of its own (not the session's), sends a
batch through it, then stops it while the gateway keeps running.
"""

from __future__ import annotations

import concurrent.futures
import time
import uuid
from pathlib import Path

import pytest
from gateway_client import metric_samples, play, poll, post_events, receipts, settings_for
from served_gateway import RunningGateway

from ingest.gateway.app import EventPublisher, create_app
from ingest.pubsub import Emulator, ensure_topology
from schemas.topology import PubSubNames

pytestmark = pytest.mark.emulator


def test_an_outage_is_503_with_retry_after_and_in_flight_publishes_are_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Emulator() as emulator:
        names = PubSubNames(project="local-dev", topic_id=f"outage-{uuid.uuid4().hex[:8]}")
        with monkeypatch.context() as patch:
            patch.setenv("PUBSUB_EMULATOR_HOST", emulator.host)
            ensure_topology(names)
            publisher = EventPublisher(names.topic, timeout_seconds=1.5)
        settings = settings_for(
            names, tmp_path, publish_timeout_seconds=1.5, max_in_flight_publishes=1, retry_after_seconds=3
        )
        try:
            with RunningGateway(create_app(settings, publisher)) as gateway:
                before = play()
                healthy = post_events(gateway.port, [before])
                assert (healthy.status, healthy.body["accepted"]) == (200, 1)

                emulator.stop()
                with concurrent.futures.ThreadPoolExecutor(1) as pool:
                    waiting = pool.submit(post_events, gateway.port, [play()])
                    poll(
                        lambda: metric_samples(gateway.port)[("playledger_gateway_publishes_in_flight", ())],
                        lambda in_flight: in_flight == 1,
                        "one publish waiting for the stopped emulator",
                    )
                    started = time.monotonic()
                    shed = post_events(gateway.port, [play(), play()])
                    shed_seconds = time.monotonic() - started
                    timed_out = waiting.result(timeout=30)

                # The second batch found the only publish slot taken: refused at once, not queued.
                assert shed.status == 503
                assert shed_seconds < 1.0, shed_seconds
                assert shed.headers["retry-after"] == "3"
                assert shed.body == {
                    "error": "1 publishes are already waiting for Pub/Sub; none of the events were accepted, "
                    "retry in 3 s"
                }
                # The first waited for the publish timeout, then gave up.
                assert timed_out.status == 503
                assert timed_out.headers["retry-after"] == "3"
                assert timed_out.body == {
                    "error": "could not publish to Pub/Sub; none of the events were accepted, retry in 3 s"
                }
                samples = metric_samples(gateway.port)
                assert samples[("playledger_gateway_unavailable_total", (("cause", "in_flight_full"),))] == 1
                assert samples[("playledger_gateway_unavailable_total", (("cause", "publish_failed"),))] == 1
                assert samples[("playledger_gateway_publishes_in_flight", ())] == 0
                assert samples[("playledger_gateway_events_accepted_total", ())] == 1
        finally:
            publisher.close()
    # Only the batch Pub/Sub confirmed has receipts.
    assert [event_id for event_id, _, _ in receipts(tmp_path)] == [before["event_id"]]
