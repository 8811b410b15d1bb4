"""The v1 field rules, as the gateway applies them to JSON and the pipeline to Avro."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from client_events import play as client_event

from schemas.codec import decode_batch, encode_batch, event_field_names
from schemas.validation import CLIENT_FIELDS, check_decoded_event, validate_event

EVENT_ID = "0b0d8d38-4c3e-4b8a-9a86-5f3f1c4e2a10"
NOT_RFC3339 = "played_at: must be an RFC 3339 date-time with an offset"
CONTEXTS = "album|playlist|daily_mix|radio|search|other"


def play(**changes: Any) -> dict[str, Any]:
    """A valid client event with a fixed event_id, some fields changed (``...`` removes one)."""
    return client_event(**{"event_id": EVENT_ID, **changes})


def errors_of(raw: object) -> list[str]:
    event, errors = validate_event(raw)
    assert (event is None) == bool(errors)
    return errors


def test_rule_table_covers_the_schema_fields_except_received_at() -> None:
    assert set(CLIENT_FIELDS) == set(event_field_names()) - {"received_at"}


def test_a_valid_event_is_converted_for_the_codec() -> None:
    event, errors = validate_event(play())
    assert errors == []
    assert event == {
        **play(),
        "played_at": datetime(2026, 11, 28, 6, 0, tzinfo=UTC),
    }
    assert list(event) == [name for name in event_field_names() if name != "received_at"]


@pytest.mark.parametrize(
    ("played_at", "expected"),
    [
        ("2026-11-28T07:00:00+01:00", datetime(2026, 11, 28, 6, 0, tzinfo=UTC)),
        ("2026-11-28T06:00:00Z", datetime(2026, 11, 28, 6, 0, tzinfo=UTC)),
        ("2026-11-28t06:00:00z", datetime(2026, 11, 28, 6, 0, tzinfo=UTC)),
        ("2026-11-27T22:30:00.123456-07:30", datetime(2026, 11, 28, 6, 0, 0, 123456, tzinfo=UTC)),
        ("2026-11-28T06:00:00.5Z", datetime(2026, 11, 28, 6, 0, 0, 500000, tzinfo=UTC)),
    ],
)
def test_played_at_becomes_aware_utc(played_at: str, expected: datetime) -> None:
    event, errors = validate_event(play(played_at=played_at))
    assert errors == []
    assert event is not None
    assert event["played_at"] == expected
    assert event["played_at"].utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("changes", "error_start"),
    [
        ({"event_id": "not-a-uuid"}, "event_id: must be a UUID in canonical form"),
        ({"event_id": EVENT_ID.replace("-", "")}, "event_id: must be a UUID in canonical form"),
        ({"event_id": "{" + EVENT_ID + "}"}, "event_id: must be a UUID in canonical form"),
        ({"event_id": "a" * 65}, "event_id: must be at most 64 characters, got 65"),
        ({"event_id": 42}, "event_id: must be a string, got number"),
        ({"user_id": ""}, "user_id: must not be empty"),
        ({"user_id": "   "}, "user_id: must not be empty"),
        ({"user_id": "u" * 129}, "user_id: must be at most 128 characters, got 129"),
        ({"user_id": None}, "user_id: must be a string, got null"),
        ({"track_id": ["t"]}, "track_id: must be a string, got array"),
        ({"track_id": "bad\ud800"}, "track_id: must be valid Unicode text"),
        ({"played_at": "2026-11-28T07:00:00"}, NOT_RFC3339),
        ({"played_at": "2026-11-28"}, NOT_RFC3339),
        ({"played_at": "2026-11-28 07:00:00Z"}, NOT_RFC3339),
        ({"played_at": "20261128T070000Z"}, NOT_RFC3339),
        ({"played_at": "2026-11-28T07:00:00+0100"}, NOT_RFC3339),
        ({"played_at": "2026-02-30T07:00:00Z"}, "played_at: is not a valid date-time"),
        ({"played_at": "2026-11-28T25:00:00Z"}, "played_at: is not a valid date-time"),
        ({"played_at": 1_764_309_600}, "played_at: must be an RFC 3339 date-time string, got number"),
        ({"ms_played": -1}, "ms_played: must be between 0 and 86400000, got -1"),
        ({"ms_played": 86_400_001}, "ms_played: must be between 0 and 86400000, got 86400001"),
        ({"ms_played": 31_000.0}, "ms_played: must be an integer, got number"),
        ({"ms_played": "31000"}, "ms_played: must be an integer, got string"),
        ({"ms_played": True}, "ms_played: must be an integer, got boolean"),
        ({"territory": "se"}, "territory: must be upper case: 'SE', not 'se'"),
        ({"territory": "XX"}, "territory: must be an ISO 3166-1 alpha-2 country code, got 'XX'"),
        ({"territory": "SWE"}, "territory: must be an ISO 3166-1 alpha-2 country code, got 'SWE'"),
        ({"territory": 752}, "territory: must be a string, got number"),
        ({"product": "family"}, "product: must be one of free|premium, got 'family'"),
        ({"product": "Premium"}, "product: must be one of free|premium, got 'Premium'"),
        ({"context": "car"}, f"context: must be one of {CONTEXTS}, got 'car'"),
        ({"context": None}, "context: must be a string, got null"),
        ({"bitrate_kbps": 128}, "bitrate_kbps: must be one of 96|160|320, got 128"),
        ({"bitrate_kbps": "160"}, "bitrate_kbps: must be an integer, got string"),
        ({"bitrate_kbps": True}, "bitrate_kbps: must be an integer, got boolean"),
        ({"offline": 0}, "offline: must be a boolean, got number"),
        ({"offline": "false"}, "offline: must be a boolean, got string"),
        ({"device": "d" * 129}, "device: must be at most 128 characters, got 129"),
        ({"device": {"os": "ios"}}, "device: must be a string, got object"),
    ],
)
def test_each_rule_rejects_with_a_field_level_reason(changes: dict[str, Any], error_start: str) -> None:
    errors = errors_of(play(**changes))
    assert len(errors) == 1, errors
    assert errors[0].startswith(error_start), errors


@pytest.mark.parametrize("field", [name for name, rule in CLIENT_FIELDS.items() if rule.required])
def test_missing_required_field(field: str) -> None:
    assert errors_of(play(**{field: ...})) == [f"{field}: required"]


@pytest.mark.parametrize("device", [..., None, "", "web"])
def test_device_is_optional(device: object) -> None:
    event, errors = validate_event(play(device=device))
    assert errors == []
    assert event is not None
    assert event["device"] == (None if device is ... else device)


def test_boundaries_are_inclusive() -> None:
    assert errors_of(play(ms_played=0)) == []
    assert errors_of(play(ms_played=86_400_000)) == []
    for bitrate in (96, 160, 320):
        assert errors_of(play(bitrate_kbps=bitrate)) == []
    assert errors_of(play(event_id=EVENT_ID.upper())) == []
    assert errors_of(play(user_id="u" * 128, track_id="t" * 128, device="d" * 128)) == []
    assert errors_of(play(user_id="björk-fan", track_id="曲-1")) == []


def test_unknown_fields_and_received_at_are_rejected() -> None:
    assert errors_of(play(skipped=True, received_at="2026-11-28T07:00:00Z")) == [
        "skipped: unknown field",
        "received_at: is set by the gateway and must not be sent",
    ]


def test_every_error_of_one_event_is_collected() -> None:
    raw = play(
        event_id="nope",
        user_id=...,
        played_at="yesterday",
        ms_played=-5,
        territory="gb",
        product="gold",
        bitrate_kbps=128,
        offline="no",
        extra=1,
    )
    assert errors_of(raw) == [
        "event_id: must be a UUID in canonical form, like 0b0d8d38-4c3e-4b8a-9a86-5f3f1c4e2a10",
        "user_id: required",
        "played_at: must be an RFC 3339 date-time with an offset, like 2026-11-28T07:00:00+01:00 or "
        "2026-11-28T06:00:00Z, got 'yesterday'",
        "ms_played: must be between 0 and 86400000, got -5",
        "territory: must be upper case: 'GB', not 'gb'",
        "product: must be one of free|premium, got 'gold'",
        "bitrate_kbps: must be one of 96|160|320, got 128",
        "offline: must be a boolean, got string",
        "extra: unknown field",
    ]


@pytest.mark.parametrize(
    ("raw", "kind"), [([play()], "array"), ("event", "string"), (None, "null"), (7, "number")]
)
def test_an_event_that_is_not_an_object_gets_one_error(raw: object, kind: str) -> None:
    assert errors_of(raw) == [f"event: must be a JSON object, got {kind}"]


def decoded(**changes: Any) -> dict[str, Any]:
    """A valid event as the pipeline sees it after Avro decoding, with changes."""
    event, errors = validate_event(play())
    assert event is not None, errors
    event["received_at"] = datetime(2026, 11, 28, 6, 0, 5, tzinfo=UTC)
    batch = encode_batch([event], "batch-1")
    [round_tripped] = decode_batch(batch.data, batch.attributes)
    round_tripped.update(changes)
    return round_tripped


def test_check_decoded_event_accepts_a_valid_round_tripped_event() -> None:
    assert check_decoded_event(decoded()) == []
    assert check_decoded_event(decoded(device=None)) == []


def test_check_decoded_event_applies_the_same_rules() -> None:
    # Avro holds all of these; only the contract's rules say they are wrong.
    event = decoded(
        event_id="not-a-uuid",
        user_id="",
        ms_played=-1,
        territory="se",
        bitrate_kbps=128,
        played_at=datetime(2026, 11, 28, 6, 0),
    )
    assert check_decoded_event(event) == [
        "event_id: must be a UUID in canonical form, like 0b0d8d38-4c3e-4b8a-9a86-5f3f1c4e2a10",
        "user_id: must not be empty or blank",
        "played_at: must carry a time zone offset",
        "ms_played: must be between 0 and 86400000, got -1",
        "territory: must be upper case: 'SE', not 'se'",
        "bitrate_kbps: must be one of 96|160|320, got 128",
    ]


def test_check_decoded_event_accepts_any_offset_and_reports_missing_fields() -> None:
    cet = timezone(timedelta(hours=1))
    assert check_decoded_event(decoded(played_at=datetime(2026, 11, 28, 7, 0, tzinfo=cet))) == []
    event = decoded()
    del event["track_id"]
    del event["device"]
    assert check_decoded_event(event) == ["track_id: required"]
