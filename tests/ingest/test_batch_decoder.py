"""The gateway's fast path never disagrees with the full path it short-cuts.

For any body, ``decode_clean_batch`` either declines (``None``) or returns exactly what
parsing the body and running ``validate_event`` on every event gives, with nothing
rejected; and it takes the valid bodies clients actually send.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from client_events import play
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from play_strategies import valid_plays

from ingest.gateway.app import BodyError, _events_of, _parse_json, read_batch, validate_batch
from ingest.gateway.batch_decoder import decode_clean_batch
from schemas.validation import CLIENT_FIELDS, MAX_ID_CHARS, MAX_MS_PLAYED

RECEIVED_AT = datetime(2026, 11, 28, 6, 0, 5, 250_000, tzinfo=UTC)
MAX_EVENTS = 500
EQUIVALENCE = settings(
    max_examples=400,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def full_path(body: bytes) -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
    """What the gateway's full path makes of ``body``; ``None`` if it is not a batch of events."""
    payload, problem = _parse_json(body)
    if problem is not None:
        return None
    events = _events_of(payload)
    if isinstance(events, str):
        return None
    return validate_batch(events, RECEIVED_AT)


def assert_agrees_with_the_full_path(body: bytes) -> list[dict[str, Any]] | None:
    fast = decode_clean_batch(body, RECEIVED_AT)
    if fast is not None:
        full = full_path(body)
        assert full is not None, body
        accepted, rejected = full
        assert rejected == [], (body, rejected)
        assert fast == accepted
        for fast_event, full_event in zip(fast, accepted, strict=True):
            assert list(fast_event) == list(full_event)
            for name, value in fast_event.items():
                assert type(value) is type(full_event[name]), name
            assert fast_event["played_at"].tzinfo is full_event["played_at"].tzinfo
    return fast


