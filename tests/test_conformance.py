"""The conformance kit: every registered norm passes it, and it catches what it is for."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from torch import nn

from harness import Norm
from harness.testing import check_norm, conformance_tests

from conftest import SCALED_BN, run_cli

test_every_registered_norm_conforms = conformance_tests()


class Halves(nn.BatchNorm1d):
    """Returns float16: changes the dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).half()


class Unseeded(nn.BatchNorm1d):
    """Draws noise from Python's RNG, which a torch seed does not fix."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * (1 + random.random())


class DeadParameter(nn.BatchNorm1d):
    """Has a parameter that never takes part in the forward pass."""

    def __init__(self, num_features: int, **kwargs: object) -> None:
        super().__init__(num_features)
        self.unused = nn.Parameter(torch.ones(num_features))


class StateOutsideStateDict(nn.Module):
    """Keeps its running mean in a plain attribute, so a saved model forgets it."""

    def __init__(self, num_features: int, **kwargs: object) -> None:
        super().__init__()
        self.mean = torch.zeros(num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.mean = 0.5 * self.mean + 0.5 * x.detach().mean(0)
        return x - self.mean


class EvalUpdatesStats(nn.BatchNorm1d):
    """Updates its running statistics in evaluation too."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, True, 0.1)


class _ViewOfOutput(torch.autograd.Function):
    """Returns its output as a view, as the first fused per-sample affine did."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
        return (x * 2).view(x.shape)

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        return grad * 2


class ReturnsAView(nn.BatchNorm1d):
    """Correct values, but an output that an in-place activation after it cannot modify."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ViewOfOutput.apply(super().forward(x))


def failures(make: type, **extra: object) -> set[str]:
    norm = Norm(name="probe", make=make, dims={"1d"}, **extra)
    return {r.check for r in check_norm(norm) if not r.ok}


def test_the_kit_catches_a_changed_dtype() -> None:
    assert "shape and dtype" in failures(Halves)


def test_the_kit_catches_randomness_outside_torch() -> None:
    assert "deterministic under a seed" in failures(Unseeded)


def test_the_kit_catches_a_parameter_without_gradient() -> None:
    assert "gradients reach every parameter" in failures(DeadParameter)


def test_the_kit_catches_state_missing_from_the_state_dict() -> None:
    assert "state_dict round trip" in failures(StateOutsideStateDict)


def test_the_kit_catches_evaluation_that_moves_statistics() -> None:
    assert failures(EvalUpdatesStats) == {"train/eval"}


def test_the_kit_checks_a_reference_equivalence() -> None:
    assert failures(nn.BatchNorm1d, reference="torch.nn:BatchNorm1d") == set()
    assert "equivalence to its reference" in failures(nn.BatchNorm1d, reference="torch.nn:LayerNorm")


def test_check_norm_command(tmp_path: Path) -> None:
    ok = run_cli("check-norm", "groupnorm", "--param", "groups=4", cwd=tmp_path, env={"COLUMNS": "200"})
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "gradients reach every parameter" in ok.stdout and "FAIL" not in ok.stdout
    (tmp_path / "my_norm.py").write_text(SCALED_BN)
    # The contract's ScaledBN is a BatchNorm1d registered with the default dims (1d and 2d):
    # the kit finds that it does not work on N×C×H×W input.
    plugin = run_cli("check-norm", "scaled_bn", "--plugin", "my_norm.py", cwd=tmp_path, env={"COLUMNS": "200"})
    assert plugin.returncode == 1
    assert "expected 2D or 3D input (got 4D input)" in plugin.stdout
    assert all("FAIL" not in line for line in plugin.stdout.splitlines() if "│ 1d" in line)
    unknown = run_cli("check-norm", "nonorm", cwd=tmp_path)
    assert unknown.returncode == 2 and "unknown norm 'nonorm'" in unknown.stderr


def test_the_kit_catches_an_output_that_an_in_place_activation_cannot_modify() -> None:
    """The kit's model puts the norm in front of nn.ReLU(inplace=True), as timm's and torchvision's
    ResNets do: a norm whose custom autograd Function returns a view fails its training checks."""
    with pytest.raises(RuntimeError, match="is a view and is being modified inplace"):
        nn.Sequential(ReturnsAView(4), nn.ReLU(inplace=True))(torch.randn(6, 4)).sum().backward()
    found = failures(ReturnsAView)
    assert {"gradients reach every parameter", "train/eval"} <= found
    details = [r.detail for r in check_norm(Norm(name="probe", make=ReturnsAView, dims={"1d"})) if not r.ok]
    assert any("modified inplace" in d for d in details)
    assert failures(nn.BatchNorm1d) == set(), "the same norm without the view passes"
