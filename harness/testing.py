"""The conformance kit: the checks of METHODS.md, run on any registered norm.

Each norm is checked where it lives, inside a tiny model (a linear or convolutional layer, the
norm, an in-place ReLU as timm's and torchvision's models have, a classifier head) with its
protocol set up and trained by the engine's own training step
(:meth:`harness.engine.TaskModel.train_step`); a norm whose output cannot be modified in place (a
view returned by a custom autograd Function, for one) fails its training checks, so norms that
need data-dependent set-up, extra batches or steps after the optimizer are checked too. Use it
from the command line (``harness check-norm NAME``) or in a plugin's tests::

    from harness.testing import conformance_tests
    test_my_norm_conforms = conformance_tests("my_norm")
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from mmengine.optim import build_optim_wrapper
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from .capabilities import CLASS_SCORES, INPUT_BATCHES, LABELS, UNLABELED
from .engine import TaskModel, build_model, optim_wrapper_cfg
from .norm import Norm, resolve
from .protocol import NormProtocol, TrialContext
from .task import OptimizerConfig, Splits, Task, TaskConfig

FEATURES = 8
CLASSES = 3
BATCH = 6
SHAPES = {"1d": (BATCH, 4), "2d": (BATCH, 3, 6, 6)}


@dataclass
class CheckResult:
    check: str
    dim: str
    ok: bool
    detail: str = ""


class _Classifier:
    """The bench's task: cross-entropy on class scores (a :class:`~harness.task.TaskImpl` loss)."""

    @staticmethod
    def loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs, targets)


BENCH_TASK = Task(name="conformance", make=_Classifier,
                  provides={LABELS, UNLABELED, INPUT_BATCHES, CLASS_SCORES})


@dataclass
class Bench:
    """A tiny model with the norm in it, set up as a trial sets it up (the engine's
    :func:`~harness.engine.build_model`, its optimizer config and training step), and data to
    drive it."""

    norm: Norm
    params: dict[str, Any]
    dim: str
    seed: int = 0
    net: nn.Module = field(init=False)
    layers: list[nn.Module] = field(init=False)
    model: TaskModel = field(init=False)

    def __post_init__(self) -> None:
        torch.manual_seed(self.seed)
        data = torch.Generator().manual_seed(1234)
        shape = SHAPES[self.dim]
        n = 4 * BATCH
        x = torch.randn((n, *shape[1:]), generator=data) * 2 + 0.5
        y = torch.arange(n) % CLASSES
        u = torch.randn((n, *shape[1:]), generator=data) * 2 + 0.5
        self.inputs, self.targets = x[:BATCH], y[:BATCH]
        self.layers = []
        self.config = self.norm.config.model_validate(self.params)
        make = self.norm.layer(self.config)

        def norm_layer(num_features: int, **kwargs: Any) -> nn.Module:
            layer = make(num_features, **kwargs)
            self.layers.append(layer)
            return layer

        if self.dim == "1d":
            self.net = nn.Sequential(nn.Linear(shape[1], FEATURES), norm_layer(FEATURES), nn.ReLU(inplace=True),
                                     nn.Linear(FEATURES, CLASSES))
        else:
            self.net = nn.Sequential(nn.Conv2d(shape[1], FEATURES, 3, padding=1), norm_layer(FEATURES),
                                     nn.ReLU(inplace=True),
                                     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(FEATURES, CLASSES))
        splits = Splits(train=TensorDataset(x, y), test=TensorDataset(x, y), unlabeled=TensorDataset(u))
        config = TaskConfig(batch_size=BATCH, optimizer=OptimizerConfig(lr=0.05, momentum=0.0))
        self.model = build_model(BENCH_TASK, config, self.norm, self.config, _Classifier(), self.net, splits,
                                 self.seed)
        self.wrapper = build_optim_wrapper(self.model, optim_wrapper_cfg(config, self.model, "cpu"))

    @property
    def protocol(self) -> NormProtocol:
        return self.model.protocol

    @property
    def ctx(self) -> TrialContext:
        return self.model.ctx

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, Any]]:
        loader = self.protocol.train_loader(self.ctx, BATCH) or DataLoader(
            self.ctx.splits.train, batch_size=BATCH, shuffle=True, generator=self.ctx.generator)
        for batch in loader:
            yield batch[0], batch[1], (batch[2] if len(batch) > 2 else None)

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor, extra: Any = None) -> torch.Tensor:
        """The training loss of a batch, as the training step computes it."""
        self.model.train()
        return self.model.step_loss((inputs, targets, extra), self.wrapper)[0]

    def train(self, steps: int = 2) -> None:
        """A few training steps, the engine's own."""
        self.model.train()
        self.protocol.before_train_epoch(self.net, 0)
        for step, batch in enumerate(self.batches()):
            if step == steps:
                break
            self.model.train_step(batch, self.wrapper)

    def evaluate(self, inputs: torch.Tensor | None = None) -> torch.Tensor:
        self.net.eval()
        with torch.no_grad():
            return self.net(self.inputs if inputs is None else inputs)


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a, b)


