"""The pre-flight check: a norm that cannot train in a model is refused before anything is stored,
with the layer and the reason; `harness check --build` does the same on request."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.plugins import load_registry
from harness.preflight import _CACHE, check_pair, preflight
from harness.suite import load_suite

from conftest import run_cli, write_suite

# timm's resnet18 keeps its ImageNet stem (stride-2 conv, max-pool): at CIFAR's 32×32 its last
# stage sees 1×1 maps, where instance norm has no spatial statistics.
RESNET18_CIFAR = """
[suite]
name = "in-resnet18"
seeds = [0]
metric = "top1"

[task]
use = "classification"
dataset = "cifar10"
model = "resnet18"
epochs = 1
batch_size = 4

[[norm]]
use = "batchnorm"

[[norm]]
use = "instancenorm"
"""

BACKWARD_BOOM = '''
import torch
from torch import nn
from harness import Norm, hookimpl

class _Boom(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()
    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("no gradient here")

class BackwardBoom(nn.BatchNorm2d):
    def forward(self, x):
        return _Boom.apply(super().forward(x))

@hookimpl
def harness_register_norms(register):
    register(Norm(name="backward_boom", make=BackwardBoom, dims={"2d"}))
'''


@pytest.fixture
def cifar_data(tmp_path: Path) -> Path:
    """A data root with CIFAR-10 in its real binary format (a few images per class)."""
    from harness_plugins.tasks.classification.formats import write_smoke_data

    root = tmp_path / "data"
    write_smoke_data("cifar10", root / "cifar-10-batches-bin")
    return root


def _registry():
    return load_registry()


def test_run_refuses_instancenorm_on_1x1_maps_before_storing_anything(tmp_path: Path, cifar_data: Path) -> None:
    suite = tmp_path / "in.toml"
    suite.write_text(RESNET18_CIFAR)
    work = tmp_path / "work"
    work.mkdir()
    env = {"HARNESS_DATA": str(cifar_data)}
    result = run_cli("run", str(suite), "--quiet", cwd=work, env=env)
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("error:")]  # one line: batchnorm passes
    assert str(suite) in line and "norm[2] (instancenorm)" in line and "cifar10,resnet18" in line
    assert "layer4.0.bn1 (InstanceNorm)" in line and "Expected more than 1 spatial element" in line
    assert "[[exclude]]" in line and "Remove the norm" in line
    assert "Traceback" not in result.stderr
    assert not (work / "runs").exists() and not list(work.rglob("*.db")), "nothing may be stored"

    checked = run_cli("check", str(suite), "--build", cwd=work, env=env)
    assert checked.returncode == 2, checked.stderr[-3000:]
    assert "layer4.0.bn1 (InstanceNorm)" in checked.stderr and str(suite) in checked.stderr
    assert not (work / "runs").exists()


def test_check_build_passes_a_suite_that_trains(tmp_path: Path) -> None:
    suite = write_suite(tmp_path, norms=("batchnorm", "layernorm"), body="""
        [matrix]
        batch_size = [8, 16]
    """)
    result = run_cli("check", str(suite), "--build", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # the two batch sizes build the same model: each norm is checked once
    assert "pre-flight: building 2 (model, norm) pair(s) on CPU" in result.stdout
    assert "pre-flight: ok, 2 distinct (model, norm) pair(s) train" in result.stdout
    assert not (tmp_path / "runs").exists()


def test_plain_check_does_not_build(tmp_path: Path) -> None:
    suite = tmp_path / "in.toml"
    suite.write_text(RESNET18_CIFAR)
    result = run_cli("check", str(suite), cwd=tmp_path)
    assert result.returncode == 0 and "pre-flight" not in result.stdout


def test_variants_differing_in_training_only_are_checked_once(tmp_path: Path) -> None:
    suite_path = write_suite(tmp_path, norms=("batchnorm",), body="""
        [task.optimizer]
        lr = 0.1

        [matrix]
        batch_size = [8, 16]
        epochs = [1, 2]
        hidden = [[8, 8], [4]]
    """)
    suite = load_suite(suite_path, _registry())
    _CACHE.clear()
    report = preflight(suite, data_root=tmp_path)
    assert (report.checked, report.cached, report.refusals) == (2, 0, [])  # two networks
    again = preflight(suite, data_root=tmp_path)
    assert (again.checked, again.cached) == (0, 2)  # cached in this process


def test_the_check_is_seeded_restores_the_random_state_and_leaves_cuda_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_cuda(*args, **kwargs):
        raise AssertionError("the pre-flight initialized CUDA")

    monkeypatch.setattr(torch.cuda, "_lazy_init", no_cuda)
    registry = _registry()
    task = registry.tasks["toy"]
    config = task.config(dataset="digits", batch_size=8)
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    states = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    first = check_pair(task, config, registry.norms["batchnorm"], data_root=tmp_path)
    second = check_pair(task, config, registry.norms["batchnorm"], data_root=tmp_path)
    assert first.failure is None and first.loss == second.loss
    assert torch.equal(torch.get_rng_state(), states[0])
    assert (np.random.get_state()[1] == states[1]).all() and random.getstate() == states[2]


def test_a_backward_failure_is_named(tmp_path: Path) -> None:
    plugin = tmp_path / "boom.py"
    plugin.write_text(BACKWARD_BOOM)
    registry = _registry()
    registry.load_file(plugin)
    task = registry.tasks["toy"]
    result = check_pair(task, task.config(dataset="digits"), registry.norms["backward_boom"], data_root=tmp_path)
    failure = result.failure
    assert failure is not None and failure.stage == "the backward (op _BoomBackward)", failure
    assert failure.layer == "7 (BackwardBoom)" and "no gradient here" in failure.reason  # the digits CNN's last norm
    assert not torch.is_anomaly_enabled()


def test_an_inplace_activation_after_the_norm_names_both(tmp_path: Path) -> None:
    """A norm whose output autograd forbids modifying in place fails in the activation after it;
    the message names that activation and the norm that ran just before."""
    plugin = tmp_path / "view_norm.py"
    plugin.write_text('''
import torch
from torch import nn
from harness import Norm, hookimpl

class _View(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)
    @staticmethod
    def backward(ctx, grad):
        return grad

class ViewNorm(nn.BatchNorm2d):
    def forward(self, x):
        return _View.apply(super().forward(x))

@hookimpl
def harness_register_norms(register):
    register(Norm(name="view_norm", make=ViewNorm, dims={"2d"}))
''')
    registry = _registry()
    registry.load_file(plugin)
    task = registry.tasks["classification"]
    config = task.config(dataset="cifar10", model="resnet18", image_size=64, resize=64)
    failure = check_pair(task, config, registry.norms["view_norm"], data_root=tmp_path).failure
    assert failure is not None and failure.stage == "the forward"
    assert failure.layer == "act1 (ReLU), after the norm bn1 (ViewNorm)", failure


def test_a_task_without_example_batch_is_checked_on_its_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from harness_plugins.tasks.toy.task import ToyTask

    monkeypatch.delattr(ToyTask, "example_batch")
    registry = _registry()
    task = registry.tasks["toy"]
    result = check_pair(task, task.config(dataset="digits"), registry.norms["groupnorm"],
                        registry.norms["groupnorm"].config(groups=4),
                        data_root=tmp_path)
    assert result.failure is None and np.isfinite(result.loss)


def test_a_non_finite_loss_names_the_first_layer_that_went_non_finite(tmp_path: Path) -> None:
    plugin = tmp_path / "nan_now.py"
    plugin.write_text('''
from torch import nn
from harness import Norm, hookimpl

class NanNow(nn.Module):
    def __init__(self, num_features, **kwargs):
        super().__init__()
        self.scale = nn.Parameter(nn.init.ones_(nn.Parameter(__import__("torch").empty(num_features))))
    def forward(self, x):
        return x * self.scale[:, None, None] * float("nan")

@hookimpl
def harness_register_norms(register):
    register(Norm(name="nan_now", make=NanNow, dims={"2d"}))
''')
    registry = _registry()
    registry.load_file(plugin)
    task = registry.tasks["toy"]
    failure = check_pair(task, task.config(dataset="digits"), registry.norms["nan_now"], data_root=tmp_path).failure
    assert failure is not None and failure.layer == "1 (NanNow)" and "not finite" in failure.reason, failure
    assert failure.stage.startswith("the forward")


@pytest.mark.parametrize(("task_name", "keys", "shape", "classes"), [
    ("classification", {"dataset": "cifar10"}, (3, 32, 32), 10),
    ("classification", {"dataset": "cifar100", "image_size": 24}, (3, 24, 24), 100),
    ("classification", {"dataset": "digits", "in_chans": 3}, (3, 8, 8), 10),
    ("classification", {"dataset": "imagenet"}, (3, 224, 224), 1000),
    ("toy", {"dataset": "spiral", "classes": 3}, (2,), 3),
    ("toy", {"dataset": "digits"}, (1, 8, 8), 10),
])
def test_example_batches_have_the_real_input_shape_and_need_no_data(
        tmp_path: Path, task_name: str, keys: dict, shape: tuple, classes: int) -> None:
    task = _registry().tasks[task_name]
    impl = task.factory()(task.config(**keys), tmp_path / "empty", 0)
    inputs, targets = impl.example_batch(5, torch.Generator().manual_seed(0))
    assert inputs.shape == (5, *shape) and inputs.dtype == torch.float32
    assert targets.shape == (5,) and targets.dtype == torch.int64 and 0 <= targets.min() <= targets.max() < classes
    if task_name == "classification" and keys["dataset"] != "imagenet":  # the model needs no data after it
        net = impl.model(torch.nn.BatchNorm2d)
        assert net(inputs[:2]).shape == (2, classes)
    assert not (tmp_path / "empty").exists()
