"""The on-disk formats the classification task reads, and writers of tiny data in the same formats.

- CIFAR-10, binary version (``cifar-10-batches-bin/``): ``data_batch_1.bin`` … ``data_batch_5.bin``
  and ``test_batch.bin``, each a sequence of 3073-byte records: 1 label byte, then 3072 pixel
  bytes (the 1024 red values of the 32×32 image row by row, then green, then blue).
- CIFAR-100, binary version (``cifar-100-binary/``): ``train.bin`` and ``test.bin``, 3074-byte
  records: a coarse and a fine label byte, then the 3072 pixel bytes. The fine label is the class.
- ImageFolder (ImageNet's layout): ``<root>/<split>/<class folder>/<image>``; classes are the
  training folders in sorted order. Read as torchvision's ImageFolder reads it.

The binary files are read with numpy as raw bytes; nothing is ever unpickled. Only numpy and
PIL are imported at the top (torchvision within :func:`scan_image_folder`), so that the suite
side can write smoke data without torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from harness_plugins.common.files import atomic_directory

from . import cifar_files

PIXELS = 32 * 32 * 3
CIFAR_CLASSES = {"cifar10": 10, "cifar100": 100}
CIFAR_LABEL_BYTES = {"cifar10": 1, "cifar100": 2}


# -- CIFAR binary ------------------------------------------------------------------------------------


def read_cifar_file(path: Path, label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """One binary file: images uint8 N×32×32×3 (HWC) and its label bytes uint8 N×label_bytes."""
    raw = np.fromfile(path, dtype=np.uint8)
    record = label_bytes + PIXELS
    if raw.size == 0 or raw.size % record:
        raise ValueError(f"{path}: {raw.size} bytes is not a whole number of {record}-byte CIFAR records")
    raw = raw.reshape(-1, record)
    images = raw[:, label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), raw[:, :label_bytes].copy()


def write_cifar_file(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """The inverse of :func:`read_cifar_file`: images N×32×32×3 uint8, labels N×label_bytes."""
    images = np.asarray(images, dtype=np.uint8)
    labels = np.asarray(labels, dtype=np.uint8).reshape(len(images), -1)
    planes = images.transpose(0, 3, 1, 2).reshape(len(images), PIXELS)
    np.concatenate([labels, planes], axis=1).tofile(path)


def load_cifar(directory: Path, dataset: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The ``train`` or ``test`` split of CIFAR-10/100: images N×32×32×3 uint8, labels int64."""
    names = cifar_files(dataset)
    names = names[:-1] if split == "train" else names[-1:]
    parts = [read_cifar_file(Path(directory) / name, CIFAR_LABEL_BYTES[dataset]) for name in names]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1][:, -1] for p in parts]).astype(np.int64)  # CIFAR-100: the fine label
    if labels.max() >= CIFAR_CLASSES[dataset]:
        raise ValueError(f"{directory}: label {labels.max()} out of range for {dataset}; is it the right data set?")
    return images, labels


# -- ImageFolder -------------------------------------------------------------------------------------


def scan_image_folder(root: Path, classes: Sequence[str] | None = None) -> tuple[list[str], list[str], np.ndarray]:
    """(classes, image paths, labels) of ``root/<class>/<image>``, in sorted order, as torchvision's
    ImageFolder finds them (:func:`~torchvision.datasets.folder.find_classes`,
    :func:`~torchvision.datasets.folder.make_dataset`, its image extensions).

    ``classes`` (the training split's) maps folder names to labels; a folder outside it is an error.
    """
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    found, _ = find_classes(root)
    classes = found if classes is None else list(classes)
    unknown = [name for name in found if name not in classes]
    if unknown:
        raise ValueError(f"{root}: class folders {unknown[:5]} are not among the {len(classes)} training classes")
    samples = make_dataset(root, {name: i for i, name in enumerate(classes)}, extensions=IMG_EXTENSIONS,
                           allow_empty=True)
    if not samples:
        raise ValueError(f"{root}: no images ({', '.join(IMG_EXTENSIONS)}) in its class folders")
    return classes, [path for path, _ in samples], np.asarray([label for _, label in samples], dtype=np.int64)


# -- smoke data --------------------------------------------------------------------------------------


def write_smoke_data(dataset: str, directory: Path) -> None:
    """Tiny data of ``dataset`` in its real format at ``directory``, unless it is there already."""
    if dataset == "imagenet":
        atomic_directory(Path(directory), lambda tmp: write_image_folder(tmp, classes=4, train=12, val=4))
    else:
        per_class = (5, 2) if dataset == "cifar10" else (2, 1)
        atomic_directory(Path(directory), lambda tmp: write_cifar(tmp, dataset, *per_class))


def smoke_images(labels: np.ndarray, shape: tuple[int, int], seed: int) -> np.ndarray:
    """uint8 N×H×W×3 images: a colour per class plus noise, so that a network can learn something."""
    rng = np.random.default_rng(seed)
    colours = np.random.default_rng(1234).integers(40, 216, size=(int(labels.max()) + 1, 3))
    noise = rng.normal(0, 30, size=(len(labels), *shape, 3))
    return np.clip(colours[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)


def write_cifar(directory: Path, dataset: str, train_per_class: int, test_per_class: int) -> None:
    """CIFAR-10/100 binary files with the given number of images per class (shuffled)."""
    classes = CIFAR_CLASSES[dataset]
    rng = np.random.default_rng(0)
    names = cifar_files(dataset)
    train_files = names[:-1]
    for i, name in enumerate(names):
        per_class = test_per_class if name == names[-1] else train_per_class
        # the training images are spread over the training files, one share each
        count = per_class if name == names[-1] else -(-per_class // len(train_files))
        fine = rng.permutation(np.repeat(np.arange(classes), count))
        labels = fine[:, None] if dataset == "cifar10" else np.stack([fine // 5, fine], axis=1)
        write_cifar_file(directory / name, smoke_images(fine, (32, 32), seed=i), labels)


def write_image_folder(directory: Path, classes: int, train: int, val: int) -> None:
    """``train/`` and ``val/`` ImageFolder splits of JPEGs of two sizes, ImageNet-style names."""
    from PIL import Image

    for split, count in (("train", train), ("val", val)):
        labels = np.repeat(np.arange(classes), count)
        images = [*smoke_images(labels[::2], (40, 48), seed=len(split)),
                  *smoke_images(labels[1::2], (48, 40), seed=len(split) + 1)]
        for k, (label, image) in enumerate(zip([*labels[::2], *labels[1::2]], images, strict=True)):
            folder = directory / split / f"n{label:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{split}_{k:05d}.JPEG", quality=90)
