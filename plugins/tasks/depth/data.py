"""The depth task's datasets: frames decoded from their files in ``__getitem__`` (so in the loader's
workers), the validation split, and the labeled fraction with the unlabeled split beside it.

Images are resized to the network's input (bilinear, antialiased: PIL) and normalized as
Monodepth2 does, (x − 0.45) / 0.225; the whole frame is kept (the paper names no crop; SfMLearner
resizes the full KITTI frame too). A training frame's depth map goes to the input resolution by
moving every measurement to the pixel its position falls in (the nearest one where several do):
a sparse map would lose or blur its points under an image resize. A test frame's map stays at its
own resolution, zero-padded onto the evaluation canvas, with a second channel that marks the
image (1) and its Garg crop (2) there: :mod:`.metrics` resizes the prediction to each map.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from harness import Splits
from harness_plugins.common.files import generated_under

from . import DepthConfig
from .formats import read_depth, read_image
from .layout import Frame, kitti_frames
from .metrics import garg_crop
from .scenes import scene_params, write_scenes

MEAN, STD = 0.45, 0.225
#: Values of the evaluation target's second channel.
IN_IMAGE, IN_CROP = 1.0, 2.0


def load_image(path: Path, size: tuple[int, int]) -> torch.Tensor:
    """3×H×W float32, resized to ``size`` (height, width) and normalized."""
    picture = read_image(path).resize((size[1], size[0]), Image.Resampling.BILINEAR)
    pixels = torch.from_numpy(np.asarray(picture, dtype=np.float32).copy()).permute(2, 0, 1)
    return (pixels / 255 - MEAN) / STD


def sparse_resize(depth: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A sparse depth map (0 = none) at ``size``: each measurement moved to the pixel that holds
    its pixel's centre, the nearest measurement kept where several land on one pixel."""
    height, width = depth.shape
    rows, cols = np.nonzero(depth > 0)
    target_rows = ((2 * rows + 1) * size[0]) // (2 * height)
    target_cols = ((2 * cols + 1) * size[1]) // (2 * width)
    out = np.full(size, np.inf, dtype=np.float32)
    np.minimum.at(out, (target_rows, target_cols), depth[rows, cols])
    out[np.isinf(out)] = 0
    return out


def eval_target(depth: np.ndarray, canvas: tuple[int, int]) -> np.ndarray:
    """2×canvas float32: the map at its own resolution (zero padding) and the mark of its image
    (1) and Garg crop (2)."""
    height, width = depth.shape
    if height > canvas[0] or width > canvas[1]:
        raise ValueError(f"a depth map of {height}×{width} does not fit the evaluation canvas {canvas[0]}×"
                         f"{canvas[1]}; set gt_canvas = [{height}, {width}] (or larger) in [task]")
    target = np.zeros((2, *canvas), dtype=np.float32)
    target[0, :height, :width] = depth
    target[1, :height, :width] = IN_IMAGE
    top, bottom, left, right = garg_crop(height, width)
    target[1, top:bottom, left:right] = IN_CROP
    return target


class TrainFrames(Dataset):
    """Labeled training frames: (image, depth 1×H×W at the input resolution, 0 = none)."""

    def __init__(self, frames: Sequence[Frame], size: tuple[int, int]) -> None:
        self.frames = list(frames)
        self.size = size

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        frame = self.frames[index]
        depth = sparse_resize(read_depth(frame.depth), self.size)
        return load_image(frame.image, self.size), torch.from_numpy(depth)[None]


class Repeated(Dataset):
    """``dataset`` repeated to ``size`` items (item i is ``dataset[i mod len(dataset)]``): an epoch
    as long as the training images, whatever share of them is labeled."""

    def __init__(self, dataset: Dataset, size: int) -> None:
        self.dataset = dataset
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.dataset[index % len(self.dataset)]


class Images(Dataset):
    """Frames without their depth (the unlabeled split): the image alone."""

    def __init__(self, frames: Sequence[Frame], size: tuple[int, int]) -> None:
        self.frames = list(frames)
        self.size = size

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> torch.Tensor:
        return load_image(self.frames[index].image, self.size)


class EvalFrames(Dataset):
    """Validation and test frames: (image, :func:`eval_target`)."""

    def __init__(self, frames: Sequence[Frame], size: tuple[int, int], canvas: tuple[int, int]) -> None:
        self.frames = list(frames)
        self.size = size
        self.canvas = canvas

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        frame = self.frames[index]
        target = eval_target(read_depth(frame.depth), self.canvas)
        return load_image(frame.image, self.size), torch.from_numpy(target)


def labeled_mask(count: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Which of ``count`` frames (in temporal order) keep their depth: every (1/fraction)-th one,
    as a sensor at ``fraction`` of the camera's frame rate would give it, from a random phase.
    Exactly ⌊count·fraction⌋ or ⌈count·fraction⌉ of them, and at least one."""
    phase = rng.random()
    ticks = np.floor(np.arange(-1, count) * fraction + phase)
    keep = np.diff(ticks) > 0
    if not keep.any():
        keep[0] = True
    return keep


def split_frames(frames: Sequence[Frame], config: DepthConfig) -> tuple[list[Frame], list[Frame], list[Frame]]:
    """(labeled, unlabeled, validation) of the training frames, fixed by ``data_seed``.

    The validation frames are drawn first (at random), so the labeled fraction never changes them;
    the labeled ones are then :func:`labeled_mask` of the rest in their order (drive, camera,
    frame). Every image stays: labeled + unlabeled is the same set at any fraction."""
    rng = np.random.default_rng(config.data_seed)
    order = rng.permutation(len(frames))
    held = np.zeros(len(frames), dtype=bool)
    held[order[:math.floor(config.val_fraction * len(frames))]] = True
    val = [f for f, h in zip(frames, held, strict=True) if h]
    rest = [f for f, h in zip(frames, held, strict=True) if not h]
    keep = labeled_mask(len(rest), config.labeled_fraction, np.random.default_rng([config.data_seed, 1]))
    labeled = [f for f, k in zip(rest, keep, strict=True) if k]
    unlabeled = [f for f, k in zip(rest, keep, strict=True) if not k]
    return labeled, unlabeled, val


def dataset_folder(config: DepthConfig, data_root: Path) -> Path:
    """The KITTI folder; for generated scenes, their folder (written first if missing)."""
    if config.dataset == "kitti":
        return config.dataset_dir(data_root)
    params = scene_params(config.scene_frames, config.scene_test_frames, config.scene_size, config.data_seed)
    return generated_under(config.dataset_dir(data_root), params, write_scenes)


def load_splits(config: DepthConfig, data_root: Path) -> Splits:
    """The trial's datasets: labeled training frames (repeated to the number of training images
    with ``epoch_size = "images"``), the unlabeled split when some frames lost their depth,
    validation (unless ``val_fraction`` is 0) and test."""
    train, test = kitti_frames(dataset_folder(config, data_root))
    labeled, unlabeled, val = split_frames(train, config)
    size, canvas = config.image_size, config.canvas
    frames: Dataset = TrainFrames(labeled, size)
    if config.epoch_size == "images" and unlabeled:
        frames = Repeated(frames, len(labeled) + len(unlabeled))
    return Splits(train=frames, test=EvalFrames(test, size, canvas),
                  val=EvalFrames(val, size, canvas) if val else None,
                  unlabeled=Images(unlabeled, size) if unlabeled else None)
