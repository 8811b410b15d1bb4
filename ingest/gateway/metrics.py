"""The gateway's Prometheus metrics, in a registry of their own, served at ``/metrics``.

Each gateway app has its own ``CollectorRegistry``, so several apps in one process (as
in the tests) never collide. Labels are bounded: the rejection ``field`` label is one
of the contract's field names, ``event`` (not an object) or ``unknown_field``, never a
name a client made up. What each metric means for an operator is in
``runbooks/gateway.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from schemas.validation import CLIENT_FIELDS, GATEWAY_FIELDS

__all__ = ["GatewayMetrics", "rejection_field"]

# Latency buckets in seconds: a publish to a healthy Pub/Sub takes milliseconds; the
# top buckets show requests that waited for the publish timeout.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_KNOWN_FIELDS = frozenset(CLIENT_FIELDS) | GATEWAY_FIELDS | {"event"}


def rejection_field(error: str) -> str:
    """The bounded metric label for one ``"field: reason"`` error."""
    name = error.partition(":")[0]
    return name if name in _KNOWN_FIELDS else "unknown_field"


class GatewayMetrics:
    """Every metric the gateway exports, registered in ``self.registry``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "playledger_gateway_requests",
            "HTTP requests answered, by route and status code.",
            ["route", "status"],
            registry=self.registry,
        )
        self._request_children: dict[tuple[str, int], Any] = {}
        self.request_seconds = Histogram(
            "playledger_gateway_request_seconds",
            "Time from a request's arrival to its answer, POST /v1/events only.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.events_accepted = Counter(
            "playledger_gateway_events_accepted",
            "Events published to Pub/Sub and journaled before a 200.",
            registry=self.registry,
        )
        self.events_rejected = Counter(
            "playledger_gateway_events_rejected",
            "Events rejected in a 200 answer because they broke the contract.",
            registry=self.registry,
        )
        self.event_errors = Counter(
            "playledger_gateway_event_errors",
            "Field errors in rejected events, by field (one event can have several).",
            ["field"],
            registry=self.registry,
        )
        self.unavailable = Counter(
            "playledger_gateway_unavailable",
            "503 answers by cause: publish_failed (Pub/Sub refused or timed out), "
            "in_flight_full (too many publishes waiting), journal_failed, stopping.",
            ["cause"],
            registry=self.registry,
        )
        self.publish_seconds = Histogram(
            "playledger_gateway_publish_seconds",
            "Time Pub/Sub took to confirm one batch (failed publishes included).",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.publishes_in_flight = Gauge(
            "playledger_gateway_publishes_in_flight",
            "Batches waiting for Pub/Sub to confirm them now.",
            registry=self.registry,
        )
        self.publishes_in_flight_limit = Gauge(
            "playledger_gateway_publishes_in_flight_limit",
            "The most batches allowed to wait for Pub/Sub at once (max_in_flight_publishes).",
            registry=self.registry,
        )
        self.journal_write_seconds = Histogram(
            "playledger_gateway_journal_write_seconds",
            "Time from a batch's publish confirmation until its receipts were fsync'ed.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.journal_lag_seconds = Gauge(
            "playledger_gateway_journal_lag_seconds",
            "Seconds since the oldest receipt-journal hour not yet sealed as Parquet ended (0: none).",
            registry=self.registry,
        )
        self.journal_open_files = Gauge(
            "playledger_gateway_journal_open_files",
            "Receipt-journal files not yet sealed as Parquet, this gateway's and orphans.",
            registry=self.registry,
        )
        self.journal_sealed_files = Counter(
            "playledger_gateway_journal_sealed_files",
            "Receipt-journal hour files converted to Parquet.",
            registry=self.registry,
        )
        self.api_keys = Gauge(
            "playledger_gateway_api_keys",
            "API keys in force.",
            registry=self.registry,
        )
        self.api_key_reloads = Counter(
            "playledger_gateway_api_key_reloads",
            "Key file reloads by outcome: applied, unchanged, refused (old keys kept).",
            ["outcome"],
            registry=self.registry,
        )

    def count_request(self, route: str, status: int) -> None:
        """Count one answered request (each labelled child is looked up once)."""
        child = self._request_children.get((route, status))
        if child is None:
            child = self._request_children[(route, status)] = self.requests.labels(route, str(status))
        child.inc()

    def count_rejections(self, rejected: Iterable[dict[str, object]]) -> None:
        """Count rejected events and each of their field errors."""
        count = 0
        for entry in rejected:
            count += 1
            errors = entry["errors"]
            assert isinstance(errors, list)
            for error in errors:
                self.event_errors.labels(rejection_field(error)).inc()
        if count:
            self.events_rejected.inc(count)

    def watch_journal(self, lag_seconds: Callable[[], float], open_files: Callable[[], int]) -> None:
        """Read journal lag and open files from the journal itself at every scrape."""
        self.journal_lag_seconds.set_function(lag_seconds)
        self.journal_open_files.set_function(lambda: float(open_files()))
