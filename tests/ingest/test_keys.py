"""API keys: constant-time matching, and revocation without a restart.

The store is tested alone, then inside a served gateway that polls its key file: a key
removed from the file stops working within a poll, publishes nothing, and a broken
file never replaces a working set of keys.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import google.cloud.pubsub_v1 as pubsub_v1
import pytest
from gateway_client import (
    API_KEY,
    OTHER_KEY,
    metric_samples,
    play,
    poll,
    post_events,
    pull_messages,
    settings_for,
)
from served_gateway import RunningGateway

from ingest.gateway.app import EventPublisher, create_app
from ingest.gateway.keys import ApiKeyStore, key_id, read_api_keys_file
from schemas.topology import PubSubNames

FIRST = "first-key-0a1b2c3d"
SECOND = "second-key-4e5f6a7b"


def replace_file(path: Path, text: str) -> None:
    """Write a new version of the key file the way the runbook says: temp file, then rename."""
    temp = path.with_name(path.name + ".new")
    temp.write_text(text)
    os.replace(temp, path)


def test_authenticate_names_the_matching_key_by_its_id() -> None:
    store = ApiKeyStore(frozenset({FIRST, SECOND}))
    assert store.authenticate(FIRST.encode()) == key_id(FIRST)
    assert store.authenticate(SECOND.encode()) == key_id(SECOND)
    assert store.authenticate(FIRST[:-1].encode()) is None
    assert store.authenticate(b"") is None
    assert len(key_id(FIRST)) == 12 and FIRST not in key_id(FIRST)


def test_reload_applies_a_new_file_and_logs_key_ids_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text(f"{FIRST}\n{SECOND}\n")
    outcomes: list[str] = []
    counts: list[int] = []
    store = ApiKeyStore(
        read_api_keys_file(key_file), key_file, on_change=counts.append, on_reload=outcomes.append
    )
    replace_file(key_file, f"# {SECOND} revoked on 2026-11-28\n{FIRST}\nthird-key-8c9d0e1f\n")
    with caplog.at_level(logging.INFO, logger="ingest.gateway.keys"):
        assert store.reload_if_changed()
    assert store.authenticate(SECOND.encode()) is None
    assert store.authenticate(b"third-key-8c9d0e1f") == key_id("third-key-8c9d0e1f")
    assert (outcomes, counts) == (["applied"], [2, 2])
    assert key_id(SECOND) in caplog.text and key_id("third-key-8c9d0e1f") in caplog.text
    assert SECOND not in caplog.text and "third-key-8c9d0e1f" not in caplog.text
    # Unchanged on disk: nothing to do.
    assert not store.reload_if_changed()


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "cannot read the API key file"),
        ("", "no API keys in the key file"),
        ("# every key commented out\n", "no API keys in the key file"),
        ("changeme\n", "is a placeholder"),
        (f"{FIRST}\nshort\n", "is shorter than 8 characters"),
    ],
)
def test_a_broken_file_keeps_the_keys_in_force(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: str | None, reason: str
) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text(f"{FIRST}\n{SECOND}\n")
    outcomes: list[str] = []
    store = ApiKeyStore(read_api_keys_file(key_file), key_file, on_reload=outcomes.append)
    if content is None:
        key_file.unlink()
    else:
        replace_file(key_file, content)
    with caplog.at_level(logging.ERROR, logger="ingest.gateway.keys"):
        assert not store.reload("SIGHUP")
    assert store.key_ids == {key_id(FIRST), key_id(SECOND)}
    assert outcomes == ["refused"]
    [record] = caplog.records
    assert record.levelno == logging.ERROR
    assert "previous keys stay in force" in record.getMessage() and reason in record.getMessage()
    assert "short\n" not in record.getMessage()


def test_an_in_place_edit_is_noticed_too(tmp_path: Path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text(f"{FIRST}\n{SECOND}\n")
    store = ApiKeyStore(read_api_keys_file(key_file), key_file)
    key_file.write_text(f"{FIRST}\n")  # same inode, new size and mtime
    assert store.reload_if_changed()
    assert store.key_ids == {key_id(FIRST)}


def test_without_a_file_a_reload_changes_nothing() -> None:
    store = ApiKeyStore(frozenset({FIRST}))
    assert not store.reload("SIGHUP")
    assert not store.reload_if_changed()
    assert store.key_ids == {key_id(FIRST)}


@pytest.fixture
def subscriber(pubsub_emulator: str) -> Iterator[pubsub_v1.SubscriberClient]:
    client = pubsub_v1.SubscriberClient()
    yield client
    client.close()


@pytest.mark.emulator
def test_a_key_removed_from_the_file_is_refused_within_a_poll_and_publishes_nothing(
    pubsub_names: PubSubNames, subscriber: pubsub_v1.SubscriberClient, tmp_path: Path
) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text(f"{API_KEY}\n{OTHER_KEY}\n")
    settings = settings_for(pubsub_names, tmp_path / "data", api_keys_file=key_file, keys_poll_seconds=0.05)
    assert settings.api_keys == {API_KEY, OTHER_KEY}
    other = {"Authorization": f"Bearer {OTHER_KEY}"}
    publisher = EventPublisher(pubsub_names.topic, timeout_seconds=10)
    try:
        with RunningGateway(create_app(settings, publisher)) as gateway:
            assert post_events(gateway.port, [], other).status == 200
            replace_file(key_file, f"# {OTHER_KEY[:5]}… revoked\n{API_KEY}\n")
            poll(
                lambda: post_events(gateway.port, [], other).status,
                lambda status: status == 401,
                "revocation",
            )
            refused = post_events(gateway.port, [play()], other)
            assert (refused.status, refused.body) == (401, {"error": "invalid API key"})

            # A broken file is refused; the keys in force stay in force.
            replace_file(key_file, "changeme\n")
            poll(
                lambda: metric_samples(gateway.port),
                lambda samples: (
                    samples.get(("playledger_gateway_api_key_reloads_total", (("outcome", "refused"),))) == 1
                ),
                "refused reload",
            )
            marker = play()
            accepted = post_events(gateway.port, [marker])
            assert (accepted.status, accepted.body["accepted"]) == (200, 1)
            samples = metric_samples(gateway.port)
            assert samples[("playledger_gateway_api_keys", ())] == 1
            assert samples[("playledger_gateway_api_key_reloads_total", (("outcome", "applied"),))] == 1
    finally:
        publisher.close()
    [(events, _)] = pull_messages(subscriber, pubsub_names.royalties, 1)
    assert [event["event_id"] for event in events] == [marker["event_id"]]
