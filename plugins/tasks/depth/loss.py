"""The training loss: Eigen et al. 2014's scale-invariant log loss (λ = 0.5) on the valid pixels of
each image, at every scale, averaged over scales and images.

The UBN paper computes "the loss in different resolutions" but does not name it; the
scale-invariant log loss is the standard supervised loss of monocular depth on KITTI (Eigen et al.;
BTS uses it too), and its log makes errors relative, as most of the metrics are. With
g = log D̂ − log D on an image's n valid pixels (ground truth in (1e-3, 80) m):
L = (1/n) Σ g² − λ ((1/n) Σ g)². "Every scale" is realized as Monodepth2 does: each scale's
prediction comes upsampled to the input resolution (:mod:`.model`) and meets the full-resolution
ground truth, which being sparse is better left unresized. An image without a valid pixel adds
nothing and is not counted.
"""

from __future__ import annotations

import torch

from .metrics import MAX_DEPTH, MIN_DEPTH

VARIANCE_FOCUS = 0.5  # λ of Eigen et al. 2014


def scale_invariant_loss(outputs: torch.Tensor, targets: torch.Tensor, lam: float = VARIANCE_FOCUS) -> torch.Tensor:
    """``outputs`` N×S×H×W depths (S scales), ``targets`` N×1×H×W ground truth (0 = none)."""
    outputs, targets = outputs.float(), targets.float()
    valid = (targets > MIN_DEPTH) & (targets < MAX_DEPTH)
    weight = valid.float()
    g = (outputs.log() - targets.clamp_min(MIN_DEPTH).log()) * weight  # N×S×H×W
    count = weight.sum(dim=(-2, -1))  # N×1
    per_pixel = count.clamp_min(1)
    mean_g = g.sum(dim=(-2, -1)) / per_pixel  # N×S
    mean_g2 = g.square().sum(dim=(-2, -1)) / per_pixel
    per_image = mean_g2 - lam * mean_g.square()
    has = (count > 0).float()  # N×1
    return (per_image * has).sum() / (has.sum() * outputs.shape[1]).clamp_min(1)
