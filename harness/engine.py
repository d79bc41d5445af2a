"""One trial on mmengine's Runner: build the task's data and model with the norm in it, train,
evaluate, and return metrics, per-epoch curves, costs and the environment.

The training loop, checkpoints and resume, schedulers, TensorBoard logging and the launcher are
mmengine's; this module only adapts a task to them. It runs inside the trial process.
"""

from __future__ import annotations

import math
import os
import platform
import resource
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from mmengine.evaluator import BaseMetric
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.optim import AmpOptimWrapper, OptimWrapper
from mmengine.runner import Runner, TestLoop, set_random_seed
from torch.utils.data import DataLoader

from .norm import Norm
from .protocol import Evaluation, NormProtocol, TrialContext
from .task import Task, TaskConfig, TaskImpl

Events = Callable[[dict[str, Any]], None]


@dataclass
class TrialRequest:
    """Everything a trial needs; built by the worker, read by :func:`run_trial`."""

    task: Task
    config: TaskConfig
    norm: Norm
    norm_params: dict[str, Any]
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
    evaluations: dict[str, dict[str, Any]] | None = None  # name -> {"oracle": bool, "summary": str}


class TaskModel(BaseModel):
    """A task's plain ``nn.Module`` and loss in mmengine's model interface, with the norm's
    protocol at the two points it may change: the training forward (and extra loss), and the
    prediction of an evaluation protocol."""

    def __init__(self, net: torch.nn.Module, impl: TaskImpl, protocol: NormProtocol, ctx: TrialContext) -> None:
        super().__init__()
        self.net = net
        self.impl = impl
        self.protocol = protocol
        self.ctx = ctx
        self.evaluation: Evaluation | None = None
        # Across processes, mmengine drops the padding of the last shares by counting results,
        # so each sample must be one result there; in one process a batch is one result.
        self.per_sample = False

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor, extra: Any = None, mode: str = "tensor") -> Any:
        if self.ctx.config.channels_last and inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        if mode == "loss":
            outputs = self.protocol.train_forward(self.net, inputs, extra)
            losses = {"loss": self.impl.loss(outputs, targets)}
            extra_loss = self.protocol.extra_loss(self.net, self.ctx)
            if extra_loss is not None:
                losses["loss_norm"] = extra_loss
            return losses
        outputs = self.evaluation.predict(self.net, inputs) if self.evaluation else self.net(inputs)
        if mode == "predict":
            if self.per_sample:
                return [self.impl.batch_stats(outputs[i:i + 1], targets[i:i + 1]) for i in range(len(targets))]
            return [self.impl.batch_stats(outputs, targets)]
        return outputs


class TaskMetric(BaseMetric):
    """Adds up the task's per-batch statistics and reduces them to its metrics."""

    def __init__(self, impl: TaskImpl) -> None:
        super().__init__()
        self.impl = impl

    def process(self, data_batch: Any, data_samples: Sequence[Mapping[str, float]]) -> None:
        self.results.extend(data_samples)

    def compute_metrics(self, results: list) -> dict[str, float]:
        return {k: float(v) for k, v in self.impl.reduce(results).items()}


class TrialHook(Hook):
    """Stops on a non-finite loss, measures training time and reports progress to the worker.

    Highest priority: its epoch timer starts before and stops before the other hooks' epoch
    work (checkpoint saving), so ``train_seconds`` is the training loop itself.
    """

    priority = "HIGHEST"

    def __init__(self, events: Events) -> None:
        self.events = events
        self.samples = 0  # labeled samples trained on, counted batch by batch
        self.curves: dict[str, list[float]] = {"train_loss": []}
        self.train_seconds = 0.0
        self.epochs_trained = 0
        self._loss_sum = 0.0
        self._iters = 0
        self._epoch_start = 0.0

    def before_train_epoch(self, runner: Runner) -> None:
        self._loss_sum, self._iters = 0.0, 0
        self._epoch_start = time.perf_counter()

    def after_train_iter(self, runner: Runner, batch_idx: int, data_batch: Any = None,
                         outputs: Mapping[str, Any] | None = None) -> None:
        loss = float(outputs["loss"].detach()) if outputs else math.nan
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss is {loss} at epoch {runner.epoch + 1}, iteration {batch_idx + 1}")
        self.samples += _batch_size(data_batch)
        self._loss_sum += loss
        self._iters += 1

    def after_train_epoch(self, runner: Runner) -> None:
        self.train_seconds += time.perf_counter() - self._epoch_start
        self.epochs_trained += 1
        self.curves["train_loss"].append(self._loss_sum / max(self._iters, 1))
        self.events({"event": "epoch", "epoch": runner.epoch + 1, "epochs": runner.max_epochs,
                     "loss": self.curves["train_loss"][-1]})

    def after_val_epoch(self, runner: Runner, metrics: Mapping[str, float] | None = None) -> None:
        for name, value in (metrics or {}).items():
            self.curves.setdefault(f"val_{name}", []).append(float(value))


