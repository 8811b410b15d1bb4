"""The ingestion gateway: ``POST /v1/events`` validates, encodes, publishes and journals play events.

One request carries a batch ``{"events": [...]}``. The gateway checks, in this order and
before it reads the body: the API key (401), the key's rate limit (429 with
``Retry-After``), the content type (415) and the declared size (413). It then parses
the body (400), counts the events (413), validates every event against the v1
contract (a body whose every event is valid in one pass, ``ingest/gateway/batch_decoder.py``),
stamps the valid ones with one ``received_at`` from its own clock, encodes
them with the shared codec into one Pub/Sub message, waits for Pub/Sub to confirm it,
appends a receipt per event to the journal and syncs it, and only then replies::

    200 {"accepted": 2, "rejected": [{"index": 1, "event_id": "…", "errors": ["ms_played: …"]}],
         "batch_id": "…"}

503 with ``Retry-After`` when the batch could not be confirmed published and journaled
(nothing accepted), or when too many publishes are in flight already: the gateway
sheds load rather than queue it without bound. Every error is ``{"error": "<message>"}``.
``GET /healthz`` answers 200 when ready (503 while stopping), ``GET /metrics`` the
Prometheus metrics, ``GET /openapi.json`` the API document (``ingest/gateway/openapi.json``).

Run it with ``serve(settings)``; SIGINT or SIGTERM stops accepting connections, lets
in-flight requests finish their publishes, seals the journal and closes the publisher.
SIGHUP re-reads the API key file.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import math
import signal
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler
from limits import RateLimitItem
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ingest.gateway.batch_decoder import decode_clean_batch, prepare_decoder
from ingest.gateway.journal import JournalError, ReceiptJournal
from ingest.gateway.keys import ApiKeyStore
from ingest.gateway.logs import REQUEST_ID_HEADER, request_id_for, reset_request_id, set_request_id
from ingest.gateway.metrics import GatewayMetrics
from ingest.gateway.publisher import BatchPublisher, EventPublisher, PublishError
from ingest.gateway.settings import GatewaySettings
from schemas.codec import encode_batch
from schemas.validation import validate_event

__all__ = [
    "EVENTS_PATH",
    "HEALTH_PATH",
    "METRICS_PATH",
    "OPENAPI_FILE",
    "OPENAPI_PATH",
    "BatchPublisher",
    "BodyError",
    "EventPublisher",
    "GatewaySettings",
    "GatewayStartError",
    "PublishError",
    "api_key_store",
    "create_app",
    "read_batch",
    "serve",
    "tune_garbage_collector",
    "validate_batch",
]

logger = logging.getLogger(__name__)

EVENTS_PATH = "/v1/events"
HEALTH_PATH = "/healthz"
METRICS_PATH = "/metrics"
OPENAPI_PATH = "/openapi.json"
OPENAPI_FILE = Path(__file__).resolve().with_name("openapi.json")
_KEPT_HEADERS = frozenset({"allow", "retry-after", "www-authenticate"})
# Seal a journal hour this long after its publish timeout has certainly passed.
_JOURNAL_GRACE_MARGIN_SECONDS = 5.0


class GatewayStartError(RuntimeError):
    """The gateway could not start (Pub/Sub publisher, journal folder, port); the message says why."""


class _RateLimiter:
    """Per-API-key request limits over a moving window, counted in memory on the event loop.

    The rule of ``limits``' moving window: a request is allowed if fewer than ``amount``
    requests of the key were allowed in the last ``expiry`` seconds, for every limit. It is
    kept here as a deque of allowed request times per key and limit, expired as it is read,
    because ``limits``' in-memory storage starts a timer thread every 10 ms to expire
    entries: on a loaded gateway those threads cost more than the rest of the check. A
    refused request counts against no window.
    """

    def __init__(self, items: list[RateLimitItem], clock: Callable[[], float] = time.monotonic) -> None:
        self._windows = [(item.amount, float(item.get_expiry())) for item in items]
        self._clock = clock
        self._allowed: dict[str, list[deque[float]]] = {}

    def retry_after_seconds(self, key_id: str) -> int | None:
        """Count one request for ``key_id``; ``None`` if allowed, else seconds until it would be."""
        now = self._clock()
        allowed = self._allowed.get(key_id)
        if allowed is None:
            allowed = self._allowed[key_id] = [deque() for _ in self._windows]
        for (amount, seconds), times in zip(self._windows, allowed, strict=True):
            horizon = now - seconds
            while times and times[0] <= horizon:
                times.popleft()
            if len(times) >= amount:
                return max(1, math.ceil(times[-amount] + seconds - now))
        for times in allowed:
            times.append(now)
        return None


@dataclass
class _Gateway:
    """Everything a request handler needs, held by the app."""

    settings: GatewaySettings
    publisher: BatchPublisher
    metrics: GatewayMetrics
    keys: ApiKeyStore
    rate_limiter: _RateLimiter
    journal: ReceiptJournal
    openapi_document: bytes
    publishes_in_flight: int = 0  # a semaphore that never queues: full means 503 at once
    stopping: bool = False


_GATEWAY: web.AppKey[_Gateway] = web.AppKey("gateway", _Gateway)


def _json(status: int, payload: Any, headers: Mapping[str, str] | None = None) -> web.Response:
    try:
        body = orjson.dumps(payload)
    except TypeError:
        # A client's string with a lone surrogate cannot be UTF-8: escape it instead.
        body = json.dumps(payload).encode()
    return web.Response(body=body, status=status, content_type="application/json", headers=headers)


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return _json(status, {"error": message}, headers)


def _route_of(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def _observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id, metrics and JSON errors for every request; never a stack trace to a client."""
    gateway = request.app[_GATEWAY]
    request_id = request_id_for(request.headers.get(REQUEST_ID_HEADER))
    token = set_request_id(request_id)
    started = time.perf_counter()
    response: web.StreamResponse
    try:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            if exc.status == 404:
                message = f"no such resource: {request.path}"
            elif exc.status == 405:
                message = f"method {request.method} is not allowed on {request.path}"
            else:
                message = exc.reason
            kept = {name: value for name, value in exc.headers.items() if name.lower() in _KEPT_HEADERS}
            response = _error(exc.status, message, kept)
        except Exception:
            logger.exception("unexpected error on %s %s", request.method, request.path)
            response = _error(500, "internal error; the request was not processed")
        route = _route_of(request)
        gateway.metrics.count_request(route, response.status)
        if route == EVENTS_PATH:
            gateway.metrics.request_seconds.observe(time.perf_counter() - started)
        response.headers[REQUEST_ID_HEADER] = request_id
        return response
    finally:
        reset_request_id(token)


