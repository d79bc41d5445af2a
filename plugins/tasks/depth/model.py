"""The paper's network: SfMLearner's DispNet (Zhou et al. 2017), a fully convolutional encoder-decoder
with skip connections and depth predictions at several scales, built of 3×3 conv + norm + ReLU
blocks (the UBN paper's §4), with the norm under test after every 3×3 conv but the prediction convs.

Encoder: ``levels`` levels, each a stride-2 block then a stride-1 block, with ``width`` · 2^i
channels (up to 16 · width: 32 … 512 at width 32). Decoder, from the coarsest level: upsample
(nearest) to the next finer encoder map's size, a block, concatenation with that map (the skip)
and, at the predicting scales, the coarser prediction upsampled, then a block; the finest level
returns to the input resolution with no skip. Decoder channels at 1/2^j resolution are
width · 2^(j−1) (16 … 512). Any input size works: each upsampling takes the skip's size.

Depth head (the paper's Eq. 5): D = 1 / (s · sigmoid(x) + m), s = 0.4, m = 0.0125, so D lies in
(1/(s + m), 1/m) = (2.42, 80) m. The forward returns ONE tensor N×S×H×W: the S scales' depths,
finest first, each upsampled (bilinearly, as disparity: :func:`bilinear`) to the input resolution, the way
Monodepth2 scores every scale against the full-resolution ground truth. One tensor whose dim 0 is
the batch is what a norm protocol may slice (unsupervised BN forwards [labeled; unlabeled] once
and keeps the labeled rows); a sparse ground truth needs no resizing to each scale.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

SCALE, MIN_DISPARITY = 0.4, 0.0125


def bilinear(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """``F.interpolate(x, size, mode="bilinear", align_corners=False)`` as two products with
    interpolation matrices: the same values, and a backward that is deterministic on CUDA (the
    interpolation's own backward is refused by ``torch.use_deterministic_algorithms``, which
    ``deterministic = true`` turns on)."""
    rows = _interpolation_matrix(x.shape[-2], int(size[0]), x.device, x.dtype)
    cols = _interpolation_matrix(x.shape[-1], int(size[1]), x.device, x.dtype)
    return rows @ x @ cols.T


# One operation to torch.fx (which tools such as the analytic norm's propagation trace), not its parts.
torch.fx.wrap("bilinear")


@functools.lru_cache(maxsize=64)
def _interpolation_matrix(size_in: int, size_out: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """size_out × size_in weights of linear interpolation with half-pixel centres, as PyTorch's
    kernel computes them: source position (o + ½)·in/out − ½, clamped at 0, between two pixels."""
    source = ((torch.arange(size_out, dtype=torch.float32) + 0.5) * (size_in / size_out) - 0.5).clamp_min(0)
    low = source.floor().long().clamp_max(size_in - 1)
    high = (low + 1).clamp_max(size_in - 1)
    frac = (source - low).unsqueeze(1)
    columns = torch.arange(size_in)
    weights = (columns == low[:, None]) * (1 - frac) + (columns == high[:, None]) * frac
    return weights.to(device=device, dtype=dtype)


class Block(nn.Sequential):
    """3×3 conv (bias kept: the model stays whole where the norm is an identity), norm, ReLU."""

    def __init__(self, cin: int, cout: int, norm_layer: Callable[[int], nn.Module], stride: int = 1) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), norm_layer(cout), nn.ReLU())


class DispNet(nn.Module):
    def __init__(self, norm_layer: Callable[[int], nn.Module], width: int = 32, levels: int = 7, scales: int = 4,
                 scale: float = SCALE, min_disparity: float = MIN_DISPARITY) -> None:
        super().__init__()
        if not 1 <= scales <= levels:
            raise ValueError(f"scales must be in [1, levels]; got scales={scales}, levels={levels}")
        self.scales, self.scale, self.min_disparity = scales, scale, min_disparity
        enc = [width * min(2 ** i, 16) for i in range(levels)]  # encoder level i: 1/2^(i+1) resolution
        dec = [max(1, width * min(2 ** j, 32) // 2) for j in range(levels)]  # decoder output at 1/2^j
        self.encoder = nn.ModuleList(
            nn.Sequential(Block(3 if i == 0 else enc[i - 1], enc[i], norm_layer, stride=2),
                          Block(enc[i], enc[i], norm_layer)) for i in range(levels))
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for j in reversed(range(levels)):  # coarsest first
            cin = enc[-1] if j == levels - 1 else dec[j + 1]
            skip = enc[j - 1] if j > 0 else 0
            coarser = 1 if j + 1 < scales else 0
            self.up.append(Block(cin, dec[j], norm_layer))
            self.merge.append(Block(dec[j] + skip + coarser, dec[j], norm_layer))
        self.predict = nn.ModuleList(nn.Conv2d(dec[j], 1, 3, padding=1) for j in reversed(range(scales)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        skips = []
        for level in self.encoder:
            x = level(x)
            skips.append(x)
        levels = len(self.encoder)
        disparities: list[torch.Tensor] = []  # coarsest first
        for k, (up, merge) in enumerate(zip(self.up, self.merge, strict=True)):
            j = levels - 1 - k  # this decoder level's output is at 1/2^j resolution
            target = skips[j - 1].shape[-2:] if j > 0 else size
            x = up(F.interpolate(x, size=target, mode="nearest"))
            parts = [x] + ([skips[j - 1]] if j > 0 else [])
            if disparities and j + 1 < self.scales:
                parts.append(bilinear(disparities[-1], target))
            x = merge(torch.cat(parts, dim=1))
            if j < self.scales:
                head = self.predict[self.scales - 1 - j]
                disparities.append(self.scale * torch.sigmoid(head(x)) + self.min_disparity)
        full = [bilinear(d, size) for d in reversed(disparities)]
        return 1 / torch.cat(full, dim=1)
