"""What one harness trial costs over a plain PyTorch loop doing the same work.

A trial runs on mmengine's Runner with hooks, a checkpoint every epoch and TensorBoard logging;
this script measures what that machinery adds. It runs :func:`harness.engine.run_trial`
in-process (no forked trial process) and a hand-written loop that mirrors it step for step
(same task, data, model, seeding, loader, optimizer, per-epoch validation and final test), in
alternating order in the same process, and prints the medians and the ratios harness / plain for
the training throughput and the whole-trial wall time. With the same seed both should also reach
the same test accuracy; a difference is printed, not asserted. Run it on an otherwise idle
machine: rounds whose times vary widely are flagged as noisy.

    .venv/bin/python benchmarks/trial_overhead.py [--epochs 10] [--repeat 3]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from harness.engine import TrialRequest, TrialResult, run_trial
from harness.engine.hooks import epoch_seed
from harness.norm import Norm
from harness.plugins import load_registry
from harness.task import OptimizerConfig, ScheduleConfig, Task
from harness_plugins.tasks.toy import ToyConfig
from harness_plugins.tasks.toy.task import ToyTask

NORM = "batchnorm"


@dataclass
class Measured:
    """One trial of either kind: training-epoch time, whole wall time and the test metrics."""

    train_seconds: float
    wall_seconds: float
    samples: int  # training samples seen, counted as the harness counts them
    metrics: dict[str, float]

    @property
    def throughput(self) -> float:
        return self.samples / self.train_seconds


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """What the harness does before a trial (``[task] deterministic``, default false), in plain
    torch: the seeds, and either deterministic kernels or cuDNN autotuning."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
    torch.use_deterministic_algorithms(deterministic)


def evaluate(task: ToyTask, model: torch.nn.Module, loader: DataLoader) -> dict[str, float]:
    """Like mmengine's val/test loop with the harness's metric: eval mode, no grad, batch sums."""
    model.eval()
    stats = []
    with torch.no_grad():
        for inputs, targets in loader:
            stats.append(task.batch_stats(model(inputs), targets))
    return {k: float(v) for k, v in task.reduce(stats).items()}


def plain_trial(config: ToyConfig, norm: Norm, seed: int, data_root: Path) -> Measured:
    """The work of :func:`harness.engine.run_trial` (constant schedule, SGD) as a bare loop."""
    start = time.perf_counter()
    seed_everything(seed, config.deterministic)
    task = ToyTask(config, data_root, seed)
    splits = task.datasets()
    model = task.model(norm.layer())
    generator = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(splits.train, batch_size=config.batch_size, shuffle=True, generator=generator,
                              drop_last=len(splits.train) > config.batch_size)
    eval_split = splits.val if splits.val is not None else splits.test
    val_loader = DataLoader(eval_split, batch_size=config.batch_size, shuffle=False)
    test_loader = DataLoader(splits.test, batch_size=config.batch_size, shuffle=False)
    opt = config.optimizer
    optimizer = torch.optim.SGD(model.parameters(), lr=opt.lr, momentum=opt.momentum, nesterov=opt.nesterov,
                                weight_decay=opt.weight_decay)
    train_seconds = 0.0
    for epoch in range(config.epochs):
        epoch_start = time.perf_counter()
        seed_everything(epoch_seed(seed, epoch), config.deterministic)  # as the harness seeds each epoch
        generator.manual_seed(epoch_seed(seed, epoch))
        model.train()
        losses = []
        for inputs, targets in train_loader:
            loss = task.loss(model(inputs), targets)
            loss.backward()  # mmengine's OptimWrapper.update_params: backward, step, zero_grad
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.detach())  # the harness reads the losses every 50 iterations and at the epoch's end
        sum(torch.stack(losses).tolist())  # (non-finite check, loss curve)
        train_seconds += time.perf_counter() - epoch_start
        if (epoch + 1) % config.val_interval == 0:
            evaluate(task, model, val_loader)
    metrics = evaluate(task, model, test_loader)
    wall = time.perf_counter() - start
    return Measured(train_seconds, wall, len(train_loader) * config.batch_size * config.epochs, metrics)


