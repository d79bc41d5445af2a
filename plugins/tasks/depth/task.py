"""Run-time side of ``depth``: the splits (:mod:`.data`), DispNet with the norm under test
(:mod:`.model`), the loss (:mod:`.loss`) and the metrics (:mod:`.metrics`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from harness import Splits

from . import DepthConfig
from .data import load_splits
from .loss import scale_invariant_loss
from .metrics import MAX_DEPTH, DepthSums
from .model import DispNet

SUMS = DepthSums()


class DepthTask:
    """Follows :class:`harness.task.TaskImpl`. The trial ``seed`` is not used: the data and the
    labeled frames are fixed by ``data_seed``, and the harness seeds the initialisation."""

    def __init__(self, config: DepthConfig, data_root: Path, seed: int) -> None:
        self.config = config
        self.data_root = Path(data_root)

    def datasets(self) -> Splits:
        return load_splits(self.config, self.data_root)

    def model(self, norm_layer: Callable[[int], nn.Module]) -> nn.Module:
        c = self.config
        return DispNet(norm_layer, width=c.width, levels=c.levels, scales=c.scales)

    def example_batch(self, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``size`` normalized random images at the input size, and sparse depth maps (half the
        pixels measured, depths in [1, 80) m)."""
        height, width = self.config.image_size
        inputs = torch.randn(size, 3, height, width, generator=generator)
        depth = 1 + (MAX_DEPTH - 1) * torch.rand(size, 1, height, width, generator=generator)
        measured = torch.rand(size, 1, height, width, generator=generator) < 0.5
        return inputs, depth * measured

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return scale_invariant_loss(outputs, targets)

    def batch_stats(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """Sums of the per-image metrics of the finest scale and the image count, on the device."""
        return SUMS.batch(outputs, targets)

    def reduce(self, stats: Sequence[Mapping[str, torch.Tensor | float]]) -> dict[str, float]:
        return SUMS.reduce(stats)
