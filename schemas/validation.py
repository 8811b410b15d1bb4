"""Validation of play events against the v1 contract, one table of field rules.

In the manner of Snowplow's analytics SDK, a table maps every client field of the
``PlayEvent`` schema to a rule, and validating an event runs every rule and collects
every error, each formatted ``"field: reason"``, rather than stopping at the first.

A rule has two halves. ``convert`` turns a JSON value into the value the codec wants
(only ``played_at`` needs one: an RFC 3339 string becomes an aware UTC datetime).
``check`` holds the rule itself (type, range, enum, code list) and runs on the
converted value. The gateway runs both on JSON from clients (``validate_event``); the
pipeline runs only ``check`` on events decoded from Avro (``check_decoded_event``), so
an event that got onto the wire without passing the gateway is still held to the same
rules, by the same functions.

The set of fields is the schema's, minus ``received_at`` (the gateway's stamp); the
enum symbols come from the schema too.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any

import pycountry

from schemas.codec import load_schema

__all__ = [
    "BITRATES_KBPS",
    "CANONICAL_UUID_PATTERN",
    "CLIENT_FIELDS",
    "GATEWAY_FIELDS",
    "MAX_EVENT_ID_CHARS",
    "MAX_ID_CHARS",
    "MAX_MS_PLAYED",
    "RFC3339_PATTERN",
    "FieldError",
    "FieldRule",
    "check_decoded_event",
    "enum_symbols",
    "parse_rfc3339",
    "rfc3339_to_utc",
    "territory_codes",
    "validate_event",
]

MAX_EVENT_ID_CHARS = 64
MAX_ID_CHARS = 128
MAX_MS_PLAYED = 86_400_000  # one day: no single play lasts longer
BITRATES_KBPS = frozenset({96, 160, 320})
GATEWAY_FIELDS = frozenset({"received_at"})

RFC3339_PATTERN = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})")
CANONICAL_UUID_PATTERN = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)


class FieldError(ValueError):
    """One field broke its rule; the message is the reason, without the field name."""


def _json_type(value: object) -> str:
    """The JSON name of a value's type, for messages a client can act on."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def _require_string(value: object, max_chars: int) -> str:
    if not isinstance(value, str):
        raise FieldError(f"must be a string, got {_json_type(value)}")
    if len(value) > max_chars:
        raise FieldError(f"must be at most {max_chars} characters, got {len(value)}")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # JSON may carry lone surrogates ("\ud800"); UTF-8 cannot
            raise FieldError("must be valid Unicode text (no lone surrogates)") from None
    return value


def _require_int(value: object) -> int:
    # bool is an int subclass in Python, but true is not a number of milliseconds.
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldError(f"must be an integer, got {_json_type(value)}")
    return value


@cache
def enum_symbols(field_name: str) -> tuple[str, ...]:
    """Symbols of an enum field, read from the schema so they are declared once."""
    for field in load_schema()["fields"]:
        if field["name"] == field_name:
            symbols: tuple[str, ...] = tuple(field["type"]["symbols"])
            return symbols
    raise KeyError(field_name)


@cache
def territory_codes() -> frozenset[str]:
    """ISO 3166-1 alpha-2 codes: the territories a play may carry."""
    return frozenset(country.alpha_2 for country in pycountry.countries)


def parse_rfc3339(value: object) -> datetime:
    """An RFC 3339 date-time with an explicit offset (``Z`` or ``±HH:MM``) as aware UTC."""
    if not isinstance(value, str):
        raise FieldError(f"must be an RFC 3339 date-time string, got {_json_type(value)}")
    if not RFC3339_PATTERN.fullmatch(value):
        raise FieldError(
            f"must be an RFC 3339 date-time with an offset, like 2026-11-28T07:00:00+01:00 or "
            f"2026-11-28T06:00:00Z, got {value[:40]!r}"
        )
    try:
        return rfc3339_to_utc(value)
    except (ValueError, OverflowError) as error:
        raise FieldError(f"is not a valid date-time: {error}") from None


def rfc3339_to_utc(text: str) -> datetime:
    """A text that matched ``RFC3339_PATTERN`` as aware UTC; ``ValueError``/``OverflowError`` if no date."""
    return datetime.fromisoformat(text.upper()).astimezone(UTC)


def _check_event_id(value: object) -> None:
    # 8-4-4-4-12 hex digits; either case, since some platforms print UUIDs in upper case.
    text = _require_string(value, MAX_EVENT_ID_CHARS)
    if not CANONICAL_UUID_PATTERN.fullmatch(text):
        raise FieldError("must be a UUID in canonical form, like 0b0d8d38-4c3e-4b8a-9a86-5f3f1c4e2a10")


def _check_identifier(value: object) -> None:
    text = _require_string(value, MAX_ID_CHARS)
    if not text.strip():
        raise FieldError("must not be empty or blank")


