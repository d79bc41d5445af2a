"""sklearn's bundled 8×8 digits (no download), split stratified with the task's ``data_seed``."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from . import ToyConfig

CLASSES = 10


def load_digit_splits(config: ToyConfig) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Train, test and (unless ``val_fraction`` is 0) val: X float32 [n, 1, 8, 8] in [0, 1], y int64.

    Both fractions are of the whole data set; the test split is taken first, so changing
    ``val_fraction`` leaves the test set unchanged.
    """
    digits = load_digits()
    x = (digits.data / 16).astype(np.float32).reshape(-1, 1, 8, 8)
    y = digits.target.astype(np.int64)
    n_test = round(config.test_fraction * len(y))
    n_val = round(config.val_fraction * len(y))
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=n_test, stratify=y, random_state=config.data_seed
    )
    splits = {"test": (x_test, y_test)}
    if n_val:
        x_rest, x_val, y_rest, y_val = train_test_split(
            x_rest, y_rest, test_size=n_val, stratify=y_rest, random_state=config.data_seed
        )
        splits["val"] = (x_val, y_val)
    splits["train"] = (x_rest, y_rest)
    return splits
