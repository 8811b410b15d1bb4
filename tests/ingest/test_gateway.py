"""The gateway over real HTTP against the real Pub/Sub emulator.

Each test runs the aiohttp app on a free port in a background thread and talks to it
with ``http.client``; what the gateway published is pulled back from the test's own
subscriptions and decoded with the shared codec, and what it journaled is read back
through the ``receipts`` view.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import google.cloud.pubsub_v1 as pubsub_v1
import pytest
from gateway_client import (
    API_KEY,
    AUTH,
    OTHER_KEY,
    call,
    metric_samples,
    play,
    post_events,
    pull_messages,
    receipts,
    settings_for,
)
from served_gateway import RunningGateway

from ingest.gateway.app import EventPublisher, create_app
from ingest.pubsub import free_port
from schemas.codec import EncodedBatch
from schemas.topology import PubSubNames

pytestmark = pytest.mark.emulator

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def subscriber(pubsub_emulator: str) -> Iterator[pubsub_v1.SubscriberClient]:
    client = pubsub_v1.SubscriberClient()
    yield client
    client.close()


@pytest.fixture
def publisher(pubsub_names: PubSubNames) -> Iterator[EventPublisher]:
    event_publisher = EventPublisher(pubsub_names.topic, timeout_seconds=10)
    yield event_publisher
    event_publisher.close()


@pytest.fixture
def gateway(pubsub_names: PubSubNames, publisher: EventPublisher, tmp_path: Path) -> Iterator[RunningGateway]:
    with RunningGateway(create_app(settings_for(pubsub_names, tmp_path), publisher)) as running:
        yield running


def assert_only_marker_published(
    port: int, subscriber: pubsub_v1.SubscriberClient, names: PubSubNames
) -> None:
    """Publish a marker batch and check it is the only message on the subscription.

    Whatever an earlier request might have published would be waiting before it.
    """
    marker = play()
    reply = post_events(port, [marker])
    assert reply.status == 200, reply.body
    [(events, attributes)] = pull_messages(subscriber, names.royalties, 1)
    assert attributes["batch_id"] == reply.body["batch_id"]
    assert [event["event_id"] for event in events] == [marker["event_id"]]


def test_healthz_answers_ok(gateway: RunningGateway) -> None:
    reply = call(gateway.port, "GET", "/healthz")
    assert (reply.status, reply.body) == (200, {"status": "ok"})


def test_unknown_route_and_method_are_json_errors(gateway: RunningGateway) -> None:
    missing = call(gateway.port, "GET", "/v2/events", headers=AUTH)
    assert (missing.status, missing.body) == (404, {"error": "no such resource: /v2/events"})
    wrong_method = call(gateway.port, "GET", "/v1/events", headers=AUTH)
    assert wrong_method.status == 405
    assert wrong_method.body == {"error": "method GET is not allowed on /v1/events"}
    assert wrong_method.headers["allow"] == "POST"


def test_accepted_events_are_published_as_one_batch(
    gateway: RunningGateway, subscriber: pubsub_v1.SubscriberClient, pubsub_names: PubSubNames
) -> None:
    sent = [
        play(),
        play(played_at="2026-11-28T06:00:00.123456Z", ms_played=0, product="free", device=None, offline=True),
        play(territory="BR", context="daily_mix", bitrate_kbps=96, device=...),
    ]
    before = datetime.now(UTC)
    reply = post_events(gateway.port, sent)
    after = datetime.now(UTC)

    assert reply.status == 200, reply.body
    assert reply.body["accepted"] == 3
    assert reply.body["rejected"] == []
    batch_id = reply.body["batch_id"]
    assert uuid.UUID(hex=batch_id).hex == batch_id

    for subscription in (pubsub_names.royalties, pubsub_names.archive):
        [(events, attributes)] = pull_messages(subscriber, subscription, 1)
        assert attributes == {"schema_version": "1", "batch_id": batch_id, "event_count": "3"}
        received_at = events[0]["received_at"]
        assert before <= received_at <= after
        assert received_at.utcoffset() is not None and received_at.utcoffset().total_seconds() == 0
        assert events == [
            {**sent[0], "played_at": datetime(2026, 11, 28, 6, tzinfo=UTC), "received_at": received_at},
            {
                **sent[1],
                "played_at": datetime(2026, 11, 28, 6, 0, 0, 123456, tzinfo=UTC),
                "received_at": received_at,
            },
            {
                **sent[2],
                "played_at": datetime(2026, 11, 28, 6, tzinfo=UTC),
                "device": None,
                "received_at": received_at,
            },
        ]


def test_mixed_batch_publishes_the_valid_events_once_and_explains_the_rest(
    gateway: RunningGateway, subscriber: pubsub_v1.SubscriberClient, pubsub_names: PubSubNames
) -> None:
    good_first, good_second = play(), play(track_id="track-8")
    bad_range = play(ms_played=-1, territory="se")
    bad_types = play(event_id=17, offline="yes", bitrate_kbps="160", shuffle=True)
    sent = [good_first, bad_range, good_second, 42, bad_types]

    reply = post_events(gateway.port, sent, {"Authorization": f"Bearer {OTHER_KEY}"})

    assert reply.status == 200, reply.body
    assert reply.body["accepted"] == 2
    assert reply.body["rejected"] == [
        {
            "index": 1,
            "event_id": bad_range["event_id"],
            "errors": [
                "ms_played: must be between 0 and 86400000, got -1",
                "territory: must be upper case: 'SE', not 'se'",
            ],
        },
        {"index": 3, "event_id": None, "errors": ["event: must be a JSON object, got number"]},
        {
            "index": 4,
            "event_id": None,
            "errors": [
                "event_id: must be a string, got number",
                "bitrate_kbps: must be an integer, got string",
                "offline: must be a boolean, got string",
                "shuffle: unknown field",
            ],
        },
    ]
    [(events, attributes)] = pull_messages(subscriber, pubsub_names.royalties, 1)
    assert attributes["batch_id"] == reply.body["batch_id"]
    assert [event["event_id"] for event in events] == [good_first["event_id"], good_second["event_id"]]
    assert [event["track_id"] for event in events] == ["track-7", "track-8"]


def test_duplicate_event_ids_in_one_request_are_both_accepted(
    gateway: RunningGateway, subscriber: pubsub_v1.SubscriberClient, pubsub_names: PubSubNames
) -> None:
    event = play()
    reply = post_events(gateway.port, [event, event])
    assert (reply.status, reply.body["accepted"]) == (200, 2)
    [(events, _)] = pull_messages(subscriber, pubsub_names.royalties, 1)
    assert [e["event_id"] for e in events] == [event["event_id"]] * 2


def test_nothing_valid_means_nothing_published(
    gateway: RunningGateway, subscriber: pubsub_v1.SubscriberClient, pubsub_names: PubSubNames
) -> None:
    invalid = post_events(gateway.port, [play(product="gold"), play(user_id=...)])
    assert invalid.status == 200
    assert invalid.body["accepted"] == 0
    assert invalid.body["batch_id"] is None
    assert [r["errors"] for r in invalid.body["rejected"]] == [
        ["product: must be one of free|premium, got 'gold'"],
        ["user_id: required"],
    ]
    empty = post_events(gateway.port, [])
    assert empty.body == {"accepted": 0, "rejected": [], "batch_id": None}
    assert_only_marker_published(gateway.port, subscriber, pubsub_names)


@pytest.mark.parametrize(
    ("body", "message_start"),
    [
        (b"{not json", "body is not valid JSON: Expecting property name"),
        (b"", "body is not valid JSON: Expecting value"),
        (b'{"events": [{"ms_played": NaN}]}', "body is not valid JSON: NaN is not a JSON number"),
        (b'{"events": ["\xff"]}', "body is not valid JSON: 'utf-8' codec can't decode"),
        (b"[" * 50_000, "body is not valid JSON: maximum recursion depth exceeded"),
    ],
)
def test_a_body_that_is_not_json_is_400(gateway: RunningGateway, body: bytes, message_start: str) -> None:
    reply = call(gateway.port, "POST", "/v1/events", body, AUTH)
    assert reply.status == 400
    assert reply.body["error"].startswith(message_start), reply.body


ONLY_EVENTS = "the body holds only 'events'"


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([], 'body must be a JSON object like {"events": [...]}, got array'),
        ("events", 'body must be a JSON object like {"events": [...]}, got str'),
        ({}, "body is missing the key 'events'"),
        ({"events": {"0": {}}}, "'events' must be a JSON array of events"),
        ({"events": None}, "'events' must be a JSON array of events"),
        ({"events": [], "sent_at": "now"}, f"unknown top-level key(s) 'sent_at': {ONLY_EVENTS}"),
        ({"event": []}, f"body is missing the key 'events'; unknown top-level key(s) 'event': {ONLY_EVENTS}"),
    ],
)
def test_a_body_of_the_wrong_shape_is_400(gateway: RunningGateway, payload: object, message: str) -> None:
    reply = call(gateway.port, "POST", "/v1/events", json.dumps(payload).encode(), AUTH)
    assert (reply.status, reply.body) == (400, {"error": message})


def test_bad_credentials_are_401_and_publish_nothing(
    gateway: RunningGateway, subscriber: pubsub_v1.SubscriberClient, pubsub_names: PubSubNames
) -> None:
    body = json.dumps({"events": [play()]}).encode()
    cases = {
        None: "missing Authorization header: send 'Authorization: Bearer <api key>'",
        f"Bearer {API_KEY}x": "invalid API key",
        f"Bearer {API_KEY[:-1]}": "invalid API key",
        "Bearer wrong-key-0000000000": "invalid API key",
        "Bearer héllo-wörld-key": "invalid API key",
        f"Basic {API_KEY}": "malformed Authorization header: expected 'Bearer <api key>'",
        "Bearer": "malformed Authorization header: expected 'Bearer <api key>'",
        f"Bearer {API_KEY} {API_KEY}": "malformed Authorization header: expected 'Bearer <api key>'",
        API_KEY: "malformed Authorization header: expected 'Bearer <api key>'",
    }
    for authorization, message in cases.items():
        headers = {} if authorization is None else {"Authorization": authorization}
        reply = call(gateway.port, "POST", "/v1/events", body, headers)
        assert (reply.status, reply.body) == (401, {"error": message}), authorization
        assert reply.headers["www-authenticate"].startswith("Bearer")
    # The key is checked before the body is read: an oversized body still gets 401.
    wrong_key = {"Authorization": "Bearer wrong-key-0000000000"}
    oversized = call(gateway.port, "POST", "/v1/events", b" " * (128 * 1024), wrong_key)
    assert oversized.status == 401
    # The scheme is case-insensitive (RFC 7235).
    lower = post_events(gateway.port, [], {"Authorization": f"bearer {API_KEY}"})
    assert lower.status == 200
    assert_only_marker_published(gateway.port, subscriber, pubsub_names)


def test_too_large_is_413_and_the_gateway_keeps_working(
    gateway: RunningGateway, subscriber: pubsub_v1.SubscriberClient, pubsub_names: PubSubNames
) -> None:
    limit_message = "request body is larger than 65536 bytes; send fewer events per request"
    padded = json.dumps({"events": [play(device="d" * 100) for _ in range(300)]}).encode()
    assert len(padded) > 64 * 1024
    declared = call(gateway.port, "POST", "/v1/events", padded, AUTH)
    assert (declared.status, declared.body) == (413, {"error": limit_message})

    chunks = iter([padded[i : i + 8192] for i in range(0, len(padded), 8192)])
    chunked = call(gateway.port, "POST", "/v1/events", chunks, AUTH)
    assert (chunked.status, chunked.body) == (413, {"error": limit_message})

    too_many = post_events(gateway.port, [play() for _ in range(51)])
    assert (too_many.status, too_many.body) == (413, {"error": "too many events: 51, at most 50 per request"})

    assert_only_marker_published(gateway.port, subscriber, pubsub_names)


def test_a_missing_topic_is_503_with_retry_after(pubsub_names: PubSubNames, tmp_path: Path) -> None:
    missing = PubSubNames(project=pubsub_names.project, topic_id=f"absent-{uuid.uuid4().hex[:8]}")
    publisher = EventPublisher(missing.topic, timeout_seconds=2)
    try:
        with RunningGateway(
            create_app(settings_for(missing, tmp_path, retry_after_seconds=7), publisher)
        ) as gateway:
            reply = post_events(gateway.port, [play(), play(ms_played=-1)])
    finally:
        publisher.close()
    assert reply.status == 503
    assert reply.headers["retry-after"] == "7"
    assert reply.body == {
        "error": "could not publish to Pub/Sub; none of the events were accepted, retry in 7 s"
    }


def test_an_unreachable_pubsub_is_503_after_the_publish_timeout(
    pubsub_names: PubSubNames, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A Pub/Sub endpoint on a port nothing listens on: the outage is real, not simulated.
    with monkeypatch.context() as patch:
        patch.setenv("PUBSUB_EMULATOR_HOST", f"127.0.0.1:{free_port()}")
        publisher = EventPublisher(pubsub_names.topic, timeout_seconds=1.5)
    settings = settings_for(pubsub_names, tmp_path, publish_timeout_seconds=1.5)
    try:
        with RunningGateway(create_app(settings, publisher)) as gateway:
            started = time.monotonic()
            reply = post_events(gateway.port, [play()])
            elapsed = time.monotonic() - started
    finally:
        publisher.close()
    assert reply.status == 503
    assert reply.headers["retry-after"] == "5"
    assert "none of the events were accepted" in reply.body["error"]
    # The client library's own retries give up within the same budget, not its default 60 s.
    assert elapsed < 1.5 + 2.0, elapsed


def test_accepted_events_are_journaled_with_their_message_id_before_the_200(
    gateway: RunningGateway, subscriber: pubsub_v1.SubscriberClient, pubsub_names: PubSubNames, tmp_path: Path
) -> None:
    first, second = play(), play(track_id="track-8")
    reply = post_events(gateway.port, [first, play(ms_played=-5), second])
    assert (reply.status, reply.body["accepted"]) == (200, 2)
    # The 200 came after the sync: the receipts are readable now, without waiting.
    journaled = receipts(tmp_path)
    response = subscriber.pull(
        request={"subscription": pubsub_names.royalties, "max_messages": 10}, timeout=10
    )
    [received] = response.received_messages
    assert received.message.attributes["batch_id"] == reply.body["batch_id"]
    assert journaled == [
        (first["event_id"], reply.body["batch_id"], received.message.message_id),
        (second["event_id"], reply.body["batch_id"], received.message.message_id),
    ]
    nothing_valid = post_events(gateway.port, [play(product="gold")])
    assert nothing_valid.body["accepted"] == 0
    assert len(receipts(tmp_path)) == 2


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "application/json; charset=latin-1", "json"],
)
def test_a_body_that_is_not_declared_json_in_utf8_is_415(
    gateway: RunningGateway, content_type: str | None
) -> None:
    headers = {"Authorization": AUTH["Authorization"]}
    if content_type is not None:
        headers["Content-Type"] = content_type
    body = json.dumps({"events": [play()]}).encode()
    reply = call(gateway.port, "POST", "/v1/events", body, headers)
    assert reply.status == 415, reply.body
    if content_type is None:
        assert reply.body == {"error": "missing Content-Type: send 'Content-Type: application/json'"}
    else:
        assert reply.body == {"error": f"Content-Type must be application/json (UTF-8), got {content_type!r}"}


def test_json_with_or_without_charset_is_accepted_and_415s_published_nothing(
    gateway: RunningGateway, subscriber: pubsub_v1.SubscriberClient, pubsub_names: PubSubNames
) -> None:
    refused = call(
        gateway.port,
        "POST",
        "/v1/events",
        json.dumps({"events": [play()]}).encode(),
        {**AUTH, "Content-Type": "text/json"},
    )
    assert refused.status == 415
    for content_type in ("application/json; charset=utf-8", "Application/JSON; charset=UTF-8"):
        reply = call(
            gateway.port, "POST", "/v1/events", b'{"events": []}', {**AUTH, "Content-Type": content_type}
        )
        assert (reply.status, reply.body["accepted"]) == (200, 0), content_type
    assert_only_marker_published(gateway.port, subscriber, pubsub_names)


def test_every_answer_carries_a_request_id(gateway: RunningGateway) -> None:
    echoed = call(gateway.port, "GET", "/healthz", headers={"X-Request-Id": "client-req:42/a=b"})
    assert echoed.headers["x-request-id"] == "client-req:42/a=b"
    made = post_events(gateway.port, [], {"Authorization": "Bearer wrong-key-0000000000"})
    assert made.status == 401
    assert len(made.headers["x-request-id"]) == 32 and int(made.headers["x-request-id"], 16) >= 0
    for insane in ("two words", "x" * 129, "naïve"):
        reply = call(
            gateway.port, "GET", "/nowhere", headers={"X-Request-Id": insane.encode().decode("latin-1")}
        )
        assert reply.status == 404
        assert reply.headers["x-request-id"] != insane and len(reply.headers["x-request-id"]) == 32


def test_metrics_count_requests_events_and_reasons(gateway: RunningGateway) -> None:
    assert post_events(gateway.port, [play(), play(), play(ms_played=-1, mood="happy")]).status == 200
    assert post_events(gateway.port, [42]).status == 200
    assert post_events(gateway.port, [], {"Authorization": "Bearer wrong-key-0000000000"}).status == 401
    samples = metric_samples(gateway.port)

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("playledger_gateway_requests_total", route="/v1/events", status="200") == 2
    assert value("playledger_gateway_requests_total", route="/v1/events", status="401") == 1
    assert value("playledger_gateway_events_accepted_total") == 2
    assert value("playledger_gateway_events_rejected_total") == 2
    assert value("playledger_gateway_event_errors_total", field="ms_played") == 1
    assert value("playledger_gateway_event_errors_total", field="unknown_field") == 1  # not "mood"
    assert value("playledger_gateway_event_errors_total", field="event") == 1
    assert value("playledger_gateway_publish_seconds_count") == 1
    assert value("playledger_gateway_journal_write_seconds_count") == 1
    assert value("playledger_gateway_request_seconds_count") == 3
    assert value("playledger_gateway_publishes_in_flight") == 0
    assert value("playledger_gateway_publishes_in_flight_limit") == 100
    assert value("playledger_gateway_api_keys") == 2
    assert value("playledger_gateway_journal_lag_seconds") == 0
    assert not any(labels and dict(labels).get("field") == "mood" for _, labels in samples)


def test_each_key_has_its_own_rate_limit_and_a_429_publishes_nothing(
    pubsub_names: PubSubNames,
    publisher: EventPublisher,
    subscriber: pubsub_v1.SubscriberClient,
    tmp_path: Path,
) -> None:
    settings = settings_for(pubsub_names, tmp_path, rate_limit="3/minute")
    with RunningGateway(create_app(settings, publisher)) as gateway:
        for _ in range(3):
            assert post_events(gateway.port, []).status == 200
        limited = post_events(gateway.port, [play()])
        assert limited.status == 429
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert limited.body == {
            "error": "rate limit of 3/minute requests per API key exceeded; "
            f"retry in {limited.headers['retry-after']} s"
        }
        other = {"Authorization": f"Bearer {OTHER_KEY}"}
        marker = play()
        reply = post_events(gateway.port, [marker], other)
        assert (reply.status, reply.body["accepted"]) == (200, 1)
        [(events, _)] = pull_messages(subscriber, pubsub_names.royalties, 1)
        assert [event["event_id"] for event in events] == [marker["event_id"]]
        # A wrong key is refused before the limiter counts anything.
        assert post_events(gateway.port, [], {"Authorization": "Bearer wrong-key-0000000000"}).status == 401
        assert [event_id for event_id, _, _ in receipts(tmp_path)] == [marker["event_id"]]


class _BrokenPublisher:
    """The one stand-in here: a publisher failing in a way nobody planned for."""

    async def publish(self, batch: EncodedBatch) -> str:
        raise KeyError("internal detail that must not reach the client")


def test_an_unexpected_error_is_a_500_without_details(pubsub_names: PubSubNames, tmp_path: Path) -> None:
    with RunningGateway(create_app(settings_for(pubsub_names, tmp_path), _BrokenPublisher())) as gateway:
        reply = post_events(gateway.port, [play()])
    assert (reply.status, reply.body) == (500, {"error": "internal error; the request was not processed"})


SERVE_SCRIPT = """
import logging, sys
from ingest.gateway.app import GatewaySettings, serve
from schemas.topology import PubSubNames

