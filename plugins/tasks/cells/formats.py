"""The Cell Tracking Challenge's files, through tifffile: grey frames (8 or 16 bit) and 16-bit
instance segmentations (0 = background, one id > 0 per cell), which become foreground/background.

numpy and tifffile only, so that generated cells can be written without torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile


def read_image(path: Path) -> np.ndarray:
    """A grey frame as float32 H×W, standardized to zero mean and unit variance: DIC frames differ
    in illumination, and per-image statistics need nothing from the training set."""
    pixels = _read_2d(path).astype(np.float32)
    return (pixels - pixels.mean()) / max(float(pixels.std()), 1e-6)


def read_foreground(path: Path) -> np.ndarray:
    """An instance segmentation as a uint8 H×W foreground mask (1 = some cell, 0 = background)."""
    ids = _read_2d(path)
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{path}: a segmentation must hold integer cell ids (16-bit); this one is {ids.dtype}")
    return (ids > 0).astype(np.uint8)


def read_instances(path: Path) -> np.ndarray:
    """The raw instance ids of a segmentation (for tests and inspection)."""
    return _read_2d(path)


def write_image(path: Path, image: np.ndarray) -> None:
    """A uint8 H×W frame as a grey TIFF."""
    tifffile.imwrite(path, np.asarray(image, dtype=np.uint8))


def write_instances(path: Path, ids: np.ndarray) -> None:
    """Instance ids as the challenge writes them: a 16-bit grey TIFF."""
    ids = np.asarray(ids)
    if ids.min(initial=0) < 0 or ids.max(initial=0) > np.iinfo(np.uint16).max:
        raise ValueError(f"{path}: instance ids must fit 16 bits")
    tifffile.imwrite(path, ids.astype(np.uint16))


def _read_2d(path: Path) -> np.ndarray:
    array = np.asarray(tifffile.imread(path))
    array = array.squeeze()
    if array.ndim != 2:
        raise ValueError(f"{path}: expected a single grey 2-d image; got shape {array.shape}")
    return array


__all__ = ["read_foreground", "read_image", "read_instances", "write_image", "write_instances"]
