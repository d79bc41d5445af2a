"""The task's datasets: the annotated frames read once into memory (DIC-HeLa's 20 frames are 20 MB
as float32), split at random into the frames trained on and the held-out ones, the training
frames augmented per item (in the loader's workers).

Items are ``(image 1×H×W float32, target H×W int64)``, the target 1 for a cell, 0 for background
(:data:`.augment.IGNORE` where the deformation left no label).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from harness import Splits
from harness_plugins.common.files import generated_under

from . import CellsConfig
from .augment import augment, train_transform
from .formats import read_foreground, read_image
from .layout import Frame, annotated_frames
from .synthetic import cell_params, write_cells


class Frames(Dataset):
    """Annotated frames in memory, each ``(image, target)``, through ``transform`` if one is given
    (training), as they are otherwise (evaluation)."""

    def __init__(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray], transform: object = None) -> None:
        self.images = [torch.from_numpy(np.ascontiguousarray(i))[None] for i in images]
        self.masks = [torch.from_numpy(np.ascontiguousarray(m)) for m in masks]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.images[index], self.masks[index]
        if self.transform is not None:
            image, mask = augment(self.transform, image, mask)
        return image, mask.long()


def split_frames(frames: Sequence[Frame], val_fraction: float, seed: int) -> tuple[list[Frame], list[Frame]]:
    """(trained on, held out): ``round(val_fraction · n)`` frames drawn at random with ``seed``
    (at least one, and one left to train on), each part in the frames' order."""
    if len(frames) < 2:
        raise ValueError(f"{len(frames)} annotated frame(s): the split needs at least 2")
    count = min(max(round(val_fraction * len(frames)), 1), len(frames) - 1)
    held = set(np.random.default_rng(seed).permutation(len(frames))[:count].tolist())
    return ([f for i, f in enumerate(frames) if i not in held], [f for i, f in enumerate(frames) if i in held])


def read_frames(frames: Sequence[Frame], size: tuple[int, int]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Standardized images and foreground masks, every one ``size``."""
    images, masks = [], []
    for frame in frames:
        image, mask = read_image(frame.image), read_foreground(frame.mask)
        for path, shape in ((frame.image, image.shape), (frame.mask, mask.shape)):
            if tuple(shape) != tuple(size):
                raise ValueError(f"{path} is {shape[0]}×{shape[1]}, not image_size = {list(size)}; set image_size "
                                 f"= [{shape[0]}, {shape[1]}] in [task] (every image must have one size)")
        images.append(image)
        masks.append(mask)
    return images, masks


def dataset_folder(config: CellsConfig, data_root: Path) -> Path:
    """The dataset's folder; for generated cells, their folder (written first if missing)."""
    if config.dataset == "hela":
        return config.dataset_dir(data_root)
    params = cell_params(config.cell_images, config.image_size, config.cell_radius, config.data_seed)
    return generated_under(config.dataset_dir(data_root), params, write_cells)


def load_splits(config: CellsConfig, data_root: Path) -> Splits:
    """The augmented training frames and the held-out ones as ``test`` (no ``val``: the harness
    evaluates ``test`` after every ``val_interval`` epochs, as the paper's validation)."""
    train, held = split_frames(annotated_frames(dataset_folder(config, data_root)), config.val_fraction,
                               config.data_seed)
    transform = train_transform(config.flips, config.elastic_alpha, config.elastic_sigma)
    return Splits(train=Frames(*read_frames(train, config.image_size), transform=transform),
                  test=Frames(*read_frames(held, config.image_size)))


__all__ = ["Frames", "dataset_folder", "load_splits", "read_frames", "split_frames"]
