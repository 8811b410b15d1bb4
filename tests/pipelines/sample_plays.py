"""Play events and Pub/Sub messages for pipeline tests, made with the project's codec."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from apache_beam.io.gcp.pubsub import PubsubMessage

from schemas.codec import encode_batch

EPOCH = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def play(
    track_id: str = "T1",
    received_second: float = 10,
    ms_played: int = 120_000,
    territory: str = "SE",
    product: str = "premium",
    event_id: str | None = None,
) -> dict[str, Any]:
    """A valid decoded play event received ``received_second`` after EPOCH."""
    received_at = EPOCH + dt.timedelta(seconds=received_second)
    return {
        "event_id": event_id or str(uuid.uuid4()),
        "user_id": "u1",
        "track_id": track_id,
        "played_at": received_at - dt.timedelta(milliseconds=ms_played),
        "ms_played": ms_played,
        "territory": territory,
        "product": product,
        "context": "album",
        "bitrate_kbps": 160,
        "offline": False,
        "device": None,
        "received_at": received_at,
    }


def message(*events: dict[str, Any]) -> PubsubMessage:
    """One Pub/Sub message carrying ``events``, encoded with the project's codec."""
    batch = encode_batch(list(events), uuid.uuid4().hex)
    return PubsubMessage(batch.data, batch.attributes)
