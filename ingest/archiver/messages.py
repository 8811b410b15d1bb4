"""What the archiver holds for one pulled message until its rows are durable.

A message is decoded with the project's codec and each event checked against the
contract, the same rules the pipeline applies. Good events become archive rows (the
event plus its Pub/Sub envelope); an undecodable message or an invalid event becomes a
dead-letter row of stage ``archive``; a heartbeat becomes nothing. Whatever it became,
the message is acknowledged only after those rows are on disk.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from ledger.dead_letters import DeadLetterStage, dead_letter, event_json
from schemas.codec import ATTR_BATCH_ID, ATTR_KIND, KIND_HEARTBEAT, DecodeError, decode_batch
from schemas.validation import check_decoded_event

__all__ = ["HeldMessage", "hold_message"]


@dataclass
class HeldMessage:
    """A pulled, not yet acknowledged message and the rows it will be archived as.

    ``rows`` lack ``bucket_hour`` and ``archived_at``: both are decided when they are
    written. A message pulled again while held adds its new ack id to ``ack_ids``.
    """

    message_id: str
    ack_ids: list[str]
    lease_expires: float
    heartbeat: bool = False
    undecodable: bool = False
    rows: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)


def hold_message(
    message_id: str,
    ack_id: str,
    data: bytes,
    attributes: dict[str, str],
    publish_time: dt.datetime,
    lease_expires: float,
) -> HeldMessage:
    """Decode and check one message into the rows and dead letters it will be archived as."""
    held = HeldMessage(message_id=message_id, ack_ids=[ack_id], lease_expires=lease_expires)
    if attributes.get(ATTR_KIND) == KIND_HEARTBEAT:
        held.heartbeat = True
        return held
    try:
        events = decode_batch(data, attributes)
    except DecodeError as error:
        held.undecodable = True
        held.dead_letters.append(dead_letter(DeadLetterStage.ARCHIVE, str(error), data, attributes))
        return held
    envelope = {
        "message_id": message_id,
        "batch_id": attributes.get(ATTR_BATCH_ID),
        "publish_time": publish_time,
    }
    for event in events:
        errors = check_decoded_event(event)
        if errors:
            raw = event_json(event)
            held.dead_letters.append(
                dead_letter(
                    DeadLetterStage.ARCHIVE, "; ".join(errors), raw, attributes, event.get("event_id")
                )
            )
            continue
        held.rows.append({**event, **envelope})
    return held
