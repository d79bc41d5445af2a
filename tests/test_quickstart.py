"""The README's main job, end to end (slow: about a minute and a half on two cores)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import REPO, assert_every_trial_complete, run_cli


@pytest.mark.slow
def test_quickstart_runs_every_baseline_on_both_datasets(tmp_path: Path) -> None:
    result = run_cli("run", str(REPO / "suites" / "quickstart.toml"), cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr
    assert_every_trial_complete(tmp_path, "quickstart", (2 * 5 - 1) * 3)  # no instancenorm on spiral
    board = json.loads((tmp_path / "leaderboard" / "quickstart.json").read_text())
    assert board["complete"]
    assert "<svg" in (tmp_path / "leaderboard" / "quickstart.html").read_text()
    assert {r["norm"] for r in board["variants"]["digits"]} == {"batchnorm", "groupnorm", "layernorm",
                                                                 "instancenorm", "none"}
    assert all(r["n"] == 3 for rows in board["variants"].values() for r in rows)
    digits = {r["norm"]: r["mean"] for r in board["variants"]["digits"]}
    assert digits["batchnorm"] > 0.9, "a normalized CNN learns the digits"
