"""A stand-in for the gateway's ``POST /v1/events`` that records what it receives.

It speaks the v1 contract's replies (200 with ``accepted`` and ``rejected``, 401, 503
with ``Retry-After``) from a script, so a test can make the sender meet each outcome,
and records every request's ``event_id``s in arrival order, which is what proves
"nothing lost, nothing sent twice". It runs on 127.0.0.1:<free port> in a thread of
its own, so a sender in another process can post to it.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from dataclasses import dataclass

from aiohttp import web


@dataclass(frozen=True)
class Reply:
    """How to answer one request: a status, a delay before answering, ids to reject."""

    status: int = 200
    delay_seconds: float = 0.0
    retry_after: str = "0"


class RecordingGateway:
    """Answers requests from ``script`` in turn (then 200s), recording every event id."""

    def __init__(
        self,
        script: list[Reply] | None = None,
        reject: frozenset[str] = frozenset(),
        hold_from: int | None = None,
    ) -> None:
        self.script = list(script or [])
        self.reject = reject
        self.hold_from = hold_from  # requests from this number on (1-based) wait for release()
        self.requests: list[list[str]] = []
        self.held = threading.Event()
        self._release: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def received(self) -> Counter[str]:
        """How many times each event id arrived."""
        return Counter(event_id for request in self.requests for event_id in request)

    async def _post(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != "Bearer test-key-0123":
            return web.json_response({"error": "bad key"}, status=401)
        events = json.loads(await request.read())["events"]
        self.requests.append([event["event_id"] for event in events])
        number = len(self.requests)
        reply = self.script.pop(0) if self.script else Reply()
        if self.hold_from is not None and number >= self.hold_from:
            assert self._release is not None
            self.held.set()
            await self._release.wait()
        await asyncio.sleep(reply.delay_seconds)
        if reply.status != 200:
            return web.json_response(
                {"error": "scripted"}, status=reply.status, headers={"Retry-After": reply.retry_after}
            )
        rejected = [
            {"index": index, "event_id": event["event_id"], "errors": ["track_id: scripted rejection"]}
            for index, event in enumerate(events)
            if event["event_id"] in self.reject
        ]
        return web.json_response(
            {"accepted": len(events) - len(rejected), "rejected": rejected, "batch_id": "b"}
        )

    async def _main(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/events", self._post)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = runner.addresses[0][1]
        self._loop = asyncio.get_running_loop()
        self._release = asyncio.Event()
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def release(self) -> None:
        """Let held requests (and later ones) through."""
        self.hold_from = None
        assert self._loop is not None and self._release is not None
        self._loop.call_soon_threadsafe(self._release.set)

    def __enter__(self) -> RecordingGateway:
        self._thread.start()
        if not self._ready.wait(timeout=10):
            raise RuntimeError("the recording gateway did not start")
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._release.set if self._release else (lambda: None))
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)
