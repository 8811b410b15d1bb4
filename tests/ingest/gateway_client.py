"""What the gateway tests share: valid plays, a plain HTTP client, pulls from the emulator.

Requests go over real HTTP with ``http.client``; what the gateway published is pulled
back from the test's own subscriptions and decoded with the shared codec; what it
journaled is read back through the ``receipts`` view.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import google.cloud.pubsub_v1 as pubsub_v1
import polling
from client_events import play as play  # re-exported: the gateway tests import it from here
from google.api_core import exceptions as gexc
from prometheus_client.parser import text_string_to_metric_families

from ingest.gateway.settings import GatewaySettings
from ledger.views import open_ledger, run_sql
from schemas.codec import decode_batch
from schemas.topology import PubSubNames

API_KEY = "test-key-3f9a1c0b7d2e"
OTHER_KEY = "other-key-88e1b7a2c4d6"
JSON_BODY = {"Content-Type": "application/json"}
AUTH = {"Authorization": f"Bearer {API_KEY}", **JSON_BODY}

T = TypeVar("T")


def settings_for(names: PubSubNames, data_dir: Path, **overrides: Any) -> GatewaySettings:
    """Test settings: both test keys, small limits, a free port."""
    values: dict[str, Any] = {
        "port": 0,
        "names": names,
        "data_dir": data_dir,
        "max_body_bytes": 64 * 1024,
        "max_events": 50,
    }
    values.update(overrides)
    return GatewaySettings.from_env({"PLAYLEDGER_API_KEYS": f"{API_KEY}, {OTHER_KEY}"}, **values)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: Any


def call(
    port: int,
    method: str,
    path: str,
    body: bytes | Iterator[bytes] | None = None,
    headers: dict[str, str] | None = None,
    connection: http.client.HTTPConnection | None = None,
) -> Reply:
    """One HTTP request (on a fresh connection unless one is given); the reply must be JSON."""
    fresh = connection is None
    if connection is None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        chunked = body is not None and not isinstance(body, bytes)
        connection.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
        response = connection.getresponse()
        raw = response.read()
        assert response.getheader("Content-Type", "").startswith("application/json"), raw[:200]
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, json.loads(raw))
    finally:
        if fresh:
            connection.close()


def post_events(port: int, events: Any, headers: dict[str, str] | None = None) -> Reply:
    """POST ``{"events": events}`` as JSON with ``headers`` (default: the test key)."""
    return call(
        port,
        "POST",
        "/v1/events",
        json.dumps({"events": events}).encode(),
        {**JSON_BODY, **(headers or AUTH)},
    )


def pull_once(
    subscriber: pubsub_v1.SubscriberClient, subscription: str
) -> list[tuple[list[dict[str, Any]], dict[str, str]]]:
    """One pull (acked): each message's decoded events and attributes."""
    try:
        response = subscriber.pull(request={"subscription": subscription, "max_messages": 500}, timeout=2)
    except gexc.DeadlineExceeded:
        return []
    if response.received_messages:
        subscriber.acknowledge(
            request={
                "subscription": subscription,
                "ack_ids": [received.ack_id for received in response.received_messages],
            }
        )
    return [
        (decode_batch(received.message.data, received.message.attributes), dict(received.message.attributes))
        for received in response.received_messages
    ]


def pull_messages(
    subscriber: pubsub_v1.SubscriberClient, subscription: str, count: int, deadline_seconds: float = 15
) -> list[tuple[list[dict[str, Any]], dict[str, str]]]:
    """Pull and ack until ``count`` messages arrived, then check that no more are waiting."""
    messages: list[tuple[list[dict[str, Any]], dict[str, str]]] = []
    deadline = time.monotonic() + deadline_seconds
    while len(messages) < count and time.monotonic() < deadline:
        messages.extend(pull_once(subscriber, subscription))
    assert len(messages) == count, f"expected {count} message(s), got {len(messages)}"
    assert pull_once(subscriber, subscription) == [], "more messages than expected"
    return messages


def pull_event_ids(
    subscriber: pubsub_v1.SubscriberClient, subscription: str, expected: int, deadline_seconds: float = 30
) -> list[str]:
    """Pull until at least ``expected`` events arrived (or the deadline), then drain the rest."""
    event_ids: list[str] = []
    deadline = time.monotonic() + deadline_seconds
    while len(event_ids) < expected and time.monotonic() < deadline:
        for events, _ in pull_once(subscriber, subscription):
            event_ids.extend(event["event_id"] for event in events)
    while batch := pull_once(subscriber, subscription):
        for events, _ in batch:
            event_ids.extend(event["event_id"] for event in events)
    return event_ids


def metric_samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics``, by name and sorted labels."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Type", "").startswith("text/plain")
        text = response.read().decode()
    finally:
        connection.close()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def receipts(data_dir: Path) -> list[tuple[str, str, str]]:
    """``(event_id, batch_id, message_id)`` of every receipt journaled under ``data_dir``."""
    rows = run_sql(open_ledger(data_dir), "SELECT event_id, batch_id, message_id FROM receipts").rows
    return [(str(row[0]), str(row[1]), str(row[2])) for row in rows]


def poll(probe: Callable[[], T], done: Callable[[T], bool], what: str, deadline_seconds: float = 20) -> T:
    """``polling.poll`` at the gateway tests' pace: every 50 ms, 20 s by default."""
    return polling.poll(probe, done, what, seconds=deadline_seconds, interval=0.05)
