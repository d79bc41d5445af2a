"""PostgreSQL, the storage a team shares, on a real server on loopback: several ``harness run``
processes started at the same instant on a new database share its trials, each run once."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import optuna
from optuna.trial import TrialState

from conftest import assert_every_trial_complete, run_cli, run_together, write_suite
from postgres_server import PostgresServer


def stored_trials(url: str) -> list[tuple[str, optuna.trial.FrozenTrial]]:
    """(study name, trial) of every trial in the database."""
    return [(summary.study_name, trial) for summary in optuna.get_all_study_summaries(url)
            for trial in optuna.load_study(study_name=summary.study_name, storage=url).get_trials()]


def test_runs_started_together_on_a_new_database_run_every_trial_once(tmp_path: Path,
                                                                       postgres: PostgresServer) -> None:
    url = postgres.new_database()
    suite = write_suite(tmp_path, name="shared", seeds="[0, 1, 2]", norms=("batchnorm", "layernorm", "none"))
    work = tmp_path / "work"
    work.mkdir()
    run_together(3, "run", str(suite), "--storage", url, "--quiet", cwd=work)
    trials = stored_trials(url)
    done = Counter((study, t.user_attrs["seed"]) for study, t in trials if t.state == TrialState.COMPLETE)
    assert len(done) == 9 and set(done.values()) == {1}, done
    assert not [t for _, t in trials if t.state == TrialState.RUNNING]
    assert_every_trial_complete(work, "shared", 9)
    workers = {t.user_attrs["worker"] for _, t in trials if t.state == TrialState.COMPLETE}
    assert len(workers) >= 2, "the runs did not share the work"


def test_an_unreachable_server_is_exit_2_with_the_url_and_no_password(tmp_path: Path,
                                                                      postgres: PostgresServer) -> None:
    suite = write_suite(tmp_path)
    closed = f"postgresql://postgres:s3cret@127.0.0.1:{postgres.port + 1}/nothing"
    result = run_cli("run", str(suite), "--storage", closed, "--quiet", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"postgresql://postgres:***@127.0.0.1:{postgres.port + 1}/nothing: cannot open the trial storage" \
        in result.stderr
    assert "s3cret" not in result.stderr and not (tmp_path / "runs").exists()


OPEN_STORAGE = "import sys; from harness.storage import open_storage; open_storage(sys.argv[1])"


def test_processes_opening_a_new_database_at_once_create_its_schema_once(postgres: PostgresServer) -> None:
    """Without a lock, about one such start in three failed with a duplicate type (both created
    Optuna's tables); 4 processes on each of 4 new databases."""
    for _ in range(4):
        url = postgres.new_database()
        starts = [subprocess.Popen([sys.executable, "-c", OPEN_STORAGE, url], stderr=subprocess.PIPE, text=True)
                  for _ in range(4)]
        for start in starts:
            _, err = start.communicate(timeout=120)
            assert start.returncode == 0, err
