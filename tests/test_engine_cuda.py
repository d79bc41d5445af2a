"""The engine options on a GPU: deterministic training repeats bit for bit, bf16 autocast with
channels-last and compile trains, and no training step waits for the device (torch's sync
debug mode counts the waits). Skipped where no CUDA device is visible."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from harness.engine import TrialRequest, TrialResult, run_trial

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def _restore_torch_switches() -> Any:
    saved = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark)
    yield
    torch.use_deterministic_algorithms(saved[0])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[1], saved[2]


def cifar_trial(tmp_path: Path, name: str, **options: Any) -> TrialResult:
    from harness.plugins import load_registry
    from harness_plugins.common.files import atomic_directory
    from harness_plugins.tasks.classification import ClassificationConfig
    from harness_plugins.tasks.classification.formats import write_cifar

    data_root = tmp_path / "data"
    atomic_directory(data_root / "cifar-10-batches-bin",
                     lambda d: write_cifar(d, "cifar10", train_per_class=24, test_per_class=10))
    registry = load_registry()
    options = {"epochs": 2, "batch_size": 20, **options}
    config = ClassificationConfig(dataset="cifar10", model="cifar_resnet20", val_fraction=0.0, **options)
    norm = registry.norms["batchnorm"]
    request = TrialRequest(task=registry.tasks["classification"], config=config, norm=norm, norm_config=norm.config(),
                           seed=0, work_dir=tmp_path / name, data_root=data_root)
    return run_trial(request)


def test_deterministic_cuda_training_repeats_bit_for_bit(tmp_path: Path) -> None:
    first, second = (cifar_trial(tmp_path, f"t{i}", deterministic=True) for i in range(2))
    assert first.metrics == second.metrics and first.curves == second.curves
    assert first.env["deterministic"] == "true" and first.env["device"] == "cuda" and "cudnn" in first.env


def test_bf16_channels_last_compiled_training(tmp_path: Path) -> None:
    result = cifar_trial(tmp_path, "fast", amp="bf16", channels_last=True, compile=True)
    assert (result.env["amp"], result.env["channels_last"], result.env["compile"]) == ("bf16", "true", "true")
    assert torch.backends.cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()
    assert 0 <= result.metrics["top1"] <= 1 and result.cost["peak_memory_mb"] > 0


def count_syncs(tmp_path: Path, name: str, **options: Any) -> int:
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cifar_trial(tmp_path, name, **options)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


@pytest.mark.parametrize("amp", [False, "bf16"])
def test_training_steps_do_not_wait_for_the_device(tmp_path: Path, amp: Any) -> None:
    """Every synchronizing CUDA call warns in torch's sync debug mode. A trial makes some per
    epoch (the loss check, the checkpoint's copy to the host, evaluation's one transfer) but none
    per iteration: twice the iterations (half the batch size) add none."""
    few = count_syncs(tmp_path, f"few-{amp}", amp=amp, epochs=1, batch_size=20)  # 12 iterations
    many = count_syncs(tmp_path, f"many-{amp}", amp=amp, epochs=1, batch_size=10)  # 24 iterations
    assert many - few < 12 / 2, (few, many)
