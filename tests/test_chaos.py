"""The chaos run: gateway, pipeline and archiver each SIGKILLed and restarted while the simulator sends.

Passes only when the final ledger equals the simulator's ground truth per rights holder
(0 lost, 0 counted twice) and ``reconcile`` says every period balances; where the
streaming ledger came out short, the report says so with the number of plays the
archive holds beyond it. About two minutes on two cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ledger.views import open_ledger, run_sql
from pipelines.local.chaos import KILLED_PARTS, run_chaos


@pytest.mark.emulator
@pytest.mark.timeout(300)
def test_a_chaos_run_loses_nothing_counts_nothing_twice_and_balances(tmp_path: Path) -> None:
    result = run_chaos(tmp_path / "data", seed=20261128, users=150, duration="4h", speed=500.0)
    assert result.events > 100
    assert result.kills == dict.fromkeys(KILLED_PARTS, 1)
    assert (result.lost_plays, result.doubled_plays, result.differing_holders) == (0, 0, [])
    assert result.reconcile_status == "balanced", result
    summary = json.loads((tmp_path / "data" / "reports" / "reconcile" / "chaos" / "summary.json").read_text())
    for period in summary["periods"]:
        assert period["missing_from_archive"] == 0 and period["unexplained"] == 0
        # The shortfall reported is exactly the unique plays the final ledger holds beyond the streaming one.
        assert period["provisional_shortfall_plays"] == period["final_plays"] - period["provisional_plays"]
        if period["provisional_shortfall_plays"] > 0:
            assert period["explanations"][0].startswith(
                f"streaming ledger short by {period['provisional_shortfall_plays']:,} plays"
            )
    truth_plays = pq.read_metadata(tmp_path / "data" / "truth.parquet").num_rows
    assert sum(period["first_copies"] for period in summary["periods"]) == truth_plays
    assert run_sql(open_ledger(tmp_path / "data"), "SELECT count(*) FROM ledger_final").rows[0][0] > 0
