"""Hypothesis strategies for plays the v1 contract accepts, as a client sends them (JSON values)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import strategies as st

from schemas.validation import BITRATES_KBPS, MAX_ID_CHARS, MAX_MS_PLAYED, enum_symbols

PRODUCTS = list(enum_symbols("product"))
CONTEXTS = list(enum_symbols("context"))
TERRITORIES = ["SE", "US", "GB", "BR", "JP", "DE", "NO", "IN", "ZA", "NZ", "AX", "ZW"]

identifiers = st.text(min_size=1, max_size=MAX_ID_CHARS).filter(lambda text: bool(text.strip()))
offsets = st.sampled_from(
    [
        UTC,
        timezone(timedelta(hours=1)),
        timezone(timedelta(hours=-7)),
        timezone(timedelta(hours=5, minutes=30)),
    ]
)


@st.composite
def rfc3339(draw: st.DrawFn) -> str:
    """An RFC 3339 date-time with an offset, ``Z`` for UTC at times, now and then in lower case."""
    moment = draw(st.datetimes(datetime(2000, 1, 1), datetime(2099, 12, 31), timezones=offsets))
    text = moment.isoformat()
    if draw(st.booleans()):
        text = text.replace("+00:00", "Z")
    return text.lower() if draw(st.integers(0, 9)) == 0 else text


@st.composite
def event_ids(draw: st.DrawFn) -> str:
    """A UUID in its canonical form, in either letter case."""
    event_id = str(uuid.UUID(int=draw(st.integers(0, 2**128 - 1))))
    return event_id.upper() if draw(st.booleans()) else event_id


@st.composite
def valid_plays(draw: st.DrawFn, ids: st.SearchStrategy[str] | None = None) -> dict[str, Any]:
    """A play the contract accepts, its ``event_id`` drawn from ``ids`` (default ``event_ids()``)."""
    event: dict[str, Any] = {
        "event_id": draw(ids if ids is not None else event_ids()),
        "user_id": draw(identifiers),
        "track_id": draw(identifiers),
        "played_at": draw(rfc3339()),
        "ms_played": draw(st.integers(0, MAX_MS_PLAYED)),
        "territory": draw(st.sampled_from(TERRITORIES)),
        "product": draw(st.sampled_from(PRODUCTS)),
        "context": draw(st.sampled_from(CONTEXTS)),
        "bitrate_kbps": draw(st.sampled_from(sorted(BITRATES_KBPS))),
        "offline": draw(st.booleans()),
    }
    device = draw(st.sampled_from(["absent", "null", "text"]))
    if device != "absent":
        event["device"] = None if device == "null" else draw(st.text(max_size=MAX_ID_CHARS))
    return event
