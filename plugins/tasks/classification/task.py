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

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy (with the configured label smoothing) of logits or log-probabilities alike."""
        return F.cross_entropy(outputs, targets, label_smoothing=self.config.label_smoothing)

    def batch_stats(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """Sums over the batch (so the metrics do not depend on how the split was batched):
        correct top-1 / top-5, summed NLL, and per confidence bin its count, summed confidence
        and correct predictions. One transfer from the device for all of them."""
        return dict(zip(stat_names(), classification_sums(outputs, targets).tolist(), strict=True))

    def reduce(self, stats: Sequence[Mapping[str, float]]) -> dict[str, float]:
        return reduce_sums(stats)


def stat_names() -> list[str]:
    bins = [f"{kind}{b}" for b in range(ECE_BINS) for kind in ("bin_count", "bin_conf", "bin_correct")]
    return ["count", "top1", "top5", "nll", *bins]


def classification_sums(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The additive statistics of :func:`stat_names` as one float64 vector.

    ``outputs`` are logits or log-probabilities (a log-softmax of either is the same). A sample
    with top confidence p falls in bin ⌈15·p⌉ − 1: 15 equal-width bins over (0, 1].
    """
    logp = F.log_softmax(outputs.detach().double(), dim=1)
    top = logp.topk(min(5, logp.shape[1]), dim=1)
    hit = top.indices == targets[:, None]
    correct = hit[:, 0].double()
    confidence = top.values[:, 0].exp()
    bins = (confidence * ECE_BINS).ceil().long().clamp(1, ECE_BINS) - 1
    per_bin = torch.stack([torch.bincount(bins, minlength=ECE_BINS).double(),
                           torch.bincount(bins, weights=confidence, minlength=ECE_BINS),
                           torch.bincount(bins, weights=correct, minlength=ECE_BINS)], dim=1)
    head = torch.stack([torch.tensor(float(len(targets)), dtype=torch.float64, device=logp.device),
                        correct.sum(), hit.any(dim=1).double().sum(),
                        -logp.gather(1, targets[:, None]).sum()])
    return torch.cat([head, per_bin.flatten()]).cpu()


def reduce_sums(stats: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """top1, top5, nll (mean) and ECE = Σ_bins |correct − confidence| / N (Guo et al. 2017)."""
    total = {name: sum(s[name] for s in stats) for name in stat_names()}
    n = total["count"]
    if not n:
        raise ValueError("no evaluation samples to reduce")
    gap = sum(abs(total[f"bin_correct{b}"] - total[f"bin_conf{b}"]) for b in range(ECE_BINS))
    return {"top1": total["top1"] / n, "top5": total["top5"] / n, "nll": total["nll"] / n, "ece": gap / n}