logging.basicConfig(level=logging.INFO, stream=sys.stderr)
names = PubSubNames(project="local-dev", topic_id=sys.argv[1])

def ready(port: int) -> None:
    sys.stdout.write(f"{port}\\n")
    sys.stdout.flush()

serve(GatewaySettings.from_env(port=0, names=names, data_dir=sys.argv[2]), on_ready=ready)
"""


def test_serve_runs_until_sigterm_and_shuts_down_cleanly(
    subscriber: pubsub_v1.SubscriberClient, pubsub_names: PubSubNames, tmp_path: Path
) -> None:
    env = {**os.environ, "PLAYLEDGER_API_KEYS": API_KEY, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-c", SERVE_SCRIPT, pubsub_names.topic_id, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        assert call(port, "GET", "/healthz").status == 200
        event = play()
        reply = post_events(port, [event])
        assert reply.body["accepted"] == 1
        process.terminate()
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr
    assert "gateway stopped" in stderr
    assert "Traceback" not in stderr
    [(events, _)] = pull_messages(subscriber, pubsub_names.royalties, 1)
    assert events[0]["event_id"] == event["event_id"]
    # Shutdown sealed the journal: the hour is Parquet now, whatever the clock says.
    assert list((tmp_path / "journal" / "open").iterdir()) == []
    assert [path.parent.name.startswith("hour=") for path in (tmp_path / "journal").glob("*/*.parquet")] == [
        True
    ]
    assert [(event_id, batch_id) for event_id, batch_id, _ in receipts(tmp_path)] == [
        (event["event_id"], reply.body["batch_id"])
    ]