def _authenticate(header: str | None, keys: ApiKeyStore) -> tuple[str | None, str | None]:
    """``(key_id, None)`` if the ``Authorization`` header grants access, else ``(None, why not)``."""
    if header is None:
        return None, "missing Authorization header: send 'Authorization: Bearer <api key>'"
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None, "malformed Authorization header: expected 'Bearer <api key>'"
    matched = keys.authenticate(token.encode("utf-8", "surrogateescape"))
    return (matched, None) if matched is not None else (None, "invalid API key")


def _content_type_problem(request: web.Request) -> str | None:
    """Why the body's declared type is not JSON in UTF-8, or ``None`` if it is."""
    declared = request.headers.get("Content-Type")
    if declared is None:
        return "missing Content-Type: send 'Content-Type: application/json'"
    charset = request.charset
    if request.content_type != "application/json" or (charset is not None and charset.lower() != "utf-8"):
        return f"Content-Type must be application/json (UTF-8), got {declared[:100]!r}"
    return None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _parse_json(body: bytes) -> tuple[Any, str | None]:
    """The parsed body, or why it is not JSON."""
    try:
        return orjson.loads(body), None
    except orjson.JSONDecodeError:
        pass
    # orjson refuses a few things the contract lets through to per-event validation
    # (a lone surrogate escape in a string, nesting deeper than 1024): let the standard
    # parser decide, and explain in its words.
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_reject_constant), None
    except (ValueError, RecursionError) as error:
        return None, f"body is not valid JSON: {error}"


