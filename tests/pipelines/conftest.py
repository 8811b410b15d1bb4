"""A tiny hand-made catalog, so expected amounts can be worked out by hand."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import pytest
from apache_beam.io.gcp.pubsub import PubsubMessage

from schemas.codec import encode_batch

EPOCH = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


@pytest.fixture
def tiny_catalog(tmp_path: Path) -> Path:
    """T1: RH_A 66.67 % / RH_B 33.33 %; T2: RH_B alone. Rates: SE premium 1000, fallback 500/100."""
    directory = tmp_path / "catalog"
    directory.mkdir()
    (directory / "tracks.csv").write_text(
        "track_id,title,artist,duration_ms\nT1,One,Band,200000\nT2,Two,Band,180000\n"
    )
    (directory / "rights_holders.csv").write_text(
        "rights_holder_id,name,role\nRH_A,Label A,label\nRH_B,Publisher B,publisher\n"
    )
    (directory / "splits.csv").write_text(
        "track_id,rights_holder_id,share_bps\nT1,RH_A,6667\nT1,RH_B,3333\nT2,RH_B,10000\n"
    )
    (directory / "rates.csv").write_text(
        "territory,product,rate_micros,currency\n"
        "SE,premium,1000,USD\n*,premium,500,USD\n*,free,100,USD\n"
    )
    return directory


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
