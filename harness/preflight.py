"""The pre-flight check: every (model, norm) pair of a suite trains one step before anything is stored.

A norm that cannot work in a model (instance norm on 1×1 maps, a layer the analytic moment
propagation cannot pass, a norm whose output an in-place activation may not modify) would
otherwise fail trial after trial, after hours in the queue. ``harness run`` (and ``harness check
--build``) therefore builds each distinct pair once, on the CPU, at the configuration's real
input shape, and takes one training step on a tiny random batch through the very path a trial
uses (:func:`harness.engine.build_net` and :func:`~harness.engine.build_model`: the task's model
with the norm in it, the norm's protocol set up on a :class:`~harness.protocol.TrialContext`, the
protocol's training loader and forward, the task's loss and the protocol's extra loss, backward,
the optimizer step and the protocol's after-step hook). The data set is not read: the task's
``example_batch`` makes the inputs (``example_samples`` for a task with its own ``collate``), and
the protocol's splits are small data sets of them.

A pair that fails is refused with the layer it failed in (module path and type) and the reason.
The check is seeded, restores the global random state afterwards, and never touches CUDA: it runs
in the parent process before workers fork. Results are cached per process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from .errors import Problem, UserError
from .norm import Norm, NormConfig
from .protocol import InputDataset
from .task import Splits, Task, TaskConfig

#: Samples in the checked training batch (fewer when the suite's batch is smaller), and in the
#: training split the protocols see (more than a batch, so a normalization batch has extras).
BATCH = 2
TRAIN_SAMPLES = 4
SEED = 0


@dataclass(frozen=True)
class Failure:
    """Why one (model, norm) pair cannot train: the stage, the layer if known, and the error."""

    stage: str  # "building the model", "the norm's protocol setup", "the forward", "the backward", ...
    layer: str  # "layer4.1.bn2 (InstanceNorm)", or "" when no layer is to blame
    reason: str  # "ValueError: ..."

    def __str__(self) -> str:
        where = f"in {self.stage} at {self.layer}" if self.layer else f"in {self.stage}"
        return f"{where}: {self.reason}"


@dataclass
class StepResult:
    """What one checked training step gave (for tests): the loss, and the trainable parameters
    that got no gradient or a non-finite one."""

    loss: float = float("nan")
    no_grad: list[str] = field(default_factory=list)
    seconds: float = 0.0
    failure: Failure | None = None


@dataclass(frozen=True)
class Refusal:
    """A ``[[norm]]`` entry the pre-flight refused in one model: the suite's variants that build
    that model at that input shape (they differ only in how they train), and why."""

    variants: tuple[Any, ...]  # suite.Variant
    norm: Any  # suite.NormSpec
    failure: Failure

    def problem(self, suite_file: str) -> Problem:
        spec = self.norm
        axes = {k: v for k, v in self.variants[0].axes.items() if k not in self.variants[0].config.training_keys}
        exclude = " ".join(f"{k} = {json.dumps(v)}" for k, v in {"norm": spec.label, **axes}.items())
        labels = ", ".join(v.label for v in self.variants)
        named = spec.label if spec.label == spec.norm.name else f"{spec.label}: use = {spec.norm.name!r}"
        return Problem(suite_file, f"norm[{spec.index}] ({named})",
                       f"cannot train in variant {labels}: {self.failure}. Remove the norm, exclude the pair "
                       f"([[exclude]] {exclude}), or change the model or the input size")


@dataclass
class Report:
    checked: int = 0  # distinct (model, norm) pairs built and stepped in this call
    cached: int = 0  # pairs this process had checked before
    seconds: float = 0.0
    refusals: list[Refusal] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)  # why some pairs could not be checked

    def summary(self) -> str:
        pairs = self.checked + self.cached
        if self.refusals:
            return f"pre-flight: {len(self.refusals)} of {pairs} (model, norm) pair(s) refused"
        return f"pre-flight: ok, {pairs} distinct (model, norm) pair(s) train ({self.seconds:.1f} s)"


_CACHE: dict[Any, StepResult] = {}


def preflight(suite: Any, plans: Sequence[Any] | None = None, data_root: Any = None,
              announce: Callable[[int], None] | None = None) -> Report:
    """Check every (variant, norm) of the suite (or of ``plans``); refusals are in the report.
    ``announce`` is told how many pairs are about to be built (none when all are cached)."""
    from .plan import make_plan

    plans = make_plan(suite) if plans is None else plans
    report = Report()
    start = time.perf_counter()
    groups: dict[tuple[int, str], list[Any]] = {}  # ([[norm]] index, pair key) -> its plans
    for plan in plans:
        key = _pair_key(suite.task, plan.variant.config, plan.norm.norm, plan.norm.config)
        groups.setdefault((plan.norm.index, key), []).append(plan)
    fresh = {key for _, key in groups if key not in _CACHE}
    if fresh and announce is not None:
        announce(len(fresh))
    for (_, key), group in groups.items():
        variant, spec = group[0].variant, group[0].norm
        if key in _CACHE:
            report.cached += 1
        else:
            try:
                _CACHE[key] = check_pair(suite.task, variant.config, spec.norm, spec.config, data_root=data_root)
            except _Unchecked as why:
                report.unchecked.append(f"{variant.label}/{spec.label}: {why}")
                continue
            report.checked += 1
        if _CACHE[key].failure is not None:
            report.refusals.append(Refusal(tuple(p.variant for p in group), spec, _CACHE[key].failure))
    report.seconds = time.perf_counter() - start
    return report


def require_buildable(suite: Any, plans: Sequence[Any] | None = None, data_root: Any = None, *,
                      echo: bool = False) -> Report:
    """:func:`preflight`, raising :class:`UserError` (exit code 2) with one line per refused pair;
    with ``echo``, a line on what was checked (and why some pairs could not be)."""
    def announce(count: int) -> None:
        print(f"pre-flight: building {count} (model, norm) pair(s) on CPU, one training step each …", flush=True)

    report = preflight(suite, plans, data_root, announce if echo else None)
    if echo:
        for why in report.unchecked:
            print(f"warning: pre-flight skipped {why}", file=sys.stderr)
    if report.refusals:
        raise UserError([r.problem(str(suite.path)) for r in report.refusals])
    if echo:
        print(report.summary())
    return report


class _Unchecked(Exception):
    """The pair could not be checked (no example batch and no data): not a refusal."""


def check_pair(task: Task, config: TaskConfig, norm: Norm, norm_config: NormConfig | None = None, *,
               data_root: Any = None, seed: int = SEED, optimizer_step: bool = True) -> StepResult:
    """Build the task's model with the norm and train one step on a tiny batch, on the CPU, with a
    fixed seed; the global random state is restored afterwards (``norm_config``: the norm's
    defaults when None). Returns the step's result, with ``failure`` set when the pair cannot train."""
    norm_config = norm_config or norm.config()
    with _seeded(seed):
        result = _check(task, config, norm, norm_config, data_root, seed, optimizer_step)
    failure = result.failure
    if failure is not None and (failure.stage == _NON_FINITE or failure.stage.startswith("the backward (op")
                                or failure.stage == "the backward"):
        # The same step again, watching: each layer's output for the first non-finite one, each
        # layer's output gradient, and autograd's anomaly mode for the operation that failed.
        with _seeded(seed):
            watched = _check(task, config, norm, norm_config, data_root, seed, optimizer_step, watch=True)
        if watched.failure is not None and watched.failure.stage.split(" (")[0] == failure.stage.split(" (")[0]:
            result = watched
    return result


