"""Run-time side of ``toy``: data sets, the model with the norm under test, loss and metrics."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from harness import Splits
from harness.protocol import InputDataset
from harness_plugins.common.datasets import DIGIT_CLASSES, digits_split, stratified_split
from harness_plugins.common.metrics import ClassificationSums

from . import ToyConfig
from .spiral import load_spiral, read_split, spiral_dir

#: accuracy (top-1) and mean NLL
SUMS = ClassificationSums()


class ToyTask:
    """Follows :class:`harness.task.TaskImpl`.

    The trial ``seed`` is accepted but not used: the data are fixed by ``data_seed`` so that
    every seed sees the same data, and the harness seeds the model's initialisation.
    """

    def __init__(self, config: ToyConfig, data_root: Path, seed: int) -> None:
        self.config = config
        self.data_root = Path(data_root)

    def datasets(self) -> Splits:
        """The labeled splits, and the unlabeled one (inputs only) when the configuration has it."""
        unlabeled = None
        if self.config.dataset == "spiral":
            arrays = load_spiral(self.data_root, self.config)
            if self.config.unlabeled_per_class:
                unlabeled = read_split(spiral_dir(self.data_root, self.config), "unlabeled")[0]
        else:
            arrays = load_digit_splits(self.config)
            if "unlabeled" in arrays:
                unlabeled = arrays.pop("unlabeled")[0]
        tensors = {name: _tensor_dataset(x, y) for name, (x, y) in arrays.items()}
        return Splits(train=tensors["train"], test=tensors["test"], val=tensors.get("val"),
                      unlabeled=None if unlabeled is None else InputDataset(torch.from_numpy(unlabeled).float()))

    def model(self, norm_layer: Callable[[int], nn.Module]) -> nn.Module:
        """Spiral: MLP with a norm after each hidden linear; digits: 3-conv CNN, norm after each conv.

        Layers before a norm keep their bias, so the model stays complete when the norm is an identity.
        """
        if self.config.dataset == "spiral":
            layers: list[nn.Module] = []
            width = 2
            for hidden in self.config.hidden:
                layers += [nn.Linear(width, hidden), norm_layer(hidden), nn.ReLU()]
                width = hidden
            layers.append(nn.Linear(width, self.config.classes))
            return nn.Sequential(*layers)
        c = self.config.channels
        return nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1),
            norm_layer(c),
            nn.ReLU(),
            nn.Conv2d(c, 2 * c, 3, stride=2, padding=1),
            norm_layer(2 * c),
            nn.ReLU(),
            nn.Conv2d(2 * c, 2 * c, 3, padding=1),
            norm_layer(2 * c),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(2 * c, DIGIT_CLASSES),
        )

    def example_batch(self, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``size`` random inputs (spiral points, or 8×8 digit images in [0, 1]) and class labels."""
        if self.config.dataset == "spiral":
            inputs = torch.rand(size, 2, generator=generator) * 12 - 6  # the playground's [-6, 6]² square
            return inputs, torch.randint(self.config.classes, (size,), generator=generator)
        inputs = torch.rand(size, 1, 8, 8, generator=generator)
        return inputs, torch.randint(DIGIT_CLASSES, (size,), generator=generator)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs, targets)

    def batch_stats(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """Sums (:class:`harness_plugins.common.metrics.ClassificationSums`), left on the device."""
        return SUMS.batch(outputs, targets)

    def reduce(self, stats: Sequence[Mapping[str, torch.Tensor | float]]) -> dict[str, float]:
        metrics = SUMS.reduce(stats)
        return {"accuracy": metrics["top1"], "nll": metrics["nll"]}


def load_digit_splits(config: ToyConfig) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Train, test, val (unless ``val_fraction`` is 0) and unlabeled (unless ``unlabeled_fraction``
    is 0) of sklearn's digits: X float32 [n, 1, 8, 8] in [0, 1], y int64 (the unlabeled split's y
    is for the caller to drop).

    Val and test fractions are of the whole data set; the test split is taken first, so changing
    ``val_fraction`` leaves the test set unchanged. ``unlabeled_fraction`` is of what remains for
    training, split off last, so it changes neither test nor val. Every split is stratified with
    ``data_seed`` (:func:`harness_plugins.common.datasets.stratified_split`).
    """
    (images, y), test = digits_split(config.test_fraction, config.data_seed)
    rest, val = stratified_split(y, round(config.val_fraction * (len(y) + len(test[1]))), config.data_seed)
    train, unlabeled = stratified_split(y, round(config.unlabeled_fraction * len(rest)), config.data_seed, among=rest)
    splits = {"train": (images[train], y[train]), "test": test, "val": (images[val], y[val]),
              "unlabeled": (images[unlabeled], y[unlabeled])}
    return {name: ((x / 16).astype(np.float32)[:, None], labels) for name, (x, labels) in splits.items() if len(x)}


def _tensor_dataset(x: np.ndarray, y: np.ndarray) -> TensorDataset:
    return TensorDataset(torch.from_numpy(x).float(), torch.from_numpy(y).long())