def _events_of(payload: object) -> list[Any] | str:
    """The event list of a request body, or why the body has the wrong shape."""
    if not isinstance(payload, dict):
        kind = "array" if isinstance(payload, list) else type(payload).__name__
        return f'body must be a JSON object like {{"events": [...]}}, got {kind}'
    problems = []
    if "events" not in payload:
        problems.append("body is missing the key 'events'")
    elif not isinstance(payload["events"], list):
        problems.append("'events' must be a JSON array of events")
    unknown = [key for key in payload if key != "events"]
    if unknown:
        listed = ", ".join(repr(key[:64]) for key in unknown[:10])
        problems.append(f"unknown top-level key(s) {listed}: the body holds only 'events'")
    if problems:
        return "; ".join(problems)
    events: list[Any] = payload["events"]
    return events


def _body_too_large(limit: int) -> web.Response:
    response = _error(413, f"request body is larger than {limit} bytes; send fewer events per request")
    response.force_close()  # do not read the rest of an oversized body just to keep the connection
    return response


def validate_batch(
    events: list[Any], received_at: datetime
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Valid events stamped with ``received_at``, and a rejection entry for every other one.

    A rejection is ``{"index", "event_id", "errors"}``: the event's position in the
    request, its ``event_id`` if it sent one as a string, and every broken rule.
    """
    accepted: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    for index, raw in enumerate(events):
        event, errors = validate_event(raw)
        if event is None:
            event_id = raw.get("event_id") if isinstance(raw, dict) else None
            if not isinstance(event_id, str):
                event_id = None
            rejected.append({"index": index, "event_id": event_id, "errors": errors})
        else:
            event["received_at"] = received_at
            accepted.append(event)
    return accepted, rejected


class BodyError(ValueError):
    """A request body that is not a batch the gateway can validate: ``status`` 400 or 413."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def read_batch(
    body: bytes, received_at: datetime, max_events: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A request body's valid events stamped with ``received_at``, and its rejection entries.

    A body whose every event is valid takes the fast path (``decode_clean_batch``); any
    other is parsed and validated event by event (``validate_batch``), which explains
    every rejection. Raises ``BodyError`` if the body is not JSON or not
    ``{"events": [...]}`` (400), or holds more than ``max_events`` events (413).
    """
    accepted = decode_clean_batch(body, received_at)
    if accepted is not None and len(accepted) <= max_events:
        return accepted, []
    payload, problem = _parse_json(body)
    if problem is not None:
        raise BodyError(400, problem)
    events = _events_of(payload)
    if isinstance(events, str):
        raise BodyError(400, events)
    if len(events) > max_events:
        raise BodyError(413, f"too many events: {len(events)}, at most {max_events} per request")
    return validate_batch(events, received_at)


def _unavailable(gateway: _Gateway, cause: str, message: str) -> web.Response:
    gateway.metrics.unavailable.labels(cause).inc()
    seconds = gateway.settings.retry_after_seconds
    return _error(503, f"{message}, retry in {seconds} s", {"Retry-After": str(seconds)})


async def _post_events(request: web.Request) -> web.Response:
    gateway = request.app[_GATEWAY]
    settings = gateway.settings
    key_id, problem = _authenticate(request.headers.get("Authorization"), gateway.keys)
    if key_id is None:
        problem = problem or "invalid API key"
        logger.info("401 from %s: %s", request.remote, problem)
        return _error(401, problem, {"WWW-Authenticate": 'Bearer realm="playledger"'})
    retry_after = gateway.rate_limiter.retry_after_seconds(key_id)
    if retry_after is not None:
        logger.info("429 for API key %s: over %s, retry in %d s", key_id, settings.rate_limit, retry_after)
        return _error(
            429,
            f"rate limit of {settings.rate_limit} requests per API key exceeded; retry in {retry_after} s",
            {"Retry-After": str(retry_after)},
        )
    problem = _content_type_problem(request)
    if problem is not None:
        return _error(415, problem)
    if gateway.stopping:
        return _unavailable(gateway, "stopping", "the gateway is shutting down; nothing was accepted")

    if request.content_length is not None and request.content_length > settings.max_body_bytes:
        return _body_too_large(settings.max_body_bytes)
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:  # chunked bodies have no Content-Length to check
        return _body_too_large(settings.max_body_bytes)
    received_at = datetime.now(UTC)
    try:
        accepted, rejected = read_batch(body, received_at, settings.max_events)
    except BodyError as error:
        return _error(error.status, error.message)
    gateway.metrics.count_rejections(rejected)
    batch_id: str | None = None
    accepted_count = len(accepted)
    if accepted:
        if gateway.publishes_in_flight >= settings.max_in_flight_publishes:
            return _unavailable(
                gateway,
                "in_flight_full",
                f"{settings.max_in_flight_publishes} publishes are already waiting for Pub/Sub; "
                "none of the events were accepted",
            )
        batch_id = uuid.uuid4().hex
        event_ids = [event["event_id"] for event in accepted]
        encoded = encode_batch(accepted, batch_id)
        # Free the events now, while they are still in the CPU's caches: after the wait for
        # Pub/Sub, with other requests run meanwhile, touching them again costs far more.
        del accepted
        gateway.publishes_in_flight += 1
        gateway.metrics.publishes_in_flight.inc()
        started = time.perf_counter()
        try:
            message_id = await gateway.publisher.publish(encoded)
        except PublishError as error:
            logger.warning("batch %s of %d events not published: %s", batch_id, accepted_count, error)
            return _unavailable(
                gateway, "publish_failed", "could not publish to Pub/Sub; none of the events were accepted"
            )
        finally:
            gateway.metrics.publish_seconds.observe(time.perf_counter() - started)
            gateway.metrics.publishes_in_flight.dec()
            gateway.publishes_in_flight -= 1
        published = time.perf_counter()
        try:
            await gateway.journal.record(batch_id, received_at, message_id, event_ids)
        except JournalError as error:
            # Published but not journaled: the client retries with the same event ids and the
            # pipeline drops the copy, so the retry's receipt stands for both.
            logger.error("batch %s published as %s but not journaled: %s", batch_id, message_id, error)
            return _unavailable(
                gateway,
                "journal_failed",
                "the receipt journal could not be written; send the same events again",
            )
        gateway.metrics.journal_write_seconds.observe(time.perf_counter() - published)
        gateway.metrics.events_accepted.inc(accepted_count)
    return _json(200, {"accepted": accepted_count, "rejected": rejected, "batch_id": batch_id})


async def _healthz(request: web.Request) -> web.Response:
    if request.app[_GATEWAY].stopping:
        return _json(503, {"status": "stopping"})
    return _json(200, {"status": "ok"})


async def _metrics(request: web.Request) -> web.Response:
    return web.Response(
        body=generate_latest(request.app[_GATEWAY].metrics.registry),
        headers={"Content-Type": CONTENT_TYPE_LATEST},
    )


async def _openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[_GATEWAY].openapi_document, content_type="application/json")


async def _run_journal(app: web.Application) -> AsyncIterator[None]:
    journal = app[_GATEWAY].journal
    await journal.start()
    yield
    await journal.close()


async def _poll_key_file(keys: ApiKeyStore, every_seconds: float) -> None:
    while True:
        await asyncio.sleep(every_seconds)
        try:
            keys.reload_if_changed()
        except Exception:  # a bug here must not stop the polling of later changes
            logger.exception("checking the API key file failed")


async def _watch_key_file(app: web.Application) -> AsyncIterator[None]:
    gateway = app[_GATEWAY]
    settings = gateway.settings
    task = None
    if settings.api_keys_file is not None and settings.keys_poll_seconds > 0:
        task = asyncio.get_running_loop().create_task(
            _poll_key_file(gateway.keys, settings.keys_poll_seconds)
        )
    yield
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _mark_stopping(app: web.Application) -> None:
    app[_GATEWAY].stopping = True


def create_app(settings: GatewaySettings, publisher: BatchPublisher) -> web.Application:
    """The gateway as an aiohttp application publishing through ``publisher``.

    The receipt journal opens when the app starts (an unusable data directory fails
    then, before any port is bound) and is sealed when it is cleaned up.
    """
    prepare_decoder()
    metrics = GatewayMetrics()
    keys = ApiKeyStore(
        settings.api_keys,
        settings.api_keys_file,
        on_change=metrics.api_keys.set,
        on_reload=lambda outcome: metrics.api_key_reloads.labels(outcome).inc(),
    )
    journal = ReceiptJournal(
        settings.data_dir,
        seal_grace_seconds=settings.publish_timeout_seconds + _JOURNAL_GRACE_MARGIN_SECONDS,
        on_sealed=lambda path, rows: metrics.journal_sealed_files.inc(),
    )
    metrics.watch_journal(journal.lag_seconds, journal.open_files)
    metrics.publishes_in_flight_limit.set(settings.max_in_flight_publishes)
    gateway = _Gateway(
        settings=settings,
        publisher=publisher,
        metrics=metrics,
        keys=keys,
        rate_limiter=_RateLimiter(settings.rate_limits),
        journal=journal,
        openapi_document=OPENAPI_FILE.read_bytes(),
    )
    app = web.Application(middlewares=[_observe], client_max_size=settings.max_body_bytes)
    app[_GATEWAY] = gateway
    app.cleanup_ctx.append(_run_journal)
    app.cleanup_ctx.append(_watch_key_file)
    app.on_shutdown.append(_mark_stopping)
    app.router.add_post(EVENTS_PATH, _post_events)
    app.router.add_get(HEALTH_PATH, _healthz)
    app.router.add_get(METRICS_PATH, _metrics)
    app.router.add_get(OPENAPI_PATH, _openapi)
    return app


def api_key_store(app: web.Application) -> ApiKeyStore:
    """The app's API keys, e.g. to reload them on a signal."""
    return app[_GATEWAY].keys


def serve(settings: GatewaySettings, on_ready: Callable[[int], None] | None = None) -> None:
    """Run the gateway until SIGINT or SIGTERM, then shut down gracefully and return.

    ``on_ready`` is called with the port actually bound (useful with ``port=0``) once the
    gateway accepts requests. Raises ``GatewayStartError`` if it cannot start. Runs on
    uvloop when it is installed, and calls ``tune_garbage_collector`` once listening.
    Must be called from the main thread.
    """
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve(settings, on_ready))