def _check_utc_datetime(value: object) -> None:
    if not isinstance(value, datetime):
        raise FieldError(f"must be a date-time, got {_json_type(value)}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise FieldError("must carry a time zone offset")


def _check_ms_played(value: object) -> None:
    ms_played = _require_int(value)
    if not 0 <= ms_played <= MAX_MS_PLAYED:
        raise FieldError(f"must be between 0 and {MAX_MS_PLAYED}, got {ms_played}")


def _check_territory(value: object) -> None:
    code = _require_string(value, MAX_ID_CHARS)
    if code in territory_codes():
        return
    if code.upper() in territory_codes():
        raise FieldError(f"must be upper case: {code.upper()!r}, not {code!r}")
    raise FieldError(f"must be an ISO 3166-1 alpha-2 country code, got {code[:16]!r}")


def _enum_check(field_name: str) -> Callable[[object], None]:
    def check(value: object) -> None:
        symbols = enum_symbols(field_name)
        if not isinstance(value, str):
            raise FieldError(f"must be a string, got {_json_type(value)}")
        if value not in symbols:
            raise FieldError(f"must be one of {'|'.join(symbols)}, got {value[:32]!r}")

    return check


def _check_bitrate(value: object) -> None:
    bitrate = _require_int(value)
    if bitrate not in BITRATES_KBPS:
        allowed = "|".join(str(rate) for rate in sorted(BITRATES_KBPS))
        raise FieldError(f"must be one of {allowed}, got {bitrate}")


def _check_offline(value: object) -> None:
    if not isinstance(value, bool):
        raise FieldError(f"must be a boolean, got {_json_type(value)}")


def _check_device(value: object) -> None:
    if value is not None:
        _require_string(value, MAX_ID_CHARS)


@dataclass(frozen=True)
class FieldRule:
    """How one client field is converted from JSON and checked.

    ``convert`` maps the JSON value to the codec's value (``None``: taken as is);
    ``check`` raises ``FieldError`` when a converted value breaks the contract.
    A field that is not ``required`` may be absent or null and then becomes ``None``.
    """

    check: Callable[[object], None]
    convert: Callable[[object], Any] | None = None
    required: bool = True


CLIENT_FIELDS: Mapping[str, FieldRule] = {
    "event_id": FieldRule(_check_event_id),
    "user_id": FieldRule(_check_identifier),
    "track_id": FieldRule(_check_identifier),
    "played_at": FieldRule(_check_utc_datetime, convert=parse_rfc3339),
    "ms_played": FieldRule(_check_ms_played),
    "territory": FieldRule(_check_territory),
    "product": FieldRule(_enum_check("product")),
    "context": FieldRule(_enum_check("context")),
    "bitrate_kbps": FieldRule(_check_bitrate),
    "offline": FieldRule(_check_offline),
    "device": FieldRule(_check_device, required=False),
}
"""The rule table: one entry per field of the schema except ``received_at``.

The gateway's fast path (``ingest.gateway.batch_decoder``) restates these rules as msgspec types
to check them in C: a rule changed here must change there too. Its tests hold the two
paths to the same decisions, but only on the values they generate.
"""


def validate_event(raw: object) -> tuple[dict[str, Any] | None, list[str]]:
    """Validate one event as a client sent it (parsed JSON).

    Returns ``(event, [])`` with the converted event (schema field order, without
    ``received_at``) when every rule holds, else ``(None, errors)`` with every broken
    rule as ``"field: reason"``.
    """
    if not isinstance(raw, Mapping):
        return None, [f"event: must be a JSON object, got {_json_type(raw)}"]
    event: dict[str, Any] = {}
    errors: list[str] = []
    for name, rule in CLIENT_FIELDS.items():
        if name not in raw:
            if rule.required:
                errors.append(f"{name}: required")
            else:
                event[name] = None
            continue
        value = raw[name]
        try:
            if value is not None or rule.required:
                value = rule.convert(value) if rule.convert is not None else value
                rule.check(value)
        except FieldError as error:
            errors.append(f"{name}: {error}")
            continue
        event[name] = value
    for name in raw:
        if name in CLIENT_FIELDS:
            continue
        if name in GATEWAY_FIELDS:
            errors.append(f"{name}: is set by the gateway and must not be sent")
        else:
            errors.append(f"{str(name)[:64]}: unknown field")
    if errors:
        return None, errors
    return event, []


def check_decoded_event(event: Mapping[str, Any]) -> list[str]:
    """Every contract rule an event decoded from Avro breaks, as ``"field: reason"``.

    Avro guarantees the types; this holds the decoded values to the same ranges,
    enums, code lists and formats the gateway enforces, so the pipeline can dead-letter
    events that reached the wire some other way. An empty list means the event is valid.
    """
    errors: list[str] = []
    for name, rule in CLIENT_FIELDS.items():
        if name not in event:
            if rule.required:
                errors.append(f"{name}: required")
            continue
        try:
            rule.check(event[name])
        except FieldError as error:
            errors.append(f"{name}: {error}")
    return errors
