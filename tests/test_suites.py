"""Every suite shipped in ``suites/`` runs end to end under ``--smoke`` with no failed trial:
a suite that the harness cannot run is caught here, not after a GPU-day in the queue."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import REPO, assert_every_trial_complete, run_cli

#: The quickstart runs in full in its own test (test_quickstart.py).
SUITES = sorted(p.stem for p in (REPO / "suites").glob("*.toml") if p.stem != "quickstart")


def test_every_shipped_suite_is_checked() -> None:
    for suite in ["quickstart", *SUITES]:
        result = run_cli("check", str(REPO / "suites" / f"{suite}.toml"), cwd=REPO)
        assert result.returncode == 0, result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("suite", SUITES)
def test_every_suite_smoke_runs(tmp_path: Path, suite: str) -> None:
    result = run_cli("run", str(REPO / "suites" / f"{suite}.toml"), "--smoke", "--quiet", "--out", str(tmp_path),
                     cwd=tmp_path, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_every_trial_complete(tmp_path, f"{suite}-smoke")
    board = json.loads((tmp_path / "leaderboard" / f"{suite}-smoke.json").read_text())
    metric = board["suite"]["metric"]
    values = [t[f"metric.{metric}"] for t in board["trials"]]
    assert values and all(math.isfinite(v) for v in values), board["trials"]
