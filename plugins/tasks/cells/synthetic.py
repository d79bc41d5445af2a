"""Generated DIC-like cell images with instance masks, written in the Cell Tracking Challenge
layout (:mod:`.layout`) and formats (:mod:`.formats`), so that they are read back as DIC-HeLa is.

Differential interference contrast shows the gradient of the optical path length along a shear
direction: a cell is a dome of path length, seen as a bright rim on one side and a dark rim on the
other (the relief look), with a flat grey interior broken by granules and a nucleus. Here:

- cells: blobs of random size and irregular outline (low Fourier harmonics of the radius),
  placed at random until their areas add up to half the image (overlaps counted twice: a third
  to a half is foreground); a later cell lies over an earlier one, and every visible cell gets
  its own id in the mask;
- the path length: per cell a dome, a bump for the nucleus and granular texture inside, smoothed;
- the image: its derivative along a shear direction near 45°, over a textured background
  (smooth noise and an illumination gradient), plus camera noise, as uint8.

The mask is a 16-bit instance segmentation (0 background). Each frame is drawn from a generator
seeded by (data_seed, sequence, frame): deterministic whatever the number of frames.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from harness_plugins.common.files import generated_directory

from .formats import write_image, write_instances
from .layout import image_path, mask_path

GENERATOR = "dic-cells/1"
SEQUENCES = ("01", "02")
COVERAGE = 0.5  # the cells' areas add up to this share of the image
#: The smoke run's images: size, annotated frames, cell radius (min, max) in pixels.
SMOKE = {"size": (64, 64), "images": 10, "radius": (8.0, 14.0)}


def draw_cells(rng: np.random.Generator, size: tuple[int, int], radius: tuple[float, float],
               ) -> tuple[np.ndarray, np.ndarray]:
    """The instance ids (uint16 H×W) and the path length (float32 H×W) of one frame's cells."""
    height, width = size
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    ids = np.zeros(size, dtype=np.uint16)
    path = np.zeros(size, dtype=np.float32)
    covered, count = 0.0, 0
    for _ in range(200):
        if covered >= COVERAGE * height * width:
            break
        r = float(rng.uniform(*radius))
        cy, cx = float(rng.uniform(0, height)), float(rng.uniform(0, width))
        angle = np.arctan2(rows - cy, cols - cx)
        outline = np.ones_like(angle)
        for k in (2, 3, 4):  # an irregular outline: low harmonics of the radius
            outline += float(rng.uniform(0, 0.25 / k * 2)) * np.cos(k * angle + float(rng.uniform(0, 2 * np.pi)))
        distance = np.hypot(rows - cy, cols - cx) / (r * outline)
        inside = distance < 1
        if inside.sum() < 0.3 * np.pi * r * r:  # mostly outside the image
            continue
        count += 1
        dome = np.sqrt(np.clip(1 - distance ** 2, 0, None))
        ny, nx = cy + float(rng.normal(0, 0.15 * r)), cx + float(rng.normal(0, 0.15 * r))
        nucleus = np.clip(1 - (np.hypot(rows - ny, cols - nx) / (0.45 * r)) ** 2, 0, None)
        granules = ndimage.gaussian_filter(rng.normal(0, 1, size).astype(np.float32), 1.0)
        height_map = dome * (1.0 + 0.35 * nucleus) + 0.12 * granules * inside
        path = np.where(inside, np.maximum(path, height_map), path)
        ids[inside] = count  # a later cell lies over an earlier one
        covered += float(inside.sum())
    ids = _renumber(ids)
    return ids, path.astype(np.float32)


def render(rng: np.random.Generator, path: np.ndarray, radius: float) -> np.ndarray:
    """A DIC-like uint8 image of a path-length map: its derivative along a shear direction near
    45° (relief, scaled by the typical cell ``radius`` so that contrast does not depend on the
    size), over a textured, unevenly lit background, with camera noise."""
    height, width = path.shape
    smooth = ndimage.gaussian_filter(path, 0.02 * radius + 0.5)
    dy, dx = np.gradient(smooth)
    shear = np.deg2rad(45 + float(rng.uniform(-10, 10)))
    relief = np.cos(shear) * dx + np.sin(shear) * dy
    scale = min(height, width)
    background = ndimage.gaussian_filter(rng.normal(0, 1, path.shape), 0.1 * radius) * 0.4 * radius ** 0.5
    rows, cols = np.mgrid[0:height, 0:width] / scale
    light = float(rng.uniform(-15, 15)) * rows + float(rng.uniform(-15, 15)) * cols
    image = 128 + 25 * radius * relief + background + light + rng.normal(0, 3, path.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _renumber(ids: np.ndarray) -> np.ndarray:
    """Ids 1…n of the cells still visible (a covered cell loses its id)."""
    visible = np.unique(ids[ids > 0])
    lookup = np.zeros(int(ids.max(initial=0)) + 1, dtype=np.uint16)
    lookup[visible] = np.arange(1, len(visible) + 1, dtype=np.uint16)
    return lookup[ids]


def cell_params(images: int, size: tuple[int, int], radius: tuple[float, float], seed: int) -> dict[str, Any]:
    """Everything that determines the generated files; their hash names the folder."""
    return {"generator": GENERATOR, "images": images, "size": list(size), "radius": list(radius), "data_seed": seed}




def write_cells(directory: Path, params: dict[str, Any]) -> Path:
    """The annotated frames of ``params`` in the challenge layout at ``directory``, whole or not at
    all (a folder already there is kept): two sequences, 01 and 02, sharing the annotated frames,
    each segmented frame followed by one without a segmentation (as most of DIC-HeLa's are)."""
    size, radius = tuple(params["size"]), tuple(params["radius"])
    shares = (params["images"] // 2, params["images"] - params["images"] // 2)

    def fill(tmp: Path) -> None:
        for number, (sequence, annotated) in enumerate(zip(SEQUENCES, shares, strict=True)):
            (tmp / sequence).mkdir()
            (tmp / f"{sequence}_GT" / "SEG").mkdir(parents=True)
            for frame in range(2 * annotated):
                rng = np.random.default_rng([params["data_seed"], number, frame])
                ids, path = draw_cells(rng, size, radius)
                write_image(image_path(tmp, sequence, frame), render(rng, path, sum(radius) / 2))
                if frame % 2 == 0:
                    write_instances(mask_path(tmp, sequence, frame), ids)

    return generated_directory(Path(directory), params, fill)




def write_smoke_cells(directory: Path) -> Path:
    """The smoke run's small generated cells at ``directory`` (unless there), read as DIC-HeLa."""
    return write_cells(directory, cell_params(SMOKE["images"], SMOKE["size"], SMOKE["radius"], seed=0))


__all__ = ["cell_params", "draw_cells", "render", "write_cells", "write_smoke_cells"]
