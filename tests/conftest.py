"""Session-wide fixtures: one real Pub/Sub emulator for the whole test run."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingest.pubsub import Emulator, ensure_topology
from schemas.topology import PubSubNames


@pytest.fixture(scope="session")
def pubsub_emulator() -> Iterator[str]:
    """The emulator's host:port; one per session, started unless PUBSUB_EMULATOR_HOST is set."""
    existing = os.environ.get("PUBSUB_EMULATOR_HOST")
    if existing:
        yield existing
        return
    with Emulator() as emulator:
        os.environ["PUBSUB_EMULATOR_HOST"] = emulator.host
        try:
            yield emulator.host
        finally:
            os.environ.pop("PUBSUB_EMULATOR_HOST", None)


@pytest.fixture
def pubsub_names(pubsub_emulator: str) -> PubSubNames:
    """A fresh topic and subscriptions of the contract's shape, private to one test."""
    names = PubSubNames(project="local-dev").scratch("play-events")
    ensure_topology(names)
    return names


@pytest.fixture
def tiny_catalog(tmp_path: Path) -> Path:
    """T1: RH_A 66.67 % / RH_B 33.33 %; T2: RH_B alone. Rates: SE premium 1000, fallback 500/100."""
    directory = tmp_path / "catalog"
    directory.mkdir()
    (directory / "tracks.csv").write_text(
        "track_id,title,artist,duration_ms\nT1,One,Band,200000\nT2,Two,Band,180000\n"
    )
    (directory / "rights_holders.csv").write_text(
        "rights_holder_id,name,role\nRH_A,Label A,label\nRH_B,Publisher B,publisher\n"
    )
    (directory / "splits.csv").write_text(
        "track_id,rights_holder_id,share_bps\nT1,RH_A,6667\nT1,RH_B,3333\nT2,RH_B,10000\n"
    )
    (directory / "rates.csv").write_text(
        "territory,product,rate_micros,currency\nSE,premium,1000,USD\n*,premium,500,USD\n*,free,100,USD\n"
    )
    return directory


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Beam canaries reported apart: they test Beam, not us (tests/pipelines/test_beam_canaries.py)."""
    outcomes = {"passed": 0, "failed": 0}
    for outcome in outcomes:
        for report in terminalreporter.stats.get(outcome, []):
            if report.when == "call" and "beam_canary" in report.keywords:
                outcomes[outcome] += 1
    if sum(outcomes.values()):
        terminalreporter.write_line(
            f"Beam canaries (Beam's behaviour, not ours): {outcomes['passed']} passed, "
            f"{outcomes['failed']} failed"
            + (
                "; Beam changed: re-check pipelines/direct_runner.py and pipelines/options.py"
                if outcomes["failed"]
                else ""
            )
        )
