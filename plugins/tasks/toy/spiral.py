"""The spiral data set, generated once into CSV files and always read back from disk.

Going through the on-disk format even for synthetic data means the loader that reads a
hand-made or published spiral is the very one the tests and smoke runs exercise.

Layout of one data set directory::

    train.csv  test.csv  [val.csv]  [unlabeled.csv]   header ``x1,x2,label`` (label -1 if unlabeled)
    meta.json                                         the generator parameters
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from harness_plugins.common.files import atomic_directory

from . import ToyConfig

HEADER = ("x1", "x2", "label")
UNLABELED = -1
GENERATOR = "tensorflow-playground-spiral/1"


def generate_spiral(
    n_per_class: int, classes: int, noise: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The TensorFlow playground spiral with ``classes`` arms, rotated by 2πk/classes.

    For class k and i = 0..n-1: r = 5i/n, t = 1.75·(i/n)·2π + 2πk/classes, point
    (r·sin t, r·cos t) + U(-1, 1)·noise per coordinate; with two classes Δ = 0, π as in the
    playground. Points come class by class, in order of i.
    """
    i = np.arange(n_per_class, dtype=np.float64) / n_per_class
    r = 5 * i
    xs, ys = [], []
    for k in range(classes):
        t = 1.75 * i * 2 * math.pi + 2 * math.pi * k / classes
        jitter = rng.uniform(-1, 1, size=(n_per_class, 2)) * noise
        xs.append(np.stack([r * np.sin(t), r * np.cos(t)], axis=1) + jitter)
        ys.append(np.full(n_per_class, k, dtype=np.int64))
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys)


def spiral_params(config: ToyConfig) -> dict[str, Any]:
    """Everything that determines the generated files; their hash names the directory."""
    return {
        "generator": GENERATOR,
        "classes": config.classes,
        "points_per_class": config.points_per_class,
        "test_points_per_class": config.test_points_per_class,
        "val_points_per_class": config.val_points_per_class,
        "unlabeled_per_class": config.unlabeled_per_class,
        "noise": config.noise,
        "data_seed": config.data_seed,
    }


def spiral_dir(data_root: Path, config: ToyConfig) -> Path:
    """``data_root/spiral/<hash>``: one directory per distinct set of generator parameters."""
    digest = hashlib.sha256(json.dumps(spiral_params(config), sort_keys=True).encode()).hexdigest()
    return Path(data_root) / "spiral" / digest[:12]


def write_spiral(directory: Path, config: ToyConfig) -> None:
    """Generate every split from one ``default_rng(data_seed)`` and write them atomically.

    The splits are drawn in the fixed order train, test, val, unlabeled, so the optional ones
    never change the train and test data. The directory is written whole or not at all
    (:func:`harness_plugins.common.files.atomic_directory`); if it exists, it is kept.
    """
    rng = np.random.default_rng(config.data_seed)
    sizes = {
        "train": config.points_per_class,
        "test": config.test_points_per_class,
        "val": config.val_points_per_class,
        "unlabeled": config.unlabeled_per_class,
    }

    def fill(tmp: Path) -> None:
        for name, n in sizes.items():
            if n == 0:
                continue
            x, y = generate_spiral(n, config.classes, config.noise, rng)
            if name == "unlabeled":
                y = np.full_like(y, UNLABELED)
            _write_csv(tmp / f"{name}.csv", x, y)
        meta = json.dumps(spiral_params(config), indent=2, sort_keys=True) + "\n"
        (tmp / "meta.json").write_text(meta, encoding="utf-8")

    atomic_directory(directory, fill)


def _write_csv(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    # 9 significant digits read back to the identical float32.
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(HEADER)
        writer.writerows(
            (f"{a:.9g}", f"{b:.9g}", int(label)) for (a, b), label in zip(x.tolist(), y, strict=True)
        )


def read_split(directory: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``name.csv`` of a spiral directory as (X float32 [n, 2], y int64 [n])."""
    path = Path(directory) / f"{name}.csv"
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = tuple(next(reader, ()))
        if header != HEADER:
            raise ValueError(f"{path}: header is {','.join(header)!r}, expected {','.join(HEADER)!r}")
        rows = list(reader)
    x = np.array([[float(a), float(b)] for a, b, _ in rows], dtype=np.float64).reshape(-1, 2)
    y = np.array([int(label) for _, _, label in rows], dtype=np.int64)
    return x.astype(np.float32), y


def load_spiral(data_root: Path, config: ToyConfig) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The labeled splits (train, test and, if configured, val), generating the files if missing."""
    directory = spiral_dir(data_root, config)
    write_spiral(directory, config)  # unless it is there
    meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
    if meta != spiral_params(config):
        raise ValueError(f"{directory}/meta.json does not match the configured spiral; remove the directory")
    names = ["train", "test"] + (["val"] if config.val_points_per_class else [])
    return {name: read_split(directory, name) for name in names}
