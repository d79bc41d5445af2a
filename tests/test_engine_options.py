"""The engine options that apply to every norm alike (determinism, mixed precision, compile), the
metrics' device-friendly sums, and the training step's freedom from waits for the device."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from harness.engine import TaskModel, TrialRequest, configure_determinism, environment, optim_wrapper_cfg, run_trial
from harness.engine.model import to_host
from harness.engine.recipe import _eval_loader, _pin
from harness.norm import Norm
from harness.protocol import NormProtocol
from harness.task import TaskConfig
from harness_plugins.tasks.classification import ClassificationConfig
from harness_plugins.tasks.classification.task import ClassificationTask, stat_names
from harness_plugins.tasks.toy import ToyConfig

from conftest import assert_every_trial_complete, run_cli, write_suite


@pytest.fixture(autouse=True)
def _restore_torch_switches(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Trials set process-wide switches; leave them as this test found them."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    saved = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark, torch.get_num_threads())
    yield
    torch.use_deterministic_algorithms(saved[0])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[1], saved[2]
    torch.set_num_threads(saved[3])


class OpRecorder(TorchDispatchMode):
    """Every ATen op run inside, and whether any produced float64."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []
        self.float64 = False

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        self.ops.append(func.__name__)
        self.float64 |= any(isinstance(t, torch.Tensor) and t.dtype == torch.float64
                            for t in (out if isinstance(out, tuple | list) else [out]))
        return out

    def count(self, prefix: str) -> int:
        return sum(op.startswith(prefix) for op in self.ops)


def toy_request(tmp_path: Path, name: str = "trial", norm: Norm | None = None, **config: Any) -> TrialRequest:
    from harness.plugins import load_registry

    registry = load_registry()
    config = {"epochs": 2, "batch_size": 8, **config}
    cfg = ToyConfig(dataset="spiral", points_per_class=24, test_points_per_class=24, hidden=[8, 8], noise=0.2,
                    **config)
    norm = norm or registry.norms["batchnorm"]
    return TrialRequest(task=registry.tasks["toy"], config=cfg, norm=norm, norm_config=norm.config(), seed=0,
                        work_dir=tmp_path / name, data_root=tmp_path / "data", threads=1)


# --- configuration ----------------------------------------------------------------------------

def test_new_keys_and_their_values() -> None:
    assert TaskConfig().deterministic is False and TaskConfig().compile is False and TaskConfig().amp is False
    assert [TaskConfig(amp=v).amp_dtype for v in (False, True, "fp16", "bf16")] == [
        None, "float16", "float16", "bfloat16"]
    assert TaskConfig(amp="bf16", deterministic=True, compile=True, channels_last=True).engine_options() == {
        "deterministic": True, "amp": "bf16", "compile": True, "channels_last": True, "devices": 1}
    for bad in ({"amp": "fp32"}, {"amp": 1}, {"deterministic": "yes"}, {"compile": 1}):
        with pytest.raises(ValueError):
            TaskConfig(**bad)


BAD_KEYS = {
    'amp = "fp32"': 'task.amp: Value error, amp must be true, false, "bf16" or "fp16" (got "fp32")',
    'deterministic = "yes"': 'task.deterministic: Input should be a valid boolean (got "yes")',
    "compile = 1": "task.compile: Input should be a valid boolean (got 1)",
}


@pytest.mark.parametrize("line", sorted(BAD_KEYS))
def test_wrong_values_are_refused_naming_file_and_key(line: str, workdir: Path) -> None:
    suite = write_suite(workdir.parent, name="bad")
    suite.write_text(suite.read_text().replace("epochs = 2", f"epochs = 2\n{line}"))
    result = run_cli("check", str(suite), cwd=workdir)
    assert result.returncode == 2, result.stdout
    assert str(suite) in result.stderr and BAD_KEYS[line] in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


# --- mixed precision --------------------------------------------------------------------------

