"""Wrong input to the `playledger` command fails with a clear message and a non-zero exit."""

from __future__ import annotations

from pathlib import Path

import pytest

from ledger.views import view_names
from pipelines.local.cli import main


@pytest.mark.parametrize("command", ["stream", "batch"])
def test_a_misspelt_pipeline_flag_is_refused(
    command: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Beam itself only logs "Discarding unparseable args" and runs with the defaults.
    argv = ["pipeline", command, "--data-dir", str(tmp_path), "--perod", "2026-11-28T07:00:00Z"]
    assert main(argv) == 2
    assert "unknown argument(s): --perod 2026-11-28T07:00:00Z" in caplog.text
    assert not any(tmp_path.iterdir())  # nothing was started, nothing written


def test_beam_and_runner_flags_are_not_unknown() -> None:
    from pipelines.options import refuse_unknown_flags

    dataflow = [
        "--runner",
        "DataflowRunner",
        "--project",
        "p",
        "--region",
        "r",
        "--temp_location",
        "gs://b/t",
    ]
    refuse_unknown_flags(
        ["--data-dir", "gs://b/p", *dataflow, "--period_seconds", "3600", "--heartbeat-seconds", "0"]
    )
    with pytest.raises(ValueError, match="--dedup-horizon-hour"):
        refuse_unknown_flags(["--dedup-horizon-hour", "2"])  # abbreviations are not taken either


def test_a_query_of_a_missing_data_dir_fails(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    missing = tmp_path / "no-such-dir"
    assert main(["ledger", "sql", "--data-dir", str(missing), "SELECT count(*) FROM ledger"]) == 2
    assert f"no data directory {missing}" in caplog.text
    assert not missing.exists()


def test_a_query_of_an_empty_data_dir_still_answers(tmp_path: Path) -> None:
    assert main(["ledger", "sql", "--data-dir", str(tmp_path), "--format", "csv", "SELECT 1 AS one"]) == 0


def test_ledger_sql_help_names_every_view(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["ledger", "--help"])
    listed = " ".join(capsys.readouterr().out.split())
    missing = [view for view in view_names(tmp_path) if view not in listed]
    assert not missing, f"`playledger ledger sql` help does not name: {missing}"