@contextmanager
def output_to(log: Path) -> Iterator[None]:
    """Send this process's stdout and stderr (file descriptors, so mmengine's too) to ``log``."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (fd, *saved):
            os.close(f)


def quiet_trial(task: Task, config: Any, norm: Norm, seed: int, threads: int, work_dir: Path,
                data_root: Path) -> TrialResult:
    """One :func:`run_trial` in this process, its Runner's console output in a log file (shown
    only if the trial fails)."""
    request = TrialRequest(task=task, config=config, norm=norm, norm_config=norm.config(), seed=seed,
                           work_dir=work_dir, data_root=data_root, threads=threads)
    work_dir.mkdir(parents=True)
    log = work_dir / "console.log"
    try:
        with output_to(log):
            return run_trial(request)
    except BaseException:
        print(log.read_text()[-4000:], file=sys.stderr)
        raise


def harness_trial(task: Task, config: ToyConfig, norm: Norm, seed: int, threads: int, work_dir: Path,
                  data_root: Path) -> Measured:
    start = time.perf_counter()
    result = quiet_trial(task, config, norm, seed, threads, work_dir, data_root)
    wall = time.perf_counter() - start
    samples = round(result.cost["samples_per_second"] * result.cost["train_seconds"])
    return Measured(result.cost["train_seconds"], wall, samples, result.metrics)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3, help="rounds of (plain, harness); medians are reported")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (torch.set_num_threads)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    registry = load_registry()
    task, norm = registry.tasks["toy"], registry.norms[NORM]

    def config(epochs: int) -> ToyConfig:
        return ToyConfig(dataset="digits", epochs=epochs, batch_size=32, schedule=ScheduleConfig(name="constant"),
                         optimizer=OptimizerConfig(name="sgd", lr=0.05, momentum=0.9))

    runs: dict[str, list[Measured]] = {"plain": [], "harness": []}
    with tempfile.TemporaryDirectory(prefix="trial-overhead-") as tmp:
        data_root = Path(tmp) / "data"
        data_root.mkdir()
        counter = itertools.count()

        def one(kind: str, epochs: int) -> Measured:
            if kind == "plain":
                return plain_trial(config(epochs), norm, args.seed, data_root)
            work_dir = Path(tmp) / f"trial-{next(counter)}"
            return harness_trial(task, config(epochs), norm, args.seed, args.threads, work_dir, data_root)

        # untimed one-epoch warm-up of both: lazy imports (TensorBoard, sklearn data) and first-call costs
        for kind in runs:
            one(kind, 1)
        for i in range(max(1, args.repeat)):
            order: list[str] = ["plain", "harness"] if i % 2 == 0 else ["harness", "plain"]
            for kind in order:
                runs[kind].append(one(kind, args.epochs))
            print(f"round {i + 1}/{args.repeat}: " + ", ".join(
                f"{k} train {runs[k][-1].train_seconds:.2f} s / wall {runs[k][-1].wall_seconds:.2f} s"
                for k in ("plain", "harness")), flush=True)

    summary = {
        kind: {
            "train_seconds": statistics.median(m.train_seconds for m in measured),
            "wall_seconds": statistics.median(m.wall_seconds for m in measured),
            "samples_per_second": statistics.median(m.throughput for m in measured),
        }
        for kind, measured in runs.items()
    }
    throughput_ratio = summary["harness"]["samples_per_second"] / summary["plain"]["samples_per_second"]
    wall_ratio = summary["harness"]["wall_seconds"] / summary["plain"]["wall_seconds"]
    per_epoch_ms = 1000 * (summary["harness"]["train_seconds"] - summary["plain"]["train_seconds"]) / args.epochs
    fixed_s = summary["harness"]["wall_seconds"] - summary["plain"]["wall_seconds"]
    # Robust to bursts of other work on a shared machine: the ratio within each round (its two
    # runs are back to back), and the ratio of the fastest runs.
    pairs = list(zip(runs["plain"], runs["harness"], strict=True))
    paired = {
        "train_throughput_ratio": statistics.median(h.throughput / p.throughput for p, h in pairs),
        "wall_ratio": statistics.median(h.wall_seconds / p.wall_seconds for p, h in pairs),
    }
    best = {
        "train_throughput_ratio": max(m.throughput for m in runs["harness"])
        / max(m.throughput for m in runs["plain"]),
        "wall_ratio": min(m.wall_seconds for m in runs["harness"]) / min(m.wall_seconds for m in runs["plain"]),
    }

    print(f"\ntoy/digits, {NORM}, batch 32, SGD lr 0.05 momentum 0.9, {args.epochs} epochs, seed {args.seed}, "
          f"{args.threads} threads; medians of {args.repeat} alternating rounds")
    print(f"{'':<9} {'train s':>8} {'samples/s':>10} {'wall s':>8}")
    for kind in ("plain", "harness"):
        s = summary[kind]
        print(f"{kind:<9} {s['train_seconds']:>8.3f} {s['samples_per_second']:>10.0f} {s['wall_seconds']:>8.3f}")
    print(f"harness / plain: train throughput {throughput_ratio:.3f}, whole-trial wall time {wall_ratio:.3f} "
          f"({per_epoch_ms:+.1f} ms per training epoch, {fixed_s:+.2f} s per trial)")
    print(f"  median of per-round ratios: throughput {paired['train_throughput_ratio']:.3f}, "
          f"wall {paired['wall_ratio']:.3f}; fastest runs: throughput {best['train_throughput_ratio']:.3f}, "
          f"wall {best['wall_ratio']:.3f}")

    # Two torch threads on two busy cores can run 10-100x slower in bursts; say so rather than trust it.
    spread = max(max(m.train_seconds for m in ms) / min(m.train_seconds for m in ms) for ms in runs.values())
    noisy = spread > 1.5
    if noisy:
        print(f"warning: a trial's training time varied {spread:.1f}x between rounds: the machine was busy, so "
              "the ratios are unreliable; rerun on an idle machine or with a larger --repeat")

    accuracy = {kind: [m.metrics["accuracy"] for m in runs[kind]] for kind in runs}
    every = accuracy["plain"] + accuracy["harness"]
    same = max(every) == min(every)
    print(f"test accuracy, seed {args.seed}: plain {accuracy['plain'][0]:.4f}, harness {accuracy['harness'][0]:.4f}"
          + (" (identical in every run)" if same else
             f" -- they DIFFER by up to {max(every) - min(every):.4f} "
             f"(plain {accuracy['plain']}, harness {accuracy['harness']})"))

    print(json.dumps({
        "bench": "trial_overhead",
        "train_throughput_ratio": round(throughput_ratio, 4),
        "wall_ratio": round(wall_ratio, 4),
        "plain": {k: round(v, 4) for k, v in summary["plain"].items()},
        "harness": {k: round(v, 4) for k, v in summary["harness"].items()},
        "paired": {k: round(v, 4) for k, v in paired.items()},
        "best": {k: round(v, 4) for k, v in best.items()},
        "overhead_ms_per_epoch": round(per_epoch_ms, 2),
        "overhead_seconds_per_trial": round(fixed_s, 3),
        "test_accuracy": {"plain": accuracy["plain"][0], "harness": accuracy["harness"][0]},
        "accuracy_identical": same,
        "epochs": args.epochs, "repeat": args.repeat, "seed": args.seed, "threads": args.threads,
        "noisy": noisy,
        "spread": round(spread, 2),
        "load_average_1min": round(os.getloadavg()[0], 2),  # other work on the machine skews both sides
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
