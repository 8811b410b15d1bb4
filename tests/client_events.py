"""Play events as a client sends them to the gateway (JSON shapes), for tests."""

from __future__ import annotations

import uuid
from typing import Any


def play(**changes: Any) -> dict[str, Any]:
    """A valid client event with a fresh event_id; ``...`` removes a field."""
    event: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "user_id": "user-42",
        "track_id": "track-7",
        "played_at": "2026-11-28T07:00:00+01:00",
        "ms_played": 31_000,
        "territory": "SE",
        "product": "premium",
        "context": "playlist",
        "bitrate_kbps": 160,
        "offline": False,
        "device": "android-14",
    }
    event.update(changes)
    return {name: value for name, value in event.items() if value is not ...}
