"""The OpenAPI document: served as kept in the repo, and true to what the gateway does.

Every documented (path, method, status) is produced by a real request, every answer's
body validates against its documented schema and carries its documented headers, and
the gateway serves no route the document leaves out. The ``PlayEvent`` schema matches
the validation rules and the Avro schema.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from gateway_client import AUTH, JSON_BODY, OTHER_KEY, Reply, call, play, post_events, settings_for
from served_gateway import RunningGateway

from ingest.gateway.app import OPENAPI_FILE, EventPublisher, create_app
from schemas.codec import EncodedBatch, load_schema
from schemas.topology import PubSubNames
from schemas.validation import BITRATES_KBPS, CLIENT_FIELDS, MAX_ID_CHARS, MAX_MS_PLAYED

pytestmark = pytest.mark.emulator

DOCUMENT: dict[str, Any] = json.loads(OPENAPI_FILE.read_text())


def validator(component: str) -> jsonschema.protocols.Validator:
    """A validator for one component schema, resolving its references inside the document."""
    schema = {"$ref": f"#/components/schemas/{component}", "components": DOCUMENT["components"]}
    validator_class = jsonschema.validators.validator_for(
        {"$schema": "https://json-schema.org/draft/2020-12/schema"}
    )
    return validator_class(schema, format_checker=jsonschema.FormatChecker())


def documented_response(path: str, method: str, status: int) -> dict[str, Any]:
    response: dict[str, Any] = DOCUMENT["paths"][path][method.lower()]["responses"][str(status)]
    return response


def test_play_event_schema_matches_the_contract() -> None:
    schema = DOCUMENT["components"]["schemas"]["PlayEvent"]
    assert list(schema["properties"]) == list(CLIENT_FIELDS)
    assert schema["required"] == [name for name, rule in CLIENT_FIELDS.items() if rule.required]
    avro = {field["name"]: field["type"] for field in load_schema()["fields"]}
    for enum_field in ("product", "context"):
        assert schema["properties"][enum_field]["enum"] == avro[enum_field]["symbols"]
    assert set(schema["properties"]["bitrate_kbps"]["enum"]) == BITRATES_KBPS
    assert schema["properties"]["ms_played"]["maximum"] == MAX_MS_PLAYED
    assert schema["properties"]["user_id"]["maxLength"] == MAX_ID_CHARS
    events = validator("EventsRequest")
    events.validate({"events": [play(), play(device=None), play(device=...)]})
    for broken in (play(bitrate_kbps=128), play(ms_played=-1), play(product="gold"), play(shuffle=True)):
        assert not events.is_valid({"events": [broken]}), broken


class _BrokenPublisher:
    """A publisher failing in a way nobody planned for: the 500."""

    async def publish(self, batch: EncodedBatch) -> str:
        raise KeyError("internal detail")


@pytest.fixture
def publisher(pubsub_names: PubSubNames) -> Iterator[EventPublisher]:
    event_publisher = EventPublisher(pubsub_names.topic, timeout_seconds=10)
    yield event_publisher
    event_publisher.close()


def test_every_documented_status_is_real_and_every_answer_matches_its_schema(
    pubsub_names: PubSubNames, publisher: EventPublisher, tmp_path: Path
) -> None:
    observed: list[tuple[str, str, Reply]] = []

    def record(path: str, method: str, reply: Reply) -> None:
        observed.append((path, method, reply))

    with RunningGateway(create_app(settings_for(pubsub_names, tmp_path / "a"), publisher)) as gateway:
        port = gateway.port
        record("/healthz", "GET", call(port, "GET", "/healthz"))
        record("/v1/events", "POST", post_events(port, [play(), play(ms_played=-1)]))
        record("/v1/events", "POST", call(port, "POST", "/v1/events", b"{oops", AUTH))
        record("/v1/events", "POST", call(port, "POST", "/v1/events", b"[]", AUTH))
        record("/v1/events", "POST", post_events(port, [], {"Authorization": "Bearer not-a-key-000000"}))
        record("/v1/events", "POST", post_events(port, [play()] * 51))
        record(
            "/v1/events",
            "POST",
            call(port, "POST", "/v1/events", b"{}", {**AUTH, "Content-Type": "text/plain"}),
        )
        served_document = raw_get(port, "/openapi.json")
        metrics = raw_get(port, "/metrics")
        routes = {
            (resource.canonical, route.method)
            for resource in gateway.app.router.resources()
            for route in resource
            if route.method != "HEAD"
        }

    broken = settings_for(pubsub_names, tmp_path / "b", rate_limit="1/minute")
    with RunningGateway(create_app(broken, _BrokenPublisher())) as gateway:
        port = gateway.port
        record("/v1/events", "POST", post_events(port, [play()]))
        record("/v1/events", "POST", post_events(port, [play()]))  # the key's one request a minute is spent
        gateway.run(gateway.app.shutdown())  # what SIGTERM starts: the gateway is stopping
        record("/healthz", "GET", call(port, "GET", "/healthz"))
        record("/v1/events", "POST", post_events(port, [play()], {"Authorization": f"Bearer {OTHER_KEY}"}))

    assert served_document == OPENAPI_FILE.read_bytes()
    assert metrics.startswith(b"# HELP ")

    documented = {
        (path, method.upper(), int(status))
        for path, operations in DOCUMENT["paths"].items()
        for method, operation in operations.items()
        for status in operation["responses"]
    }
    answered = {(path, method, reply.status) for path, method, reply in observed}
    answered |= {("/openapi.json", "GET", 200), ("/metrics", "GET", 200)}
    assert answered == documented
    assert routes == {(path, method) for path, method, _ in documented}

    for path, method, reply in observed:
        response = documented_response(path, method, reply.status)
        schema_ref = response["content"]["application/json"]["schema"]["$ref"]
        validator(schema_ref.rsplit("/", 1)[1]).validate(reply.body)
        for header in response.get("headers", {}):
            assert header.lower() in reply.headers, (path, reply.status, header)


def raw_get(port: int, path: str) -> bytes:
    """The body of a GET that must answer 200 with a request id."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers=JSON_BODY)
        response = connection.getresponse()
        assert response.status == 200
        assert "x-request-id" in {name.lower() for name, _ in response.getheaders()}
        return response.read()
    finally:
        connection.close()
