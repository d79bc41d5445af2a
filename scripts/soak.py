"""Kill -9 soak: does a suite's run survive being killed at random moments, again and again?

    python scripts/soak.py [SUITE] [--kills 12] [--seed 0] [--together 1] [--storage URL] [--work DIR]

SUITE defaults to ``scripts/soak.toml``.

1. Runs the suite once, uninterrupted: the reference leaderboard and its duration.
2. In a new folder (a new SQLite file, or the empty database ``--storage`` names), starts
   ``harness run`` (``--together N``: N processes at the same instant on the one storage) and
   kills each with SIGKILL after a seeded random delay:
   its whole process group, or (at random) the harness process alone, orphaning its trial. Then
   starts again, until ``--kills`` processes were killed while they were running: at start-up,
   mid-trial, while a checkpoint or the leaderboard was written, wherever the delay falls.
3. Lets the last start finish and checks: every planned trial completed exactly once, none
   left RUNNING, no half-replaced leaderboard, and every metric of every trial equal, to the
   last bit, to the reference's.

Prints what happened and what was checked; exit code 1 if a check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_leaderboards import results  # noqa: E402 - the sibling script's reading of the boards


def harness_run(suite: Path, out: Path, storage: str | None = None) -> subprocess.Popen[bytes]:
    log = open(out / f"run-{time.time_ns()}.log", "wb")  # noqa: SIM115 - the child owns it
    command = [sys.executable, "-m", "harness", "run", str(suite), "--quiet", "--out", str(out)]
    return subprocess.Popen(command + (["--storage", storage] if storage else []), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def reference(suite: Path, out: Path) -> tuple[float, float]:
    """The uninterrupted run's duration, and that of a second run with nothing left to train
    (start-up, checks and the leaderboard)."""
    out.mkdir(parents=True)
    seconds = []
    for _ in range(2):
        start = time.monotonic()
        code = harness_run(suite, out).wait()
        if code != 0:
            sys.exit(f"the uninterrupted run failed (exit {code}); see {out}/run-*.log")
        seconds.append(time.monotonic() - start)
    return seconds[0], seconds[1]


def soak(suite: Path, out: Path, kills: int, together: int, moment: Callable[[], tuple[float, bool]],
         storage: str | None) -> dict[str, Any]:
    """Start, kill, start again until ``kills`` running processes were killed; then finish.
    ``moment()`` gives a kill's delay after the start, and whether the whole process group dies."""
    out.mkdir(parents=True)
    seen: dict[str, Any] = Counter()
    checkpoints: list[int] = []
    while seen["killed"] < kills:
        seen["starts"] += 1
        runs = [harness_run(suite, out, storage) for _ in range(together)]
        started = time.monotonic()
        for (delay, whole_group), run in sorted(zip([moment() for _ in runs], runs, strict=True),
                                                key=lambda pair: pair[0][0]):
            while run.poll() is None and time.monotonic() < started + delay:
                time.sleep(0.05)
            if run.poll() is None:
                checkpoints.append(len(list(out.rglob("epoch_*.pth"))))
                os.killpg(run.pid, signal.SIGKILL) if whole_group else run.kill()
                seen["killed"] += 1
                seen["killed with its trial" if whole_group else "killed alone (trial orphaned)"] += 1
            run.wait()
    seen["starts"] += 1
    finals = [harness_run(suite, out, storage) for _ in range(together)]
    codes = [run.wait() for run in finals]
    if any(codes):
        print(f"the final run(s) exited {codes}; see {out}/run-*.log")
        seen["final run failed"] += 1
    seen["checkpoints on disk at each kill"] = checkpoints
    return seen


