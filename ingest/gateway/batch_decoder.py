"""The gateway's fast path: a request body whose every event is valid, decoded in one pass.

Nearly every batch a client sends is valid throughout. ``decode_clean_batch`` decodes
such a body with msgspec straight into typed records, so that types, lengths, ranges,
enum symbols, territory codes, missing and unknown fields are checked in C while the
JSON is read, without building a dict per event first. The rules msgspec cannot express
(UUID form, blank identifiers, RFC 3339 timestamps) are then checked once per batch, on
all its values at a time, rather than once per event. What it returns is what
``schemas.validation.validate_event`` returns for each event (the converted event, in
schema order), stamped with ``received_at``.

It never explains anything. On a body that is not JSON, not ``{"events": [...]}``, or
that holds one event the contract might reject, it returns ``None`` and the gateway
takes the full path (orjson and ``validate_event``), which words every error of every
event. Declining a body the full path then accepts costs only time; accepting one the
full path would reject, or converting a value differently, would be a bug:
tests/ingest/test_batch_decoder.py holds it to that. Limits, symbols, codes and both
patterns come from ``schemas.validation``; which fields are required or nullable, their
types and "not blank" are restated here as msgspec types, so a rule changed in
``schemas.validation.CLIENT_FIELDS`` must be changed here too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime
from functools import cache
from typing import Annotated, Any, Literal

import msgspec

from schemas.validation import (
    BITRATES_KBPS,
    CANONICAL_UUID_PATTERN,
    CLIENT_FIELDS,
    MAX_ID_CHARS,
    MAX_MS_PLAYED,
    RFC3339_PATTERN,
    enum_symbols,
    rfc3339_to_utc,
    territory_codes,
)

__all__ = ["decode_clean_batch", "prepare_decoder"]


def _lines_of(pattern: re.Pattern[str]) -> re.Pattern[str]:
    """Matches newline-separated lines iff each line fully matches ``pattern`` (which matches no newline)."""
    return re.compile(f"(?:{pattern.pattern})(?:\n(?:{pattern.pattern}))*", pattern.flags)


def _all_match(lines: re.Pattern[str], values: list[str]) -> bool:
    """Whether every value fully matches, checked in one pass over the values joined by newlines.

    A value that holds a newline itself would split into lines that may each match (two
    ids in one value), so the text must have exactly one line per value.
    """
    text = "\n".join(values)
    return text.count("\n") == len(values) - 1 and lines.fullmatch(text) is not None


# The contract's own patterns, from schemas.validation, so there is one of each.
_EVENT_IDS = _lines_of(CANONICAL_UUID_PATTERN)
_TIMESTAMPS = _lines_of(RFC3339_PATTERN)


def _one_of(values: Iterable[object]) -> Any:
    """``Literal[...]`` of values known only at run time (from the schema)."""
    return Literal.__getitem__(tuple(values))


@cache
def _decoder() -> msgspec.json.Decoder[Any]:
    """A decoder for ``{"events": [...]}`` whose events carry exactly the contract's fields."""
    identifier = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_CHARS)]
    types: dict[str, Any] = {
        "event_id": str,  # the UUID form is checked per batch
        "user_id": identifier,  # blank ones are found per batch
        "track_id": identifier,
        "played_at": str,  # converted per batch, as validate_event converts it
        "ms_played": Annotated[int, msgspec.Meta(ge=0, le=MAX_MS_PLAYED)],
        "territory": _one_of(sorted(territory_codes())),
        "product": _one_of(enum_symbols("product")),
        "context": _one_of(enum_symbols("context")),
        "bitrate_kbps": _one_of(sorted(BITRATES_KBPS)),
        "offline": bool,
        "device": Annotated[str, msgspec.Meta(max_length=MAX_ID_CHARS)] | None,
    }
    if list(types) != list(CLIENT_FIELDS):
        raise RuntimeError(f"fast path fields {list(types)} are not the contract's {list(CLIENT_FIELDS)}")
    fields = [
        (name, kind) if CLIENT_FIELDS[name].required else (name, kind, None) for name, kind in types.items()
    ]
    # gc=False: the records hold only strings, numbers and None, never a cycle.
    play = msgspec.defstruct("CleanPlay", fields, forbid_unknown_fields=True, gc=False)
    body = msgspec.defstruct("CleanBatch", [("events", list[play])], forbid_unknown_fields=True)  # type: ignore[valid-type]
    return msgspec.json.Decoder(body)


def prepare_decoder() -> None:
    """Build the decoder now rather than at the first request.

    It reads the schema and the territory codes, and refuses a field table out of step
    with the contract's, so the gateway calls it when it starts.
    """
    _decoder()


def decode_clean_batch(body: bytes, received_at: datetime) -> list[dict[str, Any]] | None:
    """Every event of ``body`` converted and stamped with ``received_at``, or ``None``.

    ``None`` means the body may hold a problem: the caller must then parse and validate
    it the full way, which says what the problem is.
    """
    try:
        plays = _decoder().decode(body).events
    except (ValueError, RecursionError):  # msgspec's errors are ValueErrors, as is bad UTF-8
        return None
    if not plays:
        return []
    if not _all_match(_EVENT_IDS, [play.event_id for play in plays]):
        return None
    for identifiers in ([play.user_id for play in plays], [play.track_id for play in plays]):
        if any(map(str.isspace, identifiers)):
            return None
    played_at_texts = [play.played_at for play in plays]
    if not _all_match(_TIMESTAMPS, played_at_texts):
        return None
    try:
        played_ats = [rfc3339_to_utc(text) for text in played_at_texts]
    except (ValueError, OverflowError):
        return None
    asdict = msgspec.structs.asdict
    events = []
    for play, played_at in zip(plays, played_ats, strict=True):
        event = asdict(play)
        event["played_at"] = played_at
        event["received_at"] = received_at
        events.append(event)
    return events