_NON_FINITE = "the forward (non-finite loss)"


def _check(task: Task, config: TaskConfig, norm: Norm, norm_config: NormConfig, data_root: Any, seed: int,
           optimizer_step: bool, watch: bool = False) -> StepResult:
    from pathlib import Path

    from mmengine.optim import build_optim_wrapper

    from . import engine

    start = time.perf_counter()
    result = StepResult()
    generator = torch.Generator().manual_seed(seed)
    impl = task.factory()(config, Path(data_root or "."), seed)
    batch = max(1, min(BATCH, config.batch_size))
    splits = _splits(task, config, impl, batch, generator)
    making: list[int] = []  # the features of the norm layer being built, to name it if that fails
    norm_layer = norm.layer(norm_config)

    def tracked(num_features: int, *args: Any, **kwargs: Any) -> nn.Module:
        making.append(num_features)
        layer = norm_layer(num_features, *args, **kwargs)
        making.pop()
        return layer

    try:
        net, layers = engine.build_net(impl, config, tracked)
    except Exception as exc:  # noqa: BLE001 - any failure refuses the pair
        where = f"a {norm.name} layer of {making[-1]} features" if making else ""
        result.failure = Failure("building the model", where, _reason(exc))
        return result
    names = {id(m): name for name, m in net.named_modules()}
    norm_ids = {id(m) for m in layers}
    try:
        model = engine.build_model(task, config, norm, norm_config, impl, net, splits, seed, norm_layers=layers)
    except Exception as exc:  # noqa: BLE001
        result.failure = Failure(f"the norm's protocol setup ({_protocol_name(norm, norm_config)})", "", _reason(exc))
        return result
    tracker = _Tracker(net, names, norm_ids, watch)
    modes = contextlib.ExitStack()
    stage = "the norm's training loader"
    try:
        model.train()
        with _quiet_mmengine():
            model.init_weights()  # as mmengine's Runner does before training
        protocol = model.protocol
        protocol.before_train_epoch(net, 0)
        loader = protocol.train_loader(model.ctx, batch) or DataLoader(
            splits.train, batch_size=batch, shuffle=True, generator=model.ctx.generator,
            collate_fn=getattr(impl, "collate", None))
        data = next(iter(loader))
        with _quiet_mmengine():
            wrapper = build_optim_wrapper(model, engine.optim_wrapper_cfg(config, model, "cpu"))
        stage = "the forward"
        if watch:  # autograd records each operation's forward trace, to name the one whose backward fails
            modes.enter_context(warnings.catch_warnings())
            warnings.filterwarnings("ignore", message="Anomaly Detection has been enabled")
            modes.enter_context(torch.autograd.detect_anomaly(check_nan=False))
        with tracker:
            loss, _ = model.step_loss(data, wrapper)  # the first half of the trial's training step
        result.loss = float(loss.detach())
        if not math.isfinite(result.loss):
            first = tracker.first_bad
            result.failure = Failure(_NON_FINITE, tracker.describe(first) if first is not None else "",
                                     f"the loss of the first step is {result.loss}" + (
                                         " (this layer's output was the first that was not finite)" if first else ""))
            return result
        stage = "the backward"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                wrapper.backward(loss)
            except Exception as exc:  # noqa: BLE001
                tracker.anomaly = next((m.group(1) for w in caught
                                        if (m := re.search(r"Error detected in (\w+)", str(w.message)))), "")
                raise exc from None
        modes.close()
        grads = {name: p.grad for name, p in net.named_parameters() if p.requires_grad}
        result.no_grad = [name for name, g in grads.items() if g is None]
        grads = {name: g for name, g in grads.items() if g is not None}
        finite = torch.isfinite(torch.stack([g.sum() for g in grads.values()])) if grads else torch.ones(0)
        bad = [name for name, ok in zip(grads, finite.tolist(), strict=True) if not ok]
        if bad:  # named by the module of the first such parameter
            owner = bad[0].rpartition(".")[0]
            more = " …" if len(bad) > 3 else ""
            result.failure = Failure("the backward (non-finite gradients)",
                                     tracker.describe(net.get_submodule(owner) if owner else net),
                                     f"not finite: the gradient of {', '.join(bad[:3])}{more}")
            return result
        if optimizer_step:
            stage = "the optimizer step"
            wrapper.step()
            wrapper.zero_grad()
            stage = "the norm's after-step hook"
            model.after_step()
    except Exception as exc:  # noqa: BLE001
        result.failure = _located(stage, exc, tracker)
    finally:
        modes.close()
        tracker.remove()
    result.seconds = time.perf_counter() - start
    return result


