"""Property-based fuzzing of ``POST /v1/events`` with hypothesis, over real HTTP, real emulator.

Two generators feed one gateway:

- **Batches** mixing valid plays with malformed ones (fields dropped, of the wrong type,
  out of range, unknown, ``received_at`` sent, elements that are not objects, lone
  surrogates, integers beyond 64 bits). Every answer is 200; each malformed event is
  rejected with a field-level reason naming what was broken; the valid ones are accepted.
- **Bodies** that are not a batch at all (random bytes, truncated JSON, JSON of the
  wrong shape): every answer is 400 with a message.

Never a 5xx. At the end every valid event sent beside bad ones was published exactly
once: pulled back from the emulator and counted. At least 1,000 malformed events and
bodies go through in one run.
"""

from __future__ import annotations

import json
import re
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import google.cloud.pubsub_v1 as pubsub_v1
import play_strategies
import pytest
from gateway_client import AUTH, call, pull_event_ids, receipts, settings_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from play_strategies import CONTEXTS, PRODUCTS
from served_gateway import RunningGateway

from ingest.gateway.app import EventPublisher, create_app
from schemas.topology import PubSubNames
from schemas.validation import BITRATES_KBPS, CLIENT_FIELDS, MAX_MS_PLAYED, parse_rfc3339

pytestmark = pytest.mark.emulator

BATCH_EXAMPLES = 500
BODY_EXAMPLES = 300
FUZZ_SETTINGS = settings(
    max_examples=BATCH_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


PLACEHOLDER_ID = "00000000-0000-4000-8000-000000000000"
SURROGATE_PAIR = re.compile("[\ud800-\udbff][\udc00-\udfff]")
REQUIRED = [name for name, rule in CLIENT_FIELDS.items() if rule.required]
ERROR_FIELDS = [*CLIENT_FIELDS, "event", "received_at"]

json_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)


def valid_plays() -> st.SearchStrategy[dict[str, Any]]:
    """A play the contract accepts (its event_id is replaced by a fresh one when sent)."""
    return play_strategies.valid_plays(ids=st.just(PLACEHOLDER_ID))


def _not_rfc3339(text: str) -> bool:
    try:
        parse_rfc3339(text)
    except ValueError:
        return True
    return False


not_strings = st.none() | st.booleans() | st.integers() | st.lists(st.integers(), max_size=2)
# A high surrogate followed by a low one is a pair: JSON's "\ud800\udc00" is U+10000, a
# valid character, so only texts without such a pair are bad values.
lone_surrogates = st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3).filter(
    lambda text: not SURROGATE_PAIR.search(text)
)
BAD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "event_id": not_strings
    | st.text(max_size=70).filter(lambda text: len(text) != 36 or text.count("-") != 4)
    | st.just(str(uuid.uuid4()).replace("-", "")),
    "user_id": not_strings
    | st.sampled_from(["", "   "])
    | st.text(min_size=129, max_size=140)
    | lone_surrogates,
    "track_id": not_strings | st.sampled_from(["", "\t"]) | st.text(min_size=129, max_size=140),
    "played_at": not_strings
    | st.text(max_size=40).filter(_not_rfc3339)
    | st.sampled_from(["2026-11-28T07:00:00", "2026-02-30T00:00:00Z", "2026-11-28 07:00:00+01:00"]),
    "ms_played": st.booleans()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5)
    | st.integers(max_value=-1)
    | st.integers(min_value=MAX_MS_PLAYED + 1)
    | st.integers(min_value=2**64, max_value=2**80),
    "territory": not_strings | st.sampled_from(["se", "Us", "XX", "ZZ", "SWE", ""]),
    "product": not_strings | st.text(max_size=10).filter(lambda text: text not in PRODUCTS),
    "context": not_strings | st.text(max_size=10).filter(lambda text: text not in CONTEXTS),
    "bitrate_kbps": st.integers().filter(lambda rate: rate not in BITRATES_KBPS)
    | st.sampled_from(["160", 160.0, True, None]),
    "offline": st.integers(0, 1) | st.sampled_from(["true", "false", None]),
    "device": st.booleans()
    | st.integers()
    | st.lists(st.text(), max_size=2)
    | st.text(min_size=129, max_size=140),
}
unknown_names = st.text(min_size=1, max_size=80).filter(
    lambda name: name not in CLIENT_FIELDS and name != "received_at"
)
non_objects = (
    st.none() | st.booleans() | st.integers() | st.text(max_size=10) | st.lists(st.integers(), max_size=3)
)


