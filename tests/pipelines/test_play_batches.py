"""Play events as Arrow batches: decoding, validation, keys and fingerprints, column-wise."""

from __future__ import annotations

import datetime as dt
import io
import uuid
from typing import Any

import apache_beam as beam
import fastavro
import pyarrow as pa
import pytest
from apache_beam.io.gcp.pubsub import PubsubMessage
from hypothesis import given, settings
from hypothesis import strategies as st
from sample_plays import EPOCH, message, play

from pipelines.transforms.play_batches import (
    PLAY_SCHEMA,
    ArrowBatchCoder,
    ArrowTableCoder,
    content_fingerprints,
    decode_plays,
    event_keys,
    shard_of,
    split_by_period,
)
from schemas.codec import DecodeError, _array_schema, decode_batch
from schemas.validation import check_decoded_event


def decoded(msg: PubsubMessage) -> Any:
    return decode_plays(msg.data, dict(msg.attributes))


ODD_TEXT = st.one_of(
    st.sampled_from(["", " ", "  \t", "\x1c", "\x1c\x1d", "é", "ünïcødé", "a\x00b", "x" * 128, "x" * 129]),
    st.text(max_size=140),
)
"""Blank, long, non-ASCII and control-character text: valid for some rules, not others."""

VALID = {
    "event_id": st.one_of(st.uuids().map(str), st.uuids().map(lambda u: str(u).upper())),
    "user_id": st.from_regex(r"user-[0-9]{1,5}", fullmatch=True),
    "track_id": st.sampled_from(["T1", "T2", "T3"]),
    "ms_played": st.integers(0, 86_400_000),
    "territory": st.sampled_from(["SE", "US", "GB", "DE"]),
    "product": st.sampled_from(["free", "premium"]),
    "context": st.sampled_from(["album", "playlist", "radio", "other"]),
    "bitrate_kbps": st.sampled_from([96, 160, 320]),
    "offline": st.booleans(),
    "device": st.one_of(st.none(), st.sampled_from(["iPhone 15", "Pixel 8", "web"])),
}
ODD = {
    "event_id": st.one_of(
        ODD_TEXT,
        st.sampled_from(["0b0d8d38-4c3e-4b8a-9a86-5f3f1c4e2a1g", "0b0d8d384c3e4b8a9a865f3f1c4e2a10"]),
    ),
    "user_id": ODD_TEXT,
    "track_id": ODD_TEXT,
    "ms_played": st.sampled_from([-1, 86_400_001, -(2**40), 2**40]),
    "territory": st.sampled_from(["se", "XX", "", "USA", "ÅÄ"]),
    "bitrate_kbps": st.sampled_from([0, 128, -1]),
    "device": ODD_TEXT,
}


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    """A valid event with none, one or two fields given odd values."""
    event = {name: draw(strategy) for name, strategy in VALID.items()}
    for name in draw(st.lists(st.sampled_from(sorted(ODD)), max_size=2, unique=True)):
        event[name] = draw(ODD[name])
    return event


@settings(max_examples=150, deadline=None)
@given(st.lists(events(), min_size=1, max_size=12))
def test_column_validation_agrees_with_the_contract_rules_event_by_event(raw: list[dict[str, Any]]) -> None:
    sent = [
        dict(event, played_at=EPOCH - dt.timedelta(seconds=index), received_at=EPOCH)
        for index, event in enumerate(raw)
    ]
    msg = message(*sent)
    plays = decoded(msg)
    expected_valid = []
    expected_invalid = []
    for event in decode_batch(msg.data, dict(msg.attributes)):
        errors = check_decoded_event(event)
        if errors:
            expected_invalid.append((event, errors))
        else:
            expected_valid.append(event)
    assert plays.valid.schema == PLAY_SCHEMA
    assert plays.valid.to_pylist() == expected_valid  # same rows, same order
    assert plays.invalid == expected_invalid


def test_a_timestamp_outside_any_date_is_an_undecodable_message() -> None:
    # On the wire a timestamp is any long; past year 9999 no datetime holds it, and the
    # whole message is refused as the datetime-making decoder refuses it.
    raw = dict(play(), played_at=0, received_at=253_402_300_800_000_000)
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, _array_schema(None, timestamps_as_micros=True), [raw])
    attributes = {"schema_version": "1", "batch_id": "b-far"}
    with pytest.raises(DecodeError, match="no date-time"):
        decode_plays(buffer.getvalue(), attributes)
    with pytest.raises(DecodeError):
        decode_batch(buffer.getvalue(), attributes)


