"""Segmentation metrics from additive sums over the pixels of a split (foreground = class 1):

- pixel_accuracy = correct pixels / pixels;
- iou = TP / (TP + FP + FN) of the foreground, over all pixels of the split at once;
- dice = 2·TP / (2·TP + FP + FN), likewise;
- nll = mean over pixels of −log p(true class).

Pixels marked :data:`.augment.IGNORE` are left out. Where neither the ground truth nor the
prediction has any foreground, IoU and Dice are 1 (nothing to find, nothing found).

:class:`SegmentationSums` keeps per-batch sums as 0-d float32 tensors on the device (no
``.item()``, no float64, no branch on a value); the harness brings them to the host once and
:meth:`SegmentationSums.reduce` divides in Python floats. float32 counts are exact up to 2^24
pixels per batch (64 images of 512×512).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from .augment import IGNORE

NAMES = ("pixels", "correct", "tp", "fp", "fn", "nll_sum")


class SegmentationSums:
    """Statistics of ``outputs`` (N×2×H×W class scores: logits or log-probabilities) against
    ``targets`` (N×H×W class indices, or IGNORE)."""

    names = NAMES

    def batch(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = outputs.detach().float()
        valid = targets != IGNORE
        weight = valid.float()
        truth = (targets == 1) & valid
        predicted = (logits[:, 1] > logits[:, 0]) & valid  # arg-max, ties to background
        nll = F.cross_entropy(logits, targets, ignore_index=IGNORE, reduction="sum")
        vector = torch.stack([
            weight.sum(), ((predicted == truth) & valid).float().sum(), (predicted & truth).float().sum(),
            (predicted & ~truth).float().sum(), (~predicted & truth & valid).float().sum(), nll])
        return dict(zip(self.names, vector.unbind(), strict=True))

    def reduce(self, stats: Sequence[Mapping[str, float | torch.Tensor]]) -> dict[str, float]:
        total = {name: sum(float(s[name]) for s in stats) for name in self.names}
        if not total["pixels"]:
            raise ValueError("no classified pixel to evaluate")
        tp, fp, fn = total["tp"], total["fp"], total["fn"]
        return {
            "pixel_accuracy": total["correct"] / total["pixels"],
            "iou": tp / (tp + fp + fn) if tp + fp + fn else 1.0,
            "dice": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0,
            "nll": total["nll_sum"] / total["pixels"],
        }


__all__ = ["NAMES", "SegmentationSums"]
