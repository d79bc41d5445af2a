"""Generated COCO-format data: squares, discs and triangles on a textured background, with boxes
and polygon masks, in COCO's very layout (``annotations/instances_{train,val}2017.json``,
``train2017/``, ``val2017/``, JPEG images). The real loader reads it as it reads COCO; what
``--smoke`` and the tests train on. numpy, PIL and json only (the light side may call it).

The three classes differ in shape only (each object gets a random colour), the sizes span
COCO's small/medium range at the generated resolution, and objects may touch but never hide
one another: a detector learns them in a few epochs, so AP rises above zero.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from harness_plugins.common.files import atomic_directory

CLASSES = ("square", "disc", "triangle")
SPLITS = ("train2017", "val2017")


def polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[float]:
    """The outline of one shape as COCO's flat ``[x1, y1, x2, y2, ...]``: a square and a
    triangle turned by ``angle``, a disc as a 24-gon; ``r`` is the circumradius."""
    corners = {"square": 4, "disc": 24, "triangle": 3}[kind]
    turns = angle + 2 * np.pi * np.arange(corners) / corners
    points = np.stack([cx + r * np.cos(turns), cy + r * np.sin(turns)], axis=1)
    return [round(float(v), 2) for v in points.reshape(-1)]


def draw_image(rng: np.random.Generator, size: int, max_objects: int) -> tuple[Image.Image, list[dict]]:
    """One image and its annotations (without ids): 1 to ``max_objects`` non-overlapping shapes."""
    texture = rng.normal(110, 25, (size // 4, size // 4, 3)).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(texture).resize((size, size), Image.BILINEAR)
    draw = ImageDraw.Draw(image)
    placed: list[tuple[float, float, float]] = []
    annotations = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(20):
            r = float(rng.uniform(0.08, 0.22) * size)
            cx, cy = (float(v) for v in rng.uniform(r, size - r, 2))
            if all((cx - x) ** 2 + (cy - y) ** 2 > (r + q + 2) ** 2 for x, y, q in placed):
                break
        else:
            continue
        placed.append((cx, cy, r))
        label = int(rng.integers(len(CLASSES)))
        outline = polygon(CLASSES[label], cx, cy, r, float(rng.uniform(0, 2 * np.pi)))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.polygon(outline, fill=colour)
        xs, ys = outline[0::2], outline[1::2]
        x0, y0, x1, y1 = max(min(xs), 0.0), max(min(ys), 0.0), min(max(xs), size), min(max(ys), size)
        area = 0.5 * abs(float(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))))  # shoelace
        annotations.append({"category_id": label + 1, "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2),
                                                                round(y1 - y0, 2)],
                            "area": round(area, 2), "segmentation": [outline], "iscrowd": 0})
    return image, annotations


def write_shapes_coco(root: Path, train: int, val: int, size: int = 128, max_objects: int = 3,
                      seed: int = 0) -> Path:
    """COCO's layout under ``root`` with ``train`` and ``val`` generated images (written whole,
    atomically; nothing is done if ``root`` exists)."""

    def fill(tmp: Path) -> None:
        rng = np.random.default_rng(seed)
        (tmp / "annotations").mkdir()
        next_id = 1
        for split, count in zip(SPLITS, (train, val), strict=True):
            (tmp / split).mkdir()
            images, annotations = [], []
            for _ in range(count):
                image_id = len(images) + 1 + (0 if split == SPLITS[0] else train)
                image, found = draw_image(rng, size, max_objects)
                name = f"{image_id:012d}.jpg"
                image.save(tmp / split / name, quality=95)
                images.append({"id": image_id, "file_name": name, "width": size, "height": size})
                for annotation in found:
                    annotations.append({"id": next_id, "image_id": image_id, **annotation})
                    next_id += 1
            content = {"info": {"description": "normbench generated shapes (COCO format)"}, "licenses": [],
                       "images": images, "annotations": annotations,
                       "categories": [{"id": i + 1, "name": n, "supercategory": "shape"}
                                      for i, n in enumerate(CLASSES)]}
            (tmp / "annotations" / f"instances_{split}.json").write_text(json.dumps(content))

    return atomic_directory(Path(root), fill)


__all__ = ["CLASSES", "write_shapes_coco"]