def check_storage(suite: Path, out: Path, storage: str | None) -> list[str]:
    """Every planned (study, seed) completed exactly once; nothing left RUNNING."""
    from optuna.trial import TrialState

    from harness.plan import make_plan
    from harness.plugins import load_registry
    from harness.storage import TrialBook, default_url, open_storage
    from harness.suite import load_suite

    loaded = load_suite(suite, load_registry())
    plans = make_plan(loaded)
    book = TrialBook(open_storage(storage or default_url(out, loaded.name)), plans)
    problems, counts = [], Counter()
    for plan in plans:
        trials = list(book.trials(plan))
        done = Counter(t.user_attrs.get("seed") for t in trials if t.state == TrialState.COMPLETE)
        running = [t.number for t in trials if t.state == TrialState.RUNNING]
        counts.update(t.user_attrs.get("fail_kind", t.state.name.lower()) for t in trials)
        counts["resumed from a checkpoint"] += sum(t.user_attrs.get("resumed_from_epoch", 0) > 0 for t in trials)
        counts["trained again from epoch 0"] += sum(bool(t.user_attrs.get("restarted")) for t in trials)
        for seed in plan.seeds:
            if done[seed] != 1:
                problems.append(f"{plan.name} seed {seed}: completed {done[seed]} times")
        if running:
            problems.append(f"{plan.name}: trials {running} left RUNNING")
    print("trials in storage:", dict(counts))
    return problems


def check_leaderboard(before: Path, after: Path) -> list[str]:
    """No journal left to finish, and every metric of every trial equal to the reference's."""
    board = after / "leaderboard"
    problems = [f"{p.name}: an interrupted write was never finished" for p in board.glob(".*.commit")]
    old, new = results(before), results(after)
    if set(old) != set(new):
        problems.append(f"leaderboard files differ: {sorted(old)} against {sorted(new)}")
    for name in set(old) & set(new):
        differ = [key for key in set(old[name]) | set(new[name]) if old[name].get(key) != new[name].get(key)]
        problems += [f"{name} {key}: {old[name].get(key)} uninterrupted, {new[name].get(key)} after the soak"
                     for key in sorted(differ)]
    for path in board.glob("*.json"):  # the set's files are of one generation: the .md names its trials
        suite = json.loads(path.read_text())["suite"]["name"]
        if not all((board / f"{suite}.{ext}").is_file() for ext in ("md", "csv")):
            problems.append(f"{suite}: the leaderboard set is incomplete")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("suite", type=Path, nargs="?", default=Path(__file__).with_name("soak.toml"))
    parser.add_argument("--kills", type=int, default=12, help="running processes to kill (default 12)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill moments")
    parser.add_argument("--together", type=int, default=1, help="harness runs started at the same instant")
    parser.add_argument("--storage", help="the soak's storage URL, an empty database (default: SQLite in --work)")
    parser.add_argument("--work", type=Path, help="where to run (default: a new folder under /tmp)")
    args = parser.parse_args(argv)
    work = args.work or Path(f"/tmp/soak-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    suite = args.suite.resolve()

    seconds, start_up = reference(suite, work / "reference")
    # A third of the kills land in the start-up, the rest in the training after it, early enough
    # that together they leave the suite about done; once it is, kills land in the start-up or
    # the leaderboard's writing.
    rng, training = random.Random(args.seed), 3 * max(seconds - start_up, 0) / args.kills

    def moment() -> tuple[float, bool]:
        delay = rng.uniform(0, start_up) if rng.random() < 1 / 3 else start_up + rng.uniform(0, training)
        return delay, rng.random() < 0.5

    print(f"uninterrupted run: {seconds:.1f} s, of which start-up and leaderboard {start_up:.1f} s; kills at "
          f"seeded random moments in [0, {start_up + training:.1f}] s of each start (seed {args.seed})")
    seen = soak(suite, work / "soak", args.kills, args.together, moment, args.storage)
    print("soak:", dict(seen))
    problems = check_storage(suite, work / "soak", args.storage) + check_leaderboard(work / "reference", work / "soak")
    problems += ["the final run failed"] if seen["final run failed"] else []
    for problem in problems:
        print("FAIL", problem)
    if not problems:
        print(f"OK: {seen['killed']} kills, every planned trial completed once, none RUNNING, leaderboard "
              "identical to the uninterrupted run's")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
