"""Training throughput of Faster R-CNN through the harness against mmdet's own Runner.

The reference is what mmdet's ``tools/train.py`` does: ``Runner.from_cfg`` on a complete mmdet
config (model, COCO dataset and pipeline, SGD, the loop), here the from-scratch Faster R-CNN
R-50 FPN config with BN. The harness runs :func:`harness.engine.run_trial` with its
``detection`` task and its ``batchnorm`` on the very same model, data and pipeline (generated
shapes in COCO's layout), batch and optimizer. Both run in this process, alternating over several
rounds after an untimed warm-up of each; training throughput (images/s over the training
epochs, data loading included, validation and checkpoints not) is timed the same way in both,
and the medians and their ratio harness / mmdet (target ≥ 0.97) are printed, then one JSON line.

    .venv/bin/python benchmarks/detection_throughput.py [--images 16] [--rounds 3]
    .venv/bin/python benchmarks/detection_throughput.py --device cuda --images 400 --scale 1333 800
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

TARGET = 0.97


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=16, help="training images (one epoch each run)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--depth", type=int, default=50, choices=[18, 34, 50, 101])
    parser.add_argument("--scale", type=int, nargs=2, default=[256, 256], help="resize to fit (long, short)")
    parser.add_argument("--batch", type=int, default=2, help="images per step")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    return parser.parse_args()


def main() -> int:
    args = parse()
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch: both runs on the CPU
    import torch
    from mmengine.config import Config
    from mmengine.hooks import Hook
    from mmengine.registry import HOOKS
    from mmengine.runner import Runner
    from trial_overhead import output_to, quiet_trial

    from harness.plugins import load_registry
    from harness_plugins.tasks.detection import DetectionConfig
    from harness_plugins.tasks.detection.models import detector_config, replace_norms
    from harness_plugins.tasks.detection.shapes import CLASSES, write_shapes_coco
    from harness_plugins.tasks.detection.task import DetectionTask

    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device here", file=sys.stderr)
        return 2

    @HOOKS.register_module(force=True)
    class EpochTimer(Hook):
        """The harness's own span (training epochs, no validation or checkpoint): samples over time."""

        priority = "VERY_HIGH"
        seconds, samples = 0.0, 0

        def before_train_epoch(self, runner: Runner) -> None:
            if runner.model.data_preprocessor.device.type == "cuda":
                torch.cuda.synchronize()
            self._start = time.perf_counter()

        def after_train_iter(self, runner: Runner, batch_idx: int, data_batch: dict | None = None,
                             outputs: dict | None = None) -> None:
            EpochTimer.samples += len(data_batch["inputs"])

        def after_train_epoch(self, runner: Runner) -> None:
            if runner.model.data_preprocessor.device.type == "cuda":
                torch.cuda.synchronize()
            EpochTimer.seconds += time.perf_counter() - self._start

    registry = load_registry()
    work = Path(tempfile.mkdtemp(prefix="det-bench-"))
    write_shapes_coco(work / "coco", train=args.images, val=max(2, args.batch), size=max(args.scale))
    config = DetectionConfig(depth=args.depth, image_scale=tuple(args.scale), epochs=1, batch_size=args.batch,
                             num_workers=args.workers, val_fraction=0.0, val_interval=1000, checkpoint_interval=1000,
                             schedule={"name": "constant"})
    norm = registry.norms["batchnorm"]

    def harness_run(index: int) -> float:
        result = quiet_trial(registry.tasks["detection"], config, norm, 0, torch.get_num_threads(),
                             work / f"harness-{index}", work)
        return result.cost["samples_per_second"]

    def mmdet_run(index: int) -> float:
        """tools/train.py: the config whole, Runner.from_cfg, train (no validation, no test)."""
        task = DetectionTask(config, work, 0)
        model = detector_config(config, len(CLASSES))
        model.data_preprocessor.non_blocking = True
        replace_norms(model, dict(type="BN", requires_grad=True))  # mmdet's own BN
        pipeline = task._pipeline(train=True)
        cfg = dict(
            model=model, work_dir=str(work / f"mmdet-{index}"), default_scope="mmdet",
            train_dataloader=dict(
                batch_size=args.batch, num_workers=args.workers, persistent_workers=args.workers > 0,
                pin_memory=args.device == "cuda", sampler=dict(type="DefaultSampler", shuffle=True),
                batch_sampler=dict(type="AspectRatioBatchSampler"),
                dataset=dict(type="CocoDataset", data_root=str(work / "coco"),
                             ann_file="annotations/instances_train2017.json", data_prefix=dict(img="train2017/"),
                             metainfo=dict(classes=CLASSES), filter_cfg=dict(filter_empty_gt=True, min_size=32),
                             pipeline=pipeline)),
            train_cfg=dict(type="EpochBasedTrainLoop", max_epochs=1, val_interval=1000),
            optim_wrapper=dict(type="OptimWrapper", optimizer=dict(type="SGD", lr=0.02, momentum=0.9,
                                                                   weight_decay=1e-4)),
            default_hooks=dict(timer=dict(type="IterTimerHook"), logger=dict(type="LoggerHook", interval=50),
                               param_scheduler=dict(type="ParamSchedulerHook"),
                               checkpoint=dict(type="CheckpointHook", interval=1000)),
            custom_hooks=[dict(type="EpochTimer")],
            env_cfg=dict(cudnn_benchmark=True, mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
                         dist_cfg=dict(backend="nccl")),
            randomness=dict(seed=0), log_level="WARNING", experiment_name=f"mmdet-{index}-{time.time_ns()}",
        )
        EpochTimer.seconds, EpochTimer.samples = 0.0, 0
        del task
        (work / f"mmdet-{index}").mkdir()
        with output_to(work / f"mmdet-{index}" / "console.log"):
            Runner.from_cfg(Config(cfg)).train()
        return EpochTimer.samples / EpochTimer.seconds

    harness_run(-1), mmdet_run(-1)  # warm-up: imports, allocator, cuDNN's autotuning
    found: dict[str, list[float]] = {"harness": [], "mmdet": []}
    runs = {"harness": harness_run, "mmdet": mmdet_run}
    for index, name in zip(range(2 * args.rounds), itertools.cycle(["harness", "mmdet"]), strict=False):
        found[name].append(runs[name](index))
        print(f"round {index // 2 + 1} {name:8s} {found[name][-1]:.3f} images/s", flush=True)
    harness, mmdet = statistics.median(found["harness"]), statistics.median(found["mmdet"])
    ratio = harness / mmdet
    print(f"Faster R-CNN R-{args.depth} FPN, {args.scale[0]}x{args.scale[1]}, batch {args.batch}, "
          f"{args.images} images, {args.device}: harness {harness:.3f} images/s, mmdet Runner {mmdet:.3f} "
          f"images/s, ratio {ratio:.3f} (target >= {TARGET})")
    print(json.dumps({"device": args.device, "depth": args.depth, "harness": found["harness"],
                      "mmdet": found["mmdet"], "ratio": ratio}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
