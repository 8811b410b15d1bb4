"""The one codec for play events on the wire.

A Pub/Sub message carries a batch of events: the Avro binary encoding of an array of
``PlayEvent`` records (no container header), with attributes that name the schema
version the batch was written with and the batch id. A reader resolves the writer's
version against the current schema, so messages written by an older gateway stay
readable after the schema evolves.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, cast

import fastavro

__all__ = [
    "ATTR_BATCH_ID",
    "ATTR_EVENT_COUNT",
    "ATTR_KIND",
    "ATTR_SCHEMA_VERSION",
    "KIND_HEARTBEAT",
    "SCHEMA_VERSION",
    "DecodeError",
    "EncodedBatch",
    "decode_batch",
    "encode_batch",
    "event_field_names",
    "load_schema",
]

SCHEMA_DIR = Path(__file__).resolve().parent
SCHEMA_VERSION = 1

ATTR_SCHEMA_VERSION = "schema_version"
ATTR_BATCH_ID = "batch_id"
ATTR_EVENT_COUNT = "event_count"
ATTR_KIND = "kind"
KIND_HEARTBEAT = "heartbeat"


class DecodeError(ValueError):
    """A message that cannot be turned into play events; the message says why."""


@dataclass(frozen=True)
class EncodedBatch:
    """One Pub/Sub message: payload and attributes."""

    data: bytes
    attributes: dict[str, str]


def load_schema(version: int | None = None) -> dict[str, Any]:
    """The raw ``PlayEvent`` schema: the current one, or a released version."""
    if version is None:
        path = SCHEMA_DIR / "play_event.avsc"
    else:
        path = SCHEMA_DIR / "versions" / f"play_event.v{version}.avsc"
    if not path.is_file():
        raise DecodeError(f"unknown schema version {version}")
    schema: dict[str, Any] = json.loads(path.read_text())
    return schema


@cache
def _array_schema(version: int | None, timestamps_as_micros: bool = False) -> Any:
    items = load_schema(version)
    if timestamps_as_micros:
        # Logical types do not change the encoding: without them a timestamp-micros
        # field decodes as the plain long it is on the wire, with no datetime made.
        for field in items["fields"]:
            if isinstance(field["type"], dict) and field["type"].get("logicalType") == "timestamp-micros":
                field["type"] = field["type"]["type"]
    return fastavro.parse_schema({"type": "array", "items": items})


def event_field_names() -> tuple[str, ...]:
    """Field names of the current ``PlayEvent`` schema, in order."""
    return tuple(field["name"] for field in load_schema()["fields"])


def encode_batch(events: Sequence[Mapping[str, Any]], batch_id: str) -> EncodedBatch:
    """Encode validated events (with ``received_at``) as one message."""
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, _array_schema(None), list(events))
    return EncodedBatch(
        data=buffer.getvalue(),
        attributes={
            ATTR_SCHEMA_VERSION: str(SCHEMA_VERSION),
            ATTR_BATCH_ID: batch_id,
            ATTR_EVENT_COUNT: str(len(events)),
        },
    )


def decode_batch(
    data: bytes, attributes: Mapping[str, str], *, timestamps_as_micros: bool = False
) -> list[dict[str, Any]]:
    """Decode one message into event dicts; raise ``DecodeError`` saying why not.

    Timestamps are aware UTC datetimes, or with ``timestamps_as_micros`` the integer
    microseconds since the epoch they are on the wire (cheaper, for columnar readers).
    """
    raw_version = attributes.get(ATTR_SCHEMA_VERSION)
    if raw_version is None:
        raise DecodeError(f"missing attribute {ATTR_SCHEMA_VERSION!r}")
    try:
        version = int(raw_version)
    except ValueError:
        raise DecodeError(f"attribute {ATTR_SCHEMA_VERSION!r} is not an integer: {raw_version!r}") from None
    if version < 1 or version > SCHEMA_VERSION:
        raise DecodeError(f"unknown schema version {version}")
    buffer = io.BytesIO(data)
    try:
        events = cast(
            list[dict[str, Any]],
            fastavro.schemaless_reader(
                buffer,
                _array_schema(version, timestamps_as_micros),
                # The current version needs no resolution, which costs a third of the time.
                None if version == SCHEMA_VERSION else _array_schema(None, timestamps_as_micros),
            ),
        )
    except Exception as error:  # fastavro raises several types for corrupt input
        raise DecodeError(f"payload is not a v{version} event batch: {error!r}") from None
    if buffer.tell() != len(data):
        raise DecodeError(f"{len(data) - buffer.tell()} trailing bytes after the event batch")
    expected = attributes.get(ATTR_EVENT_COUNT)
    if expected is not None and expected != str(len(events)):
        raise DecodeError(f"attribute {ATTR_EVENT_COUNT}={expected} but payload holds {len(events)} events")
    return events
