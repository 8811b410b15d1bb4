"""Publishing encoded event batches to Pub/Sub from asyncio, with a bounded wait.

The gateway replies 200 only after Pub/Sub has confirmed a batch, so publishing is
awaited. The client library's own retries are cut to the same budget as the wait, so
that a batch the gateway reported as failed (503) is not quietly published minutes
later by a background retry. A batch can still land after a timeout that raced its
confirmation; the client then retries with the same event ids and the pipeline's
dedup by ``event_id`` absorbs the copy.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from typing import Protocol

import google.cloud.pubsub_v1 as pubsub_v1
from google.api_core import exceptions as gexc
from google.api_core import retry as gretry

from schemas.codec import EncodedBatch

__all__ = ["BatchPublisher", "EventPublisher", "PublishError"]

logger = logging.getLogger(__name__)

# The codes the generated publisher retries by default.
_RETRYABLE = gretry.if_exception_type(
    gexc.Aborted,
    gexc.Cancelled,
    gexc.DeadlineExceeded,
    gexc.InternalServerError,
    gexc.ResourceExhausted,
    gexc.ServiceUnavailable,
    gexc.Unknown,
)


class PublishError(RuntimeError):
    """Pub/Sub did not confirm a batch in time, or refused it; the message says why."""


class BatchPublisher(Protocol):
    """What the gateway needs from a publisher: confirm one batch or raise ``PublishError``."""

    async def publish(self, batch: EncodedBatch) -> str: ...


class EventPublisher:
    """Publishes batches to one topic with ``PublisherClient``, awaiting each confirmation.

    The client is made from the environment, so ``PUBSUB_EMULATOR_HOST`` applies.
    ``publish`` raises ``PublishError`` when Pub/Sub fails or does not confirm within
    ``timeout_seconds``.
    """

    def __init__(self, topic: str, timeout_seconds: float = 10.0) -> None:
        if timeout_seconds <= 0:
            raise ValueError(f"timeout_seconds must be positive, got {timeout_seconds}")
        self.topic = topic
        self._timeout_seconds = timeout_seconds
        retry = gretry.Retry(
            initial=0.1, maximum=1.0, multiplier=2.0, predicate=_RETRYABLE, timeout=timeout_seconds
        )
        self._client = pubsub_v1.PublisherClient(
            publisher_options=pubsub_v1.types.PublisherOptions(retry=retry, timeout=timeout_seconds)
        )
        self._pending: set[concurrent.futures.Future[str]] = set()
        self._lock = threading.Lock()
        self._closed = False

    async def publish(self, batch: EncodedBatch) -> str:
        """Publish one batch and return its message id once Pub/Sub has confirmed it."""
        try:
            future = self._client.publish(self.topic, batch.data, **batch.attributes)
        except Exception as error:  # stopped client, oversized message, bad attributes
            raise PublishError(f"could not publish to {self.topic}: {error}") from error
        self._track(future)
        try:
            message_id: str = await asyncio.wait_for(asyncio.wrap_future(future), self._timeout_seconds)
        except TimeoutError:
            raise PublishError(
                f"Pub/Sub did not confirm the batch within {self._timeout_seconds:g} s"
            ) from None
        except Exception as error:
            raise PublishError(f"Pub/Sub refused the batch: {error}") from error
        return message_id

    def _track(self, future: concurrent.futures.Future[str]) -> None:
        with self._lock:
            self._pending.add(future)

        def forget(done: concurrent.futures.Future[str]) -> None:
            with self._lock:
                self._pending.discard(done)

        future.add_done_callback(forget)

    def close(self) -> None:
        """Flush outstanding batches, wait for them (bounded) and close the connection."""
        if self._closed:
            return
        self._closed = True
        self._client.stop()
        with self._lock:
            pending = set(self._pending)
        if pending:
            _, not_done = concurrent.futures.wait(pending, timeout=self._timeout_seconds)
            if not_done:
                logger.warning("closing the publisher with %d unconfirmed batch(es)", len(not_done))
        self._client.transport.close()
