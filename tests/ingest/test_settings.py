"""Gateway settings: what start-up accepts and what it refuses, with a message."""

from __future__ import annotations

from typing import Any

import pytest

from ingest.pubsub import PubSubNames
from ingest.settings import GatewaySettings, parse_api_keys

GOOD_KEY = "k3y-9f2c61d0a7"


def test_keys_come_from_the_environment_with_blanks_stripped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLAYLEDGER_API_KEYS", f" {GOOD_KEY} ,, second-key-0042 ,")
    settings = GatewaySettings.from_env()
    assert settings.api_keys == frozenset({GOOD_KEY, "second-key-0042"})
    assert (settings.host, settings.port, settings.max_events, settings.max_body_bytes) == (
        "127.0.0.1",
        8080,
        500,
        1_048_576,
    )
    assert (settings.publish_timeout_seconds, settings.retry_after_seconds) == (10.0, 5)


def test_overrides_win_and_an_explicit_environment_can_be_passed() -> None:
    names = PubSubNames(project="local-dev", topic_id="play-events-x")
    settings = GatewaySettings.from_env({"PLAYLEDGER_API_KEYS": GOOD_KEY}, port=0, names=names, max_events=10)
    assert (settings.port, settings.names, settings.max_events) == (0, names, 10)


def test_parse_api_keys() -> None:
    assert parse_api_keys("") == frozenset()
    assert parse_api_keys(" a , b ,a") == frozenset({"a", "b"})


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ("", "no API keys: set PLAYLEDGER_API_KEYS"),
        (" , ,", "no API keys: set PLAYLEDGER_API_KEYS"),
        ("changeme", "API key #1 in PLAYLEDGER_API_KEYS is a placeholder, not a secret"),
        ("CHANGEME", "API key #1 in PLAYLEDGER_API_KEYS is a placeholder, not a secret"),
        ("password", "is a placeholder, not a secret"),
        ("<your-key>", "is a placeholder, not a secret"),
        ("xxxxxxxxxxxx", "is a placeholder, not a secret"),
        ("secret", "is a placeholder, not a secret"),
        ("<key>", "is a placeholder, not a secret"),
        ("Token", "is a placeholder, not a secret"),
        ("short12", "is shorter than 8 characters"),
        (f"{GOOD_KEY},tiny", "is shorter than 8 characters"),
    ],
)
def test_bad_keys_are_refused_at_start_up(keys: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as raised:
        GatewaySettings.from_env({"PLAYLEDGER_API_KEYS": keys})
    assert "tiny" not in str(raised.value)  # a key is never echoed


def test_keys_must_be_header_safe() -> None:
    with pytest.raises(ValueError, match="must be printable ASCII without spaces"):
        GatewaySettings(api_keys=frozenset({"kéy-with-accent"}))
    with pytest.raises(ValueError, match="must be printable ASCII without spaces"):
        GatewaySettings(api_keys=frozenset({"two words key"}))


def test_one_string_is_not_a_set_of_keys() -> None:
    with pytest.raises(ValueError, match="not one string"):
        GatewaySettings(api_keys=GOOD_KEY)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"max_events": 0}, "max_events must be positive, got 0"),
        ({"max_body_bytes": -1}, "max_body_bytes must be positive, got -1"),
        ({"publish_timeout_seconds": 0.0}, "publish_timeout_seconds must be positive, got 0.0"),
        ({"retry_after_seconds": 0}, "retry_after_seconds must be positive, got 0"),
        ({"port": 70000}, "port must be between 0 and 65535, got 70000"),
        ({"host": ""}, "host must not be empty"),
        ({"max_evnets": 10}, "unknown gateway setting\\(s\\): max_evnets"),
    ],
)
def test_bad_limits_are_refused_at_start_up(override: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GatewaySettings.from_env({"PLAYLEDGER_API_KEYS": GOOD_KEY}, **override)