class ProtocolHook(Hook):
    """Calls the norm's protocol at the epoch start and after each optimizer step."""

    priority = "ABOVE_NORMAL"

    def __init__(self, protocol: NormProtocol, net: torch.nn.Module) -> None:
        self.protocol = protocol
        self.net = net

    def before_train_epoch(self, runner: Runner) -> None:
        self.protocol.before_train_epoch(self.net, runner.epoch)

    def after_train_iter(self, runner: Runner, batch_idx: int, data_batch: Any = None, outputs: Any = None) -> None:
        self.protocol.after_optimizer_step(self.net)


def _batch_size(batch: Any) -> int:
    """Samples in a training batch: ``(inputs, targets[, extra])`` or mmengine's ``{"inputs": ...}``."""
    first = batch["inputs"] if isinstance(batch, Mapping) else batch[0]
    return len(first)


def run_trial(request: TrialRequest, events: Events = lambda event: None) -> TrialResult:
    """Train and evaluate one (task configuration, norm, seed) and return what was measured."""
    start_rss = _current_rss_mb()
    if request.resume:
        # mmengine 0.10 checkpoints hold its HistoryBuffer and numpy scalars, which torch>=2.6's
        # weights-only loader refuses; the checkpoint is this trial's own file, written by us.
        os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    if request.threads:
        torch.set_num_threads(request.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # where mmengine's Runner puts the model
    config = request.config
    set_random_seed(request.seed, deterministic=True)
    impl: TaskImpl = request.task.factory()(config, request.data_root, request.seed)
    splits = impl.datasets()
    net = impl.model(request.norm.layer(**request.norm_params))
    if config.channels_last:
        net = net.to(memory_format=torch.channels_last)
    protocol = request.norm.make_protocol(**request.norm_params) or NormProtocol()
    generator = torch.Generator().manual_seed(request.seed)
    world, rank = distributed_rank()
    ctx = TrialContext(net=net, splits=splits, config=config, seed=request.seed,
                       provides=request.task.provides | config.capabilities(), generator=generator,
                       world=world, rank=rank)
    protocol.setup(ctx)
    model = TaskModel(net, impl, protocol, ctx)
    model.per_sample = world > 1

    train_loader = protocol.train_loader(ctx, config.batch_size) or DataLoader(
        splits.train, batch_size=config.batch_size, generator=generator,
        drop_last=len(splits.train) > config.batch_size * world, num_workers=config.num_workers,
        persistent_workers=config.num_workers > 0, **_sampling(splits.train, world, rank, request.seed))
    eval_split = splits.val if splits.val is not None else splits.test
    if world > 1:
        _join_process_group(device)
    hook = TrialHook(events)
    runner = Runner(
        model=model,
        work_dir=str(request.work_dir),
        experiment_name=f"trial-{os.getpid()}-{time.time_ns()}",
        train_dataloader=train_loader,
        val_dataloader=_eval_loader(eval_split, config, world, rank),
        test_dataloader=_eval_loader(splits.test, config, world, rank),
        train_cfg=dict(by_epoch=True, max_epochs=config.epochs, val_interval=config.val_interval),
        val_cfg=dict(),
        test_cfg=dict(),
        val_evaluator=[TaskMetric(impl)],
        test_evaluator=[TaskMetric(impl)],
        optim_wrapper=optim_wrapper(config, build_optimizer(config, net, protocol.no_weight_decay(net)), device),
        param_scheduler=scheduler_cfg(config) or None,
        default_hooks=dict(
            timer=dict(type="IterTimerHook"),
            logger=dict(type="LoggerHook", interval=50),
            param_scheduler=dict(type="ParamSchedulerHook"),
            checkpoint=dict(type="CheckpointHook", interval=config.checkpoint_interval, max_keep_ckpts=1,
                            save_last=True),
        ),
        custom_hooks=[hook, ProtocolHook(protocol, net)],
        visualizer=dict(type="Visualizer", vis_backends=[dict(type="TensorboardVisBackend")],
                        name=f"vis-{os.getpid()}-{time.time_ns()}"),
        randomness=dict(seed=request.seed, deterministic=True),
        resume=request.resume,
        launcher="pytorch" if world > 1 else "none",
        # Per-device batch statistics as in the papers; every rank evaluates with rank 0's buffers.
        cfg=dict(model_wrapper_cfg=dict(
            type="MMDistributedDataParallel", broadcast_buffers=True,
            device_ids=[int(os.environ["LOCAL_RANK"])] if device == "cuda" else None)) if world > 1 else None,
        env_cfg=dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
                     dist_cfg=dict(backend="nccl" if device == "cuda" else "gloo")),
        log_level="INFO",
    )
    start = time.perf_counter()
    runner.train()
    resumed_from = config.epochs - hook.epochs_trained
    wall = time.perf_counter() - start
    metrics = {k: float(v) for k, v in runner.test().items()}
    metrics.update({f"norm/{k}": float(v) for k, v in protocol.metrics(net).items()})
    evaluations = {}
    for evaluation in protocol.evaluations(ctx):
        evaluation.prepare(net, ctx)
        loader = evaluation.loader(ctx, splits.test, config.batch_size) or _eval_loader(splits.test, config, world,
                                                                                         rank)
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
        "peak_memory_mb": peak_memory_mb(device, start_rss),
        "parameters": float(sum(p.numel() for p in net.parameters())),
    }
    return TrialResult(metrics=metrics, curves=hook.curves, cost=cost, env=environment(device),
                       resumed_from_epoch=resumed_from, evaluations=evaluations)


