"""Session-wide fixtures: one real Pub/Sub emulator for the whole test run."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from ingest.pubsub import Emulator, PubSubNames, ensure_topology


@pytest.fixture(scope="session")
def pubsub_emulator() -> Iterator[str]:
    """The emulator's host:port; one per session, started unless PUBSUB_EMULATOR_HOST is set."""
    existing = os.environ.get("PUBSUB_EMULATOR_HOST")
    if existing:
        yield existing
        return
    with Emulator() as emulator:
        os.environ["PUBSUB_EMULATOR_HOST"] = emulator.host
        try:
            yield emulator.host
        finally:
            os.environ.pop("PUBSUB_EMULATOR_HOST", None)


@pytest.fixture
def pubsub_names(pubsub_emulator: str) -> PubSubNames:
    """A fresh topic and subscriptions of the contract's shape, private to one test."""
    suffix = uuid.uuid4().hex[:8]
    names = PubSubNames(
        project="local-dev",
        topic_id=f"play-events-{suffix}",
        royalties_id=f"royalties-{suffix}",
        archive_id=f"archive-{suffix}",
    )
    ensure_topology(names)
    return names
