"""Structured logs for the gateway: one JSON object per line, with the request id.

Every request gets an id: the client's ``X-Request-Id`` when it sent a sane one, else a
fresh one. It is echoed in the response's ``X-Request-Id`` and carried by every log
line written while the request is handled, so one client complaint leads to one grep.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import re
import sys
import uuid

from pythonjsonlogger.json import JsonFormatter

__all__ = [
    "REQUEST_ID_HEADER",
    "RequestIdFilter",
    "configure_json_logging",
    "current_request_id",
    "request_id_for",
    "reset_request_id",
    "set_request_id",
]

REQUEST_ID_HEADER = "X-Request-Id"
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")
_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


# A new id is this process's random prefix and a counter: unique across gateways and
# restarts, and far cheaper per request than a fresh UUID.
_ID_PREFIX = uuid.uuid4().hex[:16]
_ID_COUNTER = itertools.count(1)


def request_id_for(header: str | None) -> str:
    """The client's request id if it is short, printable and header-safe, else a new one (32 hex digits)."""
    if header is not None and _SANE_REQUEST_ID.fullmatch(header):
        return header
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


def set_request_id(request_id: str | None) -> contextvars.Token[str | None]:
    """Make ``request_id`` the current request's id (for log lines) until reset."""
    return _request_id.set(request_id)


def reset_request_id(token: contextvars.Token[str | None]) -> None:
    """Restore the request id that was current before ``set_request_id`` returned ``token``."""
    _request_id.reset(token)


def current_request_id() -> str | None:
    """The id of the request being handled, if any."""
    return _request_id.get()


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to every record (``None`` outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = _request_id.get()
        return True


def configure_json_logging(verbose: bool = False) -> None:
    """Send every log record to stderr as one JSON object per line, with ``request_id``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            "{asctime}{levelname}{name}{message}{request_id}",
            style="{",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            timestamp=False,
        )
    )
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