def tune_garbage_collector() -> None:
    """Keep the cyclic garbage collector's pauses off the requests of a long-running process.

    Everything allocated by the time this is called (modules, the app, the Pub/Sub client)
    lives as long as the process: frozen, it is no longer walked by every full collection,
    which on a loaded gateway paused the event loop for tens of milliseconds. Requests
    allocate thousands of containers that reference counting frees, so collecting young
    objects every 10,000 net allocations instead of 700 costs little memory and much less
    time. Call it once, after start-up and before serving.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def _make_publisher(settings: GatewaySettings) -> EventPublisher:
    try:
        return EventPublisher(settings.names.topic, settings.publish_timeout_seconds)
    except Exception as error:  # no credentials, a malformed endpoint: the library's words say which
        raise GatewayStartError(
            f"cannot make a Pub/Sub publisher for {settings.names.topic}: {error}"
        ) from None


async def _listen(runner: web.AppRunner, settings: GatewaySettings) -> int:
    site = web.TCPSite(runner, settings.host, settings.port)
    try:
        await site.start()
    except OSError as error:
        raise GatewayStartError(f"cannot listen on {settings.host}:{settings.port}: {error}") from None
    port: int = runner.addresses[0][1]
    return port


async def _serve(settings: GatewaySettings, on_ready: Callable[[int], None] | None) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    publisher = _make_publisher(settings)
    listening = False
    try:
        app = create_app(settings, publisher)
        # In-flight requests wait at most for one publish and one journal sync: give them that.
        shutdown_timeout = settings.publish_timeout_seconds + _JOURNAL_GRACE_MARGIN_SECONDS
        runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout, access_log=None)
        try:
            await runner.setup()  # opens the journal: an unusable data dir fails here, before listening
        except JournalError as error:
            raise GatewayStartError(str(error)) from None
        signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        try:
            port = await _listen(runner, settings)
            listening = True
            tune_garbage_collector()
            loop.add_signal_handler(signal.SIGINT, stop.set)
            loop.add_signal_handler(signal.SIGTERM, stop.set)
            loop.add_signal_handler(signal.SIGHUP, api_key_store(app).reload, "SIGHUP")
            logger.info(
                "gateway listening on http://%s:%d%s, publishing to %s, journal in %s",
                settings.host,
                port,
                EVENTS_PATH,
                settings.names.topic,
                settings.data_dir / "journal",
            )
            if on_ready is not None:
                on_ready(port)
            await stop.wait()
            logger.info("gateway stopping: finishing in-flight requests")
        finally:
            for signum in signals:
                loop.remove_signal_handler(signum)
            # Closes the listening socket first, waits for handlers in flight, then seals the journal.
            await runner.cleanup()
    finally:
        await asyncio.to_thread(publisher.close)
        if listening:
            logger.info("gateway stopped")
