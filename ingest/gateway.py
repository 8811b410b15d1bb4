"""The ingestion gateway: ``POST /v1/events`` validates, encodes and publishes play events.

One request carries a batch ``{"events": [...]}``. The gateway checks the API key
before it reads the body, validates every event against the v1 contract, stamps the
valid ones with one ``received_at`` from its own clock, encodes them with the shared
codec into one Pub/Sub message and replies only once Pub/Sub has confirmed it::

    200 {"accepted": 2, "rejected": [{"index": 1, "event_id": "…", "errors": ["ms_played: …"]}],
         "batch_id": "…"}

400 not JSON or wrong shape, 401 bad or missing key, 413 too large, 503 with
``Retry-After`` when publishing failed (nothing accepted). Every error is
``{"error": "<message>"}``; ``GET /healthz`` answers 200 when ready.

Run it with ``serve(GatewaySettings.from_env(port=8080))``; SIGINT or SIGTERM stops
accepting connections, lets in-flight requests finish and closes the publisher.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import signal
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from ingest.publisher import BatchPublisher, EventPublisher, PublishError
from ingest.settings import GatewaySettings
from schemas.codec import encode_batch
from schemas.validation import validate_event

__all__ = [
    "EVENTS_PATH",
    "HEALTH_PATH",
    "BatchPublisher",
    "EventPublisher",
    "GatewaySettings",
    "PublishError",
    "create_app",
    "serve",
]

logger = logging.getLogger(__name__)

EVENTS_PATH = "/v1/events"
HEALTH_PATH = "/healthz"
_KEPT_HEADERS = frozenset({"allow", "retry-after"})

_SETTINGS: web.AppKey[GatewaySettings] = web.AppKey("settings")
_PUBLISHER: web.AppKey[BatchPublisher] = web.AppKey("publisher")
_KEYS: web.AppKey[tuple[bytes, ...]] = web.AppKey("api_keys")


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into a JSON error; never show a client a stack trace."""
    try:
        return await handler(request)
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
        return _error(exc.status, message, kept)
    except Exception:
        logger.exception("unexpected error on %s %s", request.method, request.path)
        return _error(500, "internal error; the request was not processed")


def _authorization_problem(header: str | None, keys: tuple[bytes, ...]) -> str | None:
    """Why the ``Authorization`` header does not grant access, or ``None`` if it does."""
    if header is None:
        return "missing Authorization header: send 'Authorization: Bearer <api key>'"
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return "malformed Authorization header: expected 'Bearer <api key>'"
    presented = token.encode("utf-8", "surrogateescape")
    matched = False
    for key in keys:  # compare with every key, so the timing says nothing about which one
        matched |= hmac.compare_digest(presented, key)
    return None if matched else "invalid API key"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


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


def _validate_all(
    events: list[Any], received_at: datetime
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Valid events stamped with ``received_at``, and a rejection entry for every other one."""
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


async def _post_events(request: web.Request) -> web.Response:
    settings = request.app[_SETTINGS]
    problem = _authorization_problem(request.headers.get("Authorization"), request.app[_KEYS])
    if problem is not None:
        return _error(401, problem, {"WWW-Authenticate": 'Bearer realm="playledger"'})

    if request.content_length is not None and request.content_length > settings.max_body_bytes:
        return _body_too_large(settings.max_body_bytes)
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:  # chunked bodies have no Content-Length to check
        return _body_too_large(settings.max_body_bytes)
    try:
        payload = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as error:
        return _error(400, f"body is not valid JSON: {error}")
    events = _events_of(payload)
    if isinstance(events, str):
        return _error(400, events)
    if len(events) > settings.max_events:
        return _error(413, f"too many events: {len(events)}, at most {settings.max_events} per request")

    accepted, rejected = _validate_all(events, received_at=datetime.now(UTC))
    batch_id: str | None = None
    if accepted:
        batch_id = uuid.uuid4().hex
        try:
            await request.app[_PUBLISHER].publish(encode_batch(accepted, batch_id))
        except PublishError as error:
            logger.warning("batch %s of %d events not published: %s", batch_id, len(accepted), error)
            return _error(
                503,
                f"could not publish to Pub/Sub; none of the events were accepted, "
                f"retry in {settings.retry_after_seconds} s",
                {"Retry-After": str(settings.retry_after_seconds)},
            )
    return web.json_response({"accepted": len(accepted), "rejected": rejected, "batch_id": batch_id})


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def create_app(settings: GatewaySettings, publisher: BatchPublisher) -> web.Application:
    """The gateway as an aiohttp application publishing through ``publisher``."""
    app = web.Application(middlewares=[_json_errors], client_max_size=settings.max_body_bytes)
    app[_SETTINGS] = settings
    app[_PUBLISHER] = publisher
    app[_KEYS] = tuple(key.encode("ascii") for key in sorted(settings.api_keys))
    app.router.add_post(EVENTS_PATH, _post_events)
    app.router.add_get(HEALTH_PATH, _healthz)
    return app


def serve(settings: GatewaySettings, on_ready: Callable[[int], None] | None = None) -> None:
    """Run the gateway until SIGINT or SIGTERM, then shut down gracefully and return.

    ``on_ready`` is called with the port actually bound (useful with ``port=0``)
    once the gateway accepts requests. Must be called from the main thread.
    """
    asyncio.run(_serve(settings, on_ready))


async def _serve(settings: GatewaySettings, on_ready: Callable[[int], None] | None) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    publisher = EventPublisher(settings.names.topic, settings.publish_timeout_seconds)
    try:
        # In-flight requests wait at most for one publish; give them that and a margin.
        shutdown_timeout = settings.publish_timeout_seconds + 5.0
        runner = web.AppRunner(create_app(settings, publisher), shutdown_timeout=shutdown_timeout)
        await runner.setup()
        try:
            site = web.TCPSite(runner, settings.host, settings.port)
            await site.start()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, stop.set)
            port: int = runner.addresses[0][1]
            logger.info(
                "gateway listening on http://%s:%d%s, publishing to %s",
                settings.host,
                port,
                EVENTS_PATH,
                settings.names.topic,
            )
            if on_ready is not None:
                on_ready(port)
            await stop.wait()
            logger.info("gateway stopping: finishing in-flight requests")
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
            # Closes the listening socket first, then waits for handlers in flight.
            await runner.cleanup()
    finally:
        await asyncio.to_thread(publisher.close)
        logger.info("gateway stopped")
