"""Run-time side of ``classification``: datasets, the timm model with the norm, loss and metrics."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from harness import Splits
from harness_plugins.common.metrics import ClassificationSums

from . import ClassificationConfig
from .data import load_splits
from .formats import CIFAR_CLASSES
from .models import create

ECE_BINS = 15
SUMS = ClassificationSums(topk=5, ece_bins=ECE_BINS)


class ClassificationTask:
    """Follows :class:`harness.task.TaskImpl`.

    The trial ``seed`` is not used here: the data and their splits are fixed by ``data_seed`` so
    that every seed sees the same data, and the harness seeds initialization and shuffling.
    """

    def __init__(self, config: ClassificationConfig, data_root: Path, seed: int) -> None:
        self.config = config
        self.data_root = Path(data_root)
        self.num_classes: int | None = None

    def datasets(self) -> Splits:
        splits, self.num_classes = load_splits(self.config, self.data_root)
        return splits

    def model(self, norm_layer: Callable[[int], nn.Module]) -> nn.Module:
        if self.num_classes is None:
            self.datasets()
        return create(self.config.model, norm_layer, num_classes=self.num_classes, in_chans=self.config.channels,
                      **self.config.model_kwargs)

    def example_batch(self, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``size`` normalized random images of the configured channels and size, and class
        labels; the number of classes comes from the dataset's definition (ImageNet: its class
        folders when they are there, else 1000), so no data is read."""
        if self.num_classes is None:
            self.num_classes = self._class_count()
        c, side = self.config.channels, self.config.size
        inputs = torch.randn(size, c, side, side, generator=generator)
        return inputs, torch.randint(self.num_classes, (size,), generator=generator)

    def _class_count(self) -> int:
        if self.config.dataset == "imagenet":
            train = self.config.dataset_dir(self.data_root) / "train"
            found = sum(1 for e in train.iterdir() if e.is_dir()) if train.is_dir() else 0
            return found or 1000
        return CIFAR_CLASSES.get(self.config.dataset, 10)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy (with the configured label smoothing) of logits or log-probabilities alike."""
        return F.cross_entropy(outputs, targets, label_smoothing=self.config.label_smoothing)

    def batch_stats(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """Sums over the batch (:class:`harness_plugins.common.metrics.ClassificationSums`): correct
        top-1 / top-5, summed NLL, and per confidence bin its count, summed confidence and correct
        predictions, left on the device."""
        return SUMS.batch(outputs, targets)

    def reduce(self, stats: Sequence[Mapping[str, float]]) -> dict[str, float]:
        """top1, top5, nll (mean) and ECE over 15 equal-width confidence bins (Guo et al. 2017)."""
        return SUMS.reduce(stats)


def stat_names() -> list[str]:
    """The names of :meth:`ClassificationTask.batch_stats`, in order."""
    return SUMS.names
