"""``kill -9`` of a sending process mid-send: nothing is lost, and only the batch in flight is sent twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from recording_gateway import RecordingGateway

from ingest.client.outbox import Outbox, PlayRecord

REPO = Path(__file__).resolve().parents[2]
BATCH = 50
EVENTS = 250
# A process that does nothing but deliver an outbox, one batch at a time, then prints its counters.
SENDER = """
import asyncio, json, sys
from pathlib import Path
import aiohttp
from ingest.client.outbox import Outbox
from ingest.client.sender import Sender, SenderSettings

async def deliver() -> None:
    async with aiohttp.ClientSession() as session:
        settings = SenderSettings(
            gateway_url=sys.argv[2], api_key="test-key-0123", batch_size=int(sys.argv[3]), concurrency=1
        )
        sender = Sender(Outbox(Path(sys.argv[1])), settings, session)
        await sender.run(now=lambda: float("inf"), finished=lambda: True)
    print(json.dumps({"duplicates_sent": sender.stats.duplicates_sent, "accepted": sender.stats.accepted}))

asyncio.run(deliver())
"""


def sender_command(outbox: Path, url: str) -> list[str]:
    return [sys.executable, "-c", SENDER, str(outbox), url, str(BATCH)]


def test_kill_9_mid_send_loses_nothing_and_resends_only_the_batch_in_flight(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    outbox = Outbox(path)
    ids = []
    for number in range(EVENTS):
        event_id = f"00000000-0000-4000-8000-{number:012d}"
        record = PlayRecord(
            event_id, "sim-000001", "T00001", 1_790_000_000_000, 45_000, "SE", "premium", False
        )
        outbox.record(record, {"event_id": event_id}, recorded_at=0.0, deliver_after=0.0)
        ids.append(event_id)
    outbox.close()

    with RecordingGateway(hold_from=3) as gateway:  # two batches go through; the third hangs
        process = subprocess.Popen(
            sender_command(path, gateway.url), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            assert gateway.held.wait(timeout=60), "the sender never sent its third batch"
        finally:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        assert process.returncode == -signal.SIGKILL
        in_flight = gateway.requests[2]
        assert len(in_flight) == BATCH

        survivor = Outbox(path)
        assert survivor.pending() == EVENTS - 2 * BATCH  # acknowledged batches are gone, the rest stayed
        doubtful = {
            event.event_id for event in survivor.due(now=float("inf"), limit=EVENTS) if event.in_doubt
        }
        assert doubtful == set(in_flight)  # sent, never acknowledged: the gateway may have it
        survivor.close()

        gateway.release()
        restarted = subprocess.run(
            sender_command(path, gateway.url),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert restarted.returncode == 0, restarted.stderr

    received = gateway.received()
    assert set(received) == set(ids)  # nothing lost
    assert {event_id for event_id, copies in received.items() if copies > 1} == set(in_flight)
    assert max(received.values()) == 2
    assert json.loads(restarted.stdout) == {"duplicates_sent": BATCH, "accepted": EVENTS - 2 * BATCH}
    assert Outbox(path).pending() == 0
