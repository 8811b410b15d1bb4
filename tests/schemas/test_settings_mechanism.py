"""Every settings class is made the same way: typed, frozen, unknown keys and bad values refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ingest.archiver.service import ArchiverSettings
from ingest.gateway.settings import GatewaySettings
from pipelines.config import PipelineConfig
from pipelines.local.stack import StackSettings
from pipelines.supervisor import SupervisorSettings
from schemas.settings import Settings

KEY = "k3y-for-settings-tests"

# Each class with the least it needs, and one of its numeric settings.
REQUIRED: list[tuple[type[Settings], dict[str, Any], str]] = [
    (PipelineConfig, {}, "period_seconds"),
    (GatewaySettings, {"api_keys": frozenset({KEY}), "data_dir": Path("data")}, "max_events"),
    (
        ArchiverSettings,
        {"data_dir": Path("data"), "subscription": "projects/p/subscriptions/s"},
        "grace_seconds",
    ),
    (StackSettings, {"data_dir": Path("data")}, "gateway_port"),
    (SupervisorSettings, {"topic": "projects/p/topics/t"}, "drain_timeout_seconds"),
]
IDS = [cls.__name__ for cls, _, _ in REQUIRED]


@pytest.mark.parametrize(("cls", "required", "number"), REQUIRED, ids=IDS)
def test_an_unknown_key_is_refused_and_the_known_ones_named(
    cls: type[Settings], required: dict[str, Any], number: str
) -> None:
    refused = rf"unknown {cls.setting_kind} setting\(s\): colour; known: .*{number}"
    with pytest.raises(ValueError, match=refused):
        cls.from_mapping({**required, "colour": "blue"})
    with pytest.raises(TypeError):
        cls(**required, colour="blue")
    with pytest.raises(ValueError, match=r"unknown .* setting"):
        cls(**required).replace(colour="blue")


@pytest.mark.parametrize(("cls", "required", "number"), REQUIRED, ids=IDS)
@pytest.mark.parametrize("bad", [-1, True, "many", None])
def test_a_bad_value_is_refused_naming_the_setting(
    cls: type[Settings], required: dict[str, Any], number: str, bad: Any
) -> None:
    with pytest.raises(ValueError, match=rf"^{number} "):
        cls(**required, **{number: bad})
    with pytest.raises(ValueError, match=rf"^{number} "):
        cls(**required).replace(**{number: bad})


@pytest.mark.parametrize(("cls", "required", "number"), REQUIRED, ids=IDS)
def test_settings_are_frozen_and_equal_by_value(
    cls: type[Settings], required: dict[str, Any], number: str
) -> None:
    settings = cls.from_mapping(required)
    with pytest.raises(AttributeError):
        setattr(settings, number, 7)
    assert settings == cls(**required)
    assert hash(settings) == hash(cls(**required))
    changed = settings.replace(**{number: 7})
    assert getattr(changed, number) == 7
    assert getattr(settings, number) != 7


def test_paths_and_sequences_are_converted_to_their_declared_types() -> None:
    config = PipelineConfig.from_mapping({"catalog_dir": "some/catalog"})
    assert config.catalog_dir == Path("some/catalog")
    stack = StackSettings(data_dir="data", pipeline_args=["--a", "b"])  # type: ignore[arg-type]
    assert stack.data_dir == Path("data")
    assert stack.pipeline_args == ("--a", "b")


def test_a_secret_is_never_echoed() -> None:
    with pytest.raises(ValueError) as raised:
        StackSettings(data_dir=Path("data"), api_keys=KEY)  # type: ignore[arg-type]
    assert raised.match("^api_keys ")
    assert KEY not in str(raised.value)


def test_rules_across_settings_still_apply() -> None:
    with pytest.raises(ValueError, match="early_firing_seconds must be shorter than period_seconds"):
        PipelineConfig(period_seconds=60, early_firing_seconds=60)
    with pytest.raises(ValueError, match="subscription must be projects/<project>/subscriptions/<id>"):
        ArchiverSettings(data_dir=Path("data"), subscription="royalties")
