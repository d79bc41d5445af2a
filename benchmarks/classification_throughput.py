"""Training throughput of the classification task through the harness against a plain PyTorch loop.

One epoch of a timm model with batch norm on generated images in the CIFAR-10 binary format:
:func:`harness.engine.run_trial` (mmengine's Runner, hooks, the norm's protocol) against a
hand-written loop over the very same work (the task's datasets and transforms, model, loss,
loader, seeding and SGD). Both run in this process, in alternating order over several rounds after
an untimed warm-up of each; the medians of samples/s and their ratio harness / plain (target
≥ 0.97) are printed, then one JSON line.

On CPU (default): ResNet-18 at 32×32. With ``--device cuda``: ResNet-50 at 224×224 (the CIFAR
images resized), batch 64, and the plain loop is written as a GPU user writes it:
``cudnn.benchmark``, pinned memory and non-blocking copies, autocast (``--amp bf16|fp16``; fp16
with a GradScaler), ``--channels-last``, and no wait for the device inside the loop. The harness
gets the same options through its suite keys (``amp``, ``channels_last``, ``deterministic =
false``).

    .venv/bin/python benchmarks/classification_throughput.py [--images 1500] [--rounds 5]
    .venv/bin/python benchmarks/classification_throughput.py --device cuda --amp bf16 --channels-last
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
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
from harness_plugins.common.files import atomic_directory
from harness_plugins.tasks.classification import ClassificationConfig
from harness_plugins.tasks.classification.formats import write_cifar
from harness_plugins.tasks.classification.task import ClassificationTask

NORM = "batchnorm"
TARGET = 0.97


def plain_epoch(config: ClassificationConfig, norm: Norm, seed: int, data_root: Path, device: str = "cpu") -> float:
    """Samples/s of one training epoch as a bare loop (what the harness's epoch timer covers)."""
    seed_everything(seed, deterministic=config.deterministic)  # as the harness: cudnn.benchmark unless deterministic
    task = ClassificationTask(config, data_root, seed)
    splits = task.datasets()
    model = task.model(norm.layer()).to(device)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    if config.compile:
        model.compile()  # as the harness does (in place)
    cuda = device == "cuda"
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(splits.train, batch_size=config.batch_size, shuffle=True, generator=generator,
                        drop_last=True, num_workers=config.num_workers, persistent_workers=config.num_workers > 0,
                        pin_memory=cuda)
    opt = config.optimizer
    optimizer = torch.optim.SGD(model.parameters(), lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay)
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(config.amp_dtype or "") if cuda else None
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    loss_sum = torch.zeros((), device=device)
    model.train()
    start = time.perf_counter()
    for inputs, targets in loader:
        inputs = inputs.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        targets = targets.to(device, non_blocking=True)
        with torch.autocast("cuda", dtype=dtype) if dtype else contextlib.nullcontext():
            loss = task.loss(model(inputs), targets)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
        loss_sum += loss.detach()  # logged at the end: no wait for the device per step
    if not torch.isfinite(loss_sum):  # the one wait, as the harness's at the epoch's end
        raise FloatingPointError("plain loop diverged")
    return len(loader) * config.batch_size / (time.perf_counter() - start)


def harness_epoch(task: Task, config: ClassificationConfig, norm: Norm, seed: int, threads: int, work_dir: Path,
                  data_root: Path) -> float:
    """Samples/s of the training epoch of one :func:`run_trial`."""
    result = quiet_trial(task, config, norm, seed, threads, work_dir, data_root)
    harness_epoch.env = result.env  # type: ignore[attr-defined]
    return result.cost["samples_per_second"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--images", type=int, default=None,
                        help="generated training images, a multiple of 50 (default 1500 on cpu, 6400 on cuda)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 50 on cpu, 64 on cuda")
    parser.add_argument("--model", default=None, help="a timm model name (default resnet18 on cpu, resnet50 on cuda)")
    parser.add_argument("--image-size", type=int, default=None, help="model input side (default 32 on cpu, 224 on "
                        "cuda: the CIFAR images are resized)")
    parser.add_argument("--amp", choices=("bf16", "fp16"), default=None, help="mixed precision (CUDA only)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (both sides)")
    parser.add_argument("--num-workers", type=int, default=None, help="data-loading workers (default 0 on cpu, "
                        "min(12, cores - 2) on cuda)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of (plain, harness); medians are reported")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (torch.set_num_threads)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    cuda = args.device == "cuda"
    if not cuda:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the harness puts a trial on a GPU wherever it sees one
    elif not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible")
    if args.amp and not cuda:
        parser.error("--amp needs --device cuda (the harness ignores amp on CPU)")
    images = args.images or (6400 if cuda else 1500)
    batch_size = args.batch_size or (64 if cuda else 50)
    model = args.model or ("resnet50" if cuda else "resnet18")
    size = args.image_size or (224 if cuda else 32)
    workers = args.num_workers if args.num_workers is not None else (min(12, max(1, (os.cpu_count() or 4) - 2))
                                                                     if cuda else 0)

    torch.set_num_threads(args.threads)
    registry = load_registry()
    task, norm = registry.tasks["classification"], registry.norms[NORM]
    resized = {"image_size": size, "resize": size} if size != 32 else {}
    config = ClassificationConfig(dataset="cifar10", model=model, epochs=1, batch_size=batch_size,
                                  val_fraction=0.0, num_workers=workers, amp=args.amp or False,
                                  channels_last=args.channels_last, compile=args.compile, deterministic=False,
                                  optimizer=OptimizerConfig(lr=0.1, momentum=0.9, weight_decay=5e-4), **resized)
    speeds: dict[str, list[float]] = {"plain": [], "harness": []}
    with tempfile.TemporaryDirectory(prefix="classification-throughput-") as tmp:
        data_root = Path(tmp) / "data"
        atomic_directory(data_root / "cifar-10-batches-bin",
                         lambda d: write_cifar(d, "cifar10", train_per_class=images // 10, test_per_class=10))
        counter = itertools.count()

        def one(kind: str) -> float:
            if kind == "plain":
                return plain_epoch(config, norm, args.seed, data_root, args.device)
            work_dir = Path(tmp) / f"trial-{next(counter)}"
            return harness_epoch(task, config, norm, args.seed, args.threads, work_dir, data_root)

        for kind in speeds:  # untimed warm-up: lazy imports, oneDNN kernels / cuDNN autotuning for these shapes
            one(kind)
        for i in range(max(1, args.rounds)):
            order = ["plain", "harness"] if i % 2 == 0 else ["harness", "plain"]
            for kind in order:
                speeds[kind].append(one(kind))
            print(f"round {i + 1}/{args.rounds}: plain {speeds['plain'][-1]:.1f} samples/s, "
                  f"harness {speeds['harness'][-1]:.1f} samples/s", flush=True)

    plain, harness = statistics.median(speeds["plain"]), statistics.median(speeds["harness"])
    ratio = harness / plain
    paired = statistics.median(h / p for p, h in zip(speeds["plain"], speeds["harness"], strict=True))
    env = getattr(harness_epoch, "env", {})
    where = f"{args.device}" + (f" ({env.get('gpu', '')})" if cuda else f", {args.threads} threads")
    print(f"{model} at {size}x{size}, batch {batch_size}, {where}, amp {args.amp or 'off'}, channels_last "
          f"{args.channels_last}, compile {args.compile}, {workers} loader workers")
    print(f"median samples/s: plain {plain:.1f}, harness {harness:.1f}; ratio harness/plain {ratio:.3f} "
          f"(median of per-round ratios {paired:.3f}; target >= {TARGET})")
    print(json.dumps({"benchmark": "classification_throughput", "device": args.device, "gpu": env.get("gpu"),
                      "model": model, "image_size": size, "norm": NORM, "amp": args.amp,
                      "channels_last": args.channels_last, "compile": args.compile, "num_workers": workers,
                      "images": images, "batch_size": batch_size, "rounds": args.rounds,
                      "threads": args.threads, "plain_samples_per_second": plain,
                      "harness_samples_per_second": harness, "ratio": ratio, "paired_ratio": paired,
                      "target": TARGET, "rounds_plain": speeds["plain"], "rounds_harness": speeds["harness"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
