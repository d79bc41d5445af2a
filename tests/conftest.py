"""Shared helpers: the real CLI in a subprocess, and small suites written to disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    import torch
    from torch import nn

    from postgres_server import PostgresServer

REPO = Path(__file__).resolve().parents[1]

TINY_SUITE = """
[suite]
name = "{name}"
version = 1
seeds = {seeds}
metric = "accuracy"
baseline = "batchnorm"

[task]
use = "toy"
dataset = "spiral"
epochs = {epochs}
batch_size = 16
points_per_class = 24
test_points_per_class = 24
hidden = [8, 8]
noise = 0.2
"""

# The third-party norm of the plugin contract (issue text), for a spiral MLP (N×C features).

SCALED_BN = '''
from pydantic import Field
from torch import nn
from harness import Norm, NormConfig, hookimpl

class ScaledConfig(NormConfig):
    factor: float = Field(0.5, gt=0, description="the constant the output is multiplied by")

class ScaledBN(nn.BatchNorm1d):
    def __init__(self, num_features, *, factor, device=None, dtype=None):
        super().__init__(num_features, device=device, dtype=dtype)
        self.factor = factor
    def forward(self, x):
        return super().forward(x) * self.factor

@hookimpl
def harness_register_norms(register):
    register(Norm(name="scaled_bn", make=ScaledBN, config=ScaledConfig, summary="BN times a constant"))
'''


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300,
            ) -> subprocess.CompletedProcess[str]:
    """``harness ARGS`` as a user runs it: a fresh process, output captured."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, env=full_env, text=True,
                          capture_output=True, timeout=timeout)


def run_together(count: int, *args: str, cwd: Path) -> None:
    """``count`` processes of ``harness ARGS`` started at the same instant; each must succeed."""
    runs = [subprocess.Popen([sys.executable, "-m", "harness", *args], cwd=cwd, text=True, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE) for _ in range(count)]
    for run in runs:
        _, err = run.communicate(timeout=600)
        assert run.returncode == 0 and "Traceback" not in err, err


def assert_every_trial_complete(work: Path, name: str, planned: int | None = None) -> None:
    """Every planned trial of the suite ``name`` run under ``work`` is in its leaderboard, complete
    (``planned`` of them, where given): a run's exit code alone does not prove that no trial failed."""
    board = json.loads((work / "leaderboard" / f"{name}.json").read_text())
    states = [(t["variant"], t["norm"], t["seed"], t["state"], t.get("fail_reason", "")) for t in board["trials"]]
    assert states and all(s[3] == "complete" for s in states), states
    assert planned is None or len(states) == planned, states
    assert board["complete"], "some trials have not finished"


def assert_check_refuses(suite: Path, refused: Sequence[str], cwd: Path) -> None:
    """``harness check`` on a suite whose norms are batchnorm then ``refused``: exit 2 without a
    traceback, naming each refused norm's ``use`` key and what it needs, and not batchnorm."""
    result = run_cli("check", str(suite), cwd=cwd)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    for index, name in enumerate(refused, start=2):
        assert f"norm[{index}].use" in result.stderr and f"norm {name!r} needs" in result.stderr
    assert "norm[1]" not in result.stderr


def write_suite(directory: Path, body: str = "", *, name: str = "tiny", seeds: str = "[0, 1]",
                epochs: int = 2, norms: tuple[str, ...] = ("batchnorm",), header: str = "") -> Path:
    """A small spiral suite (seconds to run) with the given norms and extra TOML appended."""
    text = header + TINY_SUITE.format(name=name, seeds=seeds, epochs=epochs)
    text += "".join(f'\n[[norm]]\nuse = "{n}"\n' for n in norms)
    path = directory / f"{name}.toml"
    path.write_text(text + textwrap.dedent(body))
    return path


def channel_varied_input(*shape: int, seed: int = 0) -> torch.Tensor:
    """Random input with a non-zero mean and a non-unit scale per channel."""
    import torch

    g = torch.Generator().manual_seed(seed)
    channel = (1, shape[1]) + (1,) * (len(shape) - 2)
    return torch.randn(shape, generator=g) * (torch.rand(channel, generator=g) * 3 + 0.5) \
        + torch.randn(channel, generator=g) * 2


def randomize_affine(*modules: nn.Module, seed: int = 1) -> None:
    """Give every module the same random weight and bias, so that the affine is tested too."""
    import torch

    g = torch.Generator().manual_seed(seed)
    weight = torch.rand(modules[0].weight.shape, generator=g) + 0.5
    bias = torch.randn(modules[0].bias.shape, generator=g)
    with torch.no_grad():
        for m in modules:
            m.weight.copy_(weight)
            m.bias.copy_(bias)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """An empty directory to run the CLI in, with its own data root."""
    (tmp_path / "work").mkdir()
    return tmp_path / "work"


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server on loopback for the whole session; skipped, saying why, only
    where no server is installed (``make setup`` installs one where it can)."""
    from postgres_server import postgres_server, server_binaries

    binaries = server_binaries()
    if binaries is None:
        pytest.skip("no PostgreSQL server installed (scripts/install_postgres.sh needs root or sudo and apt-get)")
    with postgres_server(binaries) as server:
        yield server
