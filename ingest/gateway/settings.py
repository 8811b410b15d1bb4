"""The gateway's settings: one typed, frozen class, validated when it is made.

A gateway that starts with no API keys, a placeholder key, a nonsensical limit or a
rate limit it cannot parse is refused at start-up with a message saying what to fix,
never at the first request.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar

import limits
import msgspec

from ingest.gateway.keys import (
    API_KEYS_ENV,
    API_KEYS_FILE_ENV,
    MIN_API_KEY_CHARS,
    check_api_keys,
    parse_api_keys,
    read_api_keys_file,
)
from schemas.settings import Settings
from schemas.topology import DEFAULT_PROJECT, PubSubNames

__all__ = [
    "API_KEYS_ENV",
    "API_KEYS_FILE_ENV",
    "DEFAULT_MAX_EVENTS",
    "MIN_API_KEY_CHARS",
    "GatewaySettings",
    "parse_api_keys",
    "parse_rate_limit",
]


def parse_rate_limit(text: str) -> list[limits.RateLimitItem]:
    """Rate limits like ``"1000/second"`` or ``"1000/second;20000/minute"``; ``ValueError`` if not."""
    try:
        items = limits.parse_many(text)
    except ValueError:
        items = []
    if not items:
        raise ValueError(
            f"rate_limit {text!r} is not a rate limit: write e.g. '1000/second' or '1000/second;20000/minute'"
        )
    return items


_Positive = msgspec.Meta(gt=0, description="must be positive")

DEFAULT_MAX_EVENTS = 500
"""Events one request may carry unless ``max_events`` says otherwise."""


class GatewaySettings(Settings, frozen=True, kw_only=True):
    """Everything the gateway needs; raises ``ValueError`` on a setting it cannot run with.

    ``api_keys`` are the keys in force at start-up; with ``api_keys_file`` they were read
    from that file, which is then re-read on SIGHUP and polled every
    ``keys_poll_seconds`` (0: only on SIGHUP). ``data_dir`` holds the receipt journal
    (``<data_dir>/journal/``). ``port=0`` asks the OS for a free port. Body and event
    limits answer 413 when exceeded; ``rate_limit`` applies per API key and counts
    requests (429 beyond it). At most ``max_in_flight_publishes`` batches wait for Pub/Sub
    at once (503 beyond); ``publish_timeout_seconds`` bounds the wait for Pub/Sub to
    confirm a batch, after which the client gets 503 with ``Retry-After:
    retry_after_seconds``.
    """

    setting_kind: ClassVar[str] = "gateway"

    api_keys: Annotated[
        frozenset[str],
        msgspec.Meta(
            description="must be a set of keys, not one string (use parse_api_keys)", extra={"secret": True}
        ),
    ]
    data_dir: Path
    api_keys_file: Path | None = None
    keys_poll_seconds: Annotated[
        float, msgspec.Meta(ge=0, description="must be 0 (reload on SIGHUP only) or more")
    ] = 1.0
    host: Annotated[str, msgspec.Meta(min_length=1, description="must not be empty")] = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535, description="must be between 0 and 65535")] = 8080
    names: PubSubNames = msgspec.field(default_factory=lambda: PubSubNames(project=DEFAULT_PROJECT))
    max_events: Annotated[int, _Positive] = DEFAULT_MAX_EVENTS
    max_body_bytes: Annotated[int, _Positive] = 1_048_576
    rate_limit: str = "1000/second"
    max_in_flight_publishes: Annotated[int, _Positive] = 100
    publish_timeout_seconds: Annotated[float, _Positive] = 10.0
    retry_after_seconds: Annotated[int, _Positive] = 5

    def check(self) -> None:
        if not self.api_keys and self.api_keys_file is None:
            raise ValueError(
                f"no API keys: set {API_KEYS_ENV} to a comma-separated list of keys, "
                f"or {API_KEYS_FILE_ENV} to a file of keys, one per line"
            )
        source = API_KEYS_ENV if self.api_keys_file is None else f"the key file {self.api_keys_file}"
        check_api_keys(self.api_keys, source)
        if self.data_dir.exists() and not self.data_dir.is_dir():
            raise ValueError(f"data_dir {self.data_dir} exists and is not a directory")
        parse_rate_limit(self.rate_limit)

    @property
    def rate_limits(self) -> list[limits.RateLimitItem]:
        """The per-key rate limits, parsed."""
        return parse_rate_limit(self.rate_limit)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> GatewaySettings:
        """Settings with API keys from the environment; keyword arguments override.

        Keys come from ``PLAYLEDGER_API_KEYS`` or from the file named by
        ``PLAYLEDGER_API_KEYS_FILE`` (not both: a key revoked from the file must not stay
        valid through the variable). ``environ`` defaults to ``os.environ``. An unknown
        override is a ``ValueError``.
        """
        cls.refuse_unknown(overrides)
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {"names": PubSubNames.from_env(env)}
        key_file = env.get(API_KEYS_FILE_ENV, "").strip()
        if key_file:
            if env.get(API_KEYS_ENV, "").strip():
                raise ValueError(
                    f"set {API_KEYS_ENV} or {API_KEYS_FILE_ENV}, not both: "
                    "a key revoked from the file would stay valid through the variable"
                )
            values["api_keys_file"] = Path(key_file)
            values["api_keys"] = read_api_keys_file(Path(key_file))
        else:
            values["api_keys"] = parse_api_keys(env.get(API_KEYS_ENV, ""))
        values.update(overrides)
        if "api_keys_file" in overrides and "api_keys" not in overrides and overrides["api_keys_file"]:
            values["api_keys"] = read_api_keys_file(Path(overrides["api_keys_file"]))
        return cls(**values)
