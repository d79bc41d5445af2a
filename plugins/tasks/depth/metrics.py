"""The standard depth metrics (Eigen et al. 2014), computed per image and averaged over images, as
Monodepth2's evaluation does: on ground-truth pixels with depth in (1e-3, 80) m inside the Garg
crop, the prediction resized (bilinear) to the ground truth's own resolution and clamped to
[1e-3, 80] m, no median scaling (the network is trained with metric depth). With d the ground
truth and p the prediction on the n valid pixels of an image:

- abs_rel = mean |d − p| / d;  sq_rel = mean (d − p)² / d
- rmse = √mean (d − p)²;  rmse_log = √mean (log d − log p)²
- a1, a2, a3 = share of pixels with max(d/p, p/d) below 1.25, 1.25², 1.25³

:class:`DepthSums` keeps per-batch sums of the per-image values and the number of images: 0-d
float32 tensors on the device (no ``.item()``, no float64, no branch on a value), which the
harness brings to the host once and :meth:`DepthSums.reduce` divides.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

MIN_DEPTH, MAX_DEPTH = 1e-3, 80.0
NAMES = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3")
#: Garg et al. 2016's crop as fractions of the height and width (top, bottom, left, right).
GARG = (0.40810811, 0.99189189, 0.03594771, 0.96405229)


def garg_crop(height: int, width: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the Garg crop of a height×width map, rows top:bottom and
    columns left:right, truncated to integers as the reference code does."""
    return (int(GARG[0] * height), int(GARG[1] * height), int(GARG[2] * width), int(GARG[3] * width))


def resize_to_targets(pred: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """``pred`` (N×1×h×w) resized to each target's own size, on the canvas: ``image`` (N×H×W,
    true inside target i's image, which starts at the top left) gives that size. It is
    ``F.interpolate(pred[i:i+1], size, mode="bilinear")`` for every i at once, as a
    ``grid_sample`` whose sampling positions come from the sizes (tensors: no wait for the GPU)."""
    n, _, canvas_h, canvas_w = (len(pred), 1, *image.shape[-2:])
    heights = image[:, :, 0].sum(dim=1, dtype=pred.dtype).clamp_min(1)  # N
    widths = image[:, 0, :].sum(dim=1, dtype=pred.dtype).clamp_min(1)
    rows = torch.arange(canvas_h, device=pred.device, dtype=pred.dtype)
    cols = torch.arange(canvas_w, device=pred.device, dtype=pred.dtype)
    # align_corners=False: output pixel k of a size-s map samples the normalized position (k + ½)/s·2 − 1
    gy = ((rows[None, :] + 0.5) / heights[:, None] * 2 - 1)[:, :, None].expand(n, canvas_h, canvas_w)
    gx = ((cols[None, :] + 0.5) / widths[:, None] * 2 - 1)[:, None, :].expand(n, canvas_h, canvas_w)
    grid = torch.stack([gx, gy], dim=-1)
    return F.grid_sample(pred, grid, mode="bilinear", padding_mode="border", align_corners=False)[:, 0]


def image_errors(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: the metrics of :data:`NAMES` (N×7) over its ``valid`` pixels, and whether it has
    any (N; an image without one has zeros and is not counted). ``pred`` is clamped first."""
    pred = pred.clamp(MIN_DEPTH, MAX_DEPTH)
    weight = valid.to(pred.dtype)
    gt = torch.where(valid, gt, torch.ones_like(gt))  # harmless where invalid (weight 0)
    count = weight.sum(dim=(-2, -1))
    per_pixel = count.clamp_min(1)

    def mean(values: torch.Tensor) -> torch.Tensor:
        return (values * weight).sum(dim=(-2, -1)) / per_pixel

    diff = gt - pred
    ratio = torch.maximum(gt / pred, pred / gt)
    errors = torch.stack([
        mean(diff.abs() / gt), mean(diff.square() / gt), mean(diff.square()).sqrt(),
        mean((gt.log() - pred.log()).square()).sqrt(),
        mean((ratio < 1.25).to(pred.dtype)), mean((ratio < 1.25 ** 2).to(pred.dtype)),
        mean((ratio < 1.25 ** 3).to(pred.dtype))], dim=-1)
    has = count > 0
    return errors * has[:, None].to(pred.dtype), has


def valid_pixels(gt: torch.Tensor, mark: torch.Tensor) -> torch.Tensor:
    """Ground truth in (1e-3, 80) m inside the Garg crop (``mark`` 2: :func:`.data.eval_target`)."""
    return (gt > MIN_DEPTH) & (gt < MAX_DEPTH) & (mark > 1.5)


class DepthSums:
    """Evaluation statistics of outputs (N×S×h×w depth, finest scale first) against targets
    (N×2×H×W: :func:`.data.eval_target`)."""

    names = ("count", *NAMES)

    def batch(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        pred = outputs.detach()[:, :1].float()
        targets = targets.float()
        gt, mark = targets[:, 0], targets[:, 1]
        resized = resize_to_targets(pred, mark > 0.5)
        errors, has = image_errors(resized, gt, valid_pixels(gt, mark))
        vector = torch.cat([has.float().sum()[None], errors.sum(dim=0)])
        return dict(zip(self.names, vector.unbind(), strict=True))

    def reduce(self, stats: Sequence[Mapping[str, float | torch.Tensor]]) -> dict[str, float]:
        total = {name: sum(float(s[name]) for s in stats) for name in self.names}
        if not total["count"]:
            raise ValueError("no evaluation image has a valid ground-truth pixel")
        return {name: total[name] / total["count"] for name in NAMES}


__all__ = ["DepthSums", "garg_crop", "image_errors", "resize_to_targets"]