def test_amp_dtype_reaches_mmengines_wrapper(monkeypatch: pytest.MonkeyPatch) -> None:
    from mmengine.optim import AmpOptimWrapper, OptimWrapper
    from mmengine.optim.optimizer import amp_optimizer_wrapper

    monkeypatch.setattr(amp_optimizer_wrapper, "is_cuda_available", lambda: True)  # build it as on a GPU

    from mmengine.optim import build_optim_wrapper

    model = TaskModel(torch.nn.Linear(1, 1), None, NormProtocol(), None)

    def wrapper(amp: Any, device: str = "cuda") -> OptimWrapper:
        return build_optim_wrapper(model, optim_wrapper_cfg(TaskConfig(amp=amp), model, device))

    bf16 = wrapper("bf16")
    assert isinstance(bf16, AmpOptimWrapper) and bf16.cast_dtype == torch.bfloat16
    assert not bf16.loss_scaler.is_enabled() and bf16.loss_scaler.state_dict() == {}, "bf16 needs no loss scale"
    with pytest.warns(UserWarning):  # GradScaler warns that this machine has no CUDA
        for amp in ("fp16", True):
            assert wrapper(amp).cast_dtype == torch.float16
    assert type(wrapper(False)) is OptimWrapper
    assert type(wrapper("bf16", device="cpu")) is OptimWrapper, "amp is ignored on CPU"


