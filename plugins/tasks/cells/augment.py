"""The training augmentation of §A.2 (after U-Net): random vertical and horizontal flips and small
elastic deformations, applied to the image and its mask together.

torchvision's v2 transforms draw one set of parameters per call and apply it to every tensor of
the sample, by type: the image is resampled bilinearly, the :class:`~torchvision.tv_tensors.Mask`
with nearest neighbours, so it stays a label map. Pixels the deformation pulls in from outside the
image get the fill values: 0 (the mean of a standardized image) and :data:`IGNORE` in the mask,
which the loss and the metrics leave out (they are not classified). The random draws come from
torch's global generator, which the harness seeds per epoch (and per loader worker).
"""

from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2

#: Mask value of pixels without a label (outside the deformed image).
IGNORE = 255


def train_transform(flips: bool, alpha: float, sigma: float,
                    interpolation: InterpolationMode = InterpolationMode.BILINEAR) -> v2.Transform:
    """Flips (each with probability ½) and torchvision's ElasticTransform (``alpha`` = 0: none)."""
    steps: list[v2.Transform] = [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()] if flips else []
    if alpha > 0:
        steps.append(v2.ElasticTransform(alpha=alpha, sigma=sigma, interpolation=interpolation,
                                         fill={tv_tensors.Image: 0.0, tv_tensors.Mask: IGNORE}))
    return v2.Compose(steps) if steps else v2.Identity()


def augment(transform: v2.Transform, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``image`` (1×H×W float) and ``mask`` (H×W uint8) transformed together, as plain tensors."""
    out_image, out_mask = transform(tv_tensors.Image(image), tv_tensors.Mask(mask))
    return out_image.as_subclass(torch.Tensor), out_mask.as_subclass(torch.Tensor)


__all__ = ["IGNORE", "augment", "train_transform"]
