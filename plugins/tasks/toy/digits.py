"""sklearn's bundled 8×8 digits (no download), split stratified with the task's ``data_seed``."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from . import ToyConfig

CLASSES = 10


def load_digit_splits(config: ToyConfig) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Train, test, val (unless ``val_fraction`` is 0) and unlabeled (unless ``unlabeled_fraction``
    is 0): X float32 [n, 1, 8, 8] in [0, 1], y int64 (the unlabeled split's y is for the caller to drop).

    Val and test fractions are of the whole data set; the test split is taken first, so changing
    ``val_fraction`` leaves the test set unchanged. ``unlabeled_fraction`` is of what remains for
    training, split off last (stratified), so it changes neither test nor val.
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
    n_unlabeled = round(config.unlabeled_fraction * len(y_rest))
    if n_unlabeled:
        x_rest, x_unl, y_rest, y_unl = train_test_split(
            x_rest, y_rest, test_size=n_unlabeled, stratify=y_rest, random_state=config.data_seed
        )
        splits["unlabeled"] = (x_unl, y_unl)
    splits["train"] = (x_rest, y_rest)
    return splits