@st.composite
def malformed_plays(draw: st.DrawFn) -> tuple[Any, list[str]]:
    """A play broken in one to three ways, and the error prefixes each break must produce."""
    if draw(st.integers(0, 9)) == 0:
        return draw(non_objects), ["event: must be a JSON object"]
    event: dict[str, Any] = draw(valid_plays())
    expected: list[str] = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(
            st.sampled_from(["drop", "bad value", "bad value", "bad value", "unknown", "gateway field"])
        )
        if kind == "drop":
            field = draw(st.sampled_from(REQUIRED))
            event.pop(field, None)
            expected.append(f"{field}: ")
        elif kind == "bad value":
            field = draw(st.sampled_from(sorted(BAD_VALUES)))
            event[field] = draw(BAD_VALUES[field])
            expected.append(f"{field}: ")
        elif kind == "unknown":
            name = draw(unknown_names)
            event[name] = draw(json_values)
            expected.append(f"{name[:64]}: unknown field")
        else:
            event["received_at"] = draw(json_values)
            expected.append("received_at: is set by the gateway and must not be sent")
    return event, expected


batches = st.lists(
    st.one_of(valid_plays().map(lambda event: (event, None)), malformed_plays()),
    min_size=1,
    max_size=12,
)


@st.composite
def bodies_that_are_not_batches(draw: st.DrawFn) -> bytes:
    """Request bodies that are not ``{"events": [...]}``: the whole request is a 400."""
    kind = draw(st.sampled_from(["bytes", "truncated", "shape", "constant"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "truncated":
        whole = json.dumps({"events": [draw(valid_plays())]}).encode()
        return whole[: draw(st.integers(0, len(whole) - 1))]
    if kind == "constant":
        return draw(
            st.sampled_from([b'{"events": [NaN]}', b'{"events": [Infinity]}', b'{"events": -Infinity}'])
        )
    shape: Any = draw(
        json_values.filter(
            lambda value: not (isinstance(value, dict) and isinstance(value.get("events"), list))
        )
        | st.fixed_dictionaries(
            {"events": st.lists(st.just({}), max_size=1)}, optional={"extra": json_values}
        ).filter(lambda value: "extra" in value)
    )
    return json.dumps(shape).encode()


def is_field_level(error: str) -> bool:
    """An error names the field it is about: a contract field, ``event``, or an unknown one."""
    return any(error.startswith(f"{field}: ") for field in ERROR_FIELDS) or error.endswith(": unknown field")


@pytest.fixture
def subscriber(pubsub_emulator: str) -> Iterator[pubsub_v1.SubscriberClient]:
    client = pubsub_v1.SubscriberClient()
    yield client
    client.close()


def test_fuzzed_requests_never_5xx_explain_every_rejection_and_publish_valid_events_once(
    pubsub_names: PubSubNames, subscriber: pubsub_v1.SubscriberClient, tmp_path: Path
) -> None:
    sent_valid: list[str] = []
    malformed_sent = 0
    publisher = EventPublisher(pubsub_names.topic, timeout_seconds=10)
    app = create_app(
        settings_for(pubsub_names, tmp_path, max_events=500, max_body_bytes=1_048_576), publisher
    )
    try:
        with RunningGateway(app) as gateway:

            @FUZZ_SETTINGS
            @given(batch=batches)
            def post_batch(batch: list[tuple[Any, list[str] | None]]) -> None:
                nonlocal malformed_sent
                events = []
                for event, _ in batch:
                    # Fresh ids, so a replayed example never sends an id twice.
                    if isinstance(event, dict) and event.get("event_id") == PLACEHOLDER_ID:
                        event = {**event, "event_id": str(uuid.uuid4())}
                    events.append(event)
                body = json.dumps({"events": events}).encode()
                reply = call(gateway.port, "POST", "/v1/events", body, AUTH)
                assert reply.status == 200, reply.body
                valid = [index for index, (_, expected) in enumerate(batch) if expected is None]
                malformed = [index for index, (_, expected) in enumerate(batch) if expected is not None]
                assert reply.body["accepted"] == len(valid)
                assert [entry["index"] for entry in reply.body["rejected"]] == malformed
                for entry in reply.body["rejected"]:
                    errors = entry["errors"]
                    assert errors and all(is_field_level(error) for error in errors), errors
                    expected = batch[entry["index"]][1]
                    assert expected is not None
                    for prefix in expected:
                        assert any(error.startswith(prefix) for error in errors), (prefix, errors)
                sent_valid.extend(events[index]["event_id"] for index in valid)
                malformed_sent += len(malformed)

            @settings(FUZZ_SETTINGS, max_examples=BODY_EXAMPLES)
            @given(body=bodies_that_are_not_batches())
            def post_body(body: bytes) -> None:
                nonlocal malformed_sent
                reply = call(gateway.port, "POST", "/v1/events", body, AUTH)
                assert reply.status == 400, (body, reply.body)
                assert isinstance(reply.body["error"], str) and reply.body["error"]
                malformed_sent += 1

            post_batch()
            post_body()
    finally:
        publisher.close()

    print(f"fuzz: {malformed_sent} malformed events and bodies, {len(sent_valid)} valid events beside them")
    assert malformed_sent >= 1000, malformed_sent
    published = pull_event_ids(
        subscriber, pubsub_names.royalties, expected=len(sent_valid), deadline_seconds=60
    )
    assert Counter(published) == Counter(sent_valid), "a valid event was lost, duplicated or invented"
    assert sorted(event_id for event_id, _, _ in receipts(tmp_path)) == sorted(sent_valid)
