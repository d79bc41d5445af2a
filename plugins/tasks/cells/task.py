"""Run-time side of ``cell_segmentation``: the splits (:mod:`.data`), the FCN with the norm under
test (:mod:`.model`), the loss (:mod:`.loss`) and the metrics (:mod:`.metrics`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from harness import Splits

from . import CellsConfig
from .data import load_splits
from .loss import pixel_nll
from .metrics import SegmentationSums
from .model import FCN

SUMS = SegmentationSums()


class CellsTask:
    """Follows :class:`harness.task.TaskImpl`. The trial ``seed`` is not used: the split is fixed
    by ``data_seed``, and the harness seeds the initialisation and the augmentation."""

    def __init__(self, config: CellsConfig, data_root: Path, seed: int) -> None:
        self.config = config
        self.data_root = Path(data_root)

    def datasets(self) -> Splits:
        return load_splits(self.config, self.data_root)

    def model(self, norm_layer: Callable[[int], nn.Module]) -> nn.Module:
        c = self.config
        return FCN(norm_layer, c.channels, c.pool_after, c.kernel_size)

    def example_batch(self, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``size`` standardized random images at ``image_size`` and random masks."""
        height, width = self.config.image_size
        inputs = torch.randn(size, 1, height, width, generator=generator)
        return inputs, torch.randint(0, 2, (size, height, width), generator=generator)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return pixel_nll(outputs, targets)

    def batch_stats(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        return SUMS.batch(outputs, targets)

    def reduce(self, stats: Sequence[Mapping[str, torch.Tensor | float]]) -> dict[str, float]:
        return SUMS.reduce(stats)