# -- the checks --------------------------------------------------------------------------------
def check_shape_and_dtype(bench: Bench) -> str:
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    handle = bench.layers[0].register_forward_hook(lambda m, args, out: seen.append((args[0], out)))
    try:
        bench.net.train()
        bench.protocol.train_forward(bench.net, bench.inputs, next(bench.batches())[2])
        bench.evaluate()
    finally:
        handle.remove()
    for mode, (given, out) in zip(("train", "eval"), seen, strict=False):
        if out.shape != given.shape or out.dtype != given.dtype:
            return f"{mode}: input {tuple(given.shape)} {given.dtype} became {tuple(out.shape)} {out.dtype}"
    double = copy.deepcopy(bench.layers[0]).double().eval()
    probe = seen[-1][0].double()
    with torch.no_grad():
        if double(probe).dtype != torch.float64:
            return "float64 input did not give float64 output"
    return ""


def check_train_eval(bench: Bench) -> str:
    bench.train()
    before = _state(bench.net)
    first, second = bench.evaluate(), bench.evaluate()
    if not _same(first, second):
        return "two evaluations of the same input differ"
    changed = [k for k, v in _state(bench.net).items() if not torch.equal(v, before[k])]
    if changed:
        return f"evaluation changed state: {changed}"
    if not torch.isfinite(first).all():
        return "evaluation output is not finite"
    return ""


def check_state_dict(bench: Bench) -> str:
    bench.train()
    expected = bench.evaluate()
    fresh = Bench(bench.norm, bench.params, bench.dim, seed=bench.seed + 1)
    fresh.net.load_state_dict(bench.net.state_dict())
    got = fresh.evaluate()
    return "" if torch.allclose(expected, got, atol=1e-6, rtol=1e-5) else \
        f"a fresh model loading the state differs by {(expected - got).abs().max():.3g}"


def check_gradients(bench: Bench) -> str:
    inputs, targets, extra = next(bench.batches())
    bench.wrapper.zero_grad()
    bench.loss(inputs, targets, extra).backward()
    missing = [f"{i}.{name}" for i, layer in enumerate(bench.layers) for name, p in layer.named_parameters()
               if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())]
    return f"no finite gradient for {missing}" if missing else ""


def check_batch_of_one(bench: Bench) -> str:
    try:
        loss = bench.loss(bench.inputs[:1], bench.targets[:1], None)
    except ValueError:
        return ""  # a clear refusal is allowed
    return "" if torch.isfinite(loss) else "a batch of one gives a non-finite loss (raise ValueError instead)"


def check_determinism(bench: Bench) -> str:
    outputs = []
    for _ in range(2):
        again = Bench(bench.norm, bench.params, bench.dim, seed=bench.seed)
        again.train()
        torch.manual_seed(7)
        again.net.train()
        outputs.append(again.protocol.train_forward(again.net, again.inputs, None).detach())
    return "" if _same(*outputs) else "two runs under the same seed differ"


def check_reference(bench: Bench) -> str | None:
    if bench.norm.reference is None:
        return None
    torch.manual_seed(0)
    layer = bench.norm.layer(bench.config)(FEATURES)
    reference = resolve(bench.norm.reference)(FEATURES, **bench.config.layer_kwargs())
    shape = (BATCH, FEATURES) if bench.dim == "1d" else (BATCH, FEATURES, 5, 5)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(5)) * 3 + 1
    layer.train()
    reference.train()
    got, want = layer(x), reference(x)
    return "" if torch.allclose(got, want, atol=1e-5, rtol=1e-4) else \
        f"differs from its reference by {(got - want).abs().max():.3g}"


