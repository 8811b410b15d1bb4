"""Dead letters: what a step could not use, with why, where, and the raw payload.

Every fallible step of the gateway's downstream (the archiver, both pipelines) turns a
record it cannot use into one row of ``DEAD_LETTER_SCHEMA`` (``ledger.tables``), stored
under ``<data-dir>/dead_letters/``, so nothing is dropped silently and the payload can
be inspected or replayed.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from enum import StrEnum
from typing import Any

import orjson

from schemas.codec import ATTR_BATCH_ID

__all__ = ["DeadLetterStage", "dead_letter", "event_json"]


class DeadLetterStage(StrEnum):
    """The step that refused a record: a dead letter's ``stage``."""

    DECODE = "decode"
    """A Pub/Sub message that is no batch of play events."""
    VALIDATE = "validate"
    """An event that breaks the contract."""
    DEDUP = "dedup"
    """A later copy of an event whose content differs from the first copy."""
    ARCHIVE = "archive"
    """A message the archiver could not store as rows."""


def event_json(event: dict[str, Any]) -> bytes:
    """A decoded event as canonical JSON (sorted keys, ISO 8601 times, no spaces): a dead letter's payload.

    orjson, not ``json``: a recompute may dead-letter every conflicting copy of a period,
    and ``json`` with a ``default`` hook costs ten times as much a row.
    """
    return orjson.dumps(event, option=orjson.OPT_SORT_KEYS)


def dead_letter(
    stage: DeadLetterStage,
    reason: str,
    payload: bytes,
    attributes: dict[str, str],
    event_id: str | None = None,
    dead_at: dt.datetime | None = None,
) -> dict[str, Any]:
    """A dead-letter row: why, where, and the raw payload to replay or inspect."""
    return {
        "dead_at": dead_at or dt.datetime.now(dt.UTC),
        "stage": str(stage),
        "reason": reason,
        "event_id": event_id,
        "batch_id": attributes.get(ATTR_BATCH_ID),
        "payload_base64": base64.b64encode(payload).decode("ascii"),
        "attributes_json": json.dumps(attributes, sort_keys=True),
    }
