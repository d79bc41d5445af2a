"""What a user cannot be expected to avoid: databases that cannot be opened, runs started at the
same instant, a worker that dies between claiming a trial and recording itself, an output
folder that cannot be written, and suite text that looks like markup."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from optuna.trial import TrialState

from harness.plan import make_plan
from harness.plugins import load_registry
from harness.storage import TrialBook, open_storage
from harness.suite import load_suite

from conftest import run_cli, write_suite


def test_a_database_without_its_driver_is_refused_with_the_url_and_no_password(tmp_path: Path) -> None:
    suite = write_suite(tmp_path)
    result = run_cli("status", str(suite), "--storage", "postgresql://user:s3cret@127.0.0.1:1/db", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "postgresql://user:***@127.0.0.1:1/db: cannot open the trial storage" in result.stderr
    assert "s3cret" not in result.stderr


def test_a_corrupted_storage_file_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    suite = write_suite(tmp_path)
    db = tmp_path / "storage.db"
    db.write_bytes(b"this is not a database" * 100)
    result = run_cli("run", str(suite), "--storage", f"sqlite:///{db}", "--quiet", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "cannot open the trial storage (DatabaseError" in result.stderr
    assert db.read_bytes() == b"this is not a database" * 100


def test_runs_started_together_on_a_new_sqlite_file_both_work(tmp_path: Path) -> None:
    """Before the creation lock, about half of such pairs crashed on the schema's creation."""
    suite = write_suite(tmp_path)
    for attempt in range(6):
        url = f"sqlite:///{tmp_path / f'new-{attempt}.db'}"
        pair = [subprocess.Popen([sys.executable, "-m", "harness", "status", str(suite), "--storage", url],
                                 cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(2)]
        for process in pair:
            _, err = process.communicate(timeout=120)
            assert process.returncode == 0, err


def test_a_claimed_trial_whose_worker_never_recorded_itself_is_run_again(tmp_path: Path) -> None:
    suite = load_suite(write_suite(tmp_path, seeds="[0]"), load_registry())
    book = TrialBook(open_storage(f"sqlite:///{tmp_path / 'storage.db'}", heartbeat=1), make_plan(suite))
    book.sync()
    study = book.study(book.plans[0])
    (waiting,) = study.get_trials(states=(TrialState.WAITING,))
    trial_id = book._id(study, waiting)
    assert book.storage.set_trial_state_values(trial_id, TrialState.RUNNING)  # claimed, then the worker died
    book.sync()
    assert book.in_flight() == 1, "within the grace period the claim stands"
    time.sleep(2.5)  # the grace period: two heartbeats of one second
    book.sync()
    kinds = sorted((t.state.name, t.user_attrs.get("fail_kind", "")) for t in study.get_trials())
    assert kinds == [("FAIL", "worker-died"), ("WAITING", "")], kinds
    claim = book.claim()
    assert claim is not None and claim.seed == 0 and claim.resume


def test_an_output_folder_that_cannot_be_written_stops_the_run_before_any_claim(tmp_path: Path) -> None:
    suite = write_suite(tmp_path)
    blocked = tmp_path / "out"
    blocked.write_text("a file where the output folder should be")
    result = run_cli("run", str(suite), "--out", str(blocked), "--quiet", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"--out: cannot write in {blocked / 'runs'}" in result.stderr


def test_suite_text_is_escaped_in_the_markdown(tmp_path: Path) -> None:
    suite = write_suite(tmp_path)
    suite.write_text(suite.read_text().replace("version = 1", 'version = 1\ndescription = "<script>x</script> & co"'))
    result = run_cli("leaderboard", str(suite), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    markdown = (tmp_path / "leaderboard" / "tiny.md").read_text()
    assert "&lt;script&gt;x&lt;/script&gt; &amp; co" in markdown and "<script>" not in markdown
    assert json.loads((tmp_path / "leaderboard" / "tiny.json").read_text())["suite"]["name"] == "tiny"
