"""The contract's Pub/Sub names: topic ``play-events``, subscriptions ``royalties`` and ``archive``.

The project comes from the caller: ``PubSubNames.from_env`` reads ``PLAYLEDGER_PROJECT``
(default ``local-dev``) when a command starts, never at import.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace

__all__ = [
    "ARCHIVE_SUBSCRIPTION",
    "DEFAULT_PROJECT",
    "PROJECT_ENV",
    "ROYALTIES_SUBSCRIPTION",
    "SUBSCRIPTIONS",
    "TOPIC",
    "PubSubNames",
]

TOPIC = "play-events"
ROYALTIES_SUBSCRIPTION = "royalties"
ARCHIVE_SUBSCRIPTION = "archive"
SUBSCRIPTIONS = (ROYALTIES_SUBSCRIPTION, ARCHIVE_SUBSCRIPTION)
DEFAULT_PROJECT = "local-dev"
PROJECT_ENV = "PLAYLEDGER_PROJECT"


@dataclass(frozen=True)
class PubSubNames:
    """Fully qualified names of the contract's topic and subscriptions in one project."""

    project: str
    topic_id: str = TOPIC
    royalties_id: str = ROYALTIES_SUBSCRIPTION
    archive_id: str = ARCHIVE_SUBSCRIPTION

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> PubSubNames:
        """The contract's names in the project ``PLAYLEDGER_PROJECT`` names (default ``local-dev``)."""
        environ = os.environ if environ is None else environ
        return cls(project=environ.get(PROJECT_ENV) or DEFAULT_PROJECT)

    @property
    def topic(self) -> str:
        return f"projects/{self.project}/topics/{self.topic_id}"

    @property
    def royalties(self) -> str:
        return f"projects/{self.project}/subscriptions/{self.royalties_id}"

    @property
    def archive(self) -> str:
        return f"projects/{self.project}/subscriptions/{self.archive_id}"

    def scratch(self, prefix: str) -> PubSubNames:
        """Names in the same project that no one else uses (``prefix`` and a random suffix), for a test."""
        suffix = uuid.uuid4().hex[:8]
        return replace(
            self,
            topic_id=f"{prefix}-{suffix}",
            royalties_id=f"{prefix}-royalties-{suffix}",
            archive_id=f"{prefix}-archive-{suffix}",
        )
