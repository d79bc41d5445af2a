"""The training loss: the negative log-likelihood of an image's classified pixels, summed over its
pixels and averaged over the images of the batch (pixels marked :data:`.augment.IGNORE` are not
classified and count for nothing).

Summing over pixels makes the image the sample of the data set: the Bayesian scale's
``kl_factor · Σ KL / |D|`` (|D| = training images) then weighs the KL against every classified
pixel, ``kl_factor`` per pixel, as the paper's "KL factor 0.1 per classified pixel" (package
docstring). The per-pixel mean NLL is what the metrics report.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .augment import IGNORE


def pixel_nll(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Σ over classified pixels of −log softmax(outputs)[target], divided by the batch's images.
    ``outputs`` N×2×H×W class scores, ``targets`` N×H×W class indices (or :data:`IGNORE`)."""
    total = F.cross_entropy(outputs.float(), targets, ignore_index=IGNORE, reduction="sum")
    return total / outputs.shape[0]


__all__ = ["pixel_nll"]