class _PlainScale(torch.nn.Module):
    """A plugin norm that is no torch norm class: mmengine's own norm_decay_mult would miss it."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(num_features))
        self.bias = torch.nn.Parameter(torch.zeros(num_features))


class _Projected(NormProtocol):
    def __init__(self, weight: torch.nn.Parameter) -> None:
        self.weight = weight

    def no_weight_decay(self, net: torch.nn.Module) -> list[torch.nn.Parameter]:
        return [self.weight]


@pytest.mark.parametrize("mult", [0.0, 0.5, 1.0])
def test_norm_decay_mult_applies_to_every_norm_the_factory_built(mult: float) -> None:
    from mmengine.optim import build_optim_wrapper

    conv, norm, projected = torch.nn.Linear(3, 3), _PlainScale(3), torch.nn.Linear(3, 3)
    net = torch.nn.Sequential(conv, norm, projected)
    model = TaskModel(net, None, _Projected(projected.weight), None, norm_layers=[norm])
    config = TaskConfig(norm_decay_mult=mult, optimizer={"name": "sgd", "lr": 0.1, "weight_decay": 1e-4})
    groups = build_optim_wrapper(model, optim_wrapper_cfg(config, model, "cpu")).optimizer.param_groups
    decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert decay[id(norm.weight)] == decay[id(norm.bias)] == pytest.approx(1e-4 * mult)
    assert decay[id(conv.weight)] == decay[id(projected.bias)] == 1e-4
    assert decay[id(projected.weight)] == 0.0, "the protocol's no-decay parameters keep none"
    assert len(decay) == len(list(net.parameters())), "every parameter once"


def test_warmup_iters_is_mmdets_linear_warmup() -> None:
    from harness.engine.optim import scheduler_cfg

    config = TaskConfig(epochs=12, schedule={"name": "multistep", "milestones": [8, 11], "warmup_iters": 500})
    warmup, step = scheduler_cfg(config)
    assert warmup == dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=500)
    assert step["milestones"] == [8, 11]
    with pytest.raises(ValueError, match="warmup_epochs or warmup_iters"):
        TaskConfig(schedule={"warmup_epochs": 1, "warmup_iters": 10})


# --- determinism ------------------------------------------------------------------------------

def test_configure_determinism_sets_every_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    configure_determinism(True)
    assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
    assert not torch.backends.cudnn.benchmark
    import os

    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    configure_determinism(False)
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic
    assert torch.backends.cudnn.benchmark
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    configure_determinism(True)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8", "a user's own setting is kept"


@pytest.mark.parametrize("deterministic", [False, True])
def test_cpu_trials_repeat_to_the_last_digit_in_both_modes(deterministic: bool, tmp_path: Path) -> None:
    results = [run_trial(toy_request(tmp_path, f"t{i}", deterministic=deterministic)) for i in range(2)]
    assert results[0].metrics == results[1].metrics and results[0].curves == results[1].curves
    assert torch.are_deterministic_algorithms_enabled() is deterministic
    assert torch.backends.cudnn.benchmark is not deterministic
    env = results[0].env
    assert env["deterministic"] == str(deterministic).lower()
    assert (env["amp"], env["compile"], env["channels_last"]) == ("off", "false", "false")


def test_environment_records_the_options() -> None:
    env = environment("cpu", TaskConfig(amp="bf16", compile=True, deterministic=True, channels_last=True))
    assert env["deterministic"] == "true" and env["compile"] == "true" and env["channels_last"] == "true"
    assert env["amp"] == "off", "amp is ignored on CPU, and the record says what was applied"
    assert "gpu" not in env


def test_deterministic_reaches_the_leaderboard(workdir: Path) -> None:
    suite = write_suite(workdir.parent, name="det", seeds="[0]", epochs=1, body="""
        [matrix]
        deterministic = [false, true]
    """)
    result = run_cli("run", str(suite), "--quiet", cwd=workdir)
    assert result.returncode == 0, result.stderr + result.stdout
    data = json.loads((workdir / "leaderboard" / "det.json").read_text())
    assert [t["state"] for t in data["trials"]] == ["complete", "complete"]
    assert {label: s["deterministic"] for label, s in data["settings"].items()} == {
        "deterministic=False": False, "deterministic=True": True}
    assert all(s["amp"] == "off" and s["compile"] is False for s in data["settings"].values())
    assert data["environment"]["deterministic"] in ("true", "false")
    md = (workdir / "leaderboard" / "det.md").read_text()
    assert "Engine: deterministic true, amp off, compile false" in md


# --- metrics ----------------------------------------------------------------------------------

def reference_sums(outputs: torch.Tensor, targets: torch.Tensor) -> list[float]:
    """The earlier implementation (float64, bincount), kept here as the reference."""
    logp = F.log_softmax(outputs.double(), dim=1)
    top = logp.topk(min(5, logp.shape[1]), dim=1)
    hit = top.indices == targets[:, None]
    correct = hit[:, 0].double()
    confidence = top.values[:, 0].exp()
    bins = (confidence * 15).ceil().long().clamp(1, 15) - 1
    per_bin = torch.stack([torch.bincount(bins, minlength=15).double(),
                           torch.bincount(bins, weights=confidence, minlength=15),
                           torch.bincount(bins, weights=correct, minlength=15)], dim=1)
    head = torch.tensor([float(len(targets)), correct.sum(), hit.any(dim=1).double().sum(),
                         -logp.gather(1, targets[:, None]).sum()], dtype=torch.float64)
    return torch.cat([head, per_bin.flatten()]).tolist()


@pytest.mark.parametrize("classes", [3, 10, 100])
def test_metrics_without_bincount_or_float64_match_the_hand_computation(classes: int) -> None:
    rng = np.random.default_rng(classes)
    n = 257
    logits = rng.normal(0, 3, size=(n, classes)).astype(np.float32)
    targets = rng.integers(0, classes, size=n)
    # by hand, in float64 numpy
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    order = np.argsort(-logp, axis=1, kind="stable")
    top1 = np.mean(order[:, 0] == targets)
    top5 = np.mean([t in row[:5] for row, t in zip(order, targets, strict=True)])
    nll = -np.mean(logp[np.arange(n), targets])
    confidence, correct = np.exp(logp.max(axis=1)), order[:, 0] == targets
    ece = sum(abs(correct[inside].sum() - confidence[inside].sum()) for b in range(15)
              if (inside := (confidence > b / 15) & (confidence <= (b + 1) / 15)).any()) / n

    task = ClassificationTask(ClassificationConfig(), Path("."), 0)
    out, y = torch.from_numpy(logits), torch.from_numpy(targets)
    torch.use_deterministic_algorithms(True)  # every op has a deterministic kernel (CPU flags some)
    with OpRecorder() as recorded:
        stats = [task.batch_stats(out[:100], y[:100]), task.batch_stats(out[100:], y[100:])]
    assert not recorded.float64, "no float64 on the metric path"
    for op in ("bincount", "scatter", "index_add", "index_put", "_local_scalar_dense", "histc"):
        assert recorded.count(op) == 0, f"{op} on the metric path"
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for s in stats for v in s.values())
    metrics = task.reduce(to_host(stats))
    assert metrics["top1"] == pytest.approx(top1) and metrics["top5"] == pytest.approx(top5)
    assert metrics["nll"] == pytest.approx(nll, rel=1e-5) and metrics["ece"] == pytest.approx(ece, rel=1e-4, abs=1e-6)
    # and the statistics themselves equal the earlier float64 bincount ones
    for part in (slice(0, 100), slice(100, n)):
        ours = [float(v) for v in task.batch_stats(out[part], y[part]).values()]
        assert ours == pytest.approx(reference_sums(out[part], y[part]), rel=1e-5, abs=1e-4)
    assert list(stats[0]) == stat_names()


def test_toy_statistics_stay_tensors_until_the_end(tmp_path: Path) -> None:
    from harness_plugins.tasks.toy.task import ToyTask

    task = ToyTask(ToyConfig(), tmp_path, 0)
    with OpRecorder() as recorded:
        stats = task.batch_stats(torch.randn(6, 2), torch.tensor([0, 1, 1, 0, 1, 0]))
    assert recorded.count("_local_scalar_dense") == 0
    host = to_host([stats, {"count": 2.0, "correct": 1.0, "nll_sum": 0.5}])
    assert all(type(v) in (float, int) for s in host for v in s.values())
    assert task.reduce(host)["accuracy"] == pytest.approx((float(stats["correct"]) + 1) / 8)


def test_to_host_keeps_shapes_and_plain_values() -> None:
    results = [{"a": torch.tensor(1.5), "b": torch.tensor([1, 2]), "c": 3.0}, {"a": torch.tensor(2.5)}]
    host = to_host(results)
    assert host[0]["a"] == 1.5 and host[1]["a"] == 2.5 and host[0]["c"] == 3.0
    assert torch.equal(host[0]["b"], torch.tensor([1, 2]))
    assert to_host([]) == []


# --- the training step ------------------------------------------------------------------------

class NanAfter(torch.nn.BatchNorm1d):
    """Batch norm whose output turns NaN from its fourth training forward on."""

    calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            type(self).calls += 1
        y = super().forward(x)
        return y * float("nan") if type(self).calls >= 4 * 2 else y  # two layers per forward


def test_a_nan_loss_still_fails_the_trial_at_its_iteration(tmp_path: Path) -> None:
    NanAfter.calls = 0
    norm = Norm(name="nan_after", make=NanAfter, dims=frozenset({"1d"}))
    with pytest.raises(FloatingPointError, match=r"loss is nan at epoch 1, iteration 4$"):
        run_trial(toy_request(tmp_path, norm=norm))


def test_no_wait_for_the_device_per_training_iteration(tmp_path: Path) -> None:
    """``.item()``/``float()`` of a tensor (``aten::_local_scalar_dense``, a device sync on a GPU):
    mmengine's RuntimeInfoHook and the old loss check did it every iteration; now a few per epoch."""
    request = toy_request(tmp_path, epochs=3, batch_size=4)  # 12 iterations per epoch
    with OpRecorder() as recorded:
        result = run_trial(request)
    iterations = 3 * 12
    assert len(result.curves["train_loss"]) == 3
    assert recorded.count("_local_scalar_dense") < iterations / 3, recorded.count("_local_scalar_dense")