def _splits(task: Task, config: TaskConfig, impl: Any, batch: int, generator: torch.Generator) -> Splits:
    """Small splits of random samples in the real shape (what a protocol's setup reads: input
    statistics, labels, an unlabeled split): the task's ``example_samples`` (lists of samples its
    ``collate`` batches) or ``example_batch`` (stacked); real samples for a task with neither."""
    if hasattr(impl, "example_samples"):  # samples the task's own collate batches (detection)
        def samples(n: int) -> list[Any]:
            return impl.example_samples(n, generator)

        return Splits(train=samples(max(TRAIN_SAMPLES, 2 * batch)), test=samples(batch), val=samples(batch))
    make: Callable[[int], tuple[Any, Any]]
    if hasattr(impl, "example_batch"):
        def make(n: int) -> tuple[Any, Any]:
            return impl.example_batch(n, generator)
    else:
        missing = config.missing_data(getattr(impl, "data_root", None) or ".")
        if missing:
            raise _Unchecked(f"task {task.name!r} has no example_batch and its data is missing")
        real = impl.datasets().train
        order = torch.randperm(len(real), generator=generator).tolist()

        def make(n: int) -> tuple[Any, Any]:
            items = [real[order.pop()] for _ in range(min(n, len(order)))]
            return (torch.stack([torch.as_tensor(i[0]) for i in items]),
                    torch.as_tensor([int(i[1]) for i in items]))
    train = TensorDataset(*make(max(TRAIN_SAMPLES, 2 * batch)))
    unlabeled = None
    if "unlabeled" in task.provides | config.capabilities():
        unlabeled = InputDataset(make(TRAIN_SAMPLES)[0])
    return Splits(train=train, test=TensorDataset(*make(batch)), val=TensorDataset(*make(batch)),
                  unlabeled=unlabeled)