CHECKS: dict[str, Callable[[Bench], str | None]] = {
    "shape and dtype": check_shape_and_dtype,
    "train/eval": check_train_eval,
    "state_dict round trip": check_state_dict,
    "gradients reach every parameter": check_gradients,
    "batch of one": check_batch_of_one,
    "deterministic under a seed": check_determinism,
    "equivalence to its reference": check_reference,
}


def run_check(norm: Norm, check: str, dim: str, params: dict[str, Any] | None = None) -> CheckResult:
    try:
        detail = CHECKS[check](Bench(norm, dict(params or {}), dim))
    except Exception as exc:  # noqa: BLE001 - a crash is the check's finding
        return CheckResult(check, dim, False, f"{type(exc).__name__}: {exc}")
    return CheckResult(check, dim, not detail, detail or "")


def checks_for(norm: Norm) -> list[tuple[str, str]]:
    """(check, input layout) pairs that apply: every layout the norm supports, and the reference
    equivalence only where the norm registers a reference."""
    return [(check, dim) for dim in sorted(norm.dims) for check in CHECKS
            if check != "equivalence to its reference" or norm.reference is not None]


def check_norm(norm: Norm, params: dict[str, Any] | None = None) -> list[CheckResult]:
    """Every applicable check on one norm."""
    return [run_check(norm, check, dim, params) for check, dim in checks_for(norm)]


def conformance_tests(*names: str, params: dict[str, Any] | None = None) -> Callable[..., None]:
    """A parametrized pytest test running every check on the named norms (all registered ones
    when none is named)."""
    import pytest

    from .plugins import load_registry

    registry = load_registry()
    chosen = names or tuple(sorted(registry.norms))
    cases = [(name, check, dim) for name in chosen for check, dim in checks_for(registry.norms[name])]

    @pytest.mark.parametrize(("norm", "check", "dim"), cases, ids=[f"{n}-{d}-{c}" for n, c, d in cases])
    def test(norm: str, check: str, dim: str) -> None:
        result = run_check(registry.norms[norm], check, dim, params)
        assert result.ok, f"{norm} ({dim}) fails '{check}': {result.detail}"

    return test


# -- op census: what a training step dispatches -------------------------------------------------
#: Ops that copy a device value to the host: each one stalls a GPU's queue (``.item()``,
#: ``float(t)``, ``int(t)``, ``bool(t)`` and Python branches on a tensor's value all end in them).
SYNC_OPS = ("aten::_local_scalar_dense", "aten::item")
#: Ops that only make views or allocate (besides every op whose schema says it returns a view).
FREE_OPS = ("aten::detach", "aten::_unsafe_view", "aten::empty", "aten::empty_strided", "aten::empty_like",
            "aten::alias", "aten::lift_fresh", "aten::set_", "aten::resize_")


@dataclass
class Census:
    """ATen ops dispatched while a function ran (forward and backward alike).

    ``ops``: ops that compute (on a GPU in eager mode, kernels launched); ``free``: views and
    allocations, which launch nothing (:data:`FREE_OPS`); ``large``: computing ops that read or
    write a tensor of at least the census's ``large`` elements (the memory passes a GPU pays for);
    ``syncs``: device-to-host copies (:data:`SYNC_OPS`); ``float64``: ops that produced a float64
    tensor; ``names``: count per op name.
    """

    ops: int = 0
    free: int = 0
    large: int = 0
    syncs: int = 0
    float64: int = 0
    names: dict[str, int] = field(default_factory=dict)
    sync_names: list[str] = field(default_factory=list)
    float64_names: list[str] = field(default_factory=list)


def census(fn: Callable[[], Any], large: int = 1 << 14) -> tuple[Any, Census]:
    """Run ``fn()`` under a dispatch mode that counts every ATen op it dispatches, on any device."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    found = Census()

    class Counting(TorchDispatchMode):
        def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
            out = func(*args, **(kwargs or {}))
            name = func.overloadpacket._qualified_op_name if hasattr(func, "overloadpacket") else str(func)
            found.names[name] = found.names.get(name, 0) + 1
            if getattr(func, "is_view", False) or name in FREE_OPS:
                found.free += 1
                return out
            found.ops += 1
            if name in SYNC_OPS:
                found.syncs += 1
                found.sync_names.append(name)
            outputs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
            if any(t.dtype == torch.float64 for t in outputs):
                found.float64 += 1
                found.float64_names.append(name)
            tensors = outputs + [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
            if any(t.numel() >= large for t in tensors):
                found.large += 1
            return out

    with Counting():
        result = fn()
    return result, found
