"""Gateway settings: what start-up accepts and what it refuses, with a message."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ingest.gateway.settings import GatewaySettings, parse_api_keys
from schemas.topology import PubSubNames

GOOD_KEY = "k3y-9f2c61d0a7"
DATA = Path("/tmp/playledger-settings-test")


def test_keys_come_from_the_environment_with_blanks_stripped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLAYLEDGER_API_KEYS", f" {GOOD_KEY} ,, second-key-0042 ,")
    monkeypatch.delenv("PLAYLEDGER_API_KEYS_FILE", raising=False)
    settings = GatewaySettings.from_env(data_dir=DATA)
    assert settings.api_keys == frozenset({GOOD_KEY, "second-key-0042"})
    assert settings.api_keys_file is None
    assert (settings.host, settings.port, settings.max_events, settings.max_body_bytes) == (
        "127.0.0.1",
        8080,
        500,
        1_048_576,
    )
    assert (settings.publish_timeout_seconds, settings.retry_after_seconds) == (10.0, 5)
    assert (settings.rate_limit, settings.max_in_flight_publishes, settings.keys_poll_seconds) == (
        "1000/second",
        100,
        1.0,
    )


def test_overrides_win_and_an_explicit_environment_can_be_passed() -> None:
    names = PubSubNames(project="local-dev", topic_id="play-events-x")
    settings = GatewaySettings.from_env(
        {"PLAYLEDGER_API_KEYS": GOOD_KEY}, port=0, names=names, max_events=10, data_dir="relative/dir"
    )
    assert (settings.port, settings.names, settings.max_events) == (0, names, 10)
    assert settings.data_dir == Path("relative/dir")


def test_keys_can_come_from_a_file_with_comments(tmp_path: Path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text(f"# the Android app\n{GOOD_KEY}\n\n  second-key-0042  \n# revoked: old-key-123456\n")
    settings = GatewaySettings.from_env({"PLAYLEDGER_API_KEYS_FILE": str(key_file)}, data_dir=DATA)
    assert settings.api_keys == frozenset({GOOD_KEY, "second-key-0042"})
    assert settings.api_keys_file == key_file


def test_keys_from_both_the_variable_and_a_file_are_refused(tmp_path: Path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text(f"{GOOD_KEY}\n")
    environ = {"PLAYLEDGER_API_KEYS": "second-key-0042", "PLAYLEDGER_API_KEYS_FILE": str(key_file)}
    with pytest.raises(ValueError, match="set PLAYLEDGER_API_KEYS or PLAYLEDGER_API_KEYS_FILE, not both"):
        GatewaySettings.from_env(environ, data_dir=DATA)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read the API key file"),
        ("# nothing but comments\n\n", "no API keys in the key file"),
        ("changeme\n", "API key #1 in the key file .* is a placeholder"),
        (f"{GOOD_KEY}\ntiny\n", "is shorter than 8 characters"),
    ],
)
def test_a_bad_key_file_is_refused_at_start_up(tmp_path: Path, content: str | None, message: str) -> None:
    key_file = tmp_path / "keys"
    if content is not None:
        key_file.write_text(content)
    with pytest.raises(ValueError, match=message) as raised:
        GatewaySettings.from_env({"PLAYLEDGER_API_KEYS_FILE": str(key_file)}, data_dir=DATA)
    assert "tiny" not in str(raised.value)


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
        GatewaySettings.from_env({"PLAYLEDGER_API_KEYS": keys}, data_dir=DATA)
    assert "tiny" not in str(raised.value)  # a key is never echoed


def test_keys_must_be_header_safe() -> None:
    with pytest.raises(ValueError, match="must be printable ASCII without spaces"):
        GatewaySettings(api_keys=frozenset({"kéy-with-accent"}), data_dir=DATA)
    with pytest.raises(ValueError, match="must be printable ASCII without spaces"):
        GatewaySettings(api_keys=frozenset({"two words key"}), data_dir=DATA)


def test_one_string_is_not_a_set_of_keys() -> None:
    with pytest.raises(ValueError, match="not one string"):
        GatewaySettings(api_keys=GOOD_KEY, data_dir=DATA)  # type: ignore[arg-type]


def test_a_data_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(ValueError, match=f"data_dir {not_a_dir} exists and is not a directory"):
        GatewaySettings(api_keys=frozenset({GOOD_KEY}), data_dir=not_a_dir)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"max_events": 0}, "max_events must be positive, got 0"),
        ({"max_body_bytes": -1}, "max_body_bytes must be positive, got -1"),
        ({"publish_timeout_seconds": 0.0}, "publish_timeout_seconds must be positive, got 0.0"),
        ({"retry_after_seconds": 0}, "retry_after_seconds must be positive, got 0"),
        ({"max_in_flight_publishes": 0}, "max_in_flight_publishes must be positive, got 0"),
        ({"keys_poll_seconds": -1.0}, "keys_poll_seconds must be 0 \\(reload on SIGHUP only\\) or more"),
        ({"rate_limit": "lots"}, "rate_limit 'lots' is not a rate limit: write e.g. '1000/second'"),
        ({"rate_limit": ""}, "rate_limit '' is not a rate limit"),
        ({"port": 70000}, "port must be between 0 and 65535, got 70000"),
        ({"host": ""}, "host must not be empty"),
        ({"max_evnets": 10}, "unknown gateway setting\\(s\\): max_evnets"),
    ],
)
def test_bad_limits_are_refused_at_start_up(override: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GatewaySettings.from_env({"PLAYLEDGER_API_KEYS": GOOD_KEY}, **{"data_dir": DATA, **override})


def test_rate_limits_may_combine_windows() -> None:
    settings = GatewaySettings.from_env(
        {"PLAYLEDGER_API_KEYS": GOOD_KEY}, data_dir=DATA, rate_limit="50/second;1000/minute"
    )
    assert [(item.amount, item.get_expiry()) for item in settings.rate_limits] == [(50, 1), (1000, 60)]
