"""KITTI's file formats, through PIL: 8-bit RGB images, and depth maps as 16-bit grey PNG whose value
divided by 256 is the depth in metres (0: no measurement), as the KITTI depth devkit defines them.

numpy and PIL only, so that scenes can be written without torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

#: depth = value / DEPTH_SCALE metres
DEPTH_SCALE = 256.0
#: PIL's modes of a 16-bit grey PNG (Pillow opens them as "I;16"; older versions as "I").
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")


def read_depth(path: Path) -> np.ndarray:
    """A depth map in metres, float32 H×W (0 where there is no measurement)."""
    with Image.open(path) as picture:
        if picture.mode not in SIXTEEN_BIT_MODES:
            raise ValueError(f"{path}: a depth map must be a 16-bit grey PNG (depth = value/256 m); this one's PIL "
                             f"mode is {picture.mode!r}")
        values = np.asarray(picture)
    return values.astype(np.float32) / np.float32(DEPTH_SCALE)


def write_depth(path: Path, depth: np.ndarray) -> None:
    """``depth`` in metres (0 = none) as KITTI writes it: round(depth · 256) in a 16-bit PNG."""
    values = np.round(np.asarray(depth, dtype=np.float64) * DEPTH_SCALE)
    if values.min(initial=0) < 0 or values.max(initial=0) > np.iinfo(np.uint16).max:
        raise ValueError(f"{path}: depth outside [0, {np.iinfo(np.uint16).max / DEPTH_SCALE:.2f}] m")
    Image.fromarray(values.astype(np.uint16)).save(path, compress_level=1)


def read_image(path: Path) -> Image.Image:
    """An image as an RGB PIL image (loaded, the file closed)."""
    with Image.open(path) as picture:
        return picture.convert("RGB")


def write_image(path: Path, image: np.ndarray) -> None:
    """uint8 H×W×3 as an 8-bit RGB PNG."""
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(path, compress_level=1)
