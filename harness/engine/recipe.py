"""The recipe of one trial on mmengine's Runner: build the task's data and model with the norm in
it, train, evaluate every protocol, and return metrics, per-epoch curves, costs and the
environment.

The training loop, checkpoints and resume, schedulers, TensorBoard logging and the launcher are
mmengine's; the adapters are :mod:`.model` and :mod:`.hooks`. It runs inside the trial process.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from mmengine.runner import Runner, TestLoop, find_latest_checkpoint, set_random_seed
from torch.utils.data import DataLoader

from ..events import TrialEvent
from ..norm import Norm, NormConfig
from ..task import Task, TaskConfig, TaskImpl
from .costs import current_rss_mb, environment, peak_memory_mb
from .hooks import LOG_INTERVAL, EpochSeedHook, ProtocolHook, ResumeHook, TrialHook
from .model import TaskMetric, build_model, build_net
from .optim import optim_wrapper_cfg, scheduler_cfg


@dataclass
class TrialRequest:
    """Everything a trial needs; built by the worker, read by :func:`run_trial`."""

    task: Task
    config: TaskConfig
    norm: Norm
    norm_config: NormConfig
    seed: int
    work_dir: Path
    data_root: Path
    resume: bool = False
    threads: int | None = None


@dataclass
class TrialResult:
    metrics: dict[str, float]
    curves: dict[str, list[float]]
    cost: dict[str, float]
    env: dict[str, str]
    resumed_from_epoch: int = 0
    restarted: str = ""  # why a trial to be resumed trained from the start instead
    evaluations: dict[str, dict[str, Any]] | None = None  # name -> {"oracle": bool, "summary": str}


def run_trial(request: TrialRequest, on_epoch: Callable[[TrialEvent], None] = lambda event: None) -> TrialResult:
    """Train and evaluate one (task configuration, norm, seed) and return what was measured."""
    start_rss = current_rss_mb()
    resume, checkpoint, restarted = request.resume, None, ""
    if resume:
        # mmengine 0.10 checkpoints hold its HistoryBuffer and numpy scalars, which torch>=2.6's
        # weights-only loader refuses; the checkpoint is this trial's own file, written by us.
        os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
        checkpoint = resume_point(request.work_dir)
        if checkpoint is None:
            resume, restarted = False, "no readable checkpoint to resume from: trained again from epoch 0"
    if request.threads:
        torch.set_num_threads(request.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # where mmengine's Runner puts the model
    config = request.config
    configure_determinism(config.deterministic)  # before any CUDA work: it sets the cuBLAS workspace
    set_random_seed(request.seed, deterministic=config.deterministic)
    impl: TaskImpl = request.task.factory()(config, request.data_root, request.seed)
    splits = impl.datasets()
    net, norm_layers = build_net(impl, config, request.norm.layer(request.norm_config))
    world, rank = distributed_rank()
    model = build_model(request.task, config, request.norm, request.norm_config, impl, net, splits, request.seed,
                        world, rank, norm_layers)
    protocol, ctx, generator = model.protocol, model.ctx, model.ctx.generator
    if config.compile:
        # In place, so the module and its state_dict keys stay those of `net`: the protocol's
        # references, checkpoints and resume are unchanged. Only the network's forward (and its
        # backward) is compiled; the protocol's code around it and mmengine's loop stay eager.
        net.compile()
    pin = device == "cuda"  # page-locked batches, copied to the GPU without blocking (TaskModel)

    train_loader = protocol.train_loader(ctx, config.batch_size) or DataLoader(
        splits.train, generator=generator, num_workers=config.num_workers,
        persistent_workers=_persistent_workers(config), pin_memory=pin, collate_fn=getattr(impl, "collate", None),
        **_batching(splits.train, config.batch_size, impl, world, rank, request.seed, generator))
    _pin(train_loader, pin)
    eval_split = splits.val if splits.val is not None else splits.test
    if world > 1:
        _join_process_group(device)
    hook = TrialHook(on_epoch, model)
    runner = Runner(
        model=model,
        work_dir=str(request.work_dir),
        experiment_name=f"trial-{os.getpid()}-{time.time_ns()}",
        train_dataloader=train_loader,
        val_dataloader=_eval_loader(eval_split, config, impl, world, rank, pin),
        test_dataloader=_eval_loader(splits.test, config, impl, world, rank, pin),
        train_cfg=dict(by_epoch=True, max_epochs=config.epochs, val_interval=config.val_interval),
        val_cfg=dict(),
        test_cfg=dict(),
        val_evaluator=[TaskMetric(impl)],
        test_evaluator=[TaskMetric(impl)],
        optim_wrapper=optim_wrapper_cfg(config, model, device),
        param_scheduler=scheduler_cfg(config) or None,
        default_hooks=dict(
            timer=dict(type="IterTimerHook"),
            logger=dict(type="LoggerHook", interval=LOG_INTERVAL),
            param_scheduler=dict(type="ParamSchedulerHook"),
            # Written under a temporary name and renamed before the previous one is removed.
            checkpoint=dict(type="AtomicCheckpointHook", interval=config.checkpoint_interval, max_keep_ckpts=1,
                            save_last=True),
        ),
        custom_hooks=[hook, EpochSeedHook(request.seed, generator), ProtocolHook(protocol, net),
                      ResumeHook(protocol, hook)],
        visualizer=dict(type="Visualizer", vis_backends=[dict(type="TensorboardVisBackend")],
                        name=f"vis-{os.getpid()}-{time.time_ns()}"),
        randomness=dict(seed=request.seed, deterministic=config.deterministic),
        resume=resume,
        load_from=str(checkpoint) if checkpoint else None,  # mmengine resumes from it
        launcher="pytorch" if world > 1 else "none",
        # Per-device batch statistics as in the papers; every rank evaluates with rank 0's buffers.
        cfg=dict(model_wrapper_cfg=dict(
            type="TaskModelDDP", broadcast_buffers=True,
            device_ids=[int(os.environ["LOCAL_RANK"])] if device == "cuda" else None)) if world > 1 else None,
        env_cfg=dict(cudnn_benchmark=not config.deterministic,
                     mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
                     dist_cfg=dict(backend="nccl" if device == "cuda" else "gloo")),
        log_level="INFO",
    )
    if device == "cuda":  # this trial's own peak, also where trials share a process; after the Runner
        torch.cuda.reset_peak_memory_stats()  # chose the rank's device (and placed the model there)
    start = time.perf_counter()
    runner.train()
    resumed_from = config.epochs - hook.epochs_trained
    wall = time.perf_counter() - start
    metrics = {k: float(v) for k, v in runner.test().items()}
    metrics.update({f"norm/{k}": float(v) for k, v in protocol.metrics(net).items()})
    evaluations = {}
    for evaluation in protocol.evaluations(ctx):
        evaluation.prepare(net, ctx)
        loader = evaluation.loader(ctx, splits.test, config.batch_size) or _eval_loader(splits.test, config, impl,
                                                                                         world, rank, pin)
        _pin(loader, pin)
        model.evaluation = evaluation
        try:
            found = TestLoop(runner, loader, [TaskMetric(impl)]).run()
        finally:
            model.evaluation = None
            evaluation.finish(net)
        metrics.update({f"{evaluation.name}/{k}": float(v) for k, v in {**found, **evaluation.metrics()}.items()})
        evaluations[evaluation.name] = {"oracle": evaluation.oracle, "summary": evaluation.summary}
    bad = [k for k, v in metrics.items() if not math.isfinite(v)]
    if bad:
        raise FloatingPointError(f"test metrics not finite: {', '.join(bad)}")
    trained_samples = hook.samples * world
    cost = {
        "train_seconds": hook.train_seconds,
        "wall_seconds": wall,
        "samples_per_second": trained_samples / hook.train_seconds if hook.train_seconds else 0.0,
        "peak_memory_mb": peak_memory_mb(device, start_rss, hook.peak_cuda_bytes),
        "parameters": float(sum(p.numel() for p in net.parameters())),
    }
    return TrialResult(metrics=metrics, curves=hook.curves, cost=cost, env=environment(device, config),
                       resumed_from_epoch=resumed_from, evaluations=evaluations, restarted=restarted)


def resume_point(work_dir: Path) -> Path | None:
    """The checkpoint an interrupted trial resumes from: the one ``last_checkpoint`` names if it
    is readable, else the newest readable ``epoch_N.pth``; None when there is none.

    :class:`~.hooks.AtomicCheckpointHook` never leaves a checkpoint cut short under its own name
    nor an empty pointer; this also copes with files damaged otherwise (a full disk, a copy, a
    run of an older version), falling back to any older checkpoint still there."""
    numbered = [p for p in work_dir.glob("epoch_*.pth") if p.stem.partition("_")[2].isdigit()]
    candidates = sorted(numbered, key=lambda p: int(p.stem.partition("_")[2]), reverse=True)
    named = find_latest_checkpoint(str(work_dir))  # mmengine's reading of `last_checkpoint`
    if named:
        candidates = [Path(named), *(c for c in candidates if c != Path(named))]
    for checkpoint in candidates:
        try:
            torch.load(checkpoint, map_location="cpu", mmap=True, weights_only=False)
        except Exception:  # noqa: BLE001 - cut short, missing or not a checkpoint: try the one before
            continue
        return checkpoint
    return None


def distributed_rank() -> tuple[int, int]:
    """(world size, rank) as torchrun sets them; (1, 0) in a single process."""
    return int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))


def _join_process_group(device: str) -> None:
    """On CPU, join with gloo before mmengine does: its launcher assumes a CUDA device per rank."""
    import torch.distributed as dist

    if device == "cpu" and not dist.is_initialized():
        dist.init_process_group(backend="gloo")


def _batching(dataset: Any, batch_size: int, impl: TaskImpl, world: int, rank: int, seed: int,
              generator: torch.Generator) -> dict[str, Any]:
    """The training loader's batching: shuffled batches (each rank its share), the last one
    dropped if incomplete; or the task's ``batch_sampler`` over that shuffled order (detection
    groups images of one orientation, as mmdet does, so batches pad less)."""
    drop_last = len(dataset) > batch_size * world
    sampling = _sampling(dataset, world, rank, seed)
    group = getattr(impl, "batch_sampler", None)
    if group is None:
        return {"batch_size": batch_size, "drop_last": drop_last, **sampling}
    from torch.utils.data import RandomSampler

    sampler = sampling.get("sampler") or RandomSampler(dataset, generator=generator)
    return {"batch_sampler": group(sampler, batch_size, drop_last)}


def _sampling(dataset: Any, world: int, rank: int, seed: int) -> dict[str, Any]:
    """Shuffle; across processes, each rank takes its own share (mmengine's evaluator gathers the
    shares back in dataset order and drops the padding)."""
    if world == 1:
        return {"shuffle": True}
    from torch.utils.data import DistributedSampler

    return {"sampler": DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)}


def _persistent_workers(config: TaskConfig) -> bool:
    """Keep the loader's worker processes from epoch to epoch (no start-up cost per epoch), except
    in deterministic trials: a persistent worker's random stream (augmentations) runs on across
    epochs, so a resumed trial would draw differently; restarted workers are seeded anew from the
    epoch's generator."""
    return config.num_workers > 0 and not config.deterministic


def _pin(loader: Any, pin: bool) -> None:
    """Page-locked batches from a norm protocol's own DataLoader too (its iterator reads the flag
    when it starts), so that every copy to the GPU can overlap with the computation."""
    if pin and isinstance(loader, DataLoader):
        loader.pin_memory = True


def _eval_loader(dataset: Any, config: TaskConfig, impl: TaskImpl, world: int = 1, rank: int = 0,
                 pin_memory: bool = False) -> DataLoader:
    sampler = None
    if world > 1:
        from torch.utils.data import DistributedSampler

        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)
    return DataLoader(dataset, batch_size=config.batch_size, shuffle=False, sampler=sampler,
                      num_workers=config.num_workers, pin_memory=pin_memory, collate_fn=getattr(impl, "collate", None))


def configure_determinism(deterministic: bool) -> None:
    """Set torch's process-wide determinism switches one way or the other (a process may run
    trials of both kinds): deterministic kernels, cuDNN's deterministic algorithms and no
    autotuning; or, as timm's and mmdet's training scripts run, cuDNN autotuning
    (``cudnn.benchmark``) and torch's fastest kernels. cuBLAS needs its workspace configured
    before its first use in the process to be deterministic; an explicit setting is kept."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
