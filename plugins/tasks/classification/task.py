"""Run-time side of ``classification``: datasets, the timm model with the norm, loss and metrics."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from harness import Splits

from . import ClassificationConfig
from .data import load_splits
from .formats import CIFAR_CLASSES
from .models import create

ECE_BINS = 15


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
        """Sums over the batch (so the metrics do not depend on how the split was batched):
        correct top-1 / top-5, summed NLL, and per confidence bin its count, summed confidence
        and correct predictions. They stay on the device, as views of one vector: the harness
        moves all batches' statistics to the host at once, after the last batch."""
        return dict(zip(stat_names(), classification_sums(outputs, targets).unbind(), strict=True))

    def reduce(self, stats: Sequence[Mapping[str, float]]) -> dict[str, float]:
        return reduce_sums(stats)


def stat_names() -> list[str]:
    bins = [f"{kind}{b}" for b in range(ECE_BINS) for kind in ("bin_count", "bin_conf", "bin_correct")]
    return ["count", "top1", "top5", "nll", *bins]


def classification_sums(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The additive statistics of :func:`stat_names` as one float32 vector on the outputs' device.

    ``outputs`` are logits or log-probabilities (a log-softmax of either is the same). A sample
    with top confidence p falls in bin ⌈15·p⌉ − 1: 15 equal-width bins over (0, 1]. The per-bin
    sums are sums over the bins' one-hot matrix, built by comparison: no bincount or scatter, which
    have no deterministic CUDA kernel, and no float64 (slow on GPUs). Float32 sums
    over one batch are exact enough; batches are added up on the host in Python floats.
    """
    logp = F.log_softmax(outputs.detach().float(), dim=1)
    top = logp.topk(min(5, logp.shape[1]), dim=1)
    hit = top.indices == targets[:, None]
    correct = hit[:, 0].float()
    confidence = top.values[:, 0].exp()
    bins = (confidence * ECE_BINS).ceil().long().clamp(1, ECE_BINS) - 1
    one_hot = (bins[:, None] == torch.arange(ECE_BINS, device=bins.device)).float()  # N × bins
    per_sample = torch.stack([torch.ones_like(confidence), confidence, correct], dim=1)  # N × 3
    # bins × (count, confidence, correct); a product and a sum rather than a matmul, so that neither
    # TF32 nor an autocast region can round the confidences
    per_bin = (one_hot[:, :, None] * per_sample[:, None, :]).sum(dim=0)
    head = torch.stack([per_sample[:, 0].sum(), correct.sum(), hit.any(dim=1).float().sum(),
                        -logp.gather(1, targets[:, None]).sum()])
    return torch.cat([head, per_bin.flatten()])


def reduce_sums(stats: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """top1, top5, nll (mean) and ECE = Σ_bins |correct − confidence| / N (Guo et al. 2017)."""
    total = {name: sum(float(s[name]) for s in stats) for name in stat_names()}
    n = total["count"]
    if not n:
        raise ValueError("no evaluation samples to reduce")
    gap = sum(abs(total[f"bin_correct{b}"] - total[f"bin_conf{b}"]) for b in range(ECE_BINS))
    return {"top1": total["top1"] / n, "top5": total["top5"] / n, "nll": total["nll"] / n, "ece": gap / n}
