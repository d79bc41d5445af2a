"""The kill -9 soak (``scripts/soak.py``) as a test: a run killed at 10 seeded random moments
and started again each time ends with every planned trial completed once, none RUNNING, and a
leaderboard equal to an uninterrupted run's to the last bit; with one ``harness run`` at a
time, and with two started at the same instant on a new SQLite file or PostgreSQL database."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from conftest import REPO
from postgres_server import PostgresServer


def soak_script():  # noqa: ANN201 - the script's module
    spec = importlib.util.spec_from_file_location("soak", REPO / "scripts" / "soak.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def soak(work: Path, capsys: pytest.CaptureFixture[str], *options: str) -> None:
    code = soak_script().main(["--kills", "10", "--work", str(work), *options])
    printed = capsys.readouterr().out
    assert code == 0, printed
    killed = re.search(r"OK: (\d+) kills", printed)
    assert killed and int(killed.group(1)) >= 10, printed


@pytest.mark.slow
@pytest.mark.parametrize("together", [1, 2])
def test_a_run_killed_at_random_moments_ends_as_an_uninterrupted_one(tmp_path: Path, together: int,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    soak(tmp_path / "soak", capsys, "--together", str(together))


@pytest.mark.slow
def test_two_runs_killed_at_random_moments_on_postgresql_end_as_an_uninterrupted_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], postgres: PostgresServer) -> None:
    soak(tmp_path / "soak", capsys, "--together", "2", "--storage", postgres.new_database())
