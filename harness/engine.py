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
from mmengine.model import BaseDataPreprocessor, BaseModel
from mmengine.optim import AmpOptimWrapper, OptimWrapper
from mmengine.runner import Runner, TestLoop, set_random_seed
from torch.utils.data import DataLoader

from .norm import Norm
from .protocol import Evaluation, NormProtocol, TrialContext
from .task import Task, TaskConfig, TaskImpl

Events = Callable[[dict[str, Any]], None]

# mmengine's logger writes every LOG_INTERVAL iterations; the harness reads the losses from the
# device at the same points (and at each epoch's end).
LOG_INTERVAL = 50


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
        # Batches go to the device without blocking the host (from page-locked memory on CUDA).
        super().__init__(data_preprocessor=BaseDataPreprocessor(non_blocking=True))
        self.net = net
        self.impl = impl
        self.protocol = protocol
        self.ctx = ctx
        self.evaluation: Evaluation | None = None
        # Across processes, mmengine drops the padding of the last shares by counting results,
        # so each sample must be one result there; in one process a batch is one result.
        self.per_sample = False
        self.step_losses: dict[str, torch.Tensor] | None = None  # the last training step's, on the device

    def parse_losses(self, losses: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """mmengine's sum of the losses, with its log variables kept here on the device for
        :class:`TrialHook` instead of returned: mmengine's RuntimeInfoHook would read each one
        into a Python float every iteration, which waits for the GPU to finish the step. The
        hook reads them in one transfer every ``LOG_INTERVAL`` iterations and hands them to the
        message hub, so the logs and TensorBoard show the same values."""
        loss, log_vars = super().parse_losses(losses)
        self.step_losses = {name: value.detach() for name, value in log_vars.items()}
        return loss, {}

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

    def process(self, data_batch: Any, data_samples: Sequence[Mapping[str, Any]]) -> None:
        self.results.extend(data_samples)

    def evaluate(self, size: int) -> dict:
        # The statistics stayed on the device batch after batch; one transfer brings them all.
        self.results = _to_host(self.results)
        return super().evaluate(size)

    def compute_metrics(self, results: list) -> dict[str, float]:
        return {k: float(v) for k, v in self.impl.reduce(results).items()}


class TrialHook(Hook):
    """Stops on a non-finite loss, measures training time and reports progress to the worker.

    Highest priority: its epoch timer starts before and stops before the other hooks' epoch
    work (checkpoint saving), so ``train_seconds`` is the training loop itself; and it runs
    before mmengine's logger, to which it hands the losses.

    The losses stay on the device: every ``LOG_INTERVAL`` iterations and at the end of each
    epoch one transfer reads them all (the only wait for the device that the harness adds to
    training), checks that they are finite and passes them to mmengine's message hub.
    """

    priority = "HIGHEST"

    def __init__(self, events: Events, model: TaskModel | None = None) -> None:
        self.events = events
        self.model = model
        self.samples = 0  # labeled samples trained on, counted batch by batch
        self.curves: dict[str, list[float]] = {"train_loss": []}
        self.train_seconds = 0.0
        self.epochs_trained = 0
        self.peak_cuda_bytes = 0  # mmengine's logger resets CUDA's peak counter; the hook keeps the peak
        self._loss_sum = 0.0
        self._iters = 0
        self._epoch_start = 0.0
        self._pending: list[tuple[int, list[str], list[torch.Tensor]]] = []  # (batch_idx, names, losses)

    def before_train_epoch(self, runner: Runner) -> None:
        self._loss_sum, self._iters = 0.0, 0
        self._pending = []
        self._epoch_start = time.perf_counter()

    def after_train_iter(self, runner: Runner, batch_idx: int, data_batch: Any = None,
                         outputs: Mapping[str, Any] | None = None) -> None:
        losses = dict(outputs or {})
        if self.model is not None and self.model.step_losses is not None:
            losses.update(self.model.step_losses)
            self.model.step_losses = None
        self._pending.append((batch_idx, list(losses), [torch.as_tensor(v).float() for v in losses.values()]))
        self.samples += _batch_size(data_batch)
        self._track_peak()
        if (batch_idx + 1) % LOG_INTERVAL == 0 or self.end_of_epoch(runner.train_dataloader, batch_idx):
            self._flush(runner)

    def _flush(self, runner: Runner) -> None:
        """Read the pending losses in one transfer; fail on the first non-finite one."""
        pending, self._pending = self._pending, []
        flat = [t for _, _, tensors in pending for t in tensors]
        values = iter(_host_values(flat))
        for batch_idx, names, _ in pending:
            logged = {name: next(values) for name in names}
            loss = logged.get("loss", math.nan)
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss is {loss} at epoch {runner.epoch + 1}, iteration {batch_idx + 1}")
            self._loss_sum += loss
            self._iters += 1
            for name, value in logged.items():
                runner.message_hub.update_scalar(f"train/{name}", value)

    def _track_peak(self) -> None:
        if torch.cuda.is_initialized():  # a host-side query of the caching allocator, no wait
            self.peak_cuda_bytes = max(self.peak_cuda_bytes, torch.cuda.max_memory_allocated())

    def after_val_iter(self, runner: Runner, batch_idx: int, data_batch: Any = None, outputs: Any = None) -> None:
        self._track_peak()

    def after_test_iter(self, runner: Runner, batch_idx: int, data_batch: Any = None, outputs: Any = None) -> None:
        self._track_peak()

    def after_train_epoch(self, runner: Runner) -> None:
        if self._pending:
            self._flush(runner)
        self.train_seconds += time.perf_counter() - self._epoch_start
        self.epochs_trained += 1
        self.curves["train_loss"].append(self._loss_sum / max(self._iters, 1))
        self.events({"event": "epoch", "epoch": runner.epoch + 1, "epochs": runner.max_epochs,
                     "loss": self.curves["train_loss"][-1]})

    def after_val_epoch(self, runner: Runner, metrics: Mapping[str, float] | None = None) -> None:
        for name, value in (metrics or {}).items():
            self.curves.setdefault(f"val_{name}", []).append(float(value))


def _host_values(tensors: Sequence[torch.Tensor]) -> list[float]:
    """Python floats of 0-d tensors, with one transfer per device (stack, then copy)."""
    values: list[float] = [0.0] * len(tensors)
    by_device: dict[torch.device, list[int]] = {}
    for i, t in enumerate(tensors):
        by_device.setdefault(t.device, []).append(i)
    for indices in by_device.values():
        for i, v in zip(indices, torch.stack([tensors[i] for i in indices]).tolist(), strict=True):
            values[i] = v
    return values


def _to_host(results: list[Any]) -> list[Any]:
    """Evaluation results (mappings of statistics; floats or tensors, possibly on the GPU) with
    every tensor replaced by Python numbers: 0-d tensors become a float or int, others a CPU
    tensor. One transfer per (device, dtype)."""
    found: list[tuple[int, Any, torch.Tensor]] = [(i, k, v) for i, r in enumerate(results) if isinstance(r, Mapping)
                                                  for k, v in r.items() if isinstance(v, torch.Tensor)]
    if not found:
        return results
    out = [dict(r) if isinstance(r, Mapping) else r for r in results]
    groups: dict[tuple[torch.device, torch.dtype], list[tuple[int, Any, torch.Tensor]]] = {}
    for item in found:
        groups.setdefault((item[2].device, item[2].dtype), []).append(item)
    for items in groups.values():
        flat = torch.cat([t.detach().reshape(-1) for _, _, t in items]).cpu()
        numbers = flat.tolist()
        offset = 0
        for i, k, t in items:
            n = t.numel()
            out[i][k] = numbers[offset] if t.dim() == 0 else flat[offset:offset + n].reshape(t.shape)
            offset += n
    return out


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
    configure_determinism(config.deterministic)  # before any CUDA work: it sets the cuBLAS workspace
    set_random_seed(request.seed, deterministic=config.deterministic)
    impl: TaskImpl = request.task.factory()(config, request.data_root, request.seed)
    splits = impl.datasets()
    net = build_net(impl, config, request.norm.layer(**request.norm_params))
    world, rank = distributed_rank()
    model = build_model(request.task, config, request.norm, request.norm_params, impl, net, splits, request.seed,
                        world, rank)
    protocol, ctx, generator = model.protocol, model.ctx, model.ctx.generator
    if config.compile:
        # In place, so the module and its state_dict keys stay those of `net`: the protocol's
        # references, checkpoints and resume are unchanged. Only the network's forward (and its
        # backward) is compiled; the protocol's code around it and mmengine's loop stay eager.
        net.compile()
    pin = device == "cuda"  # page-locked batches, copied to the GPU without blocking (TaskModel)

    train_loader = protocol.train_loader(ctx, config.batch_size) or DataLoader(
        splits.train, batch_size=config.batch_size, generator=generator,
        drop_last=len(splits.train) > config.batch_size * world, num_workers=config.num_workers,
        persistent_workers=config.num_workers > 0, pin_memory=pin,
        **_sampling(splits.train, world, rank, request.seed))
    _pin(train_loader, pin)
    eval_split = splits.val if splits.val is not None else splits.test
    if world > 1:
        _join_process_group(device)
    hook = TrialHook(events, model)
    runner = Runner(
        model=model,
        work_dir=str(request.work_dir),
        experiment_name=f"trial-{os.getpid()}-{time.time_ns()}",
        train_dataloader=train_loader,
        val_dataloader=_eval_loader(eval_split, config, world, rank, pin),
        test_dataloader=_eval_loader(splits.test, config, world, rank, pin),
        train_cfg=dict(by_epoch=True, max_epochs=config.epochs, val_interval=config.val_interval),
        val_cfg=dict(),
        test_cfg=dict(),
        val_evaluator=[TaskMetric(impl)],
        test_evaluator=[TaskMetric(impl)],
        optim_wrapper=optim_wrapper(config, build_optimizer(config, net, protocol.no_weight_decay(net)), device),
        param_scheduler=scheduler_cfg(config) or None,
        default_hooks=dict(
            timer=dict(type="IterTimerHook"),
            logger=dict(type="LoggerHook", interval=LOG_INTERVAL),
            param_scheduler=dict(type="ParamSchedulerHook"),
            checkpoint=dict(type="CheckpointHook", interval=config.checkpoint_interval, max_keep_ckpts=1,
                            save_last=True),
        ),
        custom_hooks=[hook, ProtocolHook(protocol, net)],
        visualizer=dict(type="Visualizer", vis_backends=[dict(type="TensorboardVisBackend")],
                        name=f"vis-{os.getpid()}-{time.time_ns()}"),
        randomness=dict(seed=request.seed, deterministic=config.deterministic),
        resume=request.resume,
        launcher="pytorch" if world > 1 else "none",
        # Per-device batch statistics as in the papers; every rank evaluates with rank 0's buffers.
        cfg=dict(model_wrapper_cfg=dict(
            type="MMDistributedDataParallel", broadcast_buffers=True,
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
        loader = evaluation.loader(ctx, splits.test, config.batch_size) or _eval_loader(splits.test, config, world,
                                                                                         rank, pin)
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
                       resumed_from_epoch=resumed_from, evaluations=evaluations)


def build_net(impl: TaskImpl, config: TaskConfig, norm_layer: Callable[..., Any]) -> torch.nn.Module:
    """The task's network with ``norm_layer`` as its norm, in the configured memory format. Shared
    by :func:`run_trial` and the pre-flight check (:mod:`harness.preflight`)."""
    net = impl.model(norm_layer)
    if config.channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net


def build_model(task: Task, config: TaskConfig, norm: Norm, norm_params: dict[str, Any], impl: TaskImpl,
                net: torch.nn.Module, splits: Any, seed: int, world: int = 1, rank: int = 0) -> TaskModel:
    """The norm's protocol set up on the trial's context, and the network, the task and the
    protocol in mmengine's model interface. Shared by :func:`run_trial` and the pre-flight check."""
    protocol = norm.make_protocol(**norm_params) or NormProtocol()
    ctx = TrialContext(net=net, splits=splits, config=config, seed=seed, provides=task.provides | config.capabilities(),
                       generator=torch.Generator().manual_seed(seed), world=world, rank=rank)
    protocol.setup(ctx)
    model = TaskModel(net, impl, protocol, ctx)
    model.per_sample = world > 1
    return model


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


def _pin(loader: Any, pin: bool) -> None:
    """Page-locked batches from a norm protocol's own DataLoader too (its iterator reads the flag
    when it starts), so that every copy to the GPU can overlap with the computation."""
    if pin and isinstance(loader, DataLoader):
        loader.pin_memory = True


def _eval_loader(dataset: Any, config: TaskConfig, world: int = 1, rank: int = 0, pin_memory: bool = False,
                 ) -> DataLoader:
    sampler = None
    if world > 1:
        from torch.utils.data import DistributedSampler

        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)
    return DataLoader(dataset, batch_size=config.batch_size, shuffle=False, sampler=sampler,
                      num_workers=config.num_workers, pin_memory=pin_memory)


def optim_wrapper(config: TaskConfig, optimizer: torch.optim.Optimizer, device: str) -> OptimWrapper:
    """mmengine's wrapper; mixed precision where asked, on CUDA (on CPU ``amp`` is ignored: CPU
    autocast is slower than float32 on most CPUs, and the harness's CPU runs are its reference).
    bf16 keeps float32's exponent range, so it trains without a loss scale (and without the
    scaler's per-step check for infinite gradients, a wait for the device); fp16 gets mmengine's
    dynamic loss scale. It applies to every norm alike: no option of the harness favours one norm."""
    dtype = config.amp_dtype
    if dtype is None or not device.startswith("cuda"):
        return OptimWrapper(optimizer=optimizer)
    if dtype == "bfloat16":
        return AmpOptimWrapper(optimizer=optimizer, dtype=dtype, loss_scale=dict(enabled=False))
    return AmpOptimWrapper(optimizer=optimizer, dtype=dtype)


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


def peak_memory_mb(device: str, start_rss_mb: float, peak_cuda_bytes: int = 0) -> float:
    """Peak GPU memory allocated on CUDA (``peak_cuda_bytes``: what :class:`TrialHook` saw before
    mmengine's logger reset the counter); on CPU the trial process's peak resident memory above
    what it had at its start (the libraries every trial shares are not the norm's cost)."""
    if device.startswith("cuda"):
        return max(peak_cuda_bytes, torch.cuda.max_memory_allocated()) / 2**20
    return max(0.0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - start_rss_mb)


def _current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # not Linux: report the whole peak
        return 0.0


def environment(device: str, config: TaskConfig | None = None) -> dict[str, str]:
    """Versions, machine and device, and the engine options that change speed or bits (recorded
    with every trial and shown by the leaderboard)."""
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
    if config is not None:
        options = config.engine_options()
        if not device.startswith("cuda"):
            options["amp"] = "off"  # ignored on CPU (optim_wrapper)
        env.update({k: str(v).lower() for k, v in options.items() if k != "devices"})
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name()
        env["gpus"] = str(torch.cuda.device_count())
        env["cuda"] = str(torch.version.cuda)
        env["cudnn"] = str(torch.backends.cudnn.version())
    return env


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
