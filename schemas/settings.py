"""One typed settings mechanism for every part: msgspec Structs checked when they are made.

A settings class subclasses :class:`Settings` and declares each field's type and limits
once, as ``Annotated[int, msgspec.Meta(gt=0, description="must be positive")]``. Making
one (directly, from parsed flags, or through :meth:`Settings.from_mapping` from a file or
the environment) converts every field to its declared type with msgspec and refuses a
value out of its limits, a bool where a number is due, or an unknown key, with a
``ValueError`` that names the setting::

    max_events must be positive, got 0
    unknown gateway setting(s): max_evnets; known: data_dir, host, ...

Rules that tie two fields together, or need a library to parse, go in ``check()``.
"""

from __future__ import annotations

import functools
import os
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Self

import msgspec

__all__ = [
    "NonNegativeInt",
    "PositiveInt",
    "PositiveNumber",
    "Settings",
]

PositiveInt = typing.Annotated[int, msgspec.Meta(gt=0, description="must be a positive integer")]
NonNegativeInt = typing.Annotated[int, msgspec.Meta(ge=0, description="must be a non-negative integer")]
PositiveNumber = typing.Annotated[float, msgspec.Meta(gt=0, description="must be positive")]


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of every settings class: frozen, keyword-only, checked field by field when made.

    ``setting_kind`` names the part in messages ("pipeline", "gateway", ...). A field's
    ``Meta(description=...)`` is the rule as the message states it; with
    ``Meta(extra={"secret": True})`` the offending value is never echoed.
    """

    setting_kind: ClassVar[str] = "a"

    def __post_init__(self) -> None:
        for name, hint in _hints(type(self)).items():
            value = getattr(self, name)
            try:
                converted = msgspec.convert(value, hint, dec_hook=_from_text)
            except msgspec.ValidationError as error:
                raise ValueError(_message(name, hint, value, error)) from None
            if converted is not value and type(converted) is not type(value):
                msgspec.structs.force_setattr(self, name, converted)
        self.check()

    def check(self) -> None:
        """Rules across fields; raise ``ValueError`` saying what to fix. None by default."""

    @classmethod
    def known(cls) -> tuple[str, ...]:
        """The settings' names."""
        return cls.__struct_fields__

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Self:
        """Build from a mapping (parsed flags, a file, the environment); an unknown key is an error."""
        cls.refuse_unknown(values)
        return cls(**dict(values))

    @classmethod
    def refuse_unknown(cls, names: typing.Iterable[str]) -> None:
        """``ValueError`` naming every one of ``names`` that is not a setting, and the known ones."""
        unknown = sorted(set(names) - set(cls.__struct_fields__))
        if unknown:
            raise ValueError(
                f"unknown {cls.setting_kind} setting(s): {', '.join(unknown)}; "
                f"known: {', '.join(sorted(cls.__struct_fields__))}"
            )

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes``, checked like a new one."""
        self.refuse_unknown(changes)
        return msgspec.structs.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """The settings by name, as they are (not converted to builtins)."""
        return msgspec.structs.asdict(self)


def _from_text(kind: type, value: Any) -> Any:
    # msgspec hands a ``str`` for a ``Path`` field here: a path from a flag or a file.
    if kind is Path and isinstance(value, str | os.PathLike):
        return Path(value)
    raise TypeError(f"Expected `{kind.__name__}`, got `{type(value).__name__}`")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls, include_extras=True)
    return {name: hints[name] for name in cls.__struct_fields__}  # type: ignore[attr-defined]


def _meta(hint: Any) -> msgspec.Meta | None:
    if typing.get_origin(hint) is typing.Annotated:
        for extra in hint.__metadata__:
            if isinstance(extra, msgspec.Meta):
                return extra
    for arg in typing.get_args(hint):  # Annotated inside an Optional
        found = _meta(arg)
        if found is not None:
            return found
    return None


def _message(name: str, hint: Any, value: Any, error: msgspec.ValidationError) -> str:
    meta = _meta(hint)
    secret = meta is not None and bool((meta.extra or {}).get("secret"))
    rule = meta.description if meta is not None and meta.description else f"is not valid ({error})"
    return rule_message(name, rule, None if secret else value)


def rule_message(name: str, rule: str, value: Any = None) -> str:
    """``"<name> <rule>, got <value>"``, or without the value when it must not be echoed."""
    return f"{name} {rule}" if value is None else f"{name} {rule}, got {value!r}"
