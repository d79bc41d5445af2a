"""What a user cannot be expected to avoid: databases that cannot be opened, runs started at the
same instant, a worker that dies between claiming a trial and recording itself, an output
folder that cannot be written, and suite text that looks like markup."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

from harness.plan import make_plan
from harness.plugins import load_registry
from harness.storage import TrialBook, open_storage
from harness.suite import load_suite

from conftest import run_cli, write_suite


def test_a_database_without_its_driver_is_refused_with_the_url_and_no_password(tmp_path: Path) -> None:
    suite = write_suite(tmp_path)
    url = "postgresql+psycopg2://user:s3cret@127.0.0.1:1/db"  # psycopg 2, not installed (psycopg 3 is)
    result = run_cli("status", str(suite), "--storage", url, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "postgresql+psycopg2://user:***@127.0.0.1:1/db: cannot open the trial storage (ModuleNotFoundError" \
        in result.stderr
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


KILL_WHILE_WRITING = """
import os, sys
from pathlib import Path
from harness import atomic
calls, where, at = {"fsync": 0, "replace": 0}, sys.argv[2], int(sys.argv[3])
def dying(name, real):
    def call(*args):
        calls[name] += 1
        if name == where and calls[name] == at:
            os._exit(137)
        return real(*args)
    return call
atomic.os.fsync, atomic.os.replace = dying("fsync", os.fsync), dying("replace", os.replace)
atomic.write_together(Path(sys.argv[1]), {"b.md": "new", "b.csv": "new", "b.json": "new"})
"""


@pytest.mark.parametrize(("where", "at"), [("fsync", n) for n in range(1, 7)] + [("replace", n) for n in range(1, 5)])
def test_a_set_of_files_killed_while_written_ends_all_old_or_all_new(tmp_path: Path, where: str, at: int) -> None:
    """Killed at each step of writing a leaderboard (while staging each file, at the commit
    point, between the renames), the set is never left mixed once the next command has
    finished the interrupted write: all old before the commit point, all new after it."""
    from harness.atomic import finish_interrupted_writes, write_together

    board = tmp_path / "leaderboard"
    write_together(board, {"b.md": "old", "b.csv": "old", "b.json": "old"})
    killed = subprocess.run([sys.executable, "-c", KILL_WHILE_WRITING, str(board), where, str(at)],
                            capture_output=True, text=True)
    assert killed.returncode == 137, killed.stderr
    visible = {p.read_text() for p in board.glob("b.*")}
    committed = list(board.glob(".*.commit"))
    assert visible == {"old"} or committed, "mixed files without a committed journal to finish them"
    finish_interrupted_writes(board)
    assert sorted(p.name for p in board.iterdir()) == ["b.csv", "b.json", "b.md"]
    committed_before_kill = (where, at) in {("replace", 2), ("replace", 3), ("replace", 4), ("fsync", 5),
                                            ("fsync", 6)}  # replace 1 is the journal's: the commit point
    assert {p.read_text() for p in board.iterdir()} == {"new" if committed_before_kill else "old"}