def body_of(events: list[Any], ascii_only: bool = True) -> bytes:
    """The JSON body, with non-ASCII text escaped or as raw UTF-8 (lone surrogates as CESU-8)."""
    return json.dumps({"events": events}, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


# ---- the plays the contract rejects, some only just -----------------------------------------

NEAR_MISSES: dict[str, list[Any]] = {
    "event_id": [
        "0b0d8d38-4c3e-4b8a-9a86-5f3f1c4e2a10\n",
        # Two ids in one value: joined with the others, each line would be a UUID.
        "0b0d8d38-4c3e-4b8a-9a86-5f3f1c4e2a10\n0b0d8d38-4c3e-4b8a-9a86-5f3f1c4e2a11",
        "0b0d8d38-4c3e-4b8a-9a86-5f3f1c4e2a1",
        "0b0d8d384c3e4b8a9a865f3f1c4e2a10",
        "0b0d8d38-4c3e-4b8a-9a86-5f3f1c4e2a1g",
        "{0b0d8d38-4c3e-4b8a-9a86-5f3f1c4e2a10}",
        "",
        None,
        42,
    ],
    "user_id": [
        "",
        " ",
        "\t\n",
        "\u00a0",
        "\u2003\u3000",
        "\x1c",
        "u" * (MAX_ID_CHARS + 1),
        "bad\ud800",
        None,
    ],
    "track_id": ["", "   ", "\u2028", "t" * (MAX_ID_CHARS + 1), "\udfff", ["t"]],
    "played_at": [
        "2026-11-28T07:00:00",
        "2026-11-28T07:00:00Z\n2026-11-28T07:00:01Z",  # two times in one value
        "2026-11-28 07:00:00Z",
        "2026-11-28T07:00:00+0100",
        "2026-11-28T23:59:60Z",
        "2026-11-28T24:00:00Z",
        "2026-02-30T07:00:00Z",
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59-01:00",
        "0000-01-01T00:00:00Z",
        "2026-11-28T07:00:00+24:00",
        "2026-11-28T07:00:00Z\n",
        "\u0662026-11-28T07:00:00Z",
        "2026-11-28T07:00:00.Z",
        1_764_309_600,
        None,
    ],
    "ms_played": [-1, MAX_MS_PLAYED + 1, 2**64, -(2**63) - 1, 31_000.0, -0.0, "31000", True, None],
    "territory": ["se", "XX", "SWE", "", "SE ", 752, None],
    "product": ["Premium", "family", "", None, 1],
    "context": ["car", "Playlist", None],
    "bitrate_kbps": [128, 160.0, "160", True, None, 2**70],
    "offline": [0, 1, "false", None],
    "device": ["d" * (MAX_ID_CHARS + 1), "\ud800", 1, True, ["x"], {"os": "ios"}],
}


@st.composite
def broken_plays(draw: st.DrawFn) -> Any:
    kind = draw(st.sampled_from(["near miss", "near miss", "near miss", "drop", "extra", "not an object"]))
    if kind == "not an object":
        return draw(st.none() | st.booleans() | st.integers() | st.text(max_size=5) | st.just([]))
    event: dict[str, Any] = draw(valid_plays())
    if kind == "drop":
        event.pop(draw(st.sampled_from(sorted(CLIENT_FIELDS))), None)
    elif kind == "extra":
        event[draw(st.sampled_from(["received_at", "skipped", "Event_id", ""]))] = draw(st.none() | st.text())
    else:
        field = draw(st.sampled_from(sorted(NEAR_MISSES)))
        event[field] = draw(st.sampled_from(NEAR_MISSES[field]))
    return event


@pytest.mark.parametrize(
    ("field", "value"), [(field, value) for field, values in NEAR_MISSES.items() for value in values]
)
def test_each_near_miss_is_left_to_the_full_path(field: str, value: Any) -> None:
    body = body_of([play(), play(**{field: value})])
    assert assert_agrees_with_the_full_path(body) is None
    full = full_path(body)
    assert full is not None and [entry["index"] for entry in full[1]] == [1]


@pytest.mark.parametrize(
    "changes",
    [
        {"played_at": "2026-11-28T07:00:00.1234567Z"},  # both keep the first six digits
        {"played_at": "2026-11-28T07:00:00.123456789+01:00"},
        {"played_at": "2026-11-28t07:00:00z"},
        {"played_at": "2026-11-28T07:00:00-00:00"},
        {"event_id": "0B0D8D38-4C3E-4B8A-9A86-5F3F1C4E2A10"},
        {"user_id": " padded\t", "track_id": "曲-1", "device": ""},
        {
            "user_id": "u" * MAX_ID_CHARS,
            "track_id": "\U0001f600" * MAX_ID_CHARS,
            "device": "d" * MAX_ID_CHARS,
        },
        {"ms_played": 0, "device": None},
        {"ms_played": MAX_MS_PLAYED, "device": ...},
    ],
)
def test_odd_but_valid_plays_take_the_fast_path(changes: dict[str, Any]) -> None:
    assert assert_agrees_with_the_full_path(body_of([play(**changes)])) is not None


@EQUIVALENCE
@given(events=st.lists(valid_plays(), max_size=8), ascii_only=st.booleans())
def test_valid_batches_take_the_fast_path(events: list[dict[str, Any]], ascii_only: bool) -> None:
    assert assert_agrees_with_the_full_path(body_of(events, ascii_only)) is not None


@EQUIVALENCE
@given(events=st.lists(valid_plays() | broken_plays(), min_size=1, max_size=6), ascii_only=st.booleans())
def test_the_fast_path_never_accepts_what_the_full_path_rejects(events: list[Any], ascii_only: bool) -> None:
    body = body_of(events, ascii_only)
    fast = assert_agrees_with_the_full_path(body)
    full = full_path(body)
    if full is None or full[1]:
        assert fast is None


@EQUIVALENCE
@given(body=st.binary(max_size=300))
def test_arbitrary_bytes_never_break_the_fast_path(body: bytes) -> None:
    # Random bytes are almost never a batch: this holds that the fast path declines them
    # without raising. Damaged batches, below, are where it must decide.
    assert_agrees_with_the_full_path(body)


@st.composite
def damaged_bodies(draw: st.DrawFn) -> bytes:
    """A valid batch's body with one to three bytes ranges replaced, inserted or deleted."""
    body = bytearray(body_of(draw(st.lists(valid_plays(), min_size=1, max_size=3)), draw(st.booleans())))
    for _ in range(draw(st.integers(1, 3))):
        start = draw(st.integers(0, len(body)))
        stop = draw(st.integers(start, min(len(body), start + 4)))
        body[start:stop] = draw(
            st.binary(max_size=4) | st.sampled_from([b'"', b"\\", b"\\n", b" ", b"0", b"-"])
        )
    return bytes(body)


@EQUIVALENCE
@given(body=damaged_bodies())
def test_damaged_batches_never_take_the_fast_path_wrongly(body: bytes) -> None:
    assert_agrees_with_the_full_path(body)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"[]",
        b'{"events": {}}',
        b'{"events": [], "extra": 1}',
        b'{"Events": []}',
        b'{"events": [NaN]}',
        b'\xef\xbb\xbf{"events": []}',
        b'{"events": ["\xff"]}',
        b'{"events": [' + b"[" * 5000 + b"]" * 5000 + b"]}",
        # Duplicate keys: JSON parsers keep the last, and so must the fast path.
        body_of([play()])[:-3] + b', "ms_played": -1}]}',
        body_of([play()])[:-3] + b', "ms_played": 1}]}',
        body_of([play()])[:-2] + b'], "events": []}',
        body_of([play()]).replace(b'"track-7"', b'"track\\u0000"'),
        body_of([play()]).replace(b'"track-7"', b'"\\ud83d\\ude00"'),
        body_of([play()]).replace(b'"track-7"', b'"\\ud83d"'),
        body_of([play()]).replace(b"31000", b"3.1e4"),
        body_of([play()]).replace(b"31000", b"-0"),
    ],
)
def test_edge_bodies_agree(body: bytes) -> None:
    assert_agrees_with_the_full_path(body)


def test_read_batch_takes_the_same_decisions_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    valid = play()
    with monkeypatch.context() as patch:
        # A clean body never reaches the full path: the fast path answers it alone.
        patch.setattr("ingest.gateway.app.validate_batch", lambda *_: pytest.fail("took the full path"))
        assert read_batch(body_of([valid, play()]), RECEIVED_AT, MAX_EVENTS)[1] == []
    accepted, rejected = read_batch(body_of([valid, play(ms_played=-1)]), RECEIVED_AT, MAX_EVENTS)
    assert [event["event_id"] for event in accepted] == [valid["event_id"]]
    assert [(entry["index"], entry["errors"]) for entry in rejected] == [
        (1, ["ms_played: must be between 0 and 86400000, got -1"])
    ]
    accepted, rejected = read_batch(body_of([valid]), RECEIVED_AT, MAX_EVENTS)
    assert rejected == [] and accepted[0]["received_at"] is RECEIVED_AT
    for body, status, message in [
        (b"{", 400, "body is not valid JSON"),
        (b"[]", 400, "body must be a JSON object"),
        (body_of([valid] * 3), 413, "too many events: 3, at most 2 per request"),
    ]:
        with pytest.raises(BodyError) as caught:
            read_batch(body, RECEIVED_AT, 2)
        assert caught.value.status == status and caught.value.message.startswith(message)
