"""Training throughput of the classification task through the harness against a plain PyTorch loop.

One epoch of timm's ResNet-18 with batch norm on generated 32×32 images in the CIFAR-10 binary
format: :func:`harness.engine.run_trial` (mmengine's Runner, hooks, the norm's protocol) against a
hand-written loop over the very same work (the task's datasets and transforms, model, loss,
loader, seeding and SGD). Both run in this process, in alternating order over several rounds after
an untimed warm-up of each; the medians of samples/s and their ratio harness / plain (target
≥ 0.97) are printed, then one JSON line.

    .venv/bin/python benchmarks/classification_throughput.py [--images 1500] [--rounds 5]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from trial_overhead import quiet_trial, seed_everything

from harness.norm import Norm
from harness.plugins import load_registry
from harness.task import OptimizerConfig, Task
from harness_plugins.tasks.classification import ClassificationConfig
from harness_plugins.tasks.classification.formats import atomic_directory, write_cifar
from harness_plugins.tasks.classification.task import ClassificationTask

NORM = "batchnorm"
TARGET = 0.97


def plain_epoch(config: ClassificationConfig, norm: Norm, seed: int, data_root: Path) -> float:
    """Samples/s of one training epoch as a bare loop (what the harness's epoch timer covers)."""
    seed_everything(seed)
    task = ClassificationTask(config, data_root, seed)
    splits = task.datasets()
    model = task.model(norm.layer())
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(splits.train, batch_size=config.batch_size, shuffle=True, generator=generator,
                        drop_last=True, num_workers=config.num_workers)
    opt = config.optimizer
    optimizer = torch.optim.SGD(model.parameters(), lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay)
    model.train()
    start = time.perf_counter()
    for inputs, targets in loader:
        loss = task.loss(model(inputs), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        loss.item()  # the harness reads every loss (non-finite check, loss curve)
    return len(loader) * config.batch_size / (time.perf_counter() - start)


def harness_epoch(task: Task, config: ClassificationConfig, norm: Norm, seed: int, threads: int, work_dir: Path,
                  data_root: Path) -> float:
    """Samples/s of the training epoch of one :func:`run_trial`."""
    return quiet_trial(task, config, norm, seed, threads, work_dir, data_root).cost["samples_per_second"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1500, help="generated training images (a multiple of 50)")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--model", default="resnet18", help="a timm model name")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of (plain, harness); medians are reported")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (torch.set_num_threads)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    registry = load_registry()
    task, norm = registry.tasks["classification"], registry.norms[NORM]
    config = ClassificationConfig(dataset="cifar10", model=args.model, epochs=1, batch_size=args.batch_size,
                                  val_fraction=0.0, optimizer=OptimizerConfig(lr=0.1, momentum=0.9, weight_decay=5e-4))
    speeds: dict[str, list[float]] = {"plain": [], "harness": []}
    with tempfile.TemporaryDirectory(prefix="classification-throughput-") as tmp:
        data_root = Path(tmp) / "data"
        atomic_directory(data_root / "cifar-10-batches-bin",
                         lambda d: write_cifar(d, "cifar10", train_per_class=args.images // 10, test_per_class=10))
        counter = itertools.count()

        def one(kind: str) -> float:
            if kind == "plain":
                return plain_epoch(config, norm, args.seed, data_root)
            work_dir = Path(tmp) / f"trial-{next(counter)}"
            return harness_epoch(task, config, norm, args.seed, args.threads, work_dir, data_root)

        for kind in speeds:  # untimed warm-up: lazy imports, oneDNN kernels for these shapes
            one(kind)
        for i in range(max(1, args.rounds)):
            order = ["plain", "harness"] if i % 2 == 0 else ["harness", "plain"]
            for kind in order:
                speeds[kind].append(one(kind))
            print(f"round {i + 1}/{args.rounds}: plain {speeds['plain'][-1]:.1f} samples/s, "
                  f"harness {speeds['harness'][-1]:.1f} samples/s", flush=True)

    plain, harness = statistics.median(speeds["plain"]), statistics.median(speeds["harness"])
    ratio = harness / plain
    print(f"median samples/s: plain {plain:.1f}, harness {harness:.1f}; ratio harness/plain {ratio:.3f} "
          f"(target >= {TARGET})")
    print(json.dumps({"benchmark": "classification_throughput", "model": args.model, "norm": NORM,
                      "images": args.images, "batch_size": args.batch_size, "rounds": args.rounds,
                      "threads": args.threads, "plain_samples_per_second": plain,
                      "harness_samples_per_second": harness, "ratio": ratio, "target": TARGET,
                      "rounds_plain": speeds["plain"], "rounds_harness": speeds["harness"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