def distributed_rank() -> tuple[int, int]:
    """(world size, rank) as torchrun sets them; (1, 0) in a single process."""
    return int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))


def _join_process_group(device: str) -> None:
    """On CPU, join with gloo before mmengine does: its launcher assumes a CUDA device per rank."""
    import torch.distributed as dist

    if device == "cpu" and not dist.is_initialized():
        dist.init_process_group(backend="gloo")


def _sampling(dataset: Any, world: int, rank: int, seed: int) -> dict[str, Any]:
    """Shuffle; across processes, each rank takes its own share (mmengine's evaluator gathers the
    shares back in dataset order and drops the padding)."""
    if world == 1:
        return {"shuffle": True}
    from torch.utils.data import DistributedSampler

    return {"sampler": DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)}


def _eval_loader(dataset: Any, config: TaskConfig, world: int = 1, rank: int = 0) -> DataLoader:
    sampler = None
    if world > 1:
        from torch.utils.data import DistributedSampler

        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)
    return DataLoader(dataset, batch_size=config.batch_size, shuffle=False, sampler=sampler,
                      num_workers=config.num_workers)


def optim_wrapper(config: TaskConfig, optimizer: torch.optim.Optimizer, device: str) -> OptimWrapper:
    """mmengine's wrapper; mixed precision where asked and where it exists (CUDA). It applies to
    every norm alike: no option of the harness favours one norm."""
    if config.amp and device.startswith("cuda"):
        return AmpOptimWrapper(optimizer=optimizer)
    return OptimWrapper(optimizer=optimizer)


def build_optimizer(config: TaskConfig, net: torch.nn.Module, no_decay: list[torch.nn.Parameter],
                    ) -> torch.optim.Optimizer:
    """The suite's optimizer over the model's parameters; the protocol's ``no_decay`` ones get none."""
    cfg = optimizer_cfg(config)
    kind = getattr(torch.optim, cfg.pop("type"))
    skip = {id(p) for p in no_decay}
    params = [p for p in net.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if id(p) not in skip]}]
    if skip:
        groups.append({"params": [p for p in params if id(p) in skip], "weight_decay": 0.0})
    return kind([g for g in groups if g["params"]], **cfg)


def optimizer_cfg(config: TaskConfig) -> dict[str, Any]:
    opt = config.optimizer
    if opt.name == "sgd":
        return dict(type="SGD", lr=opt.lr, momentum=opt.momentum, nesterov=opt.nesterov,
                    weight_decay=opt.weight_decay)
    kind = {"adam": "Adam", "adamw": "AdamW"}[opt.name]
    return dict(type=kind, lr=opt.lr, betas=tuple(opt.betas), weight_decay=opt.weight_decay)


def scheduler_cfg(config: TaskConfig) -> list[dict[str, Any]]:
    """mmengine epoch-based schedulers for the suite's ``schedule``, after an optional warm-up."""
    s, epochs = config.schedule, config.epochs
    warm = min(s.warmup_epochs, epochs)
    schedulers: list[dict[str, Any]] = []
    if warm:
        schedulers.append(dict(type="LinearLR", start_factor=1.0 / (warm + 1), by_epoch=True, begin=0,
                               end=warm, convert_to_iter_based=True))
    # mmengine counts a scheduler's steps from its `begin`: milestones and decays start at epoch 0
    # so that they mean the epochs the papers give, and the warm-up overlaps them (as in mmdet).
    whole = dict(by_epoch=True, begin=0, end=epochs)
    if s.name == "multistep":
        schedulers.append(dict(type="MultiStepLR", milestones=s.milestones, gamma=s.gamma, **whole))
    elif s.name == "cosine":
        schedulers.append(dict(type="CosineAnnealingLR", T_max=epochs - warm, eta_min=0.0, by_epoch=True,
                               begin=warm, end=epochs))
    elif s.name == "exponential":
        schedulers.append(dict(type="ExponentialLR", gamma=s.gamma, **whole))
    return schedulers


def peak_memory_mb(device: str, start_rss_mb: float) -> float:
    """Peak GPU memory allocated on CUDA; on CPU the trial process's peak resident memory above
    what it had at its start (the libraries every trial shares are not the norm's cost)."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return max(0.0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - start_rss_mb)


def _current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # not Linux: report the whole peak
        return 0.0


def environment(device: str) -> dict[str, str]:
    import mmengine

    from . import __version__

    env = {
        "harness": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "mmengine": mmengine.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "device": device,
        "threads": str(torch.get_num_threads()),
    }
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name()
    return env