class _Tracker:
    """Forward hooks that know which module was running when an exception escaped, and which
    norm layer last finished its forward. They change no tensor (the check stays the real path)."""

    def __init__(self, net: nn.Module, names: dict[int, str], norm_ids: set[int], watch: bool = False) -> None:
        self.names, self.norm_ids, self.watch = names, norm_ids, watch
        self.nodes: set[Any] = set()  # watching: the autograd nodes of module outputs, with a pre-hook each
        self.reached: list[nn.Module] = []  # watching: modules whose output's backward started, in order
        self.anomaly = ""  # watching: the backward node autograd's anomaly mode blamed
        self.stack: list[nn.Module] = []
        self.last_norm: nn.Module | None = None
        self.first_bad: nn.Module | None = None  # the first module whose output was not finite
        self.failed: list[nn.Module] = []
        self.net_done = False
        self.net = net
        self.handles: list[Any] = []
        for module in net.modules():
            self.handles.append(module.register_forward_pre_hook(self._pre))
            self.handles.append(module.register_forward_hook(self._post))

    def _pre(self, module: nn.Module, args: Any) -> None:
        self.stack.append(module)

    def _post(self, module: nn.Module, args: Any, output: Any) -> None:
        if self.stack and self.stack[-1] is module:
            self.stack.pop()
        if id(module) in self.norm_ids:
            self.last_norm = module
        if (self.watch and self.first_bad is None and isinstance(output, torch.Tensor) and output.is_floating_point()
                and not bool(torch.isfinite(output).all())):
            self.first_bad = module
        node = output.grad_fn if self.watch and isinstance(output, torch.Tensor) else None
        if node is not None and node not in self.nodes:  # the innermost module that made it
            self.nodes.add(node)
            node.register_prehook(lambda grads: self.reached.append(module))
        if module is self.net:
            self.net_done = True

    def backward_layer(self) -> str:
        """The module whose output's backward ran last before the backward failed: the failing
        operation is that module's last one or one inside it."""
        return self.describe(self.reached[-1]) if self.reached else ""

    def __enter__(self) -> _Tracker:
        return self

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        if exc is not None:
            self.failed = list(self.stack)
        self.stack.clear()

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    def describe(self, module: nn.Module) -> str:
        name = self.names.get(id(module), "?") or "the model"
        return f"{name} ({type(module).__name__})"

    def layer(self) -> str:
        """The innermost norm layer that was running, else the innermost module (and the norm
        layer that ran last before it, which is usually the one to blame)."""
        if not self.failed:
            return ""
        norms = [m for m in self.failed if id(m) in self.norm_ids]
        if norms:
            return self.describe(norms[-1])
        where = self.describe(self.failed[-1])
        if self.last_norm is not None and self.failed[-1] is not self.net:
            where += f", after the norm {self.describe(self.last_norm)}"
        return where


_BACKWARD_OP = re.compile(r"\b(\w+Backward\d*)\b")


def _located(stage: str, exc: BaseException, tracker: _Tracker) -> Failure:
    reason = _reason(exc)
    if stage == "the forward":
        layer = tracker.layer()
        if not layer and tracker.net_done:
            stage = "the task's loss or the norm's extra loss"
        return Failure(stage, layer, reason)
    if stage == "the backward":
        op = tracker.anomaly or (m.group(1) if (m := _BACKWARD_OP.search(str(exc))) else "")
        if op:
            stage = f"the backward (op {op})"
        return Failure(stage, tracker.backward_layer(), reason)
    return Failure(stage, "", reason)


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if len(text) > 400:
        text = text[:400] + " …"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _protocol_name(norm: Norm, norm_config: NormConfig) -> str:
    try:
        protocol = norm.make_protocol(norm_config)
    except Exception:  # noqa: BLE001
        return "its protocol"
    if protocol is None:
        return "none"
    parts = getattr(protocol, "parts", [protocol])
    return " + ".join(type(p).__name__ for p in parts)


def _pair_key(task: Task, config: TaskConfig, norm: Norm, norm_config: NormConfig) -> Any:
    shape = config.model_dump(mode="json", exclude=set(config.training_keys) & set(type(config).model_fields))
    return json.dumps({"task": task.name, "norm": norm.name, "source": norm.source,
                       "params": norm_config.model_dump(mode="json"),
                       "config": shape, "batch": min(BATCH, config.batch_size)}, sort_keys=True, default=str)


@contextlib.contextmanager
def _quiet_mmengine() -> Iterator[None]:
    """mmengine logs every parameter's initialisation at INFO when no Runner's log file is open."""
    from mmengine.logging import MMLogger

    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


class _seeded:
    """Seed torch (CPU only: CUDA is never initialized), numpy and random; restore them after."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __enter__(self) -> None:
        self.torch_state = torch.random.get_rng_state()
        self.np_state = np.random.get_state()
        self.py_state = random.getstate()
        torch.random.default_generator.manual_seed(self.seed)
        np.random.seed(self.seed)
        random.seed(self.seed)

    def __exit__(self, *exc: Any) -> None:
        torch.random.set_rng_state(self.torch_state)
        np.random.set_state(self.np_state)
        random.setstate(self.py_state)