def test_a_batch_is_split_where_a_period_ends_and_stamped_with_its_earliest_receipt() -> None:
    plays = [play(received_second=s) for s in (59, 3, 61, 130, 60)]
    batch = decoded(message(*plays)).valid
    parts = list(split_by_period(batch, 60))
    received = [[row["received_at"] for row in part.to_pylist()] for _, part in parts]
    assert received == [
        [EPOCH + dt.timedelta(seconds=s) for s in (59, 3)],
        [EPOCH + dt.timedelta(seconds=s) for s in (61, 60)],
        [EPOCH + dt.timedelta(seconds=130)],
    ]
    assert [earliest for earliest, _ in parts] == [
        int((EPOCH + dt.timedelta(seconds=s)).timestamp() * 1_000_000) for s in (3, 60, 130)
    ]
    assert list(split_by_period(batch.slice(0, 0), 60)) == []


def test_event_keys_are_the_uuid_bytes_whatever_the_letter_case() -> None:
    # The first id ends in a zero byte and the second starts with one: numpy's ``S16``
    # scalars drop trailing zero bytes, so the keys are compared as raw memory.
    ids = [
        "7f739a34-1fce-4b33-a913-be64155ac400",
        "00addd52-d72c-4463-beed-1fbfcb1b43c6",
        str(uuid.uuid4()),
    ]
    keys = event_keys(pa.array([*ids, ids[0].upper()]))
    assert keys.dtype == "S16"
    assert [keys[i : i + 1].tobytes() for i in range(3)] == [uuid.UUID(i).bytes for i in ids]
    assert keys[3] == keys[0]
    sliced = pa.array(["x" * 36, *ids]).slice(1)  # an offset into a larger array
    assert list(event_keys(sliced)) == list(keys[:3])
    with pytest.raises(ValueError, match="canonical UUIDs"):
        event_keys(pa.array(["not-a-uuid"]))
    with pytest.raises(ValueError, match="canonical UUIDs"):
        event_keys(pa.array(["0b0d8d38-4c3e-4b8a-9a86-5f3f1c4e2a1g"]))


def test_shards_spread_keys_and_are_stable() -> None:
    keys = event_keys(pa.array([str(uuid.UUID(int=i * 7919)) for i in range(1, 4001)]))
    shards = shard_of(keys, 4)
    assert set(shards.tolist()) == {0, 1, 2, 3}
    assert (shard_of(keys, 4) == shards).all()
    assert shard_of(keys[:0], 4).size == 0


def test_fingerprints_see_content_not_the_copy() -> None:
    first = play("T1", received_second=5)
    changes: dict[str, Any] = {
        "user_id": "u2",
        "track_id": "T2",
        "played_at": first["played_at"] + dt.timedelta(microseconds=1),
        "ms_played": first["ms_played"] + 1,
        "territory": "NO",
        "product": "free",
    }
    copies = [
        first,
        dict(first, received_at=EPOCH + dt.timedelta(hours=3)),  # a retry: same content
        dict(first, context="radio", device="web", bitrate_kbps=96),  # what the ledger ignores
        *(dict(first, **{name: value}) for name, value in changes.items()),
        # The user id's length prefix keeps a shifted boundary from joining alike.
        dict(first, user_id="u1\x1f2", track_id="T1"),
        dict(first, user_id="u1", track_id="2\x1fT1"),
    ]
    fingerprints = content_fingerprints(decoded(message(*copies)).valid).tolist()
    assert fingerprints[0] == fingerprints[1] == fingerprints[2]
    assert len(set(fingerprints[2:])) == len(copies) - 2


def test_batches_and_tables_cross_a_shuffle_as_arrow_ipc_and_are_sized_by_their_buffers() -> None:
    batch = decoded(message(play(), play("T2"))).valid
    coder = ArrowBatchCoder()
    assert coder.decode(coder.encode(batch)).equals(batch)
    assert coder.decode(coder.encode(batch.slice(1))).equals(batch.slice(1))
    assert coder.decode(coder.encode(batch.slice(0, 0))).num_rows == 0
    assert coder.estimate_size(batch) == batch.nbytes
    table = pa.Table.from_batches([batch, batch])
    table_coder = ArrowTableCoder()
    assert table_coder.decode(table_coder.encode(table)).equals(table)
    assert table_coder.estimate_size(table) == table.nbytes
    assert beam.coders.registry.get_coder(pa.Table).__class__ is ArrowTableCoder
