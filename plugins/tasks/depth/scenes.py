"""Generated street drives with a known depth, written in the KITTI depth layout (:mod:`.layout`).

A drive is what a camera 1.65 m above a flat road (KITTI's height and focal length, fx = fy =
0.58 · width, horizon at 0.46 · height) sees as it moves forward through a static world, one frame
every 0.5–1.5 m (KITTI: 10 frames a second): a textured ground plane, whose texture shrinks towards
the horizon, and boxes (cars, walls) standing on it, drawn far to near, under a sky with no depth.
A network can learn such depth from the cues it learns on KITTI: how high an object stands on the
ground and how large its texture is. Consecutive frames show the same world from nearby places,
as in KITTI's sequences, so a depth sensor with a lower frame rate (the labeled fraction) leaves
the frames between its measurements close to a measured one. Each drive has its own world,
lighting and colours, so batch statistics vary from batch to batch.

The depth maps are sparse like KITTI's projected LiDAR: a random half of the rows (scan lines)
and 70% of the pixels on them, nothing in the sky or beyond 80 m. Images (rendered at 2×2
supersampling) and maps are written as KITTI's PNGs (:mod:`.formats`), with Eigen-style split
lists, so that they are read back exactly as KITTI is. Each drive's world is drawn from a generator
seeded by (data_seed, split, drive), each frame's noise and samples by (…, frame): deterministic,
whatever the number of frames.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from harness_plugins.common.files import generated_directory

from .formats import write_depth, write_image
from .layout import SPLITS, TEST_LIST, TRAIN_LIST, depth_path, image_path

GENERATOR = "depth-drives/1"
CAMERA_HEIGHT = 1.65  # metres above the road, as KITTI's camera
FOCAL = 0.58  # fx = fy in units of the image width (KITTI: 721 px / 1242 px)
HORIZON = 0.46  # the principal point's row in units of the image height (KITTI: 173 / 375)
MAX_DEPTH = 80.0  # no measurement beyond, as in KITTI's evaluation
DATE = "2011_09_26"
FRAMES_PER_DRIVE = 25  # KITTI's drives are longer; more, shorter drives give more worlds
#: The smoke run's scene size (KITTI's aspect ratio) and frame counts.
SMOKE_SIZE = (72, 240)
SMOKE_FRAMES = (40, 8)


def draw_world(rng: np.random.Generator) -> dict[str, Any]:
    """One drive's world: boxes along the first 110 m of road, the ground's and sky's colours, the
    lighting, and how far the camera moves between frames."""
    boxes = []
    for _ in range(int(rng.integers(6, 15))):
        width = float(rng.uniform(1.5, 4.5))
        side = 1.0 if rng.random() < 0.5 else -1.0  # beside the camera's path, at least 1.5 m off it
        boxes.append({"z": float(rng.uniform(4, 110)), "x": side * (1.5 + width / 2 + float(rng.uniform(0, 8))),
                      "w": width, "h": float(rng.uniform(1.0, 3.5)), "colour": rng.uniform(40, 230, size=3),
                      "stripe": float(rng.uniform(0.3, 0.8))})
    return {
        "boxes": boxes,
        "ground": rng.uniform(60, 200, size=(2, 3)),  # the two colours of the ground's checks
        "tile": float(rng.uniform(1.0, 3.0)),  # metres
        "road": float(rng.uniform(2.5, 5.0)),  # half width, metres
        "sky": rng.uniform(150, 250, size=3),
        "light": float(rng.uniform(0.6, 1.25)),
        "step": float(rng.uniform(0.5, 1.5)),  # metres per frame
    }


def render_frame(world: dict[str, Any], index: int, rng: np.random.Generator, size: tuple[int, int],
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Frame ``index`` of a drive: the image (uint8 H×W×3) and its dense depth (float32 H×W
    metres, 0 in the sky). The camera stands ``index · step`` metres down the road; boxes it has
    passed (less than 1 m ahead) are not drawn."""
    height, width = size
    travelled = index * world["step"]
    ahead = [{**box, "z": box["z"] - travelled} for box in world["boxes"] if box["z"] - travelled >= 1.0]
    view = {**world, "travelled": travelled, "boxes": sorted(ahead, key=lambda b: -b["z"])}  # far to near
    # depth at pixel centres; colour averaged over 2×2 samples per pixel
    _, depth = _shade(view, *_grid(size, 1), size)
    colour, _ = _shade(view, *_grid(size, 2), size)
    colour = colour.reshape(height, 2, width, 2, 3).mean(axis=(1, 3))
    colour = colour * world["light"] + rng.normal(0, 4, size=colour.shape)
    return np.clip(np.round(colour), 0, 255).astype(np.uint8), depth.astype(np.float32)


