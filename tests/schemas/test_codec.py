"""The wire codec: round trips, refusals with reasons, and schema compatibility across versions."""

from __future__ import annotations

import datetime as dt
import io
import json
from typing import Any

import fastavro
import pytest

from schemas.codec import (
    ATTR_BATCH_ID,
    ATTR_EVENT_COUNT,
    ATTR_SCHEMA_VERSION,
    SCHEMA_DIR,
    SCHEMA_VERSION,
    DecodeError,
    decode_batch,
    encode_batch,
    load_schema,
)

NOW = dt.datetime(2026, 11, 28, 7, 30, 15, 123456, tzinfo=dt.UTC)


def event(index: int = 0, **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event_id": f"6f1c2a53-0b8e-4a3c-9e55-{index:012d}",
        "user_id": f"user-{index}",
        "track_id": "T00042",
        "played_at": NOW - dt.timedelta(minutes=3),
        "ms_played": 181_000 + index,
        "territory": "SE",
        "product": "premium",
        "context": "playlist",
        "bitrate_kbps": 320,
        "offline": index % 2 == 1,
        "device": None if index % 3 else "android",
        "received_at": NOW,
    }
    base.update(changes)
    return base


def released_versions() -> list[int]:
    paths = (SCHEMA_DIR / "versions").glob("play_event.v*.avsc")
    return sorted(int(path.stem.split(".v")[1]) for path in paths)


def test_a_batch_round_trips_exactly() -> None:
    events = [event(i) for i in range(500)]
    batch = encode_batch(events, "batch-1")
    assert batch.attributes == {
        ATTR_SCHEMA_VERSION: str(SCHEMA_VERSION),
        ATTR_BATCH_ID: "batch-1",
        ATTR_EVENT_COUNT: "500",
    }
    assert decode_batch(batch.data, batch.attributes) == events


def test_an_empty_batch_round_trips() -> None:
    batch = encode_batch([], "empty")
    assert decode_batch(batch.data, batch.attributes) == []


@pytest.mark.parametrize(
    ("data", "attributes", "reason"),
    [
        (None, {}, "missing attribute 'schema_version'"),
        (None, {ATTR_SCHEMA_VERSION: "one"}, "is not an integer"),
        (None, {ATTR_SCHEMA_VERSION: "99"}, "unknown schema version 99"),
        (None, {ATTR_SCHEMA_VERSION: "0"}, "unknown schema version 0"),
        (b"\x07garbage", {ATTR_SCHEMA_VERSION: "1"}, "payload is not a v1 event batch"),
        (b"extra", {ATTR_SCHEMA_VERSION: "1"}, "trailing bytes"),
        (None, {ATTR_SCHEMA_VERSION: "1", ATTR_EVENT_COUNT: "3"}, "event_count=3 but payload holds 2"),
    ],
)
def test_undecodable_messages_are_refused_with_a_reason(
    data: bytes | None, attributes: dict[str, str], reason: str
) -> None:
    good = encode_batch([event(0), event(1)], "b")
    payload = good.data if data is None else (good.data + data if data == b"extra" else data)
    with pytest.raises(DecodeError, match=reason):
        decode_batch(payload, attributes)


def test_the_current_schema_is_the_latest_released_version() -> None:
    """Changing play_event.avsc needs a new versions/ file and SCHEMA_VERSION bump."""
    versions = released_versions()
    assert versions == list(range(1, SCHEMA_VERSION + 1))
    current = json.loads((SCHEMA_DIR / "play_event.avsc").read_text())
    assert current == load_schema(SCHEMA_VERSION)


def _project(record: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    return {field["name"]: record[field["name"]] for field in schema["fields"] if field["name"] in record}


def _write(record: dict[str, Any], schema: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(schema), record)
    return buffer.getvalue()


@pytest.mark.parametrize("version", released_versions())
def test_every_released_version_stays_readable_both_ways(version: int) -> None:
    """Backward: the current reader reads old messages. Forward: an old reader reads new ones."""
    old, current = load_schema(version), load_schema()
    sample = event(7, device="ios")
    old_bytes = _write(_project(sample, old), old)
    read_by_current = fastavro.schemaless_reader(
        io.BytesIO(old_bytes), fastavro.parse_schema(old), fastavro.parse_schema(current)
    )
    assert isinstance(read_by_current, dict)
    for name in _project(sample, old):
        assert read_by_current[name] == sample[name], name
    new_bytes = _write(_project(sample, current), current)
    read_by_old = fastavro.schemaless_reader(
        io.BytesIO(new_bytes), fastavro.parse_schema(current), fastavro.parse_schema(old)
    )
    assert read_by_old == _project(sample, old)


def test_a_breaking_change_would_be_caught() -> None:
    """The compatibility check fails for a new required field without a default."""
    current = load_schema()
    broken = json.loads(json.dumps(current))
    broken["fields"].append({"name": "label_id", "type": "string"})
    old_bytes = _write(_project(event(1), current), current)
    with pytest.raises(Exception, match="label_id"):
        fastavro.schemaless_reader(
            io.BytesIO(old_bytes), fastavro.parse_schema(current), fastavro.parse_schema(broken)
        )
