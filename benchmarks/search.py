"""What pruning saves, what it costs, and how a search scales with workers, in one run.

Runs a quickstart-sized search suite (the spiral MLP, two norms, a learning-rate and momentum
space, three seeds of finals) through the real CLI:
- with the median pruner and without one: the epochs the searches spent (target: the pruned
  search at most 60% of the other), and per norm the best validation metric each search reached
  against the spread of its finals' test metric over seeds (target: within one standard
  deviation);
- with 1 and with 2 workers (``--workers``), both without a pruner (the same work either way):
  trials per hour (target: 2 workers at least 1.8x on 2 cores).

    .venv/bin/python benchmarks/search.py [--trials 12] [--epochs 15]

Run it on an otherwise idle machine; every figure is a ratio measured in this run.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

SUITE = """
[suite]
name = "bench"
seeds = [0, 1, 2]
metric = "accuracy"
baseline = "batchnorm"

[task]
use = "toy"
dataset = "spiral"
epochs = {epochs}
batch_size = 32
points_per_class = 200
test_points_per_class = 500
noise = 0.3
optimizer = {{ name = "sgd", lr = 0.05, momentum = 0.9, weight_decay = 1e-4 }}
schedule = {{ name = "cosine" }}

[[norm]]
use = "batchnorm"

[[norm]]
use = "groupnorm"
groups = 4

[search]
trials = {trials}
sampler = "tpe"
pruner = "{pruner}"
space = {{ "optimizer.lr" = {{ low = 0.003, high = 0.5, log = true }}, "norm.momentum" = {{}} }}
"""


def run(work: Path, pruner: str, workers: int, trials: int, epochs: int) -> tuple[float, dict[str, list]]:
    """Run the suite in a new folder; the wall time and every study's trials."""
    work.mkdir(parents=True)
    suite = work / "bench.toml"
    suite.write_text(SUITE.format(trials=trials, epochs=epochs, pruner=pruner))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "harness", "run", str(suite), "--quiet", "--workers", str(workers)],
                          cwd=work, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"the run failed:\n{done.stderr[-2000:]}")
    url = f"sqlite:///{work / 'runs' / 'bench' / 'storage.db'}"
    return seconds, {s.study_name: optuna.load_study(study_name=s.study_name, storage=url).get_trials()
                     for s in optuna.get_all_study_summaries(url)}


def searches(found: dict[str, list]) -> dict[str, list]:
    return {name.split("/")[2]: trials for name, trials in found.items() if name.endswith("/search")}


def finals(found: dict[str, list]) -> dict[str, list[float]]:
    return {name.split("/")[2]: [t.value for t in trials if t.state == TrialState.COMPLETE]
            for name, trials in found.items() if not name.endswith("/search")}


def trial_span(found: dict[str, list]) -> float:
    """Seconds from the first trial's start to the last trial's end."""
    trials = [t for ts in found.values() for t in ts]
    return (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()


def epochs_spent(trials: list) -> int:
    return sum(len(t.intermediate_values) for t in trials)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=12, help="search trials per norm (default 12)")
    parser.add_argument("--epochs", type=int, default=15, help="epochs per trial (default 15, as the quickstart)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        plain_s, plain = run(root / "none", "none", 1, args.trials, args.epochs)
        pruned_s, pruned = run(root / "median", "median", 1, args.trials, args.epochs)
        two_s, two = run(root / "none-2", "none", 2, args.trials, args.epochs)

    print(f"search: {args.trials} TPE trials per norm, {args.epochs} epochs each; finals: 3 seeds\n")
    spent = {k: epochs_spent(v) for k, v in searches(plain).items()}
    spent_pruned = {k: epochs_spent(v) for k, v in searches(pruned).items()}
    total, total_pruned = sum(spent.values()), sum(spent_pruned.values())
    print(f"epochs spent searching: median pruner {total_pruned}, no pruner {total}: "
          f"{total_pruned / total:.0%} (target <= 60%)")
    for norm in spent:
        n_pruned = sum(t.state == TrialState.PRUNED for t in searches(pruned)[norm])
        best = max(t.value for t in searches(plain)[norm] if t.state == TrialState.COMPLETE)
        best_pruned = max(t.value for t in searches(pruned)[norm] if t.state == TrialState.COMPLETE)
        spread = statistics.stdev(finals(plain)[norm])
        verdict = "within" if abs(best - best_pruned) <= spread else "NOT within"
        print(f"  {norm}: {spent_pruned[norm]} vs {spent[norm]} epochs ({n_pruned} trial(s) pruned); best validation "
              f"accuracy {best_pruned:.4f} pruned vs {best:.4f} not, difference {abs(best - best_pruned):.4f}, "
              f"{verdict} one std of the finals over seeds ({spread:.4f})")
    per_hour, per_hour_two = (sum(len(v) for v in found.values()) / seconds * 3600
                              for found, seconds in ((plain, plain_s), (two, two_s)))
    print(f"\ntrials per hour (no pruner, searches and finals), whole command: 1 worker {per_hour:.0f} "
          f"({plain_s:.0f} s), 2 workers {per_hour_two:.0f} ({two_s:.0f} s): {per_hour_two / per_hour:.2f}x "
          "(target >= 1.8x)")
    spans = [trial_span(found) for found in (plain, two)]
    print(f"  from the first trial's start to the last one's end (without the command's start-up checks): "
          f"{spans[0]:.0f} s and {spans[1]:.0f} s: {spans[0] / spans[1]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
