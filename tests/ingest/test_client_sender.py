"""The sender: retries with backoff, settles on 200, drops rejections, counts possible duplicates."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import aiohttp
import pytest
from recording_gateway import RecordingGateway, Reply

from ingest.client.outbox import Outbox, PlayRecord
from ingest.client.sender import DeliveryFailed, Sender, SenderSettings

KEY = "test-key-0123"


def fill(outbox: Outbox, count: int, deliver_after: float = 0.0) -> list[str]:
    ids = []
    for number in range(count):
        event_id = f"00000000-0000-4000-8000-{number:012d}"
        record = PlayRecord(
            event_id, "sim-000001", "T00001", 1_790_000_000_000, 45_000, "SE", "premium", False
        )
        outbox.record(record, {"event_id": event_id}, recorded_at=0.0, deliver_after=deliver_after)
        ids.append(event_id)
    return ids


def deliver_all(outbox: Outbox, url: str, **settings: object) -> Sender:
    """Run a sender over the whole outbox, as at the end of a simulation."""

    async def run() -> Sender:
        async with aiohttp.ClientSession() as session:
            options: dict[str, object] = {"batch_size": 10, "concurrency": 1, "initial_backoff_seconds": 0.01}
            options.update(settings)
            sender = Sender(outbox, SenderSettings(gateway_url=url, api_key=KEY, **options), session)  # type: ignore[arg-type]
            await sender.run(now=lambda: float("inf"), finished=lambda: True)
            return sender

    return asyncio.run(run())


def test_a_503_is_retried_after_its_retry_after_with_the_same_events(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    ids = fill(outbox, 5)
    with RecordingGateway([Reply(503, retry_after="0.2"), Reply(503, retry_after="0")]) as gateway:
        sender = deliver_all(outbox, gateway.url)
    assert gateway.requests == [ids, ids, ids]  # same events, same ids, every attempt
    assert (sender.stats.requests, sender.stats.retries, sender.stats.accepted) == (3, 2, 5)
    assert sender.stats.duplicates_sent == 0  # a 503 accepted nothing
    assert outbox.pending() == 0


def test_lost_acknowledgements_resend_the_batch_and_count_the_duplicates(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    ids = fill(outbox, 40)
    with RecordingGateway() as gateway:
        sender = deliver_all(outbox, gateway.url, drop_ack_share=0.5, fault_seed=3)
    received = gateway.received()
    assert set(received) == set(ids) and outbox.pending() == 0
    assert sender.stats.acks_dropped > 0
    # Every event sent again after its acknowledgement was lost is a duplicate at the gateway.
    assert sum(received.values()) - len(ids) == sender.stats.duplicates_sent == 10 * sender.stats.acks_dropped


def test_rejected_events_are_logged_dropped_and_kept_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    ids = fill(outbox, 6)
    with caplog.at_level(logging.WARNING), RecordingGateway(reject=frozenset(ids[1:3])) as gateway:
        sender = deliver_all(outbox, gateway.url)
    assert (sender.stats.accepted, sender.stats.rejected, outbox.pending()) == (4, 2, 0)
    assert outbox.rejected_count() == 2
    assert all(f"rejected event {event_id}" in caplog.text for event_id in ids[1:3])
    assert len(gateway.requests) == 1  # a rejection is final: not retried


def test_a_bad_key_stops_delivery_and_keeps_the_events(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    fill(outbox, 3)
    with RecordingGateway() as gateway:

        async def run() -> None:
            async with aiohttp.ClientSession() as session:
                settings = SenderSettings(gateway_url=gateway.url, api_key="wrong-key-999")
                await Sender(outbox, settings, session).run(now=lambda: 1.0, finished=lambda: True)

        with pytest.raises(DeliveryFailed, match="401"):
            asyncio.run(run())
    assert outbox.pending() == 3
    assert not any(event.in_doubt for event in outbox.due(now=1.0, limit=10))


def test_a_reply_that_times_out_is_resent_and_counted_as_a_possible_duplicate(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    ids = fill(outbox, 4)
    with RecordingGateway([Reply(200, delay_seconds=1.0)]) as gateway:
        sender = deliver_all(outbox, gateway.url, request_timeout_seconds=0.3)
    assert gateway.requests == [ids, ids]
    assert (sender.stats.duplicates_sent, sender.stats.accepted, outbox.pending()) == (4, 4, 0)


def test_an_unreachable_gateway_is_given_up_on_with_the_events_kept(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    fill(outbox, 2)
    with RecordingGateway() as gateway:
        url = gateway.url  # closed below: nothing listens there any more
    with pytest.raises(DeliveryFailed, match="gave up"):
        deliver_all(outbox, url, give_up_after_seconds=0.3)
    assert outbox.pending() == 2
    assert not any(event.in_doubt for event in outbox.due(now=1.0, limit=10))  # never connected


def test_events_wait_until_the_device_is_back_online(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    online_now = fill(outbox, 1)
    offline_until_100 = [f"00000000-0000-4000-8000-{99:012d}"]
    record = PlayRecord(offline_until_100[0], "sim-000001", "T00001", 0, 1_000, "SE", "premium", True)
    outbox.record(record, {"event_id": offline_until_100[0]}, recorded_at=0.0, deliver_after=100.0)
    clock = {"now": 0.0}

    async def run() -> Sender:
        async with aiohttp.ClientSession() as session:
            settings = SenderSettings(gateway_url=gateway.url, api_key=KEY, poll_seconds=0.01)
            sender = Sender(outbox, settings, session)
            task = asyncio.create_task(sender.run(now=lambda: clock["now"], finished=lambda: True))
            while sender.stats.accepted < 1:
                await asyncio.sleep(0.01)
            assert gateway.requests == [online_now]
            clock["now"] = 100.0
            await asyncio.wait_for(task, timeout=10)
            return sender

    with RecordingGateway() as gateway:
        sender = asyncio.run(run())
    assert gateway.requests == [online_now, offline_until_100]
    assert sender.stats.delivered_after_offline == 1
