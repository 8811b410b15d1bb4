"""Deliver the outbox to the gateway, at least once.

Workers take batches of events that are due (their device has a network at the
simulated time) and post them to ``POST /v1/events`` with the API key; a partial batch
waits up to ``linger_seconds`` for more events, as a device's sender batches. Each batch is
retried by tenacity with exponential backoff and jitter (never sooner than a 503's
``Retry-After``) until the gateway answers 200; then the accepted events are removed
and the rejected ones logged and set aside. The JSON sent is the one stored, so an
event keeps its ``event_id`` on every attempt.

Outcomes of an attempt:

- 200: settled. With the ack-loss fault switch on, a share of 200s is treated as lost
  (as when a phone loses the reply on a flaky network): the batch is sent again and
  the gateway sees duplicates, as it does in the field.
- 503, 429 or a refused connection: nothing was taken; retry.
- a timeout, a dropped connection or another 5xx: the gateway may have taken the batch;
  retry, and count the resent events as possible duplicates.
- 401, 400, 413 or any other 4xx: sending again cannot help; stop with an error and
  leave the events in the outbox.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential_jitter,
)
from tenacity.wait import wait_base

from ingest.client.outbox import Outbox, PendingEvent

__all__ = ["DeliveryFailed", "Sender", "SenderSettings", "SenderStats"]

LOG = logging.getLogger(__name__)

EVENTS_PATH = "/v1/events"


class DeliveryFailed(RuntimeError):
    """Events could not be delivered; they stay in the outbox."""


class _Retryable(Exception):
    """This attempt failed in a way a later attempt may not."""

    def __init__(self, reason: str, retry_after_seconds: float = 0.0) -> None:
        super().__init__(reason)
        self.retry_after_seconds = retry_after_seconds


class _WaitRetryAfterOr(wait_base):
    """Backoff from ``fallback``, but never shorter than the server's ``Retry-After``."""

    def __init__(self, fallback: wait_base) -> None:
        self.fallback = fallback

    def __call__(self, retry_state: RetryCallState) -> float:
        backoff = float(self.fallback(retry_state))
        error = retry_state.outcome.exception() if retry_state.outcome is not None else None
        if isinstance(error, _Retryable):
            return max(backoff, error.retry_after_seconds)
        return backoff


@dataclass(frozen=True, kw_only=True)
class SenderSettings:
    """Where and how to deliver, and the ack-loss fault switch (``drop_ack_share``)."""

    gateway_url: str
    api_key: str
    batch_size: int = 100
    concurrency: int = 4
    request_timeout_seconds: float = 30.0
    initial_backoff_seconds: float = 0.1
    max_backoff_seconds: float = 5.0
    give_up_after_seconds: float = 300.0
    poll_seconds: float = 0.05
    linger_seconds: float = 1.0
    drop_ack_share: float = 0.0
    fault_seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= 500:
            raise ValueError(
                f"batch_size must be between 1 and 500 (the gateway's limit), got {self.batch_size}"
            )
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.concurrency}")
        if not 0 <= self.drop_ack_share < 1:
            raise ValueError(f"drop_ack_share must be in [0, 1), got {self.drop_ack_share}")
        if not self.api_key:
            raise ValueError("an API key is needed to post events")


@dataclass
class SenderStats:
    """What the sender did."""

    requests: int = 0
    retries: int = 0
    events_sent: int = 0
    duplicates_sent: int = 0
    acks_dropped: int = 0
    accepted: int = 0
    rejected: int = 0
    delivered_after_offline: int = 0
    retry_reasons: dict[str, int] = field(default_factory=dict)


