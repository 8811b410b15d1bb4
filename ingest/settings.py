"""The gateway's settings: one typed, frozen class, validated when it is made.

A gateway that starts with no API keys, a placeholder key or a nonsensical limit is
refused at start-up with a message saying what to fix, never at the first request.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ingest.pubsub import PubSubNames

__all__ = ["API_KEYS_ENV", "MIN_API_KEY_CHARS", "GatewaySettings", "parse_api_keys"]

API_KEYS_ENV = "PLAYLEDGER_API_KEYS"
MIN_API_KEY_CHARS = 8

# Values people paste from templates and docs; none of them is a secret.
_PLACEHOLDER_KEYS = frozenset(
    {"changeme", "change-me", "changethis", "secret", "secretkey", "secret-key", "password", "apikey"}
    | {"api-key", "api_key", "your-api-key", "your_api_key", "placeholder", "example", "default", "token"}
)
_KEY_CHARS = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no spaces: header-safe


def parse_api_keys(raw: str) -> frozenset[str]:
    """Keys from a comma-separated list, blanks stripped and empty entries dropped."""
    return frozenset(key.strip() for key in raw.split(",") if key.strip())


def _key_problem(key: str) -> str | None:
    if not _KEY_CHARS.fullmatch(key):
        return "must be printable ASCII without spaces"
    if key.lower() in _PLACEHOLDER_KEYS or (key.startswith("<") and key.endswith(">")) or len(set(key)) == 1:
        return "is a placeholder, not a secret"
    if len(key) < MIN_API_KEY_CHARS:
        return f"is shorter than {MIN_API_KEY_CHARS} characters"
    return None


@dataclass(frozen=True, kw_only=True)
class GatewaySettings:
    """Everything the gateway needs; raises ``ValueError`` on a setting it cannot run with.

    ``port=0`` asks the OS for a free port. Body and event limits answer 413 when
    exceeded; ``publish_timeout_seconds`` bounds the wait for Pub/Sub to confirm a
    batch, after which the client gets 503 with ``Retry-After: retry_after_seconds``.
    """

    api_keys: frozenset[str]
    host: str = "127.0.0.1"
    port: int = 8080
    names: PubSubNames = field(default_factory=PubSubNames)
    max_events: int = 500
    max_body_bytes: int = 1_048_576
    publish_timeout_seconds: float = 10.0
    retry_after_seconds: int = 5

    def __post_init__(self) -> None:
        if isinstance(self.api_keys, str):
            raise ValueError("api_keys must be a set of keys, not one string (use parse_api_keys)")
        object.__setattr__(self, "api_keys", frozenset(self.api_keys))
        if not self.api_keys:
            raise ValueError(f"no API keys: set {API_KEYS_ENV} to a comma-separated list of keys")
        for index, key in enumerate(sorted(self.api_keys)):
            problem = _key_problem(key)
            if problem is not None:
                # Never echo a key: it may be a real one with a typo.
                raise ValueError(f"API key #{index + 1} in {API_KEYS_ENV} {problem}")
        if not self.host:
            raise ValueError("host must not be empty")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, got {self.port}")
        for name in ("max_events", "max_body_bytes", "publish_timeout_seconds", "retry_after_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be positive, got {value!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> GatewaySettings:
        """Settings with API keys from ``PLAYLEDGER_API_KEYS``; keyword arguments override.

        ``environ`` defaults to ``os.environ``. An unknown override is a ``ValueError``.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown gateway setting(s): {', '.join(unknown)}")
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {"api_keys": parse_api_keys(env.get(API_KEYS_ENV, ""))}
        values.update(overrides)
        return cls(**values)