def test_batches_are_pinned_and_copied_without_blocking() -> None:
    dataset = torch.utils.data.TensorDataset(torch.zeros(4, 2), torch.zeros(4))
    assert _eval_loader(dataset, TaskConfig(batch_size=2), object(), pin_memory=True).pin_memory
    assert not _eval_loader(dataset, TaskConfig(batch_size=2), object()).pin_memory
    own = torch.utils.data.DataLoader(dataset, batch_size=2)  # a norm protocol's own loader
    _pin(own, False)
    assert not own.pin_memory
    _pin(own, True)
    assert own.pin_memory
    from mmengine.model import BaseDataPreprocessor

    model = TaskModel(torch.nn.Linear(2, 2), None, None, None)  # type: ignore[arg-type]
    assert isinstance(model.data_preprocessor, BaseDataPreprocessor) and model.data_preprocessor._non_blocking


@pytest.mark.slow
def test_a_compiled_model_trains(tmp_path: Path) -> None:
    """``compile = true`` on CPU (Inductor, gcc): the network is compiled in place, trains and
    evaluates; state_dict keys are unchanged, so checkpoints stay those of the eager model."""
    from torch._dynamo.utils import counters

    counters.clear()
    result = run_trial(toy_request(tmp_path, compile=True, epochs=1))
    assert result.env["compile"] == "true"
    assert counters["stats"]["unique_graphs"] >= 2, "the training and the evaluation forward were compiled"
    assert math.isfinite(result.metrics["nll"]) and 0 <= result.metrics["accuracy"] <= 1


@pytest.mark.slow
def test_a_suite_trains_with_compile(workdir: Path) -> None:
    """The same through ``harness run``: a tiny suite with ``compile = true`` and two norms
    trains in the worker's trial processes, and the leaderboard records the option."""
    suite = write_suite(workdir.parent, name="compiled", seeds="[0]", epochs=1, norms=("batchnorm", "groupnorm"))
    suite.write_text(suite.read_text().replace("epochs = 1", "epochs = 1\ncompile = true"))
    result = run_cli("run", str(suite), "--quiet", cwd=workdir, timeout=600)
    assert result.returncode == 0, result.stderr + result.stdout
    assert_every_trial_complete(workdir, "compiled", 2)
    data = json.loads((workdir / "leaderboard" / "compiled.json").read_text())
    assert data["environment"]["compile"] == "true"
    assert all(s["compile"] is True for s in data["settings"].values())
