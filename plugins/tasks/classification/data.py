"""Datasets and transforms of the classification task: the real data read from disk (or sklearn's
bundled digits), split into train / val / unlabeled / test, and timm's augmentation.

Every labeled dataset exposes ``targets`` (one int per item), which balanced batches and other
protocols read without decoding images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from torch.utils.data import Dataset
from torchvision import transforms

from harness import Splits
from harness_plugins.common.datasets import digits_split, stratified_split

from . import ClassificationConfig
from .formats import CIFAR_CLASSES, load_cifar, scan_image_folder

Transform = Callable[[Image.Image], torch.Tensor]

#: Per-channel mean and std of each training set (pixels scaled to [0, 1]).
STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "digits": ((0.3053,), (0.3760,)),
}
DIGITS_TEST_FRACTION = 0.2  # sklearn's digits come unsplit: a fixed stratified test split (seed 0)


class ArrayImages(Dataset):
    """Images held in memory as uint8 N×H×W×C (C = 1 or 3), decoded to PIL for the transform."""

    def __init__(self, images: np.ndarray, targets: np.ndarray, transform: Transform, mode: str) -> None:
        self.images = images
        self.targets = [int(t) for t in targets]
        self.transform = transform
        self.mode = mode  # the PIL mode the model wants: "RGB" or "L"

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        picture = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
        return self.transform(picture.convert(self.mode)), self.targets[index]


class FileImages(Dataset):
    """Image files read with PIL (ImageFolder), converted to RGB."""

    def __init__(self, paths: Sequence[str], targets: np.ndarray, transform: Transform) -> None:
        self.paths = list(paths)
        self.targets = [int(t) for t in targets]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.paths[index]) as picture:
            return self.transform(picture.convert("RGB")), self.targets[index]


class InputsOnly(Dataset):
    """The inputs of a labeled dataset without their labels (the unlabeled split)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.dataset[index][0]


def transforms_for(config: ClassificationConfig) -> tuple[Transform, Transform]:
    """(train, eval) transforms; see the package docstring for the two crop recipes."""
    mean = config.mean or _repeat(STATS[config.dataset][0], config.channels)
    std = config.std or _repeat(STATS[config.dataset][1], config.channels)
    common: dict[str, Any] = dict(input_size=(config.channels, config.size, config.size),
                                  interpolation=config.interpolation, mean=mean, std=std)
    if config.crop_mode == "random_resized":
        train = create_transform(is_training=True, scale=config.scale, ratio=config.ratio, hflip=config.hflip,
                                 vflip=config.vflip, color_jitter=config.color_jitter or None,
                                 auto_augment=config.auto_augment, re_prob=config.re_prob, re_mode=config.re_mode,
                                 **common)
        return train, create_transform(is_training=False, crop_pct=config.crop_pct, **common)
    _, secondary, final = create_transform(is_training=True, separate=True, hflip=0.0, vflip=0.0,
                                           color_jitter=config.color_jitter or None,
                                           auto_augment=config.auto_augment, re_prob=config.re_prob,
                                           re_mode=config.re_mode, **common)
    resize = [transforms.Resize(config.resize, interpolation=_interpolation(config))] if config.resize else []
    pad = [transforms.Pad(config.padding)] if config.padding else []
    flips = [transforms.RandomHorizontalFlip(config.hflip)] if config.hflip else []
    flips += [transforms.RandomVerticalFlip(config.vflip)] if config.vflip else []
    train = transforms.Compose([*resize, *pad, transforms.RandomCrop(config.size), *flips, *secondary.transforms,
                                *final.transforms])
    evaluate = transforms.Compose([*resize, *pad, transforms.CenterCrop(config.size), transforms.ToTensor(),
                                   transforms.Normalize(mean, std)])
    return train, evaluate


def load_splits(config: ClassificationConfig, data_root: Path) -> tuple[Splits, int]:
    """The trial's datasets and the number of classes.

    The validation split is taken from the training set first, then the unlabeled one from what
    remains, both stratified with ``data_seed``
    (:func:`harness_plugins.common.datasets.stratified_split`) and each kept in the data set's
    order: changing ``unlabeled_fraction`` leaves validation unchanged, and neither ever touches
    the test set.
    """
    train_tf, eval_tf = transforms_for(config)
    mode = "RGB" if config.channels == 3 else "L"
    if config.dataset == "imagenet":
        root = config.dataset_dir(data_root)
        classes, paths, labels = scan_image_folder(root / "train")
        _, test_paths, test_labels = scan_image_folder(root / "val", classes)

        def subset(idx: np.ndarray, tf: Transform) -> Dataset:
            return FileImages([paths[i] for i in idx], labels[idx], tf)

        test: Dataset = FileImages(test_paths, test_labels, eval_tf)
        num_classes = len(classes)
    else:
        if config.dataset == "digits":
            images, labels, test_images, test_labels = _digits()
        else:
            directory = config.dataset_dir(data_root)
            images, labels = load_cifar(directory, config.dataset, "train")
            test_images, test_labels = load_cifar(directory, config.dataset, "test")

        def subset(idx: np.ndarray, tf: Transform) -> Dataset:
            return ArrayImages(images[idx], labels[idx], tf, mode)

        test = ArrayImages(test_images, test_labels, eval_tf, mode)
        num_classes = CIFAR_CLASSES.get(config.dataset, 10)
    train_idx, val_idx = _in_order(stratified_split(labels, round(config.val_fraction * len(labels)),
                                                    config.data_seed))
    train_idx, unl_idx = _in_order(stratified_split(labels, round(config.unlabeled_fraction * len(train_idx)),
                                                    config.data_seed, among=train_idx))
    splits = Splits(train=subset(train_idx, train_tf), test=test,
                    val=subset(val_idx, eval_tf) if len(val_idx) else None,
                    unlabeled=InputsOnly(subset(unl_idx, train_tf)) if len(unl_idx) else None)
    return splits, num_classes


def _in_order(split: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Both index lists of a split sorted: each split keeps the data set's own order."""
    return np.sort(split[0]), np.sort(split[1])


def _digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """sklearn's 8×8 digits as uint8 N×8×8×1 images (values 0..16 scaled to 0..255), with a fixed
    stratified test split (seed 0)."""
    (images, labels), (test_images, test_labels) = digits_split(DIGITS_TEST_FRACTION, seed=0)
    return _digit_pixels(images), labels, _digit_pixels(test_images), test_labels


def _digit_pixels(images: np.ndarray) -> np.ndarray:
    return np.round(images * (255 / 16)).astype(np.uint8)[..., None]


def _repeat(values: tuple[float, ...], channels: int) -> tuple[float, ...]:
    return values * channels if len(values) == 1 else values


def _interpolation(config: ClassificationConfig) -> transforms.InterpolationMode:
    return transforms.InterpolationMode(config.interpolation)