class Sender:
    """Delivers ``outbox`` to the gateway with ``settings``; counts into ``stats``."""

    def __init__(self, outbox: Outbox, settings: SenderSettings, session: aiohttp.ClientSession) -> None:
        self.outbox = outbox
        self.settings = settings
        self.stats = SenderStats()
        self._session = session
        self._faults = random.Random(f"{settings.fault_seed}:ack-loss")
        self._url = settings.gateway_url.rstrip("/") + EVENTS_PATH
        self._headers = {"Authorization": f"Bearer {settings.api_key}", "Content-Type": "application/json"}

    async def run(self, now: Callable[[], float], finished: Callable[[], bool]) -> None:
        """Deliver what is due at ``now()`` until ``finished()`` and the outbox is empty.

        Raises ``DeliveryFailed`` when a batch cannot be delivered.
        """
        in_flight: set[str] = set()

        loop = asyncio.get_running_loop()

        async def worker() -> None:
            last_send = loop.time()
            while True:
                batch = self.outbox.due(now(), self.settings.batch_size, in_flight)
                if not batch and finished() and not in_flight and self.outbox.pending() == 0:
                    return
                # A partial batch lingers a little for company: one request of 100 events
                # costs the gateway and the pipeline far less than 100 requests of one.
                lingered = loop.time() - last_send >= self.settings.linger_seconds
                if not batch or (len(batch) < self.settings.batch_size and not lingered and not finished()):
                    await asyncio.sleep(self.settings.poll_seconds)
                    continue
                last_send = loop.time()
                ids = {event.event_id for event in batch}
                in_flight.update(ids)
                try:
                    await self.deliver(batch)
                finally:
                    in_flight.difference_update(ids)

        try:
            async with asyncio.TaskGroup() as workers:
                for _ in range(self.settings.concurrency):
                    workers.create_task(worker())
        except ExceptionGroup as failures:
            failed = failures.subgroup(DeliveryFailed)
            while failed is not None and isinstance(failed.exceptions[0], ExceptionGroup):
                failed = failed.exceptions[0]
            if failed is None:
                raise
            raise failed.exceptions[0] from None

    async def deliver(self, batch: Sequence[PendingEvent]) -> None:
        """Post ``batch`` until the gateway settles it; ``DeliveryFailed`` if it cannot."""
        in_doubt = {event.event_id for event in batch if event.in_doubt}
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(_Retryable),
            wait=_WaitRetryAfterOr(
                wait_exponential_jitter(
                    initial=self.settings.initial_backoff_seconds,
                    max=self.settings.max_backoff_seconds,
                    jitter=self.settings.initial_backoff_seconds,
                )
            ),
            stop=stop_after_delay(self.settings.give_up_after_seconds),
            before_sleep=self._count_retry,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    await self._attempt(batch, in_doubt)
        except _Retryable as error:
            raise DeliveryFailed(
                f"gave up on a batch of {len(batch)} events after {self.settings.give_up_after_seconds:g} s: "
                f"{error}; they stay in {self.outbox.path}"
            ) from None

    def _count_retry(self, retry_state: RetryCallState) -> None:
        self.stats.retries += 1
        error = retry_state.outcome.exception() if retry_state.outcome is not None else None
        reason = str(error).split(":")[0] if error is not None else "unknown"
        self.stats.retry_reasons[reason] = self.stats.retry_reasons.get(reason, 0) + 1
        LOG.debug("retrying a batch (attempt %d): %s", retry_state.attempt_number, error)

    async def _attempt(self, batch: Sequence[PendingEvent], in_doubt: set[str]) -> None:
        ids = [event.event_id for event in batch]
        self.outbox.mark_sending(ids)
        self.stats.requests += 1
        self.stats.events_sent += len(ids)
        self.stats.duplicates_sent += len(in_doubt)
        # The stored JSON goes out verbatim: the same bytes, the same event_id, every time.
        body = '{"events":[' + ",".join(event.payload for event in batch) + "]}"
        timeout = aiohttp.ClientTimeout(total=self.settings.request_timeout_seconds)
        try:
            async with self._session.post(
                self._url, data=body, headers=self._headers, timeout=timeout
            ) as response:
                status = response.status
                text = await response.text()
                retry_after = response.headers.get("Retry-After", "0")
        except aiohttp.ClientConnectorError as error:
            self.outbox.clear_doubt(ids)  # never connected: nothing was sent
            in_doubt.clear()
            raise _Retryable(f"gateway unreachable: {error}") from None
        except (aiohttp.ClientError, TimeoutError) as error:
            in_doubt.update(ids)  # the request may have been taken before the reply was lost
            raise _Retryable(f"no reply: {type(error).__name__} {error}") from None
        if status == 200:
            await self._settle(batch, text, in_doubt)
            return
        if status in (429, 503):
            self.outbox.clear_doubt(ids)  # the contract: nothing in the batch was accepted
            in_doubt.clear()
            raise _Retryable(f"gateway answered {status}", _seconds(retry_after))
        if status >= 500:
            in_doubt.update(ids)
            raise _Retryable(f"gateway answered {status}")
        self.outbox.clear_doubt(ids)
        raise DeliveryFailed(f"gateway answered {status} (sending again cannot help): {text[:300]}")

    async def _settle(self, batch: Sequence[PendingEvent], text: str, in_doubt: set[str]) -> None:
        if self.settings.drop_ack_share and self._faults.random() < self.settings.drop_ack_share:
            self.stats.acks_dropped += 1
            in_doubt.update(event.event_id for event in batch)  # the gateway has them: a resend duplicates
            raise _Retryable("acknowledgement lost (fault switch)")
        reply = _json_object(text)
        rejected_at = {entry["index"]: entry.get("errors", []) for entry in reply.get("rejected", [])}
        rejected = [(batch[index], errors) for index, errors in rejected_at.items()]
        for event, errors in rejected:
            LOG.warning("the gateway rejected event %s: %s; dropping it", event.event_id, "; ".join(errors))
        accepted = [event for index, event in enumerate(batch) if index not in rejected_at]
        self.outbox.settle((event.event_id for event in accepted), rejected)
        self.stats.accepted += len(accepted)
        self.stats.rejected += len(rejected)
        self.stats.delivered_after_offline += sum(event.waited_for_network for event in accepted)
        if reply.get("accepted") != len(accepted):
            LOG.warning(
                "the gateway accepted %s of %d events it did not reject", reply.get("accepted"), len(accepted)
            )


def _seconds(header: str) -> float:
    try:
        return max(0.0, float(header))
    except ValueError:
        return 0.0


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        raise DeliveryFailed(f"the gateway's 200 reply is not JSON: {text[:200]}") from None
    if not isinstance(value, dict):
        raise DeliveryFailed(f"the gateway's 200 reply is not a JSON object: {text[:200]}")
    return value