def lidar_samples(rng: np.random.Generator, depth: np.ndarray) -> np.ndarray:
    """``depth`` as a LiDAR would give it: half of the rows, 70% of their pixels, none beyond 80 m."""
    rows = rng.random(depth.shape[0]) < 0.5
    keep = rows[:, None] & (rng.random(depth.shape) < 0.7) & (depth > 0) & (depth <= MAX_DEPTH)
    return np.where(keep, depth, 0).astype(np.float32)


def _grid(size: tuple[int, int], samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column coordinates (pixel units, pixel centres at +0.5) of ``samples``² points per pixel."""
    height, width = size
    rows = (np.arange(height * samples) + 0.5) / samples
    cols = (np.arange(width * samples) + 0.5) / samples
    return np.meshgrid(rows, cols, indexing="ij")


def _shade(scene: dict[str, Any], v: np.ndarray, u: np.ndarray, size: tuple[int, int],
           ) -> tuple[np.ndarray, np.ndarray]:
    """Colour (float, 0..255) and depth at image points (v, u)."""
    height, width = size
    f, cy, cx = FOCAL * width, HORIZON * height, width / 2
    below = v - cy
    ground = below > 1e-6
    z = np.where(ground, f * CAMERA_HEIGHT / np.where(ground, below, 1), 0.0)
    x = (u - cx) * z / f
    road_z = z + scene["travelled"]  # the ground's texture stays where it is on the road
    checks = (np.floor(x / scene["tile"]) + np.floor(road_z / scene["tile"])) % 2
    colour = scene["ground"][checks.astype(int)]
    road = np.abs(x) < scene["road"]
    lane = road & (np.abs(x) < 0.15) & (np.floor(road_z / 3) % 2 == 0)
    colour[road] = 0.35 * colour[road] + 40
    colour[lane] = 235
    sky = np.clip(1 - v / max(cy, 1), 0, 1)[..., None] * 50
    colour[~ground] = (scene["sky"] - sky)[~ground]
    depth = z.copy()
    for box in scene["boxes"]:
        zb = box["z"]
        left, right = cx + f * (box["x"] - box["w"] / 2) / zb, cx + f * (box["x"] + box["w"] / 2) / zb
        bottom, top = cy + f * CAMERA_HEIGHT / zb, cy + f * (CAMERA_HEIGHT - box["h"]) / zb
        inside = (u >= left) & (u < right) & (v >= top) & (v < bottom)
        rise = CAMERA_HEIGHT - (v - cy) * zb / f  # height above the road, metres
        band = 0.75 + 0.25 * (np.floor(rise / box["stripe"]) % 2)
        colour[inside] = box["colour"] * band[inside, None]
        depth[inside] = zb
    return colour, depth


def scene_params(frames: int, test_frames: int, size: tuple[int, int], seed: int) -> dict[str, Any]:
    """Everything that determines the generated files; their hash names the folder."""
    return {"generator": GENERATOR, "frames": frames, "test_frames": test_frames, "size": list(size),
            "data_seed": seed}




def write_scenes(directory: Path, params: dict[str, Any]) -> Path:
    """Generate the drives of ``params`` (:func:`scene_params`) in the KITTI layout at ``directory``,
    whole or not at all; a folder already there is kept. Training frames are ``train`` drives of
    25 frames, test frames ``val`` drives, both listed in Eigen-style split lists."""
    size = tuple(params["size"])

    def fill(tmp: Path) -> None:
        lists: dict[str, list[str]] = {TRAIN_LIST: [], TEST_LIST: []}
        drive_number = 1
        for split, (part, count, listed) in enumerate((("train", params["frames"], TRAIN_LIST),
                                                       ("val", params["test_frames"], TEST_LIST))):
            for number, start in enumerate(range(0, count, FRAMES_PER_DRIVE)):
                drive = f"{DATE}_drive_{drive_number:04d}_sync"
                drive_number += 1
                world = draw_world(np.random.default_rng([params["data_seed"], split, number]))
                for index in range(min(FRAMES_PER_DRIVE, count - start)):
                    rng = np.random.default_rng([params["data_seed"], split, number, index])
                    image, depth = render_frame(world, index, rng, size)
                    for path in (image_path(tmp, drive, "image_02", index),
                                 depth_path(tmp, part, drive, "image_02", index)):
                        path.parent.mkdir(parents=True, exist_ok=True)
                    write_image(image_path(tmp, drive, "image_02", index), image)
                    write_depth(depth_path(tmp, part, drive, "image_02", index), lidar_samples(rng, depth))
                    lists[listed].append(f"{DATE}/{drive} {index} l")
        (tmp / SPLITS).mkdir()
        for name, lines in lists.items():
            (tmp / SPLITS / name).write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")

    return generated_directory(Path(directory), params, fill)




def write_smoke_kitti(directory: Path) -> Path:
    """The smoke run's small scenes at ``directory`` (unless there), read as KITTI."""
    return write_scenes(directory, scene_params(*SMOKE_FRAMES, SMOKE_SIZE, seed=0))
